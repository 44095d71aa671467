package docker

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeEngine answers like a Docker engine serving API versions minVersion
// to apiVersion: GET /version from testdata/version.json, and routes keyed by
// method and the path after the version prefix exactly as it arrived
// ("GET /containers/abc/json").
// Anything else is the engine's 404 "page not found".
type fakeEngine struct {
	t      *testing.T
	routes map[string]http.HandlerFunc

	mu            sync.Mutex
	apiVersion    string
	minVersion    string   // "" for an engine that reports none and accepts any
	upgraded      bool     // versions changed by upgrade: refusals are expected
	requests      []string // method and request URI, as received
	versionErrors []int    // statuses to answer the first GET /version requests with
}

func (e *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	e.requests = append(e.requests, r.Method+" "+r.RequestURI)
	failWith := 0
	if len(e.versionErrors) > 0 && r.URL.Path == "/version" {
		failWith, e.versionErrors = e.versionErrors[0], e.versionErrors[1:]
	}
	highVersion, minVersion, upgraded := e.apiVersion, e.minVersion, e.upgraded
	e.mu.Unlock()

	path := r.URL.EscapedPath()
	if path == "/version" {
		if failWith != 0 {
			writeError(w, failWith, "daemon is starting")
			return
		}
		writeJSON(w, http.StatusOK, versionFixture(e.t, highVersion, minVersion))
		return
	}
	// Like the engine, serve the versions from minVersion to highVersion,
	// refusing others with the engine's messages.
	version, rest, _ := strings.Cut(strings.TrimPrefix(path, "/v"), "/")
	asked, err1 := parseAPIVersion(version)
	high, err2 := parseAPIVersion(highVersion)
	if err1 != nil || err2 != nil || high.less(asked) {
		if !upgraded {
			e.t.Errorf("fake engine at API %s got %s %s", highVersion, r.Method, r.RequestURI)
		}
		writeError(w, http.StatusBadRequest, "client version "+version+" is too new. Maximum supported API version is "+highVersion)
		return
	}
	if minVersion != "" {
		low, err := parseAPIVersion(minVersion)
		if err != nil || asked.less(low) {
			if !upgraded {
				e.t.Errorf("fake engine with minimum API %s got %s %s", minVersion, r.Method, r.RequestURI)
			}
			writeError(w, http.StatusBadRequest, "client version "+version+" is too old. Minimum supported API version is "+minVersion+", please upgrade your client to a newer version")
			return
		}
	}
	h, ok := e.routes[r.Method+" /"+rest]
	if !ok {
		writeError(w, http.StatusNotFound, "page not found")
		return
	}
	h(w, r)
}

// upgrade changes the API versions the engine serves, as an engine upgraded
// (or downgraded) in place while a client stays connected.
func (e *fakeEngine) upgrade(apiVersion, minVersion string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.apiVersion, e.minVersion, e.upgraded = apiVersion, minVersion, true
}

// received returns the requests the engine got so far.
func (e *fakeEngine) received() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.requests...)
}

// newEngine starts a fake engine serving API versions 1.12 (the minimum of
// Docker 20.10) to apiVersion on a unix socket and returns a client for it.
func newEngine(t *testing.T, apiVersion string, routes map[string]http.HandlerFunc) (*Client, *fakeEngine) {
	t.Helper()
	return newEngineRange(t, "1.12", apiVersion, routes)
}

// newEngineRange is newEngine for an engine serving API versions minVersion
// to apiVersion; an empty minVersion is not reported, as by engines older
// than API 1.25.
func newEngineRange(t *testing.T, minVersion, apiVersion string, routes map[string]http.HandlerFunc) (*Client, *fakeEngine) {
	t.Helper()
	e := &fakeEngine{t: t, apiVersion: apiVersion, minVersion: minVersion, routes: routes}
	sock := socketPath(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen on %s: %v", sock, err)
	}
	srv := httptest.NewUnstartedServer(e)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return New(sock, testLogger(t)), e
}

// shortenTimeout negotiates the API version with the default timeout, so
// that a loaded machine cannot fail it, then sets the per-call timeout.
func shortenTimeout(t *testing.T, c *Client, d time.Duration) {
	t.Helper()
	if _, err := c.Version(t.Context()); err != nil {
		t.Fatalf("Version(): %v", err)
	}
	c.timeout = d
}

