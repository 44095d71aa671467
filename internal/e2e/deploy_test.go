package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/notify/notifytest"
)

// A good push goes live on the next poll, the old image is kept as
// :rollback, and the team hears about it.
func TestGoodPushIsDeployed(t *testing.T) {
	t.Parallel()
	underEachCompose(t, "good", testGoodPushIsDeployed)
}

func testGoodPushIsDeployed(t *testing.T, s *scenario) {
	v1 := s.push(healthyImage)
	s.up()
	s.start()
	s.waitPolls(2)
	if got := s.serviceMetric("watcher_updates_total"); got != 0 {
		t.Fatalf("watcher_updates_total = %v before any push, want 0 (v1 already runs)", got)
	}

	v2 := s.push(healthyImage)
	s.waitFor(60*time.Second, "v2 to be deployed by polling", func() (bool, string) { return s.runs(v2) })
	s.waitFor(10*time.Second, "the update to be counted", func() (bool, string) {
		n := s.serviceMetric("watcher_updates_total")
		return n == 1, fmt.Sprintf("watcher_updates_total = %v", n)
	})
	// The healer decides health from the new container's events.
	s.waitFor(10*time.Second, "the service to be reported healthy", func() (bool, string) {
		n := s.serviceMetric("watcher_service_healthy")
		return n == 1, fmt.Sprintf("watcher_service_healthy = %v", n)
	})
	// The previous image is kept under :rollback.
	rb := strings.TrimSpace(s.docker("image", "inspect", "-f", "{{json .RepoDigests}}", s.ref("rollback")))
	if !strings.Contains(rb, v1) {
		t.Errorf("%s has RepoDigests %s, want the v1 digest %s", s.ref("rollback"), rb, v1)
	}
	s.waitFor(10*time.Second, "update notifications", func() (bool, string) {
		ok := len(s.hooks.events("update_started")) == 1 && len(s.hooks.events("update_succeeded")) == 1
		return ok, fmt.Sprintf("started %v, succeeded %v", s.hooks.events("update_started"), s.hooks.events("update_succeeded"))
	})
	if got := s.hooks.events("update_succeeded")[0]; got.Digest != v2 || got.Service != s.name || got.Level != "info" {
		t.Errorf("update_succeeded notification = %+v, want digest %s service %s level info", got, v2, s.name)
	}
	if r := s.trigger(); r.Outcome != "up_to_date" || r.Digest != v2 {
		t.Errorf("trigger after deploy = %+v, want up_to_date at %s", r, v2)
	}
}

// An unhealthy push is rolled back, its digest blocked and not retried on
// later polls; a newer good push clears the block and goes live.
func TestUnhealthyPushIsRolledBackAndBlocked(t *testing.T) {
	t.Parallel()
	underEachCompose(t, "unhealthy", testUnhealthyPushIsRolledBackAndBlocked)
}

