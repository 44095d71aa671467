// Package e2e runs the real dockward binary against the real Docker engine
// and a real registry (Debian's docker-registry): it builds test images FROM
// scratch, pushes them, and watches dockward deploy, roll back, block and
// notify. Each scenario has its own registry, repository, compose project and
// dockward process, so scenarios run in parallel.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry/registrytest"
)

// Built once by TestMain.
var (
	dockwardBin string
	testappBin  string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	// The end-to-end tests need the engine: fail loudly, never skip.
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.APIVersion}}").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: the end-to-end tests need a running Docker engine (docker version: %v)\n%s\nInstall docker.io and start dockerd (make test does both).\n", err, out)
		return 1
	}
	// Every scenario runs under the compose v2 plugin, the core ones under
	// docker-compose v1 too.
	for _, c := range [][]string{{"docker", "compose", "version"}, {"docker-compose", "version"}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: the end-to-end tests need %s (%s: %v)\n%s\nmake test installs both: .ci/compose-v2 builds the v2 plugin into /usr/local/lib/docker/cli-plugins, .ci/setup installs docker-compose v1.\n",
				strings.Join(c[:len(c)-1], " "), strings.Join(c, " "), err, out)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "dockward-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	dockwardBin = filepath.Join(dir, "dockward")
	testappBin = filepath.Join(dir, "app")
	for _, b := range []struct{ out, pkg string }{{dockwardBin, "../../cmd/dockward"}, {testappBin, "./testapp"}} {
		// The tags of the release build (Makefile), so what ships is tested.
		cmd := exec.Command("go", "build", "-tags", "nethttpomithttp2", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

// image describes a test image: how the app behaves and how it is checked.
type image struct {
	mode          string // APP_MODE: healthy, unhealthy, crash
	noHealthcheck bool
	startPeriod   string // healthcheck --start-period, e.g. "1h" to stay "starting"
	crashAfter    string // APP_CRASH_AFTER for mode crash
	healthyAfter  string // APP_HEALTHY_AFTER: the healthcheck fails until the app has run this long
}

var (
	healthyImage   = image{mode: "healthy"}
	unhealthyImage = image{mode: "unhealthy"}
)

// scenario is one isolated world: a registry, a repository, a compose
// project, a webhook receiver, and a dockward process.
type scenario struct {
	t        *testing.T
	name     string
	registry string // http://127.0.0.1:port
	host     string // 127.0.0.1:port
	repo     string
	dir      string
	project  string
	compose  string
	apiPort  int
	api      string
	hooks    *hookReceiver

	// settings used when dockward starts
	pollInterval float64
	grace        float64
	restart      string         // compose restart policy
	service      map[string]any // extra fields of the service's config
	socket       string         // docker.socket, when not the default
	env          []string       // extra environment of the dockward process
	notify       map[string]any // extra notification channels (discord, smtp)
	registryCfg  map[string]any // extra fields of the registry's config
	composeCmd   []string       // docker.compose_command; nil: detection, which must find the v2 plugin
	dockerHost   string         // DOCKER_HOST of the docker CLI and compose that the test runs; "": the default engine
	pausedStart  bool           // start accepts /health 503: deploys paused (state_test.go)
	dockerEnv    []string       // extra environment of `docker push` (a DOCKER_CONFIG with a login)

	// edit, when set, changes the config before it is written.
	edit func(cfg map[string]any)

	proc *process
}

func newScenario(t *testing.T, name string, opts ...registrytest.Option) *scenario {
	t.Helper()
	return newScenarioAt(t, name, registrytest.Start(t, opts...))
}

// newScenarioAt is newScenario with a registry of the test's own, such as
// one that wants credentials.
func newScenarioAt(t *testing.T, name, reg string) *scenario {
	t.Helper()
	// A random suffix keeps concurrent runs of the suite (two developers,
	// or a rerun while an old one cleans up) out of each other's projects.
	suffix := fmt.Sprintf("%04x", rand.N(1<<16))
	s := &scenario{
		t:            t,
		name:         name,
		registry:     reg,
		host:         strings.TrimPrefix(strings.TrimPrefix(reg, "http://"), "https://"),
		repo:         "e2e/" + name,
		dir:          t.TempDir(),
		project:      "dwe2e-" + name + "-" + suffix,
		hooks:        startHookReceiver(t),
		pollInterval: 1,
		grace:        8,
		restart:      "no",
	}
	s.compose = filepath.Join(s.dir, "docker-compose.yml")
	t.Cleanup(s.cleanup)
	return s
}

// ref is the local reference that the compose file names.
func (s *scenario) ref(tag string) string { return s.host + "/" + s.repo + ":" + tag }

// push builds an image FROM scratch with the test app and pushes it as
// :latest, returning the registry digest. Every build differs (a nonce
// label), so every push is a new digest.
func (s *scenario) push(img image) string {
	s.t.Helper()
	dir := s.t.TempDir()
	if err := os.Link(testappBin, filepath.Join(dir, "app")); err != nil {
		copyFile(s.t, testappBin, filepath.Join(dir, "app"))
	}
	hc := "HEALTHCHECK --interval=500ms --timeout=3s --retries=1"
	if img.startPeriod != "" {
		hc += " --start-period=" + img.startPeriod
	}
	hc += ` CMD ["/app", "-check"]`
	if img.noHealthcheck {
		hc = ""
	}
	// The nonce comes first: no build step is then shared with another
	// scenario's build, whose cleanup (rmi) would remove it mid-build.
	dockerfile := fmt.Sprintf("FROM scratch\nLABEL dockward.e2e.nonce=%d\nCOPY app /app\nENV APP_MODE=%s APP_CRASH_AFTER=%s APP_HEALTHY_AFTER=%s\n%s\nENTRYPOINT [\"/app\"]\n",
		time.Now().UnixNano(), img.mode, orDefault(img.crashAfter, "300ms"), img.healthyAfter, hc)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		s.t.Fatal(err)
	}
	// --no-cache: the legacy builder's cache lookup walks every image built
	// FROM scratch, and fails ("unable to find image") when another
	// scenario's cleanup removes one of them meanwhile.
	s.docker("build", "-q", "--no-cache", "-t", s.ref("latest"), dir)
	out := runToolEnv(s.t, append(s.toolEnv(), s.dockerEnv...), "docker", "push", s.ref("latest"))
	m := regexp.MustCompile(`digest: (sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		s.t.Fatalf("docker push printed no digest:\n%s", out)
	}
	s.t.Logf("pushed %s mode=%s digest %s", s.ref("latest"), img.mode, m[1])
	return m[1]
}

// writeCompose writes the project's compose file (format 2.4, which both
// docker-compose v1 and the v2 plugin read).
func (s *scenario) writeCompose() {
	s.t.Helper()
	y := fmt.Sprintf(`version: "2.4"
services:
  app:
    image: %s
    network_mode: none
    restart: %q
    stop_grace_period: 2s
`, s.ref("latest"), s.restart)
	if err := os.WriteFile(s.compose, []byte(y), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// up starts the project by hand, as the service ran before dockward.
func (s *scenario) up() {
	s.t.Helper()
	s.writeCompose()
	s.composeTool("-f", s.compose, "-p", s.project, "up", "-d")
}

// config is the dockward config of the scenario.
func (s *scenario) config() map[string]any {
	reg := map[string]any{"url": s.registry, "poll_interval": s.pollInterval, "timeout": 5}
	for k, v := range s.registryCfg {
		reg[k] = v
	}
	c := map[string]any{
		"registry":      reg,
		"api":           map[string]any{"port": strconv.Itoa(s.apiPort)},
		"state_file":    filepath.Join(s.dir, "state", "state.json"),
		"log_level":     "debug",
		"docker":        s.dockerConfig(),
		"notifications": s.notifications(),
		"services":      []map[string]any{s.serviceConfig()},
	}
	if s.edit != nil {
		s.edit(c)
	}
	return c
}

func (s *scenario) notifications() map[string]any {
	n := map[string]any{
		"webhooks": []map[string]any{{
			"name":    "e2e",
			"url":     s.hooks.url,
			"headers": map[string]string{"X-Scenario": s.name},
			"body":    `{"service": {{json .Service}}, "event": {{json .Event}}, "level": {{json .Level}}, "digest": {{json .Digest}}, "message": {{json .Message}}, "reason": {{json .Reason}}}`,
		}},
	}
	for k, v := range s.notify {
		n[k] = v
	}
	return n
}

func (s *scenario) dockerConfig() map[string]any {
	c := map[string]any{"compose_timeout": 120, "stop_timeout": 2}
	if s.socket != "" {
		c["socket"] = s.socket
	}
	if s.composeCmd != nil {
		c["compose_command"] = s.composeCmd
	}
	return c
}

func (s *scenario) serviceConfig() map[string]any {
	c := map[string]any{
		"name":                 s.name,
		"image":                s.repo + ":latest",
		"compose_file":         s.compose,
		"compose_project":      s.project,
		"auto_update":          true,
		"health_grace":         s.grace,
		"health_poll_interval": 0.25,
	}
	for k, v := range s.service {
		c[k] = v
	}
	return c
}

// start runs dockward with the scenario's config and waits until it
// answers /health. The API port is picked free, but another process may
// take it before dockward binds it: then dockward exits, and start tries
// again on another port. Its own "started" log line, naming the port, tells
// its answers from those of whoever else holds the port.
func (s *scenario) start() {
	s.t.Helper()
	for attempt := 1; ; attempt++ {
		if s.apiPort == 0 {
			s.apiPort = freePort(s.t)
			s.api = fmt.Sprintf("http://127.0.0.1:%d", s.apiPort)
		}
		b, err := json.MarshalIndent(s.config(), "", "  ")
		if err != nil {
			s.t.Fatal(err)
		}
		cfgPath := filepath.Join(s.dir, "config.json")
		if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
			s.t.Fatal(err)
		}
		s.proc = startProcess(s.t, s.env, dockwardBin, "-config", cfgPath)
		bound := fmt.Sprintf("api=127.0.0.1:%d ", s.apiPort)
		taken := false
		s.waitFor(20*time.Second, "dockward to answer /health", func() (bool, string) {
			if exited, err := s.proc.exited(); exited {
				if strings.Contains(s.proc.logs(), "address already in use") && attempt < 5 {
					taken = true
					return true, ""
				}
				s.t.Fatalf("dockward exited during start: %v\n%s", err, s.proc.logs())
			}
			if !strings.Contains(s.proc.logs(), bound) {
				return false, "not listening yet"
			}
			code, body := s.request("GET", "/health")
			return code == 200 || (s.pausedStart && code == 503), body
		})
		if !taken {
			s.checkCompose()
			return
		}
		s.t.Logf("API port %d was taken before dockward bound it; trying another", s.apiPort)
		s.apiPort = 0
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (s *scenario) stop() {
	s.t.Helper()
	if err := s.proc.stop(60 * time.Second); err != nil {
		s.t.Fatalf("dockward did not stop cleanly: %v\n%s", err, s.proc.logs())
	}
	s.proc = nil
}

func (s *scenario) cleanup() {
	if s.proc != nil {
		s.proc.stop(30 * time.Second)
		if s.t.Failed() {
			s.t.Logf("dockward output:\n%s", s.proc.logs())
		}
	}
	if s.t.Failed() {
		out, _ := s.tryDocker("ps", "-a", "--filter", "label=com.docker.compose.project="+s.project,
			"--format", "{{.Names}} {{.Image}} {{.Status}}")
		s.t.Logf("containers of %s:\n%s", s.project, out)
	}
	if _, err := os.Stat(s.compose); err == nil {
		cmd := s.composeArgv("-f", s.compose, "-p", s.project, "down", "-t", "1")
		exec.Command(cmd[0], cmd[1:]...).Run()
	}
	out, _ := s.tryDocker("images", "--format", "{{.Repository}}:{{.Tag}}", s.host+"/"+s.repo)
	for _, ref := range strings.Fields(out) {
		s.tryDocker("rmi", "-f", ref)
	}
}

// request calls dockward's API and returns the status and body.
func (s *scenario) request(method, path string) (int, string) {
	req, err := http.NewRequest(method, s.api+path, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// trigger asks dockward to check now and waits for the outcome. A 409 (a
// poll is checking the service right now) is retried.
func (s *scenario) trigger() triggerResult {
	s.t.Helper()
	var code int
	var body string
	s.waitFor(30*time.Second, "a trigger that is not refused as busy", func() (bool, string) {
		code, body = s.request("POST", "/trigger/"+s.name+"?wait=true")
		return code != 409, body
	})
	if code != 200 {
		s.t.Fatalf("POST /trigger/%s?wait=true = %d %s", s.name, code, body)
	}
	var r triggerResult
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		s.t.Fatalf("decode trigger result %q: %v", body, err)
	}
	return r
}

type triggerResult struct {
	Service, Outcome, Digest, Previous, Reason string
}

// metric reads one sample from /metrics, such as
// `watcher_updates_total{service="x"}`; -1 when absent.
func (s *scenario) metric(series string) float64 {
	s.t.Helper()
	code, body := s.request("GET", "/metrics")
	if code != 200 {
		s.t.Fatalf("GET /metrics = %d %s", code, body)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				s.t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return -1
}

func (s *scenario) serviceMetric(name string) float64 {
	return s.metric(fmt.Sprintf(`%s{service="%s"}`, name, s.name))
}

// blocked returns the blocked digest of the scenario's service, or "".
func (s *scenario) blocked() string {
	s.t.Helper()
	code, body := s.request("GET", "/blocked")
	if code != 200 {
		s.t.Fatalf("GET /blocked = %d %s", code, body)
	}
	var resp struct {
		Blocked []struct{ Service, Digest, Reason string }
	}
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		s.t.Fatalf("decode /blocked %q: %v", body, err)
	}
	for _, b := range resp.Blocked {
		if b.Service == s.name {
			return b.Digest
		}
	}
	return ""
}

// running returns the registry digests of the images that the project's
// running containers were created from, asking the engine through the
// docker CLI (independently of dockward's own client).
func (s *scenario) running() []string {
	s.t.Helper()
	ids := strings.Fields(s.docker("ps", "-q", "--filter", "label=com.docker.compose.project="+s.project, "--filter", "status=running"))
	var digests []string
	for _, id := range ids {
		// A container may be removed between ps and inspect (compose
		// recreating it): skip it, the caller polls again.
		img, err := s.tryDocker("inspect", "-f", "{{.Image}}", id)
		if err != nil {
			continue
		}
		out, err := s.tryDocker("image", "inspect", "-f", "{{json .RepoDigests}}", strings.TrimSpace(img))
		if err != nil {
			continue
		}
		var rds []string
		if err := json.Unmarshal([]byte(out), &rds); err != nil {
			s.t.Fatalf("decode RepoDigests %q: %v", out, err)
		}
		for _, rd := range rds {
			if repo, d, ok := strings.Cut(rd, "@"); ok && repo == s.host+"/"+s.repo {
				digests = append(digests, d)
			}
		}
	}
	return digests
}

// health is the health status of the project's container(s).
func (s *scenario) health() string {
	s.t.Helper()
	ids := strings.Fields(s.docker("ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project))
	var st []string
	for _, id := range ids {
		out, err := s.tryDocker("inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}", id)
		if err != nil {
			continue // removed since ps
		}
		st = append(st, strings.TrimSpace(out))
	}
	return strings.Join(st, ",")
}

// runs reports whether exactly the given digest runs, and healthy.
func (s *scenario) runs(digest string) (bool, string) {
	got := s.running()
	h := s.health()
	return len(got) == 1 && got[0] == digest && h == "running/healthy", fmt.Sprintf("running %v (%s), want %s", got, h, digest)
}

// waitFor polls cond until it holds or the timeout passes.
func (s *scenario) waitFor(timeout time.Duration, what string, cond func() (bool, string)) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			logs := ""
			if s.proc != nil {
				logs = s.proc.logs()
			}
			s.t.Fatalf("timed out after %v waiting for %s: %s\ndockward output:\n%s", timeout, what, detail, logs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPolls waits until dockward has completed n more poll cycles.
func (s *scenario) waitPolls(n int) {
	s.t.Helper()
	start := s.metric("watcher_poll_count_total")
	s.waitFor(time.Duration(n)*time.Duration(s.pollInterval*float64(time.Second))+30*time.Second, fmt.Sprintf("%d poll cycles", n), func() (bool, string) {
		got := s.metric("watcher_poll_count_total")
		return got >= start+float64(n), fmt.Sprintf("poll count %v, started at %v", got, start)
	})
}

// hookReceiver is a webhook endpoint that records dockward's notifications
// and checks that every body is valid JSON.
type hookReceiver struct {
	url string
	mu  sync.Mutex
	got []hook
	bad []string
}

type hook struct {
	Service, Event, Level, Digest, Message, Reason string
}

func startHookReceiver(t *testing.T) *hookReceiver {
	h := &hookReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var got hook
		h.mu.Lock()
		defer h.mu.Unlock()
		if err := json.Unmarshal(b, &got); err != nil {
			h.bad = append(h.bad, fmt.Sprintf("invalid JSON body %q: %v", b, err))
		} else if r.Header.Get("X-Scenario") == "" {
			h.bad = append(h.bad, "missing X-Scenario header")
		} else {
			h.got = append(h.got, got)
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, b := range h.bad {
			t.Errorf("webhook receiver: %s", b)
		}
	})
	h.url = srv.URL
	return h
}

// events returns the notifications received for an event.
func (h *hookReceiver) events(event string) []hook {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []hook
	for _, g := range h.got {
		if g.Event == event {
			out = append(out, g)
		}
	}
	return out
}

// process is a running dockward with its combined output captured.
type process struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startProcess(t *testing.T, env []string, bin string, args ...string) *process {
	t.Helper()
	p := &process{out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

func (p *process) stop(timeout time.Duration) error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("still running %v after SIGTERM; killed", timeout)
	}
}

func (p *process) logs() string { return p.out.String() }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// countLines counts dockward log lines containing all of the given parts.
func countLines(logs string, parts ...string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		for _, p := range parts {
			if !strings.Contains(sc.Text(), p) {
				continue lines
			}
		}
		n++
	}
	return n
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	return runTool(t, "docker", args...)
}

// tryDockerEnv runs the docker CLI with env added to the test's environment
// and returns its error instead of failing.
func tryDockerEnv(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	return string(out), err
}

// toolEnv is the environment that the docker CLI and compose run by the
// test get on top of the test's own: the scenario's engine.
func (s *scenario) toolEnv() []string {
	if s.dockerHost == "" {
		return nil
	}
	return []string{"DOCKER_HOST=" + s.dockerHost, "DOCKER_CONTEXT="}
}

// docker runs the docker CLI against the scenario's engine.
func (s *scenario) docker(args ...string) string {
	s.t.Helper()
	return runToolEnv(s.t, s.toolEnv(), "docker", args...)
}

// tryDocker runs the docker CLI against the scenario's engine and returns
// its error instead of failing.
func (s *scenario) tryDocker(args ...string) (string, error) {
	return tryDockerEnv(s.toolEnv(), args...)
}

// composeArgv is the argv of the compose that dockward runs in the
// scenario (s.composeCmd, else the v2 plugin), with args.
func (s *scenario) composeArgv(args ...string) []string {
	cmd := s.composeCmd
	if cmd == nil {
		cmd = []string{"docker", "compose"}
	}
	return append(append([]string(nil), cmd...), args...)
}

// composeTool runs the scenario's compose against its engine, as the
// operator did before dockward.
func (s *scenario) composeTool(args ...string) string {
	s.t.Helper()
	argv := s.composeArgv(args...)
	return runToolEnv(s.t, s.toolEnv(), argv[0], argv[1:]...)
}

// checkCompose fails the test unless dockward's start line names the
// compose the scenario asked for: the v2 plugin unless told otherwise.
func (s *scenario) checkCompose() {
	s.t.Helper()
	want := `compose="docker compose v2.`
	if s.composeCmd != nil {
		want = `compose="` + strings.Join(s.composeCmd, " ") + " "
	}
	if countLines(s.proc.logs(), "dockward started", want) == 0 {
		s.t.Fatalf("dockward did not start with the compose the scenario asked for (%s):\n%s", want, s.proc.logs())
	}
}

// compose runs docker-compose v1 against the default engine.
func compose(t *testing.T, args ...string) string {
	t.Helper()
	return runTool(t, "docker-compose", args...)
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	return runToolEnv(t, nil, name, args...)
}

func runToolEnv(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(append(os.Environ(), "DOCKER_BUILDKIT=0"), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func freePort(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(registrytest.FreeAddr(t))
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
