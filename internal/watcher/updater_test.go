package watcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
)

var (
	digestA = digestOf('a') // what runs at the start
	digestB = digestOf('b') // the first push
	digestC = digestOf('c') // a fix pushed later
)

const (
	appRef      = testRegistryHost + "/app:latest"
	appRollback = testRegistryHost + "/app:rollback"
)

func TestCheckUpToDate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))

		res := h.trigger(t, "app")
		if res.Outcome != UpToDate || res.Digest != digestA || res.Previous != digestA {
			t.Errorf("Trigger(app) = %+v, want %s with digest and previous %s", res, UpToDate, digestA)
		}
		if got, want := w.Calls(), []string{"digest app:latest"}; !slices.Equal(got, want) {
			t.Errorf("calls = %q, want %q (no tag, pull or up)", got, want)
		}
		if got := w.Alerts(); len(got) != 0 {
			t.Errorf("alerts = %+v, want none", got)
		}
	})
}

// TestDeploy runs one deploy of digestB per case and checks the outcome,
// how long it took in fake time, the calls and the alerts.
func TestDeploy(t *testing.T) {
	tag := func(target string) string { return "tag sha256:img1 " + target }
	// Only web runs the watched image: db is neither pulled nor recreated.
	deployCalls := []string{"digest app:latest", tag(appRollback), "pull app web", "up app --no-deps web"}
	rollbackCalls := append(slices.Clone(deployCalls), tag(appRef), "up app --no-deps --pull never web")
	tests := []struct {
		name        string
		behaviour   behaviour
		upErr       error // from Up without NoPull
		want        Outcome
		reason      string // substring
		seconds     float64
		calls       []string
		events      []notify.Event
		wantRunning string // digest of the image the web container runs at the end
	}{
		{
			name: "healthy at once", behaviour: behaveHealthy,
			want: Deployed, seconds: 0, calls: deployCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.UpdateSucceeded},
			wantRunning: digestB,
		},
		{
			name: "healthy after starting", behaviour: behaveSlowHealthy,
			want: Deployed, seconds: slowStart.Seconds(), calls: deployCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.UpdateSucceeded},
			wantRunning: digestB,
		},
		{
			name: "no healthcheck stays up for the grace period", behaviour: behaveNoHealthcheck,
			want: Deployed, seconds: 60, calls: deployCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.UpdateSucceeded},
			wantRunning: digestB,
		},
		{
			name: "unhealthy", behaviour: behaveUnhealthy,
			want: RolledBack, reason: "container app-web-1 is unhealthy; last healthcheck output: " + unhealthyOutput,
			seconds: 0, calls: rollbackCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.Blocked, notify.Rollback},
			wantRunning: digestA,
		},
		{
			name: "crash loop", behaviour: behaveCrash,
			want: RolledBack, reason: "container app-web-1 is crash-looping", calls: rollbackCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.Blocked, notify.Rollback},
			wantRunning: digestA,
		},
		{
			name: "still starting at the deadline", behaviour: behaveStarting,
			want: RolledBack, reason: "still starting at the deadline: app-web-1", seconds: 60, calls: rollbackCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.Blocked, notify.Rollback},
			wantRunning: digestA,
		},
		{
			name: "compose up fails", behaviour: behaveHealthy, upErr: errors.New("exit status 1: port is already allocated"),
			want: RolledBack, reason: "compose up: exit status 1: port is already allocated", calls: rollbackCalls,
			events:      []notify.Event{notify.UpdateStarted, notify.Blocked, notify.Rollback},
			wantRunning: digestA,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, tt.behaviour)
				h := newHarness(t, w, svc("app", true))
				up := w.compose.up
				var mu sync.Mutex
				var inFlight []string // the state's deploy record as seen by each Up
				w.compose.up = func(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
					mu.Lock()
					if d := h.store.Get("app").Deploy; d != nil {
						inFlight = append(inFlight, d.Digest+" rollback="+d.RollbackImage)
					}
					mu.Unlock()
					if tt.upErr != nil && !opts.NoPull {
						w.record("up %s --no-deps web", p.Name)
						return tt.upErr
					}
					return up(ctx, p, opts)
				}
				start := time.Now()

				res := h.trigger(t, "app")

				if res.Outcome != tt.want || res.Digest != digestB || res.Previous != digestA {
					t.Errorf("Trigger(app) = %+v; want %s of %s, previous %s", res, tt.want, digestB, digestA)
				}
				if !strings.Contains(res.Reason, tt.reason) {
					t.Errorf("reason = %q, want it to contain %q", res.Reason, tt.reason)
				}
				if res.Seconds != tt.seconds || time.Since(start).Seconds() != tt.seconds {
					t.Errorf("deploy took %vs (result says %vs), want %vs", time.Since(start).Seconds(), res.Seconds, tt.seconds)
				}
				if got := w.Calls(); !slices.Equal(got, tt.calls) {
					t.Errorf("calls =\n  %q\nwant\n  %q", got, tt.calls)
				}
				if got := w.events(); !slices.Equal(got, tt.events) {
					t.Errorf("alerts = %v, want %v", got, tt.events)
				}
				if got, want := w.running("app"), w.imageOf(tt.wantRunning); got != want {
					t.Errorf("web runs %s, want %s (digest %s)", got, want, tt.wantRunning)
				}
				if got := w.tag(appRollback); got != "sha256:img1" {
					t.Errorf("%s points to %q, want the image that ran before, sha256:img1", appRollback, got)
				}
				for _, d := range inFlight {
					if d != digestB+" rollback=sha256:img1" {
						t.Errorf("deploy record during Up = %q, want %s with rollback image sha256:img1", d, digestB)
					}
				}
				if len(inFlight) == 0 {
					t.Errorf("no deploy record in the state while compose up ran")
				}
				st := h.store.Get("app")
				if st.Deploy != nil {
					t.Errorf("deploy record after the verdict = %+v, want none", st.Deploy)
				}
				updates, rollbacks, blocked := "1", "0", "0"
				if tt.want == RolledBack {
					updates, rollbacks, blocked = "0", "1", "1"
					if st.Blocked == nil || st.Blocked.Digest != digestB || st.Blocked.Reason != res.Reason || !st.Blocked.Since.Equal(time.Now()) {
						t.Errorf("stored block = %+v, want %s blocked now with reason %q", st.Blocked, digestB, res.Reason)
					}
				} else if st.Blocked != nil {
					t.Errorf("stored block = %+v, want none", st.Blocked)
				}
				for series, want := range map[string]string{
					`watcher_updates_total{service="app"}`:                 updates,
					`watcher_rollbacks_total{service="app"}`:               rollbacks,
					`watcher_failures_total{service="app"}`:                "0",
					`watcher_service_blocked{service="app"}`:               blocked,
					`watcher_deploy_duration_seconds_count{service="app"}`: "1",
				} {
					if got := metric(t, h.metrics, series); got != want {
						t.Errorf("%s = %q, want %q", series, got, want)
					}
				}
			})
		})
	}
}