func testUnhealthyPushIsRolledBackAndBlocked(t *testing.T, s *scenario) {
	// The rollback must reach a receiver that checks Discord's contract and
	// a real SMTP server too.
	discord := notifytest.StartDiscord(t)
	smtpHost, smtpPort, mails := notifytest.StartSMTP(t)
	s.notify = map[string]any{
		"discord": map[string]any{"webhook_url": discord.URL(), "min_level": "warning"},
		"smtp": map[string]any{"host": smtpHost, "port": smtpPort, "tls": "none", "min_level": "warning",
			"from": "dockward@example.test", "to": []string{"ops@example.test", "oncall@example.test"}},
	}
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	bad := s.push(unhealthyImage)
	s.waitFor(60*time.Second, "the bad digest to be blocked", func() (bool, string) {
		b := s.blocked()
		return b == bad, "blocked " + b
	})
	s.waitFor(30*time.Second, "v1 to run again after the rollback", func() (bool, string) { return s.runs(v1) })
	s.waitFor(10*time.Second, "rollback notification", func() (bool, string) {
		return len(s.hooks.events("rollback")) == 1, fmt.Sprintf("%+v", s.hooks.events("rollback"))
	})
	rb := s.hooks.events("rollback")[0]
	if !strings.Contains(rb.Reason, "database connection refused") {
		t.Errorf("rollback reason %q does not carry the healthcheck output", rb.Reason)
	}
	if rb.Digest != bad || rb.Level != "warning" {
		t.Errorf("rollback notification = %+v, want digest %s level warning", rb, bad)
	}
	s.waitFor(20*time.Second, "the rollback on Discord and by mail", func() (bool, string) {
		var onDiscord, byMail bool
		for _, m := range discord.Messages() {
			for _, e := range m.Embeds {
				onDiscord = onDiscord || strings.Contains(e.Title+e.Description, "rolled back")
			}
		}
		for _, m := range mails() {
			byMail = byMail || (strings.Contains(m.Subject, "rollback") && strings.Contains(m.Body, "database connection refused") && len(m.To) == 2)
		}
		return onDiscord && byMail, fmt.Sprintf("discord %d messages, %d mails", len(discord.Messages()), len(mails()))
	})

	// Later polls leave the blocked digest alone.
	s.waitPolls(3)
	if n := s.serviceMetric("watcher_rollbacks_total"); n != 1 {
		t.Errorf("watcher_rollbacks_total = %v after more polls, want 1 (no retry loop)", n)
	}
	if n := len(s.hooks.events("update_started")); n != 1 {
		t.Errorf("%d update_started notifications, want 1 (no retry loop)", n)
	}
	if got := s.serviceMetric("watcher_service_blocked"); got != 1 {
		t.Errorf("watcher_service_blocked = %v, want 1", got)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after polls: %s", detail)
	}

	v3 := s.push(healthyImage)
	s.waitFor(60*time.Second, "the fixed push v3 to go live", func() (bool, string) { return s.runs(v3) })
	s.waitFor(10*time.Second, "the block to clear", func() (bool, string) {
		b := s.blocked()
		return b == "" && s.serviceMetric("watcher_service_blocked") == 0, "blocked " + b
	})
	if n := len(s.hooks.events("unblocked")); n != 1 {
		t.Errorf("%d unblocked notifications, want 1", n)
	}
}

// A version that crashes on start is rolled back; the alert says how it died.
func TestCrashingPushIsRolledBack(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "crash")
	s.restart = "on-failure"
	v1 := s.push(healthyImage)
	s.up()
	s.pollInterval = 3600 // driven by triggers only
	s.start()

	bad := s.push(image{mode: "crash"})
	r := s.trigger()
	if r.Outcome != "rolled_back" || r.Digest != bad {
		t.Fatalf("trigger = %+v, want rolled_back of %s", r, bad)
	}
	if !strings.Contains(r.Reason, "exit code 3") {
		t.Errorf("reason %q does not carry the exit code", r.Reason)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after rollback: %s", detail)
	}
	if s.blocked() != bad {
		t.Errorf("blocked = %q, want %s", s.blocked(), bad)
	}
}

// A version whose healthcheck never passes (still "starting" at the end of
// the grace period) is rolled back at the deadline.
func TestStillStartingAtDeadlineIsRolledBack(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "starting")
	s.grace = 4
	s.pollInterval = 3600
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	bad := s.push(image{mode: "unhealthy", startPeriod: "1h"})
	start := time.Now()
	r := s.trigger()
	if r.Outcome != "rolled_back" || r.Digest != bad {
		t.Fatalf("trigger = %+v, want rolled_back of %s", r, bad)
	}
	if !strings.Contains(r.Reason, "still starting") {
		t.Errorf("reason %q, want it to say the container was still starting", r.Reason)
	}
	if took := time.Since(start); took < 4*time.Second {
		t.Errorf("rolled back after %v, before the 4s grace period ended", took)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after rollback: %s", detail)
	}
}

// Without a healthcheck a version passes only by staying up for the whole
// grace period: one that dies after two seconds is rolled back.
func TestNoHealthcheckMustStayUpForGrace(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "nohc")
	s.grace = 5
	s.pollInterval = 3600
	s.push(image{mode: "healthy", noHealthcheck: true})
	s.up()
	s.start()

	good := s.push(image{mode: "healthy", noHealthcheck: true})
	if r := s.trigger(); r.Outcome != "deployed" || r.Digest != good {
		t.Fatalf("trigger = %+v, want deployed %s", r, good)
	}
	late := s.push(image{mode: "crash", crashAfter: "2s", noHealthcheck: true})
	r := s.trigger()
	if r.Outcome != "rolled_back" || r.Digest != late {
		t.Fatalf("trigger = %+v, want rolled_back of %s", r, late)
	}
	if got := s.running(); len(got) != 1 || got[0] != good {
		t.Errorf("running %v, want %s", got, good)
	}
}

