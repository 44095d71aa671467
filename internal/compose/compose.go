// Package compose runs docker compose (the v2 plugin or docker-compose v1)
// to pull and start the services of a project.
package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// waitDelay is how long a compose process has to exit after SIGTERM
	// before it is killed and its output pipes closed.
	waitDelay = 10 * time.Second
	// maxOutput bounds the output kept from one run (its last bytes).
	maxOutput = 64 << 10
	// maxErrorOutput bounds the output tail put in an error.
	maxErrorOutput = 2 << 10
)

// Runner runs one docker compose command. It is safe for concurrent use.
type Runner struct {
	command []string // such as ["docker", "compose"] or ["docker-compose"]
	v2      bool
	version string // as the command reports it, such as "v2.20.2" or "1.29.2"
	logger  *slog.Logger
	timeout time.Duration
	env     []string // "KEY=value" set for every run, over the inherited ones
	unset   []string // inherited variables removed from every run
	engine  string   // DOCKER_HOST set by WithEngine, or ""
}

// Option adjusts a Runner. Options apply in order; for one variable, the
// last one wins.
type Option func(*Runner)

// WithEnv sets environment variables, each "KEY=value", for every compose
// process, replacing inherited variables of the same name.
func WithEnv(kv ...string) Option {
	return func(r *Runner) {
		for _, e := range kv {
			key, _, _ := strings.Cut(e, "=")
			r.unset = slices.DeleteFunc(r.unset, func(k string) bool { return k == key })
			r.env = append(slices.DeleteFunc(r.env, func(old string) bool { return envKey(old) == key }), e)
		}
	}
}

// WithoutEnv removes inherited environment variables from every compose
// process.
func WithoutEnv(keys ...string) Option {
	return func(r *Runner) {
		for _, key := range keys {
			r.env = slices.DeleteFunc(r.env, func(old string) bool { return envKey(old) == key })
			if !slices.Contains(r.unset, key) {
				r.unset = append(r.unset, key)
			}
		}
	}
}

// WithEngine has compose talk to the engine listening on the unix socket at
// path, the one Dockward's own client uses: DOCKER_HOST=unix://path, and no
// inherited DOCKER_CONTEXT, which the docker CLI could prefer.
func WithEngine(socket string) Option {
	return func(r *Runner) {
		r.engine = "unix://" + socket
		WithEnv("DOCKER_HOST=" + r.engine)(r)
		WithoutEnv("DOCKER_CONTEXT")(r)
	}
}

func envKey(kv string) string {
	key, _, _ := strings.Cut(kv, "=")
	return key
}

// Project names a compose project and the files that define it.
type Project struct {
	// Name is the project name, passed as -p.
	Name string
	// Files are the compose files, each passed as -f, in order (a base file
	// and its overrides). Compose runs in the first file's directory.
	Files []string
	// EnvFile, when set, is passed as --env-file.
	EnvFile string
}

// UpOptions adjust Up.
type UpOptions struct {
	// NoPull keeps compose from pulling: "--pull never" for v2. v1's up
	// never pulls an image that is present, as it is for a rollback.
	NoPull bool
	// NoDeps leaves the services that Services depend on alone
	// ("--no-deps"). It has an effect only with Services.
	NoDeps bool
	// Services limits up to these services; all of them when empty.
	Services []string
}

