package watcher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// outage makes a world's engine unreachable while down is set: engine calls
// fail as a refused socket does, and compose fails in its own words.
type outage struct {
	w    *world
	down atomic.Bool
}

func refused(op string) error {
	return fmt.Errorf("%s: %w", op, &net.OpError{Op: "dial", Net: "unix", Err: syscall.ECONNREFUSED})
}

const composeEngineAway = "exit status 1: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"

func withOutage(w *world) *outage {
	o := &outage{w: w}
	e, c := *w.engine, *w.compose
	w.engine.listContainers = func(ctx context.Context, project string, all bool) ([]docker.Container, error) {
		if o.down.Load() {
			return nil, refused("list containers of project " + project)
		}
		return e.listContainers(ctx, project, all)
	}
	w.engine.inspectContainer = func(ctx context.Context, id string) (docker.ContainerDetails, error) {
		if o.down.Load() {
			return docker.ContainerDetails{}, refused("inspect container " + id)
		}
		return e.inspectContainer(ctx, id)
	}
	w.engine.inspectImage = func(ctx context.Context, ref string) (docker.Image, error) {
		if o.down.Load() {
			return docker.Image{}, refused("inspect image " + ref)
		}
		return e.inspectImage(ctx, ref)
	}
	w.engine.tagImage = func(ctx context.Context, source, repo, tag string) error {
		if o.down.Load() {
			return refused("tag image " + source)
		}
		return e.tagImage(ctx, source, repo, tag)
	}
	w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
		if o.down.Load() {
			return errors.New("compose pull: " + composeEngineAway)
		}
		return c.pull(ctx, p, services...)
	}
	w.compose.up = func(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
		if o.down.Load() {
			return errors.New("compose up: " + composeEngineAway)
		}
		return c.up(ctx, p, opts)
	}
	return o
}

// restart takes the engine away for d, as a dockerd restart does: the
// containers (which have no restart policy) come back exited.
func (o *outage) restart(d time.Duration) {
	o.down.Store(true)
	time.Sleep(d)
	o.w.mu.Lock()
	for _, cs := range o.w.containers {
		for _, c := range cs {
			c.stopped = true
		}
	}
	o.w.mu.Unlock()
	o.down.Store(false)
}

// phaseLog records the deploy phase in the state file at each call.
type phaseLog struct {
	mu     sync.Mutex
	phases []string
}

func (l *phaseLog) add(p string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := len(l.phases); n == 0 || l.phases[n-1] != p {
		l.phases = append(l.phases, p)
	}
}

func (l *phaseLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.phases)
}

// TestDeployPhases: each step runs with its phase already in the state
// file, and the block is written together with the rolling back phase.
func TestDeployPhases(t *testing.T) {
	tests := []struct {
		name      string
		behaviour behaviour
		want      []string // phases seen by pull, up, tag and inspect calls
	}{
		{"good push", behaveHealthy, []string{"", "rollback_tagged", "up", "verifying", "verified"}},
		{"bad push", behaveUnhealthy, []string{"", "rollback_tagged", "up", "verifying", "rolling_back", "rolled_back"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, tt.behaviour)
				h := newHarness(t, w, svc("app", true))
				log := &phaseLog{}
				seen := func() {
					st := h.store.Get("app")
					phase := ""
					if st.Deploy != nil {
						phase = st.Deploy.Phase
						if Phase(phase) == PhaseRollingBack && (st.Blocked == nil || st.Blocked.Digest != digestB) {
							t.Errorf("phase rolling_back without %s blocked in the state: %+v", digestB, st.Blocked)
						}
					}
					log.add(phase)
				}
				e, c := *w.engine, *w.compose
				w.engine.inspectContainer = func(ctx context.Context, id string) (docker.ContainerDetails, error) {
					seen()
					return e.inspectContainer(ctx, id)
				}
				w.engine.inspectImage = func(ctx context.Context, ref string) (docker.Image, error) {
					seen()
					return e.inspectImage(ctx, ref)
				}
				w.engine.tagImage = func(ctx context.Context, source, repo, tag string) error {
					seen()
					return e.tagImage(ctx, source, repo, tag)
				}
				w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
					seen()
					return c.pull(ctx, p, services...)
				}
				w.compose.up = func(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
					seen()
					return c.up(ctx, p, opts)
				}
				var verdictPhase string
				w.notify.send = func(a notify.Alert) {
					if a.Event == notify.UpdateSucceeded || a.Event == notify.Rollback {
						if d := h.store.Get("app").Deploy; d != nil {
							verdictPhase = d.Phase
						}
					}
				}
				h.trigger(t, "app")
				got := log.get()
				if verdictPhase != "" {
					got = append(got, verdictPhase)
				}
				if !slices.Equal(got, tt.want) {
					t.Errorf("phases = %q, want %q", got, tt.want)
				}
				if d := h.store.Get("app").Deploy; d != nil {
					t.Errorf("record after the verdict = %+v, want none", d)
				}
			})
		})
	}
}

