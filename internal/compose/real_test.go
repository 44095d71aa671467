package compose

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// sleeper is a program that waits for SIGTERM, the image's entrypoint.
const sleeper = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, os.Interrupt)
	<-c
}
`

// TestRealComposeV1 runs Up with the real docker-compose v1 against the
// real engine, with an image built locally from scratch (nothing is pulled).
// It fails, rather than skips, when docker or docker-compose is missing.
func TestRealComposeV1(t *testing.T) {
	ctx := t.Context()
	docker := mustRun(t, ctx, "", "docker", "version", "--format", "{{.Server.Version}}")
	t.Logf("docker engine %s", strings.TrimSpace(docker))

	suffix := randomHex(t)
	dir := t.TempDir()
	image := "dockward-compose-test:" + suffix
	buildImage(t, ctx, dir, image)

	compose := `version: "2.4"
services:
  app:
    image: ` + image + `
    network_mode: none
    stop_grace_period: 5s
`
	file := filepath.Join(dir, "stack", "docker-compose.yml")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte(compose), 0o644); err != nil {
		t.Fatal(err)
	}

	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := New(ctx, []string{"docker-compose"}, logger, 2*time.Minute)
	if err != nil {
		t.Fatalf("New(docker-compose) = %v; the real compose test needs docker-compose v1 in PATH", err)
	}
	if !strings.HasPrefix(r.Version(), "docker-compose 1.") {
		t.Fatalf("Version() = %q, want docker-compose 1.x", r.Version())
	}
	if detected, err := New(ctx, nil, nil, time.Minute); err != nil {
		t.Errorf("detection: %v", err)
	} else {
		t.Logf("detected %s", detected.Version())
	}

	project := "dockwardtest" + suffix
	t.Cleanup(func() {
		// t.Context is done by now.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "docker-compose", "-p", project, "-f", file, "down", "--remove-orphans", "--timeout", "5").CombinedOutput(); err != nil {
			t.Errorf("docker-compose down: %v: %s", err, out)
		}
		if out, err := exec.CommandContext(ctx, "docker", "rmi", "-f", image).CombinedOutput(); err != nil {
			t.Errorf("docker rmi %s: %v: %s", image, err, out)
		}
	})

	if err := r.Up(ctx, Project{Name: project, Files: []string{file}}, UpOptions{}); err != nil {
		t.Fatalf("Up() = %v", err)
	}
	assertRunning(t, ctx, project)

	// The rollback path: up again without pulling leaves it running.
	if err := r.Up(ctx, Project{Name: project, Files: []string{file}}, UpOptions{NoPull: true, Services: []string{"app"}}); err != nil {
		t.Fatalf("Up(NoPull) = %v", err)
	}
	assertRunning(t, ctx, project)

	// A failing run reports compose's own words.
	err = r.Up(ctx, Project{Name: project, Files: []string{file}}, UpOptions{Services: []string{"nosuchservice"}})
	if err == nil || !strings.Contains(err.Error(), "compose up (project "+project+"): exit status 1: ") || !strings.Contains(err.Error(), "nosuchservice") {
		t.Errorf("Up(nosuchservice) = %v, want compose's error with its output", err)
	}
}

func assertRunning(t *testing.T, ctx context.Context, project string) {
	t.Helper()
	out := mustRun(t, ctx, "", "docker", "ps", "--filter", "label=com.docker.compose.project="+project, "--format", "{{.Names}} {{.Status}}")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], " Up ") {
		t.Fatalf("docker ps for project %s = %q, want one running container", project, out)
	}
}

// buildImage compiles sleeper statically and builds a FROM scratch image.
func buildImage(t *testing.T, ctx context.Context, dir, image string) {
	t.Helper()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(sleeper), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module sleeper\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// go test puts its own toolchain first in PATH.
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "app"), ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH, "GOFLAGS=", "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the test program: %v: %s", err, out)
	}
	dockerfile := "FROM scratch\nCOPY app /app\nENTRYPOINT [\"/app\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	// Only the Dockerfile and app go into the build context.
	if err := os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte("*\n!app\n!Dockerfile\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, ctx, dir, "docker", "build", "-q", "-t", image, ".")
}

func mustRun(t *testing.T, ctx context.Context, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s (the real compose test needs a running Docker engine)", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