// New returns a Runner for command, such as ["docker", "compose"] or
// ["/usr/bin/docker-compose"]. With no command it looks for
// "docker compose" (the v2 plugin), then for docker-compose (v1) in PATH.
// Either way it runs "<command> version" to learn which compose it has.
// timeout bounds each run. The options set the environment of the runs,
// the version probe included.
func New(ctx context.Context, command []string, logger *slog.Logger, timeout time.Duration, opts ...Option) (*Runner, error) {
	if timeout <= 0 {
		return nil, fmt.Errorf("compose timeout %v: must be positive", timeout)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Runner{logger: logger, timeout: timeout}
	for _, opt := range opts {
		opt(r)
	}
	for _, e := range r.env {
		if key, _, ok := strings.Cut(e, "="); !ok || key == "" {
			return nil, fmt.Errorf("compose environment %q: want KEY=value", e)
		}
	}
	if len(command) > 0 {
		if command[0] == "" {
			return nil, fmt.Errorf("compose command %q: empty program name", command)
		}
		v2, version, err := r.probe(ctx, command)
		if err != nil {
			return nil, fmt.Errorf("compose command %q: %w", strings.Join(command, " "), err)
		}
		r.command, r.v2, r.version = slices.Clone(command), v2, version
		r.logFound()
		return r, nil
	}
	var errs []string
	for _, cand := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if _, err := exec.LookPath(cand[0]); err != nil {
			errs = append(errs, fmt.Sprintf("%s: not in PATH", cand[0]))
			continue
		}
		v2, version, err := r.probe(ctx, cand)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", strings.Join(cand, " "), err))
			continue
		}
		r.command, r.v2, r.version = cand, v2, version
		r.logFound()
		return r, nil
	}
	return nil, fmt.Errorf("no docker compose found: install the docker compose v2 plugin or docker-compose v1 (%s)", strings.Join(errs, "; "))
}

// probe runs "<command> version" and tells compose v2 from v1 by what it
// prints (see classify).
func (r *Runner) probe(ctx context.Context, command []string) (v2 bool, version string, err error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	args := append(slices.Clone(command[1:]), "version")
	cmd := exec.CommandContext(ctx, command[0], args...)
	cmd.Env = r.environ("")
	setProcessGroup(cmd)
	cmd.WaitDelay = waitDelay
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return false, "", fmt.Errorf("version: %w%s", err, errorTail(out.Bytes()))
	}
	return classify(command, out.String())
}

// classify reads the output of a successful "<command> version".
//
// A docker CLI plugin ("docker compose") is v2, whatever version it prints:
// v1 was never a plugin, and builds from source print "dev". A standalone
// binary is judged by its version number (1.x is v1), or by the v2 banner
// "Docker Compose version ..." when it prints no number.
func classify(command []string, out string) (v2 bool, version string, err error) {
	version, major, ok := parseVersion(out)
	if isPlugin(command) {
		if !ok {
			version = printedVersion(out)
		}
		return true, version, nil
	}
	if ok {
		return major >= 2, version, nil
	}
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	if v, found := strings.CutPrefix(strings.TrimSpace(line), "Docker Compose version "); found && strings.TrimSpace(v) != "" {
		return true, printedVersion(out), nil
	}
	return false, "", fmt.Errorf("version: no version number in %q", truncate(out, 200))
}

// isPlugin reports whether command runs compose as a docker CLI plugin, such
// as ["docker", "compose"] or ["/usr/bin/docker", "--context", "x", "compose"].
func isPlugin(command []string) bool {
	return len(command) > 1 && filepath.Base(command[0]) == "docker" && slices.Contains(command[1:], "compose")
}

// printedVersion is the version as compose printed it, for the log: the word
// after "version" on the first line ("dev"), else that whole line.
func printedVersion(out string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	fields := strings.Fields(line)
	for i := 0; i+1 < len(fields); i++ {
		if strings.EqualFold(fields[i], "version") {
			return strings.TrimRight(fields[i+1], ",")
		}
	}
	if line = strings.TrimSpace(line); line != "" {
		return truncate(line, 80)
	}
	return "unknown"
}

// parseVersion finds the version number in the first line of compose's
// version output: the word after "version", such as "v2.20.2" or "1.29.2,".
func parseVersion(out string) (version string, major int, ok bool) {
	line, _, _ := strings.Cut(strings.TrimSpace(out), "\n")
	fields := strings.Fields(line)
	for i := 0; i+1 < len(fields); i++ {
		if !strings.EqualFold(fields[i], "version") {
			continue
		}
		v := strings.TrimRight(fields[i+1], ",")
		digits := strings.TrimPrefix(v, "v")
		n := 0
		for n < len(digits) && '0' <= digits[n] && digits[n] <= '9' {
			major = major*10 + int(digits[n]-'0')
			n++
			if n > 4 {
				return "", 0, false
			}
		}
		if n == 0 || n < len(digits) && digits[n] != '.' {
			return "", 0, false
		}
		return v, major, true
	}
	return "", 0, false
}

