package watcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// healFakeEngine is the part of the Docker engine the healer uses.
type healFakeEngine struct {
	listContainers   func(ctx context.Context, project string, all bool) ([]docker.Container, error)
	inspectContainer func(ctx context.Context, id string) (docker.ContainerDetails, error)
	restartContainer func(ctx context.Context, id string, stopTimeout time.Duration) error
	events           func(ctx context.Context, filters map[string][]string, since time.Time, fn func(docker.Event)) error
}

var _ healEngine = (*healFakeEngine)(nil)

func (f *healFakeEngine) ListContainers(ctx context.Context, project string, all bool) ([]docker.Container, error) {
	return f.listContainers(ctx, project, all)
}

func (f *healFakeEngine) InspectContainer(ctx context.Context, id string) (docker.ContainerDetails, error) {
	return f.inspectContainer(ctx, id)
}

func (f *healFakeEngine) RestartContainer(ctx context.Context, id string, stopTimeout time.Duration) error {
	return f.restartContainer(ctx, id, stopTimeout)
}

func (f *healFakeEngine) Events(ctx context.Context, filters map[string][]string, since time.Time, opened func(), fn func(docker.Event)) error {
	if opened != nil {
		opened()
	}
	return f.events(ctx, filters, since, fn)
}

type healFakeGuard struct {
	busy func(name string) bool
}

var _ deployGuard = (*healFakeGuard)(nil)

func (f *healFakeGuard) Deploying(name string) bool { return f.busy(name) }

// healContainer is one container of a healWorld.
type healContainer struct {
	id, name, project string
	service           string // compose service
	number            int    // compose container number; 1 when 0
	oneoff            bool   // made by docker compose run
	running           bool
	health            string // starting, healthy or unhealthy
	output            string // the last probe's output
	afterRestart      string // the health a restart leads to
	exitCode          int
	oomKilled         bool
}

// healConnect is one call of Events.
type healConnect struct {
	at, end time.Time
	since   time.Time
	filters map[string][]string
	lists   int // ListContainers calls before this one
}

// healWorld is a Docker host for the healer: containers whose health the
// test sets, an event stream the test feeds, and a record of restarts,
// inspections and alerts. Times are fake (synctest).
type healWorld struct {
	mu         sync.Mutex
	start      time.Time
	containers map[string]*healContainer
	gone       map[string]*healContainer // removed, for their destroy events
	busy       map[string]bool
	restarts   []string // "<name> stop=<timeout> at <time since start>"
	alerts     []notify.Alert
	lists      int
	inspects   map[string]int
	connects   []healConnect
	stream     chan docker.Event

	engine *healFakeEngine
	guard  *healFakeGuard
	notify *fakeNotifier
}

// newHealWorld returns a host with the app project (app-web-1 as c1,
// app-db-1 as c2, of the compose services web and db) and another,
// unwatched project (other-web-1 as x1), all healthy; a restart leaves a
// container healthy.
func newHealWorld() *healWorld {
	w := &healWorld{
		start:      time.Now(),
		containers: map[string]*healContainer{},
		gone:       map[string]*healContainer{},
		busy:       map[string]bool{},
		inspects:   map[string]int{},
		stream:     make(chan docker.Event),
	}
	for _, c := range []*healContainer{
		{id: "c1", name: "app-web-1", project: "app", service: "web"},
		{id: "c2", name: "app-db-1", project: "app", service: "db"},
		{id: "x1", name: "other-web-1", project: "other", service: "web"},
	} {
		c.running, c.health, c.output, c.afterRestart = true, "healthy", "ok", "healthy"
		w.containers[c.id] = c
	}
	w.engine = &healFakeEngine{
		listContainers:   w.listContainers,
		inspectContainer: w.inspectContainer,
		restartContainer: w.restartContainer,
		events:           w.events,
	}
	w.guard = &healFakeGuard{busy: func(name string) bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.busy[name]
	}}
	w.notify = &fakeNotifier{send: func(a notify.Alert) {
		w.mu.Lock()
		defer w.mu.Unlock()
		a.Time = time.Now() // as the dispatcher does
		w.alerts = append(w.alerts, a)
	}}
	return w
}

// labels are the labels compose puts on the container.
func (c *healContainer) labels() map[string]string {
	l := map[string]string{docker.LabelProject: c.project, docker.LabelService: c.service, labelNumber: fmt.Sprint(max(c.number, 1))}
	if c.oneoff {
		l[labelOneoff] = "True"
	}
	return l
}

// probeOutput is what a container's last probe printed in health status.
func probeOutput(health string) string {
	switch health {
	case "healthy":
		return "ok"
	case "unhealthy":
		return unhealthyOutput
	}
	return ""
}

// setHealth changes a container's health without an event, as a probe does
// when the engine does not report it (or the healer does not listen).
func (w *healWorld) setHealth(id, health string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.containers[id]
	c.running, c.health, c.output = true, health, probeOutput(health)
}

