package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/journal"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/sdnotify"
	"github.com/dockward/dockward/internal/state"
	"github.com/dockward/dockward/internal/watcher"
)

// errUsage is returned after flag has already printed the problem.
var errUsage = errors.New("usage error")

// run is the whole program; main only turns its error into an exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "check" {
		return runCheck(ctx, args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "status" {
		return runStatus(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "reload" {
		return runReload(args[1:], getenv, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "state" {
		return runState(args[1:], getenv, stdout, stderr)
	}
	fs := flag.NewFlagSet("dockward", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "path of the JSON config file")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: dockward [-config PATH]      run the daemon\n       dockward check [-config PATH] [-online] validate a config and exit\n       dockward reload [-config PATH] [-pid PID]\n                                     validate a config, then ask the daemon to reload it\n       dockward status [-config PATH | -addr HOST:PORT] [-json]\n                                     show the running daemon's status\n       dockward state reset [-config PATH]\n                                     start over from an empty state when the state file is damaged\n       dockward -version\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintln(stdout, "dockward", version)
		return nil
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, *configPath, getenv, stderr)
}

// runCheck validates a config without touching Docker: `dockward check
// -config PATH` exits 0 when the file is valid. Ansible's validate: uses it.
// With -online it also asks the registry for each service's digest, so
// credentials can be tested before a restart.
func runCheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dockward check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "path of the JSON config file")
	online := fs.Bool("online", false, "also ask the registry for each service's digest (one authenticated HEAD each)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		// Accept `dockward check FILE` too.
		*configPath = fs.Arg(0)
	}
	cfg, err := loadFull(*configPath, getenv)
	if err != nil {
		return err
	}
	for _, s := range cfg.Services {
		for _, file := range s.Files() {
			if _, err := os.Stat(file); err != nil {
				fmt.Fprintf(stdout, "warning: service %s: compose file %s: %v\n", s.Name, file, errors.Unwrap(err))
			}
		}
		if s.EnvFile != "" {
			if _, err := os.Stat(s.EnvFile); err != nil {
				fmt.Fprintf(stdout, "warning: service %s: env file %s: %v\n", s.Name, s.EnvFile, errors.Unwrap(err))
			}
		}
	}
	for _, w := range stopWarnings(cfg) {
		fmt.Fprintln(stdout, "warning:", w)
	}
	for _, w := range engineWarnings(cfg, getenv) {
		fmt.Fprintln(stdout, "warning:", w)
	}
	if cfg.Registry.InsecureSkipVerify {
		fmt.Fprintln(stdout, "warning: registry.insecure_skip_verify: the registry's TLS certificate is not verified")
	}
	if cfg.Registry.PasswordFile != "" && cfg.Registry.PasswordPath(getenv) == "" {
		fmt.Fprintln(stdout, "warning: registry.password_file: $CREDENTIALS_DIRECTORY is not set here, so the file is not checked; dockward reads it at start")
	}
	fmt.Fprintf(stdout, "%s: config OK (%d services)\n", *configPath, len(cfg.Services))
	if *online {
		return checkOnline(ctx, cfg, getenv, stdout)
	}
	return nil
}

// errLogged is returned after the error was logged with its priority; main
// only turns it into a non-zero exit.
var errLogged = errors.New("error already logged")

// runReload is the unit's ExecReload=: `dockward reload` validates the config
// as check does and only then sends SIGHUP to the daemon, $MAINPID (which
// systemd sets for ExecReload=) unless -pid names it. It needs nothing but
// dockward itself (a minimal Debian has no /bin/kill). An invalid config
// fails the reload, so `systemctl reload` reports it, and the daemon is not
// disturbed; the daemon validates again on SIGHUP and answers with
// RELOADING=1 and READY=1.
func runReload(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dockward reload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "path of the JSON config file")
	pid := fs.Int("pid", 0, "process ID of the running dockward (default $MAINPID, set by systemd for ExecReload=)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *pid == 0 {
		if env := getenv("MAINPID"); env != "" {
			p, err := strconv.Atoi(env)
			if err != nil {
				return fmt.Errorf("MAINPID=%q: not a process ID", env)
			}
			*pid = p
		}
	}
	if *pid <= 1 {
		return errors.New("no dockward process to reload: run it as the unit's ExecReload= (systemd sets $MAINPID) or pass -pid")
	}
	logger := slog.New(journal.NewHandler(stderr, getenv, slog.LevelInfo))
	cfg, err := loadFull(*configPath, getenv)
	if err != nil {
		logger.Error("config reload refused: the config does not validate; dockward keeps the running one", "config", *configPath, "err", err)
		return errLogged
	}
	for _, w := range stopWarnings(cfg) {
		logger.Warn(w)
	}
	proc, err := os.FindProcess(*pid)
	if err == nil {
		err = proc.Signal(syscall.SIGHUP)
	}
	if err != nil {
		return fmt.Errorf("ask dockward (pid %d) to reload: %w", *pid, err)
	}
	logger.Info("config valid; asked dockward to reload it", "config", *configPath, "services", len(cfg.Services), "pid", *pid)
	return nil
}

