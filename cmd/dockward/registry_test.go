package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testPassword = "pa55-w0rd-never-logged"
	testToken    = "t0ken-never-logged"
	testDigest   = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
)

// tokenRegistry is a registry that wants a bearer token from its token
// server, which wants user "ci" with testPassword. It counts requests.
type tokenRegistry struct {
	url      string
	mu       sync.Mutex
	requests []string
}

func startTokenRegistry(t *testing.T) *tokenRegistry {
	t.Helper()
	r := &tokenRegistry{}
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.note("token")
		if u, p, ok := req.BasicAuth(); !ok || u != "ci" || p != testPassword {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"token": testToken, "expires_in": 300})
	}))
	t.Cleanup(tokens.Close)
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.note(req.Method + " " + req.URL.Path)
		if req.Header.Get("Authorization") != "Bearer "+testToken {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, tokens.URL))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Docker-Content-Digest", testDigest)
	}))
	t.Cleanup(reg.Close)
	r.url = reg.URL
	return r
}

func (r *tokenRegistry) note(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, s)
}

func (r *tokenRegistry) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.requests
	r.requests = nil
	return out
}

// registryConfig writes a config for two services of reg, with the
// password in a password_file, and returns its path.
func registryConfig(t *testing.T, dir, regURL, password string, extra map[string]any) string {
	t.Helper()
	pwFile := filepath.Join(dir, "registry-password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	compose := filepath.Join(dir, "compose.yml")
	if err := os.WriteFile(compose, []byte("services: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := map[string]any{"url": regURL, "poll_interval": 300, "timeout": 5, "username": "ci", "password_file": pwFile}
	cfg := map[string]any{
		"registry": reg,
		"api":      map[string]any{"port": freePort(t)},
		"docker":   map[string]any{"socket": filepath.Join(dir, "docker.sock")},
		"services": []map[string]any{
			{"name": "web", "image": "team/web:latest", "compose_file": compose, "compose_project": "web", "auto_update": true},
			{"name": "api", "image": "team/api:v2", "compose_file": compose, "compose_project": "api", "auto_update": true},
		},
	}
	for k, v := range extra {
		cfg[k] = v
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return writeConfig(t, dir, "config.json", string(b))
}

func TestCheckOnline(t *testing.T) {
	tests := []struct {
		name     string
		password string
		wantErr  bool
		want     []string
		requests []string
	}{
		{
			name: "good credentials", password: testPassword,
			want: []string{`credentials: user "ci" (registry.password_file)`,
				"service web: " + "HOST/team/web:latest: OK " + testDigest, "service api: HOST/team/api:v2: OK " + testDigest},
			// The first HEAD learns the challenge; then one HEAD per service
			// and scope, each with its token.
			requests: []string{"HEAD /v2/team/web/manifests/latest", "token", "HEAD /v2/team/web/manifests/latest", "token", "HEAD /v2/team/api/manifests/v2"},
		},
		{
			name: "wrong password", password: "wr0ng-never-logged", wantErr: true,
			want: []string{"service web: HOST/team/web:latest: FAILED (unauthorized)", "get token from http://127.0.0.1:", `as user "ci"`, "401 Unauthorized",
				"service api: HOST/team/api:v2: FAILED (unauthorized)"},
			requests: []string{"HEAD /v2/team/web/manifests/latest", "token", "token"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := startTokenRegistry(t)
			path := registryConfig(t, t.TempDir(), reg.url, tt.password, nil)
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{"check", "-online", "-config", path}, noEnv, &stdout, &stderr)
			if (err != nil) != tt.wantErr {
				t.Fatalf("check -online = %v, want error %v\n%s", err, tt.wantErr, stdout.String())
			}
			out := stdout.String() + stderr.String()
			if err != nil {
				out += err.Error()
			}
			host := strings.TrimPrefix(reg.url, "http://")
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "HOST", host); !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
			for _, secret := range []string{testPassword, tt.password, testToken} {
				if strings.Contains(out, secret) {
					t.Errorf("output shows a secret:\n%s", out)
				}
			}
			if got := reg.take(); strings.Join(got, "|") != strings.Join(tt.requests, "|") {
				t.Errorf("requests %q, want %q", got, tt.requests)
			}
		})
	}
}

// The daemon's log names the registry, the scheme and the user when the
// credentials are refused, and never shows the password or a token.
func TestDaemonLogsNoSecrets(t *testing.T) {
	dir := t.TempDir()
	reg := startTokenRegistry(t)
	fakeCompose := filepath.Join(dir, "docker-compose")
	script := "#!/bin/sh\nif [ \"$1\" = version ]; then echo 'docker-compose version 1.29.2, build 5becea4c'; fi\nexit 0\n"
	if err := os.WriteFile(fakeCompose, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	path := registryConfig(t, dir, reg.url, "wr0ng-never-logged", map[string]any{"log_level": "debug", "state_file": filepath.Join(dir, "state.json")})
	var cfg map[string]any
	b, _ := os.ReadFile(path)
	json.Unmarshal(b, &cfg)
	cfg["docker"].(map[string]any)["compose_command"] = []string{fakeCompose}
	b, _ = json.Marshal(cfg)
	os.WriteFile(path, b, 0o600)
	port := cfg["api"].(map[string]any)["port"].(string)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	rt := t.TempDir()
	getenv := func(k string) string {
		if k == "RUNTIME_DIRECTORY" {
			return rt
		}
		return ""
	}
	go func() { done <- run(ctx, []string{"-config", path}, getenv, &stdout, &stderr) }()
	client := &http.Client{Timeout: 10 * time.Second}
	base := "http://127.0.0.1:" + port
	waitHealthy(t, client, base+"/health", done)

	// compose pulls with a config.json of Dockward's own, 0600 in a 0700
	// folder of $RUNTIME_DIRECTORY.
	pull := filepath.Join(rt, "docker", "config.json")
	st, err := os.Stat(pull)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("compose's docker config %s: %v, %v; want mode 0600", pull, st, err)
	}
	if st, err := os.Stat(filepath.Dir(pull)); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("compose's docker config folder: %v, %v; want mode 0700", st, err)
	}

	res, body := get(t, client, http.MethodPost, base+"/trigger/web?wait=true")
	// The first poll may still be checking web: 409 until it is done.
	for deadline := time.Now().Add(30 * time.Second); res.StatusCode == http.StatusConflict && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		res, body = get(t, client, http.MethodPost, base+"/trigger/web?wait=true")
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("trigger = %d %s", res.StatusCode, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dockward did not stop")
	}
	if _, err := os.Stat(filepath.Dir(pull)); !os.IsNotExist(err) {
		t.Errorf("compose's docker config folder still exists after the stop: %v", err)
	}
	logs := stderr.String()
	for _, secret := range []string{testPassword, testToken, "wr0ng-never-logged"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log shows a secret %q:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs, `credentials="user \"ci\" (registry.password_file)"`) {
		t.Errorf("the log does not say where the credentials come from:\n%s", logs)
	}
	host := strings.TrimPrefix(reg.url, "http://")
	if n := countLines(logs, "level=WARN", `msg="registry poll failed"`, "kind=unauthorized", host+"/team/web:latest", "get token from http://127.0.0.1:", `as user \"ci\"`, "401 Unauthorized"); n != 1 {
		t.Errorf("%d warnings naming the registry, the token server, the user and the 401, want 1:\n%s", n, logs)
	}
	if !strings.Contains(string(body), "401 Unauthorized") || strings.Contains(string(body), "wr0ng-never-logged") {
		t.Errorf("trigger = %s, want the 401 and no password", body)
	}
}

func countLines(logs string, parts ...string) int {
	n := 0
lines:
	for _, line := range strings.Split(logs, "\n") {
		for _, p := range parts {
			if !strings.Contains(line, p) {
				continue lines
			}
		}
		n++
	}
	return n
}

// `dockward check` reads the files the registry section names, reports
// what is wrong with them, and never prints a secret.
func TestCheckRegistryFiles(t *testing.T) {
	dir := t.TempDir()
	compose := filepath.Join(dir, "compose.yml")
	os.WriteFile(compose, []byte("services: {}\n"), 0o600)
	notPEM := writeConfig(t, dir, "not.pem", "not a certificate, and not "+testPassword)
	pw := writeConfig(t, dir, "pw", testPassword+"\n")
	dockerCfg := filepath.Join(dir, "docker", "config.json")
	os.MkdirAll(filepath.Dir(dockerCfg), 0o700)
	os.WriteFile(dockerCfg, []byte(`{"auths": {"other.example.com": {"auth": "dTpw"}}}`), 0o600)
	tests := []struct {
		name     string
		registry string
		wantErr  string
		wantOut  string
	}{
		{name: "password_file OK", registry: `"username": "ci", "password_file": "` + pw + `"`, wantOut: "config OK"},
		{name: "missing password_file", registry: `"username": "ci", "password_file": "` + dir + `/nope"`, wantErr: "registry.password_file: open " + dir + "/nope: no such file"},
		{name: "credentials directory unset: a warning", registry: `"username": "ci", "password_file": "$CREDENTIALS_DIRECTORY/registry"`,
			wantOut: "warning: registry.password_file: $CREDENTIALS_DIRECTORY is not set here"},
		{name: "CA file without a certificate", registry: `"ca_file": "` + notPEM + `"`, wantErr: "registry.ca_file: " + notPEM + " holds no PEM certificate"},
		{name: "docker config without the host", registry: `"docker_config": "` + dockerCfg + `"`, wantErr: "registry.docker_config: docker config " + dockerCfg + ": no auths entry, credHelpers entry or credsStore for reg.example.com"},
		{name: "insecure: a warning", registry: `"insecure_skip_verify": true`, wantOut: "warning: registry.insecure_skip_verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, t.TempDir(), "config.json", fmt.Sprintf(`{
  "registry": {"url": "https://reg.example.com", %s},
  "services": [{"name": "web", "image": "web:latest", "compose_file": %q, "compose_project": "web", "auto_update": true}]
}`, tt.registry, compose))
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), []string{"check", "-config", path}, noEnv, &stdout, &stderr)
			out := stdout.String() + stderr.String()
			if err != nil {
				out += err.Error()
			}
			switch {
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("check = %v, want an error containing %q", err, tt.wantErr)
			case tt.wantErr == "" && err != nil:
				t.Errorf("check = %v, want success", err)
			case !strings.Contains(out, tt.wantOut):
				t.Errorf("check output %q does not contain %q", out, tt.wantOut)
			}
			if strings.Contains(out, testPassword) {
				t.Errorf("check output shows the password: %s", out)
			}
		})
	}
}
