package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry/registrytest"
	"github.com/dockward/dockward/internal/state"
)

// The unit in deploy/systemd run by a real systemd: dockward installed with
// `make install` into a booted Debian machine (see machine_test.go), started
// with `systemctl enable --now`, then deployed to, reloaded, frozen for the
// watchdog and stopped mid-deploy, all under the unit's sandboxing.

// From deploy/systemd/dockward.service.
const (
	unitWatchdog     = 30 * time.Second
	unitRestartDelay = 5 * time.Second
	unitStopTimeout  = 180 * time.Second
	// The offline check in deploy/deploy_test.go fails above this.
	unitMaxExposure = 6.5
)

// machineSrv is where the machine sees the scenario's directory, with its
// compose files.
const machineSrv = "/srv/dockward-e2e"

// bootScenarioMachine boots a machine for s: the Docker socket, the docker
// CLI and its plugins (compose v2) and the scenario's directory are bound
// into it.
func bootScenarioMachine(t *testing.T, s *scenario) *machine {
	t.Helper()
	cli := "/usr/bin/docker" // Debian's docker.io
	if _, err := os.Stat(cli); err != nil {
		t.Fatalf("docker CLI: %v: install the Debian package docker.io (make deps does)", err)
	}
	socket, err := filepath.EvalSymlinks("/var/run/docker.sock")
	if err != nil {
		t.Fatalf("docker socket: %v", err)
	}
	binds := []bind{
		{host: socket, machine: "/run/docker.sock"},
		{host: cli, machine: cli, readOnly: true},
		{host: s.dir, machine: machineSrv, readOnly: true},
	}
	// The scenario removes its tags; the pushes it replaced are left
	// untagged (repository@digest) until this removes them.
	t.Cleanup(func() {
		out, _ := s.tryDocker("images", "-q", "--no-trunc", "--filter", "reference="+s.host+"/"+s.repo)
		if ids := strings.Fields(out); len(ids) > 0 {
			s.tryDocker(append([]string{"rmi", "-f"}, ids...)...)
		}
	})
	plugins := 0
	for _, dir := range []string{"/usr/local/lib/docker/cli-plugins", "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins"} {
		if _, err := os.Stat(filepath.Join(dir, "docker-compose")); err == nil {
			binds = append(binds, bind{host: dir, machine: dir, readOnly: true})
			plugins++
		}
	}
	if plugins == 0 {
		t.Fatal("no docker compose v2 plugin on this host: .ci/compose-v2 builds it (make deps runs it)")
	}
	return bootMachine(t, binds...)
}

// machineConfig is the scenario's config as the machine sees it: compose
// files under machineSrv, the state in the unit's StateDirectory (no
// state_file), info level.
func machineConfig(s *scenario) map[string]any {
	cfg := s.config()
	delete(cfg, "state_file")
	cfg["log_level"] = "info"
	cfg["services"].([]map[string]any)[0]["compose_file"] = machineSrv + "/docker-compose.yml"
	return cfg
}

func (m *machine) writeConfig(cfg map[string]any) {
	m.t.Helper()
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		m.t.Fatal(err)
	}
	m.writeFile("/etc/dockward/config.json", b, 0o600)
}

// installAndStart follows the README's "Install by hand": make install, edit
// the config, check it, then `systemctl daemon-reload && systemctl enable
// --now dockward`. It returns how long the start took.
func installAndStart(t *testing.T, s *scenario, m *machine, cfg func() map[string]any) time.Duration {
	t.Helper()
	m.install()
	for _, p := range []string{"/usr/local/bin/dockward", "/etc/systemd/system/dockward.service", "/etc/dockward/config.json"} {
		if _, err := os.Stat(m.path(p)); err != nil {
			t.Fatalf("after make install: %v", err)
		}
	}
	installed, err := os.ReadFile(m.path("/etc/systemd/system/dockward.service"))
	if err != nil {
		t.Fatal(err)
	}
	if shipped, err := os.ReadFile("../../deploy/systemd/dockward.service"); err != nil || string(shipped) != string(installed) {
		t.Fatalf("make install wrote a unit that differs from deploy/systemd/dockward.service (%v)", err)
	}
	for attempt := 1; ; attempt++ {
		s.apiPort = freePort(t)
		s.api = fmt.Sprintf("http://127.0.0.1:%d", s.apiPort)
		m.writeConfig(cfg())
		if out := m.must("dockward", "check", "-config", "/etc/dockward/config.json"); !strings.Contains(out, "config OK") {
			t.Fatalf("dockward check in the machine: %s", out)
		}
		m.must("systemctl", "daemon-reload")
		began := time.Now()
		out, err := m.exec("systemctl", "enable", "--now", "dockward")
		took := time.Since(began)
		if err == nil {
			return took
		}
		// Another process may take the free port before dockward binds it.
		if attempt < 3 && strings.Contains(m.journalText(), "address already in use") {
			t.Logf("API port %d was taken before dockward bound it; trying another", s.apiPort)
			m.must("systemctl", "reset-failed", "dockward")
			continue
		}
		t.Fatalf("systemctl enable --now dockward: %v\n%s", err, out)
	}
}