// TestBlockedDigest follows a bad digest: rolled back and blocked, skipped
// while the registry still has it, cleared when a fix is pushed.
func TestBlockedDigest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveUnhealthy)
		h := newHarness(t, w, svc("app", true))

		res := h.trigger(t, "app")
		if res.Outcome != RolledBack {
			t.Fatalf("first Trigger(app) = %+v, want %s", res, RolledBack)
		}
		for _, a := range w.Alerts() {
			if a.Event == notify.Rollback && (a.Level != notify.Warning || a.Digest != digestB || !strings.Contains(a.Reason, unhealthyOutput)) {
				t.Errorf("rollback alert = %+v, want a warning about %s with the healthcheck output", a, digestB)
			}
		}
		if got := w.tag(appRef); got != "sha256:img1" {
			t.Errorf("%s points to %q after the rollback, want the previous image sha256:img1", appRef, got)
		}
		calls := len(w.Calls())

		// The registry still has the bad digest: nothing is done.
		res = h.trigger(t, "app")
		if res.Outcome != SkipBlocked || res.Digest != digestB || !strings.Contains(res.Reason, "unhealthy") {
			t.Errorf("second Trigger(app) = %+v, want %s of %s with the block's reason", res, SkipBlocked, digestB)
		}
		h.u.PollAll(context.Background())
		if got := w.Calls()[calls:]; !slices.Equal(got, []string{"digest app:latest", "digest app:latest"}) {
			t.Errorf("calls while blocked = %q, want only registry checks", got)
		}
		if got := metric(t, h.metrics, `watcher_service_blocked{service="app"}`); got != "1" {
			t.Errorf("watcher_service_blocked while blocked = %q, want 1", got)
		}

		// A fix is pushed: the block is cleared and the fix deployed.
		w.push("app", digestC, behaveHealthy)
		before := len(w.Alerts())
		res = h.trigger(t, "app")
		if res.Outcome != Deployed || res.Digest != digestC || res.Previous != digestA {
			t.Errorf("Trigger(app) after a new push = %+v, want %s of %s over %s", res, Deployed, digestC, digestA)
		}
		if got, want := w.events()[before:], []notify.Event{notify.Unblocked, notify.UpdateStarted, notify.UpdateSucceeded}; !slices.Equal(got, want) {
			t.Errorf("alerts after a new push = %v, want %v", got, want)
		}
		if b := h.store.Get("app").Blocked; b != nil {
			t.Errorf("stored block after a new push = %+v, want none", b)
		}
		if got := metric(t, h.metrics, `watcher_service_blocked{service="app"}`); got != "0" {
			t.Errorf("watcher_service_blocked after a new push = %q, want 0", got)
		}
		if got, want := w.running("app"), w.imageOf(digestC); got != want {
			t.Errorf("web runs %s, want %s", got, want)
		}
	})
}

func TestRollbackFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveUnhealthy)
		h := newHarness(t, w, svc("app", true))
		// Whatever broke the new version breaks the old one too.
		w.setBehaviour(digestA, behaveCrash)

		res := h.trigger(t, "app")
		if res.Outcome != RollbackFailed || !strings.Contains(res.Reason, "unhealthy") || !strings.Contains(res.Reason, "crash-looping") {
			t.Fatalf("Trigger(app) = %+v, want %s naming both failures", res, RollbackFailed)
		}
		var critical []notify.Alert
		for _, a := range w.Alerts() {
			if a.Level == notify.Critical {
				critical = append(critical, a)
			}
		}
		if len(critical) != 1 || critical[0].Event != notify.RollbackFailed || critical[0].Service != "app" {
			t.Errorf("critical alerts = %+v, want one %s for app", critical, notify.RollbackFailed)
		}
		for series, want := range map[string]string{
			`watcher_failures_total{service="app"}`:  "1",
			`watcher_rollbacks_total{service="app"}`: "1",
			`watcher_updates_total{service="app"}`:   "0",
			`watcher_service_blocked{service="app"}`: "1",
		} {
			if got := metric(t, h.metrics, series); got != want {
				t.Errorf("%s = %q, want %q", series, got, want)
			}
		}
		st := h.store.Get("app")
		if st.Blocked == nil || st.Blocked.Digest != digestB {
			t.Errorf("stored block = %+v, want %s", st.Blocked, digestB)
		}
		if st.Deploy != nil {
			t.Errorf("deploy record = %+v, want none", st.Deploy)
		}

		// Later checks do not try again.
		for range 3 {
			time.Sleep(5 * time.Minute)
			h.u.PollAll(context.Background())
			synctest.Wait()
		}
		if res := h.trigger(t, "app"); res.Outcome != SkipBlocked {
			t.Errorf("Trigger(app) after the failed rollback = %+v, want %s", res, SkipBlocked)
		}
		if n := w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1", n)
		}
		if n := w.count("up"); n != 2 {
			t.Errorf("%d compose ups, want 2 (deploy and rollback)", n)
		}
		if got, want := w.events(), []notify.Event{notify.UpdateStarted, notify.Blocked, notify.RollbackFailed}; !slices.Equal(got, want) {
			t.Errorf("alerts = %v, want %v and nothing later", got, want)
		}
	})
}

func TestRegistryErrorsLoggedOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		network := fmt.Errorf("GET http://localhost:5000/v2/app/manifests/latest: %w", registry.ErrNetwork)
		notFound := fmt.Errorf("GET http://localhost:5000/v2/app/manifests/latest: %w", registry.ErrNotFound)
		errs := []error{network, network, network, notFound, notFound, nil, nil, network}
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

		for n, want := range errs {
			res := h.trigger(t, "app")
			if want != nil && (res.Outcome != CheckFailed || res.Reason != want.Error()) {
				t.Errorf("check %d = %+v, want %s: %v", n, res, CheckFailed, want)
			}
			if want == nil && res.Outcome != UpToDate {
				t.Errorf("check %d = %+v, want %s", n, res, UpToDate)
			}
		}

		if got := h.logs.count("level=WARN", `msg="registry poll failed"`); got != 3 {
			t.Errorf("%d registry warnings, want 3 (network, not_found, network again)", got)
		}
		if got := h.logs.count("level=WARN", "kind=network"); got != 2 {
			t.Errorf("%d network warnings, want 2", got)
		}
		if got := h.logs.count("level=WARN", "kind=not_found"); got != 1 {
			t.Errorf("%d not_found warnings, want 1", got)
		}
		if got := h.logs.count("level=INFO", `msg="registry poll works again"`, "after=not_found"); got != 1 {
			t.Errorf("%d recovery lines after not_found, want 1", got)
		}
		if got := h.logs.count(`msg="registry poll works again"`); got != 1 {
			t.Errorf("%d recovery lines, want 1", got)
		}
		for series, want := range map[string]string{
			`watcher_registry_errors_total{service="app",kind="network"}`:   "4",
			`watcher_registry_errors_total{service="app",kind="not_found"}`: "2",
		} {
			if got := metric(t, h.metrics, series); got != want {
				t.Errorf("%s = %q, want %q", series, got, want)
			}
		}
		if n := w.count("pull") + w.count("up") + w.count("tag"); n != 0 {
			t.Errorf("calls = %q, want no deploy", w.Calls())
		}
	})
}

func TestTriggerErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		noImage := svc("static", false)
		noImage.Image = ""
		h := newHarness(t, w, svc("app", true), noImage)

		if _, err := h.u.Trigger("nope"); !errors.Is(err, ErrUnknownService) {
			t.Errorf("Trigger(nope) = %v, want %v", err, ErrUnknownService)
		}
		if _, err := h.u.Trigger("static"); !errors.Is(err, ErrNoImage) {
			t.Errorf("Trigger(static) = %v, want %v", err, ErrNoImage)
		}

		results, err := h.u.Trigger("app")
		if err != nil {
			t.Fatalf("Trigger(app) = %v", err)
		}
		synctest.Wait() // the deploy waits for the healthcheck
		if !h.u.Busy("app") || !h.u.Deploying("app") {
			t.Errorf("Busy(app), Deploying(app) during a deploy = %v, %v, want true, true", h.u.Busy("app"), h.u.Deploying("app"))
		}
		if _, err := h.u.Trigger("app"); !errors.Is(err, ErrBusy) {
			t.Errorf("Trigger(app) during a deploy = %v, want %v", err, ErrBusy)
		}
		h.u.PollAll(context.Background())
		if n := w.count("digest"); n != 1 {
			t.Errorf("%d registry checks, want 1: a poll during a deploy must skip the service", n)
		}

		if res := <-results; res.Outcome != Deployed {
			t.Fatalf("Trigger(app) = %+v, want %s", res, Deployed)
		}
		// The guard is free once the result is out: an immediate retry works.
		results, err = h.u.Trigger("app")
		if err != nil {
			t.Fatalf("Trigger(app) right after a result = %v, want no error", err)
		}
		if res := <-results; res.Outcome != UpToDate {
			t.Errorf("Trigger(app) after the deploy = %+v, want %s", res, UpToDate)
		}
	})
}

func TestConcurrentTriggersDeployOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))

		var wg sync.WaitGroup
		var mu sync.Mutex
		var outcomes []Outcome
		busy := 0
		for range 10 {
			wg.Go(func() {
				results, err := h.u.Trigger("app")
				if errors.Is(err, ErrBusy) {
					mu.Lock()
					busy++
					mu.Unlock()
					return
				}
				if err != nil {
					t.Errorf("Trigger(app) = %v", err)
					return
				}
				res := <-results
				mu.Lock()
				outcomes = append(outcomes, res.Outcome)
				mu.Unlock()
			})
		}
		wg.Wait()
		if !slices.Equal(outcomes, []Outcome{Deployed}) || busy != 9 {
			t.Errorf("outcomes = %v with %d busy, want one %s and 9 busy", outcomes, busy, Deployed)
		}
		if n := w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1", n)
		}
		if n := w.count("up"); n != 1 {
			t.Errorf("%d compose ups, want 1", n)
		}
	})
}

func TestPollAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.addProject("manual", digestA, behaveHealthy)
		w.addProject("other", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		w.push("manual", digestC, behaveHealthy)
		h := newHarness(t, w, svc("app", true), svc("manual", false), svc("other", true))

		h.u.PollAll(context.Background())
		time.Sleep(2 * time.Minute) // the deploy it started goes on in the background
		synctest.Wait()

		digests := []string{}
		for _, c := range w.Calls() {
			if strings.HasPrefix(c, "digest ") {
				digests = append(digests, c)
			}
		}
		slices.Sort(digests)
		if want := []string{"digest app:latest", "digest other:latest"}; !slices.Equal(digests, want) {
			t.Errorf("registry checks = %q, want %q (manual has auto_update false)", digests, want)
		}
		if got, want := w.count("pull"), 1; got != want || w.count("pull app") != 1 {
			t.Errorf("calls = %q, want one pull, of app", w.Calls())
		}
		if got := metric(t, h.metrics, `watcher_updates_total{service="app"}`); got != "1" {
			t.Errorf(`watcher_updates_total{service="app"} = %q, want 1`, got)
		}
		if got := metric(t, h.metrics, "watcher_poll_count_total"); got != "1" {
			t.Errorf("watcher_poll_count_total = %q, want 1", got)
		}
		if h.u.Busy("app") || h.u.Deploying("app") {
			t.Errorf("Busy(app), Deploying(app) after the deploy = %v, %v, want false, false", h.u.Busy("app"), h.u.Deploying("app"))
		}
	})
}

func TestPullFailureKeepsRunningVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
			w.record("pull %s web", p.Name)
			return errors.New("exit status 1: toomanyrequests")
		}

		res := h.trigger(t, "app")
		if res.Outcome != CheckFailed || !strings.Contains(res.Reason, "toomanyrequests") {
			t.Errorf("Trigger(app) = %+v, want %s with the pull error", res, CheckFailed)
		}
		st := h.store.Get("app")
		if st.Blocked != nil || st.Deploy != nil {
			t.Errorf("state = %+v, want no block and no deploy record", st)
		}
		if n := w.count("up"); n != 0 {
			t.Errorf("calls = %q, want no compose up", w.Calls())
		}
		if got := w.running("app"); got != "sha256:img1" {
			t.Errorf("web runs %s, want sha256:img1 untouched", got)
		}
		if got := w.tag(appRef); got != "sha256:img1" {
			t.Errorf("%s points to %s, want sha256:img1 untouched", appRef, got)
		}
		for _, a := range w.Alerts() {
			if a.Level == notify.Critical || a.Event == notify.Blocked || a.Event == notify.Rollback {
				t.Errorf("alert %+v after a pull failure, want no block, rollback or critical alert", a)
			}
		}
		for series, want := range map[string]string{
			`watcher_rollbacks_total{service="app"}`: "0",
			`watcher_failures_total{service="app"}`:  "0",
			`watcher_service_blocked{service="app"}`: "0",
		} {
			if got := metric(t, h.metrics, series); got != want {
				t.Errorf("%s = %q, want %q", series, got, want)
			}
		}

		// The next check tries again.
		w.compose.pull = w.pull
		if res := h.trigger(t, "app"); res.Outcome != Deployed {
			t.Errorf("Trigger(app) once pulls work = %+v, want %s", res, Deployed)
		}
	})
}

// TestSetConfigKeepsGuard reloads the config while a deploy is in flight.
func TestSetConfigKeepsGuard(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.addProject("worker", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))

		results, err := h.u.Trigger("app")
		if err != nil {
			t.Fatalf("Trigger(app) = %v", err)
		}
		synctest.Wait()

		app := svc("app", true)
		app.HealthGrace = 90
		if err := h.u.SetConfig(testConfig(svc("worker", true), app)); err != nil {
			t.Fatalf("SetConfig: %v", err)
		}
		if !h.u.Busy("app") {
			t.Errorf("Busy(app) after a reload during its deploy = false")
		}
		if _, err := h.u.Trigger("app"); !errors.Is(err, ErrBusy) {
			t.Errorf("Trigger(app) after a reload during its deploy = %v, want %v", err, ErrBusy)
		}
		h.u.PollAll(context.Background())
		if got := w.count("digest app:"); got != 1 {
			t.Errorf("%d registry checks of app, want 1: the poll after the reload must skip it", got)
		}
		if got := w.count("digest worker:"); got != 1 {
			t.Errorf("%d registry checks of the new service, want 1", got)
		}

		if res := <-results; res.Outcome != Deployed {
			t.Errorf("Trigger(app) = %+v, want %s", res, Deployed)
		}
		synctest.Wait()
		if n := w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1", n)
		}
		if h.u.Busy("app") {
			t.Errorf("Busy(app) after the deploy = true")
		}
	})
}

// TestRunWaitsForDeployInFlight stops the updater during a deploy that ends
// well within the stop bound.
func TestRunWaitsForDeployInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- h.u.Run(ctx) }()
		synctest.Wait() // the first poll started the deploy
		if !h.u.Busy("app") {
			t.Fatalf("Busy(app) after the first poll = false, want a deploy in flight")
		}
		time.Sleep(time.Second)
		cancel()
		stopped := time.Now()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		if got, want := time.Since(stopped), slowStart-time.Second; got != want {
			t.Errorf("Run returned %v after the stop, want %v: when the deploy finished", got, want)
		}
		if got := metric(t, h.metrics, `watcher_updates_total{service="app"}`); got != "1" {
			t.Errorf("watcher_updates_total when Run returned = %q, want 1", got)
		}
		if d := h.store.Get("app").Deploy; d != nil {
			t.Errorf("deploy record when Run returned = %+v, want none", d)
		}
		if got := h.logs.count(`msg="deploy finished"`, "outcome=deployed"); got != 1 {
			t.Errorf("%d deploy finished lines, want 1", got)
		}
		if _, err := h.u.Trigger("app"); !errors.Is(err, ErrStopping) {
			t.Errorf("Trigger(app) after Run returned = %v, want %v", err, ErrStopping)
		}
	})
}

