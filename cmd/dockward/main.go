// Command dockward is a deploy guard for Docker hosts: it watches a registry,
// deploys new digests with docker compose, proves them healthy, and rolls
// back and blocks the ones that are not.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/dockward/dockward/internal/journal"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// A second signal during a graceful stop exits at once.
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		fmt.Fprintln(os.Stderr, "dockward: second signal, exiting now")
		os.Exit(1)
	}()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, errLogged) {
			// Under systemd, at priority err: `journalctl -p err` says why
			// dockward did not start.
			fmt.Fprintln(journal.Writer(os.Stderr, os.Getenv, slog.LevelError), "dockward:", err)
		}
		if ee, ok := errors.AsType[*exitError](err); ok {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
