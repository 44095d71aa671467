package notifytest

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// Request is one request a Webhook received.
type Request struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
	Body     []byte
	Received time.Time
}

// Webhook is a generic webhook endpoint that records what it accepts. It
// answers 200 unless scripted otherwise.
type Webhook struct {
	receiver
	requests []Request // guarded by receiver.mu
}

// StartWebhook starts a webhook endpoint; t.Cleanup stops it.
func StartWebhook(t testing.TB) *Webhook {
	t.Helper()
	w := &Webhook{}
	w.start(t, http.HandlerFunc(w.serve))
	return w
}

// URL is the endpoint's URL, /hook on the test server.
func (w *Webhook) URL() string { return w.srv.URL + "/hook" }

// Requests returns the requests answered with a 2xx, in arrival order.
func (w *Webhook) Requests() []Request {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Request(nil), w.requests...)
}

// WaitRequests waits until at least n requests were accepted and returns
// them; it fails t after WaitTimeout.
func (w *Webhook) WaitRequests(t testing.TB, n int) []Request {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d webhook request(s)", n), func() bool { return len(w.Requests()) >= n })
	return w.Requests()
}

func (w *Webhook) serve(rw http.ResponseWriter, req *http.Request) {
	now := time.Now()
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	resp, scripted := w.arrive(now)
	if scripted {
		w.reply(rw, req, resp)
		if resp.Hang || !ok(resp.Status) {
			return
		}
	} else {
		rw.WriteHeader(http.StatusOK)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.requests = append(w.requests, Request{
		Method:   req.Method,
		Path:     req.URL.Path,
		RawQuery: req.URL.RawQuery,
		Header:   req.Header.Clone(),
		Body:     body,
		Received: now,
	})
}