// TestRunCancelsDeployAtStopBound stops the updater during a deploy that
// would outlast the stop bound, then starts a new one on the same state.
func TestRunCancelsDeployAtStopBound(t *testing.T) {
	tests := []struct {
		name     string
		newImage behaviour // of digestB
		oldImage behaviour // of digestA once it is started again
		blocked  bool      // whether the stop came after the verdict on digestB
		ups      int
		resumed  []string // calls of the next start
	}{
		{
			name:     "while the new version starts",
			newImage: behaveStarting, oldImage: behaveHealthy,
			ups: 1,
			// The next start verifies digestB (after a compose up that
			// starts what a restart stopped), which is still starting at
			// the deadline, and rolls back. The resumed deploy runs in the
			// background, so the first poll skips the busy service.
			resumed: []string{"up app --no-deps web", "tag sha256:img1 " + appRef, "up app --no-deps --pull never web"},
		},
		{
			name:     "while the previous version starts again",
			newImage: behaveUnhealthy, oldImage: behaveSlowHealthy,
			blocked: true, ups: 2,
			// The record says rolling back: the next start goes on with
			// the rollback (not a fresh verify of what runs), and digestB
			// stays blocked.
			resumed: []string{"tag sha256:img1 " + appRef, "up app --no-deps --pull never web"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				w.push("app", digestB, tt.newImage)
				h := newHarness(t, w, svc("app", true))
				w.setBehaviour(digestA, tt.oldImage)
				h.u.SetStopBound(5 * time.Second)

				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error)
				go func() { done <- h.u.Run(ctx) }()
				synctest.Wait()
				time.Sleep(time.Second)
				cancel()
				stopped := time.Now()
				if err := <-done; err != nil {
					t.Errorf("Run = %v, want nil", err)
				}
				if got := time.Since(stopped); got != 5*time.Second {
					t.Errorf("Run returned %v after the stop, want the stop bound, 5s", got)
				}
				st := h.store.Get("app")
				if st.Deploy == nil || st.Deploy.Digest != digestB || st.Deploy.RollbackImage != "sha256:img1" {
					t.Errorf("deploy record after a cancelled deploy = %+v, want %s with rollback image sha256:img1 kept for the next start", st.Deploy, digestB)
				}
				if blocked := st.Blocked != nil && st.Blocked.Digest == digestB; blocked != tt.blocked {
					t.Errorf("stored block = %+v, want %s blocked: %v", st.Blocked, digestB, tt.blocked)
				}
				for _, a := range w.Alerts() {
					if a.Level == notify.Critical || a.Event == notify.Rollback || a.Event == notify.UpdateSucceeded {
						t.Errorf("alert %+v after a stop, want no verdict and nothing critical: a stop is not a failure", a)
					}
				}
				if got := metric(t, h.metrics, `watcher_failures_total{service="app"}`); got != "0" {
					t.Errorf("watcher_failures_total after a stop = %q, want 0", got)
				}
				if n := w.count("up"); n != tt.ups {
					t.Errorf("calls = %q, want %d compose ups", w.Calls(), tt.ups)
				}
				if got := h.logs.count("level=ERROR", "cancelling"); got != 1 {
					t.Errorf("%d lines about cancelling at the stop bound, want 1", got)
				}

				// The next start finishes what the stop left.
				calls := len(w.Calls())
				next := newHarnessWithStore(t, w, h.store, svc("app", true))
				ctx, cancel = context.WithCancel(context.Background())
				go func() { done <- next.u.Run(ctx) }()
				time.Sleep(2 * time.Minute)
				synctest.Wait()
				cancel()
				<-done
				if got := w.Calls()[calls:]; !slices.Equal(got, tt.resumed) {
					t.Errorf("calls of the next start =\n  %q\nwant\n  %q", got, tt.resumed)
				}
				st = h.store.Get("app")
				if st.Deploy != nil {
					t.Errorf("deploy record after the next start = %+v, want none", st.Deploy)
				}
				if st.Blocked == nil || st.Blocked.Digest != digestB {
					t.Errorf("stored block after the next start = %+v, want %s", st.Blocked, digestB)
				}
				if got := w.running("app"); got != "sha256:img1" {
					t.Errorf("web runs %s after the next start, want the previous image sha256:img1", got)
				}
			})
		})
	}
}

