package watcher

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// add puts a new container into the world, healthy and running.
func (w *healWorld) add(c *healContainer) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.health == "" {
		c.running, c.health, c.output, c.afterRestart = true, "healthy", "ok", "healthy"
	}
	w.containers[c.id] = c
}

// remove takes a container out of the world, as docker rm does.
func (w *healWorld) remove(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gone[id] = w.containers[id]
	delete(w.containers, id)
}

// Heal state is per container: what happens to one container of a service
// does not reset, re-arm or hold back another.
func TestHealPerContainer(t *testing.T) {
	gaveUp := state.Heal{LastRestart: bubbleStart.Add(-time.Hour), Consecutive: 3, GaveUp: true}
	tests := []struct {
		name   string
		stored state.Service // app's state before the healer starts
		before func(w *healWorld)
		steps  func(w *healWorld)
		// after the steps
		restarts   []string
		heal       map[string]state.Heal // app's stored heal state by container
		gaveUp     string                // watcher_heal_gave_up
		healthy    string                // watcher_service_healthy
		alertCount int
	}{
		{
			name:   "a healthy db does not re-arm web",
			stored: state.Service{Containers: map[string]state.Heal{"web-1": gaveUp}},
			before: func(w *healWorld) { w.setHealth("c1", "unhealthy") },
			steps: func(w *healWorld) {
				w.emit("c1", "health_status: unhealthy")
				w.emit("c2", "health_status: healthy")
				w.emit("c2", "health_status: healthy")
				time.Sleep(time.Hour)
			},
			heal:    map[string]state.Heal{"web-1": gaveUp},
			gaveUp:  "1",
			healthy: "0",
		},
		{
			name:   "db is healed with its own count and cooldown",
			stored: state.Service{Containers: map[string]state.Heal{"web-1": {LastRestart: bubbleStart.Add(-time.Minute), Consecutive: 2}}},
			before: func(w *healWorld) { w.setHealth("c1", "starting") },
			steps: func(w *healWorld) {
				w.setHealth("c2", "unhealthy")
				w.emit("c2", "health_status: unhealthy")
			},
			restarts: []string{"app-db-1 stop=7s at 0s"},
			heal: map[string]state.Heal{
				"web-1": {LastRestart: bubbleStart.Add(-time.Minute), Consecutive: 2},
				"db-1":  {LastRestart: bubbleStart, Consecutive: 1},
			},
			gaveUp:     "0",
			healthy:    "0",
			alertCount: 1,
		},
		{
			name:   "web recreated keeps its state",
			stored: state.Service{Containers: map[string]state.Heal{"web-1": gaveUp}},
			before: func(w *healWorld) { w.setHealth("c1", "unhealthy") },
			steps: func(w *healWorld) {
				w.emit("c1", "kill", "signal", "15")
				w.exit("c1", 0, false)
				w.emit("c1", "die", "exitCode", "0")
				w.remove("c1")
				w.emit("c1", "destroy")
				w.add(&healContainer{id: "c9", name: "app-web-1", project: "app", service: "web",
					running: true, health: "unhealthy", output: unhealthyOutput, afterRestart: "unhealthy"})
				w.emit("c9", "start")
				w.emit("c9", "health_status: unhealthy")
				time.Sleep(time.Hour)
			},
			heal:    map[string]state.Heal{"web-1": gaveUp},
			gaveUp:  "1",
			healthy: "0",
		},
		{
			name:    "web healthy again is re-armed, db keeps its count",
			stored:  state.Service{Containers: map[string]state.Heal{"web-1": gaveUp, "db-1": {Consecutive: 1}}},
			before:  func(w *healWorld) { w.setHealth("c2", "starting") }, // db's count stays while it is not healthy
			steps:   func(w *healWorld) {},
			heal:    map[string]state.Heal{"web-1": {LastRestart: gaveUp.LastRestart}, "db-1": {Consecutive: 1}},
			gaveUp:  "0",
			healthy: "0", // db is starting
		},
		{
			name: "a state file of an older dockward is moved to the containers",
			// web unhealthy, db healthy: db is re-armed by the first
			// reconcile, web keeps what the service had.
			stored: state.Service{Heal: gaveUp},
			before: func(w *healWorld) { w.setHealth("c1", "unhealthy") },
			steps: func(w *healWorld) {
				w.emit("c2", "health_status: healthy")
				time.Sleep(time.Hour)
			},
			heal:    map[string]state.Heal{"web-1": gaveUp, "db-1": {LastRestart: gaveUp.LastRestart}},
			gaveUp:  "1",
			healthy: "0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newHealWorld()
				store := openStore(t, filepath.Join(t.TempDir(), "state.json"))
				if err := store.Update("app", func(s *state.Service) { *s = tt.stored }); err != nil {
					t.Fatal(err)
				}
				if tt.before != nil {
					tt.before(w)
				}
				hh := startHealer(t, w, healConfig(), store)
				tt.steps(w)
				synctest.Wait()
				if got := w.Restarts(); !slices.Equal(got, tt.restarts) {
					t.Errorf("restarts = %q, want %q", got, tt.restarts)
				}
				st := store.Get("app")
				if st.Heal != (state.Heal{}) {
					t.Errorf("service-wide heal state = %+v, want it moved to the containers", st.Heal)
				}
				if !equalHeal(st.Containers, tt.heal) {
					t.Errorf("stored heal = %+v, want %+v", st.Containers, tt.heal)
				}
				checkMetrics(t, hh.metrics, map[string]string{"watcher_heal_gave_up": tt.gaveUp, "watcher_service_healthy": tt.healthy})
				if got := w.Alerts(); len(got) != tt.alertCount {
					t.Errorf("alerts = %+v, want %d", got, tt.alertCount)
				}
			})
		})
	}
}