// socketPath returns a path for a unix socket in a temporary directory,
// short enough for the 108-byte limit on socket paths.
func socketPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 90 {
		var err error
		if dir, err = os.MkdirTemp("", "dw"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return filepath.Join(dir, "docker.sock")
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("read fixture: %v", err)
	}
	return b
}

// versionFixture is the real engine's GET /version answer with its
// ApiVersion and MinAPIVersion replaced; an empty minVersion removes the
// latter.
func versionFixture(t *testing.T, apiVersion, minVersion string) []byte {
	var v map[string]any
	if err := json.Unmarshal(fixture(t, "version.json"), &v); err != nil {
		t.Errorf("decode version.json: %v", err)
	}
	v["ApiVersion"] = apiVersion
	if minVersion == "" {
		delete(v, "MinAPIVersion")
	} else {
		v["MinAPIVersion"] = minVersion
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Errorf("encode version: %v", err)
	}
	return b
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Api-Version", "1.41")
	w.WriteHeader(status)
	w.Write(body)
}

// writeError answers like the engine does: {"message": "..."}.
func writeError(w http.ResponseWriter, status int, message string) {
	b, _ := json.Marshal(map[string]string{"message": message})
	writeJSON(w, status, append(b, '\n'))
}

func serveFixture(t *testing.T, status int, name string) http.HandlerFunc {
	body := fixture(t, name)
	return func(w http.ResponseWriter, r *http.Request) { writeJSON(w, status, body) }
}

func serveError(status int, message string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { writeError(w, status, message) }
}

func TestVersionNegotiation(t *testing.T) {
	tests := []struct {
		name      string
		engine    string // ApiVersion
		engineMin string // MinAPIVersion, "" for none reported
		want      string
	}{
		{"docker 20.10", "1.41", "1.12", "1.41"},
		{"older engine", "1.40", "1.12", "1.40"},
		{"much older engine", "1.25", "1.12", "1.25"},
		{"engine without MinAPIVersion", "1.24", "", "1.24"},
		{"engine at our version", "1.47", "1.24", "1.47"},
		{"newer engine", "1.48", "1.24", "1.47"},
		{"docker 29", "1.52", "1.44", "1.47"},
		{"engine minimum at our version", "1.55", "1.47", "1.47"},
		{"minor compared as a number", "1.9", "", "1.9"},
		{"minimum compared as a number", "1.52", "1.5", "1.47"},
		{"newer major", "2.0", "1.44", "1.47"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, e := newEngineRange(t, tt.engineMin, tt.engine, map[string]http.HandlerFunc{
				"GET /containers/json": func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, []byte("[]\n")) },
			})
			ctx := t.Context()
			if ev, av := c.EngineVersion(); ev != "" || av != "" {
				t.Errorf("EngineVersion() before negotiation = %q, %q, want empty", ev, av)
			}
			for range 2 {
				if _, err := c.ListContainers(ctx, "shop", false); err != nil {
					t.Fatalf("ListContainers: %v", err)
				}
			}
			got, err := c.Version(ctx)
			if err != nil || got != tt.want {
				t.Errorf("Version() = %q, %v, want %q", got, err, tt.want)
			}
			if ev, av := c.EngineVersion(); ev != "20.10.24+dfsg1" || av != tt.want {
				t.Errorf("EngineVersion() = %q, %q, want %q, %q", ev, av, "20.10.24+dfsg1", tt.want)
			}
			reqs := e.received()
			if len(reqs) != 3 || reqs[0] != "GET /version" {
				t.Fatalf("engine received %q, want GET /version once, then two listings", reqs)
			}
			for _, r := range reqs[1:] {
				if want := "GET /v" + tt.want + "/containers/json?"; !strings.HasPrefix(r, want) {
					t.Errorf("engine received %q, want prefix %q", r, want)
				}
			}
		})
	}
}