func (w *healWorld) setAfterRestart(id, health string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.containers[id].afterRestart = health
}

// exit makes a container stopped with an exit code.
func (w *healWorld) exit(id string, code int, oomKilled bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.containers[id]
	c.running, c.exitCode, c.oomKilled = false, code, oomKilled
}

func (w *healWorld) setBusy(name string, busy bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busy[name] = busy
}

// event returns an event about a container as the engine sends it.
func (w *healWorld) event(id, action string, attrs ...string) docker.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.containers[id]
	if !ok {
		c = w.gone[id]
	}
	// The engine sends a container's labels as attributes.
	ev := docker.Event{Type: "container", Action: action, ID: id, Time: time.Now(), Attributes: c.labels()}
	ev.Attributes["name"] = c.name
	for i := 0; i+1 < len(attrs); i += 2 {
		ev.Attributes[attrs[i]] = attrs[i+1]
	}
	return ev
}

// emit sends an event on the stream and waits until the healer has handled
// it and everything it started is waiting.
func (w *healWorld) emit(id, action string, attrs ...string) {
	w.stream <- w.event(id, action, attrs...)
	synctest.Wait()
}

// since returns the fake time elapsed since the world was made.
func (w *healWorld) since() time.Duration { return time.Since(w.start) }

func (w *healWorld) Restarts() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.restarts)
}

func (w *healWorld) Alerts() []notify.Alert {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.alerts)
}

func (w *healWorld) alertEvents() []notify.Event {
	var out []notify.Event
	for _, a := range w.Alerts() {
		out = append(out, a.Event)
	}
	return out
}

func (w *healWorld) inspected(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inspects[id]
}

func (w *healWorld) Connects() []healConnect {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.connects)
}