// logFound logs which compose New settled on and the version it printed.
func (r *Runner) logFound() {
	major := "v1"
	if r.v2 {
		major = "v2"
	}
	r.logger.Info("docker compose found", "command", strings.Join(r.command, " "), "version", r.version, "kind", major)
}

// Version describes the compose in use, such as "docker compose v2.20.2" or
// "docker-compose 1.29.2".
func (r *Runner) Version() string { return strings.Join(r.command, " ") + " " + r.version }

// Engine is the DOCKER_HOST that compose is given, such as
// "unix:///var/run/docker.sock"; "" when it inherits Dockward's environment.
func (r *Runner) Engine() string { return r.engine }

// environ is the environment of a compose process run in dir: Dockward's
// own, less the variables the options remove or replace, plus those they
// set, and PWD=dir as os/exec sets it when it builds the environment itself.
func (r *Runner) environ(dir string) []string {
	if len(r.env) == 0 && len(r.unset) == 0 {
		return nil // os/exec passes os.Environ() and sets PWD
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		key := envKey(kv)
		return slices.Contains(r.unset, key) || slices.ContainsFunc(r.env, func(e string) bool { return envKey(e) == key })
	})
	env = append(env, r.env...)
	if dir != "" {
		env = append(env, "PWD="+dir)
	}
	return env
}

// Pull runs "<compose> -f file... -p project pull [services]": all the
// project's images when services is empty.
func (r *Runner) Pull(ctx context.Context, p Project, services ...string) error {
	if err := checkServices("pull", p.Name, services); err != nil {
		return err
	}
	return r.run(ctx, "pull", p, append([]string{"pull"}, services...)...)
}

// Up runs "<compose> -f file... -p project up -d", with "--pull never" when
// opts.NoPull is set (v2 only) and opts.Services last. With no services it
// adds --remove-orphans; with services, --no-deps when opts.NoDeps is set,
// and no --remove-orphans, which would act on the whole project.
func (r *Runner) Up(ctx context.Context, p Project, opts UpOptions) error {
	if err := checkServices("up", p.Name, opts.Services); err != nil {
		return err
	}
	args := []string{"up", "-d"}
	if len(opts.Services) == 0 {
		args = append(args, "--remove-orphans")
	} else if opts.NoDeps {
		args = append(args, "--no-deps")
	}
	if opts.NoPull && r.v2 {
		args = append(args, "--pull", "never")
	}
	args = append(args, opts.Services...)
	return r.run(ctx, "up", p, args...)
}

func checkServices(op, project string, services []string) error {
	for _, s := range services {
		if !validServiceName(s) {
			return fmt.Errorf("compose %s (project %s): invalid service name %q", op, project, s)
		}
	}
	return nil
}