// mainPID is dockward's PID inside the machine.
func (m *machine) mainPID() string {
	m.t.Helper()
	pid := m.show("MainPID")["MainPID"]
	if pid == "" || pid == "0" {
		m.t.Fatalf("dockward.service has no main process: %v", m.show("ActiveState", "SubState", "Result"))
	}
	return pid
}

// machineState reads dockward's state file in the machine.
func (m *machine) machineState() state.File {
	m.t.Helper()
	b, err := os.ReadFile(m.path("/var/lib/dockward/state.json"))
	if err != nil {
		m.t.Fatalf("read the state file: %v", err)
	}
	var f state.File
	if err := json.Unmarshal(b, &f); err != nil {
		m.t.Fatalf("decode the state file: %v\n%s", err, b)
	}
	return f
}

// dockwardLines returns the journal records that dockward wrote itself
// (not systemd's lines about the unit), with extra journalctl arguments.
func (m *machine) dockwardLines(args ...string) []journalEntry {
	var out []journalEntry
	for _, e := range m.journal(args...) {
		if e.Identifier == "dockward" {
			out = append(out, e)
		}
	}
	return out
}

// in returns s for a subtest: its failures are the subtest's.
func (s *scenario) in(t *testing.T) *scenario {
	c := *s
	c.t = t
	return &c
}

// in returns m for a subtest: its failures are the subtest's.
func (m *machine) in(t *testing.T) *machine {
	c := *m
	c.t = t
	return &c
}

var exposureRE = regexp.MustCompile(`Overall exposure level for dockward\.service: ([0-9.]+)`)

