package watcher

import (
	"context"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/docker"
)

// An event stamped in the future must not become the replay point: every
// reconnect would ask the engine for events from then on, and get none.
func TestHealEventFromTheFutureIsNotTheReplayPoint(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := newHealWorld()
		healStream(w,
			func(ctx context.Context, fn func(docker.Event)) error {
				ev := w.event("c2", "start")
				ev.Time = ev.Time.Add(100 * 365 * 24 * time.Hour)
				fn(ev)
				return errStreamBroken
			},
			quiet,
		)
		startHealer(t, w, healConfig(), openStore(t, filepath.Join(t.TempDir(), "state.json")))
		time.Sleep(time.Minute)
		synctest.Wait()
		connects := w.Connects()
		if len(connects) != 2 {
			t.Fatalf("Events called %d times, want 2", len(connects))
		}
		if since := connects[1].since; since.After(connects[1].at) {
			t.Errorf("reconnect asks for events since %v, after its own time %v", since, connects[1].at)
		}
	})
}
