package notify_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/notify/notifytest"
)

func TestWebhook(t *testing.T) {
	reason := "healthcheck failed: \"GET /health\" returned 503\n\tbody: {\"status\": \"down\"}\nexit code 1 <&>"
	at := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	env := map[string]string{"TOKEN": "s3cret", "TEAM": "ops"}
	getenv := func(k string) string { return env[k] }

	tests := []struct {
		name       string
		hook       config.Webhook
		wantMethod string
		wantHeader map[string]string
		check      func(t *testing.T, body []byte)
	}{
		{
			name: "template",
			hook: config.Webhook{
				Method: "put",
				Headers: map[string]string{
					"Authorization": "Bearer $TOKEN",
					"X-Team":        "${TEAM}-team",
				},
				Body: `{"text": {{json .Reason}}, "service": "{{.Service}}", "level": "{{.Level}}", ` +
					`"event": {{json .Event}}, "at": {{json .Time}}, "day": "{{.Time.Format "2006-01-02"}}", "host": {{json .Host}}}`,
			},
			wantMethod: "PUT",
			wantHeader: map[string]string{
				"Authorization": "Bearer s3cret",
				"X-Team":        "ops-team",
				"Content-Type":  "application/json",
			},
			check: func(t *testing.T, body []byte) {
				var got map[string]string
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("body is not valid JSON: %v\n%s", err, body)
				}
				want := map[string]string{
					"text": reason, "service": "myapp", "level": "critical", "event": "rollback",
					"at": "2025-06-07T08:09:10Z", "day": "2025-06-07", "host": "host-1",
				}
				for k, v := range want {
					if got[k] != v {
						t.Errorf("body %s = %q, want %q", k, got[k], v)
					}
				}
			},
		},
		{
			name:       "default body",
			hook:       config.Webhook{},
			wantMethod: "POST",
			wantHeader: map[string]string{"Content-Type": "application/json"},
			check: func(t *testing.T, body []byte) {
				var got notify.TemplateData
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("body is not valid JSON: %v\n%s", err, body)
				}
				want := notify.TemplateData{
					Service: "myapp", Event: "rollback", Level: "critical", Message: "rolled back myapp",
					Reason: reason, Digest: "sha256:abc", Image: "myapp:latest", Host: "host-1", Time: at,
				}
				if got != want {
					t.Errorf("body = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "own content type, not JSON",
			hook: config.Webhook{
				Method:  "POST",
				Headers: map[string]string{"content-type": "text/plain; charset=utf-8"},
				Body:    `{{.Level}} {{.Service}}: {{.Message}}`,
			},
			wantMethod: "POST",
			wantHeader: map[string]string{"Content-Type": "text/plain; charset=utf-8"},
			check: func(t *testing.T, body []byte) {
				if want := "critical myapp: rolled back myapp"; string(body) != want {
					t.Errorf("body = %q, want %q", body, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv := notifytest.StartWebhook(t)
			tt.hook.Name, tt.hook.URL = "ops", rcv.URL()
			d, _ := newDispatcher(t, config.Notifications{Webhooks: []config.Webhook{tt.hook}}, notify.WithGetenv(getenv))
			d.Send(notify.Alert{
				Service: "myapp", Event: notify.Rollback, Level: notify.Critical,
				Message: "rolled back myapp", Reason: reason, Digest: "sha256:abc", Image: "myapp:latest", Time: at,
			})
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			d.Run(ctx) // flushes

			reqs := rcv.Requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != tt.wantMethod {
				t.Errorf("method = %s, want %s", r.Method, tt.wantMethod)
			}
			for k, v := range tt.wantHeader {
				if got := r.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			tt.check(t, r.Body)
		})
	}
}

func TestSendFillsHostAndTime(t *testing.T) {
	rcv := notifytest.StartWebhook(t)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	d, _ := newDispatcher(t, config.Notifications{Webhooks: []config.Webhook{{Name: "x", URL: rcv.URL()}}},
		notify.WithHostname("box-7"), notify.WithClock(func() time.Time { return now }))
	d.Send(notify.Alert{Service: "myapp", Event: notify.Started})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Run(ctx)
	reqs := rcv.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	var got notify.TemplateData
	if err := json.Unmarshal(reqs[0].Body, &got); err != nil {
		t.Fatal(err)
	}
	if got.Host != "box-7" || !got.Time.Equal(now) || got.Level != "info" {
		t.Errorf("host, time, level = %q, %v, %q; want box-7, %v, info", got.Host, got.Time, got.Level, now)
	}
}

func TestWebhookHTTPSAndGet(t *testing.T) {
	var got []*http.Request
	var mu sync.Mutex
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r)
	}))
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())

	d, logs := newDispatcher(t, config.Notifications{Webhooks: []config.Webhook{
		{Name: "ping", URL: srv.URL + "/ping?source=dockward", Method: "GET"},
	}}, notify.WithRootCAs(pool))
	d.Send(notify.Alert{Service: "myapp", Event: notify.Started})
	flush(t, d)
	if s := d.Sent()["webhook:ping"]; s != 1 {
		t.Fatalf(`Sent()["webhook:ping"] = %d, want 1; log:`+"\n%s", s, logs)
	}
	mu.Lock()
	defer mu.Unlock()
	r := got[0]
	if r.Method != "GET" || r.URL.RawQuery != "source=dockward" || r.ContentLength != 0 || r.Header.Get("Content-Type") != "" {
		t.Errorf("request = %s %s, length %d, Content-Type %q; want a bare GET", r.Method, r.URL, r.ContentLength, r.Header.Get("Content-Type"))
	}
}