// unitStopTimeout is TimeoutStopSec in deploy/systemd/dockward.service.
const unitStopTimeout = 180 * time.Second

// stopWarnings says which services could keep a stop waiting longer than
// systemd waits before it kills dockward (and compose) mid-deploy.
func stopWarnings(cfg *config.Config) []string {
	var out []string
	for i, s := range cfg.Services {
		if bound := watcher.StopBound(s); bound > unitStopTimeout {
			out = append(out, fmt.Sprintf("services[%d].health_grace: a stop may wait %v for a deploy of %s in flight, longer than the shipped unit's TimeoutStopSec=%v; raise TimeoutStopSec",
				i, bound, s.Name, unitStopTimeout))
		}
	}
	return out
}

// engineWarnings says when the environment names a Docker engine other
// than docker.socket: dockward's client and compose use docker.socket only
// (compose gets DOCKER_HOST=unix://<docker.socket> and no DOCKER_CONTEXT),
// so a DOCKER_HOST or DOCKER_CONTEXT meant for Dockward is not what it uses.
func engineWarnings(cfg *config.Config, getenv func(string) string) []string {
	var out []string
	socket := cfg.Docker.Socket
	if host := getenv("DOCKER_HOST"); host != "" && !sameSocket(host, socket) {
		out = append(out, fmt.Sprintf("DOCKER_HOST=%s differs from docker.socket %s: dockward and compose use docker.socket only; set docker.socket to the engine you mean", host, socket))
	}
	name := getenv("DOCKER_CONTEXT")
	if name == "" {
		return out
	}
	host, err := contextHost(name, getenv)
	switch {
	case err != nil:
		out = append(out, fmt.Sprintf("DOCKER_CONTEXT=%s is set (%v): dockward and compose ignore it and use docker.socket %s", name, err, socket))
	case !sameSocket(host, socket):
		out = append(out, fmt.Sprintf("DOCKER_CONTEXT=%s (engine %s) differs from docker.socket %s: dockward and compose use docker.socket only; set docker.socket to the engine you mean", name, host, socket))
	}
	return out
}

// sameSocket reports whether a DOCKER_HOST value names the unix socket at
// path.
func sameSocket(host, path string) bool {
	p, ok := strings.CutPrefix(host, "unix://")
	return ok && filepath.Clean(p) == filepath.Clean(path)
}

