package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Engine faults, on a private engine that the test stops and starts: an
// engine that is away is not a verdict. A deploy or a resume waits for it,
// the grace period starts again once it answers, and then what runs
// decides. Nothing is blocked because dockerd restarted, and a restart
// alone raises no rollback_failed.

// outage is how long the engine stays away in these tests: the fault that
// they inject. It is longer than the grace periods below, so that only a
// grace period that starts again once the engine answers lets a good
// version pass.
const outage = 15 * time.Second

// warmingImage is a good version that needs a while to turn healthy, every
// time it starts: its verification lasts long enough to be interrupted.
var warmingImage = image{mode: "healthy", startPeriod: "1h", healthyAfter: "4s"}

// faultScenario is a scenario on a private engine whose containers come
// back after an engine restart, as services with a restart policy do.
func faultScenario(t *testing.T, name string, grace float64) (*engine, *scenario) {
	t.Helper()
	e := startEngine(t)
	s := newScenario(t, name)
	e.use(s)
	s.restart = "unless-stopped"
	s.pollInterval = 3600
	s.grace = grace
	return e, s
}

// restartEngine stops the engine, keeps it away for the outage and starts
// it again; it returns when the engine answers.
func restartEngine(t *testing.T, e *engine) {
	t.Helper()
	stopped := e.stop()
	time.Sleep(outage) // the fault: the engine is away
	started := e.start()
	t.Logf("engine restart: stop %v, away %v, start %v", stopped.Round(time.Millisecond), outage, started.Round(time.Millisecond))
}

// noFailedRollback fails the test on rollback_failed alerts and on
// "rollback failed" log lines.
func (s *scenario) noFailedRollback(logs string) {
	s.t.Helper()
	if got := s.hooks.events("rollback_failed"); len(got) > 0 {
		s.t.Errorf("rollback_failed alerts %+v, want none: the engine restarted, nothing failed", got)
	}
	if n := countLines(logs, "rollback failed"); n > 0 {
		s.t.Errorf("%d log lines say a rollback failed, want none:\n%s", n, logs)
	}
}

// verifying fails the test unless the deploy is still in verification: a
// deploy record, no verdict in the log.
func (s *scenario) verifying(digest string) {
	s.t.Helper()
	if st := s.state().Services[s.name]; st == nil || st.Deploy == nil || st.Deploy.Digest != digest {
		s.t.Fatalf("state before the fault: %+v, want a deploy record of %s in flight", st, digest)
	}
	if s.proc != nil && strings.Contains(s.proc.logs(), "deploy finished") {
		s.t.Fatalf("the deploy finished before the fault; the test needs it in verification:\n%s", s.proc.logs())
	}
}

// deployEnded reports whether the state file holds no deploy in flight; a
// service with nothing to remember has no entry at all.
func (s *scenario) deployEnded() (bool, string) {
	st := s.state().Services[s.name]
	return st == nil || st.Deploy == nil, fmt.Sprintf("state %+v", st)
}

// dockerd restarts while a good version is verified: it is deployed, and
// nothing is blocked.
func TestEngineRestartDuringGoodVerification(t *testing.T) {
	t.Parallel()
	e, s := faultScenario(t, "eng-good", 10)
	s.push(healthyImage)
	s.up()
	s.start()

	good := s.push(warmingImage)
	goodID := s.imageID(s.ref("latest"))
	triggered := time.Now()
	s.triggerAsync()
	s.waitFor(60*time.Second, "the new version to run", func() (bool, string) { return s.runsImage(goodID) })
	s.verifying(good)

	restartEngine(t, e)
	back := time.Now()
	s.waitFor(time.Duration(s.grace)*time.Second+90*time.Second, "the deploy to end", func() (bool, string) {
		return s.deployEnded()
	})
	t.Logf("good push across an engine restart: deployed %v after the trigger, %v after the engine answered again",
		time.Since(triggered).Round(10*time.Millisecond), time.Since(back).Round(10*time.Millisecond))

	if ok, detail := s.runs(good); !ok {
		t.Errorf("after the deploy: %s", detail)
	}
	if b := s.blocked(); b != "" {
		t.Errorf("blocked %s, want nothing: the version was good", b)
	}
	logs := s.proc.logs()
	if n := countLines(logs, "deploy finished", good); n != 1 || countLines(logs, "deploy finished", "outcome=deployed") != 1 {
		t.Errorf("want one line saying the deploy of %s finished deployed:\n%s", good, logs)
	}
	s.noFailedRollback(logs)
	s.waitFor(10*time.Second, "the update_succeeded notification", func() (bool, string) {
		return len(s.hooks.events("update_succeeded")) == 1, fmt.Sprintf("%+v", s.hooks.events("update_succeeded"))
	})
	if got := s.hooks.events("rollback"); len(got) > 0 {
		t.Errorf("rollback notifications %+v, want none", got)
	}
	if r := s.trigger(); r.Outcome != "up_to_date" || r.Digest != good {
		t.Errorf("trigger after the deploy = %+v, want up_to_date at %s", r, good)
	}
}