func TestVersionEngineTooNew(t *testing.T) {
	tests := []struct {
		name      string
		engine    string
		engineMin string
		wantErr   string
	}{
		{
			name: "engine minimum above ours", engine: "1.55", engineMin: "1.50",
			wantErr: "the Docker engine requires API ≥ 1.50 but dockward speaks at most 1.47; upgrade dockward",
		},
		{
			name: "newer major only", engine: "2.3", engineMin: "2.0",
			wantErr: "the Docker engine requires API ≥ 2.0 but dockward speaks at most 1.47; upgrade dockward",
		},
		{
			name: "minimum above the engine's own maximum", engine: "1.40", engineMin: "1.44",
			wantErr: "engine reports MinAPIVersion 1.44 above its ApiVersion 1.40",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, e := newEngineRange(t, tt.engineMin, tt.engine, nil)
			_, err := c.InspectContainer(t.Context(), "abc123")
			want := "inspect container abc123: negotiate docker API version: " + tt.wantErr
			if err == nil || err.Error() != want {
				t.Fatalf("InspectContainer(%q) error = %v, want %q", "abc123", err, want)
			}
			if _, ok := errors.AsType[*APIError](err); ok {
				t.Errorf("errors.AsType[*APIError](%v) matched; a version mismatch is not an engine answer", err)
			}
			if reqs := e.received(); len(reqs) != 1 || reqs[0] != "GET /version" {
				t.Errorf("engine received %q, want only GET /version", reqs)
			}
		})
	}
}

// TestVersionRefusedAfterNegotiation covers an engine replaced under a
// running client: a call at the old version is refused with a readable
// error, and the next call negotiates again.
func TestVersionRefusedAfterNegotiation(t *testing.T) {
	tests := []struct {
		name                  string
		engine, engineMin     string // after the change
		wantMessage           string
		wantVersionAfterwards string
	}{
		{
			name: "engine upgraded to docker 29", engine: "1.52", engineMin: "1.44",
			wantMessage:           "client version 1.41 is too old. Minimum supported API version is 1.44, please upgrade your client to a newer version",
			wantVersionAfterwards: "1.47",
		},
		{
			name: "engine downgraded", engine: "1.40", engineMin: "1.12",
			wantMessage:           "client version 1.41 is too new. Maximum supported API version is 1.40",
			wantVersionAfterwards: "1.40",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
				"GET /containers/abc123/json": serveFixture(t, http.StatusOK, "container_web_unhealthy.json"),
			})
			ctx := t.Context()
			if _, err := c.InspectContainer(ctx, "abc123"); err != nil {
				t.Fatalf("InspectContainer before the change: %v", err)
			}
			e.upgrade(tt.engine, tt.engineMin)

			_, err := c.InspectContainer(ctx, "abc123")
			want := "inspect container abc123: docker API 400: " + tt.wantMessage +
				" (the engine no longer accepts API 1.41, negotiated with it earlier; dockward negotiates again on the next call)"
			if err == nil || err.Error() != want {
				t.Fatalf("InspectContainer after the change: error = %v, want %q", err, want)
			}
			apiErr, ok := errors.AsType[*APIError](err)
			if !ok || apiErr.StatusCode != http.StatusBadRequest || apiErr.Message != tt.wantMessage {
				t.Errorf("errors.AsType[*APIError](%v) = %+v, %v, want a 400 with the engine's message", err, apiErr, ok)
			}
			if errors.Is(err, ErrNotFound) {
				t.Errorf("errors.Is(%v, ErrNotFound) = true", err)
			}

			if _, err := c.InspectContainer(ctx, "abc123"); err != nil {
				t.Fatalf("InspectContainer after renegotiating: %v", err)
			}
			if v, err := c.Version(ctx); err != nil || v != tt.wantVersionAfterwards {
				t.Errorf("Version() = %q, %v, want %q", v, err, tt.wantVersionAfterwards)
			}
			wantReqs := []string{
				"GET /version",
				"GET /v1.41/containers/abc123/json",
				"GET /v1.41/containers/abc123/json",
				"GET /version",
				"GET /v" + tt.wantVersionAfterwards + "/containers/abc123/json",
			}
			if reqs := e.received(); strings.Join(reqs, "\n") != strings.Join(wantReqs, "\n") {
				t.Errorf("engine received %q, want %q", reqs, wantReqs)
			}
		})
	}
}

