package watcher

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/state"
)

// storeFiles is a state file (and its previous generation) as found at a start.
type storeFiles struct{ main, prev string } // "-" for a file that is absent

func openStoreFiles(t *testing.T, path string, f storeFiles) *state.Store {
	t.Helper()
	for p, content := range map[string]string{path: f.main, state.PrevPath(path): f.prev} {
		os.Remove(p)
		if content == "-" {
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	store, err := state.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// TestBlockedDigestSurvivesDamagedState: the digest that was blocked before
// the state file was damaged is never deployed, whichever fallback applies:
// the previous generation still blocks it; with nothing readable, deploys
// are paused (trigger and /health answer 503, polls deploy nothing); and a
// file fixed and reloaded blocks it again.
func TestBlockedDigestSurvivesDamagedState(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")

	// A running dockward blocked digestB for app; each save keeps the
	// generation before it.
	w := newWorld()
	w.addProject("app", digestA, behaveHealthy)
	w.push("app", digestB, behaveUnhealthy)
	store := openStoreFiles(t, path, storeFiles{"-", "-"})
	h := newHarnessWithStore(t, w, store, svc("app", true))
	if res := h.trigger(t, "app"); res.Outcome != RolledBack {
		t.Fatalf("deploy of the bad digest = %+v, want rolled back", res)
	}
	if err := store.Update("app", func(s *state.Service) { s.Heal.Consecutive = 1 }); err != nil {
		t.Fatal(err)
	}
	goodMain, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	goodPrev, err := os.ReadFile(state.PrevPath(path))
	if err != nil {
		t.Fatal(err)
	}
	pulls := w.count("pull")

	tests := []struct {
		name   string
		files  storeFiles
		paused bool
	}{
		{"main file intact", storeFiles{string(goodMain), string(goodPrev)}, false},
		{"main file empty, previous generation good", storeFiles{"", string(goodPrev)}, false},
		{"main file truncated, previous generation good", storeFiles{string(goodMain[:len(goodMain)/2]), string(goodPrev)}, false},
		{"main file missing, previous generation good", storeFiles{"-", string(goodPrev)}, false},
		{"main file garbage, no previous generation", storeFiles{"garbage", "-"}, true},
		{"both empty", storeFiles{"", ""}, true},
		{"both truncated", storeFiles{string(goodMain[:10]), string(goodPrev[:10])}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := openStoreFiles(t, path, tt.files)
			h := newHarnessWithStore(t, w, store, svc("app", true))
			h.metrics.SetDeploysPaused(func() bool { _, paused := store.Paused(); return paused }) // as run does
			api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: store, Logger: h.logger, Version: "test"})
			h.u.PollAll(t.Context())
			if n := w.count("pull"); n != pulls {
				t.Fatalf("%d pulls after a poll, want %d: the blocked digest must not be deployed", n, pulls)
			}
			var health map[string]any
			rec := serve(api, "GET", "/health")
			if !tt.paused {
				if res := h.trigger(t, "app"); res.Outcome != SkipBlocked || res.Digest != digestB {
					t.Errorf("trigger = %+v, want %s skipped as blocked", res, digestB)
				}
				decodeJSON(t, rec, 200, &health)
				if health["status"] != "ok" {
					t.Errorf("GET /health = %v, want status ok", health)
				}
				if got := metric(t, h.metrics, "watcher_deploys_paused"); got != "0" {
					t.Errorf("watcher_deploys_paused = %q, want 0", got)
				}
				return
			}
			if _, err := h.u.Trigger("app"); !errors.Is(err, ErrPaused) {
				t.Errorf("Trigger while paused = %v, want ErrPaused", err)
			}
			decodeJSON(t, rec, 503, &health)
			reason, _ := health["reason"].(string)
			if health["status"] != "deploys_paused" || !strings.Contains(reason, path) || !strings.Contains(reason, "dockward state reset") ||
				health["version"] != "test" || health["services"] != 1.0 {
				t.Errorf("GET /health while paused = %v, want status deploys_paused, a reason naming %s and the way out, and the usual fields", health, path)
			}
			var refused map[string]string
			decodeJSON(t, serve(api, "POST", "/trigger/app?wait=true"), 503, &refused)
			if !strings.Contains(refused["error"], "deploys paused") {
				t.Errorf("POST /trigger/app while paused: error = %q, want the pause reason", refused["error"])
			}
			decodeJSON(t, serve(api, "POST", "/trigger"), 503, &refused)
			if got := metric(t, h.metrics, "watcher_deploys_paused"); got != "1" {
				t.Errorf("watcher_deploys_paused = %q, want 1", got)
			}
			var st Status
			decodeJSON(t, serve(api, "GET", "/status"), 200, &st)
			if !strings.Contains(st.Daemon.DeploysPaused, "deploys paused") {
				t.Errorf("GET /status daemon.deploys_paused = %q, want the reason", st.Daemon.DeploysPaused)
			}
			if n := w.count("pull"); n != pulls {
				t.Fatalf("%d pulls while paused, want %d", n, pulls)
			}

			// The operator puts a good file back and reloads.
			if err := os.WriteFile(path, goodMain, 0o600); err != nil {
				t.Fatal(err)
			}
			if resumed, err := store.Reload(); !resumed || err != nil {
				t.Fatalf("Reload after the fix = %v, %v", resumed, err)
			}
			h.u.StateReloaded()
			if got := metric(t, h.metrics, "watcher_deploys_paused"); got != "0" {
				t.Errorf("watcher_deploys_paused after the fix = %q, want 0", got)
			}
			if got := metric(t, h.metrics, `watcher_service_blocked{service="app"}`); got != "1" {
				t.Errorf("watcher_service_blocked after the fix = %q, want 1", got)
			}
			if res := h.trigger(t, "app"); res.Outcome != SkipBlocked || res.Digest != digestB {
				t.Errorf("trigger after the fix = %+v, want %s skipped as blocked", res, digestB)
			}
			decodeJSON(t, serve(api, "GET", "/health"), 200, &health)
		})
	}
	if n := w.count("pull"); n != pulls {
		t.Errorf("%d pulls in all, want %d: the blocked digest was deployed", n, pulls)
	}
}

// TestAPITriggerWaitOutlivesServerTimeouts: a ?wait=true trigger whose
// deploy takes longer than the server's read and write timeouts still gets
// its answer over real HTTP.
func TestAPITriggerWaitOutlivesServerTimeouts(t *testing.T) {
	h, api := newAPI(t)
	const timeout = 300 * time.Millisecond
	slow := 4 * timeout
	h.w.push("app", digestB, behaveHealthy)
	pull := h.w.compose.pull
	h.w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
		select {
		case <-time.After(slow):
		case <-ctx.Done():
			return ctx.Err()
		}
		return pull(ctx, p, services...)
	}
	srv := httptest.NewUnstartedServer(api)
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = timeout, timeout
	srv.Start()
	defer srv.Close()

	for _, path := range []string{"/trigger/app?wait=true", "/trigger?wait=true"} {
		start := time.Now()
		resp, err := srv.Client().Post(srv.URL+path, "", nil)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST %s = %d %s, %v", path, resp.StatusCode, body, err)
		}
		if path == "/trigger/app?wait=true" {
			var res Result
			if err := json.Unmarshal(body, &res); err != nil || res.Outcome != Deployed {
				t.Errorf("POST %s = %s, want deployed", path, body)
			}
			if elapsed := time.Since(start); elapsed < slow {
				t.Errorf("answered after %v, before the deploy could finish (%v)", elapsed, slow)
			}
			h.w.push("app", digestC, behaveHealthy) // the second request deploys too
		}
	}
}
