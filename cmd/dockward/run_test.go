package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry/registrytest"
)

// noEnv is a getenv for tests that must not see the real environment.
func noEnv(string) string { return "" }

// writeConfig writes a config file into dir and returns its path.
func writeConfig(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// goodConfig returns a valid config whose compose file exists in dir.
func goodConfig(t *testing.T, dir string) string {
	t.Helper()
	compose := filepath.Join(dir, "compose.yml")
	if err := os.WriteFile(compose, []byte("services: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`{
  "registry": {"url": "http://localhost:5000", "poll_interval": 300},
  "api": {"port": "9090"},
  "services": [
    {"name": "web", "image": "web:latest", "compose_file": %q, "compose_project": "web", "auto_update": true, "auto_heal": true}
  ]
}`, compose)
}

func TestRunVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"-version"}, noEnv, &stdout, &stderr); err != nil {
		t.Fatalf("run(-version) error: %v", err)
	}
	if got, want := stdout.String(), "dockward "+version+"\n"; got != want {
		t.Errorf("run(-version) printed %q, want %q", got, want)
	}
}

func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantErr    string
		wantStderr string
	}{
		{"unknown flag", []string{"-bogus"}, "usage error", "flag provided but not defined: -bogus"},
		{"unknown flag of check", []string{"check", "-bogus"}, "usage error", "flag provided but not defined: -bogus"},
		{"stray argument", []string{"-config", "/x.json", "extra"}, `unexpected argument "extra"`, "usage: dockward"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tt.args, noEnv, &stdout, &stderr)
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("run(%q) error = %v, want %q", tt.args, err, tt.wantErr)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("run(%q) stderr = %q, want it to contain %q", tt.args, stderr.String(), tt.wantStderr)
			}
		})
	}
}

func TestRunHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"check", "-h"}} {
		var stdout, stderr bytes.Buffer
		if err := run(t.Context(), args, noEnv, &stdout, &stderr); err != nil {
			t.Errorf("run(%q) error = %v, want nil", args, err)
		}
		if !strings.Contains(stderr.String(), "-config") {
			t.Errorf("run(%q) stderr = %q, want the flags listed", args, stderr.String())
		}
	}
}

func TestCheckGood(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, "good.json", goodConfig(t, dir))
	for _, args := range [][]string{{"check", "-config", path}, {"check", path}} {
		var stdout, stderr bytes.Buffer
		if err := run(t.Context(), args, noEnv, &stdout, &stderr); err != nil {
			t.Fatalf("run(%q) error: %v", args, err)
		}
		if got, want := stdout.String(), path+": config OK (1 services)\n"; got != want {
			t.Errorf("run(%q) printed %q, want %q", args, got, want)
		}
	}
}

func TestCheckWarnsAboutMissingComposeFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope", "compose.yml")
	path := writeConfig(t, dir, "cfg.json", fmt.Sprintf(`{"services": [{"name": "web", "compose_file": %q, "compose_project": "web"}]}`, missing))
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"check", "-config", path}, noEnv, &stdout, &stderr); err != nil {
		t.Fatalf("check error: %v (a missing compose file is only a warning)", err)
	}
	want := "warning: service web: compose file " + missing + ": no such file or directory\n" + path + ": config OK (1 services)\n"
	if got := stdout.String(); got != want {
		t.Errorf("check printed %q, want %q", got, want)
	}
}

func TestCheckBad(t *testing.T) {
	dir := t.TempDir()
	compose := filepath.Join(dir, "compose.yml")
	tests := []struct {
		name    string
		content string
		want    []string // each must appear in the error
	}{
		{"unknown field in a service", fmt.Sprintf(`{
  "registry": {"url": "ftp://localhost:5000", "poll_interval": 0},
  "api": {"port": 0},
  "log_level": "loud",
  "services": [
    {"name": "my app", "compose_file": "relative.yml", "compose_project": "web", "auto_update": true, "health_grace": -1},
    {"name": "api", "compose_file": %q, "compose_project": "web", "helth": 1}
  ]
}`, compose), []string{
			// An unknown field is a decode error, reported before validation.
			`unknown field "helth"`,
		}},
		{"several validation problems", fmt.Sprintf(`{
  "registry": {"url": "ftp://localhost:5000", "poll_interval": 0},
  "api": {"port": 0},
  "log_level": "loud",
  "services": [
    {"name": "my app", "compose_file": "relative.yml", "compose_project": "web", "auto_update": true, "health_grace": -1},
    {"name": "api", "compose_file": %q, "compose_project": "web"}
  ]
}`, compose), []string{
			"invalid config:",
			`registry.url: must start with http:// or https://, got "ftp://localhost:5000"`,
			"registry.poll_interval: must be a positive number of seconds, got 0",
			`api.port: must be a port number from 1 to 65535, got "0"`,
			`log_level: must be one of debug, info, warn, error; got "loud"`,
			`services[0].name: "my app" must be`,
			"services[0].image: is required when auto_update is true",
			`services[0].compose_file: must be an absolute path, got "relative.yml"`,
			"services[0].health_grace: must be a positive number of seconds, got -1",
			`services[1].compose_project: "web" is already used by services[0]`,
		}},
		{"broken webhook template", fmt.Sprintf(`{
  "notifications": {"webhooks": [{"name": "ops", "url": "http://hooks.local/x", "body": "{\"text\": {{.Service"}]},
  "services": [{"name": "web", "compose_file": %q, "compose_project": "web"}]
}`, compose), []string{"notifications.webhooks[0].body: ", "unclosed action"}},
		{"webhook template that is not JSON", fmt.Sprintf(`{
  "notifications": {"webhooks": [{"name": "ops", "url": "http://hooks.local/x", "body": "{\"text\": \"{{.Reason}}\"}"}]},
  "services": [{"name": "web", "compose_file": %q, "compose_project": "web"}]
}`, compose), []string{"notifications.webhooks[0].body: does not render valid JSON"}},
		{"syntax error", `{"services": [}`, []string{"line 1, column 15: invalid character '}'"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, dir, "bad.json", tt.content)
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{"check", "-config", path}, noEnv, &stdout, &stderr)
			if err == nil {
				t.Fatalf("check of %s = nil, want an error; stdout %q", tt.content, stdout.String())
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "config "+path+": ") {
				t.Errorf("check error = %q, want it to start with %q", msg, "config "+path+": ")
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("check error =\n%s\nwant it to contain %q", msg, w)
				}
			}
			if strings.Contains(stdout.String(), "config OK") {
				t.Errorf("check printed %q for a bad config", stdout.String())
			}
		})
	}
}

func TestCheckMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.json")
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"check", "-config", path}, noEnv, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("check of a missing file error = %v, want a not-exist error naming %s", err, path)
	}
}

func TestRunBadConfigDoesNotStart(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, "bad.json", `{"services": []}`)
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), []string{"-config", path}, noEnv, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "services: must list at least one service") {
		t.Errorf("run with a bad config error = %v, want the problem", err)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// config rejects port 0, so the daemon cannot pick one itself.
func freePort(t *testing.T) string {
	t.Helper()
	_, port, err := net.SplitHostPort(registrytest.FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// syncBuffer is a bytes.Buffer that the daemon's logger and the test can
// use at the same time.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDaemonSmoke starts the whole daemon with nothing real behind it: no
// Docker engine on the socket, a registry that knows no image, a fake
// docker-compose. It must come up, serve its API, and stop cleanly.
func TestDaemonSmoke(t *testing.T) {
	dir := t.TempDir()

	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
	}))
	defer registry.Close()

	fakeCompose := filepath.Join(dir, "docker-compose")
	script := "#!/bin/sh\nif [ \"$1\" = version ]; then echo 'docker-compose version 1.29.2, build 5becea4c'; fi\nexit 0\n"
	if err := os.WriteFile(fakeCompose, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	composeFile := filepath.Join(dir, "compose.yml")
	if err := os.WriteFile(composeFile, []byte("services: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(dir, "state")
	port := freePort(t)
	cfg := map[string]any{
		"registry": map[string]any{"url": registry.URL, "poll_interval": 300, "timeout": 2},
		"api":      map[string]any{"port": port},
		"docker": map[string]any{
			"socket":          filepath.Join(dir, "docker.sock"),
			"compose_command": []string{fakeCompose},
		},
		"log_level": "debug",
		"services": []map[string]any{{
			"name": "web", "image": "web:latest", "compose_file": composeFile,
			"compose_project": "web", "auto_update": true, "auto_heal": true,
		}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	configPath := writeConfig(t, dir, "config.json", string(b))
	getenv := func(k string) string {
		if k == "STATE_DIRECTORY" {
			return stateDir
		}
		return ""
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-config", configPath}, getenv, &stdout, &stderr) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", stderr.String())
		}
	})

	base := "http://127.0.0.1:" + port
	client := &http.Client{Timeout: 2 * time.Second}
	waitHealthy(t, client, base+"/health", done)

	t.Run("health", func(t *testing.T) {
		res, body := get(t, client, http.MethodGet, base+"/health")
		var h map[string]any
		if err := json.Unmarshal(body, &h); err != nil {
			t.Fatalf("GET /health body %q is not JSON: %v", body, err)
		}
		if res.StatusCode != http.StatusOK || h["status"] != "ok" || h["version"] != version {
			t.Errorf("GET /health = %d %s, want 200 with status ok and version %q", res.StatusCode, body, version)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		res, body := get(t, client, http.MethodGet, base+"/metrics")
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET /metrics = %d, want 200", res.StatusCode)
		}
		if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("GET /metrics Content-Type = %q, want text/plain", ct)
		}
		for _, name := range []string{"watcher_poll_count_total", "dockward_build_info"} {
			if !hasMetric(body, name) {
				t.Errorf("GET /metrics has no sample of %s:\n%s", name, body)
			}
		}
	})
	t.Run("unknown route", func(t *testing.T) {
		res, body := get(t, client, http.MethodGet, base+"/nope")
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET /nope = %d, want 404", res.StatusCode)
		}
		wantJSONError(t, "GET /nope", res, body)
	})
	t.Run("wrong method", func(t *testing.T) {
		res, body := get(t, client, http.MethodGet, base+"/trigger")
		if res.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("GET /trigger = %d, want 405", res.StatusCode)
		}
		if got := res.Header.Get("Allow"); got != "POST" {
			t.Errorf("GET /trigger Allow = %q, want %q", got, "POST")
		}
		wantJSONError(t, "GET /trigger", res, body)
	})

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return within 10s of cancel")
	}
	if _, err := net.DialTimeout("tcp", "127.0.0.1:"+port, time.Second); err == nil {
		t.Errorf("API port %s still accepts connections after run returned", port)
	}
	log := stderr.String()
	for _, want := range []string{"dockward started", "state=" + filepath.Join(stateDir, "state.json"), "docker engine not reachable yet", "stopped"} {
		if !strings.Contains(log, want) {
			t.Errorf("daemon log has no %q", want)
		}
	}
}

