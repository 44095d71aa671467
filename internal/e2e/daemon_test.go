package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/state"
)

// The daemon side of dockward: what a stop, a kill, a reload and systemd's
// notification and journal protocols do to a running dockward.

// A SIGTERM while a bad version is being verified does not abandon it: the
// deploy runs to its verdict, rolls back, and only then does dockward exit,
// cleanly, with the digest blocked and no deploy left in flight.
func TestSigtermDuringDeployRollsBackThenExits(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "sigterm")
	s.pollInterval = 3600
	s.grace = 6
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	bad, _ := s.deployStuck()
	if !strings.Contains(s.proc.logs(), "new digest; deploying") {
		t.Fatalf("the bad image runs but dockward did not log a deploy:\n%s", s.proc.logs())
	}

	sent := time.Now()
	if err := s.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// While it stops, it starts nothing new.
	s.waitFor(10*time.Second, "a trigger to be refused with 503 while stopping", func() (bool, string) {
		code, body := s.request("POST", "/trigger/"+s.name)
		return code == 503, fmt.Sprintf("%d %s", code, body)
	})
	err := s.proc.wait(60 * time.Second)
	took := time.Since(sent)
	t.Logf("SIGTERM to exit: %v (grace %vs)", took.Round(10*time.Millisecond), s.grace)
	if err != nil {
		t.Fatalf("dockward exit after SIGTERM: %v, want status 0\n%s", err, s.proc.logs())
	}

	logs := s.proc.logs()
	stopping := strings.Index(logs, "stopping: no new deploys")
	rolling := strings.Index(logs, "new version failed; rolling back")
	if stopping < 0 || rolling < 0 || rolling < stopping {
		t.Errorf("want the rollback to start after the stop began (stop at %d, rollback at %d in the log):\n%s", stopping, rolling, logs)
	}
	if n := countLines(logs, "deploy finished", "outcome=rolled_back", bad); n != 1 {
		t.Errorf("%d lines say the deploy of %s finished rolled back, want 1:\n%s", n, bad, logs)
	}
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after the stop: %s", detail)
	}
	st := s.state().Services[s.name]
	if st == nil || st.Blocked == nil || st.Blocked.Digest != bad {
		t.Errorf("state file service %s = %+v, want %s blocked", s.name, st, bad)
	}
	if st != nil && st.Deploy != nil {
		t.Errorf("state file keeps a deploy record %+v after a graceful stop, want none", st.Deploy)
	}
}

// A dockward killed with SIGKILL half way through a deploy leaves a deploy
// record; the next start finds it, verifies what runs, and rolls back.
func TestKill9MidDeployIsResumedOnStart(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "kill9")
	s.pollInterval = 3600
	s.grace = 20
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	bad, badID := s.deployStuck()
	if err := s.proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	err := s.proc.wait(10 * time.Second)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("dockward exit after SIGKILL: %v, want killed by SIGKILL", err)
	}
	first := s.proc.logs()
	s.proc = nil
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("output of the killed dockward:\n%s", first)
		}
	})
	if strings.Contains(first, "deploy finished") {
		t.Fatalf("the deploy finished before the kill; the test needs it in flight:\n%s", first)
	}
	st := s.state().Services[s.name]
	if st == nil || st.Deploy == nil || st.Deploy.Digest != bad {
		t.Fatalf("state file after SIGKILL: service %s = %+v, want a deploy record of %s", s.name, st, bad)
	}
	if st.Deploy.RollbackImage == "" {
		t.Errorf("deploy record %+v has no rollback image", st.Deploy)
	}
	if ok, detail := s.runsImage(badID); !ok {
		t.Fatalf("after SIGKILL: %s", detail)
	}

	restarted := time.Now()
	s.start()
	s.waitFor(time.Duration(s.grace)*time.Second+60*time.Second, "the interrupted deploy to be rolled back", func() (bool, string) {
		st := s.state().Services[s.name]
		return st != nil && st.Deploy == nil && st.Blocked != nil && st.Blocked.Digest == bad, fmt.Sprintf("state %+v", st)
	})
	recovered := time.Since(restarted)
	t.Logf("kill -9 recovery: start to rolled back and blocked in %v (grace %vs)", recovered.Round(10*time.Millisecond), s.grace)
	if ok, detail := s.runs(v1); !ok {
		t.Errorf("after the resumed deploy: %s", detail)
	}
	if b := s.blocked(); b != bad {
		t.Errorf("GET /blocked lists %q, want %s", b, bad)
	}
	logs := s.proc.logs()
	if n := countLines(logs, "level=WARN", "the previous run stopped during a deploy", bad); n != 1 {
		t.Errorf("%d lines say an interrupted deploy of %s is resumed, want 1:\n%s", n, bad, logs)
	}
	if n := countLines(logs, "deploy finished", "outcome=rolled_back", "interrupted deploy"); n != 1 {
		t.Errorf("%d lines say the interrupted deploy was rolled back, want 1:\n%s", n, logs)
	}
	if got := s.serviceMetric("watcher_service_blocked"); got != 1 {
		t.Errorf("watcher_service_blocked = %v, want 1", got)
	}
	s.waitFor(10*time.Second, "blocked and rollback notifications", func() (bool, string) {
		ok := len(s.hooks.events("blocked")) == 1 && len(s.hooks.events("rollback")) == 1
		return ok, fmt.Sprintf("blocked %+v, rollback %+v", s.hooks.events("blocked"), s.hooks.events("rollback"))
	})
	// The alert names the version it went back to, as after any rollback.
	if rb := s.hooks.events("rollback")[0]; rb.Digest != bad || !strings.HasSuffix(rb.Message, "rolled back to "+v1[:len("sha256:")+12]) {
		t.Errorf("rollback notification = %+v, want digest %s and a message ending in the v1 digest %s", rb, bad, v1[:len("sha256:")+12])
	}
	if r := s.trigger(); r.Outcome != "blocked" || r.Digest != bad {
		t.Errorf("trigger after the resume = %+v, want blocked %s", r, bad)
	}
}