// TestResumeFromEachPhase starts an updater on a state file whose deploy
// record names each phase, with the world as that phase leaves it, and
// checks that the deploy goes on from that step and no other.
func TestResumeFromEachPhase(t *testing.T) {
	tests := []struct {
		name      string
		phase     Phase
		pulled    bool      // the new image was pulled
		running   bool      // the new version runs
		behaviour behaviour // of digestB
		blocked   bool      // digestB blocked in the state (set with rolling back)
		want      Outcome
		calls     []string
		events    []notify.Event
	}{
		{name: "rollback tagged", phase: PhaseRollbackTagged, behaviour: behaveHealthy, want: Deployed,
			calls:  []string{"pull app web", "up app --no-deps web"},
			events: []notify.Event{notify.UpdateStarted, notify.UpdateSucceeded}},
		{name: "pulled", phase: PhasePulled, pulled: true, behaviour: behaveHealthy, want: Deployed,
			calls:  []string{"up app --no-deps web"},
			events: []notify.Event{notify.UpdateSucceeded}},
		{name: "up", phase: PhaseUp, pulled: true, behaviour: behaveHealthy, want: Deployed,
			calls:  []string{"up app --no-deps web"},
			events: []notify.Event{notify.UpdateSucceeded}},
		// Verifying resumes with compose up, which starts what a restart of
		// the host or engine stopped and leaves what runs alone.
		{name: "verifying a good version", phase: PhaseVerifying, pulled: true, running: true, behaviour: behaveHealthy, want: Deployed,
			calls:  []string{"up app --no-deps web"},
			events: []notify.Event{notify.UpdateSucceeded}},
		{name: "verifying a bad version", phase: PhaseVerifying, pulled: true, running: true, behaviour: behaveUnhealthy, want: RolledBack,
			calls:  []string{"up app --no-deps web", "tag sha256:img1 " + appRef, "up app --no-deps --pull never web"},
			events: []notify.Event{notify.Blocked, notify.Rollback}},
		{name: "verified", phase: PhaseVerified, pulled: true, running: true, behaviour: behaveHealthy, want: Deployed,
			events: []notify.Event{notify.UpdateSucceeded}},
		{name: "rolling back", phase: PhaseRollingBack, pulled: true, running: true, behaviour: behaveHealthy, blocked: true, want: RolledBack,
			// The new version is healthy by now, but the verdict was
			// reached: the rollback goes on, it is not verified afresh.
			calls:  []string{"tag sha256:img1 " + appRef, "up app --no-deps --pull never web"},
			events: []notify.Event{notify.Rollback}},
		{name: "rolled back", phase: PhaseRolledBack, pulled: true, behaviour: behaveUnhealthy, blocked: true, want: RolledBack,
			events: []notify.Event{notify.Rollback}},
		{name: "rollback failed", phase: PhaseRollbackFailed, pulled: true, running: true, behaviour: behaveUnhealthy, blocked: true, want: RollbackFailed,
			events: []notify.Event{notify.RollbackFailed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, tt.behaviour)
				h := newHarness(t, w, svc("app", true))
				if tt.pulled {
					w.pull(t.Context(), compose.Project{Name: "app"})
				}
				if tt.running {
					w.up(t.Context(), compose.Project{Name: "app"}, compose.UpOptions{})
				}
				rec := state.Deploy{Digest: digestB, RollbackImage: "sha256:img1", Started: time.Now().Add(-time.Minute),
					Phase: string(tt.phase), Project: "app", Services: []string{"web"}, Previous: digestA, Reason: "was unhealthy"}
				if err := h.store.Update("app", func(st *state.Service) {
					st.Deploy = &rec
					if tt.blocked {
						st.Blocked = &state.Block{Digest: digestB, Since: time.Now(), Reason: "was unhealthy"}
					}
				}); err != nil {
					t.Fatal(err)
				}
				calls := len(w.Calls())

				// A new start: Resume claims the service at once.
				next := newHarnessWithStore(t, w, h.store, svc("app", true))
				next.u.Resume(t.Context())
				if _, err := next.u.Trigger("app"); !errors.Is(err, ErrBusy) {
					t.Errorf("Trigger(app) right after Resume = %v, want %v: the resumed deploy holds the service", err, ErrBusy)
				}
				synctest.Wait()
				for next.u.Busy("app") {
					time.Sleep(time.Second)
					synctest.Wait()
				}

				if got := w.Calls()[calls:]; !slices.Equal(got, tt.calls) {
					t.Errorf("calls =\n  %q\nwant\n  %q", got, tt.calls)
				}
				if got := w.events(); !slices.Equal(got, tt.events) {
					t.Errorf("alerts = %v, want %v", got, tt.events)
				}
				st := h.store.Get("app")
				if st.Deploy != nil {
					t.Errorf("record after the resumed deploy = %+v, want none", st.Deploy)
				}
				if blocked := st.Blocked != nil && st.Blocked.Digest == digestB; blocked != (tt.want != Deployed) {
					t.Errorf("block = %+v after %s, want blocked: %v", st.Blocked, tt.want, tt.want != Deployed)
				}
				wantImage := w.imageOf(digestB)
				if tt.want != Deployed {
					wantImage = "sha256:img1"
				}
				if tt.want == RollbackFailed {
					wantImage = w.running("app") // left as it was
				}
				if got := w.running("app"); got != wantImage {
					t.Errorf("web runs %s, want %s", got, wantImage)
				}
				outcome := map[Outcome]string{Deployed: `outcome=deployed`, RolledBack: `outcome=rolled_back`, RollbackFailed: `outcome=rollback_failed`}[tt.want]
				if n := next.logs.count(`msg="deploy finished"`, outcome); n != 1 {
					t.Errorf("%d deploy finished lines with %s, want 1", n, outcome)
				}
			})
		})
	}
}