func TestIsVersionRejection(t *testing.T) {
	tests := []struct {
		message string
		want    bool
	}{
		{"client version 1.41 is too old. Minimum supported API version is 1.44, please upgrade your client to a newer version", true},
		{"client version 1.47 is too new. Maximum supported API version is 1.41", true},
		{"Client version 1.11 is too old. Minimum supported API version is 1.12, please upgrade your client to a newer version", true},
		{"No such container: abc123", false},
		{"invalid reference format: repository name must be lowercase", false},
		{"the client version is too old", false},
	}
	for _, tt := range tests {
		if got := isVersionRejection(tt.message); got != tt.want {
			t.Errorf("isVersionRejection(%q) = %v, want %v", tt.message, got, tt.want)
		}
	}
}

func TestVersionRetriesAfterFailure(t *testing.T) {
	c, e := newEngine(t, "1.41", nil)
	e.versionErrors = []int{500, 404}
	ctx := t.Context()

	_, err := c.Version(ctx)
	const want = "negotiate docker API version: docker API 500: daemon is starting"
	if err == nil || err.Error() != want {
		t.Fatalf("first Version() error = %v, want %q", err, want)
	}
	// A 404 from /version is not the container being missing.
	_, err = c.InspectContainer(ctx, "abc123")
	const wantInspect = "inspect container abc123: negotiate docker API version: docker API 404: daemon is starting"
	if err == nil || err.Error() != wantInspect || errors.Is(err, ErrNotFound) {
		t.Fatalf("InspectContainer(%q) with /version answering 404 = %v, want %q not matching ErrNotFound", "abc123", err, wantInspect)
	}
	got, err := c.Version(ctx)
	if err != nil || got != "1.41" {
		t.Fatalf("third Version() = %q, %v, want 1.41", got, err)
	}
	if n := len(e.received()); n != 3 {
		t.Errorf("engine received %d requests, want 3", n)
	}
}

func TestVersionConcurrentCallsNegotiateOnce(t *testing.T) {
	c, e := newEngine(t, "1.41", nil)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if v, err := c.Version(t.Context()); err != nil || v != "1.41" {
				t.Errorf("Version() = %q, %v, want 1.41", v, err)
			}
		})
	}
	wg.Wait()
	if reqs := e.received(); len(reqs) != 1 {
		t.Errorf("engine received %q, want a single GET /version", reqs)
	}
}

func TestVersionMalformed(t *testing.T) {
	for _, v := range []string{"", "1", "one.two", "1.x", "1.-1"} {
		c, _ := newEngine(t, v, nil)
		_, err := c.Version(t.Context())
		if err == nil || !strings.Contains(err.Error(), "engine ApiVersion: malformed API version") {
			t.Errorf("Version() with engine ApiVersion %q: error = %v, want malformed API version", v, err)
		}
	}
	for _, v := range []string{"1", "one.two", "1.x", "1.-1"} {
		c, _ := newEngineRange(t, v, "1.41", nil)
		_, err := c.Version(t.Context())
		if err == nil || !strings.Contains(err.Error(), "engine MinAPIVersion: malformed API version") {
			t.Errorf("Version() with engine MinAPIVersion %q: error = %v, want malformed API version", v, err)
		}
	}
}

func TestNoEngine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "missing.sock")
	c := New(sock, testLogger(t))
	_, err := c.InspectContainer(t.Context(), "abc123")
	if err == nil {
		t.Fatal("InspectContainer with no engine: no error")
	}
	for _, want := range []string{"inspect container abc123: negotiate docker API version: ", sock, "no such file or directory"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("InspectContainer with no engine: error %q, want it to contain %q", err, want)
		}
	}
}

