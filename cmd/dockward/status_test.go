package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/registry/registrytest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// statusGolden is what the real API answers in the watcher's golden test:
// app healthy, other blocked, manual unhealthy, static unknown.
const statusGolden = "../../internal/watcher/testdata/status.golden.json"

// statusServer serves body at /status and returns its HOST:PORT.
func statusServer(t *testing.T, code int, body []byte) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/status" || r.Method != "GET" {
			t.Errorf("dockward status asked %s %s, want GET /status", r.Method, r.URL.Path)
		}
		w.WriteHeader(code)
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func TestStatusCommand(t *testing.T) {
	golden, err := os.ReadFile(statusGolden)
	if err != nil {
		t.Fatal(err)
	}
	// The same world with every service healthy and nothing blocked.
	healthy := removeBlocks(strings.NewReplacer(`"state": "blocked"`, `"state": "ok"`, `"state": "unhealthy"`, `"state": "ok"`,
		`"healthy": false`, `"healthy": true`).Replace(string(golden)))

	tests := []struct {
		name     string
		args     func(addr string) []string
		code     int
		body     string
		wantExit int    // 0, 1 or 2
		errHas   string // a substring of the error
		outHas   []string
	}{
		{name: "services need attention", args: func(a string) []string { return []string{"-addr", a} }, code: 200, body: string(golden),
			wantExit: 1, errHas: "2 of 4 services need attention: other (blocked), manual (unhealthy)",
			outHas: []string{"dockward v1.2.3, up 2h02m; engine 20.10.24+dfsg1 (API 1.41); docker compose v2.40.3; last poll 1m ago, every 5m",
				"other    BLOCKED", "rolled back sha256:cccccccccccc 1m ago (0.0s)", "other: sha256:cccccccccccc blocked: container other-web-1 is unhealthy"}},
		{name: "all fine", args: func(a string) []string { return []string{"-addr", "http://" + a + "/"} }, code: 200, body: healthy,
			wantExit: 0, outHas: []string{"app      OK"}},
		{name: "deploys paused", args: func(a string) []string { return []string{"-addr", a} }, code: 200,
			body:     strings.Replace(healthy, `"daemon": {`, `"daemon": {"deploys_paused": "deploys paused: the state file cannot be read",`, 1),
			wantExit: 1, errHas: "deploys paused: the state file cannot be read", outHas: []string{"DEPLOYS ARE PAUSED: deploys paused: the state file cannot be read"}},
		{name: "port from the config", args: func(a string) []string {
			_, port, _ := strings.Cut(a, ":")
			return []string{"-config", writeConfig(t, t.TempDir(), "config.json", fmt.Sprintf(`{"api": {"port": %q},
				"services": [{"name": "web", "compose_file": "/srv/web.yml", "compose_project": "web"}]}`, port))}
		}, code: 200, body: healthy, wantExit: 0, outHas: []string{"SERVICE  STATE"}},
		{name: "json", args: func(a string) []string { return []string{"-addr", a, "-json"} }, code: 200, body: string(golden),
			wantExit: 1, outHas: []string{`"engine_api": "1.41"`}},
		{name: "refused", args: func(a string) []string { return []string{"-addr", a} }, code: 421, body: `{"error": "loopback only"}`,
			wantExit: 2, errHas: "421 Misdirected Request: {\"error\": \"loopback only\"}"},
		{name: "not JSON", args: func(a string) []string { return []string{"-addr", a} }, code: 200, body: `<html>`,
			wantExit: 2, errHas: "decode the status"},
		{name: "nobody listens", args: func(string) []string { return []string{"-addr", registrytest.FreeAddr(t)} },
			wantExit: 2, errHas: "is dockward running?"},
		{name: "config missing", args: func(string) []string { return []string{"-config", "/nonexistent/config.json"} },
			wantExit: 2, errHas: "or give the API with -addr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := ""
			if tt.code != 0 {
				addr = statusServer(t, tt.code, []byte(tt.body))
			}
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), append([]string{"status"}, tt.args(addr)...), noEnv, &stdout, &stderr)
			exit := 0
			if err != nil {
				exit = 1
				if ee, ok := errors.AsType[*exitError](err); ok {
					exit = ee.code
				}
			}
			if exit != tt.wantExit || (tt.errHas != "" && !strings.Contains(fmt.Sprint(err), tt.errHas)) {
				t.Errorf("dockward status: exit %d, error %v; want exit %d, error containing %q", exit, err, tt.wantExit, tt.errHas)
			}
			for _, want := range tt.outHas {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, stdout.String())
				}
			}
		})
	}
}

// removeBlocks replaces every "blocked" object of a status with null.
func removeBlocks(s string) string {
	var out strings.Builder
	for {
		i := strings.Index(s, `"blocked": {`)
		if i < 0 {
			out.WriteString(s)
			return out.String()
		}
		out.WriteString(s[:i] + `"blocked": null`)
		s = s[i+strings.Index(s[i:], "}")+1:]
	}
}

func TestStatusTableGolden(t *testing.T) {
	body, err := os.ReadFile(statusGolden)
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	run(t.Context(), []string{"status", "-addr", statusServer(t, 200, body)}, noEnv, &stdout, &bytes.Buffer{})
	path := filepath.Join("testdata", "status.txt")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(path, stdout.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to write it): %v", err)
	}
	if stdout.String() != string(want) {
		t.Errorf("dockward status printed:\n%s\nwant (%s):\n%s", stdout.String(), path, want)
	}
}

// `dockward check` reads api.token_file as the daemon would, and never
// prints the token.
func TestCheckTokenFile(t *testing.T) {
	dir := t.TempDir()
	const token = "check-s3cret-token-0123456789"
	good := writeConfig(t, dir, "token", token+"\n")
	short := writeConfig(t, dir, "short", "s3cret\n")
	for _, tt := range []struct {
		name, file, wantErr string
	}{
		{"readable", good, ""},
		{"missing", dir + "/nope", "api.token_file: open " + dir + "/nope: no such file"},
		{"too short", short, "the first line must hold a token of at least 16 characters, has 6"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeConfig(t, dir, "config.json", fmt.Sprintf(`{"api": {"token_file": %q},
				"services": [{"name": "web", "compose_file": "/srv/web.yml", "compose_project": "web"}]}`, tt.file))
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{"check", "-config", cfg}, noEnv, &stdout, &stderr)
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("dockward check = %v, want error %q", err, tt.wantErr)
			}
			if out := stdout.String() + stderr.String() + fmt.Sprint(err); strings.Contains(out, token) || strings.Contains(out, "s3cret") {
				t.Errorf("dockward check printed the token: %s", out)
			}
		})
	}
}
