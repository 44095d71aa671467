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

// A dockward killed while it verifies a good digest is started again: the
// interrupted deploy claims the service before the API answers, so the
// first trigger the new process answers gets 409 (not "up to date" for a
// digest nobody verified), and the deploy is verified and finished, not
// rolled back. (Without the claim before serving, the race is narrow: this
// test shows the behaviour; the unit test TestResumeFromEachPhase pins that
// Resume holds the guard when it returns.)
func TestKill9DuringGoodDeployIsFinishedOnStart(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "resumeclaim")
	s.pollInterval = 3600
	s.grace = 15
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	// Without a healthcheck the new version must stay up for the whole
	// grace period: the deploy is in flight for 15 s.
	good := s.push(image{mode: "healthy", noHealthcheck: true})
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
	s.proc = nil
	if st := s.state().Services[s.name]; st == nil || st.Deploy == nil || st.Deploy.Digest != good {
		t.Fatalf("state after SIGKILL: %+v, want the deploy of %s in flight", st, good)
	}

	// The first trigger the new process answers, sent before it listens.
	first := make(chan string, 1)
	go func() {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if code, body := s.request("POST", "/trigger/"+s.name+"?wait=true"); code != 0 {
				first <- fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
				return
			}
			time.Sleep(time.Millisecond)
		}
		first <- "no answer"
	}()
	restarted := time.Now()
	s.start()
	if got := <-first; !strings.HasPrefix(got, "409 ") {
		t.Errorf("the first POST /trigger the new process answers = %s, want 409 while the resumed deploy holds the service", got)
	}
	s.waitFor(time.Duration(s.grace)*time.Second+60*time.Second, "the resumed deploy to finish", func() (bool, string) {
		st := s.state().Services[s.name]
		return st != nil && st.Deploy == nil, fmt.Sprintf("state %+v", st)
	})
	t.Logf("kill -9 during a good deploy: start to deployed in %v (grace %vs)", time.Since(restarted).Round(10*time.Millisecond), s.grace)
	logs := s.proc.logs()
	if n := countLines(logs, "deploy finished", "outcome=deployed", good); n != 1 {
		t.Errorf("%d lines say the resumed deploy of %s finished deployed, want 1:\n%s", n, good, logs)
	}
	if got := s.running(); len(got) != 1 || got[0] != good {
		t.Errorf("after the resumed deploy the project runs %v, want %s", got, good)
	}
	if b := s.blocked(); b != "" {
		t.Errorf("blocked %s, want nothing", b)
	}
	if r := s.trigger(); r.Outcome != "up_to_date" || r.Digest != good || r.Previous != good {
		t.Errorf("trigger after the resumed deploy = %+v, want up to date at %s", r, good)
	}
	if strings.Contains(logs, v1) && countLines(logs, "deploy finished", "outcome=rolled_back") > 0 {
		t.Errorf("the resumed deploy rolled back to %s:\n%s", v1, logs)
	}
}