// run runs compose with -f file... [--env-file f] -p project and args, in
// the first file's directory, bounded by the runner's timeout.
func (r *Runner) run(ctx context.Context, op string, p Project, args ...string) error {
	project := p.Name
	if !validProjectName(project) {
		return fmt.Errorf("compose %s (project %s): invalid project name: use lowercase letters, digits, '-' and '_', starting with a letter or digit", op, project)
	}
	if len(p.Files) == 0 {
		return fmt.Errorf("compose %s (project %s): no compose file", op, project)
	}
	full := slices.Clone(r.command[1:])
	files := make([]string, 0, len(p.Files))
	for _, file := range p.Files {
		if file == "" {
			return fmt.Errorf("compose %s (project %s): empty compose file name", op, project)
		}
		file, err := filepath.Abs(file)
		if err != nil {
			return fmt.Errorf("compose %s (project %s): %w", op, project, err)
		}
		// Without this, a missing directory reads "fork/exec docker: no such
		// file or directory", as if compose were missing.
		if _, err := os.Stat(file); err != nil {
			return fmt.Errorf("compose %s (project %s): %w", op, project, err)
		}
		files = append(files, file)
		full = append(full, "-f", file)
	}
	if p.EnvFile != "" {
		env, err := filepath.Abs(p.EnvFile)
		if err != nil {
			return fmt.Errorf("compose %s (project %s): env file: %w", op, project, err)
		}
		if _, err := os.Stat(env); err != nil {
			return fmt.Errorf("compose %s (project %s): env file: %w", op, project, err)
		}
		full = append(full, "--env-file", env)
	}
	full = append(full, "-p", project)
	full = append(full, args...)

	runCtx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, r.command[0], full...)
	cmd.Dir = filepath.Dir(files[0])
	cmd.Env = r.environ(cmd.Dir)
	setProcessGroup(cmd)
	cmd.WaitDelay = waitDelay
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out

	log := r.logger.With("op", op, "project", project)
	log.DebugContext(ctx, "running compose", "argv", append([]string{r.command[0]}, full...), "dir", cmd.Dir)
	start := time.Now()
	err := cmd.Run()
	if log.Enabled(ctx, slog.LevelDebug) {
		if out.Dropped() > 0 {
			log.DebugContext(ctx, "compose output truncated", "dropped_bytes", out.Dropped())
		}
		for line := range strings.Lines(out.String()) {
			log.DebugContext(ctx, "compose output", "line", strings.TrimRight(line, "\r\n"))
		}
	}
	if err == nil {
		log.DebugContext(ctx, "compose done", "duration", time.Since(start))
		return nil
	}
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	case errors.Is(runCtx.Err(), context.DeadlineExceeded):
		err = fmt.Errorf("timed out after %v (%v): %w", r.timeout, err, context.DeadlineExceeded)
	}
	return fmt.Errorf("compose %s (project %s): %w%s", op, project, err, errorTail(out.Bytes()))
}

// validProjectName reports whether name is a project name every compose
// version accepts as is.
func validProjectName(name string) bool {
	if name == "" || !isLowerAlnum(name[0]) {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isLowerAlnum(c) && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// validServiceName reports whether name is a compose service name that
// cannot be mistaken for a flag.
func validServiceName(name string) bool {
	if name == "" || name[0] == '-' || name[0] == '.' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isLowerAlnum(c) && !('A' <= c && c <= 'Z') && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// setProcessGroup starts cmd in its own process group and has cancellation
// send SIGTERM to the whole group, so that children (the compose plugin
// under docker, or a shell's children) stop too. WaitDelay then kills.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
}

// errorTail formats the end of a run's output for an error: ": " and at
// most maxErrorOutput bytes, starting at a line when it is cut.
func errorTail(out []byte) string {
	out = bytes.TrimSpace(out)
	if len(out) == 0 {
		return ""
	}
	if len(out) > maxErrorOutput {
		out = out[len(out)-maxErrorOutput:]
		if i := bytes.IndexByte(out, '\n'); i >= 0 && i < len(out)-1 {
			out = out[i+1:]
		}
		return ": ..." + string(out)
	}
	return ": " + string(out)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// tailBuffer keeps the last maxOutput bytes written to it.
type tailBuffer struct {
	mu      sync.Mutex
	buf     []byte
	dropped int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	// Compact only past twice the limit, so each byte is copied O(1) times.
	if len(b.buf) > 2*maxOutput {
		drop := len(b.buf) - maxOutput
		b.dropped += drop
		b.buf = append(b.buf[:0], b.buf[drop:]...)
	}
	return len(p), nil
}

// Bytes returns the last maxOutput bytes written.
func (b *tailBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) > maxOutput {
		return bytes.Clone(b.buf[len(b.buf)-maxOutput:])
	}
	return bytes.Clone(b.buf)
}

func (b *tailBuffer) String() string { return string(b.Bytes()) }

// Dropped returns how many bytes were written but are no longer kept.
func (b *tailBuffer) Dropped() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.buf) > maxOutput {
		return b.dropped + len(b.buf) - maxOutput
	}
	return b.dropped
}
