// Package notifytest runs real receivers for Dockward's notifications, for
// tests: a Discord webhook endpoint that enforces Discord's documented
// contract, a generic webhook endpoint, and a real SMTP server (aiosmtpd).
// Each records what it received so a test can assert on it, and each is
// shut down by t.Cleanup.
package notifytest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// WaitTimeout bounds the Wait helpers.
const WaitTimeout = 10 * time.Second

// Response is a scripted answer. A receiver answers its scripted responses
// in order, one per request, then falls back to success.
type Response struct {
	Status int // 0 means 200
	Header map[string]string
	Body   string
	// Hang makes the receiver never answer: it holds the request until the
	// client gives up (or the test ends).
	Hang bool
}

// receiver is the HTTP plumbing shared by Discord and Webhook.
type receiver struct {
	srv     *httptest.Server
	release chan struct{} // closed at cleanup, ends hanging handlers

	mu       sync.Mutex
	script   []Response
	attempts []time.Time
}

func (r *receiver) start(t testing.TB, h http.Handler) {
	r.release = make(chan struct{})
	r.srv = httptest.NewServer(h)
	t.Cleanup(func() {
		close(r.release)
		r.srv.CloseClientConnections()
		r.srv.Close()
	})
}

// Script queues responses for the next requests.
func (r *receiver) Script(rs ...Response) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.script = append(r.script, rs...)
}

// Attempts returns when each request arrived, whatever it was answered.
func (r *receiver) Attempts() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.attempts...)
}

// arrive records a request and returns its scripted response, if any.
func (r *receiver) arrive(now time.Time) (Response, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attempts = append(r.attempts, now)
	if len(r.script) == 0 {
		return Response{}, false
	}
	resp := r.script[0]
	r.script = r.script[1:]
	return resp, true
}

// reply writes resp, or hangs.
func (r *receiver) reply(w http.ResponseWriter, req *http.Request, resp Response) {
	if resp.Hang {
		select {
		case <-req.Context().Done():
		case <-r.release:
		}
		return
	}
	for k, v := range resp.Header {
		w.Header().Set(k, v)
	}
	if resp.Status == 0 {
		resp.Status = http.StatusOK
	}
	w.WriteHeader(resp.Status)
	io.WriteString(w, resp.Body)
}

// waitFor polls cond until it holds, failing t after WaitTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s", WaitTimeout, what)
		case <-tick.C:
		}
	}
}

func ok(status int) bool { return status >= 200 && status < 300 }
