package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/config"
)

// writeContext writes the metadata of a docker CLI context named name with
// the given endpoint, as `docker context create` does, under configDir.
func writeContext(t *testing.T, configDir, name, host string) {
	t.Helper()
	sum := sha256.Sum256([]byte(name))
	dir := filepath.Join(configDir, "contexts", "meta", hex.EncodeToString(sum[:]))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta := `{"Name":"` + name + `","Metadata":{},"Endpoints":{"docker":{"Host":"` + host + `","SkipTLSVerify":false}}}`
	if err := os.WriteFile(filepath.Join(dir, "meta.json"), []byte(meta), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEngineWarnings(t *testing.T) {
	home := t.TempDir()
	writeContext(t, filepath.Join(home, ".docker"), "rootless", "unix:///run/user/1000/docker.sock")
	writeContext(t, filepath.Join(home, ".docker"), "remote", "ssh://deploy@10.0.0.9")
	other := t.TempDir()
	writeContext(t, other, "rootless", "unix:///run/user/1001/docker.sock")
	tests := []struct {
		name   string
		socket string
		env    map[string]string
		want   []string // a substring of each warning, in order
	}{
		{"nothing set", "/var/run/docker.sock", nil, nil},
		{"DOCKER_HOST the same socket", "/run/user/1000/docker.sock",
			map[string]string{"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, nil},
		{"DOCKER_HOST the same socket, not clean", "/run/user/1000/docker.sock",
			map[string]string{"DOCKER_HOST": "unix:///run/user/1000//docker.sock"}, nil},
		{"DOCKER_HOST another socket", "/var/run/docker.sock",
			map[string]string{"DOCKER_HOST": "unix:///run/user/1000/docker.sock"},
			[]string{"DOCKER_HOST=unix:///run/user/1000/docker.sock differs from docker.socket /var/run/docker.sock"}},
		{"DOCKER_HOST over TCP", "/var/run/docker.sock",
			map[string]string{"DOCKER_HOST": "tcp://127.0.0.1:2375"},
			[]string{"DOCKER_HOST=tcp://127.0.0.1:2375 differs from docker.socket"}},
		{"DOCKER_CONTEXT on the same socket", "/run/user/1000/docker.sock",
			map[string]string{"DOCKER_CONTEXT": "rootless", "HOME": home}, nil},
		{"DOCKER_CONTEXT on another engine", "/var/run/docker.sock",
			map[string]string{"DOCKER_CONTEXT": "remote", "HOME": home},
			[]string{"DOCKER_CONTEXT=remote (engine ssh://deploy@10.0.0.9) differs from docker.socket /var/run/docker.sock"}},
		{"DOCKER_CONTEXT found through DOCKER_CONFIG", "/run/user/1000/docker.sock",
			map[string]string{"DOCKER_CONTEXT": "rootless", "HOME": home, "DOCKER_CONFIG": other},
			[]string{"DOCKER_CONTEXT=rootless (engine unix:///run/user/1001/docker.sock) differs"}},
		{"DOCKER_CONTEXT unknown", "/var/run/docker.sock",
			map[string]string{"DOCKER_CONTEXT": "nope", "HOME": home},
			[]string{"/meta.json: no such file or directory): dockward and compose ignore it and use docker.socket /var/run/docker.sock"}},
		{"DOCKER_CONTEXT default", "/var/run/docker.sock",
			map[string]string{"DOCKER_CONTEXT": "default"}, nil},
		{"both differ", "/var/run/docker.sock",
			map[string]string{"DOCKER_HOST": "unix:///tmp/d.sock", "DOCKER_CONTEXT": "default"},
			[]string{"DOCKER_HOST=unix:///tmp/d.sock differs", "DOCKER_CONTEXT=default (engine unix:///tmp/d.sock) differs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &config.Config{Docker: config.Docker{Socket: tt.socket}}
			got := engineWarnings(cfg, func(k string) string { return tt.env[k] })
			if len(got) != len(tt.want) {
				t.Fatalf("engineWarnings(%s, %v) = %q, want %d warnings", tt.socket, tt.env, got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}

// check prints the warning and still accepts the config.
func TestCheckWarnsAboutAnotherEngine(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, dir, "good.json", goodConfig(t, dir))
	env := map[string]string{"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), []string{"check", "-config", path}, func(k string) string { return env[k] }, &stdout, &stderr); err != nil {
		t.Fatalf("check error: %v (another engine in the environment is only a warning)", err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	want := []string{
		"warning: DOCKER_HOST=unix:///run/user/1000/docker.sock differs from docker.socket /var/run/docker.sock: dockward and compose use docker.socket only; set docker.socket to the engine you mean",
		path + ": config OK (1 services)",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("check printed\n%s\nwant\n%s", stdout.String(), strings.Join(want, "\n"))
	}
}