// SIGHUP applies a new config without losing state; a config that does not
// validate is refused, reported, and the running one kept.
func TestSighupReloadKeepsStateAndRejectsBadConfig(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "reload")
	s.pollInterval = 3600
	s.grace = 5
	s.push(healthyImage)
	s.up()
	s.start()
	bad := s.push(unhealthyImage)
	if r := s.trigger(); r.Outcome != "rolled_back" || r.Digest != bad {
		t.Fatalf("trigger = %+v, want rolled_back of %s", r, bad)
	}

	const extra = "reload-extra"
	extraCompose := filepath.Join(s.dir, "extra", "docker-compose.yml")
	if err := os.MkdirAll(filepath.Dir(extraCompose), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extraCompose, []byte("version: \"2.4\"\nservices:\n  app:\n    image: "+s.ref("latest")+"\n    network_mode: none\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	withExtra := func(composeFile string) map[string]any {
		cfg := s.config()
		cfg["services"] = append(cfg["services"].([]map[string]any), map[string]any{
			"name":            extra,
			"compose_file":    composeFile,
			"compose_project": s.project + "-extra",
			"auto_update":     false,
		})
		return cfg
	}
	s.writeConfig(withExtra(extraCompose))
	s.signal(syscall.SIGHUP)
	s.waitFor(20*time.Second, "/health to report 2 services", func() (bool, string) {
		n, body := s.healthServices()
		return n == 2, body
	})
	for _, series := range []string{
		`watcher_updates_total{service="` + extra + `"}`,
		`watcher_rollbacks_total{service="` + extra + `"}`,
		`watcher_service_blocked{service="` + extra + `"}`,
	} {
		if got := s.metric(series); got != 0 {
			t.Errorf("%s = %v after the reload, want 0 (-1 means absent)", series, got)
		}
	}
	if b := s.blocked(); b != bad {
		t.Errorf("blocked after the reload = %q, want %s kept", b, bad)
	}
	if got := s.serviceMetric("watcher_service_blocked"); got != 1 {
		t.Errorf("watcher_service_blocked of %s after the reload = %v, want 1", s.name, got)
	}
	s.waitFor(10*time.Second, "a config_reloaded notification", func() (bool, string) {
		return len(s.hooks.events("config_reloaded")) == 1, fmt.Sprintf("%+v", s.hooks.events("config_reloaded"))
	})

	// A relative compose_file does not validate.
	s.writeConfig(withExtra("extra/docker-compose.yml"))
	s.signal(syscall.SIGHUP)
	s.waitFor(20*time.Second, "the reload failure to be logged", func() (bool, string) {
		return strings.Contains(s.proc.logs(), "config reload failed"), "no `config reload failed` line yet"
	})
	if n := countLines(s.proc.logs(), "level=ERROR", "config reload failed", "services[1].compose_file"); n != 1 {
		t.Errorf("%d error lines name the invalid field services[1].compose_file, want 1:\n%s", n, s.proc.logs())
	}
	if exited, err := s.proc.exited(); exited {
		t.Fatalf("dockward exited after a bad config: %v\n%s", err, s.proc.logs())
	}
	if n, body := s.healthServices(); n != 2 {
		t.Errorf("/health after the failed reload = %s, want the 2 running services", body)
	}
	if b := s.blocked(); b != bad {
		t.Errorf("blocked after the failed reload = %q, want %s kept", b, bad)
	}
	s.waitFor(10*time.Second, "a config_reload_failed notification", func() (bool, string) {
		got := s.hooks.events("config_reload_failed")
		return len(got) == 1, fmt.Sprintf("%+v", got)
	})
	if got := s.hooks.events("config_reload_failed")[0]; got.Level != "warning" || !strings.Contains(got.Reason, "compose_file") {
		t.Errorf("config_reload_failed notification = %+v, want level warning and a reason naming compose_file", got)
	}
	if n := len(s.hooks.events("config_reloaded")); n != 1 {
		t.Errorf("%d config_reloaded notifications, want 1 (the failed reload must not send one)", n)
	}
	s.stop()
}

