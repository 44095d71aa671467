package journal_test

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/dockward/dockward/internal/journal"
)

func Example() {
	// Under systemd: slog.New(journal.NewHandler(os.Stderr, os.Getenv, level)).
	// Here a stand-in environment and writer show what journald receives.
	getenv := func(key string) string {
		if key == "JOURNAL_STREAM" {
			return "8:12345"
		}
		return ""
	}
	var stderr strings.Builder
	log := slog.New(journal.NewHandler(&stderr, getenv, slog.LevelInfo))
	log.With("service", "myapp").Warn("rolled back", "digest", "sha256:ab")
	log.Error("compose up failed", "service", "web")
	fmt.Print(stderr.String())
	// Output:
	// <4>level=WARN msg="rolled back" service=myapp digest=sha256:ab
	// <3>level=ERROR msg="compose up failed" service=web
}