func exposure(t *testing.T, out string) float64 {
	t.Helper()
	m := exposureRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in systemd-analyze security output:\n%s", out)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// The unit's life on one machine: install and start, sandboxed deploys, a
// reload, a stop during a rollback, and what reaches the journal.
func TestUnitInMachine(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "sdunit")
	s.pollInterval = 3600 // deploys are triggered through the API
	s.grace = 6
	live := s.push(healthyImage)
	s.up()
	m := bootScenarioMachine(t, s)
	startTook := installAndStart(t, s, m, func() map[string]any { return machineConfig(s) })

	if !t.Run("start", func(t *testing.T) {
		s, m := s.in(t), m.in(t)
		p := m.show("ActiveState", "SubState", "UnitFileState", "Type", "StatusText", "WatchdogUSec",
			"ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
		// Type=notify: active means READY=1 arrived.
		if p["Type"] != "notify" || p["ActiveState"] != "active" || p["SubState"] != "running" || p["UnitFileState"] != "enabled" {
			t.Fatalf("after enable --now: %v, want Type=notify active running enabled", p)
		}
		if p["StatusText"] != "watching 1 services" {
			t.Errorf("StatusText = %q, want %q", p["StatusText"], "watching 1 services")
		}
		if p["WatchdogUSec"] != "30s" {
			t.Errorf("WatchdogUSec = %q, want 30s", p["WatchdogUSec"])
		}
		// READY=1 means serving: no retry.
		if code, body := s.request("GET", "/health"); code != 200 {
			t.Errorf("GET /health right after the start = %d %s", code, body)
		}
		execAt, _ := strconv.ParseInt(p["ExecMainStartTimestampMonotonic"], 10, 64)
		readyAt, _ := strconv.ParseInt(p["ActiveEnterTimestampMonotonic"], 10, 64)
		t.Logf("start to READY=1: %v (systemd's timestamps); systemctl enable --now took %v",
			time.Duration(readyAt-execAt)*time.Microsecond, startTook.Round(time.Millisecond))
	}) {
		t.FailNow()
	}

	t.Run("security", func(t *testing.T) {
		m := m.in(t)
		live := exposure(t, m.must("systemd-analyze", "security", "--no-pager", "dockward"))
		offline := exposure(t, m.must("systemd-analyze", "security", "--no-pager", "--offline=yes", "/etc/systemd/system/dockward.service"))
		t.Logf("exposure: %.1f running, %.1f offline", live, offline)
		if live != offline || live > unitMaxExposure {
			t.Errorf("systemd-analyze security dockward = %.1f, want the offline check's %.1f (at most %.1f)", live, offline, unitMaxExposure)
		}
	})

	var bad string
	t.Run("deploy and rollback under the sandbox", func(t *testing.T) {
		s, m := s.in(t), m.in(t)
		// The running dockward sees "/" read-only and only its state
		// directory writable.
		mounts := m.must("cat", "/proc/"+m.mainPID()+"/mountinfo")
		if !mountedAs(mounts, "/", "ro") || !mountedAs(mounts, "/var/lib/dockward", "rw") {
			t.Fatalf("dockward's mounts: want / read-only and /var/lib/dockward writable (ProtectSystem=strict, StateDirectory=):\n%s", mounts)
		}
		v2 := s.push(healthyImage)
		if r := s.trigger(); r.Outcome != "deployed" || r.Digest != v2 {
			t.Fatalf("trigger after a good push = %+v, want deployed %s", r, v2)
		}
		if ok, detail := s.runs(v2); !ok {
			t.Fatalf("after the good push: %s", detail)
		}
		bad = s.push(unhealthyImage)
		if r := s.trigger(); r.Outcome != "rolled_back" || r.Digest != bad {
			t.Fatalf("trigger after a bad push = %+v, want rolled_back %s", r, bad)
		}
		s.waitFor(30*time.Second, "v2 to run again after the rollback", func() (bool, string) { return s.runs(v2) })
		if b := s.blocked(); b != bad {
			t.Errorf("GET /blocked = %q, want %s", b, bad)
		}
		if st := m.machineState().Services[s.name]; st == nil || st.Blocked == nil || st.Blocked.Digest != bad {
			t.Errorf("state file in /var/lib/dockward: %s = %+v, want %s blocked", s.name, st, bad)
		}
		if r := s.trigger(); r.Outcome != "blocked" || r.Digest != bad {
			t.Errorf("trigger after the rollback = %+v, want blocked %s", r, bad)
		}
		live = v2
	})

	t.Run("reload", func(t *testing.T) {
		s, m := s.in(t), m.in(t)
		pid := m.mainPID()
		extra := filepath.Join(s.dir, "extra", "docker-compose.yml")
		if err := os.MkdirAll(filepath.Dir(extra), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(extra, []byte("services:\n  app:\n    image: "+s.ref("latest")+"\n    network_mode: none\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		withExtra := func(composeFile string) map[string]any {
			cfg := machineConfig(s)
			cfg["services"] = append(cfg["services"].([]map[string]any), map[string]any{
				"name": "sdunit-extra", "compose_file": composeFile, "compose_project": s.project + "-extra", "auto_update": false,
			})
			return cfg
		}
		healthServices := func() (bool, string) {
			code, body := s.request("GET", "/health")
			var h struct{ Services int }
			json.Unmarshal([]byte(body), &h)
			return code == 200 && h.Services == 2, body
		}

		m.writeConfig(withExtra(machineSrv + "/extra/docker-compose.yml"))
		began := time.Now()
		m.must("systemctl", "reload", "dockward")
		m.waitFor(20*time.Second, "/health to count 2 services after the reload", healthServices)
		t.Logf("valid reload: applied %v after systemctl reload began", time.Since(began).Round(time.Millisecond))
		m.waitFor(10*time.Second, "the status text to count 2 services", func() (bool, string) {
			p := m.show("StatusText", "ActiveState")
			return p["StatusText"] == "watching 2 services" && p["ActiveState"] == "active", fmt.Sprint(p)
		})

		// A relative compose_file does not validate: the reload fails,
		// dockward is not even signalled and keeps its 2 services.
		m.writeConfig(withExtra("extra/docker-compose.yml"))
		out, err := m.exec("systemctl", "reload", "dockward")
		if err == nil {
			t.Errorf("systemctl reload with an invalid config succeeded, want a failure:\n%s", out)
		}
		p := m.show("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
		if p["ActiveState"] != "active" || p["SubState"] != "running" || p["MainPID"] != pid || p["NRestarts"] != "0" {
			t.Errorf("after the invalid reload: %v, want active running, MainPID %s, no restart", p, pid)
		}
		if ok, body := healthServices(); !ok {
			t.Errorf("/health after the invalid reload = %s, want the 2 running services", body)
		}
		refused := 0
		for _, e := range m.dockwardLines() {
			if strings.Contains(e.Message, "config reload refused") && strings.Contains(e.Message, "services[1].compose_file") {
				refused++
				if e.Priority != 3 {
					t.Errorf("journal priority %d for %q, want 3 (err)", e.Priority, e.Message)
				}
			}
		}
		if refused != 1 {
			t.Errorf("%d journal lines say the reload was refused naming services[1].compose_file, want 1", refused)
		}
		if b := s.blocked(); b != bad {
			t.Errorf("blocked after the reloads = %q, want %s kept", b, bad)
		}
		// The file again says what runs, for the starts below.
		m.writeConfig(withExtra(machineSrv + "/extra/docker-compose.yml"))
	})

	t.Run("stop during a rollback", func(t *testing.T) {
		s, m := s.in(t), m.in(t)
		stuck, _ := s.deployStuck()
		sent := time.Now()
		out, err := m.exec("systemctl", "stop", "dockward")
		took := time.Since(sent)
		t.Logf("systemctl stop during the verification of a bad push: %v (grace %vs, TimeoutStopSec %v)", took.Round(10*time.Millisecond), s.grace, unitStopTimeout)
		if err != nil {
			t.Fatalf("systemctl stop: %v\n%s", err, out)
		}
		if took >= unitStopTimeout {
			t.Errorf("the stop took %v, not within TimeoutStopSec=%v", took, unitStopTimeout)
		}
		p := m.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
		// ExecMainCode 1 is CLD_EXITED: an exit, not a signal.
		if p["ActiveState"] != "inactive" || p["Result"] != "success" || p["ExecMainCode"] != "1" || p["ExecMainStatus"] != "0" {
			t.Errorf("after the stop: %v, want inactive, success, exited with status 0", p)
		}
		if ok, detail := s.runs(live); !ok {
			t.Errorf("after the stop: %s", detail)
		}
		st := m.machineState().Services[s.name]
		if st == nil || st.Blocked == nil || st.Blocked.Digest != stuck || st.Deploy != nil {
			t.Errorf("state file after the stop: %s = %+v, want %s blocked and no deploy in flight", s.name, st, stuck)
		}
		// In the journal: the stop began, then the rollback ran to its end,
		// then systemd saw the unit stop.
		var stopping, finished, stopped int64
		for _, e := range m.journal() {
			switch {
			case strings.Contains(e.Message, "stopping: no new deploys") && stopping == 0:
				stopping = e.Monotonic
			case strings.Contains(e.Message, "deploy finished") && strings.Contains(e.Message, "outcome=rolled_back") && strings.Contains(e.Message, stuck):
				finished = e.Monotonic
			case e.Identifier == "systemd" && strings.HasPrefix(e.Message, "Stopped dockward.service"):
				stopped = e.Monotonic
			}
		}
		if stopping == 0 || finished <= stopping || stopped <= finished {
			t.Errorf("journal order: stop began at %d, rollback finished at %d, unit stopped at %d (µs); want them in that order", stopping, finished, stopped)
		}
	})

	// KillMode=mixed: the SIGTERM of a stop reaches dockward only, not a
	// compose run in flight, so a deploy is not cut in half. The old
	// container ignores its stop signal here, so compose up takes
	// stop_grace_period to replace it: the stop lands inside that run.
	t.Run("stop during compose up", func(t *testing.T) {
		s, m := s.in(t), m.in(t)
		y := fmt.Sprintf("version: \"2.4\"\nservices:\n  app:\n    image: %s\n    network_mode: none\n    stop_signal: SIGWINCH\n    stop_grace_period: 10s\n", s.ref("latest"))
		if err := os.WriteFile(s.compose, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
		// The stop signal is the running container's: recreate it.
		compose(t, "-f", s.compose, "-p", s.project, "up", "-d")
		m.must("systemctl", "start", "dockward")
		v3 := s.push(healthyImage)
		s.triggerAsync()
		m.waitFor(60*time.Second, "docker compose up to run in dockward.service", func() (bool, string) {
			out, _ := m.exec("systemctl", "status", "--no-pager", "--full", "dockward")
			return regexp.MustCompile(`docker compose .* up `).MatchString(out), out
		})
		sent := time.Now()
		out, err := m.exec("systemctl", "stop", "dockward")
		t.Logf("systemctl stop during docker compose up: %v (stop_grace_period 10s)", time.Since(sent).Round(10*time.Millisecond))
		if err != nil {
			t.Fatalf("systemctl stop: %v\n%s", err, out)
		}
		p := m.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
		if p["ActiveState"] != "inactive" || p["Result"] != "success" || p["ExecMainCode"] != "1" || p["ExecMainStatus"] != "0" {
			t.Errorf("after the stop: %v, want inactive, success, exited with status 0", p)
		}
		deployed := 0
		for _, e := range m.dockwardLines() {
			if strings.Contains(e.Message, "deploy finished") && strings.Contains(e.Message, v3) {
				deployed++
				if !strings.Contains(e.Message, "outcome=deployed") {
					t.Errorf("the deploy interrupted by the stop ended %q, want outcome=deployed (compose up must not get the SIGTERM)", e.Message)
				}
			}
		}
		if deployed != 1 {
			t.Errorf("%d lines say the deploy of %s finished, want 1", deployed, v3)
		}
		if ok, detail := s.runs(v3); !ok {
			t.Errorf("after the stop: %s", detail)
		}
	})

	// A start that fails says why, at priority err.
	t.Run("failed start", func(t *testing.T) {
		m := m.in(t)
		good := machineConfig(s)
		bad := machineConfig(s)
		bad["services"].([]map[string]any)[0]["compose_file"] = "docker-compose.yml"
		m.writeConfig(bad)
		if out, err := m.exec("systemctl", "start", "dockward"); err == nil {
			t.Errorf("systemctl start with an invalid config succeeded:\n%s", out)
		}
		// The error spans lines; each is a journal record of its own.
		var said []string
		for _, e := range m.dockwardLines("-p", "err") {
			said = append(said, e.Message)
		}
		if text := strings.Join(said, "\n"); !strings.Contains(text, "dockward: config /etc/dockward/config.json: invalid config:\n  services[0].compose_file") {
			t.Errorf("journalctl -p err does not say why the start failed (services[0].compose_file):\n%s", text)
		}
		m.writeConfig(good)
		m.must("systemctl", "reset-failed", "dockward")
	})

	t.Run("journal priorities", func(t *testing.T) {
		m := m.in(t)
		all := m.dockwardLines()
		levels := map[string]int{}
		for _, e := range all {
			if lv := logLevel(e.Message); lv != "" {
				levels[lv]++
			}
		}
		t.Logf("dockward's journal lines by level: %v", levels)
		for _, tt := range []struct {
			priority string
			levels   []string
			must     []string // lines that must be there
		}{
			{"warning", []string{"WARN", "ERROR"}, []string{"new version failed; rolling back", "config reload refused", "dockward: config"}},
			{"err", []string{"ERROR"}, []string{"new version failed; rolling back", "config reload refused", "dockward: config"}},
		} {
			got := m.dockwardLines("-p", tt.priority)
			want := 0
			for _, lv := range tt.levels {
				want += levels[lv]
			}
			for _, e := range got {
				if !slices.Contains(tt.levels, logLevel(e.Message)) {
					t.Errorf("journalctl -p %s shows %q (priority %d), want only level %v", tt.priority, e.Message, e.Priority, tt.levels)
				}
			}
			if len(got) != want {
				t.Errorf("journalctl -p %s shows %d of dockward's lines, want its %d lines of level %v", tt.priority, len(got), want, tt.levels)
			}
			for _, must := range tt.must {
				found := false
				for _, e := range got {
					found = found || strings.Contains(e.Message, must)
				}
				if !found {
					t.Errorf("journalctl -p %s has no line %q", tt.priority, must)
				}
			}
		}
		if levels["INFO"] == 0 || levels["WARN"] == 0 || levels["ERROR"] == 0 {
			t.Errorf("want INFO, WARN and ERROR lines in the journal to tell apart, got %v", levels)
		}
	})
}

var levelRE = regexp.MustCompile(`^level=([A-Z]+) `)

// logLevel is the slog level at the start of a journal message: ERROR for
// the error dockward exits with ("dockward: ...", then one line per invalid
// field), "" for other lines.
func logLevel(msg string) string {
	if m := levelRE.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	if strings.HasPrefix(msg, "dockward: ") || strings.HasPrefix(msg, "  services[") {
		return "ERROR"
	}
	return ""
}

// mountedAs reports whether /proc/PID/mountinfo has a mount at point whose
// mount options start with opt ("ro" or "rw"); the last one wins.
func mountedAs(mountinfo, point, opt string) bool {
	got := ""
	for line := range strings.Lines(mountinfo) {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == point {
			got = strings.SplitN(f[5], ",", 2)[0]
		}
	}
	return got == opt
}

// The watchdog: a dockward that stops answering (SIGSTOP) is killed by
// systemd and restarted, and the new one keeps the block and the heal
// cooldown that the old one wrote down.
func TestUnitWatchdogInMachine(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "sdwatchdog")
	s.pollInterval = 3600
	s.grace = 5
	s.service = map[string]any{"auto_heal": true, "heal_cooldown": 600, "heal_verify_delay": 2}
	v1 := s.push(healthyImage)
	s.up()
	s.waitFor(30*time.Second, "v1 to be healthy", func() (bool, string) { return s.runs(v1) })
	m := bootScenarioMachine(t, s)
	installAndStart(t, s, m, func() map[string]any { return machineConfig(s) })

	bad := s.push(unhealthyImage)
	if r := s.trigger(); r.Outcome != "rolled_back" || r.Digest != bad {
		t.Fatalf("trigger after a bad push = %+v, want rolled_back %s", r, bad)
	}
	s.waitFor(30*time.Second, "v1 to run again after the rollback", func() (bool, string) { return s.runs(v1) })
	id := s.container()
	docker(t, "exec", id, "/app", "-sick")
	// The heal state is kept per container, by compose service and number.
	const key = "app-1"
	m.waitFor(60*time.Second, "a heal restart that leaves the container healthy", func() (bool, string) {
		st := m.machineState().Services[s.name]
		ok, detail := s.runs(v1)
		return st != nil && !st.Containers[key].LastRestart.IsZero() && ok, fmt.Sprintf("state %+v; %s", st, detail)
	})
	before := m.machineState().Services[s.name]
	if before.Blocked == nil || before.Blocked.Digest != bad {
		t.Fatalf("state before the freeze: %+v, want %s blocked", before, bad)
	}

	oldPID := m.mainPID()
	frozen := time.Now()
	m.must("systemctl", "kill", "--kill-whom=main", "--signal=SIGSTOP", "dockward")
	var newPID string
	m.waitFor(unitWatchdog+unitRestartDelay+60*time.Second, "systemd to restart the frozen dockward", func() (bool, string) {
		p := m.show("ActiveState", "SubState", "MainPID", "NRestarts")
		newPID = p["MainPID"]
		return p["NRestarts"] == "1" && p["ActiveState"] == "active" && p["SubState"] == "running" && newPID != oldPID, fmt.Sprint(p)
	})
	restarted := time.Since(frozen)
	t.Logf("SIGSTOP to running again: %v (WatchdogSec=%v, RestartSec=%v)", restarted.Round(10*time.Millisecond), unitWatchdog, unitRestartDelay)
	// The watchdog fires WatchdogSec after the last ping (sent every
	// WatchdogSec/2), then systemd waits RestartSec; 15s more for the abort
	// and the new start.
	if limit := unitWatchdog + unitRestartDelay + 15*time.Second; restarted > limit {
		t.Errorf("restarted %v after the freeze, want within %v", restarted, limit)
	}
	var watchdog, result bool
	for _, e := range m.journal() {
		watchdog = watchdog || (e.Identifier == "systemd" && strings.Contains(e.Message, "Watchdog timeout"))
		result = result || (e.Identifier == "systemd" && strings.Contains(e.Message, "Failed with result 'watchdog'"))
	}
	if !watchdog || !result {
		t.Errorf("journal: watchdog timeout %v, failed with result 'watchdog' %v; want both", watchdog, result)
	}

	// What the frozen dockward wrote down is still there and in force.
	after := m.machineState().Services[s.name]
	if after == nil || after.Blocked == nil || after.Blocked.Digest != bad || !after.Containers[key].LastRestart.Equal(before.Containers[key].LastRestart) {
		t.Errorf("state after the restart: %+v, want the block of %s and the heal restart of %v", after, bad, before.Containers[key].LastRestart)
	}
	if b := s.blocked(); b != bad {
		t.Errorf("GET /blocked after the restart = %q, want %s", b, bad)
	}
	if got := s.serviceMetric("watcher_service_blocked"); got != 1 {
		t.Errorf("watcher_service_blocked after the restart = %v, want 1", got)
	}
	// Sick again inside the heal cooldown: the new dockward leaves it be.
	startedAt := s.startedAt(id)
	docker(t, "exec", id, "/app", "-sick")
	m.waitFor(30*time.Second, "the restarted dockward to respect the heal cooldown", func() (bool, string) {
		for _, e := range m.dockwardLines() {
			if strings.Contains(e.Message, "inside the heal cooldown") {
				return true, ""
			}
		}
		return false, s.health()
	})
	if at := s.startedAt(id); at != startedAt {
		t.Errorf("the container was restarted inside the heal cooldown after dockward's restart")
	}
}

// Registry credentials through LoadCredential=: the password stays in a
// root-only file that systemd hands to dockward alone under
// $CREDENTIALS_DIRECTORY. The digest check and compose's pull (the image is
// removed from the engine first) both authenticate with it, compose's
// config.json lives in the unit's RuntimeDirectory, and the password is in
// no journal record.
func TestUnitCredentialsInMachine(t *testing.T) {
	t.Parallel()
	const user, password = "deployer", "loadcredential-pa55-never-logged"
	reg := registrytest.StartWith(t, registrytest.Options{Htpasswd: registrytest.Htpasswd(t, t.TempDir(), user, password)})
	s := newScenarioAt(t, "sdcreds", reg.URL)
	s.pollInterval = 3600
	s.dockerEnv = []string{"DOCKER_CONFIG=" + dockerLogin(t, reg.Host, user, password)}
	s.registryCfg = map[string]any{"username": user, "password_file": "$CREDENTIALS_DIRECTORY/registry-password"}
	s.push(healthyImage)
	s.up()
	m := bootScenarioMachine(t, s)
	m.writeFile("/etc/dockward/registry-password", []byte(password+"\n"), 0o600)
	m.writeFile("/etc/systemd/system/dockward.service.d/credentials.conf",
		[]byte("[Service]\nLoadCredential=registry-password:/etc/dockward/registry-password\n"), 0o644)
	installAndStart(t, s, m, func() map[string]any { return machineConfig(s) })

	access := ""
	for _, e := range m.dockwardLines() {
		if strings.Contains(e.Message, `msg="registry access"`) {
			access = e.Message
		}
	}
	if !strings.Contains(access, `credentials="user \"deployer\" (registry.password_file)"`) || !strings.Contains(access, "compose_docker_config=/run/dockward/docker") {
		t.Errorf("start line %q: want the credentials from registry.password_file and compose's config in /run/dockward/docker", access)
	}
	if got := strings.Fields(m.must("stat", "-c", "%a", "/run/dockward/docker", "/run/dockward/docker/config.json")); !slices.Equal(got, []string{"700", "600"}) {
		t.Errorf("modes of compose's docker config folder and file = %v, want 700 and 600", got)
	}

	v2 := s.push(healthyImage)
	s.docker("rmi", s.ref("latest")) // so that compose must pull it, with the password
	if r := s.trigger(); r.Outcome != "deployed" || r.Digest != v2 {
		t.Fatalf("trigger after a push to the private registry = %+v, want deployed %s", r, v2)
	}
	if ok, detail := s.runs(v2); !ok {
		t.Errorf("after the deploy: %s", detail)
	}
	m.must("systemctl", "stop", "dockward")
	if out, err := m.exec("stat", "/run/dockward"); err == nil {
		t.Errorf("/run/dockward is still there after the stop:\n%s", out)
	}
	// Every field of every record, of every unit.
	m.must("journalctl", "--sync")
	if all := m.must("journalctl", "--no-pager", "-o", "json"); strings.Contains(all, password) {
		t.Errorf("the machine's journal holds the registry password")
	}
	noSecrets(t, s, password)
}
