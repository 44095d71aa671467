package watcher

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// fakePromoter records the promotions asked for.
type fakePromoter struct {
	mu    sync.Mutex
	calls []string // "repository@digest -> tag"
	fail  error
}

var _ promoter = (*fakePromoter)(nil)

func (f *fakePromoter) Promote(ctx context.Context, repository, digest, tag string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, repository+"@"+digest+" -> "+tag)
	return f.fail
}

func (f *fakePromoter) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

const soak = 120 * time.Second

// canary is a harness whose service "app" promotes to :stable after soak.
func canary(t *testing.T, w *world, store *state.Store) (*harness, *fakePromoter) {
	t.Helper()
	c := svc("app", true)
	c.PromoteTag = "stable"
	c.PromoteAfter = 120
	var h *harness
	if store == nil {
		h = newHarness(t, w, c)
	} else {
		h = newHarnessWithStore(t, w, store, c)
	}
	fp := &fakePromoter{}
	h.u.promoter = fp
	return h, fp
}

func promoteCall(d string) string { return "app@" + d + " -> stable" }

func countEvents(w *world, e notify.Event) int {
	n := 0
	for _, got := range w.events() {
		if got == e {
			n++
		}
	}
	return n
}

func TestPromotionAfterSoak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h, fp := canary(t, w, nil)
		if res := h.trigger(t, "app"); res.Outcome != Deployed {
			t.Fatalf("deploy = %+v", res)
		}
		p := h.store.Get("app").Promotion
		if p == nil || p.Digest != digestB || p.Tag != "stable" || p.NotBefore.Sub(p.Verified) != soak {
			t.Fatalf("pending promotion = %+v, want %s to stable after %v", p, digestB, soak)
		}
		time.Sleep(soak - time.Second)
		synctest.Wait()
		if got := fp.Calls(); len(got) != 0 {
			t.Fatalf("promoted before the soak ended: %v", got)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := fp.Calls(); !slices.Equal(got, []string{promoteCall(digestB)}) {
			t.Fatalf("promotions = %v, want %s", got, promoteCall(digestB))
		}
		if p := h.store.Get("app").Promotion; p != nil {
			t.Errorf("promotion still pending after it was done: %+v", p)
		}
		if got := metric(t, h.metrics, `watcher_promotions_total{service="app"}`); got != "1" {
			t.Errorf("watcher_promotions_total = %q, want 1", got)
		}
		var promoted []notify.Alert
		for _, a := range w.Alerts() {
			if a.Event == notify.Promoted {
				promoted = append(promoted, a)
			}
		}
		if len(promoted) != 1 || promoted[0].Level != notify.Info || promoted[0].Digest != digestB || promoted[0].Image != testRegistryHost+"/app:stable" {
			t.Errorf("promoted alerts = %+v, want one info alert for %s to %s/app:stable", promoted, digestB, testRegistryHost)
		}
	})
}

func TestPromotionWithoutSoak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h, fp := canary(t, w, nil)
		h.u.mu.Lock()
		h.u.services["app"].cfg.PromoteAfter = 0
		h.u.mu.Unlock()
		h.trigger(t, "app")
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if got := fp.Calls(); !slices.Equal(got, []string{promoteCall(digestB)}) {
			t.Fatalf("promotions = %v, want %s within seconds of the deploy", got, promoteCall(digestB))
		}
	})
}

// What happens during the soak cancels the promotion; nothing is promoted.
func TestPromotionCancelled(t *testing.T) {
	tests := []struct {
		name   string
		during func(w *world, h *harness)
		reason string // in the log
	}{
		{"the service turns unhealthy", func(w *world, h *harness) { w.setBehaviour(digestB, behaveUnhealthy) }, "is unhealthy"},
		{"the service keeps crashing", func(w *world, h *harness) { w.setBehaviour(digestB, behaveCrash) }, "is restarting"},
		{"a container is replaced", func(w *world, h *harness) { w.replace("app") }, "was replaced"},
		{"the digest is blocked", func(w *world, h *harness) {
			h.store.Update("app", func(st *state.Service) { st.Blocked = &state.Block{Digest: digestB, Reason: "by hand"} })
		}, "is blocked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, behaveHealthy)
				h, fp := canary(t, w, nil)
				h.trigger(t, "app")
				time.Sleep(soak / 2)
				synctest.Wait()
				tt.during(w, h)
				time.Sleep(soak)
				synctest.Wait()
				if got := fp.Calls(); len(got) != 0 {
					t.Errorf("promoted %v although %s", got, tt.name)
				}
				if p := h.store.Get("app").Promotion; p != nil {
					t.Errorf("promotion still pending: %+v", p)
				}
				if n := h.logs.count("promotion cancelled", tt.reason); n != 1 {
					t.Errorf("%d 'promotion cancelled' log lines with %q, want 1", n, tt.reason)
				}
			})
		})
	}
}

