package registry

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry/registrytest"
)

var manifestTypes = []string{
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
}

const (
	testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	goodDigest   = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func sha256Digest(b string) string {
	sum := sha256.Sum256([]byte(b))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// checkRequest fails the test unless r is a manifest request for team/app:v1
// that accepts every manifest media type.
func checkRequest(t *testing.T, r *http.Request, method string) {
	t.Helper()
	if r.Method != method {
		t.Errorf("method = %s, want %s", r.Method, method)
	}
	if want := "/v2/team/app/manifests/v1"; r.URL.Path != want {
		t.Errorf("path = %q, want %q", r.URL.Path, want)
	}
	accepted := map[string]bool{}
	for _, v := range r.Header.Values("Accept") {
		for _, mt := range strings.Split(v, ",") {
			accepted[strings.TrimSpace(mt)] = true
		}
	}
	for _, mt := range manifestTypes {
		if !accepted[mt] {
			t.Errorf("Accept %q lacks %s", r.Header.Values("Accept"), mt)
		}
	}
}

func newTestClient(t *testing.T, h http.HandlerFunc, opts ...Option) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", srv.URL, err)
	}
	return c
}

func TestDigest(t *testing.T) {
	tests := []struct {
		name    string
		handler func(t *testing.T) http.HandlerFunc
		want    string // digest, when the call succeeds
		kind    string // Kind of the error, when it fails
		is      error  // a sentinel the error must match
		inError []string
	}{
		{
			name: "header present",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					checkRequest(t, r, http.MethodHead)
					if ua := r.Header.Get("User-Agent"); ua != "dockward" {
						t.Errorf("User-Agent = %q, want dockward", ua)
					}
					w.Header().Set("Docker-Content-Digest", goodDigest)
					w.Header().Set("Content-Type", manifestTypes[0])
				}
			},
			want: goodDigest,
		},
		{
			name: "sha512 header",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Docker-Content-Digest", "sha512:"+strings.Repeat("ab", 64))
				}
			},
			want: "sha512:" + strings.Repeat("ab", 64),
		},
		{
			name: "header absent falls back to GET and hashes the body",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodHead {
						checkRequest(t, r, http.MethodHead)
						return
					}
					checkRequest(t, r, http.MethodGet)
					w.Write([]byte(testManifest))
				}
			},
			want: sha256Digest(testManifest),
		},
		{
			name: "HEAD not allowed falls back to GET",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodHead {
						w.WriteHeader(http.StatusMethodNotAllowed)
						return
					}
					w.Write([]byte(testManifest))
				}
			},
			want: sha256Digest(testManifest),
		},
		{
			name: "GET header matching the body",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						sum := sha512.Sum512([]byte(testManifest))
						w.Header().Set("Docker-Content-Digest", "sha512:"+hex.EncodeToString(sum[:]))
						w.Write([]byte(testManifest))
					}
				}
			},
			want: func() string {
				sum := sha512.Sum512([]byte(testManifest))
				return "sha512:" + hex.EncodeToString(sum[:])
			}(),
		},
		{
			name: "GET header not matching the body",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						w.Header().Set("Docker-Content-Digest", goodDigest)
						w.Write([]byte(testManifest))
					}
				}
			},
			kind: KindBadResponse, is: ErrBadResponse, inError: []string{"does not match"},
		},
		{
			name: "GET body too large",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						w.Write(make([]byte, maxManifestSize+1))
					}
				}
			},
			kind: KindBadResponse, is: ErrBadResponse, inError: []string{"larger than"},
		},
		{
			name: "GET fallback answers an HTML page",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Type", "text/html")
					w.Write([]byte("<html><body>Please sign in</body></html>"))
				}
			},
			kind: KindBadResponse, is: ErrBadResponse, inError: []string{`(Content-Type "text/html", 40 bytes) is not a manifest`},
		},
		{
			name: "GET fallback answers a cut manifest",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						w.Write([]byte(testManifest[:len(testManifest)/2]))
					}
				}
			},
			kind: KindBadResponse, is: ErrBadResponse, inError: []string{"is not a manifest: unexpected end of JSON input"},
		},
		{
			name: "GET fallback answers JSON that is no manifest",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						w.Write([]byte(`{"errors":[]}`))
					}
				}
			},
			kind: KindBadResponse, is: ErrBadResponse, inError: []string{"no schemaVersion"},
		},
		{
			name: "GET fallback 404",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					if r.Method == http.MethodGet {
						http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
					}
				}
			},
			kind: KindNotFound, is: ErrNotFound, inError: []string{"GET /v2/team/app/manifests/v1: 404"},
		},
		{
			name: "invalid digest header",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Docker-Content-Digest", "sha256:0123ABCD")
				}
			},
			kind: KindBadResponse, is: ErrBadResponse, inError: []string{`invalid Docker-Content-Digest "sha256:0123ABCD"`},
		},
		{
			name: "404",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotFound) }
			},
			kind: KindNotFound, is: ErrNotFound,
			inError: []string{"get digest of 127.0.0.1:", "/team/app:v1: HEAD /v2/team/app/manifests/v1: 404 Not Found"},
		},
		{
			name: "401 with WWW-Authenticate and no credentials",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("WWW-Authenticate", `Basic realm="Registry Realm",scope="repository:team/app:pull"`)
					w.WriteHeader(http.StatusUnauthorized)
				}
			},
			kind: KindUnauthorized, is: ErrUnauthorized,
			inError: []string{"401 Unauthorized", "Basic auth (no credentials configured)", `realm="Registry Realm"`, `scope="repository:team/app:pull"`},
		},
		{
			name: "403",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) }
			},
			kind: KindUnauthorized, is: ErrUnauthorized, inError: []string{"403 Forbidden"},
		},
		{
			name: "500",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }
			},
			kind: KindServerError, is: ErrServer, inError: []string{"500 Internal Server Error"},
		},
		{
			name: "429",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTooManyRequests) }
			},
			kind: KindRateLimited, is: ErrRateLimited, inError: []string{"429 Too Many Requests"},
		},
		{
			name: "server slower than the timeout",
			handler: func(t *testing.T) http.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) {
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
						t.Error("the request's context did not end")
					}
				}
			},
			kind: KindTimeout, is: ErrTimeout, inError: []string{"deadline exceeded"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Only the timeout case needs a short timeout; the others get a
			// generous one so a loaded machine does not turn them into timeouts.
			timeout := 10 * time.Second
			if tt.kind == KindTimeout {
				timeout = 200 * time.Millisecond
			}
			c := newTestClient(t, tt.handler(t), WithTimeout(timeout))
			got, err := c.Digest(t.Context(), "team/app", "v1")
			if tt.kind == "" {
				if err != nil || got != tt.want {
					t.Fatalf("Digest() = %q, %v, want %q, nil", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("Digest() = %q, nil, want a %s error", got, tt.kind)
			}
			if k := Kind(err); k != tt.kind {
				t.Errorf("Kind(%v) = %q, want %q", err, k, tt.kind)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			for _, s := range tt.inError {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestProve(t *testing.T) {
	tests := []struct {
		name    string
		header  string // Docker-Content-Digest of the GET
		body    string
		digest  string // what HEAD named
		inError string // "" when proved
	}{
		{name: "header and body agree with HEAD", header: sha256Digest(testManifest), body: testManifest, digest: sha256Digest(testManifest)},
		{name: "no header, body hashes to HEAD's digest", body: testManifest, digest: sha256Digest(testManifest)},
		{name: "HEAD named another digest", header: sha256Digest(testManifest), body: testManifest, digest: goodDigest,
			inError: "the manifest is " + sha256Digest(testManifest) + ", not the " + goodDigest + " that HEAD named"},
		{name: "wrong header on GET too", header: goodDigest, body: testManifest, digest: goodDigest, inError: "does not match the manifest's bytes"},
		{name: "HTML", body: "<html></html>", digest: sha256Digest("<html></html>"), inError: "is not a manifest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				checkRequest(t, r, http.MethodGet)
				if tt.header != "" {
					w.Header().Set("Docker-Content-Digest", tt.header)
				}
				w.Write([]byte(tt.body))
			})
			err := c.Prove(t.Context(), "team/app", "v1", tt.digest)
			switch {
			case tt.inError == "" && err != nil:
				t.Fatalf("Prove(%s) = %v, want nil", tt.digest, err)
			case tt.inError != "" && (err == nil || !strings.Contains(err.Error(), tt.inError) || Kind(err) != KindBadResponse):
				t.Fatalf("Prove(%s) = %v, want a bad_response error containing %q", tt.digest, err, tt.inError)
			}
		})
	}
}

func TestDigestStatusErrorAs(t *testing.T) {
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadGateway) })
	_, err := c.Digest(t.Context(), "team/app", "v1")
	var se *StatusError
	if !errors.As(err, &se) || se.StatusCode != http.StatusBadGateway {
		t.Fatalf("errors.As(%v, *StatusError) = %v, want status 502", err, se)
	}
}

