package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sleeper starts a process that a SIGHUP terminates (sleep(1) does not
// catch it), so its exit status tells whether reload signalled it.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// exitSignal waits for cmd and returns the signal that ended it.
func exitSignal(t *testing.T, cmd *exec.Cmd) syscall.Signal {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("sleep exited with %v, want it killed by a signal", err)
		}
		return exit.Sys().(syscall.WaitStatus).Signal()
	case <-time.After(10 * time.Second):
		t.Fatal("the process is still running 10s after the reload")
		return 0
	}
}

func TestReloadSignalsTheDaemon(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, "good.json", goodConfig(t, dir))
	tests := []struct {
		name string
		args func(pid int) []string
		env  func(pid int) map[string]string
	}{
		{"MAINPID from systemd", func(int) []string { return []string{"reload", "-config", path} },
			func(pid int) map[string]string { return map[string]string{"MAINPID": strconv.Itoa(pid)} }},
		{"-pid wins over MAINPID", func(pid int) []string { return []string{"reload", "-config", path, "-pid", strconv.Itoa(pid)} },
			func(int) map[string]string { return map[string]string{"MAINPID": "999999999"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			daemon := sleeper(t)
			env := tt.env(daemon.Process.Pid)
			var stdout, stderr bytes.Buffer
			if err := run(t.Context(), tt.args(daemon.Process.Pid), func(k string) string { return env[k] }, &stdout, &stderr); err != nil {
				t.Fatalf("reload error: %v\n%s", err, stderr.String())
			}
			if sig := exitSignal(t, daemon); sig != syscall.SIGHUP {
				t.Errorf("the daemon ended by %v, want SIGHUP", sig)
			}
			want := fmt.Sprintf(`level=INFO msg="config valid; asked dockward to reload it" config=%s services=1 pid=%d`, path, daemon.Process.Pid)
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("reload logged %q, want %q", stderr.String(), want)
			}
		})
	}
}

// An invalid config is refused before any signal: the daemon keeps running
// its config, and the error is logged with the journal's error priority.
func TestReloadRefusesAnInvalidConfig(t *testing.T) {
	dir := t.TempDir()
	bad := writeConfig(t, dir, "bad.json", `{"services": [{"name": "web", "compose_file": "relative.yml", "compose_project": "web"}]}`)
	daemon := sleeper(t)
	env := map[string]string{"MAINPID": strconv.Itoa(daemon.Process.Pid), "JOURNAL_STREAM": "8:1"}
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"reload", "-config", bad}, func(k string) string { return env[k] }, &stdout, &stderr)
	if !errors.Is(err, errLogged) {
		t.Fatalf("reload of an invalid config = %v, want errLogged", err)
	}
	if got := stderr.String(); !strings.HasPrefix(got, "<3>level=ERROR msg=\"config reload refused") || !strings.Contains(got, "services[0].compose_file") {
		t.Errorf("reload logged %q, want a <3> error line naming services[0].compose_file", got)
	}
	// Had reload signalled it, the SIGHUP would end sleep before SIGKILL.
	if err := daemon.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if sig := exitSignal(t, daemon); sig != syscall.SIGKILL {
		t.Errorf("the daemon ended by %v, want the test's SIGKILL (it must not be signalled)", sig)
	}
}

func TestReloadErrors(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, "good.json", goodConfig(t, dir))
	// A process that has been reaped: signalling it fails.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		mainpid string
		want    string
	}{
		{"no MAINPID and no -pid", []string{"reload", "-config", path}, "", "no dockward process to reload"},
		{"MAINPID not a number", []string{"reload", "-config", path}, "x", `MAINPID="x": not a process ID`},
		{"init is never signalled", []string{"reload", "-config", path, "-pid", "1"}, "", "no dockward process to reload"},
		{"process gone", []string{"reload", "-config", path}, strconv.Itoa(gone.Process.Pid), fmt.Sprintf("ask dockward (pid %d) to reload: ", gone.Process.Pid)},
		{"stray argument", []string{"reload", "extra"}, "1234", `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			getenv := func(k string) string {
				if k == "MAINPID" {
					return tt.mainpid
				}
				return ""
			}
			err := run(t.Context(), tt.args, getenv, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("run(%q) with MAINPID=%q error = %v, want it to contain %q", tt.args, tt.mainpid, err, tt.want)
			}
		})
	}
}