// Under systemd (Type=notify, WatchdogSec=, stderr to the journal) dockward
// says READY=1 once its API answers, pings the watchdog, brackets a reload
// with RELOADING=1 and READY=1, says STOPPING=1 on SIGTERM, and writes log
// lines with a syslog priority prefix and no timestamp.
func TestSystemdNotifyAndJournal(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "sdnotify")
	s.pollInterval = 3600
	sd := listenNotify(t)

	s.apiPort = freePort(t)
	s.api = fmt.Sprintf("http://127.0.0.1:%d", s.apiPort)
	cfgPath := s.writeConfig(s.config())
	started := time.Now()
	stderrDone := s.startJournal(t, []string{"NOTIFY_SOCKET=" + sd.path, "WATCHDOG_USEC=1000000"}, "-config", cfgPath)

	ready := sd.expect(t, s, "READY=1", 30*time.Second)
	// READY=1 means "serving": the API must answer now, without retries.
	if code, body := s.request("GET", "/health"); code != 200 {
		t.Fatalf("GET /health right after READY=1 = %d %s, want 200", code, body)
	}
	t.Logf("READY=1 %v after start", ready.at.Sub(started).Round(time.Millisecond))
	wd := sd.expect(t, s, "WATCHDOG=1", 2*time.Second, "STATUS=")
	t.Logf("first WATCHDOG=1 %v after READY=1", wd.at.Sub(ready.at).Round(time.Millisecond))

	// A valid reload that changes a restart-only setting: a warning.
	cfg := s.config()
	cfg["api"] = map[string]any{"port": strconv.Itoa(freePort(t))}
	s.writeConfig(cfg)
	s.signal(syscall.SIGHUP)
	reloading := sd.expect(t, s, "RELOADING=1", 10*time.Second, "STATUS=", "WATCHDOG=")
	if !regexp.MustCompile(`\nMONOTONIC_USEC=[0-9]+$`).MatchString(reloading.text) {
		t.Errorf("RELOADING datagram %q lacks MONOTONIC_USEC", reloading.text)
	}
	sd.expect(t, s, "READY=1", 10*time.Second, "STATUS=", "WATCHDOG=")
	if code, body := s.request("GET", "/health"); code != 200 {
		t.Errorf("GET /health on the running port after the reload = %d %s, want 200 (the port changes only on restart)", code, body)
	}

	// An invalid reload: an error, and still RELOADING=1 then READY=1.
	cfg = s.config()
	cfg["services"].([]map[string]any)[0]["compose_file"] = "docker-compose.yml"
	s.writeConfig(cfg)
	s.signal(syscall.SIGHUP)
	sd.expect(t, s, "RELOADING=1", 10*time.Second, "STATUS=", "WATCHDOG=")
	sd.expect(t, s, "READY=1", 10*time.Second, "STATUS=", "WATCHDOG=")

	s.signal(syscall.SIGTERM)
	sd.expect(t, s, "STOPPING=1", 10*time.Second, "STATUS=", "WATCHDOG=")
	if err := s.proc.wait(30 * time.Second); err != nil {
		t.Fatalf("dockward exit after SIGTERM: %v, want status 0\n%s", err, s.proc.logs())
	}
	select {
	case <-stderrDone:
	case <-time.After(10 * time.Second):
		t.Fatal("stderr of dockward still open 10s after it exited")
	}

	// Every line carries the priority of its level and no time=.
	prio := map[string]string{"DEBUG": "7", "INFO": "6", "WARN": "4", "ERROR": "3"}
	line := regexp.MustCompile(`^<([0-7])>level=([A-Z]+) `)
	counts := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(s.proc.logs()))
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		switch {
		case m == nil:
			t.Errorf("journal line without a priority prefix followed by level= (a time= first?): %q", sc.Text())
		case prio[m[2]] != m[1]:
			t.Errorf("journal line of level %s has priority <%s>, want <%s>: %q", m[2], m[1], prio[m[2]], sc.Text())
		default:
			counts[m[1]]++
		}
	}
	for _, want := range []string{
		`<6>level=INFO msg="dockward started"`,
		`<4>level=WARN msg="config reload: these settings take effect only after a restart of dockward" settings=api`,
		`<3>level=ERROR msg="config reload failed; keeping the running config"`,
		`<6>level=INFO msg=stopped`,
	} {
		if countLines(s.proc.logs(), want) != 1 {
			t.Errorf("want one journal line %s", want)
		}
	}
	t.Logf("journal lines by priority: %v", counts)
	if t.Failed() {
		t.Logf("dockward stderr:\n%s", s.proc.logs())
	}
}

