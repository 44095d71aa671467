package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// healScenario runs v1 (healthy) under dockward with auto-heal on.
func healScenario(t *testing.T, name string, service map[string]any) (*scenario, string) {
	t.Helper()
	s := newScenario(t, name)
	s.pollInterval = 3600
	s.service = map[string]any{"auto_heal": true, "heal_cooldown": 60, "heal_verify_delay": 3}
	for k, v := range service {
		s.service[k] = v
	}
	v1 := s.push(healthyImage)
	s.up()
	s.waitFor(30*time.Second, "v1 to be healthy", func() (bool, string) { return s.runs(v1) })
	return s, v1
}

// container returns the ID of the project's only container.
func (s *scenario) container() string {
	s.t.Helper()
	ids := strings.Fields(docker(s.t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project))
	if len(ids) != 1 {
		s.t.Fatalf("project %s has containers %v, want one", s.project, ids)
	}
	return ids[0]
}

func (s *scenario) startedAt(id string) string {
	return strings.TrimSpace(docker(s.t, "inspect", "-f", "{{.State.StartedAt}}", id))
}

// A container that turns unhealthy is restarted and verified healthy; a
// second failure inside the cooldown is not restarted.
func TestHealRestartsUnhealthyContainer(t *testing.T) {
	t.Parallel()
	s, _ := healScenario(t, "heal", nil)
	s.start()
	id := s.container()
	before := s.startedAt(id)

	docker(t, "exec", id, "/app", "-sick")
	sick := time.Now()
	s.waitFor(30*time.Second, "the unhealthy container to be restarted", func() (bool, string) {
		at := s.startedAt(id)
		return at != before, "started at " + at
	})
	t.Logf("unhealthy→restarted: %v after the container was made sick (healthcheck every 500ms, 1 retry)", time.Since(sick).Round(10*time.Millisecond))
	s.waitFor(30*time.Second, "heal_restart and heal_succeeded notifications", func() (bool, string) {
		return len(s.hooks.events("heal_restart")) == 1 && len(s.hooks.events("heal_succeeded")) == 1,
			fmt.Sprintf("restart %v succeeded %v", s.hooks.events("heal_restart"), s.hooks.events("heal_succeeded"))
	})
	if r := s.hooks.events("heal_restart")[0]; !strings.Contains(r.Reason, "worker pool exhausted") || r.Level != "warning" {
		t.Errorf("heal_restart notification = %+v, want the healthcheck output and level warning", r)
	}
	if n := s.serviceMetric("watcher_restarts_total"); n != 1 {
		t.Errorf("watcher_restarts_total = %v, want 1", n)
	}

	// Again, inside the 60s cooldown: left alone.
	second := s.startedAt(id)
	docker(t, "exec", id, "/app", "-sick")
	s.waitFor(30*time.Second, "dockward to see the second failure inside the cooldown", func() (bool, string) {
		return countLines(s.proc.logs(), "inside the heal cooldown") >= 1, s.health()
	})
	if at := s.startedAt(id); at != second {
		t.Errorf("container restarted again inside the cooldown (started at %s, was %s)", at, second)
	}
	if n := s.serviceMetric("watcher_restarts_total"); n != 1 {
		t.Errorf("watcher_restarts_total = %v after a failure inside the cooldown, want 1", n)
	}
	if h := s.health(); h != "running/unhealthy" {
		t.Errorf("health = %s, want running/unhealthy (not restarted)", h)
	}
	// The cooldown survives a restart of dockward.
	s.stop()
	b, err := os.ReadFile(filepath.Join(s.dir, "state", "state.json"))
	if err != nil || !strings.Contains(string(b), "last_restart") {
		t.Errorf("state file does not keep the heal cooldown (%v):\n%s", err, b)
	}
	s.start()
	s.waitFor(30*time.Second, "the restarted dockward to respect the cooldown", func() (bool, string) {
		return countLines(s.proc.logs(), "inside the heal cooldown") >= 1, s.health()
	})
	if at := s.startedAt(id); at != second {
		t.Errorf("container restarted inside the cooldown after a dockward restart")
	}
}

