package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// blockedRun runs v1, pushes an unhealthy digest, lets dockward roll it
// back and block it, and stops dockward. It returns the state files as
// that run left them: each holds the block.
func blockedRun(t *testing.T, name string) (s *scenario, v1, bad string, main, prev []byte) {
	t.Helper()
	s = newScenario(t, name)
	s.pollInterval = 3600
	s.grace = 5
	s.service = map[string]any{"auto_heal": true, "heal_cooldown": 60, "heal_verify_delay": 3}
	v1 = s.push(healthyImage)
	s.up()
	s.start()
	bad = s.push(unhealthyImage)
	if r := s.trigger(); r.Outcome != "rolled_back" {
		t.Fatalf("trigger = %+v, want rolled_back", r)
	}
	s.stop()
	var err error
	if main, err = os.ReadFile(s.statePath()); err != nil {
		t.Fatal(err)
	}
	if prev, err = os.ReadFile(s.statePath() + ".prev"); err != nil {
		t.Fatalf("no previous generation after a deploy: %v", err)
	}
	for _, b := range [][]byte{main, prev} {
		if !strings.Contains(string(b), bad) {
			t.Fatalf("a state generation does not hold the blocked digest %s:\n%s", bad, b)
		}
	}
	return s, v1, bad, main, prev
}

func (s *scenario) statePath() string { return filepath.Join(s.dir, "state", "state.json") }

// writeState puts the state files in place; nil removes one.
func (s *scenario) writeState(main, prev []byte) {
	s.t.Helper()
	for path, b := range map[string][]byte{s.statePath(): main, s.statePath() + ".prev": prev} {
		os.Remove(path)
		if b != nil {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				s.t.Fatal(err)
			}
		}
	}
}

// health returns /health's status code and JSON body.
func (s *scenario) healthBody() (int, map[string]any) {
	s.t.Helper()
	code, body := s.request("GET", "/health")
	var h map[string]any
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		s.t.Fatalf("GET /health = %d %q: not JSON: %v", code, body, err)
	}
	return code, h
}

// resetState runs `dockward state reset` against the scenario's config.
func (s *scenario) resetState() (string, error) {
	out, err := exec.Command(dockwardBin, "state", "reset", "-config", filepath.Join(s.dir, "config.json")).CombinedOutput()
	return string(out), err
}

// neverDeployed checks that the bad digest was deployed once only, by the
// run that blocked it, and that v1 still runs.
func (s *scenario) neverDeployed(v1, bad string) {
	s.t.Helper()
	n := 0
	for _, h := range s.hooks.events("update_started") {
		if h.Digest == bad {
			n++
		}
	}
	if n != 1 {
		s.t.Errorf("the blocked digest %s was deployed %d times, want once (the run that blocked it)", bad, n)
	}
	// A container just healed may still be starting.
	s.waitFor(30*time.Second, "v1 to run healthy", func() (bool, string) { return s.runs(v1) })
}

// A damaged state file with a good previous generation: dockward starts,
// says so, and the digest blocked before is still blocked.
func TestDamagedStateFallsBackToPreviousGeneration(t *testing.T) {
	t.Parallel()
	s, v1, bad, main, prev := blockedRun(t, "stateprev")
	truncated := main[:len(main)/2]
	s.writeState(truncated, prev)

	s.pollInterval = 1
	s.start()
	if code, h := s.healthBody(); code != 200 || h["status"] != "ok" {
		t.Errorf("GET /health = %d %v, want 200 ok", code, h)
	}
	s.waitFor(30*time.Second, "a state_recovered warning", func() (bool, string) {
		ev := s.hooks.events("state_recovered")
		return len(ev) == 1 && ev[0].Level == "warning", fmt.Sprintf("%+v", ev)
	})
	if got := s.blocked(); got != bad {
		t.Errorf("blocked digest after the fallback = %q, want %s", got, bad)
	}
	s.waitPolls(3)
	if r := s.trigger(); r.Outcome != "blocked" || r.Digest != bad {
		t.Errorf("trigger = %+v, want blocked %s", r, bad)
	}
	s.neverDeployed(v1, bad)
	if got := s.metric("watcher_deploys_paused"); got != 0 {
		t.Errorf("watcher_deploys_paused = %v, want 0", got)
	}
	copies, _ := filepath.Glob(s.statePath() + ".damaged-*")
	if len(copies) != 1 {
		t.Fatalf("damaged copies %v, want one", copies)
	}
	if b, _ := os.ReadFile(copies[0]); string(b) != string(truncated) {
		t.Errorf("damaged copy holds %q, want the truncated file", b)
	}
}

