// Package sdnotify implements the service side of systemd's notification
// protocol (sd_notify(3)): a datagram of newline-separated KEY=VALUE
// assignments sent to the unix socket named by $NOTIFY_SOCKET.
//
// Outside systemd (NOTIFY_SOCKET unset) every call is a no-op, so callers
// never need to check whether they run under a service manager.
package sdnotify

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Well-known states, see sd_notify(3).
const (
	stateReady     = "READY=1"
	stateStopping  = "STOPPING=1"
	stateReloading = "RELOADING=1"
	stateWatchdog  = "WATCHDOG=1"
)

// Notifier sends state changes to the service manager.
// The zero value and a nil *Notifier are valid and do nothing.
type Notifier struct {
	addr string // socket path; a leading '@' names an abstract socket
}

// New returns a Notifier for the socket named by NOTIFY_SOCKET in getenv.
// Abstract sockets ("@name") are supported; Go's net package maps the
// leading '@' to the NUL byte the kernel expects.
func New(getenv func(string) string) *Notifier {
	return &Notifier{addr: getenv("NOTIFY_SOCKET")}
}

// Enabled reports whether notifications are actually sent somewhere.
func (n *Notifier) Enabled() bool {
	return n != nil && n.addr != ""
}

// Notify sends state, one or more newline-separated KEY=VALUE assignments,
// as a single datagram. It returns nil without doing anything when
// NOTIFY_SOCKET was unset. ctx bounds the send; a cancelled ctx fails it.
func (n *Notifier) Notify(ctx context.Context, state string) error {
	if !n.Enabled() {
		return nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unixgram", n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: dial %s: %w", n.addr, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetWriteDeadline(deadline); err != nil {
			return fmt.Errorf("sd_notify: set deadline: %w", err)
		}
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: send %q: %w", firstLine(state), err)
	}
	return nil
}

// Ready tells the service manager that start-up, or a reload announced
// with Reloading, has finished.
func (n *Notifier) Ready(ctx context.Context) error {
	return n.Notify(ctx, stateReady)
}

// Stopping tells the service manager that a graceful shutdown has begun.
// It is usually sent once the root context is cancelled, so pass one that
// is not: context.WithoutCancel(ctx). A cancelled ctx fails the send.
func (n *Notifier) Stopping(ctx context.Context) error {
	return n.Notify(ctx, stateStopping)
}

// Reloading tells the service manager that the configuration is being
// reloaded. Ready must be sent once the reload is done (successfully or
// not). MONOTONIC_USEC is included as Type=notify-reload (systemd >= 253)
// requires; older managers ignore it.
func (n *Notifier) Reloading(ctx context.Context) error {
	state := stateReloading
	if usec, ok := monotonicUsec(); ok {
		state += "\nMONOTONIC_USEC=" + strconv.FormatUint(usec, 10)
	}
	return n.Notify(ctx, state)
}

// Status sets the free-form status line shown by "systemctl status".
// Newlines in s are replaced by spaces: they would end the assignment.
func (n *Notifier) Status(ctx context.Context, s string) error {
	return n.Notify(ctx, "STATUS="+strings.ReplaceAll(s, "\n", " "))
}

// Watchdog pings the service manager's watchdog (WatchdogSec=).
func (n *Notifier) Watchdog(ctx context.Context) error {
	return n.Notify(ctx, stateWatchdog)
}

// WatchdogInterval reports how often the watchdog should be pinged: half of
// WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends. ok is false when the
// watchdog is disabled: WATCHDOG_USEC unset, not a positive integer, or
// WATCHDOG_PID set to a process other than this one.
func WatchdogInterval(getenv func(string) string) (interval time.Duration, ok bool) {
	if pid := getenv("WATCHDOG_PID"); pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil || p != os.Getpid() {
			return 0, false
		}
	}
	usec, err := strconv.ParseUint(getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || usec == 0 {
		return 0, false
	}
	// Cap to avoid overflowing time.Duration (~292 years).
	const maxUsec = uint64(1<<63-1) / uint64(time.Microsecond)
	usec = min(usec, maxUsec)
	interval = time.Duration(usec) * time.Microsecond / 2
	if interval <= 0 {
		return 0, false
	}
	return interval, true
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