// DELETE /blocked/<name> clears a block; the next check tries the digest
// again (and, as it is still broken, blocks it again).
func TestUnblockByAPI(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "unblock")
	s.pollInterval = 3600
	s.grace = 5
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	bad := s.push(unhealthyImage)
	if r := s.trigger(); r.Outcome != "rolled_back" {
		t.Fatalf("trigger = %+v, want rolled_back", r)
	}
	if r := s.trigger(); r.Outcome != "blocked" || r.Digest != bad {
		t.Fatalf("second trigger = %+v, want blocked %s", r, bad)
	}
	code, body := s.request("DELETE", "/blocked/"+s.name)
	if code != 200 || !strings.Contains(body, `"was_blocked": true`) || !strings.Contains(body, bad) {
		t.Fatalf("DELETE /blocked = %d %s", code, body)
	}
	if b := s.blocked(); b != "" {
		t.Fatalf("blocked after DELETE = %q, want none", b)
	}
	if r := s.trigger(); r.Outcome != "rolled_back" {
		t.Fatalf("trigger after unblock = %+v, want a new attempt, rolled back again", r)
	}
	if n := s.serviceMetric("watcher_rollbacks_total"); n != 2 {
		t.Errorf("watcher_rollbacks_total = %v, want 2", n)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after second rollback: %s", detail)
	}
	if code, body := s.request("DELETE", "/blocked/no-such-service"); code != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("DELETE /blocked/no-such-service = %d %s, want 404 with a JSON error", code, body)
	}
}

// Ten triggers at once give exactly one deploy; the others are told a
// deploy is in progress.
func TestParallelTriggersDeployOnce(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "parallel")
	s.pollInterval = 3600
	s.push(healthyImage)
	s.up()
	s.start()

	v2 := s.push(healthyImage)
	var wg sync.WaitGroup
	codes := make(chan int, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Post(s.api+"/trigger/"+s.name, "", nil)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	counts := map[int]int{}
	for c := range codes {
		counts[c]++
	}
	if counts[202] < 1 || counts[202]+counts[409] != 10 {
		t.Errorf("status codes %v, want 202 for the first and 409 for the rest", counts)
	}
	s.waitFor(60*time.Second, "v2 to be deployed", func() (bool, string) { return s.runs(v2) })
	s.waitFor(10*time.Second, "the deploy to finish", func() (bool, string) {
		n := s.serviceMetric("watcher_updates_total")
		return n >= 1, fmt.Sprintf("watcher_updates_total = %v", n)
	})
	// Whatever the timing, one deploy happened.
	if r := s.trigger(); r.Outcome != "up_to_date" {
		t.Errorf("trigger after deploy = %+v, want up_to_date", r)
	}
	if n := s.serviceMetric("watcher_updates_total"); n != 1 {
		t.Errorf("watcher_updates_total = %v, want exactly 1", n)
	}
	if n := len(s.hooks.events("update_started")); n != 1 {
		t.Errorf("%d update_started notifications, want 1", n)
	}
}

// A blocked digest stays blocked across a restart of dockward.
func TestRestartKeepsBlock(t *testing.T) {
	t.Parallel()
	underEachCompose(t, "restart", testRestartKeepsBlock)
}

func testRestartKeepsBlock(t *testing.T, s *scenario) {
	s.pollInterval = 3600
	s.grace = 5
	v1 := s.push(healthyImage)
	s.up()
	s.start()
	bad := s.push(unhealthyImage)
	if r := s.trigger(); r.Outcome != "rolled_back" {
		t.Fatalf("trigger = %+v, want rolled_back", r)
	}
	s.stop()

	path := filepath.Join(s.dir, "state", "state.json")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("state file: %v", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("state file mode %v, want 0600", mode)
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), bad) {
		t.Errorf("state file does not hold the blocked digest %s:\n%s", bad, b)
	}

	s.start()
	if got := s.serviceMetric("watcher_service_blocked"); got != 1 {
		t.Errorf("watcher_service_blocked after restart = %v, want 1", got)
	}
	if r := s.trigger(); r.Outcome != "blocked" || r.Digest != bad {
		t.Errorf("trigger after restart = %+v, want blocked %s", r, bad)
	}
	if n := s.serviceMetric("watcher_rollbacks_total"); n != 0 {
		t.Errorf("watcher_rollbacks_total after restart = %v, want 0: nothing was retried", n)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after restart: %s", detail)
	}
}