// bubbleStart is where the clock of a synctest bubble starts.
var bubbleStart = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func equalHeal(a, b map[string]state.Heal) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.LastRestart.Equal(v.LastRestart) || w.Consecutive != v.Consecutive || w.GaveUp != v.GaveUp {
			return false
		}
	}
	return true
}

func TestServiceHealthy(t *testing.T) {
	web := func(c containerView) containerView { c.service = "app"; return c }
	tests := []struct {
		name string
		view healthView
		want bool
	}{
		{name: "no containers", view: healthView{}, want: false},
		{name: "one running, no healthcheck", view: healthView{"c1": web(containerView{running: true})}, want: true},
		{name: "one healthy", view: healthView{"c1": web(containerView{running: true, health: "healthy"})}, want: true},
		{name: "one unhealthy", view: healthView{"c1": web(containerView{running: true, health: "unhealthy"})}, want: false},
		{name: "one starting", view: healthView{"c1": web(containerView{running: true, health: "starting"})}, want: false},
		{name: "one healthy, one unhealthy", view: healthView{
			"c1": web(containerView{running: true, health: "healthy"}),
			"c2": web(containerView{running: true, health: "unhealthy"}),
		}, want: false},
		{name: "one healthy, one without healthcheck", view: healthView{
			"c1": web(containerView{running: true, health: "healthy"}),
			"c2": web(containerView{running: true}),
		}, want: true},
		{name: "one stopped", view: healthView{
			"c1": web(containerView{running: true}),
			"c2": web(containerView{}),
		}, want: false},
		{name: "a finished job does not count", view: healthView{
			"c1": web(containerView{running: true}),
			"c2": web(containerView{finished: true}),
		}, want: true},
		{name: "only a finished job", view: healthView{"c2": web(containerView{finished: true})}, want: false},
		{name: "another service's unhealthy container", view: healthView{
			"c1": web(containerView{running: true}),
			"x1": {service: "other", running: true, health: "unhealthy"},
		}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serviceHealthy(tt.view, "app"); got != tt.want {
				t.Errorf("serviceHealthy(%v) = %v, want %v", tt.view, got, tt.want)
			}
		})
	}
}

