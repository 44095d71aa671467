package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Faults that registryProxy injects. Each is a way a registry (or what
// stands in front of it) really fails.
const (
	faultNone        = "none"        // pass everything through
	faultDown        = "down"        // nothing listens: connection refused
	faultCut         = "cut"         // the connection is closed without an answer: down mid-cycle
	faultServerError = "500"         // 500 Internal Server Error
	faultHTML        = "html"        // 200 with an HTML page (a captive portal, a login page)
	faultWrongDigest = "wrongdigest" // a well-formed Docker-Content-Digest that is not the manifest's
	faultTruncated   = "truncated"   // no digest header on HEAD; GET answers half the manifest, consistently framed
	faultSlow        = "slow"        // answers after slowDelay, longer than registry.timeout
	// faultPullCut passes dockward's own requests (User-Agent dockward) and
	// closes the engine's without an answer: the registry goes away
	// between the check and the pull.
	faultPullCut = "pullcut"
)

// slowDelay is how long faultSlow holds a request.
const slowDelay = 4 * time.Second

// registryProxy is a reverse proxy in front of a real registry that injects
// one fault at a time. It is only a fault injector: everything it passes
// through is the real registry's answer.
type registryProxy struct {
	t      *testing.T
	addr   string // 127.0.0.1:port, the same across down and up
	target *url.URL
	rp     *httputil.ReverseProxy

	mu    sync.Mutex
	fault string
	srv   *http.Server // nil while down
	seen  map[string]int
}

// startRegistryProxy puts a fault-injecting proxy in front of the registry
// at base (http://127.0.0.1:port) and returns it passing everything.
func startRegistryProxy(t *testing.T, base string) *registryProxy {
	t.Helper()
	target, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	p := &registryProxy{t: t, target: target, fault: faultNone, seen: map[string]int{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// The registry builds its Location headers from Host: keep the
			// proxy's, so that pushes come back through it.
			r.Out.Host = r.In.Host
		},
		ModifyResponse: p.modify,
	}
	p.addr = freeAddr(t)
	p.listen()
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.srv != nil {
			p.srv.Close()
		}
	})
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return "127.0.0.1:" + strconv.Itoa(freePort(t))
}

func (p *registryProxy) url() string  { return "http://" + p.addr }
func (p *registryProxy) host() string { return p.addr }

// listen serves on p.addr; p.mu is held or the proxy is not shared yet.
func (p *registryProxy) listen() {
	var ln net.Listener
	var err error
	// The port was ours a moment ago; another process may be closing a
	// connection on it.
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatalf("registry proxy: listen on %s again: %v", p.addr, err)
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve)}
	go p.srv.Serve(ln)
}

// set switches to another fault. faultDown closes the listener and every
// open connection; leaving it listens again on the same address.
func (p *registryProxy) set(fault string) {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case fault == faultDown && p.srv != nil:
		p.srv.Close()
		p.srv = nil
	case fault != faultDown && p.srv == nil:
		p.listen()
	}
	p.fault = fault
	p.t.Logf("registry proxy: fault %s", fault)
}

// requests returns how many requests the proxy saw under a fault.
func (p *registryProxy) requests(fault string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[fault]
}

func (p *registryProxy) current() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen[p.fault]++
	return p.fault
}

func (p *registryProxy) serve(w http.ResponseWriter, r *http.Request) {
	fault := p.current()
	if fault == faultPullCut && !strings.HasPrefix(r.UserAgent(), "dockward") {
		fault = faultCut
	}
	switch fault {
	case faultCut:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	case faultServerError:
		http.Error(w, "internal server error: storage backend unavailable", http.StatusInternalServerError)
		return
	case faultHTML:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form>Please sign in to continue</form></body></html>\n")
		return
	case faultSlow:
		select {
		case <-time.After(slowDelay):
		case <-r.Context().Done():
			return
		}
	}
	p.rp.ServeHTTP(w, r)
}

// wrongDigest is a well-formed digest of no manifest.
var wrongDigest = func() string {
	sum := sha256.Sum256([]byte("not the manifest"))
	return "sha256:" + hex.EncodeToString(sum[:])
}()

// modify rewrites the registry's real answer for the faults that corrupt
// one.
func (p *registryProxy) modify(resp *http.Response) error {
	p.mu.Lock()
	fault := p.fault
	p.mu.Unlock()
	manifest := strings.Contains(resp.Request.URL.Path, "/manifests/")
	switch {
	case fault == faultWrongDigest && resp.Header.Get("Docker-Content-Digest") != "":
		resp.Header.Set("Docker-Content-Digest", wrongDigest)
	case fault == faultTruncated && manifest:
		resp.Header.Del("Docker-Content-Digest")
		if resp.Request.Method != http.MethodGet {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if len(b) < 2 {
			return errors.New("manifest too short to truncate")
		}
		b = b[:len(b)/2]
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
	}
	return nil
}