// A state file that neither generation can give: dockward starts with
// deploys paused, heals and answers its API, never deploys the digest it
// had blocked, and resumes once the file is fixed and reloaded or reset.
func TestUnreadableStatePausesDeploys(t *testing.T) {
	tests := []struct {
		name   string
		damage func(main, prev []byte) ([]byte, []byte)
		resume string // "sighup": the good file is put back; "reset": dockward state reset
		heal   bool
	}{
		{"empty", func(main, prev []byte) ([]byte, []byte) { return []byte{}, []byte{} }, "reset", false},
		{"truncated", func(main, prev []byte) ([]byte, []byte) { return main[:len(main)/2], prev[:len(prev)/3] }, "sighup", false},
		{"garbage", func(main, prev []byte) ([]byte, []byte) { return []byte("\x00\x00garbage\xff"), nil }, "reset", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, v1, bad, main, prev := blockedRun(t, "statebad"+tt.name)
			damagedMain, damagedPrev := tt.damage(main, prev)
			s.writeState(damagedMain, damagedPrev)

			s.pollInterval = 1
			s.pausedStart = true
			s.start()
			code, h := s.healthBody()
			reason, _ := h["reason"].(string)
			if code != 503 || h["status"] != "deploys_paused" || !strings.Contains(reason, s.statePath()) || h["services"] != 1.0 {
				t.Errorf("GET /health = %d %v, want 503 deploys_paused with a reason naming %s", code, h, s.statePath())
			}
			if got := s.metric("watcher_deploys_paused"); got != 1 {
				t.Errorf("watcher_deploys_paused = %v, want 1", got)
			}
			s.waitFor(30*time.Second, "a critical state_unreadable alert", func() (bool, string) {
				ev := s.hooks.events("state_unreadable")
				return len(ev) == 1 && ev[0].Level == "critical", fmt.Sprintf("%+v", ev)
			})
			if code, body := s.request("POST", "/trigger/"+s.name+"?wait=true"); code != 503 || !strings.Contains(body, "deploys paused") {
				t.Errorf("POST /trigger while paused = %d %s, want 503 with the reason", code, body)
			}
			// The blocked digest is the registry's latest: polls run and deploy nothing.
			s.waitPolls(3)
			s.neverDeployed(v1, bad)
			if b, _ := os.ReadFile(s.statePath()); string(b) != string(damagedMain) {
				t.Errorf("the damaged state file was changed to %q", b)
			}

			if tt.heal {
				id := s.container()
				before := s.startedAt(id)
				docker(t, "exec", id, "/app", "-sick")
				s.waitFor(60*time.Second, "auto-heal to restart the unhealthy container while deploys are paused", func() (bool, string) {
					return s.startedAt(id) != before && s.serviceMetric("watcher_restarts_total") == 1, s.health()
				})
			}

			switch tt.resume {
			case "sighup":
				s.writeState(main, damagedPrev)
				s.signal(syscall.SIGHUP)
				s.waitFor(30*time.Second, "deploys to resume after the fix and a reload", func() (bool, string) {
					code, body := s.request("GET", "/health")
					return code == 200, body
				})
				if got := s.blocked(); got != bad {
					t.Errorf("blocked digest after the reload = %q, want %s", got, bad)
				}
				if r := s.trigger(); r.Outcome != "blocked" || r.Digest != bad {
					t.Errorf("trigger after the reload = %+v, want blocked %s", r, bad)
				}
				if n := len(s.hooks.events("deploys_resumed")); n != 1 {
					t.Errorf("%d deploys_resumed alerts, want 1", n)
				}
				s.neverDeployed(v1, bad)
			case "reset":
				if out, err := s.resetState(); err == nil || !strings.Contains(out, "held by another dockward") {
					t.Errorf("state reset while dockward runs = %v\n%s\nwant it refused", err, out)
				}
				s.stop()
				out, err := s.resetState()
				if err != nil || !strings.Contains(out, "reset to an empty state") {
					t.Fatalf("state reset = %v\n%s", err, out)
				}
				t.Logf("dockward state reset:\n%s", out)
				s.neverDeployed(v1, bad)
				v2 := s.push(healthyImage)
				s.pollInterval = 3600
				s.pausedStart = false
				s.start()
				// The first poll at start may deploy it before the trigger.
				if r := s.trigger(); (r.Outcome != "deployed" && r.Outcome != "up_to_date") || r.Digest != v2 {
					t.Errorf("trigger after the reset = %+v, want %s deployed", r, v2)
				}
				s.waitFor(30*time.Second, "v2 to run", func() (bool, string) { return s.runs(v2) })
				if ev := s.hooks.events("update_succeeded"); len(ev) != 1 || ev[0].Digest != v2 {
					t.Errorf("update_succeeded alerts %+v, want one for %s", ev, v2)
				}
				if got := s.metric("watcher_deploys_paused"); got != 0 {
					t.Errorf("watcher_deploys_paused after the reset = %v, want 0", got)
				}
			}
		})
	}
}