// deployStuck pushes a version whose healthcheck stays "starting" for the
// whole grace period, triggers its deploy, and returns its digest once it
// runs, with its local image ID: the deploy is then surely in verification,
// and fails at the deadline.
func (s *scenario) deployStuck() (digest, imageID string) {
	s.t.Helper()
	bad := s.push(image{mode: "unhealthy", startPeriod: "1h"})
	badID := s.imageID(s.ref("latest"))
	s.triggerAsync()
	s.waitFor(60*time.Second, "the bad version to be deployed and running", func() (bool, string) {
		return s.runsImage(badID)
	})
	return bad, badID
}

// triggerAsync asks for a check without waiting for its outcome; a 409 (the
// start-up poll is checking the service) is retried.
func (s *scenario) triggerAsync() {
	s.t.Helper()
	s.waitFor(30*time.Second, "POST /trigger to be accepted", func() (bool, string) {
		code, body := s.request("POST", "/trigger/"+s.name)
		return code == 202, fmt.Sprintf("%d %s", code, body)
	})
}

// imageID is the local image ID of a reference.
func (s *scenario) imageID(ref string) string {
	s.t.Helper()
	return strings.TrimSpace(s.docker("image", "inspect", "-f", "{{.Id}}", ref))
}

// runsImage reports whether a running container of the project was created
// from the image. Unlike running it tolerates a container that compose
// removes between the listing and the inspection: that is just "not yet".
func (s *scenario) runsImage(id string) (bool, string) {
	out, err := s.tryDocker("ps", "-q", "--no-trunc", "--filter", "label=com.docker.compose.project="+s.project, "--filter", "status=running")
	if err != nil {
		return false, "docker ps: " + err.Error()
	}
	ids := strings.Fields(out)
	if len(ids) == 0 {
		return false, "no running container"
	}
	out, err = s.tryDocker(append([]string{"inspect", "-f", "{{.Image}}"}, ids...)...)
	if err != nil {
		return false, "docker inspect: " + err.Error()
	}
	images := strings.Fields(out)
	return slices.Contains(images, id), fmt.Sprintf("running images %v, want %s", images, id)
}

// state reads dockward's state file.
func (s *scenario) state() state.File {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "state", "state.json"))
	if err != nil {
		s.t.Fatalf("read state file: %v", err)
	}
	var f state.File
	if err := json.Unmarshal(b, &f); err != nil {
		s.t.Fatalf("decode state file: %v\n%s", err, b)
	}
	return f
}

