package watcher

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
)

// Refused credentials are a critical update_failed alert once per change
// of state, and an info one when the registry accepts them again; never a
// deploy, a block or a crash.
func TestUnauthorizedAlertsOncePerChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		refused := &registry.StatusError{Method: "HEAD", Path: "/v2/app/manifests/latest", StatusCode: 401, Auth: `Basic auth (user "ci")`}
		network := fmt.Errorf("HEAD /v2/app/manifests/latest: %w", registry.ErrNetwork)
		errs := []error{refused, refused, refused, nil, nil, refused, network, refused}
		i := 0
		digest := w.registry.digest
		w.registry.digest = func(ctx context.Context, repository, tag string) (string, error) {
			err := errs[i]
			i++
			if err != nil {
				return "", err
			}
			return digest(ctx, repository, tag)
		}
		for range errs {
			h.trigger(t, "app")
		}
		synctest.Wait()

		type alert struct {
			event notify.Event
			level notify.Level
		}
		var got []alert
		for _, a := range w.Alerts() {
			got = append(got, alert{a.Event, a.Level})
			if a.Level == notify.Critical && !strings.Contains(a.Reason, `401 Unauthorized after Basic auth (user "ci")`) {
				t.Errorf("alert reason %q does not say what was refused", a.Reason)
			}
		}
		refusedA, back := alert{notify.UpdateFailed, notify.Critical}, alert{notify.UpdateFailed, notify.Info}
		// refused, (same), (same), back, -, refused, network (no alert), refused again
		want := []alert{refusedA, back, refusedA, refusedA}
		if !slices.Equal(got, want) {
			t.Errorf("alerts = %v, want %v", got, want)
		}
		if got := metric(t, h.metrics, `watcher_registry_errors_total{service="app",kind="unauthorized"}`); got != "5" {
			t.Errorf("unauthorized errors = %s, want 5", got)
		}
		if n := w.count("pull") + w.count("up") + w.count("tag"); n != 0 {
			t.Errorf("calls = %q, want no deploy", w.Calls())
		}
	})
}