// contextHost reads the Docker endpoint of a docker CLI context from its
// metadata: $DOCKER_CONFIG/contexts/meta/<sha256 of the name>/meta.json,
// $HOME/.docker without DOCKER_CONFIG. The context "default" is
// /var/run/docker.sock unless DOCKER_HOST says otherwise.
func contextHost(name string, getenv func(string) string) (string, error) {
	if name == "default" {
		if host := getenv("DOCKER_HOST"); host != "" {
			return host, nil
		}
		return "unix:///var/run/docker.sock", nil
	}
	dir := getenv("DOCKER_CONFIG")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("no DOCKER_CONFIG or HOME to find its metadata in")
		}
		dir = filepath.Join(home, ".docker")
	}
	sum := sha256.Sum256([]byte(name))
	path := filepath.Join(dir, "contexts", "meta", hex.EncodeToString(sum[:]), "meta.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read its metadata: %w", err)
	}
	var meta struct {
		Endpoints struct {
			Docker struct{ Host string }
		}
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return "", fmt.Errorf("read its metadata %s: %w", path, err)
	}
	if meta.Endpoints.Docker.Host == "" {
		return "", fmt.Errorf("its metadata %s names no Docker endpoint", path)
	}
	return meta.Endpoints.Docker.Host, nil
}