// writeConfig writes cfg where start writes the config, the file that
// dockward rereads on SIGHUP, and returns its path.
func (s *scenario) writeConfig(cfg map[string]any) string {
	s.t.Helper()
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		s.t.Fatal(err)
	}
	path := filepath.Join(s.dir, "config.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

func (s *scenario) signal(sig os.Signal) {
	s.t.Helper()
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("send %v to dockward: %v", sig, err)
	}
}

// healthServices is the service count that /health reports.
func (s *scenario) healthServices() (int, string) {
	code, body := s.request("GET", "/health")
	var h struct{ Services int }
	if code != 200 || json.Unmarshal([]byte(body), &h) != nil {
		return -1, fmt.Sprintf("%d %s", code, body)
	}
	return h.Services, body
}

// wait waits for the process to exit by itself and returns its status.
func (p *process) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("still running after %v; killed", timeout)
	}
}

// startJournal starts dockward as systemd would with StandardError=journal:
// stderr is a pipe named by JOURNAL_STREAM (its device and inode). What it
// writes is captured in s.proc's output; the returned channel is closed
// when the pipe reaches EOF.
func (s *scenario) startJournal(t *testing.T, env []string, args ...string) <-chan struct{} {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	p := &process{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(dockwardBin, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = w
	p.cmd.Env = append(append(os.Environ(), env...), fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	err = p.cmd.Start()
	w.Close() // the child has its copy; EOF comes when it exits
	if err != nil {
		r.Close()
		t.Fatalf("start dockward: %v", err)
	}
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		defer r.Close()
		io.Copy(p.out, r)
	}()
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	s.proc = p
	return eof
}

// notifySocket is the service manager's end of sd_notify: a unixgram socket
// whose datagrams are delivered on msgs.
type notifySocket struct {
	path string
	msgs chan notifyMsg
}

type notifyMsg struct {
	text string
	at   time.Time
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	// Not t.TempDir(): its path can exceed the 108 bytes of sun_path.
	dir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	n := &notifySocket{path: filepath.Join(dir, "notify"), msgs: make(chan notifyMsg, 1024)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		defer close(n.msgs)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.msgs <- notifyMsg{text: string(buf[:k]), at: time.Now()}
		}
	}()
	return n
}

// expect returns the next datagram, which must start with want. Datagrams
// starting with one of the skip prefixes are passed over.
func (n *notifySocket) expect(t *testing.T, s *scenario, want string, timeout time.Duration, skip ...string) notifyMsg {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed while waiting for %s", want)
			}
			if slices.ContainsFunc(skip, func(p string) bool { return strings.HasPrefix(m.text, p) }) {
				continue
			}
			if !strings.HasPrefix(m.text, want) {
				t.Fatalf("sd_notify datagram %q, want %s next\n%s", m.text, want, s.proc.logs())
			}
			return m
		case <-deadline:
			t.Fatalf("no %s datagram within %v\n%s", want, timeout, s.proc.logs())
		}
	}
}

// A second signal while a stop waits for a deploy exits at once, non-zero;
// the deploy stays recorded so the next start finishes it.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "twice")
	s.pollInterval = 3600
	s.grace = 120
	s.push(healthyImage)
	s.up()
	s.start()

	bad, _ := s.deployStuck()
	if err := s.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.waitFor(10*time.Second, "the graceful stop to begin", func() (bool, string) {
		return strings.Contains(s.proc.logs(), "stopping: no new deploys"), "no stop in the log"
	})
	sent := time.Now()
	if err := s.proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err := s.proc.wait(10 * time.Second)
	t.Logf("second SIGTERM to exit: %v", time.Since(sent).Round(time.Millisecond))
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit after a second SIGTERM = %v, want exit status 1", err)
	}
	if !strings.Contains(s.proc.logs(), "second signal") {
		t.Errorf("no word about the second signal in the output:\n%s", s.proc.logs())
	}
	if d := s.state().Services[s.name].Deploy; d == nil || d.Digest != bad {
		t.Errorf("deploy record after the forced exit = %+v, want %s kept for the next start", d, bad)
	}
	s.proc = nil
}