// TestEngineAway: an engine that does not answer is not a verdict. The
// deploy waits for it, then judges what runs with a new grace period.
func TestEngineAway(t *testing.T) {
	tests := []struct {
		name      string
		behaviour behaviour
		// at is when the engine goes away after the trigger, for how long.
		at, away time.Duration
		// during, when set, takes the engine away at that step instead.
		during  string
		want    Outcome
		ups     int
		blocked bool
	}{
		{name: "restart while a good version is verified", behaviour: behaveSlowHealthy, at: 5 * time.Second, away: 20 * time.Second,
			want: Deployed, ups: 2},
		{name: "restart while a version that never gets healthy is verified", behaviour: behaveStarting, at: 5 * time.Second, away: 20 * time.Second,
			want: RolledBack, ups: 3, blocked: true},
		// Shorter than health_poll_interval (5s), between two looks at
		// the containers: the engine pings between them notice it.
		{name: "quick restart between two looks at the containers", behaviour: behaveNoHealthcheck, at: 6 * time.Second, away: 2 * time.Second,
			want: Deployed, ups: 2},
		{name: "away during compose up", behaviour: behaveHealthy, during: "up", away: 30 * time.Second,
			want: Deployed, ups: 1},
		{name: "away during the rollback", behaviour: behaveUnhealthy, during: "rollback", away: 30 * time.Second,
			want: RolledBack, ups: 2, blocked: true},
		{name: "away during the pull", behaviour: behaveHealthy, during: "pull", away: 30 * time.Second,
			want: Deployed, ups: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, tt.behaviour)
				h := newHarness(t, w, svc("app", true))
				o := withOutage(w)
				var once sync.Once
				trip := func() { once.Do(func() { go o.restart(tt.away) }); synctest.Wait() }
				c, e := *w.compose, *w.engine
				switch tt.during {
				case "up":
					w.compose.up = func(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
						trip()
						return c.up(ctx, p, opts)
					}
				case "pull":
					w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
						trip()
						return c.pull(ctx, p, services...)
					}
				case "rollback":
					w.engine.tagImage = func(ctx context.Context, source, repo, tag string) error {
						if tag == "latest" {
							trip()
						}
						return e.tagImage(ctx, source, repo, tag)
					}
				}
				if tt.during == "" {
					go func() {
						time.Sleep(tt.at)
						o.restart(tt.away)
					}()
				}
				start := time.Now()
				res := h.trigger(t, "app")
				if res.Outcome != tt.want {
					t.Errorf("Trigger(app) = %+v, want %s", res, tt.want)
				}
				if n := w.count("up"); n != tt.ups {
					t.Errorf("calls = %q, want %d compose ups", w.Calls(), tt.ups)
				}
				if blocked := h.store.Get("app").Blocked != nil; blocked != tt.blocked {
					t.Errorf("blocked = %v, want %v", blocked, tt.blocked)
				}
				for _, a := range w.Alerts() {
					if a.Level == notify.Critical {
						t.Errorf("critical alert %+v: an engine restart is not a failure", a)
					}
				}
				if tt.during == "" && time.Since(start) < tt.at+tt.away {
					t.Errorf("deploy took %v, want at least the outage's end, %v", time.Since(start), tt.at+tt.away)
				}
				if n := h.logs.count("level=WARN", "docker engine unavailable; waiting for it"); n < 1 {
					t.Errorf("no line says the deploy waits for the engine")
				}
				if n := h.logs.count("docker engine answers again"); n < 1 {
					t.Errorf("no line says the engine answers again")
				}
				if h.store.Get("app").Deploy != nil {
					t.Errorf("deploy record left: %+v", h.store.Get("app").Deploy)
				}
			})
		})
	}
}

