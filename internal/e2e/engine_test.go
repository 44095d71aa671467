package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// engine is a private Docker engine: a dockerd that a test starts for
// itself, with its own socket, data root, exec root (and so its own
// containerd), pid file and config file, no bridge and no iptables rules.
// The test can stop and start it again on the same data root without
// disturbing the shared engine at /var/run/docker.sock or other scenarios.
type engine struct {
	t      *testing.T
	dir    string // short: a unix socket path has at most 108 bytes
	socket string
	host   string // DOCKER_HOST of the socket
	args   []string
	client *http.Client // speaks to the socket

	proc *exec.Cmd
	done chan struct{} // closed when proc has exited
}

// startEngine starts a private engine and has the test stop it and remove
// its files at the end. Start it before the scenario that uses it, so that
// the scenario's cleanup (compose down) runs while the engine still answers.
func startEngine(t *testing.T) *engine {
	t.Helper()
	// Not t.TempDir(): its path is too long for the sockets below it.
	dir, err := os.MkdirTemp("", "dwe")
	if err != nil {
		t.Fatal(err)
	}
	e := &engine{t: t, dir: dir, socket: filepath.Join(dir, "d.sock")}
	e.host = "unix://" + e.socket
	e.client = &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.socket)
		}},
	}
	// Its own config file: the host's /etc/docker/daemon.json may set a
	// data-root, which dockerd refuses next to the flag. The storage driver
	// is the shared engine's, known to work on this host.
	config := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(config, []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	driver := strings.TrimSpace(docker(t, "info", "--format", "{{.Driver}}"))
	e.args = []string{
		"--config-file", config,
		"--host", e.host,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "dockerd.pid"),
		"--storage-driver", driver,
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
	}
	t.Cleanup(e.cleanup)
	took := e.start()
	t.Logf("private engine %s (storage driver %s) started in %v", e.socket, driver, took.Round(time.Millisecond))
	return e
}

// start starts dockerd and waits until it answers /_ping; it returns how
// long that took.
func (e *engine) start() time.Duration {
	e.t.Helper()
	if e.proc != nil {
		e.t.Fatal("private engine: start while it runs")
	}
	log, err := os.OpenFile(filepath.Join(e.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer log.Close() // the child has its own descriptor
	begin := time.Now()
	cmd := exec.Command("dockerd", e.args...)
	cmd.Stdout, cmd.Stderr = log, log
	// If the test binary dies, so does the engine (and it stops its
	// containerd and containers).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start dockerd: %v", err)
	}
	e.proc, e.done = cmd, make(chan struct{})
	done := e.done
	go func() {
		cmd.Wait()
		close(done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !e.answers() {
		select {
		case <-done:
			e.proc = nil
			e.t.Fatalf("private engine exited during start: %v\n%s", cmd.ProcessState, e.logTail())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("private engine does not answer %v after its start\n%s", time.Since(begin), e.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(begin)
}

// answers reports whether the engine answers a ping.
func (e *engine) answers() bool {
	resp, err := e.client.Get("http://docker/_ping")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop stops dockerd as systemctl stop docker does (SIGTERM: it stops the
// containers, then its containerd) and waits until it has exited; it
// returns how long that took.
func (e *engine) stop() time.Duration {
	e.t.Helper()
	if e.proc == nil {
		e.t.Fatal("private engine: stop while it is stopped")
	}
	begin := time.Now()
	if err := e.proc.Process.Signal(syscall.SIGTERM); err != nil {
		e.t.Fatalf("stop private engine: %v", err)
	}
	select {
	case <-e.done:
	case <-time.After(90 * time.Second):
		e.proc.Process.Kill()
		<-e.done
		e.t.Fatalf("private engine still running 90s after SIGTERM; killed\n%s", e.logTail())
	}
	e.proc = nil
	return time.Since(begin)
}

// use points a scenario at the engine: dockward's docker.socket, and the
// docker CLI and compose that the test runs itself.
func (e *engine) use(s *scenario) {
	s.socket = e.socket
	s.dockerHost = e.host
}

func (e *engine) logTail() string {
	b, _ := os.ReadFile(filepath.Join(e.dir, "dockerd.log"))
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return "dockerd log (end):\n" + string(b)
}

// cleanup stops the engine, which stops its containers, and removes its
// files, images and containers with them.
func (e *engine) cleanup() {
	if e.t.Failed() {
		e.t.Log(e.logTail())
	}
	if e.proc != nil {
		e.stop()
	}
	if err := os.RemoveAll(e.dir); err != nil {
		e.t.Logf("remove the private engine's files: %v", err)
	}
}

// eventWatch records the events of the shared engine that mention any of a
// set of words (a repository, a compose project), for as long as the test
// runs.
type eventWatch struct {
	t       *testing.T
	words   []string
	mu      sync.Mutex
	seen    []string // matching lines
	markers []string // lines of marker events
}

// watchEvents follows `docker events` of the shared engine. It returns once
// the stream is live: a marker event sent after the start has arrived.
func watchEvents(t *testing.T, words ...string) *eventWatch {
	t.Helper()
	w := &eventWatch{t: t, words: words}
	ctx, cancel := context.WithCancel(context.Background())
	// --since: the events between the start of the CLI and its
	// subscription are replayed, the first marker's included.
	since := strconv.FormatInt(time.Now().Add(-time.Second).Unix(), 10)
	cmd := exec.CommandContext(ctx, "docker", "events", "--since", since, "--format", "{{json .}}")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("docker events: %v", err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			w.add(sc.Text())
		}
		io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		cancel()
		<-read
		cmd.Wait()
	})
	w.sync()
	return w
}

func (w *eventWatch) add(line string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if strings.Contains(line, markerPrefix) {
		w.markers = append(w.markers, line)
	}
	for _, word := range w.words {
		if strings.Contains(line, word) {
			w.seen = append(w.seen, line)
			return
		}
	}
}

const markerPrefix = "dwe2e-marker-"

// sync waits until every event of the shared engine up to now has been
// read: events come in order, so once a marker (a volume created and
// removed) arrives, so have all before it. A busy engine gets a new marker
// every 10 seconds.
func (w *eventWatch) sync() {
	w.t.Helper()
	var marker string
	var sent time.Time
	deadline := time.Now().Add(90 * time.Second)
	for {
		if time.Since(sent) > 10*time.Second {
			marker = fmt.Sprintf("%s%08x", markerPrefix, rand.Uint32())
			docker(w.t, "volume", "create", marker)
			docker(w.t, "volume", "rm", marker)
			sent = time.Now()
		}
		w.mu.Lock()
		n := 0
		for _, l := range w.markers {
			if strings.Contains(l, marker) {
				n++
			}
		}
		w.mu.Unlock()
		if n >= 2 {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("docker events of the shared engine: no marker seen within 90s (the last: %s)", marker)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// matched returns the events seen so far that mention one of the words.
func (w *eventWatch) matched() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.seen...)
}