func TestDigestCallerDeadline(t *testing.T) {
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Digest(ctx, "team/app", "v1")
	if !errors.Is(err, ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Digest() error = %v, want ErrTimeout and context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Digest took %v despite a 50ms deadline", d)
	}
}

func TestDigestCanceledIsOther(t *testing.T) {
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := c.Digest(ctx, "team/app", "v1")
	if !errors.Is(err, context.Canceled) || Kind(err) != KindOther {
		t.Fatalf("Digest() error = %v (kind %q), want context.Canceled of kind other", err, Kind(err))
	}
}

func TestDigestNetworkError(t *testing.T) {
	addr := registrytest.FreeAddr(t) // nothing listens there
	c, err := New("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Digest(t.Context(), "team/app", "v1")
	if Kind(err) != KindNetwork || !errors.Is(err, ErrNetwork) {
		t.Fatalf("Digest() error = %v (kind %q), want kind network", err, Kind(err))
	}
}

func TestDigestInvalidArguments(t *testing.T) {
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("unexpected request %s %s", r.Method, r.URL)
	})
	for _, tt := range []struct{ repo, tag string }{
		{"Team/app", "v1"},
		{"team/app", ""},
		{"team/../app", "v1"},
		{"team/app", "v1/../x"},
		{"team/app?x=1", "v1"},
	} {
		if d, err := c.Digest(t.Context(), tt.repo, tt.tag); err == nil || Kind(err) != KindOther {
			t.Errorf("Digest(%q, %q) = %q, %v (kind %q), want an error of kind other", tt.repo, tt.tag, d, err, Kind(err))
		}
	}
}

