package registry_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/registry/registrytest"
)

// TestPromoteRealRegistry copies manifests between tags of Debian's
// docker-registry: an image manifest and an image index keep their bytes,
// media type and digest.
func TestPromoteRealRegistry(t *testing.T) {
	base := registrytest.Start(t)
	c, err := registry.New(base)
	if err != nil {
		t.Fatal(err)
	}
	v1 := registrytest.Push(t, base, "team/app", "latest", []byte("v1"))
	v2 := registrytest.Push(t, base, "team/app", "latest", []byte("v2"))
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []map[string]any{{
			"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
			"digest":    v2, "size": manifestSize(t, base, "team/app", v2),
			"platform": map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	idx := registrytest.PutManifest(t, base, "team/app", "multi", "application/vnd.oci.image.index.v1+json", index)

	for _, tt := range []struct{ name, digest string }{
		{"image manifest", v1},
		{"image index", idx},
		{"again, over the previous promotion", v2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := c.Promote(t.Context(), "team/app", tt.digest, "stable"); err != nil {
				t.Fatalf("Promote(%s) = %v", tt.digest, err)
			}
			if got, err := c.Digest(t.Context(), "team/app", "stable"); err != nil || got != tt.digest {
				t.Fatalf("after Promote, Digest(team/app, stable) = %q, %v, want %q", got, err, tt.digest)
			}
		})
	}
	if got, err := c.Digest(t.Context(), "team/app", "latest"); err != nil || got != v2 {
		t.Errorf("Promote moved :latest: %q, %v, want %q", got, err, v2)
	}

	unknown := "sha256:" + strings.Repeat("0", 64)
	if err := c.Promote(t.Context(), "team/app", unknown, "stable"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("Promote(unknown digest) = %v, want ErrNotFound", err)
	}
	for _, bad := range []struct{ digest, tag string }{{"sha256:abc", "stable"}, {v1, "not a tag"}} {
		if err := c.Promote(t.Context(), "team/app", bad.digest, bad.tag); err == nil {
			t.Errorf("Promote(%q, %q) = nil, want an error", bad.digest, bad.tag)
		}
	}
}

func manifestSize(t *testing.T, base, repo, digest string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v2/"+repo+"/manifests/"+digest, nil)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return len(b)
}

// pushRegistry is a registry behind a token server, as Docker Hub or
// Harbor are: it records the scope each token was asked for, and keeps the
// manifests PUT to it.
type pushRegistry struct {
	mu        sync.Mutex
	scopes    []string
	manifests map[string][2]string // reference -> body, media type
	putStatus int                  // answer to PUT; 0: 201
	tagTo     string               // if set, HEAD of a tag answers this digest
	server    *httptest.Server
}

func newPushRegistry(t *testing.T) *pushRegistry {
	r := &pushRegistry{manifests: map[string][2]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/token", func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.scopes = append(r.scopes, req.URL.Query().Get("scope"))
		r.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"token": "tok-" + req.URL.Query().Get("scope"), "expires_in": 300})
	})
	mux.HandleFunc("/v2/", func(w http.ResponseWriter, req *http.Request) {
		want := "repository:team/app:pull"
		if req.Method == http.MethodPut {
			want = "repository:team/app:pull,push"
		}
		if got := strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer tok-"); got != want && !(req.Method != http.MethodPut && got == want+",push") {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test",scope="%s"`, r.server.URL, want))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		ref := req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]
		r.mu.Lock()
		defer r.mu.Unlock()
		switch req.Method {
		case http.MethodPut:
			b, _ := io.ReadAll(req.Body)
			if r.putStatus != 0 {
				w.WriteHeader(r.putStatus)
				return
			}
			r.manifests[ref] = [2]string{string(b), req.Header.Get("Content-Type")}
			w.Header().Set("Docker-Content-Digest", sha(b))
			w.WriteHeader(http.StatusCreated)
		case http.MethodGet, http.MethodHead:
			m, ok := r.manifests[ref]
			if !ok {
				w.WriteHeader(http.StatusNotFound)
				return
			}
			d := sha([]byte(m[0]))
			if r.tagTo != "" && !strings.HasPrefix(ref, "sha256:") {
				d = r.tagTo
			}
			w.Header().Set("Content-Type", m[1])
			w.Header().Set("Docker-Content-Digest", d)
			if req.Method == http.MethodGet {
				io.WriteString(w, m[0])
			}
		}
	})
	r.server = httptest.NewServer(mux)
	t.Cleanup(r.server.Close)
	return r
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// TestPromoteAsksForPush checks the token scope (pull,push), that the PUT
// carries the exact bytes and media type, and what a refused or raced PUT
// gives.
func TestPromoteAsksForPush(t *testing.T) {
	const body = `{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}`
	const mediaType = "application/vnd.oci.image.manifest.v1+json"
	digest := sha([]byte(body))
	tests := []struct {
		name      string
		stored    [2]string
		putStatus int
		tagTo     string
		wantErr   string
	}{
		{name: "copied", stored: [2]string{body, mediaType}},
		{name: "push refused", stored: [2]string{body, mediaType}, putStatus: http.StatusForbidden, wantErr: "403"},
		{name: "tag moved by someone else", stored: [2]string{body, mediaType}, tagTo: "sha256:" + strings.Repeat("e", 64), wantErr: "another push moved it"},
		{name: "bytes do not match the digest", stored: [2]string{body + " ", mediaType}, wantErr: "hash to"},
		{name: "not a manifest", stored: [2]string{body, "text/html"}, wantErr: "not a manifest type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newPushRegistry(t)
			r.manifests[digest] = tt.stored
			r.putStatus, r.tagTo = tt.putStatus, tt.tagTo
			c, err := registry.New(r.server.URL, registry.WithBasicAuth("ci", "secret"))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Promote(t.Context(), "team/app", digest, "stable")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Promote = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Promote = %v", err)
			}
			if got := r.manifests["stable"]; got != tt.stored {
				t.Errorf("PUT stored %q, want the exact bytes and media type %q", got, tt.stored)
			}
			for _, s := range r.scopes {
				if s != "repository:team/app:pull,push" && s != "repository:team/app:pull" {
					t.Errorf("token asked for scope %q", s)
				}
			}
			if !contains(r.scopes, "repository:team/app:pull,push") {
				t.Errorf("token scopes %v, want one for pull,push", r.scopes)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
