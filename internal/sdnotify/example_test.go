package sdnotify_test

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dockward/dockward/internal/sdnotify"
)

// The calls a daemon makes over its life under a Type=notify unit with
// WatchdogSec= and an ExecReload= that sends SIGHUP to $MAINPID.
func Example() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	sd := sdnotify.New(os.Getenv)

	// SIGHUP must be caught before READY=1: its default action kills the
	// process, and systemd counts that as a clean exit, not a failure.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	// ... load config, net.Listen the API ...
	_ = sd.Ready(ctx)
	_ = sd.Status(ctx, "watching 3 services")

	var watchdog <-chan time.Time
	if interval, ok := sdnotify.WatchdogInterval(os.Getenv); ok {
		t := time.NewTicker(interval)
		defer t.Stop()
		watchdog = t.C
	}
	for {
		select {
		case <-watchdog:
			_ = sd.Watchdog(ctx)
		case <-hup:
			_ = sd.Reloading(ctx)
			// ... reload config, keep the old one on error ...
			_ = sd.Ready(ctx)
		case <-ctx.Done():
			_ = sd.Stopping(context.WithoutCancel(ctx))
			// ... wait for deploys in flight ...
			return
		}
	}
}
