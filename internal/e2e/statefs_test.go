package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// When the state directory is full the block of a bad push cannot be
// written: dockward says so, keeps the block in memory (the bad digest is
// not deployed again), keeps serving, never leaves the state file torn,
// and writes the block once there is space again.
func TestStateDiskFull(t *testing.T) {
	t.Parallel()
	testStateFault(t, "statefull", func(t *testing.T, dir string) func() {
		// tmpfs counts its blocks per CPU, loosely: a write on another CPU
		// may still find one. Its inodes are counted exactly, and the state
		// is written to a new file: no inode left is a full disk for it.
		filler := filepath.Join(dir, "filler")
		fill(t, filler)
		files := fillInodes(t, dir)
		return func() {
			for _, f := range append(files, filler) {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
		}
	}, "no space left on device")
}

// The same with a state directory that turned read-only.
func TestStateReadOnly(t *testing.T) {
	t.Parallel()
	testStateFault(t, "statero", func(t *testing.T, dir string) func() {
		// A read-only bind mount over the directory: a remount of the
		// tmpfs itself is refused while anything has a file open on it.
		run(t, "mount", "--bind", dir, dir)
		run(t, "mount", "-o", "remount,bind,ro", dir)
		return func() { run(t, "umount", dir) }
	}, "read-only file system")
}

func testStateFault(t *testing.T, name string, breakFS func(t *testing.T, dir string) (repair func()), why string) {
	// Mounted before the scenario starts, so unmounted after it stops.
	dir := mountTmpfs(t, "1m")
	s := newScenario(t, name)
	s.edit = func(cfg map[string]any) { cfg["state_file"] = filepath.Join(dir, "state.json") }
	// A state that must survive: the block of a service not configured here.
	path := filepath.Join(dir, "state.json")
	seed := `{"version": 1, "services": {"keep": {"blocked": {"digest": "sha256:` + strings.Repeat("ab", 32) + `", "since": "2026-01-01T00:00:00Z", "reason": "seed"}}}}`
	if err := os.WriteFile(path, []byte(seed), 0o600); err != nil {
		t.Fatal(err)
	}
	s.grace = 10
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	// The bad version stays "starting" for the whole grace period; the
	// disk breaks once its deploy is recorded and being verified. (A
	// deploy that cannot be recorded is not started at all.)
	bad := s.push(image{mode: "healthy", startPeriod: "1h", healthyAfter: "1h"})
	s.waitFor(90*time.Second, "the deploy of the bad digest to be verified", func() (bool, string) {
		return countLines(s.proc.logs(), "deploy phase", "phase=verifying") == 1, s.health()
	})
	repair := breakFS(t, dir)
	s.waitFor(90*time.Second, "the bad digest to be rolled back", func() (bool, string) {
		return countLines(s.proc.logs(), "deploy finished", "outcome=rolled_back") == 1, s.health()
	})
	if b := s.blocked(); b != bad {
		t.Errorf("GET /blocked names %q, want %s: the block must hold in memory", b, bad)
	}
	s.waitFor(60*time.Second, "v1 to run again", func() (bool, string) { return s.runs(v1) })
	s.waitPolls(3)
	logs := s.proc.logs()
	if n := countLines(logs, "new digest; deploying"); n != 1 {
		t.Errorf("%d deploys started, want 1: the blocked digest must not be deployed again while the disk refuses it", n)
	}
	if n := countLines(logs, "level=ERROR", "persist blocked digest", why); n != 1 {
		t.Errorf("%d errors that the block could not be written (%s), want 1:\n%s", n, why, logs)
	}
	if n := countLines(logs, "level=ERROR", `msg="write state file`, why); n > 1 {
		t.Errorf("%d errors that the state file cannot be written, want at most 1 (one per change of state, not per poll)", n)
	}
	st := readState(t, path)
	if st.Services["keep"] == nil || st.Services["keep"].Blocked == nil {
		t.Errorf("state file lost what it held: %+v", st)
	}
	if code, body := s.request("GET", "/health"); code != 200 {
		t.Errorf("GET /health = %d %s", code, body)
	}

	repair()
	s.waitFor(30*time.Second, "the block to be written once the disk allows", func() (bool, string) {
		st := readState(t, path)
		got := st.Services[s.name]
		return got != nil && got.Blocked != nil && got.Blocked.Digest == bad && got.Deploy == nil, fmt.Sprintf("%+v", got)
	})
	if st := readState(t, path); st.Services["keep"] == nil {
		t.Errorf("state file lost the seeded service: %+v", st)
	}
	s.waitPolls(2)
	if n := countLines(s.proc.logs(), "level=INFO", "state file written again"); n != 1 {
		t.Errorf("%d lines that the state file is written again, want 1", n)
	}
	if t.Failed() {
		t.Logf("dockward output before the restart:\n%s", s.proc.logs())
	}
	s.stop()
	// A restart reads the block from the file.
	s.start()
	if b := s.blocked(); b != bad {
		t.Errorf("after a restart GET /blocked names %q, want %s", b, bad)
	}
}

type stateFile struct {
	Version  int
	Services map[string]*struct {
		Blocked *struct{ Digest string }
		Deploy  *struct{ Digest string }
	}
}

// readState parses the state file; it must always parse.
func readState(t *testing.T, path string) stateFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read state file: %v", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 {
		t.Fatalf("state file is torn or invalid (%v): %q", err, b)
	}
	return st
}

// mountTmpfs mounts a small tmpfs (size bytes, 64 inodes) for the test and
// returns its directory.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dwe2e-state-")
	if err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "tmpfs", "-o", "size="+size+",nr_inodes=64,mode=0700", "tmpfs", dir)
	t.Cleanup(func() {
		// Whatever is stacked on it, then the tmpfs.
		for exec.Command("umount", dir).Run() == nil {
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove %s (still mounted?): %v", dir, err)
		}
	})
	return dir
}

// fillInodes creates empty files in dir until no inode is left.
func fillInodes(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	for i := 0; ; i++ {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("inode-%d", i)))
		if errors.Is(err, syscall.ENOSPC) {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		files = append(files, f.Name())
	}
}

// fill writes path until the file system is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", path, err)
			}
			break
		}
	}
	// Smaller writes take the last pages.
	for {
		if _, err := f.Write(buf[:512]); err != nil {
			break
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