func (w *healWorld) listContainers(ctx context.Context, project string, all bool) ([]docker.Container, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lists++
	out := []docker.Container{}
	for _, c := range w.containers {
		if c.project == project {
			out = append(out, docker.Container{ID: c.id, Name: c.name, State: "running", Labels: c.labels()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (w *healWorld) inspectContainer(ctx context.Context, id string) (docker.ContainerDetails, error) {
	if err := ctx.Err(); err != nil {
		return docker.ContainerDetails{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inspects[id]++
	c, ok := w.containers[id]
	if !ok {
		return docker.ContainerDetails{}, fmt.Errorf("inspect container %s: %w", id, docker.ErrNotFound)
	}
	d := docker.ContainerDetails{ID: c.id, Name: c.name, HasHealthcheck: true, Labels: c.labels(), Service: c.service,
		State: docker.ContainerState{Status: "running", Running: c.running, ExitCode: c.exitCode, OOMKilled: c.oomKilled,
			Health: &docker.Health{Status: c.health}}}
	if !c.running {
		d.State.Status = "exited"
	}
	if c.output != "" {
		d.State.Health.Log = []docker.HealthLog{{ExitCode: 1, Output: c.output + "\n"}}
	}
	return d, nil
}

func (w *healWorld) restartContainer(ctx context.Context, id string, stopTimeout time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	c, ok := w.containers[id]
	if !ok {
		return fmt.Errorf("restart container %s: %w", id, docker.ErrNotFound)
	}
	w.restarts = append(w.restarts, fmt.Sprintf("%s stop=%v at %v", c.name, stopTimeout, time.Since(w.start)))
	c.running, c.exitCode, c.oomKilled = true, 0, false
	c.health, c.output = c.afterRestart, probeOutput(c.afterRestart)
	return nil
}

// connected records a call of Events.
func (w *healWorld) connected(filters map[string][]string, since time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.connects = append(w.connects, healConnect{at: time.Now(), since: since, filters: filters, lists: w.lists})
}

// disconnected records the end of the latest call of Events.
func (w *healWorld) disconnected() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.connects[len(w.connects)-1].end = time.Now()
}

// events is a stream that stays open and passes on what emit sends.
func (w *healWorld) events(ctx context.Context, filters map[string][]string, since time.Time, fn func(docker.Event)) error {
	w.connected(filters, since)
	defer w.disconnected()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("watch docker events: %w", ctx.Err())
		case ev := <-w.stream:
			fn(ev)
		}
	}
}

// healConfig returns a config with the app service (heal cooldown 300s,
// verify delay 30s, poll interval 5s, 3 restarts) and a stop timeout of 7s.
func healConfig(change ...func(*config.Service)) *config.Config {
	s := svc("app", false)
	for _, f := range change {
		f(&s)
	}
	cfg := testConfig(s)
	cfg.Docker.StopTimeout = 7
	return cfg
}

func openStore(t *testing.T, path string) *state.Store {
	t.Helper()
	store, err := state.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// healHarness is a running healer wired to a healWorld, a real state store
// and real metrics.
type healHarness struct {
	healer  *Healer
	store   *state.Store
	metrics *Metrics
	logs    *syncBuffer
	// stop cancels Run and returns its error.
	stop func() error
}

// startHealer runs a healer until stopped or the test ends, and waits
// until it follows the event stream (or waits to reconnect).
func startHealer(t *testing.T, w *healWorld, cfg *config.Config, store *state.Store) *healHarness {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	hh := &healHarness{store: store, metrics: NewMetrics("test", time.Now()), logs: logs}
	hh.healer = NewHealer(cfg, HealerDeps{Logger: logger, Engine: w.engine, Guard: w.guard,
		Notify: w.notify, Store: store, Metrics: hh.metrics})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hh.healer.Run(ctx) }()
	hh.stop = sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		if err := hh.stop(); err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	synctest.Wait()
	return hh
}

// heal is the stored heal state of app-web-1.
func (hh *healHarness) heal() state.Heal { return hh.store.Get("app").Containers["web-1"] }

// checkMetrics compares series of the app service.
func checkMetrics(t *testing.T, m *Metrics, want map[string]string) {
	t.Helper()
	for name, v := range want {
		series := name + `{service="app"}`
		if got := metric(t, m, series); got != v {
			t.Errorf("%s = %q, want %q", series, got, v)
		}
	}
}

func TestHealRestartsUnhealthyContainer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))

		w.setHealth("c1", "unhealthy")
		w.emit("c1", "health_status: unhealthy")

		if got, want := w.Restarts(), []string{"app-web-1 stop=7s at 0s"}; !slices.Equal(got, want) {
			t.Fatalf("restarts = %q, want %q", got, want)
		}
		checkMetrics(t, hh.metrics, map[string]string{"watcher_restarts_total": "1", "watcher_service_healthy": "0"})
		alerts := w.Alerts()
		if len(alerts) != 1 {
			t.Fatalf("alerts = %+v, want one heal_restart", alerts)
		}
		if a := alerts[0]; a.Event != notify.HealRestart || a.Level != notify.Warning || a.Service != "app" ||
			!strings.Contains(a.Reason, unhealthyOutput) || !strings.Contains(a.Message, "app-web-1") ||
			!strings.Contains(a.Message, "attempt 1 of 3") {
			t.Errorf("alert = %+v, want a warning heal_restart of app-web-1, attempt 1 of 3, with the healthcheck output", a)
		}
		if st := hh.heal(); st.Consecutive != 1 || !st.LastRestart.Equal(w.start) || st.GaveUp {
			t.Errorf("stored heal = %+v, want 1 restart, now", st)
		}

		// The restart's own kill, die and start are not a crash.
		w.emit("c1", "kill", "signal", "15")
		w.emit("c1", "die", "exitCode", "143")
		w.emit("c1", "start")

		time.Sleep(29 * time.Second)
		synctest.Wait()
		if got := w.alertEvents(); len(got) != 1 {
			t.Fatalf("alerts before the verify delay = %v, want only heal_restart", got)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		alerts = w.Alerts()
		if got, want := w.alertEvents(), []notify.Event{notify.HealRestart, notify.HealSucceeded}; !slices.Equal(got, want) {
			t.Fatalf("alerts = %v, want %v", got, want)
		}
		if a := alerts[1]; a.Level != notify.Info || a.Time.Sub(w.start) != 30*time.Second {
			t.Errorf("heal_succeeded = %+v, want level info 30s after the restart", a)
		}
		if st := hh.heal(); st.Consecutive != 0 || !st.LastRestart.Equal(w.start) || st.GaveUp {
			t.Errorf("stored heal = %+v, want 0 consecutive restarts, the last one kept for the cooldown", st)
		}
		checkMetrics(t, hh.metrics, map[string]string{
			"watcher_restarts_total":  "1",
			"watcher_failures_total":  "0",
			"watcher_service_healthy": "1",
			"watcher_heal_gave_up":    "0",
		})
		if got := w.Restarts(); len(got) != 1 {
			t.Errorf("restarts = %q, want one", got)
		}
	})
}