// A crash is a critical alert with the exit code; a container stopped on
// purpose is not.
func TestCrashIsReported(t *testing.T) {
	t.Parallel()
	s, _ := healScenario(t, "died", nil)
	s.start()
	id := s.container()

	docker(t, "exec", id, "/app", "-crash")
	crashed := time.Now()
	s.waitFor(30*time.Second, "a died notification", func() (bool, string) {
		return len(s.hooks.events("died")) == 1, fmt.Sprintf("%+v", s.hooks.events("died"))
	})
	t.Logf("crash→alert received: %v", time.Since(crashed).Round(10*time.Millisecond))
	d := s.hooks.events("died")[0]
	if d.Level != "critical" || !strings.Contains(d.Reason, "exit code 3") || !strings.Contains(d.Message, "exit code 3") {
		t.Errorf("died notification = %+v, want level critical with exit code 3", d)
	}
	if n := s.serviceMetric("watcher_failures_total"); n != 1 {
		t.Errorf("watcher_failures_total = %v, want 1", n)
	}

	// Stopped on purpose: no alert. Then a second crash proves the stream
	// is still followed, and the count shows the stop was not reported.
	docker(t, "start", id)
	docker(t, "stop", "-t", "1", id)
	docker(t, "start", id)
	s.waitFor(30*time.Second, "the container to run healthy again", func() (bool, string) {
		h := s.health()
		return h == "running/healthy", h
	})
	docker(t, "exec", id, "/app", "-crash")
	s.waitFor(30*time.Second, "the second crash alert", func() (bool, string) {
		return len(s.hooks.events("died")) >= 2, fmt.Sprintf("%d died alerts", len(s.hooks.events("died")))
	})
	if n := len(s.hooks.events("died")); n != 2 {
		t.Errorf("%d died alerts, want 2: docker stop must not be reported as a crash", n)
	}
}

// With the event stream cut, a container that turns unhealthy is still
// healed once dockward reconnects and reconciles.
func TestEventStreamCutIsSurvived(t *testing.T) {
	t.Parallel()
	proxy := startSocketProxy(t, "/var/run/docker.sock")
	s, _ := healScenario(t, "cut", nil)
	s.socket = proxy.path
	s.start()
	id := s.container()
	before := s.startedAt(id)
	s.waitFor(20*time.Second, "dockward to follow the event stream", func() (bool, string) {
		return proxy.active() > 0, "no connection through the proxy"
	})

	proxy.cut(true) // close every connection and refuse new ones
	docker(t, "exec", id, "/app", "-sick")
	s.waitFor(30*time.Second, "the container to turn unhealthy while dockward is cut off", func() (bool, string) {
		h := s.health()
		return h == "running/unhealthy", h
	})
	if at := s.startedAt(id); at != before {
		t.Fatalf("container restarted while dockward was cut off from the engine")
	}
	proxy.cut(false)
	s.waitFor(60*time.Second, "the unhealthy container to be healed after the reconnect", func() (bool, string) {
		at := s.startedAt(id)
		return at != before, "started at " + at
	})
	if n := countLines(s.proc.logs(), "event stream lost"); n < 1 {
		t.Errorf("no log line about the lost event stream")
	}
	if n := s.serviceMetric("watcher_restarts_total"); n != 1 {
		t.Errorf("watcher_restarts_total = %v, want 1", n)
	}
}

// socketProxy forwards a unix socket to the Docker engine's, and can cut
// every connection: a fault injected in front of the real engine.
type socketProxy struct {
	path string
	mu   sync.Mutex
	down bool
	live map[net.Conn]bool
}

func startSocketProxy(t *testing.T, target string) *socketProxy {
	dir, err := os.MkdirTemp("", "dwp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &socketProxy{path: filepath.Join(dir, "docker.sock"), live: map[net.Conn]bool{}}
	l, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); p.cut(true) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("unix", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.live[c], p.live[up] = true, true
			p.mu.Unlock()
			go p.pipe(c, up)
			go p.pipe(up, c)
		}
	}()
	return p
}

func (p *socketProxy) pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	p.mu.Lock()
	delete(p.live, dst)
	delete(p.live, src)
	p.mu.Unlock()
}

func (p *socketProxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.live {
			c.Close()
		}
	}
}

func (p *socketProxy) active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live)
}
