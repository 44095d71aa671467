package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	v2Version = `Docker Compose version v2.20.2`
	v1Version = `docker-compose version 1.29.2, build unknown
docker-py version: 5.0.3
CPython version: 3.11.2`
)

// fakes is a directory of fake compose executables, shell scripts that
// record each invocation (working directory and arguments) in a log.
type fakes struct {
	t   *testing.T
	dir string
	log string
}

// newFakes makes the directory the whole PATH, so that the real docker and
// docker-compose are out of sight. The scripts use only shell builtins.
func newFakes(t *testing.T) *fakes {
	t.Helper()
	f := &fakes{t: t, dir: t.TempDir()}
	f.log = filepath.Join(f.dir, "argv.log")
	t.Setenv("PATH", f.dir)
	return f
}

// script writes an executable that logs its invocation, answers the version
// probe (versionArgs, such as "compose version") with versionOut and exit
// status versionExit, and otherwise runs body.
func (f *fakes) script(name, versionArgs, versionOut string, versionExit int, body string) string {
	f.t.Helper()
	path := filepath.Join(f.dir, name)
	s := fmt.Sprintf(`#!/bin/sh
{ printf 'cwd=%%s\n' "$(pwd -P)"; for a in "$@"; do printf 'arg=%%s\n' "$a"; done; printf 'end\n'; } >> '%s'
if [ "$*" = '%s' ]; then
	printf '%%s\n' %s
	exit %d
fi
%s
`, f.log, versionArgs, shellQuote(versionOut), versionExit, body)
	if err := os.WriteFile(path, []byte(s), 0o755); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (f *fakes) dockerV2(body string) string {
	return f.script("docker", "compose version", v2Version, 0, body)
}

func (f *fakes) dockerWithoutCompose() string {
	return f.script("docker", "compose version", "docker: 'compose' is not a docker command.", 1, "exit 1")
}

func (f *fakes) composeV1(body string) string {
	return f.script("docker-compose", "version", v1Version, 0, body)
}

// composeFile returns the path of an empty file stack/compose.yml in a new
// temporary directory.
func composeFile(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "stack")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "compose.yml")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

type invocation struct {
	cwd  string
	args []string
}

// invocations returns what the fakes were run with, in order.
func (f *fakes) invocations() []invocation {
	f.t.Helper()
	b, err := os.ReadFile(f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []invocation
	var cur invocation
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSuffix(line, "\n")
		switch {
		case strings.HasPrefix(line, "cwd="):
			cur = invocation{cwd: strings.TrimPrefix(line, "cwd=")}
		case strings.HasPrefix(line, "arg="):
			cur.args = append(cur.args, strings.TrimPrefix(line, "arg="))
		case line == "end":
			out = append(out, cur)
		}
	}
	return out
}

func (f *fakes) last() invocation {
	f.t.Helper()
	inv := f.invocations()
	if len(inv) == 0 {
		f.t.Fatal("no fake was run")
	}
	return inv[len(inv)-1]
}