// watcher_service_healthy follows every watched container of the service:
// events and inspections feed it, and only the healer writes it.
func TestHealServiceHealthyFollowsContainers(t *testing.T) {
	type step struct {
		what string
		do   func(w *healWorld, hh *healHarness)
		want string // watcher_service_healthy after the step
	}
	event := func(id, action string, attrs ...string) func(w *healWorld, hh *healHarness) {
		return func(w *healWorld, hh *healHarness) { w.emit(id, action, attrs...) }
	}
	steps := []step{
		{"started, all healthy", func(w *healWorld, hh *healHarness) {}, "1"},
		{"web unhealthy", func(w *healWorld, hh *healHarness) {
			w.setHealth("c1", "unhealthy")
			w.emit("c1", "health_status: unhealthy")
		}, "0"},
		{"db healthy while web is not", event("c2", "health_status: healthy"), "0"},
		{"web healthy", func(w *healWorld, hh *healHarness) {
			w.setHealth("c1", "healthy")
			w.emit("c1", "health_status: healthy")
		}, "1"},
		{"db stopped on purpose", func(w *healWorld, hh *healHarness) {
			w.emit("c2", "kill", "signal", "15")
			w.exit("c2", 0, false)
			w.emit("c2", "die", "exitCode", "0")
		}, "0"},
		{"db started", func(w *healWorld, hh *healHarness) {
			w.setHealth("c2", "healthy")
			w.emit("c2", "start")
		}, "1"},
		{"a one-off fails", func(w *healWorld, hh *healHarness) {
			w.add(&healContainer{id: "r1", name: "app-web-run-1", project: "app", service: "web", oneoff: true})
			w.emit("r1", "start")
			w.exit("r1", 1, false)
			w.emit("r1", "die", "exitCode", "1")
		}, "1"},
		{"a migration job finishes", func(w *healWorld, hh *healHarness) {
			w.add(&healContainer{id: "m1", name: "app-migrate-1", project: "app", service: "migrate"})
			w.emit("m1", "start")
			w.exit("m1", 0, false)
			w.emit("m1", "die", "exitCode", "0")
		}, "1"},
		{"db crashes", func(w *healWorld, hh *healHarness) {
			w.exit("c2", 3, false)
			w.emit("c2", "die", "exitCode", "3")
		}, "0"},
		{"db removed", func(w *healWorld, hh *healHarness) {
			w.remove("c2")
			w.emit("c2", "destroy")
		}, "1"},
		{"web removed while nobody listened, seen by the reconcile of a reload", func(w *healWorld, hh *healHarness) {
			w.remove("c1")
			hh.healer.SetConfig(healConfig())
			synctest.Wait()
		}, "0"},
		{"web back, seen by an event", func(w *healWorld, hh *healHarness) {
			w.add(&healContainer{id: "c3", name: "app-web-1", project: "app", service: "web"})
			w.emit("c3", "start")
		}, "1"},
	}
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		hh := startHealer(t, w, healConfig(func(s *config.Service) { s.AutoHeal = false }), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		for _, s := range steps {
			s.do(w, hh)
			if got := metric(t, hh.metrics, `watcher_service_healthy{service="app"}`); got != s.want {
				t.Errorf("%s: watcher_service_healthy = %s, want %s", s.what, got, s.want)
			}
		}
		if got, want := w.alertEvents(), []notify.Event{notify.Stopped, notify.Died}; !slices.Equal(got, want) {
			t.Errorf("alerts = %v, want %v (the job's clean exit, db's crash)", got, want)
		}
	})
}

// Rechecks due at the same moment are all done: none is dropped, however
// many there are.
func TestHealRechecksAreNeverDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		store := openStore(t, filepath.Join(t.TempDir(), "state.json"))
		const n = 150
		inCooldown := map[string]state.Heal{}
		for i := 1; i <= n; i++ {
			c := &healContainer{id: fmt.Sprintf("w%03d", i), name: fmt.Sprintf("app-worker-%d", i), project: "app", service: "worker", number: i}
			w.add(c)
			w.setHealth(c.id, "unhealthy")
			inCooldown[fmt.Sprintf("worker-%d", i)] = state.Heal{LastRestart: bubbleStart.Add(-4 * time.Minute)}
		}
		if err := store.Update("app", func(s *state.Service) { s.Containers = inCooldown }); err != nil {
			t.Fatal(err)
		}
		hh := startHealer(t, w, healConfig(), store)
		if got := len(w.Restarts()); got != 0 {
			t.Fatalf("%d restarts inside the cooldown, want none", got)
		}
		if got := hh.logs.count("inside the heal cooldown"); got != n {
			t.Errorf("%d containers found inside the cooldown, want %d", got, n)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := len(w.Restarts()); got != n {
			t.Errorf("%d restarts once the cooldowns ended together, want %d", got, n)
		}
	})
}