func TestAPIError(t *testing.T) {
	tests := []struct {
		name         string
		handler      http.HandlerFunc
		wantErr      string
		wantNotFound bool
	}{
		{
			name:         "not found",
			handler:      serveError(404, "No such container: abc123"),
			wantErr:      "inspect container abc123: docker API 404: No such container: abc123",
			wantNotFound: true,
		},
		{
			name:    "server error",
			handler: serveError(500, "Cannot connect to the containerd daemon"),
			wantErr: "inspect container abc123: docker API 500: Cannot connect to the containerd daemon",
		},
		{
			name: "plain text body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "upstream proxy failed", http.StatusBadGateway)
			},
			wantErr: "inspect container abc123: docker API 502: upstream proxy failed",
		},
		{
			name: "redirect not followed",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/v1.41/containers/other/json", http.StatusMovedPermanently)
			},
			wantErr: `inspect container abc123: docker API 301: <a href="/v1.41/containers/other/json">Moved Permanently</a>.`,
		},
		{
			name:    "empty body",
			handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusConflict) },
			wantErr: "inspect container abc123: docker API 409: (empty body)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": tt.handler})
			_, err := c.InspectContainer(t.Context(), "abc123")
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("InspectContainer(%q) error = %v, want %q", "abc123", err, tt.wantErr)
			}
			if got := errors.Is(err, ErrNotFound); got != tt.wantNotFound {
				t.Errorf("errors.Is(%v, ErrNotFound) = %v, want %v", err, got, tt.wantNotFound)
			}
			apiErr, ok := errors.AsType[*APIError](err)
			if !ok || apiErr.Op != "inspect container abc123" {
				t.Errorf("errors.AsType[*APIError](%v) = %+v, %v, want Op %q", err, apiErr, ok, "inspect container abc123")
			}
		})
	}
}

func TestCallTimeout(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /containers/slow/json": func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		},
	})
	shortenTimeout(t, c, 100*time.Millisecond)
	start := time.Now()
	_, err := c.InspectContainer(t.Context(), "slow")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("InspectContainer(%q) = %v, want a deadline exceeded error", "slow", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("InspectContainer(%q) took %s with a 100ms timeout", "slow", d)
	}
}

// TestUnavailable sorts real failures of real calls: an engine that is
// away (no socket, a socket nobody listens on, a connection cut mid-answer,
// a timeout, a 5xx) from an engine that answers "no".
func TestUnavailable(t *testing.T) {
	cut := func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}
	slow := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	tests := []struct {
		name   string
		client func(t *testing.T) *Client
		want   bool
	}{
		{"no socket", func(t *testing.T) *Client { return New(filepath.Join(t.TempDir(), "missing.sock"), testLogger(t)) }, true},
		{"socket without a listener", func(t *testing.T) *Client {
			sock := socketPath(t)
			l, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			l.Close()
			return New(sock, testLogger(t))
		}, true},
		{"version 503 while the daemon starts", func(t *testing.T) *Client {
			c, e := newEngine(t, "1.41", nil)
			e.versionErrors = []int{503}
			return c
		}, true},
		{"version 404", func(t *testing.T) *Client {
			c, e := newEngine(t, "1.41", nil)
			e.versionErrors = []int{404}
			return c
		}, false},
		{"500", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": serveError(500, "Cannot connect to the containerd daemon")})
			return c
		}, true},
		{"502 from a proxy", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": serveError(502, "bad gateway")})
			return c
		}, true},
		{"404", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": serveError(404, "No such container: abc123")})
			return c
		}, false},
		{"409", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": serveError(409, "conflict")})
			return c
		}, false},
		{"connection cut mid-answer", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": cut})
			return c
		}, true},
		{"timeout", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": slow})
			shortenTimeout(t, c, 50*time.Millisecond)
			return c
		}, true},
		{"bad JSON", func(t *testing.T) *Client {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /containers/abc123/json": func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, http.StatusOK, []byte(`{"Id": 12}`))
			}})
			return c
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.client(t).InspectContainer(t.Context(), "abc123")
			if err == nil {
				t.Fatal("InspectContainer = nil error, want one")
			}
			if got := Unavailable(err); got != tt.want {
				t.Errorf("Unavailable(%v) = %v, want %v", err, got, tt.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	c, _ := newEngine(t, "1.41", nil)
	if _, err := c.InspectContainer(ctx, "abc123"); Unavailable(err) {
		t.Errorf("Unavailable(%v) = true for the caller's own cancellation, want false", err)
	}
	if Unavailable(nil) {
		t.Error("Unavailable(nil) = true")
	}
}