// loadFull loads a config and also checks what other packages parse from it
// (image references, webhook templates), so `check` catches all of it.
func loadFull(path string, getenv func(string) string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	if _, err := notify.New(cfg.Notifications, slog.New(slog.DiscardHandler), notify.WithGetenv(getenv)); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if _, err := cfg.API.BearerToken(getenv); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	// Outside the unit (`dockward check` by hand, Ansible's validate:) a
	// LoadCredential= file cannot be read: start and reload still check it.
	if _, err := loadRegistryAccess(cfg.Registry, getenv); err != nil && !errors.Is(err, config.ErrNoCredentialsDirectory) {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if _, err := cfg.Registry.EventsSecret(getenv); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// serve wires the parts together and runs them until ctx is done.
func serve(ctx context.Context, cfg *config.Config, configPath string, getenv func(string) string, stderr io.Writer) error {
	started := time.Now()
	level := new(slog.LevelVar)
	level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config
	logger := slog.New(journal.NewHandler(stderr, getenv, level))
	sd := sdnotify.New(getenv)
	// A failing part (the API server) stops the others too.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// SIGHUP is caught before READY=1: its default action would kill us.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	// One dockward per state file: a second one would overwrite blocks.
	lock, err := state.Acquire(cfg.StatePath(getenv))
	if err != nil {
		return err
	}
	defer lock.Release()
	store, err := state.Open(cfg.StatePath(getenv))
	if err != nil {
		return err
	}
	stateAlerts := logRecovery(logger, store)
	engine := docker.New(cfg.Docker.Socket, logger)
	// The client logs the engine it negotiated with; an engine that is not
	// up yet is retried on every call.
	if _, err := engine.Version(ctx); err != nil {
		logger.Warn("docker engine not reachable yet; will retry on every poll", "socket", cfg.Docker.Socket, "err", err)
	}
	access, err := loadRegistryAccess(cfg.Registry, getenv)
	if err != nil {
		return err
	}
	if cfg.Registry.InsecureSkipVerify {
		logger.Warn("registry.insecure_skip_verify is set: the registry's TLS certificate is not verified", "registry", access.host)
	}
	reg, err := registry.New(cfg.Registry.URL, append(access.options(), registry.WithTimeout(cfg.Registry.Timeout.Duration()))...)
	if err != nil {
		return err
	}
	// Compose reaches the engine that the client inspects, whatever
	// DOCKER_HOST or DOCKER_CONTEXT the unit may carry, and pulls with the
	// digest check's credentials.
	composeOpts := []compose.Option{compose.WithEngine(cfg.Docker.Socket)}
	var pullConfig *composeConfig
	if access.static != nil {
		if pullConfig, err = newComposeConfig(getenv); err != nil {
			return err
		}
		defer func() {
			if err := pullConfig.cleanup(); err != nil {
				logger.Warn("remove compose's docker config", "dir", pullConfig.dir, "err", err)
			}
		}()
		if err := pullConfig.write(access.host, *access.static); err != nil {
			return err
		}
		access.dockerDir = pullConfig.dir
	}
	if access.dockerDir != "" {
		composeOpts = append(composeOpts, compose.WithEnv("DOCKER_CONFIG="+access.dockerDir))
	}
	logger.Info("registry access", "registry", access.host, "credentials", access.what, "compose_docker_config", access.dockerDir)
	runner, err := compose.New(ctx, cfg.Docker.ComposeCommand, logger, cfg.Docker.ComposeTimeout.Duration(), composeOpts...)
	if err != nil {
		return err
	}
	dispatcher, err := notify.New(cfg.Notifications, logger, notify.WithGetenv(getenv))
	if err != nil {
		return err
	}
	metrics := watcher.NewMetrics(version, started)
	metrics.SetNotifyFailures(dispatcher.Failures)
	metrics.SetDeploysPaused(func() bool { _, paused := store.Paused(); return paused })
	updater, err := watcher.NewUpdater(cfg, watcher.UpdaterDeps{
		Logger: logger, Engine: engine, Registry: reg, Compose: runner,
		Notify: dispatcher, Store: store, Metrics: metrics, Promoter: reg,
	})
	if err != nil {
		return err
	}
	healer := watcher.NewHealer(cfg, watcher.HealerDeps{
		Logger: logger, Engine: engine, Guard: updater, Observer: updater,
		Notify: dispatcher, Store: store, Metrics: metrics,
	})

	apiToken, err := cfg.API.BearerToken(getenv)
	if err != nil {
		return err
	}
	eventsToken, err := cfg.Registry.EventsSecret(getenv)
	if err != nil {
		return err
	}
	// Bind before anything runs so a taken port is an error at start.
	addr := net.JoinHostPort("127.0.0.1", string(cfg.API.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("api listen: %w", err)
	}
	srv := newAPIServer(watcher.NewAPI(watcher.APIDeps{
		Updater: updater, Metrics: metrics, Store: store, Engine: engine, Logger: logger,
		Version: version, Compose: runner.Version(), Started: started, Token: apiToken,
		EventsToken: eventsToken,
	}), apiTimeouts)
	for _, w := range stopWarnings(cfg) {
		logger.Warn(w)
	}
	for _, w := range engineWarnings(cfg, getenv) {
		logger.Warn(w)
	}
	logger.Info("dockward started", "version", version, "config", configPath, "state", store.Path(),
		"api", ln.Addr().String(), "api_token", apiToken != "", "engine", runner.Engine(), "compose", runner.Version(), "services", len(cfg.Services),
		"registry_events", eventsToken != "")

	// Notifications outlive the other parts so that alerts about the stop
	// itself are flushed.
	notifyCtx, stopNotify := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNotify()
	var notifyWG sync.WaitGroup
	notifyWG.Add(1)
	go func() {
		defer notifyWG.Done()
		dispatcher.Run(notifyCtx)
	}()
	dispatcher.Send(notify.Alert{Event: notify.Started, Level: notify.Info, Message: "dockward " + version + " started"})
	for _, a := range stateAlerts {
		dispatcher.Send(a)
	}

	// Deploys that the previous run left half done claim their services
	// before the API serves, so that an early trigger finds them busy
	// instead of an unverified digest "up to date"; they go on in the
	// background.
	updater.Resume(ctx)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	// The updater and the healer run until ctx is done; one that returns
	// earlier is a bug, and the process exits non-zero so that systemd
	// restarts it rather than pinging the watchdog for a dead loop.
	var wg sync.WaitGroup
	partStopped := make(chan string, 2)
	for name, part := range map[string]func(context.Context) error{"updater": updater.Run, "healer": healer.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			part(ctx)
			partStopped <- name
		}()
	}
	notifyErr := func(err error) {
		if err != nil {
			logger.Debug("sd_notify", "err", err)
		}
	}
	notifyErr(sd.Ready(ctx))
	notifyErr(sd.Status(ctx, status(cfg, store)))

	var watchdog <-chan time.Time
	if interval, ok := sdnotify.WatchdogInterval(getenv); ok {
		t := time.NewTicker(interval)
		defer t.Stop()
		watchdog = t.C
	}
	var failure error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-serveErr:
			logger.Error("api server stopped", "err", err)
			failure = fmt.Errorf("api server: %w", err)
			break loop
		case name := <-partStopped:
			if ctx.Err() != nil {
				// The stop ended it: the select may see the part return
				// before it sees ctx done. A clean stop, not a failure.
				break loop
			}
			logger.Error("stopped unexpectedly; exiting so that it is restarted", "part", name)
			failure = fmt.Errorf("%s stopped unexpectedly", name)
			break loop
		case <-watchdog:
			notifyErr(sd.Watchdog(ctx))
		case <-hup:
			notifyErr(sd.Reloading(ctx))
			reloadState(store, updater, dispatcher, logger)
			next, err := reload(cfg, configPath, getenv, updater, healer, liveRegistry{reg, pullConfig}, logger)
			if err != nil {
				logger.Error("config reload failed; keeping the running config", "config", configPath, "err", err)
				dispatcher.Send(notify.Alert{Event: notify.ConfigReloadFailed, Level: notify.Warning,
					Message: "config reload failed; dockward keeps the running config", Reason: err.Error()})
			} else {
				cfg = next
				level.UnmarshalText([]byte(cfg.LogLevel))
				dispatcher.Send(notify.Alert{Event: notify.ConfigReloaded, Level: notify.Info,
					Message: fmt.Sprintf("config reloaded: %d services", len(cfg.Services))})
			}
			notifyErr(sd.Ready(ctx))
			notifyErr(sd.Status(ctx, status(cfg, store)))
		}
	}
	cancel()
	notifyErr(sd.Stopping(context.WithoutCancel(ctx)))
	logger.Info("stopping: no new deploys; waiting for deploys in flight")
	wg.Wait()
	if err := store.Flush(); err != nil {
		logger.Error("write state file at stop; what it missed is lost", "err", err)
	}
	shutdownCtx, cancelShutdown := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancelShutdown()
	srv.Shutdown(shutdownCtx)
	dispatcher.Send(notify.Alert{Event: notify.Stopping, Level: notify.Info, Message: "dockward stopping"})
	stopNotify()
	notifyWG.Wait()
	logger.Info("stopped")
	return failure
}