// A failing engine is logged at warn when it starts failing and at info
// when it works again, not at every try.
func TestHealEngineFailuresLoggedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		const (
			listFails = iota
			inspectFails
			works
		)
		var mu sync.Mutex
		phase := listFails
		engineErr := errors.New("dial unix /var/run/docker.sock: connect: connection refused")
		list, inspect := w.engine.listContainers, w.engine.inspectContainer
		w.engine.listContainers = func(ctx context.Context, project string, all bool) ([]docker.Container, error) {
			mu.Lock()
			defer mu.Unlock()
			if phase == listFails {
				return nil, fmt.Errorf("list containers of project %s: %w", project, engineErr)
			}
			return list(ctx, project, all)
		}
		w.engine.inspectContainer = func(ctx context.Context, id string) (docker.ContainerDetails, error) {
			mu.Lock()
			defer mu.Unlock()
			if phase == inspectFails {
				return docker.ContainerDetails{}, fmt.Errorf("inspect container %s: %w", id, engineErr)
			}
			return inspect(ctx, id)
		}
		// The stream breaks every second: every reconnect reconciles.
		healStream(w, func(ctx context.Context, fn func(docker.Event)) error {
			time.Sleep(time.Second)
			return errStreamBroken
		})
		w.setHealth("c1", "unhealthy")
		hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		for _, p := range []int{listFails, inspectFails, works} {
			mu.Lock()
			phase = p
			mu.Unlock()
			time.Sleep(2 * time.Minute)
			synctest.Wait()
		}
		if n := len(w.Connects()); n < 10 {
			t.Fatalf("%d reconnects, want many", n)
		}
		for _, want := range []struct{ level, msg string }{
			{"WARN", "reconcile: cannot list the project's containers"},
			{"INFO", "reconcile: listing the project's containers works again"},
			{"WARN", "cannot inspect containers"},
			{"INFO", "inspecting containers works again"},
		} {
			if got := hh.logs.count("level="+want.level, want.msg); got != 1 {
				t.Errorf("%d %s lines %q, want 1", got, want.level, want.msg)
			}
		}
		if got := w.Restarts(); len(got) != 1 {
			t.Errorf("restarts = %q, want one once the engine answers", got)
		}
	})
}

// A container that dies while the first reconcile runs, before the event
// stream is followed, is reported: the first connect replays from the
// reconcile's start, and nothing from before it.
func TestHealCrashDuringFirstReconcile(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		var mu sync.Mutex
		var history []docker.Event
		slow := true
		list := w.engine.listContainers
		w.engine.listContainers = func(ctx context.Context, project string, all bool) ([]docker.Container, error) {
			mu.Lock()
			first := slow && project == "app"
			slow = slow && !first
			mu.Unlock()
			if first {
				// Slow engine: app-web-1 crashes while it is listed.
				time.Sleep(time.Second)
				w.exit("c1", 3, false)
				mu.Lock()
				history = append(history, w.event("c1", "die", "exitCode", "3"))
				mu.Unlock()
			}
			return list(ctx, project, all)
		}
		// A die in the same second, just before dockward started: the
		// engine replays it, and it is not dockward's to report.
		history = append(history, w.event("c2", "die", "exitCode", "3"))
		time.Sleep(time.Nanosecond)
		w.engine.events = func(ctx context.Context, filters map[string][]string, since time.Time, fn func(docker.Event)) error {
			w.connected(filters, since)
			defer w.disconnected()
			mu.Lock()
			replay := slices.Clone(history)
			mu.Unlock()
			for _, ev := range replay {
				// Without since, nothing is replayed; with it, from its
				// whole second on.
				if !since.IsZero() && !ev.Time.Before(time.Unix(since.Unix(), 0)) {
					fn(ev)
				}
			}
			<-ctx.Done()
			return ctx.Err()
		}
		startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		time.Sleep(time.Minute)
		synctest.Wait()
		alerts := w.Alerts()
		if len(alerts) != 1 || alerts[0].Event != notify.Died || alerts[0].Message != "app: container app-web-1 died (exit code 3)" {
			t.Errorf("alerts = %+v, want one died of app-web-1 (and none of app-db-1's die before the start)", alerts)
		}
	})
}

func TestHealSummary(t *testing.T) {
	t1, t2 := bubbleStart, bubbleStart.Add(time.Minute)
	tests := []struct {
		name string
		st   state.Service
		want state.Heal
	}{
		{name: "nothing", want: state.Heal{}},
		{name: "older file", st: state.Service{Heal: state.Heal{LastRestart: t1, Consecutive: 2}}, want: state.Heal{LastRestart: t1, Consecutive: 2}},
		{name: "containers", st: state.Service{Containers: map[string]state.Heal{
			"web-1": {LastRestart: t1, Consecutive: 3, GaveUp: true},
			"db-1":  {LastRestart: t2, Consecutive: 1},
		}}, want: state.Heal{LastRestart: t2, Consecutive: 3, GaveUp: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := healSummary(tt.st); got != tt.want {
				t.Errorf("healSummary(%+v) = %+v, want %+v", tt.st, got, tt.want)
			}
		})
	}
}
