package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// garbageSocket is a Docker socket in front of the shared engine that
// passes everything through, except that while garbage is on, GET /events
// answers with garbage instead of the engine's stream. It is only a fault
// injector: every other answer is the real engine's.
type garbageSocket struct {
	path string

	mu      sync.Mutex
	garbage bool
	served  int                 // garbage streams served
	passed  int                 // real event streams passed through
	streams map[net.Conn]string // open /events connections
}

// garbageStreams are what a broken engine or proxy might send on /events,
// one per connection, in turn.
func garbageStreams(project string) []string {
	now := time.Now()
	return []string{
		"this is not json\n",
		`{"Type": 5, "Action": ["die"]}` + "\n",
		`{"status": "ok"}` + "\n",
		strings.Repeat("[", 20000),
		// Well-formed events about a container that does not exist.
		fmt.Sprintf(`{"Type":"container","Action":"die","Actor":{"ID":"%s","Attributes":{"com.docker.compose.project":%q,"com.docker.compose.service":"app","exitCode":"1"}},"time":%d,"timeNano":%d}`+"\n",
			strings.Repeat("f", 64), project, now.Unix(), now.UnixNano()) +
			fmt.Sprintf(`{"Type":"container","Action":"health_status: unhealthy","Actor":{"ID":"","Attributes":{"com.docker.compose.project":%q}},"time":%d}`+"\n", project, now.Unix()) +
			"\x00\xff\xfe garbage after events",
		`{"Type":"container","Action":"start","Actor":{"ID":"x"},"time":"yesterday"}` + "\n",
		// A well-formed event from the year 2100.
		fmt.Sprintf(`{"Type":"container","Action":"exec_create: /app -check","Actor":{"ID":"%s","Attributes":{"com.docker.compose.project":%q}},"time":4102444800,"timeNano":4102444800000000000}`+"\n",
			strings.Repeat("e", 64), project),
	}
}

func startGarbageSocket(t *testing.T, project string) *garbageSocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "dwg")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	g := &garbageSocket{path: filepath.Join(dir, "d.sock"), streams: map[net.Conn]string{}}
	upstream := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", "/var/run/docker.sock")
	}}
	rp := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: "http", Host: "docker"}) },
		Transport:     upstream,
		FlushInterval: -1,
	}
	streams := garbageStreams(project)
	ln, err := net.Listen("unix", g.path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/events") {
				rp.ServeHTTP(w, r)
				return
			}
			g.mu.Lock()
			garbage, n := g.garbage, g.served
			if garbage {
				g.served++
			} else {
				g.passed++
			}
			g.mu.Unlock()
			if !garbage {
				rp.ServeHTTP(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(streams[n%len(streams)]))
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			g.mu.Lock()
			defer g.mu.Unlock()
			switch st {
			case http.StateActive:
				g.streams[c] = ""
			case http.StateClosed, http.StateHijacked:
				delete(g.streams, c)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return g
}

// set turns garbage on or off; on, it cuts every open connection, so the
// event stream reconnects into the garbage.
func (g *garbageSocket) set(on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.garbage = on
	if on {
		for c := range g.streams {
			c.Close()
		}
	}
}

func (g *garbageSocket) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.served
}

// An event stream that sends garbage (not JSON, wrong types, no type or
// action, nesting too deep, events of containers that do not exist, a
// time that is no time) is dropped and reconnected with backoff: dockward
// does not crash, logs it once, keeps polling and deploying, and heals
// again from the real stream once the garbage stops.
func TestEventStreamGarbage(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "evgarbage")
	g := startGarbageSocket(t, s.project)
	s.socket = g.path
	s.service = map[string]any{"auto_heal": true, "heal_cooldown": 1, "heal_verify_delay": 2}
	v1 := s.push(healthyImage)
	s.up()
	s.waitFor(60*time.Second, "v1 to be healthy", func() (bool, string) { return s.runs(v1) })
	s.start()
	s.waitFor(30*time.Second, "the event stream to be open", func() (bool, string) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.passed > 0, "no GET /events yet"
	})

	g.set(true)
	streams := len(garbageStreams(s.project))
	s.waitFor(120*time.Second, "every kind of garbage to be served", func() (bool, string) {
		return g.count() >= streams, fmt.Sprintf("%d garbage streams served", g.count())
	})
	// The updater does not depend on the stream.
	v2 := s.push(healthyImage)
	s.waitFor(90*time.Second, "v2 to be deployed while the event stream sends garbage", func() (bool, string) { return s.runs(v2) })
	logs := s.proc.logs()
	t.Logf("%d garbage streams served; %d lines of event stream lost", g.count(), countLines(logs, "docker event stream lost"))
	if n := countLines(logs, "docker event stream lost"); n < 1 || n > 2 {
		t.Errorf("%d lines that the event stream was lost, want 1 or 2 (the cut, then the garbage), not one per reconnect", n)
	}
	if n := countLines(logs, "level=ERROR"); n != 0 {
		t.Errorf("%d error lines during the garbage, want none", n)
	}
	if n := len(s.hooks.events("heal_restart")); n != 0 {
		t.Errorf("%d heal restarts from garbage events, want none", n)
	}

	g.set(false)
	served := g.count()
	id := strings.TrimSpace(s.docker("ps", "-q", "--filter", "label=com.docker.compose.project="+s.project))
	s.docker("exec", id, "/app", "-sick")
	s.waitFor(120*time.Second, "the unhealthy container to be healed once the stream is real again", func() (bool, string) {
		return len(s.hooks.events("heal_restart")) == 1, s.health()
	})
	if g.count() != served {
		t.Errorf("garbage served after it was turned off")
	}
	if exited, err := s.proc.exited(); exited {
		t.Fatalf("dockward exited: %v", err)
	}
	s.stop()
}