// reload validates the config file again and applies what can change while
// running: services, intervals, heal settings and the log level. Settings
// that need a restart are reported and keep their running values.
// liveRegistry is what a reload updates when the registry password changes:
// the client's credentials and compose's config.json (nil when compose
// does not use one of Dockward's own).
type liveRegistry struct {
	client *registry.Client
	pull   *composeConfig
}

func reload(running *config.Config, path string, getenv func(string) string, u *watcher.Updater, h *watcher.Healer, live liveRegistry, logger *slog.Logger) (*config.Config, error) {
	next, err := loadFull(path, getenv)
	if err != nil {
		return nil, err
	}
	var fixed []string
	if next.API != running.API {
		fixed = append(fixed, "api")
	}
	if next.Registry.URL != running.Registry.URL || next.Registry.Timeout != running.Registry.Timeout {
		fixed = append(fixed, "registry.url/timeout")
	}
	if next.Registry.EventsToken != running.Registry.EventsToken || next.Registry.EventsTokenFile != running.Registry.EventsTokenFile {
		fixed = append(fixed, "registry.events_token")
		next.Registry.EventsToken, next.Registry.EventsTokenFile = running.Registry.EventsToken, running.Registry.EventsTokenFile
	}
	// The password (inline or in its file) changes live; where credentials
	// come from and TLS need a restart: compose's environment is set at start.
	nr, rr := next.Registry, running.Registry
	if (nr.Username == "") != (rr.Username == "") || nr.DockerConfig != rr.DockerConfig || nr.CAFile != rr.CAFile || nr.InsecureSkipVerify != rr.InsecureSkipVerify {
		fixed = append(fixed, "registry credentials source and TLS")
		next.Registry.Username, next.Registry.Password, next.Registry.PasswordFile = rr.Username, rr.Password, rr.PasswordFile
		next.Registry.DockerConfig, next.Registry.CAFile, next.Registry.InsecureSkipVerify = rr.DockerConfig, rr.CAFile, rr.InsecureSkipVerify
	}
	access, err := loadRegistryAccess(next.Registry, getenv)
	if err != nil {
		return nil, err
	}
	if next.Docker.Socket != running.Docker.Socket || next.Docker.ComposeTimeout != running.Docker.ComposeTimeout ||
		strings.Join(next.Docker.ComposeCommand, " ") != strings.Join(running.Docker.ComposeCommand, " ") {
		fixed = append(fixed, "docker")
	}
	if next.StatePath(getenv) != running.StatePath(getenv) {
		fixed = append(fixed, "state_file")
	}
	if !reflect.DeepEqual(next.Notifications, running.Notifications) {
		fixed = append(fixed, "notifications")
	}
	if len(fixed) > 0 {
		logger.Warn("config reload: these settings take effect only after a restart of dockward", "settings", strings.Join(fixed, ", "))
		next.API, next.Notifications, next.StateFile = running.API, running.Notifications, running.StateFile
		next.Registry.URL, next.Registry.Timeout = running.Registry.URL, running.Registry.Timeout
		next.Docker.Socket, next.Docker.ComposeTimeout, next.Docker.ComposeCommand = running.Docker.Socket, running.Docker.ComposeTimeout, running.Docker.ComposeCommand
	}
	if err := u.SetConfig(next); err != nil {
		return nil, err
	}
	h.SetConfig(next)
	if access.creds != nil {
		if live.pull != nil && access.static != nil {
			if err := live.pull.write(access.host, *access.static); err != nil {
				logger.Error("config reload: compose keeps pulling with the old credentials", "err", err)
			}
		}
		live.client.SetCredentials(access.creds)
		logger.Info("registry credentials read again", "registry", access.host, "credentials", access.what)
	}
	logger.Info("config reloaded", "config", path, "services", len(next.Services))
	return next, nil
}

