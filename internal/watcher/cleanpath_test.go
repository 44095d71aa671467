package watcher

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCleanPath(t *testing.T) {
	tests := []struct {
		path string
		want bool
	}{
		{"/", true},
		{"/health", true},
		{"/trigger/web", true},
		{"/trigger/", true},
		{"/trigger/a..b", true},
		{"/trigger/..", false},
		{"/trigger/../health", false},
		{"/trigger/./web", false},
		{"/trigger//web", false},
		{"//trigger", false},
		{"/..", false},
		{"trigger", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := cleanPath(tt.path); got != tt.want {
			t.Errorf("cleanPath(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
}

// A path that the mux would redirect to its clean form is refused instead:
// a client following the redirect could POST to another route.
func TestGuardRefusesUncleanPaths(t *testing.T) {
	called := false
	h := guarded(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called = true }), "")
	for _, p := range []string{"/x/../trigger/web", "/trigger/..", "/blocked/./web", "/trigger//web"} {
		called = false
		req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9090/", nil)
		req.URL.Path = p
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || called || !strings.Contains(rec.Body.String(), `"error"`) {
			t.Errorf("POST %s = %d %s (handler called: %v), want 400 with a JSON error", p, rec.Code, rec.Body, called)
		}
	}
}