func TestNewDetects(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(f *fakes)
		command     func(f *fakes) []string
		wantVersion func(f *fakes) string
		wantErr     string
	}{
		{
			name:        "v2 plugin preferred over v1",
			setup:       func(f *fakes) { f.dockerV2("exit 0"); f.composeV1("exit 0") },
			wantVersion: func(*fakes) string { return "docker compose v2.20.2" },
		},
		{
			name: "plugin built from source (version dev) preferred over v1",
			setup: func(f *fakes) {
				f.script("docker", "compose version", "Docker Compose version dev", 0, "exit 0")
				f.composeV1("exit 0")
			},
			wantVersion: func(*fakes) string { return "docker compose dev" },
		},
		{
			name:        "v1 when docker has no compose plugin",
			setup:       func(f *fakes) { f.dockerWithoutCompose(); f.composeV1("exit 0") },
			wantVersion: func(*fakes) string { return "docker-compose 1.29.2" },
		},
		{
			name:        "v1 without docker",
			setup:       func(f *fakes) { f.composeV1("exit 0") },
			wantVersion: func(*fakes) string { return "docker-compose 1.29.2" },
		},
		{
			name:    "none",
			setup:   func(f *fakes) { f.dockerWithoutCompose() },
			wantErr: "no docker compose found: install the docker compose v2 plugin or docker-compose v1",
		},
		{
			name:        "override",
			setup:       func(f *fakes) { f.script("my-compose", "version", v1Version, 0, "exit 0") },
			command:     func(f *fakes) []string { return []string{filepath.Join(f.dir, "my-compose")} },
			wantVersion: func(f *fakes) string { return filepath.Join(f.dir, "my-compose") + " 1.29.2" },
		},
		{
			name:        "override with the plugin",
			setup:       func(f *fakes) { f.dockerV2("exit 0") },
			command:     func(*fakes) []string { return []string{"docker", "compose"} },
			wantVersion: func(*fakes) string { return "docker compose v2.20.2" },
		},
		{
			name:    "override whose version fails",
			setup:   func(f *fakes) { f.dockerWithoutCompose() },
			command: func(*fakes) []string { return []string{"docker", "compose"} },
			wantErr: `compose command "docker compose": version: exit status 1: docker: 'compose' is not a docker command.`,
		},
		{
			name:    "override not installed",
			setup:   func(*fakes) {},
			command: func(*fakes) []string { return []string{"docker-compose"} },
			wantErr: `compose command "docker-compose": version: exec: "docker-compose": executable file not found`,
		},
		{
			name:    "override printing no version",
			setup:   func(f *fakes) { f.script("docker-compose", "version", "hello", 0, "exit 0") },
			command: func(*fakes) []string { return []string{"docker-compose"} },
			wantErr: `no version number in "hello`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakes(t)
			tt.setup(f)
			var command []string
			if tt.command != nil {
				command = tt.command(f)
			}
			r, err := New(t.Context(), command, nil, 5*time.Second)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(%q) = %v, want an error containing %q", command, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q) = %v", command, err)
			}
			if got, want := r.Version(), tt.wantVersion(f); got != want {
				t.Errorf("Version() = %q, want %q", got, want)
			}
		})
	}
}

func TestArguments(t *testing.T) {
	one := func(file string) Project { return Project{Name: "myapp", Files: []string{file}} }
	tests := []struct {
		name string
		v2   bool
		call func(ctx context.Context, r *Runner, file string) error
		want []string // after the compose command and "-f file -p myapp"
	}{
		{"v2 pull", true, func(ctx context.Context, r *Runner, file string) error { return r.Pull(ctx, one(file)) }, []string{"pull"}},
		{"v1 pull", false, func(ctx context.Context, r *Runner, file string) error { return r.Pull(ctx, one(file)) }, []string{"pull"}},
		{"v2 pull services", true, func(ctx context.Context, r *Runner, file string) error {
			return r.Pull(ctx, one(file), "web", "worker")
		}, []string{"pull", "web", "worker"}},
		{"v1 pull a service", false, func(ctx context.Context, r *Runner, file string) error {
			return r.Pull(ctx, one(file), "web")
		}, []string{"pull", "web"}},
		{"v2 up", true, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{})
		}, []string{"up", "-d", "--remove-orphans"}},
		{"v1 up", false, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{})
		}, []string{"up", "-d", "--remove-orphans"}},
		{"v2 up without pulling", true, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{NoPull: true})
		}, []string{"up", "-d", "--remove-orphans", "--pull", "never"}},
		{"v1 up without pulling", false, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{NoPull: true})
		}, []string{"up", "-d", "--remove-orphans"}},
		{"v2 up services without pulling", true, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{NoPull: true, Services: []string{"web", "db.1"}})
		}, []string{"up", "-d", "--pull", "never", "web", "db.1"}},
		{"v1 up services", false, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{Services: []string{"web"}})
		}, []string{"up", "-d", "web"}},
		{"v2 up services without deps or pulling", true, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{NoPull: true, NoDeps: true, Services: []string{"web"}})
		}, []string{"up", "-d", "--no-deps", "--pull", "never", "web"}},
		{"v1 up services without deps or pulling", false, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{NoPull: true, NoDeps: true, Services: []string{"web"}})
		}, []string{"up", "-d", "--no-deps", "web"}},
		{"no deps without services is the whole project", true, func(ctx context.Context, r *Runner, file string) error {
			return r.Up(ctx, one(file), UpOptions{NoDeps: true})
		}, []string{"up", "-d", "--remove-orphans"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakes(t)
			var prefix []string
			if tt.v2 {
				f.dockerV2("exit 0")
				prefix = []string{"compose"}
			} else {
				f.composeV1("exit 0")
			}
			r, err := New(t.Context(), nil, nil, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			file := composeFile(t)
			dir := filepath.Dir(file)
			if err := tt.call(t.Context(), r, file); err != nil {
				t.Fatal(err)
			}
			got := f.last()
			want := append(append(prefix, "-f", file, "-p", "myapp"), tt.want...)
			if !slices.Equal(got.args, want) {
				t.Errorf("argv = %q, want %q", got.args, want)
			}
			if wantDir, _ := filepath.EvalSymlinks(dir); got.cwd != wantDir {
				t.Errorf("working directory = %q, want %q", got.cwd, wantDir)
			}
		})
	}
}

