package watcher

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/registry"
)

func TestScheduleChecksAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))

		// Nothing new: the check reads the registry and finds nothing to do.
		if err := h.u.Schedule("app", ""); err != nil {
			t.Fatalf("Schedule(app) = %v", err)
		}
		synctest.Wait()
		if n := w.count("digest app:latest"); n != 1 {
			t.Fatalf("%d registry reads after Schedule, want 1", n)
		}
		if n := w.count("pull"); n != 0 {
			t.Errorf("%d pulls with an unchanged digest, want 0", n)
		}

		// A new digest: the scheduled check deploys it.
		w.push("app", digestB, behaveHealthy)
		if err := h.u.Schedule("app", ""); err != nil {
			t.Fatalf("Schedule(app) = %v", err)
		}
		synctest.Wait()
		if got := w.running("app"); got != w.imageOf(digestB) {
			t.Errorf("running %s after a scheduled check, want the image of %s", got, digestB)
		}
		if got := metric(t, h.metrics, `watcher_updates_total{service="app"}`); got != "1" {
			t.Errorf("watcher_updates_total = %q, want 1", got)
		}
		if h.u.Busy("app") {
			t.Error("guard still held after the scheduled deploy")
		}
	})
}

// A burst of requests while the service's guard is held (a deploy in
// progress) is one check after it, not a 409 and not one check each.
func TestScheduleBurstDuringDeployIsOneCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))

		results, err := h.u.Trigger("app")
		if err != nil {
			t.Fatalf("Trigger(app) = %v", err)
		}
		synctest.Wait() // the deploy waits for the healthcheck
		if !h.u.Deploying("app") {
			t.Fatal("not deploying after the trigger")
		}
		for range 10 {
			if err := h.u.Schedule("app", ""); err != nil {
				t.Fatalf("Schedule(app) during a deploy = %v, want nil", err)
			}
		}
		synctest.Wait()
		if n := w.count("digest app:latest"); n != 1 {
			t.Fatalf("%d registry reads during the deploy, want 1 (the trigger's)", n)
		}
		if res := <-results; res.Outcome != Deployed {
			t.Fatalf("triggered deploy = %+v, want deployed", res)
		}
		synctest.Wait()
		if n := w.count("digest app:latest"); n != 2 {
			t.Errorf("%d registry reads after the deploy, want 2: one queued check for the burst", n)
		}
		if n := w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1 (the queued check finds the digest deployed)", n)
		}
		if h.u.Busy("app") {
			t.Error("guard still held after the queued check")
		}
	})
}

// A push during a deploy is not lost: the check queued behind the deploy
// deploys the newer digest.
func TestScheduleDuringDeployDeploysNewerDigest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveSlowHealthy)
		h := newHarness(t, w, svc("app", true))

		if err := h.u.Schedule("app", ""); err != nil {
			t.Fatalf("Schedule(app) = %v", err)
		}
		synctest.Wait()
		if !h.u.Deploying("app") {
			t.Fatal("the scheduled check did not start a deploy")
		}
		w.push("app", digestC, behaveHealthy)
		if err := h.u.Schedule("app", ""); err != nil {
			t.Fatalf("Schedule(app) during its own deploy = %v", err)
		}
		time.Sleep(2 * slowStart)
		synctest.Wait()
		if got := w.running("app"); got != w.imageOf(digestC) {
			t.Errorf("running %s, want the image of %s pushed during the first deploy", got, digestC)
		}
		if n := w.count("digest app:latest"); n != 2 {
			t.Errorf("%d registry reads, want 2", n)
		}
		if got := metric(t, h.metrics, `watcher_updates_total{service="app"}`); got != "2" {
			t.Errorf("watcher_updates_total = %q, want 2", got)
		}
	})
}

// A poll that holds the guard when the request comes does not swallow it.
func TestScheduleWhilePollChecks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		// The poll's registry read blocks until released, as a slow
		// registry would.
		release := make(chan struct{})
		read := w.registry.digest
		w.registry.digest = func(ctx context.Context, repository, tag string) (string, error) {
			if w.count("digest") == 0 {
				<-release
			}
			return read(ctx, repository, tag)
		}
		go h.u.PollAll(t.Context())
		synctest.Wait()
		if !h.u.Busy("app") {
			t.Fatal("the poll does not hold the guard")
		}
		w.push("app", digestB, behaveHealthy)
		if err := h.u.Schedule("app", ""); err != nil {
			t.Fatalf("Schedule(app) during a poll = %v", err)
		}
		synctest.Wait()
		close(release)
		synctest.Wait()
		if got := w.running("app"); got != w.imageOf(digestB) {
			t.Errorf("running %s, want the image of %s", got, digestB)
		}
		if n := w.count("digest app:latest"); n != 2 {
			t.Errorf("%d registry reads, want 2 (the poll's, then the scheduled one)", n)
		}
	})
}

func TestScheduleErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		static := svc("static", false)
		static.Image = ""
		h := newHarness(t, w, svc("app", true), static)
		tests := []struct {
			name string
			want error
		}{
			{"nope", ErrUnknownService},
			{"static", ErrNoImage},
		}
		for _, tt := range tests {
			if err := h.u.Schedule(tt.name, ""); !errors.Is(err, tt.want) {
				t.Errorf("Schedule(%q) = %v, want %v", tt.name, err, tt.want)
			}
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- h.u.Run(ctx) }()
		synctest.Wait()
		cancel()
		<-done
		if err := h.u.Schedule("app", ""); !errors.Is(err, ErrStopping) {
			t.Errorf("Schedule(app) after stop = %v, want %v", err, ErrStopping)
		}
		synctest.Wait()
		if n := w.count("digest app:latest"); n != 1 {
			t.Errorf("%d registry reads, want 1 (Run's first poll only)", n)
		}
	})
}

// Distribution 2.x may send a push event before it moves the tag: the
// check is repeated until the registry shows the announced digest, a few
// times and no more.
func TestScheduleWaitsForAnnouncedDigest(t *testing.T) {
	tests := []struct {
		name      string
		lateReads int // reads that still show the running digest
		expect    string
		reads     int // registry reads in all
		deployed  bool
	}{
		{name: "tag moved before the check", lateReads: 0, expect: digestB, reads: 1, deployed: true},
		{name: "tag moved after two checks", lateReads: 2, expect: digestB, reads: 3, deployed: true},
		{name: "tag never moves", lateReads: 100, expect: digestB, reads: 1 + hintRetries, deployed: false},
		{name: "no digest announced", lateReads: 1, expect: "", reads: 1, deployed: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				w := newWorld()
				w.addProject("app", digestA, behaveHealthy)
				h := newHarness(t, w, svc("app", true))
				w.push("app", digestB, behaveHealthy)
				read := w.registry.digest
				w.registry.digest = func(ctx context.Context, repository, tag string) (string, error) {
					if w.count("digest") < tt.lateReads {
						w.record("digest %s:%s", repository, tag)
						return digestA, nil
					}
					return read(ctx, repository, tag)
				}
				if err := h.u.Schedule("app", tt.expect); err != nil {
					t.Fatalf("Schedule = %v", err)
				}
				time.Sleep(time.Minute)
				synctest.Wait()
				if n := w.count("digest app:latest"); n != tt.reads {
					t.Errorf("%d registry reads, want %d", n, tt.reads)
				}
				if got := w.running("app") == w.imageOf(digestB); got != tt.deployed {
					t.Errorf("deployed %s: %v, want %v", digestB, got, tt.deployed)
				}
			})
		})
	}
}

// A check asked for by a push event that fails (a registry hiccup) is
// tried again within seconds instead of waiting for the next poll.
func TestScheduleRetriesFailedCheck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		h := newHarness(t, w, svc("app", true))
		w.push("app", digestB, behaveHealthy)
		read := w.registry.digest
		w.registry.digest = func(ctx context.Context, repository, tag string) (string, error) {
			if w.count("digest") < 2 {
				w.record("digest %s:%s", repository, tag)
				return "", fmt.Errorf("HEAD /v2/app/manifests/latest: %w", registry.ErrTimeout)
			}
			return read(ctx, repository, tag)
		}
		if err := h.u.Schedule("app", digestB); err != nil {
			t.Fatalf("Schedule = %v", err)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if n := w.count("digest app:latest"); n != 3 {
			t.Errorf("%d registry reads, want 3 (two failed)", n)
		}
		if got := w.running("app"); got != w.imageOf(digestB) {
			t.Errorf("running %s, want the image of %s", got, digestB)
		}
	})
}
