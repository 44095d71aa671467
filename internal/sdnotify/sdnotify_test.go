package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens a real unixgram socket playing the service manager's part.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("unixgram sockets are not available on windows")
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// receive reads one datagram or fails after a few seconds.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, _, err := conn.ReadFromUnix(buf)
	if err != nil {
		t.Fatalf("receive datagram: %v", err)
	}
	return string(buf[:n])
}

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestNotifySendsDatagram(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn := listen(t, sock)
	n := New(env(map[string]string{"NOTIFY_SOCKET": sock}))
	if !n.Enabled() {
		t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
	}
	ctx := context.Background()

	tests := []struct {
		name string
		send func() error
		want string
	}{
		{"ready", func() error { return n.Ready(ctx) }, "READY=1"},
		{"stopping", func() error { return n.Stopping(ctx) }, "STOPPING=1"},
		{"watchdog", func() error { return n.Watchdog(ctx) }, "WATCHDOG=1"},
		{"status", func() error { return n.Status(ctx, "polling 3 services") }, "STATUS=polling 3 services"},
		{"status newline flattened", func() error { return n.Status(ctx, "a\nb") }, "STATUS=a b"},
		{"raw multi-line", func() error { return n.Notify(ctx, "STATUS=up\nREADY=1") }, "STATUS=up\nREADY=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.send(); err != nil {
				t.Fatalf("send: %v", err)
			}
			if got := receive(t, conn); got != tt.want {
				t.Errorf("datagram = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReloadingSendsMonotonicUsec(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn := listen(t, sock)
	n := New(env(map[string]string{"NOTIFY_SOCKET": sock}))

	before, ok := monotonicUsec()
	if !ok {
		t.Skipf("no CLOCK_MONOTONIC on %s", runtime.GOOS)
	}
	if err := n.Reloading(context.Background()); err != nil {
		t.Fatalf("Reloading: %v", err)
	}
	after, _ := monotonicUsec()

	got := receive(t, conn)
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("datagram = %q, want RELOADING=1\\nMONOTONIC_USEC=<usec>", got)
	}
	usec, err := strconv.ParseUint(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC in %q: %v", got, err)
	}
	if usec < before || usec > after {
		t.Errorf("MONOTONIC_USEC = %d, want within [%d, %d]", usec, before, after)
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("abstract unix sockets are linux-only")
	}
	addr := fmt.Sprintf("@dockward-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	conn := listen(t, addr)
	n := New(env(map[string]string{"NOTIFY_SOCKET": addr}))
	if err := n.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if got := receive(t, conn); got != "READY=1" {
		t.Errorf("datagram = %q, want %q", got, "READY=1")
	}
}

func TestNotifyUnsetIsNoop(t *testing.T) {
	ctx := context.Background()
	for name, n := range map[string]*Notifier{
		"unset": New(env(nil)),
		"nil":   nil,
		"zero":  {},
	} {
		t.Run(name, func(t *testing.T) {
			if n.Enabled() {
				t.Error("Enabled() = true, want false")
			}
			for _, err := range []error{n.Ready(ctx), n.Reloading(ctx), n.Stopping(ctx), n.Status(ctx, "x"), n.Watchdog(ctx)} {
				if err != nil {
					t.Errorf("got error %v, want nil", err)
				}
			}
		})
	}
}

func TestNotifyMissingSocketFails(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "absent.sock")
	n := New(env(map[string]string{"NOTIFY_SOCKET": sock}))
	err := n.Ready(context.Background())
	if err == nil {
		t.Fatal("Ready to a missing socket = nil, want error")
	}
	if !strings.Contains(err.Error(), sock) {
		t.Errorf("error %q does not name the socket %s", err, sock)
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	other := strconv.Itoa(os.Getpid() + 1)
	tests := []struct {
		name   string
		env    map[string]string
		want   time.Duration
		wantOK bool
	}{
		{"unset", nil, 0, false},
		{"30s", map[string]string{"WATCHDOG_USEC": "30000000"}, 15 * time.Second, true},
		{"our pid", map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": self}, 15 * time.Second, true},
		{"other pid", map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}, 0, false},
		{"bad pid", map[string]string{"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, 0, false},
		{"zero", map[string]string{"WATCHDOG_USEC": "0"}, 0, false},
		{"one usec", map[string]string{"WATCHDOG_USEC": "1"}, 500 * time.Nanosecond, true},
		{"negative", map[string]string{"WATCHDOG_USEC": "-5"}, 0, false},
		{"garbage", map[string]string{"WATCHDOG_USEC": "30s"}, 0, false},
		{"empty", map[string]string{"WATCHDOG_USEC": ""}, 0, false},
		{"huge", map[string]string{"WATCHDOG_USEC": "18446744073709551615"}, 0, false},
		{"max int63", map[string]string{"WATCHDOG_USEC": "9223372036854775807"}, time.Duration(1<<63-1) / time.Microsecond * time.Microsecond / 2, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := WatchdogInterval(env(tt.env))
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("WatchdogInterval(%v) = %v, %v; want %v, %v", tt.env, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