// dockerd restarts while a bad version is verified: it is rolled back and
// blocked, on the verdict of what runs once the engine is back.
func TestEngineRestartDuringBadVerification(t *testing.T) {
	t.Parallel()
	e, s := faultScenario(t, "eng-bad", 10)
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	triggered := time.Now()
	bad, _ := s.deployStuck()
	s.verifying(bad)

	restartEngine(t, e)
	back := time.Now()
	s.waitFor(time.Duration(s.grace)*time.Second+90*time.Second, "the bad version to be rolled back and blocked", func() (bool, string) {
		st := s.state().Services[s.name]
		return st != nil && st.Deploy == nil && st.Blocked != nil, fmt.Sprintf("state %+v", st)
	})
	t.Logf("bad push across an engine restart: rolled back %v after the trigger, %v after the engine answered again (grace %vs)",
		time.Since(triggered).Round(10*time.Millisecond), time.Since(back).Round(10*time.Millisecond), s.grace)

	if b := s.blocked(); b != bad {
		t.Errorf("blocked %q, want %s", b, bad)
	}
	s.waitFor(30*time.Second, "v1 to run again", func() (bool, string) { return s.runs(v1) })
	logs := s.proc.logs()
	if n := countLines(logs, "deploy finished", "outcome=rolled_back", bad); n != 1 {
		t.Errorf("%d lines say the deploy of %s finished rolled back, want 1:\n%s", n, bad, logs)
	}
	s.noFailedRollback(logs)
	s.waitFor(10*time.Second, "one rollback notification", func() (bool, string) {
		return len(s.hooks.events("rollback")) == 1, fmt.Sprintf("%+v", s.hooks.events("rollback"))
	})
	if rb := s.hooks.events("rollback")[0]; !strings.Contains(rb.Reason, "still starting") {
		t.Errorf("rollback reason %q, want the verdict on what ran after the restart (still starting at the deadline)", rb.Reason)
	}
}

// dockward is killed with SIGKILL while a good version is verified, then
// the engine restarts; dockward starts again before or after the engine is
// back. The resume ends with the good version verified and deployed, not
// blocked, and no rollback_failed.
func TestKill9AndEngineRestartResumes(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name          string
		engineFirst   bool // the engine answers before dockward starts again
		scenarioShort string
	}{
		{"engine back first", true, "k9-eng-first"},
		{"dockward back first", false, "k9-dw-first"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, s := faultScenario(t, tt.scenarioShort, 10)
			s.push(healthyImage)
			s.up()
			s.start()

			good := s.push(warmingImage)
			goodID := s.imageID(s.ref("latest"))
			s.triggerAsync()
			s.waitFor(60*time.Second, "the new version to run", func() (bool, string) { return s.runsImage(goodID) })
			if err := s.proc.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			err := s.proc.wait(10 * time.Second)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("dockward exit after SIGKILL: %v, want killed by SIGKILL", err)
			}
			first := s.proc.logs()
			s.proc = nil
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("output of the killed dockward:\n%s", first)
				}
			})
			if strings.Contains(first, "deploy finished") {
				t.Fatalf("the deploy finished before the kill; the test needs it in flight:\n%s", first)
			}
			s.verifying(good)

			stopped := e.stop()
			var restarted, back time.Time
			if tt.engineFirst {
				time.Sleep(outage) // the fault: the engine is away
				e.start()
				back = time.Now()
				restarted = time.Now()
				s.start()
			} else {
				restarted = time.Now()
				s.start() // the engine is away
				time.Sleep(outage)
				e.start()
				back = time.Now()
			}
			t.Logf("engine stopped in %v", stopped.Round(time.Millisecond))
			s.waitFor(time.Duration(s.grace)*time.Second+90*time.Second, "the resumed deploy to end", func() (bool, string) {
				st := s.state().Services[s.name]
				return st == nil || st.Deploy == nil, fmt.Sprintf("state %+v", st)
			})
			t.Logf("resume after kill -9 and an engine restart (%s): verified %v after dockward started again, %v after the engine answered again",
				tt.name, time.Since(restarted).Round(10*time.Millisecond), time.Since(back).Round(10*time.Millisecond))

			if ok, detail := s.runs(good); !ok {
				t.Errorf("after the resume: %s", detail)
			}
			if b := s.blocked(); b != "" {
				t.Errorf("blocked %s, want nothing: the version was good", b)
			}
			logs := s.proc.logs()
			if n := countLines(logs, "level=WARN", "the previous run stopped during a deploy", good); n != 1 {
				t.Errorf("%d lines say an interrupted deploy of %s is resumed, want 1:\n%s", n, good, logs)
			}
			if n := countLines(logs, "deploy finished", "outcome=deployed"); n != 1 {
				t.Errorf("%d lines say the resumed deploy finished deployed, want 1:\n%s", n, logs)
			}
			s.noFailedRollback(logs)
			if got := s.hooks.events("rollback"); len(got) > 0 {
				t.Errorf("rollback notifications %+v, want none", got)
			}
			if got := s.hooks.events("blocked"); len(got) > 0 {
				t.Errorf("blocked notifications %+v, want none", got)
			}
			if r := s.trigger(); r.Outcome != "up_to_date" || r.Digest != good {
				t.Errorf("trigger after the resume = %+v, want up_to_date at %s", r, good)
			}
		})
	}
}