// A container unhealthy again inside the cooldown is restarted when the
// cooldown ends, without a new event: the engine reports a status only
// when it changes.
func TestHealCooldownRechecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		w.setHealth("c1", "unhealthy")
		w.emit("c1", "health_status: unhealthy")
		time.Sleep(time.Minute)
		synctest.Wait()
		if got, want := w.alertEvents(), []notify.Event{notify.HealRestart, notify.HealSucceeded}; !slices.Equal(got, want) {
			t.Fatalf("alerts = %v, want %v", got, want)
		}

		w.setHealth("c1", "unhealthy")
		w.emit("c1", "health_status: unhealthy") // at 1m
		time.Sleep(time.Minute)
		w.emit("c1", "health_status: unhealthy") // at 2m: the same cooldown end
		if got := w.Restarts(); len(got) != 1 {
			t.Fatalf("restarts inside the cooldown = %q, want only the first", got)
		}
		if n := hh.logs.count("inside the heal cooldown"); n != 2 {
			t.Errorf("%d log lines about the cooldown, want 2", n)
		}

		time.Sleep(5*time.Minute - w.since() - time.Nanosecond)
		synctest.Wait()
		if got := w.Restarts(); len(got) != 1 {
			t.Fatalf("restarts just before the cooldown ends = %q, want only the first", got)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got, want := w.Restarts(), []string{"app-web-1 stop=7s at 0s", "app-web-1 stop=7s at 5m0s"}; !slices.Equal(got, want) {
			t.Errorf("restarts = %q, want %q", got, want)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		want := []notify.Event{notify.HealRestart, notify.HealSucceeded, notify.HealRestart, notify.HealSucceeded}
		if got := w.alertEvents(); !slices.Equal(got, want) {
			t.Errorf("alerts = %v, want %v", got, want)
		}
		checkMetrics(t, hh.metrics, map[string]string{"watcher_restarts_total": "2", "watcher_failures_total": "0"})
	})
}

// Restarts that do not heal are failures; after heal_max_restarts of them
// the healer gives up until the service is healthy again.
func TestHealFailsThenGivesUp(t *testing.T) {
	tests := []struct {
		name         string
		afterRestart string
		reason       string
		// The engine reports starting → unhealthy; unhealthy → unhealthy
		// is no change and no event.
		event bool
		// With the cap reached the healer gives up at once: at the recheck
		// after the cooldown, or at the event.
		gaveUpAt time.Duration
	}{
		{name: "still unhealthy", afterRestart: "unhealthy", gaveUpAt: 15 * time.Minute,
			reason: "unhealthy 30s after the restart; last healthcheck output: " + unhealthyOutput},
		{name: "only starting", afterRestart: "starting", reason: "starting 30s after the restart", event: true,
			gaveUpAt: 11 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newHealWorld()
				hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
				w.setAfterRestart("c1", tt.afterRestart)
				w.setHealth("c1", "unhealthy")
				w.emit("c1", "health_status: unhealthy")

				for i := 1; i <= 3; i++ {
					cycle := time.Duration(i-1) * 5 * time.Minute
					want := fmt.Sprintf("app-web-1 stop=7s at %v", cycle)
					if got := w.Restarts(); len(got) != i || got[i-1] != want {
						t.Fatalf("restarts = %q, want %d, the last %q", got, i, want)
					}
					time.Sleep(cycle + 30*time.Second - w.since())
					synctest.Wait()
					alerts := w.Alerts()
					a := alerts[len(alerts)-1]
					if a.Event != notify.HealFailed || a.Level != notify.Critical || a.Reason != tt.reason {
						t.Fatalf("restart %d: last alert = %+v, want critical heal_failed because %q", i, a, tt.reason)
					}
					checkMetrics(t, hh.metrics, map[string]string{"watcher_failures_total": fmt.Sprint(i)})
					if tt.event {
						time.Sleep(30 * time.Second)
						w.setHealth("c1", "unhealthy")
						w.emit("c1", "health_status: unhealthy")
					}
					time.Sleep(cycle + 5*time.Minute - w.since())
					synctest.Wait()
				}

				want := []notify.Event{notify.HealRestart, notify.HealFailed, notify.HealRestart, notify.HealFailed,
					notify.HealRestart, notify.HealFailed, notify.HealGaveUp}
				if got := w.alertEvents(); !slices.Equal(got, want) {
					t.Fatalf("alerts = %v, want %v", got, want)
				}
				alerts := w.Alerts()
				if a := alerts[6]; a.Level != notify.Critical || a.Time.Sub(w.start) != tt.gaveUpAt ||
					!strings.Contains(a.Message, "after 3 restarts") || !strings.Contains(a.Reason, unhealthyOutput) {
					t.Errorf("gave up alert = %+v, want critical after 3 restarts at %v with the healthcheck output", a, tt.gaveUpAt)
				}
				if st := hh.heal(); !st.GaveUp || st.Consecutive != 3 {
					t.Errorf("stored heal = %+v, want gave up after 3", st)
				}
				checkMetrics(t, hh.metrics, map[string]string{
					"watcher_heal_gave_up":   "1",
					"watcher_restarts_total": "3",
					"watcher_failures_total": "4",
				})

				// Given up: no restart on a new event, none later.
				w.setHealth("c1", "starting")
				w.emit("c1", "health_status: starting")
				w.setHealth("c1", "unhealthy")
				w.emit("c1", "health_status: unhealthy")
				time.Sleep(2 * time.Hour)
				synctest.Wait()
				if got := w.Restarts(); len(got) != 3 {
					t.Errorf("restarts after giving up = %q, want still 3", got)
				}
				if got := w.alertEvents(); len(got) != 7 {
					t.Errorf("alerts after giving up = %v, want no more", got)
				}

				// Healthy on its own: re-armed.
				w.setHealth("c1", "healthy")
				w.emit("c1", "health_status: healthy")
				if st := hh.heal(); st.GaveUp || st.Consecutive != 0 {
					t.Errorf("stored heal after healthy = %+v, want re-armed", st)
				}
				checkMetrics(t, hh.metrics, map[string]string{"watcher_heal_gave_up": "0", "watcher_service_healthy": "1"})
				if n := hh.logs.count("auto-heal re-armed"); n != 1 {
					t.Errorf("%d log lines about re-arming, want 1", n)
				}
				w.setAfterRestart("c1", "healthy")
				w.setHealth("c1", "unhealthy")
				w.emit("c1", "health_status: unhealthy")
				if got := w.Restarts(); len(got) != 4 {
					t.Errorf("restarts after re-arming = %q, want a 4th", got)
				}
			})
		})
	}
}

func TestHealAutoHealOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		w.setHealth("c1", "unhealthy") // seen by the first reconcile
		cfg := healConfig(func(s *config.Service) { s.AutoHeal = false })
		hh := startHealer(t, w, cfg, openStore(t, filepath.Join(t.TempDir(), "state.json")))
		w.emit("c1", "health_status: unhealthy")
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := w.Restarts(); len(got) != 0 {
			t.Errorf("restarts = %q, want none with auto_heal off", got)
		}
		if got := w.Alerts(); len(got) != 0 {
			t.Errorf("alerts = %+v, want none", got)
		}
		checkMetrics(t, hh.metrics, map[string]string{"watcher_restarts_total": "0", "watcher_service_healthy": "0"})
		if n := hh.logs.count("auto_heal is off"); n != 2 {
			t.Errorf("%d log lines about auto_heal off, want 2 (reconcile and event)", n)
		}
	})
}

// While the updater's guard says a service is busy the healer leaves it
// alone, and looks again every health_poll_interval.
func TestHealWaitsWhileBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		w.setBusy("app", true)
		w.setHealth("c1", "unhealthy")
		before := w.inspected("c1")
		w.emit("c1", "health_status: unhealthy")

		time.Sleep(5*time.Second - time.Nanosecond)
		synctest.Wait()
		if got := w.inspected("c1") - before; got != 1 {
			t.Errorf("inspected %d times before the poll interval, want 1", got)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		if got := w.inspected("c1") - before; got != 2 {
			t.Errorf("inspected %d times at the poll interval, want 2", got)
		}
		if got := w.Restarts(); len(got) != 0 {
			t.Fatalf("restarts while busy = %q, want none", got)
		}

		time.Sleep(2 * time.Second) // 7s
		w.setBusy("app", false)
		time.Sleep(time.Minute)
		synctest.Wait()
		if got, want := w.Restarts(), []string{"app-web-1 stop=7s at 10s"}; !slices.Equal(got, want) {
			t.Errorf("restarts = %q, want %q", got, want)
		}
	})
}