// A body is JSON when it looks like JSON or the configured Content-Type
// says so; any other body is plain text. What is sent carries that type
// unless the config names one.
func TestWebhookBodyContentType(t *testing.T) {
	tests := []struct {
		name    string
		headers map[string]string
		body    string
		wantCT  string
		want    string // the body sent
	}{
		{name: "plain text, ntfy style", body: `{{.Service}}: {{.Message}}`,
			wantCT: "text/plain; charset=utf-8", want: "myapp: rolled back myapp"},
		{name: "plain text with a JSON-quoted value", body: `{{.Level}} {{json .Message}}`,
			wantCT: "text/plain; charset=utf-8", want: `critical "rolled back myapp"`},
		{name: "JSON object", body: `{"m": {{json .Message}}}`,
			wantCT: "application/json", want: `{"m": "rolled back myapp"}`},
		{name: "JSON array after spaces", body: "\n  [{{json .Service}}, {{json .Level}}]",
			wantCT: "application/json", want: "\n  [\"myapp\", \"critical\"]"},
		{name: "default body", wantCT: "application/json"},
		{name: "configured type kept for plain text", headers: map[string]string{"Content-Type": "text/markdown"},
			body: `**{{.Service}}** {{.Message}}`, wantCT: "text/markdown", want: "**myapp** rolled back myapp"},
		{name: "configured +json type", headers: map[string]string{"content-type": "application/vnd.ops+json"},
			body: `{"m": {{json .Message}}}`, wantCT: "application/vnd.ops+json", want: `{"m": "rolled back myapp"}`},
		{name: "configured text type, JSON body", headers: map[string]string{"Content-Type": "text/plain"},
			body: `{"m": {{json .Message}}}`, wantCT: "text/plain", want: `{"m": "rolled back myapp"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv := notifytest.StartWebhook(t)
			hook := config.Webhook{Name: "ops", URL: rcv.URL(), Headers: tt.headers, Body: tt.body}
			d, _ := newDispatcher(t, config.Notifications{Webhooks: []config.Webhook{hook}})
			d.Send(notify.Alert{Service: "myapp", Event: notify.Rollback, Level: notify.Critical, Message: "rolled back myapp"})
			flush(t, d)
			reqs := rcv.Requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			if got := reqs[0].Header.Get("Content-Type"); got != tt.wantCT {
				t.Errorf("Content-Type = %q, want %q", got, tt.wantCT)
			}
			if tt.want != "" && string(reqs[0].Body) != tt.want {
				t.Errorf("body = %q, want %q", reqs[0].Body, tt.want)
			}
		})
	}
}

// A body that looks like JSON, or that the configured Content-Type calls
// JSON, must render valid JSON; the others are refused at start.
func TestWebhookBodyRefused(t *testing.T) {
	tests := []struct {
		name    string
		headers map[string]string
		body    string
	}{
		{name: "looks like JSON, value not quoted", body: `{"text": "{{.Reason}}"}`},
		{name: "looks like JSON after spaces, not closed", body: ` [{{json .Reason}}`},
		{name: "header says JSON, plain body", headers: map[string]string{"Content-Type": "application/json; charset=utf-8"},
			body: `{{.Service}}: {{.Message}}`},
		{name: "header says +json, plain body", headers: map[string]string{"Content-Type": "application/problem+json"},
			body: `{{.Message}}`},
		{name: "header says text, body looks like broken JSON", headers: map[string]string{"Content-Type": "text/plain"},
			body: `{"text": "{{.Reason}}"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Notifications{Webhooks: []config.Webhook{{Name: "ops", URL: "http://127.0.0.1:1/", Headers: tt.headers, Body: tt.body}}}
			_, err := notify.New(cfg, nil)
			if want := "notifications.webhooks[0].body: does not render valid JSON"; err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("New() error = %v, want one containing %q", err, want)
			}
		})
	}
}
