package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// dockerd restarts while dockward idles (nothing deploying): the event
// stream reconnects, a container that turns unhealthy right after the
// restart is healed, and the next push is deployed. Nothing is blocked and
// nothing alerts as a deploy failure.
func TestEngineRestartWhileIdle(t *testing.T) {
	t.Parallel()
	e, s := faultScenario(t, "idlerestart", 10)
	s.pollInterval = 1
	s.service = map[string]any{"auto_heal": true, "heal_cooldown": 1, "heal_verify_delay": 2}
	v1 := s.push(healthyImage)
	s.up()
	s.waitFor(60*time.Second, "v1 to be healthy", func() (bool, string) { return s.runs(v1) })
	s.start()
	s.waitPolls(2)

	stopped := e.stop()
	// Long enough for polls to fail against the absent engine.
	s.waitPolls(3)
	started := e.start()
	t.Logf("engine restart: stop %v, start %v", stopped.Round(time.Millisecond), started.Round(time.Millisecond))
	// The restart policy brings v1 back; then it turns unhealthy.
	s.waitFor(60*time.Second, "v1 to be back after the engine restart", func() (bool, string) { return s.runs(v1) })
	id := strings.TrimSpace(s.docker("ps", "-q", "--filter", "label=com.docker.compose.project="+s.project))
	before := strings.TrimSpace(s.docker("inspect", "-f", "{{.State.StartedAt}}", id))
	s.docker("exec", id, "/app", "-sick")
	s.waitFor(90*time.Second, "the container to be healed", func() (bool, string) {
		at := strings.TrimSpace(s.docker("inspect", "-f", "{{.State.StartedAt}}", id))
		return at != before && len(s.hooks.events("heal_restart")) >= 1, fmt.Sprintf("started at %s, heal_restart %v", at, s.hooks.events("heal_restart"))
	})
	s.waitFor(60*time.Second, "the healed container to be healthy", func() (bool, string) { return s.runs(v1) })

	v2 := s.push(healthyImage)
	s.waitFor(90*time.Second, "v2 to be deployed after the engine restart", func() (bool, string) { return s.runs(v2) })

	logs := s.proc.logs()
	if b := s.blocked(); b != "" {
		t.Errorf("blocked %s after an engine restart, want nothing", b)
	}
	for _, ev := range []string{"rollback", "rollback_failed", "blocked", "update_failed"} {
		if got := s.hooks.events(ev); len(got) > 0 {
			t.Errorf("%s alerts %+v, want none: the engine restarted while nothing deployed", ev, got)
		}
	}
	if n := countLines(logs, "docker event stream lost"); n < 1 || n > 2 {
		t.Errorf("%d lines that the event stream was lost, want 1 or 2, not one per reconnect", n)
	}
	s.noFailedRollback(logs)
	if exited, err := s.proc.exited(); exited {
		t.Fatalf("dockward exited: %v", err)
	}
	s.stop()
}