func TestHealDiedAlerts(t *testing.T) {
	type step struct {
		action string
		wait   time.Duration // before the event
		signal string        // of a kill event
	}
	die := step{action: "die"}
	tests := []struct {
		name      string
		steps     []step
		container string // c1 when empty
		oneoff    bool
		busy      bool
		code      int
		oomKilled bool
		want      int      // died alerts
		stopped   int      // stopped alerts
		reason    []string // substrings of the died reason
	}{
		{name: "crash", steps: []step{die}, code: 3, want: 1,
			reason: []string{"exit code 3\n", "last healthcheck output: " + unhealthyOutput}},
		{name: "out of memory", steps: []step{die}, code: 137, oomKilled: true, want: 1,
			reason: []string{"exit code 137, killed: out of memory\n", "last healthcheck output: " + unhealthyOutput}},
		{name: "docker stop", steps: []step{{action: "kill"}, die}, code: 143},
		{name: "stopped, started, crashed", steps: []step{{action: "kill"}, die, {action: "start"}, die}, code: 3, want: 1,
			reason: []string{"exit code 3"}},
		{name: "die long after a kill", steps: []step{{action: "kill"}, {action: "die", wait: 11 * time.Minute}}, code: 3, want: 1,
			reason: []string{"exit code 3"}},
		{name: "docker stop, SIGTERM", steps: []step{{action: "kill", signal: "15"}, die}, code: 143},
		{name: "stopped with SIGQUIT", steps: []step{{action: "kill", signal: "3"}, die}, code: 0},
		{name: "reload signal, then a crash", steps: []step{{action: "kill", signal: "1"}, die}, code: 139, want: 1,
			reason: []string{"exit code 139"}},
		{name: "while deploying", steps: []step{die}, busy: true, code: 3},
		{name: "other project", steps: []step{die}, container: "x1", code: 3},
		{name: "one-off fails", steps: []step{{action: "start"}, die}, oneoff: true, code: 1},
		{name: "one-off killed", steps: []step{{action: "kill", signal: "9"}, die}, oneoff: true, code: 137},
		{name: "exit 0 on its own", steps: []step{die}, code: 0, stopped: 1},
		{name: "exit 0 twice", steps: []step{die, {action: "start"}, die}, code: 0, stopped: 2},
		{name: "exit 0 three times within 10 minutes", code: 0, stopped: 2, want: 1,
			steps:  []step{die, {action: "start"}, {action: "die", wait: 5 * time.Minute}, {action: "start"}, {action: "die", wait: 5 * time.Minute}},
			reason: []string{"exit code 0, the 3. exit with code 0 within 10m0s"}},
		{name: "exit 0 three times, spread out", code: 0, stopped: 3,
			steps: []step{die, {action: "start"}, {action: "die", wait: 6 * time.Minute}, {action: "start"}, {action: "die", wait: 5 * time.Minute}}},
		{name: "exit 0 six times within 10 minutes", code: 0, stopped: 4, want: 2,
			steps: []step{die, die, die, die, die, die}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newHealWorld()
				hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
				id := cmp.Or(tt.container, "c1")
				w.mu.Lock()
				w.containers[id].oneoff = tt.oneoff
				w.mu.Unlock()
				w.setBusy("app", tt.busy)
				w.setHealth(id, "unhealthy")
				w.exit(id, tt.code, tt.oomKilled)
				for _, s := range tt.steps {
					time.Sleep(s.wait)
					attrs := []string{"exitCode", fmt.Sprint(tt.code)}
					if s.signal != "" {
						attrs = append(attrs, "signal", s.signal)
					}
					w.emit(id, s.action, attrs...)
				}
				var died, stopped []notify.Alert
				for _, a := range w.Alerts() {
					switch a.Event {
					case notify.Died:
						died = append(died, a)
					case notify.Stopped:
						stopped = append(stopped, a)
					default:
						t.Errorf("alert %+v, want only died and stopped", a)
					}
				}
				if len(died) != tt.want || len(stopped) != tt.stopped {
					t.Fatalf("alerts = %+v, want %d died and %d stopped", w.Alerts(), tt.want, tt.stopped)
				}
				for _, a := range died {
					if a.Level != notify.Critical || a.Service != "app" ||
						a.Message != "app: container app-web-1 died ("+firstLine(a.Reason)+")" ||
						!strings.Contains(a.Message, fmt.Sprintf("exit code %d", tt.code)) {
						t.Errorf("alert = %+v, want critical died of app-web-1 with exit code %d", a, tt.code)
					}
					for _, r := range tt.reason {
						if !strings.Contains(a.Reason, r) {
							t.Errorf("reason = %q, want it to contain %q", a.Reason, r)
						}
					}
				}
				for _, a := range stopped {
					if a.Level != notify.Info || a.Service != "app" || a.Message != "app: container app-web-1 exited with code 0 on its own" {
						t.Errorf("alert = %+v, want info stopped of app-web-1", a)
					}
				}
				if tt.container != "" && w.inspected(tt.container) != 0 {
					t.Errorf("inspected %s %d times, want never (not a watched project)", tt.container, w.inspected(tt.container))
				}
				checkMetrics(t, hh.metrics, map[string]string{"watcher_failures_total": fmt.Sprint(tt.want)})
				if got := w.Restarts(); len(got) != 0 {
					t.Errorf("restarts = %q, want none (a stopped container is not healed)", got)
				}
			})
		})
	}
}

// healStream is an event stream for the reconnect tests: each call of
// Events runs the next of calls, the last one for every call after.
func healStream(w *healWorld, calls ...func(ctx context.Context, fn func(docker.Event)) error) {
	w.engine.events = func(ctx context.Context, filters map[string][]string, since time.Time, fn func(docker.Event)) error {
		w.connected(filters, since)
		defer w.disconnected()
		n := len(w.Connects())
		return calls[min(n, len(calls))-1](ctx, fn)
	}
}

var errStreamBroken = errors.New("watch docker events: unexpected EOF")

func broken(ctx context.Context, fn func(docker.Event)) error { return errStreamBroken }

func quiet(ctx context.Context, fn func(docker.Event)) error {
	<-ctx.Done()
	return fmt.Errorf("watch docker events: %w", ctx.Err())
}

// waits returns how long the healer waited before each reconnect.
func waits(connects []healConnect) []time.Duration {
	var out []time.Duration
	for i := 1; i < len(connects); i++ {
		out = append(out, connects[i].at.Sub(connects[i-1].end))
	}
	return out
}

