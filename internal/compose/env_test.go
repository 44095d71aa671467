package compose

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestEnvironment runs a fake compose that records, for the version probe
// and for each run, the variables that decide which engine it talks to.
func TestEnvironment(t *testing.T) {
	tests := []struct {
		name    string
		opts    []Option
		want    []string // one line per variable: KEY=value, or KEY unset
		engine  string
		wantErr string
	}{
		{
			name: "inherited without options",
			want: []string{"DOCKER_HOST=tcp://10.0.0.9:2375", "DOCKER_CONTEXT=remote", "DOCKER_CONFIG unset", "KEEP=me"},
		},
		{
			name:   "engine replaces DOCKER_HOST and removes DOCKER_CONTEXT",
			opts:   []Option{WithEngine("/run/user/1000/docker.sock")},
			want:   []string{"DOCKER_HOST=unix:///run/user/1000/docker.sock", "DOCKER_CONTEXT unset", "DOCKER_CONFIG unset", "KEEP=me"},
			engine: "unix:///run/user/1000/docker.sock",
		},
		{
			name:   "options add up",
			opts:   []Option{WithEngine("/var/run/docker.sock"), WithEnv("DOCKER_CONFIG=/etc/dockward/docker")},
			want:   []string{"DOCKER_HOST=unix:///var/run/docker.sock", "DOCKER_CONTEXT unset", "DOCKER_CONFIG=/etc/dockward/docker", "KEEP=me"},
			engine: "unix:///var/run/docker.sock",
		},
		{
			name: "the last option wins",
			opts: []Option{WithEnv("KEEP=first"), WithoutEnv("KEEP"), WithEnv("DOCKER_CONTEXT=other", "KEEP=last")},
			want: []string{"DOCKER_HOST=tcp://10.0.0.9:2375", "DOCKER_CONTEXT=other", "DOCKER_CONFIG unset", "KEEP=last"},
		},
		{
			name:    "not KEY=value",
			opts:    []Option{WithEnv("DOCKER_CONFIG")},
			wantErr: `compose environment "DOCKER_CONFIG": want KEY=value`,
		},
		{
			name:    "empty key",
			opts:    []Option{WithEnv("=x")},
			wantErr: `compose environment "=x": want KEY=value`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Setenv("PATH", dir)
			t.Setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
			t.Setenv("DOCKER_CONTEXT", "remote")
			t.Setenv("KEEP", "me")
			os.Unsetenv("DOCKER_CONFIG") // t.Setenv restores it
			log := filepath.Join(dir, "env.log")
			var script strings.Builder
			script.WriteString("#!/bin/sh\n")
			fmt.Fprintf(&script, "printf 'run %%s pwd=%%s\\n' \"$1\" \"$PWD\" >> '%s'\n", log)
			for _, k := range []string{"DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "KEEP"} {
				fmt.Fprintf(&script, "if [ \"${%[1]s+set}\" ]; then printf '%%s\\n' \"%[1]s=$%[1]s\"; else printf '%[1]s unset\\n'; fi >> '%[2]s'\n", k, log)
			}
			fmt.Fprintf(&script, "[ \"$1\" = version ] && printf '%%s\\n' %s\nexit 0\n", shellQuote(v1Version))
			if err := os.WriteFile(filepath.Join(dir, "docker-compose"), []byte(script.String()), 0o755); err != nil {
				t.Fatal(err)
			}

			r, err := New(t.Context(), []string{"docker-compose"}, nil, 5*time.Second, tt.opts...)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("New = %v, want error %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Engine(); got != tt.engine {
				t.Errorf("Engine() = %q, want %q", got, tt.engine)
			}
			file := composeFile(t)
			if err := r.Pull(t.Context(), Project{Name: "myapp", Files: []string{file}}); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			stackDir := filepath.Dir(file)
			want := slices.Concat([]string{"run version pwd=" + mustGetwd(t)}, tt.want, []string{"run -f pwd=" + stackDir}, tt.want)
			if !slices.Equal(lines, want) {
				t.Errorf("environment of the probe and of a run:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}