// TestCleanExitBeforeTheEngineGoes: a stopping dockerd stops the
// containers while it still answers. A container that exited cleanly is
// judged only once the engine kept answering for a while.
func TestCleanExitBeforeTheEngineGoes(t *testing.T) {
	tests := []struct {
		name     string
		exitCode int
		goes     bool // the engine goes away after stopping the container
		want     Outcome
		reason   string
		minTime  time.Duration
	}{
		{name: "the engine goes away next", exitCode: 0, goes: true, want: Deployed},
		{name: "SIGTERM and the engine goes away next", exitCode: 143, goes: true, want: Deployed},
		{name: "the engine stays", exitCode: 0, want: RolledBack, reason: "container app-web-1 is exited (exit code 0)",
			minTime: 10*time.Second + engineStopWindow},
		{name: "an unclean exit is judged at once", exitCode: 1, want: RolledBack, reason: "container app-web-1 is exited (exit code 1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, behaveNoHealthcheck)
				h := newHarness(t, w, svc("app", true))
				o := withOutage(w)
				// The containers stop at 7s; the look at 10s sees them
				// exited while the engine still answers; it goes at 11s.
				done := make(chan struct{})
				go func() {
					defer close(done)
					time.Sleep(7 * time.Second)
					w.mu.Lock()
					for _, c := range w.containers["app"] {
						c.stopped, c.exitCode = true, tt.exitCode
					}
					w.mu.Unlock()
					if tt.goes {
						time.Sleep(4 * time.Second)
						o.down.Store(true)
						time.Sleep(5 * time.Second)
						o.down.Store(false)
					}
				}()
				start := time.Now()
				res := h.trigger(t, "app")
				<-done
				if res.Outcome != tt.want || !strings.Contains(res.Reason, tt.reason) {
					t.Errorf("Trigger(app) = %+v, want %s with reason %q", res, tt.want, tt.reason)
				}
				if took := time.Since(start); took < tt.minTime {
					t.Errorf("verdict after %v, want at least %v", took, tt.minTime)
				}
				if blocked := h.store.Get("app").Blocked != nil; blocked != (tt.want != Deployed) {
					t.Errorf("blocked = %v after %s", blocked, tt.want)
				}
			})
		})
	}
}