func TestHealEventStreamReconnects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		var mu sync.Mutex
		var lastEvent time.Time
		calls := []func(ctx context.Context, fn func(docker.Event)) error{
			func(ctx context.Context, fn func(docker.Event)) error {
				fn(w.event("c2", "start"))
				time.Sleep(2 * time.Second)
				ev := w.event("c2", "health_status: healthy")
				mu.Lock()
				lastEvent = ev.Time
				mu.Unlock()
				fn(ev)
				time.Sleep(time.Second)
				return errStreamBroken
			},
			broken, broken,
			func(ctx context.Context, fn func(docker.Event)) error {
				w.setHealth("c1", "unhealthy") // while disconnected: no event
				return errStreamBroken
			},
		}
		for range 9 {
			calls = append(calls, broken)
		}
		calls = append(calls, quiet)
		healStream(w, calls...)
		hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		time.Sleep(10 * time.Minute)
		synctest.Wait()

		connects := w.Connects()
		if len(connects) != 14 {
			t.Fatalf("Events called %d times, want 14", len(connects))
		}
		f := connects[0].filters
		if !slices.Equal(f["type"], []string{"container"}) || !slices.Equal(f["label"], []string{docker.LabelProject}) {
			t.Errorf("filters = %v, want containers with the compose project label", f)
		}
		for _, e := range []string{"health_status", "die", "kill", "start"} {
			if !slices.Contains(f["event"], e) {
				t.Errorf("filters = %v, want event %s", f, e)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for i, c := range connects {
			want := lastEvent
			if i == 0 {
				want = w.start // the first reconcile's start
			}
			if !c.since.Equal(want) {
				t.Errorf("Events call %d: since = %v, want %v (the last event received)", i+1, c.since, want)
			}
			// Each connect follows a reconcile: a list, then an inspect of
			// every container.
			if c.lists != i+1 {
				t.Errorf("Events call %d after %d lists, want %d", i+1, c.lists, i+1)
			}
		}
		if got := w.inspected("c2"); got != 15 {
			t.Errorf("app-db-1 inspected %d times, want 15 (once per reconcile, once for its start event)", got)
		}

		ws := waits(connects)
		t.Logf("waits: %v", ws)
		for i, d := range ws {
			if d < reconnectMin/2 || d > 30*time.Second {
				t.Errorf("wait %d = %v, want between %v and 30s", i+1, d, reconnectMin/2)
			}
			if i > 0 && i < 6 && d < ws[i-1] {
				t.Errorf("wait %d = %v, shorter than wait %d = %v; want growing waits", i+1, d, i, ws[i-1])
			}
			if i >= 6 && d < 15*time.Second {
				t.Errorf("wait %d = %v, want at least 15s once capped", i+1, d)
			}
		}
		if ws[0] > reconnectMin {
			t.Errorf("first wait = %v, want at most %v", ws[0], reconnectMin)
		}
		if capped := ws[6:]; slices.Min(capped) == slices.Max(capped) {
			t.Errorf("capped waits %v are all equal, want jitter", capped)
		}

		// The container that turned unhealthy while disconnected is
		// restarted by the reconcile of the next connect, once.
		want := fmt.Sprintf("app-web-1 stop=7s at %v", connects[4].at.Sub(w.start))
		if got := w.Restarts(); len(got) != 1 || got[0] != want {
			t.Errorf("restarts = %q, want [%q]", got, want)
		}
		if n := hh.logs.count("docker event stream lost"); n < 1 {
			t.Errorf("no log line about the lost event stream")
		}
	})
}

// A stream that delivered an event, or stayed open for a while, resets the
// backoff.
func TestHealReconnectBackoffResets(t *testing.T) {
	tests := []struct {
		name   string
		stream func(ctx context.Context, fn func(docker.Event)) error
	}{
		{name: "event received", stream: nil},
		{name: "open for over 30s", stream: func(ctx context.Context, fn func(docker.Event)) error {
			time.Sleep(31 * time.Second)
			return errStreamBroken
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newHealWorld()
				stream := tt.stream
				if stream == nil {
					stream = func(ctx context.Context, fn func(docker.Event)) error {
						fn(w.event("c2", "start"))
						return errStreamBroken
					}
				}
				healStream(w, broken, broken, broken, broken, broken, broken, stream, broken, quiet)
				startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
				time.Sleep(5 * time.Minute)
				synctest.Wait()
				ws := waits(w.Connects())
				if len(ws) != 8 {
					t.Fatalf("waits = %v, want 8", ws)
				}
				if ws[5] < 8*time.Second {
					t.Errorf("waits = %v, want the 6th at least 8s", ws)
				}
				if ws[6] > reconnectMin {
					t.Errorf("waits = %v, want the one after the stream at most %v", ws, reconnectMin)
				}
			})
		})
	}
}

