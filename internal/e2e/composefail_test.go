package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// When compose fails the running version stays running and the alert
// carries compose's own words: a broken compose file and a missing one stop
// the deploy before anything changes; an `up` that fails (the new image's
// entrypoint does not exist) is rolled back and the digest blocked.
func TestComposeFails(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "composefail")
	v1 := s.push(healthyImage)
	s.up()
	s.start()
	good, err := os.ReadFile(s.compose)
	if err != nil {
		t.Fatal(err)
	}
	// Runs before the scenario's cleanup, whose compose down needs the file.
	t.Cleanup(func() { os.WriteFile(s.compose, good, 0o644) })

	steps := []struct {
		name   string
		break_ func()
		words  string // in compose's output, so in the alert
	}{
		{"broken compose file", func() {
			if err := os.WriteFile(s.compose, []byte("services:\n  app: [image\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, "yaml"},
		{"missing compose file", func() {
			if err := os.Remove(s.compose); err != nil {
				t.Fatal(err)
			}
		}, "no such file or directory"},
	}
	// Each step pushes a new digest: the failure of one digest at one step
	// is alerted once, however often the polls retry it.
	var v2 string
	for i, st := range steps {
		st.break_()
		v2 = s.push(healthyImage)
		s.waitFor(60*time.Second, "an update_failed alert ("+st.name+")", func() (bool, string) {
			return len(s.hooks.events("update_failed")) == i+1, fmt.Sprintf("%+v", s.hooks.events("update_failed"))
		})
		a := s.hooks.events("update_failed")[i]
		if a.Digest != v2 || !strings.Contains(strings.ToLower(a.Reason), st.words) || !strings.Contains(a.Reason, "compose") {
			t.Errorf("%s: update_failed alert %+v, want digest %s and compose's output (%q) in its reason", st.name, a, v2, st.words)
		}
		s.waitPolls(2)
		if ok, detail := s.runs(v1); !ok {
			t.Fatalf("%s: the running version was touched: %s", st.name, detail)
		}
		if n := len(s.hooks.events("update_failed")); n != i+1 {
			t.Errorf("%s: %d update_failed alerts, want %d: one per failure, not one per poll", st.name, n, i+1)
		}
	}
	if err := os.WriteFile(s.compose, good, 0o644); err != nil {
		t.Fatal(err)
	}
	s.waitFor(60*time.Second, "v2 to be deployed once the compose file is back", func() (bool, string) { return s.runs(v2) })

	// An up that fails: the container cannot start.
	bad := s.pushEntrypoint("/nonexistent")
	s.waitFor(90*time.Second, "the failed up to be rolled back", func() (bool, string) {
		return len(s.hooks.events("rollback")) == 1, s.health()
	})
	a := s.hooks.events("rollback")[0]
	if a.Digest != bad || !strings.Contains(a.Reason, "compose up") || !strings.Contains(a.Reason, "/nonexistent") {
		t.Errorf("rollback alert %+v, want digest %s and compose's output naming /nonexistent", a, bad)
	}
	s.waitFor(60*time.Second, "v2 to run again", func() (bool, string) { return s.runs(v2) })
	if b := s.blocked(); b != bad {
		t.Errorf("blocked %q, want %s", b, bad)
	}
	if n := s.serviceMetric("watcher_rollbacks_total"); n != 1 {
		t.Errorf("watcher_rollbacks_total = %v, want 1", n)
	}
}

// pushEntrypoint pushes an image whose entrypoint is the given path (which
// need not exist) and returns its digest.
func (s *scenario) pushEntrypoint(entrypoint string) string {
	s.t.Helper()
	dir := s.t.TempDir()
	copyFile(s.t, testappBin, filepath.Join(dir, "app"))
	dockerfile := fmt.Sprintf("FROM scratch\nLABEL dockward.e2e.nonce=%d\nCOPY app /app\nENTRYPOINT [%q]\n", time.Now().UnixNano(), entrypoint)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.docker("build", "-q", "--no-cache", "-t", s.ref("latest"), dir) // see push
	out := s.docker("push", s.ref("latest"))
	m := regexp.MustCompile(`digest: (sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		s.t.Fatalf("docker push printed no digest:\n%s", out)
	}
	return m[1]
}