func TestPing(t *testing.T) {
	tests := []struct {
		name   string
		status int
		kind   string
	}{
		{"ok", http.StatusOK, ""},
		{"unauthorized", http.StatusUnauthorized, KindUnauthorized},
		{"not a v2 registry", http.StatusNotFound, KindNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet || r.URL.Path != "/v2/" {
					t.Errorf("request = %s %s, want GET /v2/", r.Method, r.URL.Path)
				}
				w.WriteHeader(tt.status)
			})
			if err := c.Ping(t.Context()); Kind(err) != tt.kind {
				t.Errorf("Ping() = %v (kind %q), want kind %q", err, Kind(err), tt.kind)
			}
		})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		url      string
		opts     []Option
		wantHost string // "" when New must fail
	}{
		{"http://127.0.0.1:5000", nil, "127.0.0.1:5000"},
		{"https://registry.example.com/", nil, "registry.example.com"},
		{"HTTP://localhost:5000", nil, "localhost:5000"},
		{"ftp://registry.example.com", nil, ""},
		{"127.0.0.1:5000", nil, ""},
		{"http://", nil, ""},
		{"http://:5000", nil, ""},
		{"http://user:pass@registry.example.com", nil, ""},
		{"http://registry.example.com/v2/", nil, ""},
		{"http://registry.example.com?x=1", nil, ""},
		{"http://registry.example.com", []Option{WithTimeout(0)}, ""},
		{"http://reg istry", nil, ""},
	}
	for _, tt := range tests {
		c, err := New(tt.url, tt.opts...)
		switch {
		case tt.wantHost == "" && err == nil:
			t.Errorf("New(%q) = host %q, want an error", tt.url, c.Host())
		case tt.wantHost != "" && err != nil:
			t.Errorf("New(%q) = %v, want host %q", tt.url, err, tt.wantHost)
		case tt.wantHost != "" && c.Host() != tt.wantHost:
			t.Errorf("New(%q).Host() = %q, want %q", tt.url, c.Host(), tt.wantHost)
		}
	}
}

func TestKind(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("boom"), KindOther},
		{&StatusError{StatusCode: 404}, KindNotFound},
		{&StatusError{StatusCode: 401}, KindUnauthorized},
		{&StatusError{StatusCode: 403}, KindUnauthorized},
		{&StatusError{StatusCode: 503}, KindServerError},
		{&StatusError{StatusCode: 400}, KindOther},
		{&classified{class: ErrTimeout, err: context.DeadlineExceeded}, KindTimeout},
		{&classified{class: ErrNetwork, err: errors.New("connection refused")}, KindNetwork},
		{badResponse("x"), KindBadResponse},
	}
	for _, tt := range tests {
		wrapped := errors.Join(errors.New("context"), tt.err)
		if tt.err == nil {
			wrapped = nil
		}
		if got := Kind(wrapped); got != tt.want {
			t.Errorf("Kind(%v) = %q, want %q", wrapped, got, tt.want)
		}
	}
}

func TestValidDigest(t *testing.T) {
	tests := []struct {
		d    string
		want bool
	}{
		{goodDigest, true},
		{"sha512:" + strings.Repeat("0", 128), true},
		{"", false},
		{"sha256:", false},
		{strings.TrimPrefix(goodDigest, "sha256:"), false},
		{"sha256:" + strings.Repeat("0", 63), false},
		{"sha256:" + strings.Repeat("0", 65), false},
		{"sha256:" + strings.Repeat("A", 64), false},
		{"sha256:" + strings.Repeat("g", 64), false},
		{"sha512:" + strings.Repeat("0", 64), false},
		{"md5:" + strings.Repeat("0", 32), false},
		{"SHA256:" + strings.Repeat("0", 64), false},
	}
	for _, tt := range tests {
		if got := validDigest(tt.d); got != tt.want {
			t.Errorf("validDigest(%q) = %v, want %v", tt.d, got, tt.want)
		}
	}
}