// A newer digest deployed during the soak replaces the pending promotion;
// a bad one that is rolled back cancels it, and is never promoted itself.
func TestPromotionAndNewerDeploys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h, fp := canary(t, w, nil)
		h.trigger(t, "app")
		time.Sleep(soak / 2)
		w.push("app", digestC, behaveHealthy)
		if res := h.trigger(t, "app"); res.Outcome != Deployed {
			t.Fatalf("deploy of C = %+v", res)
		}
		time.Sleep(soak + 10*time.Second)
		synctest.Wait()
		if got := fp.Calls(); !slices.Equal(got, []string{promoteCall(digestC)}) {
			t.Fatalf("promotions = %v, want only %s", got, promoteCall(digestC))
		}

		// C is promoted. E is good and waits for its soak; D, pushed during
		// it, is bad: rolled back to E, which is then not promoted either
		// (the service was rolled back during E's soak).
		e, d := digestOf('e'), digestOf('d')
		w.push("app", e, behaveHealthy)
		if res := h.trigger(t, "app"); res.Outcome != Deployed {
			t.Fatalf("deploy of E = %+v", res)
		}
		time.Sleep(soak / 2)
		w.push("app", d, behaveUnhealthy)
		if res := h.trigger(t, "app"); res.Outcome != RolledBack {
			t.Fatalf("deploy of a bad digest = %+v, want rolled back", res)
		}
		time.Sleep(3 * soak)
		synctest.Wait()
		if got := fp.Calls(); !slices.Equal(got, []string{promoteCall(digestC)}) {
			t.Errorf("promotions = %v after a rollback during the soak, want still only %s", got, promoteCall(digestC))
		}
		if p := h.store.Get("app").Promotion; p != nil {
			t.Errorf("promotion pending after a rollback: %+v", p)
		}
		if n := h.logs.count("promotion cancelled", "digest="+e); n != 1 {
			t.Errorf("%d 'promotion cancelled' lines for E, want 1", n)
		}
	})
}

// A promotion pending when dockward stops is taken up at the next start.
func TestPromotionSurvivesRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h, fp := canary(t, w, nil)
		ctx, stop := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- h.u.Run(ctx) }()
		synctest.Wait() // the first poll deployed B
		if p := h.store.Get("app").Promotion; p == nil || p.Digest != digestB {
			t.Fatalf("pending promotion = %+v, want %s", p, digestB)
		}
		time.Sleep(soak / 2)
		stop()
		<-done
		synctest.Wait()
		if got := fp.Calls(); len(got) != 0 {
			t.Fatalf("promoted before the soak ended: %v", got)
		}

		again, fp2 := canary(t, w, h.store)
		ctx, stop = context.WithCancel(t.Context())
		defer stop()
		go again.u.Run(ctx)
		time.Sleep(soak)
		synctest.Wait()
		if got := fp2.Calls(); !slices.Equal(got, []string{promoteCall(digestB)}) {
			t.Errorf("promotions after the restart = %v, want %s", got, promoteCall(digestB))
		}
		if got := fp.Calls(); len(got) != 0 {
			t.Errorf("the stopped updater promoted: %v", got)
		}
		stop()
		synctest.Wait()
	})
}

func TestPromotionFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h, fp := canary(t, w, nil)
		fp.fail = errors.New("PUT /v2/app/manifests/stable: 403 Forbidden")
		h.trigger(t, "app")
		time.Sleep(soak + 10*time.Minute)
		synctest.Wait()
		if n := len(fp.Calls()); n != promoteAttempts {
			t.Errorf("%d attempts, want %d", n, promoteAttempts)
		}
		if n := countEvents(w, notify.PromotionFailed); n != 1 {
			t.Fatalf("%d promotion_failed alerts, want 1", n)
		}
		for _, a := range w.Alerts() {
			if a.Event == notify.PromotionFailed && (a.Level != notify.Critical || a.Reason == "") {
				t.Errorf("promotion_failed alert = %+v, want critical with the reason", a)
			}
		}
		if p := h.store.Get("app").Promotion; p != nil {
			t.Errorf("promotion still pending after it failed: %+v", p)
		}
		if got := metric(t, h.metrics, `watcher_promotions_total{service="app"}`); got != "0" {
			t.Errorf("watcher_promotions_total = %q, want 0", got)
		}
	})
}

// replace recreates the project's web container, as a heal or a hand-run
// compose up would: a new container ID.
func (w *world) replace(project string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.containers[project][0]
	w.containers[project][0] = w.containerLocked(project, c.service, c.image, c.imageID)
}

// GET /status shows a pending promotion, and no longer once it is done.
func TestPromotionInStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h, _ := canary(t, w, nil)
		api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test"})
		h.trigger(t, "app")
		var st Status
		decodeJSON(t, serve(api, "GET", "/status"), 200, &st)
		if len(st.Services) != 1 || st.Services[0].Promotion == nil ||
			st.Services[0].Promotion.Digest != digestB || st.Services[0].Promotion.Tag != "stable" {
			t.Fatalf("status during the soak = %+v, want a pending promotion of %s to stable", st.Services, digestB)
		}
		time.Sleep(soak + 10*time.Second)
		synctest.Wait()
		decodeJSON(t, serve(api, "GET", "/status"), 200, &st)
		if st.Services[0].Promotion != nil {
			t.Errorf("status after the promotion shows %+v", st.Services[0].Promotion)
		}
	})
}
