package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/state"
)

// stateConfig writes a valid config whose state file is dir/state/state.json.
func stateConfig(t *testing.T, dir string) (configPath, statePath string) {
	t.Helper()
	statePath = filepath.Join(dir, "state", "state.json")
	if err := os.MkdirAll(filepath.Dir(statePath), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(goodConfig(t, dir), `"api":`, fmt.Sprintf(`"state_file": %q, "api":`, statePath), 1)
	return writeConfig(t, dir, "config.json", cfg), statePath
}

const blockedState = `{"version": 1, "services": {"web": {"blocked": {"digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111", "since": "2024-05-01T12:00:00Z", "reason": "unhealthy"}, "heal": {}}}}`

func TestStateReset(t *testing.T) {
	tests := []struct {
		name       string
		main, prev string // "-": absent
		locked     bool
		wantErr    string
		wantOut    []string
		wantMain   string // the state file afterwards; "" for an empty state
	}{
		{name: "both damaged", main: "{\"version\": 1, \"servi", prev: "",
			wantOut: []string{"reset to an empty state", "damaged files kept as", "no longer blocked"}},
		{name: "garbage, no previous generation", main: "garbage", prev: "-",
			wantOut: []string{"reset to an empty state", "no previous generation"}},
		{name: "readable state is left alone", main: blockedState, prev: "-",
			wantOut: []string{"readable; nothing to reset"}, wantMain: blockedState},
		{name: "damaged with a good previous generation", main: "", prev: blockedState,
			wantOut: []string{"previous generation", "is readable and dockward uses it; nothing to reset"}, wantMain: "-"},
		{name: "refused while dockward runs", main: "garbage", prev: "-", locked: true,
			wantErr: "held by another dockward (pid", wantMain: "garbage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			configPath, statePath := stateConfig(t, dir)
			for path, content := range map[string]string{statePath: tt.main, state.PrevPath(statePath): tt.prev} {
				if content != "-" {
					if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tt.locked {
				lock, err := state.Acquire(statePath)
				if err != nil {
					t.Fatal(err)
				}
				defer lock.Release()
			}
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{"state", "reset", "-config", configPath}, noEnv, &stdout, &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "systemctl stop dockward") {
					t.Errorf("state reset = %v, want an error containing %q and how to stop dockward", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("state reset: %v\n%s", err, stderr.String())
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("state reset printed %q, want it to contain %q", stdout.String(), want)
				}
			}
			b, err := os.ReadFile(statePath)
			switch {
			case tt.wantMain == "-":
				if !errors.Is(err, os.ErrNotExist) {
					t.Errorf("state file after reset: %q, %v; want it moved aside", b, err)
				}
			case tt.wantMain != "":
				if string(b) != tt.wantMain {
					t.Errorf("state file after reset = %q, want it unchanged %q", b, tt.wantMain)
				}
			default:
				s, oerr := state.Open(statePath)
				if oerr != nil {
					t.Fatal(oerr)
				}
				if reason, paused := s.Paused(); paused || len(s.All()) != 0 {
					t.Errorf("after reset the state is paused %v (%s) with %v, want an empty state", paused, reason, s.All())
				}
			}
		})
	}
}

func TestStateUsage(t *testing.T) {
	for _, args := range [][]string{{"state"}, {"state", "wipe"}, {"state", "reset", "extra"}} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), args, noEnv, &stdout, &stderr)
		if err == nil || !strings.Contains(stderr.String(), "usage: dockward state reset") {
			t.Errorf("run(%q) = %v with stderr %q, want an error and the usage", args, err, stderr.String())
		}
	}
}

// TestSecondDaemonRefused: two dockwards never share a state file.
func TestSecondDaemonRefused(t *testing.T) {
	dir := t.TempDir()
	configPath, statePath := stateConfig(t, dir)
	lock, err := state.Acquire(statePath)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	var stdout, stderr bytes.Buffer
	err = run(t.Context(), []string{"-config", configPath}, noEnv, &stdout, &stderr)
	if !errors.Is(err, state.ErrLocked) {
		t.Errorf("run with the state file locked = %v, want ErrLocked", err)
	}
}

// TestAPIServerTimeouts: a client that is slow to send its request, or that
// keeps an idle connection, is disconnected; a normal request is answered.
func TestAPIServerTimeouts(t *testing.T) {
	for name, d := range map[string]time.Duration{"readHeader": apiTimeouts.readHeader, "read": apiTimeouts.read, "write": apiTimeouts.write, "idle": apiTimeouts.idle} {
		if d <= 0 {
			t.Errorf("apiTimeouts.%s = %v, want a bound", name, d)
		}
	}
	short := serverTimeouts{readHeader: 200 * time.Millisecond, read: 400 * time.Millisecond, write: 400 * time.Millisecond, idle: 300 * time.Millisecond}
	srv := newAPIServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok\n")
	}), short)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	tests := []struct {
		name, send string
		answered   bool // a full response comes before the close
	}{
		{"header never finished", "GET /health HTTP/1.1\r\nHost: x\r\n", false},
		{"body never finished", "POST /trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789", false},
		{"idle keep-alive", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			if _, err := io.WriteString(conn, tt.send); err != nil {
				t.Fatal(err)
			}
			// The client keeps the connection open and sends nothing more.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(conn)
			if tt.answered {
				res, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatalf("read response: %v", err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					t.Fatalf("status %d, want 200", res.StatusCode)
				}
			}
			rest, err := io.ReadAll(r)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server still held the connection after %v", time.Since(start))
			}
			if tt.answered && len(rest) > 0 {
				t.Errorf("unexpected bytes after the response: %q", rest)
			}
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("connection closed after %v, want within the timeouts", elapsed)
			}
		})
	}
}
