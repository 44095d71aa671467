package bench

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"testing"
	"time"
)

// request is one request that went through a counting proxy.
type request struct {
	method, path string
	start, end   time.Time
}

// counter records what passes through a proxy: requests with their times,
// and the connections clients opened.
type counter struct {
	mu       sync.Mutex
	requests []request
	conns    int
}

func (c *counter) record(r request) {
	c.mu.Lock()
	c.requests = append(c.requests, r)
	c.mu.Unlock()
}

func (c *counter) connState(_ net.Conn, st http.ConnState) {
	if st == http.StateNew {
		c.mu.Lock()
		c.conns++
		c.mu.Unlock()
	}
}

// snapshot is a counter's totals at one moment.
type snapshot struct {
	requests int
	conns    int
	byKind   map[string]int
}

func (c *counter) snapshot() snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := snapshot{requests: len(c.requests), conns: c.conns, byKind: map[string]int{}}
	for _, r := range c.requests {
		s.byKind[r.method+" "+r.path]++
	}
	return s
}

// since returns the requests that started at or after t.
func (c *counter) since(t time.Time) []request {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []request
	for _, r := range c.requests {
		if !r.start.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// first returns the start of the first request after t whose method and
// path match, or the zero time.
func (c *counter) first(after time.Time, method string, path *regexp.Regexp) time.Time {
	for _, r := range c.since(after) {
		if r.method == method && path.MatchString(r.path) {
			return r.start
		}
	}
	return time.Time{}
}

// ids hides container and image IDs so that requests group by kind.
var ids = regexp.MustCompile(`[0-9a-f]{12,64}|sha256:[0-9a-f]{64}`)

func (c *counter) wrap(next http.Handler, streaming func(*http.Request) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		next.ServeHTTP(w, r)
		if streaming(r) {
			return // the event stream is counted once, not per cycle
		}
		c.record(request{method: r.Method, path: ids.ReplaceAllString(r.URL.Path, "ID"), start: start, end: time.Now()})
	})
}

// startRegistryProxy puts a counting reverse proxy in front of the registry
// at target and returns its address (host:port).
func startRegistryProxy(t *testing.T, target, addr string) *counter {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	c := &counter{}
	rp := httputil.NewSingleHostReverseProxy(u)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("registry proxy: %v", err)
	}
	srv := &http.Server{Handler: c.wrap(rp, func(*http.Request) bool { return false }), ConnState: c.connState}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return c
}

// startDockerProxy puts a counting proxy in front of the engine's socket
// and returns the path of its own socket.
func startDockerProxy(t *testing.T, engineSocket string) (*counter, string) {
	t.Helper()
	c := &counter{}
	dialer := &net.Dialer{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "docker"
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "unix", engineSocket)
			},
		},
		FlushInterval: -1,
	}
	sock := filepath.Join(shortTempDir(t), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("docker proxy: %v", err)
	}
	events := regexp.MustCompile(`/events$`)
	srv := &http.Server{Handler: c.wrap(rp, func(r *http.Request) bool { return events.MatchString(r.URL.Path) }), ConnState: c.connState}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return c, sock
}

// cycles groups requests into poll cycles: runs of requests with gaps
// shorter than gap between them. It returns the wall time of each.
func cycles(reqs []request, gap time.Duration) []time.Duration {
	if len(reqs) == 0 {
		return nil
	}
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].start.Before(reqs[j].start) })
	var out []time.Duration
	start, end := reqs[0].start, reqs[0].end
	for _, r := range reqs[1:] {
		if r.start.Sub(end) > gap {
			out = append(out, end.Sub(start))
			start = r.start
		}
		if r.end.After(end) {
			end = r.end
		}
	}
	return append(out, end.Sub(start))
}