// TestTriggerFreesGuardBeforeResult: whoever has a result may trigger again
// at once (an API client with ?wait=true, a script in a loop).
func TestTriggerFreesGuardBeforeResult(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		for i := range 200 {
			results, err := h.u.Trigger("app")
			if err != nil {
				t.Fatalf("Trigger(app) #%d, right after the previous result = %v, want no error", i, err)
			}
			if res := <-results; res.Outcome != UpToDate {
				t.Fatalf("Trigger(app) #%d = %+v, want %s", i, res, UpToDate)
			}
		}
	})
}

// TestStopDuringRegistryCheck: a stop cancels a registry call in flight;
// that is not a registry failure.
func TestStopDuringRegistryCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		w.registry.digest = func(ctx context.Context, repository, tag string) (string, error) {
			<-ctx.Done()
			// What registry.Client returns for a cancelled call.
			return "", fmt.Errorf("GET http://localhost:5000/v2/%s/manifests/%s: %w", repository, tag, ctx.Err())
		}

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- h.u.Run(ctx) }()
		synctest.Wait() // the first poll waits for the registry
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
		if got := metric(t, h.metrics, `watcher_registry_errors_total{service="app",kind="other"}`); got != "" {
			t.Errorf(`watcher_registry_errors_total{kind="other"} after a stop = %s, want no series`, got)
		}
		if got := h.logs.count("level=WARN"); got != 0 {
			t.Errorf("%d warnings after a stop, want none:\n%s", got, h.logs)
		}
	})
}

// TestTagMovedDuringDeploy: CI pushed again between the check and the pull.
// What was pulled, and failed, is what gets blocked.
func TestTagMovedDuringDeploy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		pull := w.compose.pull
		w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
			w.push("app", digestC, behaveUnhealthy)
			return pull(ctx, p, services...)
		}

		res := h.trigger(t, "app")
		if res.Outcome != RolledBack || res.Digest != digestC {
			t.Fatalf("Trigger(app) = %+v, want %s of the pulled digest %s", res, RolledBack, digestC)
		}
		if b := h.store.Get("app").Blocked; b == nil || b.Digest != digestC {
			t.Errorf("stored block = %+v, want %s", b, digestC)
		}
		w.compose.pull = pull
		if res := h.trigger(t, "app"); res.Outcome != SkipBlocked {
			t.Errorf("Trigger(app) with %s still in the registry = %+v, want %s", digestC, res, SkipBlocked)
		}
	})
}

func TestNormalizeRef(t *testing.T) {
	tests := []struct{ in, want string }{
		{"app", "app:latest"},
		{"app:v2", "app:v2"},
		{"localhost:5000/app", "localhost:5000/app:latest"},
		{"localhost:5000/app:v2", "localhost:5000/app:v2"},
		{"localhost:5000/team/app", "localhost:5000/team/app:latest"},
		{"localhost:5000/app@" + digestA, "localhost:5000/app@" + digestA},
	}
	for _, tt := range tests {
		if got := normalizeRef(tt.in); got != tt.want {
			t.Errorf("normalizeRef(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRepoDigests(t *testing.T) {
	img := docker.Image{RepoDigests: []string{
		"localhost:5000/app@" + digestB,
		"localhost:5000/other@" + digestC,
		"localhost:5000/app@" + digestA,
		"docker.io/library/app@" + digestC,
		"garbage",
	}}
	if got, want := repoDigests(img, "localhost:5000/app"), []string{digestA, digestB}; !slices.Equal(got, want) {
		t.Errorf("repoDigests(localhost:5000/app) = %q, want %q", got, want)
	}
	if got := repoDigests(img, "localhost:5000/ap"); len(got) != 0 {
		t.Errorf("repoDigests(localhost:5000/ap) = %q, want none (no prefix match)", got)
	}
}
