package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkDigest measures one poll of one tag (HEAD over a kept-alive
// loopback connection), the cost a service adds to every poll cycle.
func BenchmarkDigest(b *testing.B) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Content-Digest", digest)
		w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
	}))
	defer srv.Close()
	c, err := New(srv.URL)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Digest(ctx, "team/app", "latest"); err != nil {
			b.Fatal(err)
		}
	}
}