// waitHealthy polls url until it answers 200, failing if run returns first.
func waitHealthy(t *testing.T, client *http.Client, url string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		res, err := client.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s not 200 within 15s; last error %v", url, err)
		}
		select {
		case err := <-done:
			t.Fatalf("run returned %v before %s answered", err, url)
		case <-tick.C:
		}
	}
}

func get(t *testing.T, client *http.Client, method, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return res, body
}

func wantJSONError(t *testing.T, what string, res *http.Response, body []byte) {
	t.Helper()
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s Content-Type = %q, want application/json", what, ct)
	}
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		t.Errorf("%s body = %q, want JSON with a non-empty error (%v)", what, body, err)
	}
}

// hasMetric reports whether the Prometheus text has a sample line for name.
func hasMetric(text []byte, name string) bool {
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			return true
		}
	}
	return false
}

// TestStdlibOnly fails the build when a dependency from outside the
// standard library sneaks in, in code or in tests.
func TestStdlibOnly(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	root := moduleRoot(t, goBin)

	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "require") {
			t.Errorf("go.mod:%d: %q: Dockward must not require any module", i+1, line)
		}
	}

	for _, args := range [][]string{
		{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./..."},
		{"list", "-deps", "-test", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./..."},
	} {
		cmd := exec.CommandContext(t.Context(), goBin, args...)
		cmd.Dir = root
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		n := 0
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			// With -test, a package compiled for its tests is listed as
			// "path [path.test]".
			pkg, _, _ := strings.Cut(line, " ")
			n++
			if !strings.HasPrefix(pkg, "github.com/dockward/dockward/") && pkg != "github.com/dockward/dockward" {
				t.Errorf("go %s: %s is outside the standard library and this module", strings.Join(args, " "), pkg)
			}
		}
		if n == 0 {
			t.Errorf("go %s listed no module packages; is the pattern right?", strings.Join(args, " "))
		}
	}
}

func moduleRoot(t *testing.T, goBin string) string {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatalf("go env GOMOD = %q, want the path of go.mod", gomod)
	}
	return filepath.Dir(gomod)
}
