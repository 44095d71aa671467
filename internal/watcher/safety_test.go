package watcher

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/state"
)

// Containers that say nothing about a deploy are left out of its verdict.
func TestRelevant(t *testing.T) {
	const watched = "localhost:5000/app:latest"
	running := docker.ContainerState{Status: "running", Running: true}
	exited := func(code int) docker.ContainerState { return docker.ContainerState{Status: "exited", ExitCode: code} }
	tests := []struct {
		name string
		c    docker.ContainerDetails
		keep bool
	}{
		{"watched image running", docker.ContainerDetails{Image: watched, State: running}, true},
		{"watched image exited 0", docker.ContainerDetails{Image: watched, State: exited(0)}, true},
		{"migration job done", docker.ContainerDetails{Image: "localhost:5000/migrate:latest", State: exited(0)}, false},
		{"migration job failed", docker.ContainerDetails{Image: "localhost:5000/migrate:latest", State: exited(1)}, true},
		{"database running", docker.ContainerDetails{Image: "postgres:16", State: running}, true},
		{"compose run leftover", docker.ContainerDetails{Image: watched, State: exited(2),
			Labels: map[string]string{labelOneoff: "True"}}, false},
		{"created, never started", docker.ContainerDetails{Image: "postgres:16", State: docker.ContainerState{Status: "created"}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := len(relevant([]docker.ContainerDetails{tt.c}, watched)) == 1
			if got != tt.keep {
				t.Errorf("relevant(%+v) keeps it = %v, want %v", tt.c, got, tt.keep)
			}
		})
	}
}

func TestSameImageOtherHost(t *testing.T) {
	ref := registry.Ref{Host: "localhost:5000", Repository: "team/app", Tag: "latest"}
	tests := []struct {
		image string
		want  bool
	}{
		{"127.0.0.1:5000/team/app:latest", true},
		{"localhost:5000/team/app:latest", false},
		{"127.0.0.1:5000/team/app:v2", false},
		{"127.0.0.1:5000/team/other:latest", false},
		{"postgres:16", false},
	}
	for _, tt := range tests {
		if got := sameImageOtherHost(tt.image, ref); got != tt.want {
			t.Errorf("sameImageOtherHost(%q, %v) = %v, want %v", tt.image, ref, got, tt.want)
		}
	}
}

// A compose file that names the watched image through another host would
// make every poll a deploy; it is refused with a clear error, logged once.
func TestMisnamedImageIsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.mu.Lock()
		w.containers["app"][0].image = "127.0.0.1:5000/app:latest"
		w.mu.Unlock()
		w.push("app", digestB, behaveHealthy)
		h := newHarness(t, w, svc("app", true))

		for range 3 {
			res := h.trigger(t, "app")
			if res.Outcome != CheckFailed || !strings.Contains(res.Reason, "name the image in the compose file exactly as localhost:5000/app:latest") {
				t.Fatalf("Trigger(app) = %+v, want %s naming the image to use", res, CheckFailed)
			}
		}
		if n := w.count("pull"); n != 0 {
			t.Errorf("%d pulls for a misnamed image, want none", n)
		}
		if n := h.logs.count("level=ERROR", "cannot deploy"); n != 1 {
			t.Errorf("%d error lines over 3 checks, want 1 (logged once)", n)
		}
	})
}

// A pull that keeps failing is one alert per digest, not one per poll, and
// update_started is sent only once the pull worked.
func TestPullFailureAlertedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveHealthy)
		pull := w.compose.pull
		w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
			return errors.New("Get http://localhost:5000/v2/: connection refused")
		}
		h := newHarness(t, w, svc("app", true))
		for range 3 {
			if res := h.trigger(t, "app"); res.Outcome != CheckFailed || !strings.Contains(res.Reason, "pull") {
				t.Fatalf("Trigger(app) = %+v, want %s at pull", res, CheckFailed)
			}
		}
		if got := w.events(); len(got) != 1 || got[0] != notify.UpdateFailed {
			t.Errorf("alerts after 3 failed pulls = %v, want one %s", got, notify.UpdateFailed)
		}
		if st := h.store.Get("app"); st.Blocked != nil || st.Deploy != nil {
			t.Errorf("state after failed pulls = %+v, want no block and no deploy in flight", st)
		}

		w.compose.pull = pull
		if res := h.trigger(t, "app"); res.Outcome != Deployed {
			t.Fatalf("Trigger(app) once the pull works = %+v, want %s", res, Deployed)
		}
		got := w.events()
		if want := []notify.Event{notify.UpdateFailed, notify.UpdateStarted, notify.UpdateSucceeded}; !slices.Equal(got, want) {
			t.Errorf("alerts = %v, want %v", got, want)
		}
	})
}

// A block whose save fails still holds: the next check does not deploy the
// bad digest again, and the block reaches the file once the disk allows.
func TestBlockHoldsWhenTheStateFileCannotBeWritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "state")
		store, err := state.Open(filepath.Join(dir, "state.json"))
		if err != nil {
			t.Fatal(err)
		}
		w := newWorld()
		w.addProject("app", digestA, behaveHealthy)
		w.push("app", digestB, behaveUnhealthy)
		h := newHarnessWithStore(t, w, store, svc("app", true))

		// The pull fills the disk: from then on every save fails (the state
		// directory becomes a file).
		pull := w.compose.pull
		w.compose.pull = func(ctx context.Context, p compose.Project, services ...string) error {
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
			if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
				return err
			}
			return pull(ctx, p, services...)
		}
		if res := h.trigger(t, "app"); res.Outcome != RolledBack {
			t.Fatalf("Trigger(app) = %+v, want %s", res, RolledBack)
		}
		if res := h.trigger(t, "app"); res.Outcome != SkipBlocked {
			t.Fatalf("second Trigger(app) with an unwritable state file = %+v, want %s: the block must hold", res, SkipBlocked)
		}
		if n := w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1: the bad digest was deployed again", n)
		}
		if !store.Dirty() {
			t.Errorf("store not dirty after failed saves")
		}

		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		h.u.PollAll(context.Background()) // every poll writes what is pending
		reopened, err := state.Open(filepath.Join(dir, "state.json"))
		if err != nil {
			t.Fatal(err)
		}
		if b := reopened.Get("app").Blocked; b == nil || b.Digest != digestB {
			t.Errorf("state file after the disk recovered: blocked = %+v, want %s", b, digestB)
		}
	})
}