// TestEngineAwayBound: an engine that stays away ends the deploy without a
// verdict after the engine wait, with one critical alert that names the
// engine; nothing is blocked; the deploy resumes once the engine answers.
func TestEngineAwayBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))
		o := withOutage(w)
		go func() {
			time.Sleep(5 * time.Second)
			o.down.Store(true)
		}()
		start := time.Now()
		res := h.trigger(t, "app")
		took := time.Since(start)
		if res.Outcome != EngineAway || !strings.Contains(res.Reason, "does not answer") {
			t.Errorf("Trigger(app) = %+v, want %s", res, EngineAway)
		}
		if took < 5*time.Second+defaultEngineWait || took > 5*time.Second+defaultEngineWait+defaultEngineRetryMax {
			t.Errorf("gave up after %v, want the engine wait %v after the outage began", took, defaultEngineWait)
		}
		st := h.store.Get("app")
		if st.Blocked != nil {
			t.Errorf("blocked %+v because the engine was away", st.Blocked)
		}
		if st.Deploy == nil || Phase(st.Deploy.Phase) != PhaseVerifying {
			t.Errorf("record = %+v, want it kept at phase verifying", st.Deploy)
		}
		var critical []notify.Alert
		for _, a := range w.Alerts() {
			if a.Level == notify.Critical {
				critical = append(critical, a)
			}
		}
		if len(critical) != 1 || critical[0].Event != EngineUnavailable || !strings.Contains(critical[0].Message, "/var/run/docker.sock") {
			t.Errorf("critical alerts = %+v, want one %s naming /var/run/docker.sock", critical, EngineUnavailable)
		}
		// A second bound while still away: no second alert.
		if res := h.trigger(t, "app"); res.Outcome != EngineAway {
			t.Errorf("second Trigger(app) = %+v, want %s", res, EngineAway)
		}
		if n := len(w.Alerts()); n != len(critical)+1 { // UpdateStarted and the one critical alert
			t.Errorf("alerts = %v, want no new one during the same outage", w.events())
		}

		// The engine is back (restarted: the containers exited). The next
		// poll resumes: it starts them again and judges what runs.
		o.w.mu.Lock()
		for _, c := range w.containers["app"] {
			c.stopped = true
		}
		o.w.mu.Unlock()
		o.down.Store(false)
		h.u.PollAll(context.Background())
		synctest.Wait()
		for h.u.Busy("app") {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		st = h.store.Get("app")
		if st.Deploy != nil || st.Blocked != nil {
			t.Errorf("state after the engine came back = %+v, want no record and nothing blocked", st)
		}
		if got, want := w.running("app"), w.imageOf(digestB); got != want {
			t.Errorf("web runs %s, want %s", got, want)
		}
		if n := h.logs.count(`msg="deploy finished"`, "outcome=deployed"); n != 1 {
			t.Errorf("%d deployed lines, want 1", n)
		}
	})
}

// TestResumeWaitsForEngine: a start whose engine is not up yet resumes the
// deploy once it answers; it does not judge the deploy by the silence.
func TestResumeWaitsForEngine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		w.pull(t.Context(), compose.Project{Name: "app"})
		w.up(t.Context(), compose.Project{Name: "app"}, compose.UpOptions{})
		h := newHarness(t, w, svc("app", true))
		rec := state.Deploy{Digest: digestB, RollbackImage: "sha256:img1", Started: time.Now(), Phase: string(PhaseVerifying),
			Project: "app", Services: []string{"web"}, Previous: digestA}
		if err := h.store.Update("app", func(st *state.Service) { st.Deploy = &rec }); err != nil {
			t.Fatal(err)
		}
		o := withOutage(w)
		o.down.Store(true)
		go o.restart(40 * time.Second)
		next := newHarnessWithStore(t, w, h.store, svc("app", true))
		start := time.Now()
		next.u.Resume(t.Context())
		synctest.Wait()
		for next.u.Busy("app") {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if took := time.Since(start); took < 40*time.Second {
			t.Errorf("resume ended after %v, before the engine answered", took)
		}
		st := h.store.Get("app")
		if st.Blocked != nil || st.Deploy != nil {
			t.Errorf("state = %+v, want the deploy finished and nothing blocked", st)
		}
		if got := w.events(); !slices.Equal(got, []notify.Event{notify.UpdateSucceeded}) {
			t.Errorf("alerts = %v, want only %s", got, notify.UpdateSucceeded)
		}
		if got, want := w.running("app"), w.imageOf(digestB); got != want {
			t.Errorf("web runs %s, want %s", got, want)
		}
	})
}

