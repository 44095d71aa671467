package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
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

// world is one benchmark setting: a real registry behind a counting proxy,
// the engine behind a counting proxy, and the images and projects made for it.
type world struct {
	t        *testing.T
	dir      string
	suffix   string
	host     string // the registry proxy, host:port: images are named by it
	registry *counter
	docker   *counter
	socket   string // the docker proxy's socket
}

func newWorld(t *testing.T) *world {
	t.Helper()
	target := registrytest.Start(t)
	addr := registrytest.FreeAddr(t)
	w := &world{t: t, dir: t.TempDir(), suffix: fmt.Sprintf("%04x", rand.N(1<<16)), host: addr}
	w.registry = startRegistryProxy(t, target, addr)
	w.docker, w.socket = startDockerProxy(t, "/var/run/docker.sock")
	t.Cleanup(w.cleanup)
	return w
}

func (w *world) ref(repo, tag string) string { return w.host + "/" + repo + ":" + tag }

// push builds a FROM scratch image of the test app and pushes it. Each
// push has a new digest.
func (w *world) push(repo, mode string, healthcheck bool) string {
	w.t.Helper()
	dir := w.t.TempDir()
	b, err := os.ReadFile(testappBin)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app"), b, 0o755); err != nil {
		w.t.Fatal(err)
	}
	hc := ""
	if healthcheck {
		hc = `HEALTHCHECK --interval=500ms --timeout=3s --retries=1 CMD ["/app", "-check"]`
	}
	// The nonce first: no build step is shared with another build.
	df := fmt.Sprintf("FROM scratch\nLABEL dockward.bench=%s dockward.bench.nonce=%d\nCOPY app /app\nENV APP_MODE=%s\n%s\nENTRYPOINT [\"/app\"]\n",
		w.suffix, time.Now().UnixNano(), mode, hc)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		w.t.Fatal(err)
	}
	run(w.t, "docker", "build", "-q", "--no-cache", "-t", w.ref(repo, "latest"), dir) // see e2e's push
	out := run(w.t, "docker", "push", w.ref(repo, "latest"))
	m := regexp.MustCompile(`digest: (sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
	if m == nil {
		w.t.Fatalf("docker push printed no digest:\n%s", out)
	}
	return m[1]
}

func (w *world) project(i int) string { return fmt.Sprintf("dwbench-%s-%d", w.suffix, i) }

// composeFile writes the compose file of one project.
func (w *world) composeFile(project, image string) string {
	w.t.Helper()
	y := fmt.Sprintf("services:\n  app:\n    image: %s\n    network_mode: none\n    restart: \"no\"\n    stop_grace_period: 2s\n", image)
	path := filepath.Join(w.dir, project+".yml")
	if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
		w.t.Fatal(err)
	}
	return path
}

// runContainers starts one container per project with the labels compose
// gives them, without compose: 300 `compose up` would take minutes.
func (w *world) runContainers(n int, image func(i int) string) {
	w.t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			p := w.project(i)
			file := w.composeFile(p, image(i))
			out, err := exec.Command("docker", "run", "-d", "--name", p+"-app-1", "--network", "none",
				"--label", "dockward.bench="+w.suffix,
				"--label", "com.docker.compose.project="+p,
				"--label", "com.docker.compose.service=app",
				"--label", "com.docker.compose.oneoff=False",
				"--label", "com.docker.compose.container-number=1",
				"--label", "com.docker.compose.project.config_files="+file,
				image(i)).CombinedOutput()
			if err != nil {
				errs <- fmt.Errorf("docker run %s: %v\n%s", p, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		w.t.Fatal(err)
	}
}

// pushTags tags repo:latest as tag(i) for i < n and pushes each tag; the
// layers are in the registry already, so each push is a manifest.
func (w *world) pushTags(repo string, n int, tag func(i int) string) {
	w.t.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ref := w.ref(repo, tag(i))
			for _, args := range [][]string{{"tag", w.ref(repo, "latest"), ref}, {"push", ref}} {
				if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
					errs <- fmt.Errorf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		w.t.Fatal(err)
	}
}

func (w *world) cleanup() {
	out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=dockward.bench="+w.suffix).Output()
	// In batches: one `rm -f` of 300 containers once wedged the engine
	// (docker.io 20.10 on fuse-overlayfs), its kills never returning.
	for ids := strings.Fields(string(out)); len(ids) > 0; {
		n := min(len(ids), 20)
		exec.Command("docker", append([]string{"rm", "-f", "-v"}, ids[:n]...)...).Run()
		ids = ids[n:]
	}
	out, _ = exec.Command("docker", "ps", "-aq", "--filter", "name=dwbench-"+w.suffix).Output()
	if ids := strings.Fields(string(out)); len(ids) > 0 {
		exec.Command("docker", append([]string{"rm", "-f", "-v"}, ids...)...).Run()
	}
	out, _ = exec.Command("docker", "images", "-q", "--filter", "reference="+w.host+"/*/*").Output()
	if ids := strings.Fields(string(out)); len(ids) > 0 {
		exec.Command("docker", append([]string{"rmi", "-f"}, ids...)...).Run()
	}
}

// daemon is a running dockward.
type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	api  string
	logs *lockedBuffer
	done chan struct{}
}

// startDockward runs the built binary with cfg (the api port is filled in)
// and waits until it answers /health.
func (w *world) startDockward(cfg map[string]any) *daemon {
	w.t.Helper()
	addr := registrytest.FreeAddr(w.t)
	_, port, _ := net.SplitHostPort(addr)
	cfg["api"] = map[string]any{"port": port}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	path := filepath.Join(w.dir, fmt.Sprintf("config-%s.json", port))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		w.t.Fatal(err)
	}
	d := &daemon{t: w.t, api: "http://" + addr, logs: &lockedBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(dockwardBin, "-config", path)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.Env = append(os.Environ(), "STATE_DIRECTORY="+w.dir)
	if err := d.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	w.t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		if w.t.Failed() {
			w.t.Logf("dockward output:\n%s", d.logs.String())
		}
	})
	waitFor(w.t, 30*time.Second, "dockward answers /health", func() bool {
		select {
		case <-d.done:
			w.t.Fatalf("dockward exited:\n%s", d.logs.String())
		default:
		}
		resp, err := http.Get(d.api + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return d
}

// metric reads one unlabelled series from /metrics.
func (d *daemon) metric(name string) float64 {
	d.t.Helper()
	resp, err := http.Get(d.api + "/metrics")
	if err != nil {
		d.t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// hooks records when each alert arrived, by event.
type hooks struct {
	mu     sync.Mutex
	url    string
	events []hook
}

type hook struct {
	event, digest string
	at            time.Time
}

func startHooks(t *testing.T) *hooks {
	t.Helper()
	h := &hooks{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		var body struct{ Event, Digest string }
		json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&body)
		h.mu.Lock()
		h.events = append(h.events, hook{event: body.Event, digest: body.Digest, at: at})
		h.mu.Unlock()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	h.url = "http://" + ln.Addr().String() + "/hook"
	return h
}

// at returns when the first alert of event for digest arrived.
func (h *hooks) at(event, digest string) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.events {
		if e.event == event && e.digest == digest {
			return e.at, true
		}
	}
	return time.Time{}, false
}

func (h *hooks) notifications() map[string]any {
	return map[string]any{"webhooks": []map[string]any{{
		"name": "bench", "url": h.url,
		"body": `{"event": {{json .Event}}, "digest": {{json .Digest}}}`,
	}}}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shortTempDir is a temporary directory with a short path: a unix socket
// path must fit in 108 bytes.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "dwb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
