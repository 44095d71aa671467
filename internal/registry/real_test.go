package registry_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/registry/registrytest"
)

// TestRealRegistry runs Digest against Debian's docker-registry (distribution
// 2.8). It fails, rather than skips, when docker-registry is not installed.
func TestRealRegistry(t *testing.T) {
	base := registrytest.Start(t)
	c, err := registry.New(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(t.Context()); err != nil {
		t.Fatalf("Ping() = %v", err)
	}

	v1 := registrytest.Push(t, base, "team/app", "latest", []byte("v1"))
	got, err := c.Digest(t.Context(), "team/app", "latest")
	if err != nil || got != v1 {
		t.Fatalf("Digest(team/app, latest) = %q, %v, want %q", got, err, v1)
	}

	// A new push moves the tag; the old digest must not come back.
	v2 := registrytest.Push(t, base, "team/app", "latest", []byte("v2"))
	if v2 == v1 {
		t.Fatalf("pushing other content gave the same digest %s", v1)
	}
	if got, err := c.Digest(t.Context(), "team/app", "latest"); err != nil || got != v2 {
		t.Fatalf("after a second push, Digest(team/app, latest) = %q, %v, want %q", got, err, v2)
	}

	for _, tt := range []struct{ name, repo, tag string }{
		{"unknown tag", "team/app", "nope"},
		{"unknown repository", "team/nope", "latest"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, err := c.Digest(t.Context(), tt.repo, tt.tag)
			if !errors.Is(err, registry.ErrNotFound) || registry.Kind(err) != registry.KindNotFound {
				t.Fatalf("Digest(%q, %q) = %q, %v (kind %q), want ErrNotFound", tt.repo, tt.tag, d, err, registry.Kind(err))
			}
		})
	}

	t.Run("GET fallback behind a proxy that strips the digest header", func(t *testing.T) {
		target, err := url.Parse(base)
		if err != nil {
			t.Fatal(err)
		}
		var gets int
		proxy := httputil.NewSingleHostReverseProxy(target)
		proxy.ModifyResponse = func(resp *http.Response) error {
			if resp.Request.Method == http.MethodGet {
				gets++
			}
			resp.Header.Del("Docker-Content-Digest")
			return nil
		}
		srv := httptest.NewServer(proxy)
		defer srv.Close()
		pc, err := registry.New(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := pc.Digest(t.Context(), "team/app", "latest"); err != nil || got != v2 {
			t.Fatalf("Digest via stripping proxy = %q, %v, want %q", got, err, v2)
		}
		if gets != 1 {
			t.Errorf("proxy saw %d GETs, want 1 (the fallback)", gets)
		}
	})
}