// TestReadAfterVerificationFails: a failing read of what runs after the
// verification is no verdict, neither success nor failure; a failing
// inspect of the pulled image stops the deploy before anything changed.
func TestReadAfterVerificationFails(t *testing.T) {
	t.Run("after verification", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newWorld()
			w.addProject("app", digestA, behaveHealthy)
			w.push("app", digestB, behaveHealthy)
			h := newHarness(t, w, svc("app", true))
			var upped atomic.Bool
			e, c := *w.engine, *w.compose
			w.compose.up = func(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
				upped.Store(true)
				return c.up(ctx, p, opts)
			}
			w.engine.inspectImage = func(ctx context.Context, ref string) (docker.Image, error) {
				if upped.Load() {
					return docker.Image{}, fmt.Errorf("inspect image %s: decode response: unexpected end of JSON input", ref)
				}
				return e.inspectImage(ctx, ref)
			}
			res := h.trigger(t, "app")
			if res.Outcome != NoVerdict {
				t.Errorf("Trigger(app) = %+v, want %s", res, NoVerdict)
			}
			st := h.store.Get("app")
			if st.Blocked != nil {
				t.Errorf("blocked %+v on a failed read", st.Blocked)
			}
			if st.Deploy == nil || Phase(st.Deploy.Phase) != PhaseVerifying {
				t.Errorf("record = %+v, want it kept at verifying for the next poll", st.Deploy)
			}
			if got := metric(t, h.metrics, `watcher_updates_total{service="app"}`); got != "0" {
				t.Errorf("watcher_updates_total = %s, want 0: not proven", got)
			}
			if got, want := w.events(), []notify.Event{notify.UpdateStarted, notify.UpdateFailed}; !slices.Equal(got, want) {
				t.Errorf("alerts = %v, want %v", got, want)
			}
			// The next attempt resumes it; while it still cannot be judged,
			// no new alert.
			if res := h.trigger(t, "app"); res.Outcome != NoVerdict {
				t.Errorf("second Trigger(app) = %+v, want %s", res, NoVerdict)
			}
			if n := len(w.Alerts()); n != 2 {
				t.Errorf("alerts = %v, want no new one", w.events())
			}
		})
	})
	t.Run("after pull", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newWorld()
			w.addProject("app", digestA, behaveHealthy)
			w.push("app", digestB, behaveHealthy)
			h := newHarness(t, w, svc("app", true))
			var pulled atomic.Bool
			e, c := *w.engine, *w.compose
			w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
				pulled.Store(true)
				return c.pull(ctx, p, services...)
			}
			w.engine.inspectImage = func(ctx context.Context, ref string) (docker.Image, error) {
				if pulled.Load() && ref == appRef {
					return docker.Image{}, fmt.Errorf("inspect image %s: docker API 400: invalid reference format", ref)
				}
				return e.inspectImage(ctx, ref)
			}
			res := h.trigger(t, "app")
			if res.Outcome != CheckFailed || !strings.Contains(res.Reason, "inspect the pulled image") {
				t.Errorf("Trigger(app) = %+v, want %s naming the inspect", res, CheckFailed)
			}
			if n := w.count("up"); n != 0 {
				t.Errorf("calls = %q, want no compose up", w.Calls())
			}
			if got := w.tag(appRef); got != "sha256:img1" {
				t.Errorf("%s points to %s, want the running image sha256:img1 again", appRef, got)
			}
			if st := h.store.Get("app"); st.Deploy != nil || st.Blocked != nil {
				t.Errorf("state = %+v, want no record and nothing blocked", st)
			}
			if n := h.logs.count("level=ERROR", "deploy not started", "inspect the pulled image"); n != 1 {
				t.Errorf("%d error lines about the inspect, want 1", n)
			}
		})
	})
}

// TestGuardIsKeyedByProject: a reload that renames a service while it
// deploys must not let a second deploy start on the same project.
func TestGuardIsKeyedByProject(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))
		results, err := h.u.Trigger("app")
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		renamed := svc("app", true)
		renamed.Name = "shop"
		if err := h.u.SetConfig(testConfig(renamed)); err != nil {
			t.Fatal(err)
		}
		if _, err := h.u.Trigger("shop"); !errors.Is(err, ErrBusy) {
			t.Errorf("Trigger(shop) on project app while app deploys = %v, want %v", err, ErrBusy)
		}
		if !h.u.Deploying("shop") {
			t.Errorf("Deploying(shop) = false while its project deploys")
		}
		if res := <-results; res.Outcome != Deployed {
			t.Errorf("the deploy in flight = %+v, want %s", res, Deployed)
		}
		if res := h.trigger(t, "shop"); res.Outcome != UpToDate {
			t.Errorf("Trigger(shop) after the deploy = %+v, want %s", res, UpToDate)
		}
		if n := w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1", n)
		}
	})
}