// status is the unit's status line: systemctl status shows it.
func status(cfg *config.Config, store *state.Store) string {
	if _, paused := store.Paused(); paused {
		return fmt.Sprintf("DEPLOYS PAUSED (state file unreadable; see journal); healing %d services", len(cfg.Services))
	}
	return fmt.Sprintf("watching %d services", len(cfg.Services))
}

// logRecovery logs what opening the state file had to do and returns the
// alerts to send once the notifier runs.
func logRecovery(logger *slog.Logger, store *state.Store) []notify.Alert {
	rec := store.Recovery()
	log := logger.With("state", store.Path())
	if len(rec.TempRemoved) > 0 {
		log.Info("removed temp files of an interrupted state write", "files", rec.TempRemoved)
	}
	if rec.SetAsideErr != nil {
		log.Error("could not keep a damaged state file aside", "err", rec.SetAsideErr)
	}
	switch {
	case rec.Damaged == nil:
		return nil
	case rec.FromPrevious:
		log.Warn("state file damaged; using its previous generation (changes of the last save may be missing)",
			"err", rec.Damaged, "previous", state.PrevPath(store.Path()), "kept_aside", rec.SetAside)
		return []notify.Alert{{Event: notify.StateRecovered, Level: notify.Warning,
			Message: "state file damaged; dockward uses its previous generation, the last change may be missing",
			Reason:  rec.Damaged.Error()}}
	}
	reason, _ := store.Paused()
	log.Error("DEPLOYS PAUSED: neither the state file nor its previous generation can be read; healing, the API and metrics run. "+
		"Fix the file and reload (systemctl reload dockward), or stop dockward and run `dockward state reset -config PATH`",
		"err", rec.Damaged, "previous_err", rec.PrevDamaged, "kept_aside", rec.SetAside)
	return []notify.Alert{{Event: notify.StateUnreadable, Level: notify.Critical,
		Message: "deploys paused: the state file cannot be read, so blocked digests are unknown; healing still runs. " +
			"Fix the file and reload dockward, or stop it and run `dockward state reset`",
		Reason: reason}}
}

