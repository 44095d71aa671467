package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A registry that is down, slow or answers nonsense never leads to a deploy
// or a rollback, and never stops dockward: each change of the failure's
// kind is one log line, and once the registry answers again the digest that
// was pushed meanwhile is deployed. The registry is real; a proxy in front of
// it injects the faults.
func TestRegistryFaults(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "regfault")
	proxy := startRegistryProxy(t, s.registry)
	s.registry, s.host = proxy.url(), proxy.host()
	// Polls every second; a registry call gives up after one.
	s.registryCfg = map[string]any{"timeout": 1}

	v1 := s.push(healthyImage)
	s.up()
	s.waitFor(60*time.Second, "v1 to be healthy", func() (bool, string) { return s.runs(v1) })
	// v2 waits in the registry: a fault taken for an answer deploys it.
	v2 := s.push(healthyImage)

	steps := []struct{ fault, kind string }{
		{faultDown, "network"}, // down at start
		{faultServerError, "server_error"},
		{faultHTML, "bad_response"},
		{faultCut, "network"}, // down mid-cycle: the connection drops without an answer
		{faultTruncated, "bad_response"},
		{faultSlow, "timeout"},
		{faultWrongDigest, "bad_response"},
	}
	proxy.set(steps[0].fault)
	s.start()
	perKind := map[string]int{}
	for i, step := range steps {
		perKind[step.kind]++
		if i > 0 {
			proxy.set(step.fault)
		}
		s.waitFor(60*time.Second, "the registry failure to be logged ("+step.fault+")", func() (bool, string) {
			return countLines(s.proc.logs(), "registry poll failed") == i+1, fmt.Sprintf("%d lines of registry poll failed, want %d", countLines(s.proc.logs(), "registry poll failed"), i+1)
		})
		s.waitPolls(3)
		logs := s.proc.logs()
		if n := countLines(logs, "registry poll failed"); n != i+1 {
			t.Errorf("fault %s: %d log lines of registry poll failed so far, want %d: one per change of kind", step.fault, n, i+1)
		}
		if n := countLines(logs, "level=WARN", "registry poll failed", "kind="+step.kind); n != perKind[step.kind] {
			t.Errorf("fault %s: %d warnings of kind %s so far, want %d", step.fault, n, step.kind, perKind[step.kind])
		}
		if n := countLines(logs, "new digest; deploying"); n != 0 {
			t.Fatalf("fault %s: dockward started a deploy from a registry that answered nonsense:\n%s", step.fault, logs)
		}
		if step.fault != faultDown && proxy.requests(step.fault) == 0 {
			t.Errorf("fault %s: the proxy saw no request", step.fault)
		}
		if ok, detail := s.runs(v1); !ok {
			t.Fatalf("fault %s: %s", step.fault, detail)
		}
		if exited, err := s.proc.exited(); exited {
			t.Fatalf("fault %s: dockward exited: %v\n%s", step.fault, err, logs)
		}
	}
	for _, m := range []string{"watcher_updates_total", "watcher_rollbacks_total"} {
		if n := s.serviceMetric(m); n != 0 {
			t.Errorf("%s = %v after the faults, want 0", m, n)
		}
	}
	if n := len(s.hooks.events("rollback")) + len(s.hooks.events("update_started")); n != 0 {
		t.Errorf("%d deploy or rollback notifications during the faults, want none", n)
	}

	// The registry answers dockward's check but goes away for the engine's
	// pull: one alert with compose's output, the running version stays,
	// and it is not taken for an engine outage.
	proxy.set(faultPullCut)
	s.waitFor(60*time.Second, "the failed pull to be alerted", func() (bool, string) {
		return len(s.hooks.events("update_failed")) == 1, fmt.Sprintf("%+v", s.hooks.events("update_failed"))
	})
	if a := s.hooks.events("update_failed")[0]; a.Digest != v2 || !strings.Contains(a.Reason, "compose pull") || !strings.Contains(a.Reason, "Error response from daemon") {
		t.Errorf("update_failed alert %+v, want digest %s and compose's output", a, v2)
	}
	s.waitPolls(3)
	logs := s.proc.logs()
	if n := countLines(logs, "docker engine unavailable"); n != 0 {
		t.Errorf("%d lines take the registry's absence during the pull for an engine outage, want none", n)
	}
	if n, m := countLines(logs, "level=ERROR", "deploy not started"), countLines(logs, "level=INFO", "new digest; deploying"); n != 1 || m != 1 {
		t.Errorf("%d errors and %d info lines for the failing pull over several polls, want 1 and 1", n, m)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Fatalf("after the failed pulls: %s", detail)
	}

	// Back: the digest pushed before the outage goes live.
	proxy.set(faultNone)
	s.waitFor(90*time.Second, "v2 to be deployed once the registry is back", func() (bool, string) { return s.runs(v2) })
	logs = s.proc.logs()
	if n := countLines(logs, "level=INFO", "registry poll works again", "after=bad_response"); n != 1 {
		t.Errorf("%d lines of registry poll works again, want 1:\n%s", n, logs)
	}
	if n := countLines(logs, "level=ERROR"); n != 1 {
		t.Errorf("%d error lines, want one (the failed pull; registry faults at the check are warnings):\n%s", n, logs)
	}
	s.stop()
	if !strings.Contains(logs, "registry poll failed") {
		t.Fatal("no registry failure was logged")
	}
}