// TestFilesAndEnvFile: several compose files are passed in order, each
// with -f, and compose runs in the first one's directory; an env file is
// passed with --env-file before -p.
func TestFilesAndEnvFile(t *testing.T) {
	for _, v2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("v2=%v", v2), func(t *testing.T) {
			f := newFakes(t)
			var prefix []string
			if v2 {
				f.dockerV2("exit 0")
				prefix = []string{"compose"}
			} else {
				f.composeV1("exit 0")
			}
			r, err := New(t.Context(), nil, nil, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			base := composeFile(t)
			override := filepath.Join(t.TempDir(), "override.yml")
			env := filepath.Join(t.TempDir(), "prod.env")
			for _, p := range []string{override, env} {
				if err := os.WriteFile(p, []byte("\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			p := Project{Name: "myapp", Files: []string{base, override}, EnvFile: env}
			if err := r.Up(t.Context(), p, UpOptions{NoDeps: true, Services: []string{"web"}}); err != nil {
				t.Fatal(err)
			}
			got := f.last()
			want := append(prefix, "-f", base, "-f", override, "--env-file", env, "-p", "myapp", "up", "-d", "--no-deps", "web")
			if !slices.Equal(got.args, want) {
				t.Errorf("argv = %q, want %q", got.args, want)
			}
			if wantDir, _ := filepath.EvalSymlinks(filepath.Dir(base)); got.cwd != wantDir {
				t.Errorf("working directory = %q, want %q (the first file's)", got.cwd, wantDir)
			}
			runs := len(f.invocations())
			missing := filepath.Join(t.TempDir(), "missing.env")
			if err := r.Pull(t.Context(), Project{Name: "myapp", Files: []string{base}, EnvFile: missing}); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Pull with a missing env file = %v, want fs.ErrNotExist", err)
			}
			if err := r.Pull(t.Context(), Project{Name: "myapp", Files: []string{base}}, "--build"); err == nil {
				t.Errorf("Pull of service --build = nil, want an error")
			}
			if n := len(f.invocations()); n != runs {
				t.Errorf("compose ran %d times for invalid arguments", n-runs)
			}
		})
	}
}

func TestRelativeFileIsMadeAbsolute(t *testing.T) {
	f := newFakes(t)
	f.composeV1("exit 0")
	r, err := New(t.Context(), nil, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	file := composeFile(t)
	base := filepath.Dir(filepath.Dir(file))
	t.Chdir(base)
	if err := r.Up(t.Context(), Project{Name: "myapp", Files: []string{"stack/compose.yml"}}, UpOptions{}); err != nil {
		t.Fatal(err)
	}
	got := f.last()
	if want := filepath.Join(base, "stack", "compose.yml"); got.args[1] != want {
		t.Errorf("-f %q, want %q", got.args[1], want)
	}
}

func TestInvalidNames(t *testing.T) {
	f := newFakes(t)
	f.composeV1("exit 0")
	r, err := New(t.Context(), nil, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	runs := len(f.invocations())
	for _, tt := range []struct {
		name    string
		project string
		opts    UpOptions
	}{
		{"empty project", "", UpOptions{}},
		{"uppercase project", "MyApp", UpOptions{}},
		{"project like a flag", "-p", UpOptions{}},
		{"service like a flag", "myapp", UpOptions{Services: []string{"--build"}}},
		{"empty service", "myapp", UpOptions{Services: []string{""}}},
		{"service with a space", "myapp", UpOptions{Services: []string{"a b"}}},
	} {
		if err := r.Up(t.Context(), Project{Name: tt.project, Files: []string{composeFile(t)}}, tt.opts); err == nil {
			t.Errorf("%s: Up(%q, %+v) = nil, want an error", tt.name, tt.project, tt.opts)
		}
	}
	if err := r.Pull(t.Context(), Project{Name: "myapp", Files: []string{""}}); err == nil {
		t.Errorf("Pull with no file = nil, want an error")
	}
	missing := filepath.Join(t.TempDir(), "nope", "compose.yml")
	if err := r.Pull(t.Context(), Project{Name: "myapp", Files: []string{missing}}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Pull(%q) = %v, want fs.ErrNotExist", missing, err)
	}
	if n := len(f.invocations()); n != runs {
		t.Errorf("compose ran %d times for invalid arguments", n-runs)
	}
}

func TestFailureOutputInError(t *testing.T) {
	f := newFakes(t)
	f.composeV1(`echo 'Pulling web ... error' ; echo 'ERROR: pull access denied for myapp' >&2 ; exit 1`)
	r, err := New(t.Context(), nil, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Pull(t.Context(), Project{Name: "myapp", Files: []string{composeFile(t)}})
	want := "compose pull (project myapp): exit status 1: Pulling web ... error\nERROR: pull access denied for myapp"
	if err == nil || err.Error() != want {
		t.Fatalf("Pull() = %v, want %q", err, want)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("errors.As(%v, *exec.ExitError) = %v, want exit code 1", err, ee)
	}
}

func TestFailureOutputTail(t *testing.T) {
	f := newFakes(t)
	// About 140 KiB of output, more than is kept, then the line that matters.
	f.composeV1(`i=0
while [ $i -lt 2000 ]; do
	echo "progress line $i ................................................................"
	i=$((i+1))
done
echo 'ERROR: the last line' >&2
exit 3`)
	r, err := New(t.Context(), nil, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Up(t.Context(), Project{Name: "myapp", Files: []string{composeFile(t)}}, UpOptions{})
	if err == nil {
		t.Fatal("Up() = nil, want an error")
	}
	msg := err.Error()
	prefix := "compose up (project myapp): exit status 3: ...progress line "
	if !strings.HasPrefix(msg, prefix) || !strings.HasSuffix(msg, "ERROR: the last line") {
		t.Errorf("Up() error = %q, want it to start with %q and end with the last line", truncate(msg, 300), prefix)
	}
	if len(msg) > maxErrorOutput+100 {
		t.Errorf("error is %d bytes long, want at most about %d", len(msg), maxErrorOutput)
	}
}

func TestOutputLoggedAtDebug(t *testing.T) {
	f := newFakes(t)
	f.composeV1(`echo 'Creating myapp_web_1 ... done'; echo 'Recreating db' >&2`)
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := New(t.Context(), nil, logger, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Up(t.Context(), Project{Name: "myapp", Files: []string{composeFile(t)}}, UpOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`level=DEBUG msg="compose output" op=up project=myapp line="Creating myapp_web_1 ... done"`,
		`level=DEBUG msg="compose output" op=up project=myapp line="Recreating db"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

func TestTimeoutKillsCompose(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	f := newFakes(t)
	// Not exec: the shell's child must be stopped too.
	f.composeV1(fmt.Sprintf("echo 'Pulling web ...'\n%s 30\necho 'woke up'", sleep))
	r, err := New(t.Context(), nil, nil, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = r.Pull(t.Context(), Project{Name: "myapp", Files: []string{composeFile(t)}})
	elapsed := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Pull() = %v, want a timeout error", err)
	}
	if !strings.Contains(err.Error(), "Pulling web ...") {
		t.Errorf("Pull() error %q lacks the output so far", err)
	}
	if elapsed > 5*time.Second {
		t.Errorf("Pull took %v with a 300ms timeout", elapsed)
	}
}

func TestCancelStopsCompose(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	f := newFakes(t)
	f.composeV1(sleep + " 30")
	r, err := New(t.Context(), nil, nil, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = r.Up(ctx, Project{Name: "myapp", Files: []string{composeFile(t)}}, UpOptions{})
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timed out after") {
		t.Fatalf("Up() = %v, want the caller's context error, not the runner's timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Up took %v after its context ended", elapsed)
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		out       string
		version   string
		major     int
		wantFound bool
	}{
		{"Docker Compose version v2.20.2\n", "v2.20.2", 2, true},
		{"Docker Compose version 2.29.7", "2.29.7", 2, true},
		{v1Version, "1.29.2", 1, true},
		{"docker-compose version 1.25.0, build unknown", "1.25.0", 1, true},
		{"Docker Compose version v10.0.0-rc.1", "v10.0.0-rc.1", 10, true},
		{"Docker Compose version dev", "", 0, false},
		{"version", "", 0, false},
		{"", "", 0, false},
		{"docker: 'compose' is not a docker command.", "", 0, false},
		{"Docker Compose version v99999.1", "", 0, false},
	}
	for _, tt := range tests {
		v, major, ok := parseVersion(tt.out)
		if v != tt.version || major != tt.major || ok != tt.wantFound {
			t.Errorf("parseVersion(%q) = %q, %d, %v, want %q, %d, %v", tt.out, v, major, ok, tt.version, tt.major, tt.wantFound)
		}
	}
}

// TestPluginDevIsV2 runs a docker compose plugin that prints "dev" beside a
// docker-compose v1: the plugin is chosen, spoken to as v2 (--pull never),
// and the version it printed is logged.
func TestPluginDevIsV2(t *testing.T) {
	f := newFakes(t)
	f.script("docker", "compose version", "Docker Compose version dev", 0, "exit 0")
	f.composeV1("exit 0")
	var logs bytes.Buffer
	r, err := New(t.Context(), nil, slog.New(slog.NewTextHandler(&logs, nil)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	file := composeFile(t)
	if err := r.Up(t.Context(), Project{Name: "myapp", Files: []string{file}}, UpOptions{NoPull: true}); err != nil {
		t.Fatal(err)
	}
	want := []string{"compose", "-f", file, "-p", "myapp", "up", "-d", "--remove-orphans", "--pull", "never"}
	if got := f.last(); !slices.Equal(got.args, want) {
		t.Errorf("argv = %q, want %q", got.args, want)
	}
	if !strings.Contains(logs.String(), `msg="docker compose found" command="docker compose" version=dev kind=v2`) {
		t.Errorf("log = %q, want the plugin and its printed version", logs.String())
	}
}

func TestClassify(t *testing.T) {
	plugin := []string{"docker", "compose"}
	standalone := []string{"docker-compose"}
	tests := []struct {
		name        string
		command     []string
		out         string
		wantV2      bool
		wantVersion string
		wantErr     bool
	}{
		{"plugin release", plugin, "Docker Compose version v2.40.3\n", true, "v2.40.3", false},
		{"plugin source build", plugin, "Docker Compose version dev\n", true, "dev", false},
		{"plugin without v prefix", plugin, "Docker Compose version 2.x", true, "2.x", false},
		{"plugin by full path with a context flag", []string{"/usr/bin/docker", "--context", "default", "compose"}, "Docker Compose version dev", true, "dev", false},
		{"plugin printing a v1 string", plugin, v1Version, true, "1.29.2", false},
		{"plugin printing garbage", plugin, "%%% what", true, "%%% what", false},
		{"plugin printing nothing", plugin, "", true, "unknown", false},
		{"standalone v1", standalone, v1Version, false, "1.29.2", false},
		{"standalone v1 old", standalone, "docker-compose version 1.25.0, build unknown", false, "1.25.0", false},
		{"standalone v2 release", standalone, "Docker Compose version v2.40.3", true, "v2.40.3", false},
		{"standalone v2 source build", standalone, "Docker Compose version dev", true, "dev", false},
		{"standalone 2.x", standalone, "Docker Compose version 2.x", true, "2.x", false},
		{"standalone garbage", standalone, "hello", false, "", true},
		{"standalone empty", standalone, "", false, "", true},
		{"standalone v1 banner without number", standalone, "docker-compose version dev", false, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v2, version, err := classify(tt.command, tt.out)
			if (err != nil) != tt.wantErr {
				t.Fatalf("classify(%q, %q) error = %v, want error %v", tt.command, tt.out, err, tt.wantErr)
			}
			if v2 != tt.wantV2 || version != tt.wantVersion {
				t.Errorf("classify(%q, %q) = %v, %q, want %v, %q", tt.command, tt.out, v2, version, tt.wantV2, tt.wantVersion)
			}
		})
	}
}

func TestTailBuffer(t *testing.T) {
	var b tailBuffer
	chunk := bytes.Repeat([]byte("x"), 1000)
	for range 300 {
		b.Write(chunk)
	}
	b.Write([]byte("END"))
	got := b.Bytes()
	if len(got) != maxOutput || !bytes.HasSuffix(got, []byte("xEND")) {
		t.Errorf("tail is %d bytes ending %q, want %d ending xEND", len(got), got[len(got)-4:], maxOutput)
	}
	if want := 300*1000 + 3 - maxOutput; b.Dropped() != want {
		t.Errorf("Dropped() = %d, want %d", b.Dropped(), want)
	}
}