// reloadState reads a paused state again (SIGHUP after the operator fixed
// the file). A state that is not paused is not re-read: memory is the truth.
func reloadState(store *state.Store, updater *watcher.Updater, dispatcher *notify.Dispatcher, logger *slog.Logger) {
	if _, paused := store.Paused(); !paused {
		return
	}
	resumed, err := store.Reload()
	if err != nil {
		logger.Error("state file still unreadable; deploys stay paused", "state", store.Path(), "err", err)
		return
	}
	if !resumed {
		return
	}
	logRecovery(logger, store)
	updater.StateReloaded()
	logger.Info("state file read; deploys resume", "state", store.Path(), "services", len(store.All()))
	dispatcher.Send(notify.Alert{Event: notify.DeploysResumed, Level: notify.Info,
		Message: "state file read again; deploys resume"})
}

// apiTimeouts bound how long one client can hold the API server. A
// POST /trigger?wait=true lifts the write deadline while it waits for the
// deploy (see watcher.API) and sets a new one for its answer.
var apiTimeouts = serverTimeouts{
	readHeader: 10 * time.Second,
	read:       30 * time.Second,
	write:      30 * time.Second,
	idle:       2 * time.Minute,
}

type serverTimeouts struct{ readHeader, read, write, idle time.Duration }

// newAPIServer returns the API's HTTP server with its timeouts.
func newAPIServer(h http.Handler, t serverTimeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.readHeader,
		ReadTimeout:       t.read,
		WriteTimeout:      t.write,
		IdleTimeout:       t.idle,
	}
}

// runState is `dockward state reset -config PATH`: it replaces a state file
// that neither dockward nor its previous generation can read with an empty
// one. It refuses while a dockward runs against the same state file, and it
// leaves a readable state as it is.
func runState(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	usage := func() {
		fmt.Fprintf(stderr, "usage: dockward state reset [-config PATH]\n\n"+
			"Replaces a state file that cannot be read (nor its previous generation) with an empty state,\n"+
			"so that deploys resume. The damaged files are kept aside; blocked digests they held are no\n"+
			"longer blocked. Refused while dockward runs: stop it first. A readable state is left as it is.\n\n")
	}
	if len(args) == 0 || args[0] != "reset" {
		usage()
		if len(args) == 0 {
			return errUsage
		}
		return fmt.Errorf("unknown state command %q", args[0])
	}
	fs := flag.NewFlagSet("dockward state reset", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "path of the JSON config file")
	fs.Usage = func() { usage(); fs.PrintDefaults() }
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := config.Load(*configPath)
	if err != nil {
		return err
	}
	path := cfg.StatePath(getenv)
	reset, rec, err := state.Reset(path)
	if errors.Is(err, state.ErrLocked) {
		return fmt.Errorf("%w; stop it first (systemctl stop dockward), or fix the file and `systemctl reload dockward`", err)
	}
	if err != nil {
		return err
	}
	if len(rec.TempRemoved) > 0 {
		fmt.Fprintf(stdout, "removed temp files of an interrupted write: %s\n", strings.Join(rec.TempRemoved, ", "))
	}
	if !reset {
		if rec.FromPrevious {
			fmt.Fprintf(stdout, "%s: damaged (%v), but its previous generation %s is readable and dockward uses it; nothing to reset", path, rec.Damaged, state.PrevPath(path))
			if len(rec.SetAside) > 0 {
				fmt.Fprintf(stdout, " (damaged file kept as %s)", strings.Join(rec.SetAside, ", "))
			}
			fmt.Fprintln(stdout)
			return nil
		}
		fmt.Fprintf(stdout, "%s: readable; nothing to reset\n", path)
		return nil
	}
	fmt.Fprintf(stdout, "%s: reset to an empty state; deploys resume when dockward starts (systemctl start dockward)\n", path)
	fmt.Fprintf(stdout, "unreadable: %v\nprevious generation: %v\n", rec.Damaged, rec.PrevDamaged)
	if len(rec.SetAside) > 0 {
		fmt.Fprintf(stdout, "damaged files kept as: %s\n", strings.Join(rec.SetAside, ", "))
	}
	fmt.Fprintln(stdout, "digests blocked in the damaged files are no longer blocked: a poll may deploy one again (it is verified, and rolled back and blocked again if it fails)")
	return nil
}
