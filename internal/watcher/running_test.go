package watcher

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/state"
)

// countEngine counts the engine requests of a world's fake engine.
func countEngine(w *world) *atomic.Int64 {
	var n atomic.Int64
	list, inspect, image := w.engine.listContainers, w.engine.inspectContainer, w.engine.inspectImage
	w.engine.listContainers = func(ctx context.Context, project string, all bool) ([]docker.Container, error) {
		n.Add(1)
		return list(ctx, project, all)
	}
	w.engine.inspectContainer = func(ctx context.Context, id string) (docker.ContainerDetails, error) {
		n.Add(1)
		return inspect(ctx, id)
	}
	w.engine.inspectImage = func(ctx context.Context, ref string) (docker.Image, error) {
		n.Add(1)
		return image(ctx, ref)
	}
	return &n
}

// TestIdleCheckAsksTheEngineNothing: while the event stream is open, a
// check that finds the registry's digest running reads what runs from
// memory; an event of the project, a broken stream or age make it ask again.
func TestIdleCheckAsksTheEngineNothing(t *testing.T) {
	steps := []struct {
		name    string
		before  func(h *harness)
		wantAsk bool // the check asks the engine
	}{
		{"stream closed: every check asks", func(h *harness) {}, true},
		{"first check after the stream opened asks", func(h *harness) { h.u.EventStream(true) }, true},
		{"then nothing is asked", func(h *harness) {}, false},
		{"still nothing", func(h *harness) {}, false},
		{"an event of another project changes nothing", func(h *harness) { h.u.ContainerEvent("other") }, false},
		{"an event of the project: read again", func(h *harness) { h.u.ContainerEvent("app") }, true},
		{"and remembered again", func(h *harness) {}, false},
		{"the stream broke: read again", func(h *harness) { h.u.EventStream(false) }, true},
		{"while it is broken, every check asks", func(h *harness) {}, true},
		{"reopened: first check asks", func(h *harness) { h.u.EventStream(true) }, true},
		{"then nothing", func(h *harness) {}, false},
		{"past the longest age: read again", func(h *harness) { time.Sleep(runningMaxAge) }, true},
	}
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		asks := countEngine(w)
		h := newHarness(t, w, svc("app", true))
		for _, step := range steps {
			step.before(h)
			before := asks.Load()
			res := h.trigger(t, "app")
			if res.Outcome != UpToDate {
				t.Fatalf("%s: Trigger(app) = %+v, want %s", step.name, res, UpToDate)
			}
			if asked := asks.Load() > before; asked != step.wantAsk {
				t.Errorf("%s: asked the engine = %v (%d requests), want %v", step.name, asked, asks.Load()-before, step.wantAsk)
			}
		}
	})
}

// TestNewDigestIsReadFresh: a digest that memory says is not running is
// always checked against the engine before a deploy is planned.
func TestNewDigestIsReadFresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		asks := countEngine(w)
		h := newHarness(t, w, svc("app", true))
		h.u.EventStream(true)
		h.trigger(t, "app") // remembered
		w.push("app", digestB, behaveHealthy)
		before := asks.Load()
		res := h.trigger(t, "app")
		if res.Outcome != Deployed {
			t.Fatalf("Trigger(app) = %+v, want %s", res, Deployed)
		}
		if asks.Load() == before {
			t.Error("the deploy was planned from memory, without asking the engine")
		}
	})
}

// TestReadDuringEventIsNotKept: a read that an event overtakes is not
// remembered, since it may predate the change.
func TestReadDuringEventIsNotKept(t *testing.T) {
	r := newRunning(time.Now)
	r.stream(true)
	tok := r.token("app")
	r.changed("app")
	r.put("svc", "app", tok, current{digests: []string{digestA}})
	if _, ok := r.get("svc", "app"); ok {
		t.Error("get() found a read that an event overtook")
	}
	tok = r.token("app")
	r.put("svc", "app", tok, current{digests: []string{digestA}})
	if _, ok := r.get("svc", "app"); !ok {
		t.Error("get() did not find a read that nothing overtook")
	}
	if _, ok := r.get("svc", "renamed-project"); ok {
		t.Error("get() found an entry for another project (the service's project changed on reload)")
	}
}

// TestListenWakes: an event of the project, or a broken stream, wakes a
// listener; an event of another project does not.
func TestListenWakes(t *testing.T) {
	r := newRunning(time.Now)
	events, stop := r.listen("app")
	defer stop()
	woke := func() bool {
		select {
		case <-events:
			return true
		default:
			return false
		}
	}
	r.changed("other")
	if woke() {
		t.Error("an event of another project woke the listener")
	}
	r.changed("app")
	r.changed("app") // a burst is one wake-up
	if !woke() || woke() {
		t.Error("two events of the project: want exactly one wake-up")
	}
	r.stream(false)
	if !woke() {
		t.Error("a broken stream did not wake the listener")
	}
	stop()
	r.changed("app")
	if woke() {
		t.Error("a stopped listener was woken")
	}
}

// TestTriggerRearmsGivenUpContainer: an operator's trigger re-arms an
// auto-heal that gave up on one container of the service.
func TestTriggerRearmsGivenUpContainer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		if err := h.store.Update("app", func(st *state.Service) {
			st.Containers = map[string]state.Heal{"app-1": {GaveUp: true, Consecutive: 3}}
		}); err != nil {
			t.Fatal(err)
		}
		h.trigger(t, "app")
		if HealGaveUp(h.store, "app") {
			t.Errorf("after a trigger the service's heal still gave up: %+v", h.store.Get("app").Containers)
		}
	})
}

func TestAbnormalProbe(t *testing.T) {
	for _, tc := range []struct {
		name string
		log  []docker.HealthLog
		want bool
	}{
		{"no probe", nil, false},
		{"the check says unhealthy", []docker.HealthLog{{ExitCode: 1, Output: "GET /healthz: 500"}}, false},
		{"the exec could not run", []docker.HealthLog{{ExitCode: -1, Output: "cannot exec in a stopped state: unknown"}}, true},
		{"killed mid-probe", []docker.HealthLog{{ExitCode: 137}}, true},
		{"timed out", []docker.HealthLog{{ExitCode: 1}, {ExitCode: -1, Output: "Health check exceeded timeout (3s)"}}, true},
		{"only the latest counts", []docker.HealthLog{{ExitCode: -1}, {ExitCode: 1, Output: "unhealthy"}}, false},
	} {
		if got := abnormalProbe(&docker.Health{Status: "unhealthy", Log: tc.log}); got != tc.want {
			t.Errorf("%s: abnormalProbe = %v, want %v", tc.name, got, tc.want)
		}
	}
}