// TestScope: the deploy acts on the compose services that run the watched
// image, or on those the config names; with none running yet, on the
// whole project; the project's other containers must keep running.
func TestScope(t *testing.T) {
	t.Run("compose_services", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newWorld()
			w.addProject("app", digestA, behaveHealthy)
			w.push("app", digestB, behaveHealthy)
			cfg := svc("app", true)
			cfg.ComposeServices = []string{"web", "web-eu"}
			h := newHarness(t, w, cfg)
			if res := h.trigger(t, "app"); res.Outcome != Deployed {
				t.Errorf("Trigger(app) = %+v, want %s", res, Deployed)
			}
			want := []string{"digest app:latest", "tag sha256:img1 " + appRollback, "pull app web web-eu", "up app --no-deps web web-eu"}
			if got := w.Calls(); !slices.Equal(got, want) {
				t.Errorf("calls = %q, want %q", got, want)
			}
		})
	})
	t.Run("compose_files and env_file", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newWorld()
			w.addProject("app", digestA, behaveHealthy)
			w.push("app", digestB, behaveHealthy)
			cfg := svc("app", true)
			cfg.ComposeFile = ""
			cfg.ComposeFiles = []string{"/srv/app/compose.yml", "/srv/app/compose.prod.yml"}
			cfg.EnvFile = "/srv/app/prod.env"
			h := newHarness(t, w, cfg)
			var got []compose.Project
			var mu sync.Mutex
			c := *w.compose
			w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
				mu.Lock()
				got = append(got, p)
				mu.Unlock()
				return c.pull(ctx, p, services...)
			}
			w.compose.up = func(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
				mu.Lock()
				got = append(got, p)
				mu.Unlock()
				return c.up(ctx, p, opts)
			}
			if res := h.trigger(t, "app"); res.Outcome != Deployed {
				t.Errorf("Trigger(app) = %+v, want %s", res, Deployed)
			}
			want := compose.Project{Name: "app", Files: cfg.ComposeFiles, EnvFile: cfg.EnvFile}
			if len(got) != 2 {
				t.Fatalf("compose ran %d times, want a pull and an up", len(got))
			}
			for _, p := range got {
				if p.Name != want.Name || !slices.Equal(p.Files, want.Files) || p.EnvFile != want.EnvFile {
					t.Errorf("compose project = %+v, want %+v", p, want)
				}
			}
		})
	})
	t.Run("no container of the image yet", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newWorld()
			w.addProject("app", digestA, behaveHealthy)
			w.push("app", digestB, behaveHealthy)
			w.mu.Lock()
			w.containers["app"] = w.containers["app"][1:] // db only
			w.mu.Unlock()
			h := newHarness(t, w, svc("app", true))
			h.trigger(t, "app")
			if got := w.Calls(); len(got) < 3 || got[1] != "pull app" || got[2] != "up app" {
				t.Errorf("calls = %q, want a pull and an up of the whole project", got)
			}
			if n := h.logs.count("deploying the whole project"); n != 1 {
				t.Errorf("%d lines say the whole project is deployed, want 1", n)
			}
		})
	})
	t.Run("another service stops during the verification", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			w := newWorld()
			w.addProject("app", digestA, behaveHealthy)
			w.push("app", digestB, behaveNoHealthcheck)
			h := newHarness(t, w, svc("app", true))
			go func() {
				time.Sleep(10 * time.Second)
				w.mu.Lock()
				w.containers["app"][1].stopped = true
				w.containers["app"][1].exitCode = 1
				w.mu.Unlock()
			}()
			res := h.trigger(t, "app")
			if !strings.Contains(res.Reason, "container app-db-1 of service db, outside the deploy, stopped during it") {
				t.Errorf("Trigger(app) = %+v, want a failure naming db", res)
			}
			if got := w.Calls(); slices.Contains(got, "up app") || slices.Contains(got, "up app --pull never") {
				t.Errorf("calls = %q: db was recreated by the deploy or the rollback", got)
			}
		})
	})
}