// The engine replays events from the second of since on, so the last
// events before a reconnect arrive again; they must not be handled twice.
func TestHealReplayedEventsAreNotHandledTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		var mu sync.Mutex
		var history []docker.Event // what the engine has sent, for replay
		breaks := make(chan struct{})
		w.engine.events = func(ctx context.Context, filters map[string][]string, since time.Time, fn func(docker.Event)) error {
			w.connected(filters, since)
			defer w.disconnected()
			mu.Lock()
			var replay []docker.Event
			for _, ev := range history {
				// The client sends since in whole seconds.
				if !since.IsZero() && !ev.Time.Before(time.Unix(since.Unix(), 0)) {
					replay = append(replay, ev)
				}
			}
			mu.Unlock()
			for _, ev := range replay {
				fn(ev)
			}
			for {
				select {
				case <-ctx.Done():
					return fmt.Errorf("watch docker events: %w", ctx.Err())
				case <-breaks:
					return errStreamBroken
				case ev := <-w.stream:
					mu.Lock()
					history = append(history, ev)
					mu.Unlock()
					fn(ev)
				}
			}
		}
		hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))

		// docker stop -t 2: the kill and the die a second apart.
		w.exit("c1", 143, false)
		w.emit("c1", "kill", "signal", "15")
		time.Sleep(1500 * time.Millisecond)
		w.emit("c1", "die", "exitCode", "143")
		time.Sleep(500 * time.Millisecond)
		breaks <- struct{}{}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := w.Alerts(); len(got) != 0 {
			t.Errorf("alerts after a docker stop and a reconnect = %+v, want none", got)
		}

		// A crash, then a reconnect: one alert.
		w.setHealth("c1", "healthy")
		w.emit("c1", "start")
		time.Sleep(1200 * time.Millisecond)
		w.exit("c1", 3, false)
		w.emit("c1", "die", "exitCode", "3")
		breaks <- struct{}{}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := w.alertEvents(); !slices.Equal(got, []notify.Event{notify.Died}) {
			t.Errorf("alerts after a crash and a reconnect = %v, want one died", got)
		}
		checkMetrics(t, hh.metrics, map[string]string{"watcher_failures_total": "1"})
		if n := len(w.Connects()); n != 3 {
			t.Errorf("Events called %d times, want 3", n)
		}
	})
}

// The cooldown is in the state file, so a restarted dockward keeps it.
func TestHealCooldownSurvivesRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		path := filepath.Join(t.TempDir(), "state.json")
		first := startHealer(t, w, healConfig(), openStore(t, path))
		w.setHealth("c1", "unhealthy")
		w.emit("c1", "health_status: unhealthy")
		time.Sleep(time.Minute)
		if err := first.stop(); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}

		// Unhealthy again while dockward is down; the new one reconciles
		// at once but is inside the cooldown.
		w.setHealth("c1", "unhealthy")
		time.Sleep(time.Minute)
		second := startHealer(t, w, healConfig(), openStore(t, path))
		if got := w.Restarts(); len(got) != 1 {
			t.Fatalf("restarts after dockward restarted = %q, want only the first", got)
		}
		if n := second.logs.count("inside the heal cooldown"); n != 1 {
			t.Errorf("%d log lines about the cooldown, want 1", n)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if got, want := w.Restarts(), []string{"app-web-1 stop=7s at 0s", "app-web-1 stop=7s at 5m0s"}; !slices.Equal(got, want) {
			t.Errorf("restarts = %q, want %q", got, want)
		}
	})
}

func TestHealGaveUpSurvivesRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		store := openStore(t, filepath.Join(t.TempDir(), "state.json"))
		if err := store.Update("app", func(s *state.Service) {
			s.Heal = state.Heal{LastRestart: time.Now().Add(-time.Hour), Consecutive: 3, GaveUp: true}
		}); err != nil {
			t.Fatal(err)
		}
		w.setHealth("c1", "unhealthy")
		hh := startHealer(t, w, healConfig(), store)
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := w.Restarts(); len(got) != 0 {
			t.Errorf("restarts = %q, want none: auto-heal gave up before the restart", got)
		}
		if got := w.Alerts(); len(got) != 0 {
			t.Errorf("alerts = %+v, want none", got)
		}
		checkMetrics(t, hh.metrics, map[string]string{"watcher_heal_gave_up": "1"})
	})
}

func TestHealRunReturnsOnCancel(t *testing.T) {
	tests := []struct {
		name  string
		setup func(w *healWorld)
		after time.Duration // running before the cancel
	}{
		{name: "following events", setup: func(w *healWorld) {}, after: time.Minute},
		{name: "waiting to reconnect", setup: func(w *healWorld) { healStream(w, broken) }, after: 100 * time.Millisecond},
		{name: "verifying a restart", setup: func(w *healWorld) { w.setHealth("c1", "unhealthy") }, after: 10 * time.Second},
		{name: "inside the cooldown", setup: func(w *healWorld) {
			w.setHealth("c1", "unhealthy")
			w.setAfterRestart("c1", "unhealthy")
		}, after: time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newHealWorld()
				tt.setup(w)
				hh := startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
				time.Sleep(tt.after)
				start := time.Now()
				if err := hh.stop(); err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
				if d := time.Since(start); d != 0 {
					t.Errorf("Run returned %v after the cancel, want at once", d)
				}
				// synctest.Test fails if a goroutine of the healer is
				// left blocked.
			})
		})
	}
}
