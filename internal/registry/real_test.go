package registry_test

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
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

// TestRealRegistryAuth runs Digest against docker-registry with htpasswd
// over TLS (a private CA) and with token auth, and counts what one poll
// costs once a token is cached.
func TestRealRegistryAuth(t *testing.T) {
	t.Run("htpasswd over TLS", func(t *testing.T) {
		dir := t.TempDir()
		ca := registrytest.NewCA(t, "dockward test CA")
		cert, key := ca.Issue(t, dir)
		reg := registrytest.StartWith(t, registrytest.Options{TLSCert: cert, TLSKey: key, CA: ca,
			Htpasswd: registrytest.Htpasswd(t, dir, "ci", "s3cret-htpasswd")})
		tlsCfg := &tls.Config{RootCAs: ca.Pool()}
		// The manifest does not exist: a 404 after authenticating proves
		// the credentials passed; a 401 would say they did not.
		c, err := registry.New(reg.URL, registry.WithTLSConfig(tlsCfg), registry.WithBasicAuth("ci", "s3cret-htpasswd"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Digest(t.Context(), "team/app", "latest"); registry.Kind(err) != registry.KindNotFound {
			t.Fatalf("Digest with the right password = %v, want not_found", err)
		}
		bad, _ := registry.New(reg.URL, registry.WithTLSConfig(tlsCfg), registry.WithBasicAuth("ci", "wrong"))
		if _, err := bad.Digest(t.Context(), "team/app", "latest"); registry.Kind(err) != registry.KindUnauthorized {
			t.Fatalf("Digest with a wrong password = %v, want unauthorized", err)
		}
		untrusting, _ := registry.New(reg.URL, registry.WithBasicAuth("ci", "s3cret-htpasswd"))
		if _, err := untrusting.Digest(t.Context(), "team/app", "latest"); registry.Kind(err) != registry.KindNetwork || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("Digest without the CA = %v, want a certificate error", err)
		}
	})
	t.Run("token", func(t *testing.T) {
		tokens := registrytest.StartTokenServer(t, map[string]string{"ci": "s3cret-token"}, 300)
		reg := registrytest.StartWith(t, registrytest.Options{Token: tokens})
		c, err := registry.New(reg.URL, registry.WithBasicAuth("ci", "s3cret-token"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if _, err := c.Digest(t.Context(), "team/app", "latest"); registry.Kind(err) != registry.KindNotFound {
				t.Fatalf("Digest #%d = %v, want not_found (authenticated, no such tag)", i, err)
			}
		}
		if n := tokens.Issued("dockward"); n != 1 {
			t.Errorf("%d tokens issued for 3 digests, want 1 (cached)", n)
		}
		// A restart with a new key refuses the cached token: one new token.
		tokens.Rotate()
		reg.Restart()
		if _, err := c.Digest(t.Context(), "team/app", "latest"); registry.Kind(err) != registry.KindNotFound {
			t.Fatalf("Digest after the key rotation = %v, want not_found", err)
		}
		if n := tokens.Issued("dockward"); n != 2 {
			t.Errorf("%d tokens issued after the key rotation, want 2", n)
		}
	})
}
