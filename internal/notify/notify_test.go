package notify_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/notify/notifytest"
)

// logBuffer collects the dispatcher's log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) count(substr string) int { return strings.Count(l.String(), substr) }

func newDispatcher(t *testing.T, cfg config.Notifications, opts ...notify.Option) (*notify.Dispatcher, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// Test-sized retries and timeouts; opts may override them.
	all := append([]notify.Option{
		notify.WithRetryBase(time.Millisecond),
		notify.WithAttemptTimeout(5 * time.Second),
		notify.WithHostname("host-1"),
	}, opts...)
	d, err := notify.New(cfg, logger, all...)
	if err != nil {
		t.Fatalf("notify.New: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("dispatcher log:\n%s", logs)
		}
	})
	return d, logs
}

// start runs d until the returned stop is called (or the test ends); stop
// returns how long Run took to return after the cancel.
func start(t *testing.T, d *notify.Dispatcher) (stop func() time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			begin := time.Now()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
			took = time.Since(begin)
		})
		return took
	}
	t.Cleanup(func() { stop() })
	return stop
}

// eventually polls cond until it holds, failing after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

func discordConfig(url string) config.Notifications {
	return config.Notifications{Discord: &config.Discord{WebhookURL: url, Username: "dockward"}}
}

// longReason is 10 KB of what a failing healthcheck might print, with
// multibyte runes, quotes and a code fence.
func longReason() string {
	var b strings.Builder
	for b.Len() < 10<<10 {
		b.WriteString("healthcheck \"GET /health\" → 503: «Service Unavailable» 日本語 🚀 ``` done\n")
	}
	return b.String()
}

func TestDiscordContract(t *testing.T) {
	tests := []struct {
		name      string
		level     notify.Level
		message   string
		wantColor int
	}{
		{"info", notify.Info, "updated myapp", 0x2ECC71},
		{"warning", notify.Warning, "restarted myapp", 0xF39C12},
		{"critical", notify.Critical, "rolled back myapp", 0xE74C3C},
		// The message takes all the room; the reason is left out.
		{"long message", notify.Critical, strings.Repeat("ü", 5000), 0xE74C3C},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv := notifytest.StartDiscord(t)
			d, _ := newDispatcher(t, discordConfig(rcv.URL()))
			start(t, d)
			reason := longReason()
			at := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
			d.Send(notify.Alert{
				Service: "myapp", Event: notify.Rollback, Level: tt.level,
				Message: tt.message, Reason: reason,
				Digest: "sha256:abc", Image: "registry.local:5000/myapp:latest", Time: at,
			})
			msgs := rcv.WaitMessages(t, 1)
			if len(msgs) != 1 || len(msgs[0].Embeds) != 1 {
				t.Fatalf("got %d messages (%+v), want 1 with 1 embed", len(msgs), msgs)
			}
			m, e := msgs[0], msgs[0].Embeds[0]
			if m.Username != "dockward" {
				t.Errorf("username = %q, want dockward", m.Username)
			}
			if e.Color != tt.wantColor {
				t.Errorf("color = %#x, want %#x", e.Color, tt.wantColor)
			}
			if e.Title != "myapp: rollback" {
				t.Errorf("title = %q, want %q", e.Title, "myapp: rollback")
			}
			for name, want := range map[string]string{
				"Service": "myapp", "Event": "rollback", "Level": tt.level.String(),
				"Digest": "sha256:abc", "Host": "host-1", "Image": "registry.local:5000/myapp:latest",
			} {
				if got := e.Field(name); got != want {
					t.Errorf("field %s = %q, want %q", name, got, want)
				}
			}
			if e.Timestamp != "2025-06-07T08:09:10Z" {
				t.Errorf("timestamp = %q, want 2025-06-07T08:09:10Z", e.Timestamp)
			}
			if len(tt.message) < 100 {
				if !strings.HasPrefix(e.Description, tt.message+"\n```\nhealthcheck \"GET /health\" → 503") ||
					!strings.HasSuffix(e.Description, "…\n```") {
					t.Errorf("description does not hold the message and the cut reason in a closed code block: %.100q…", e.Description)
				}
			} else if !strings.HasPrefix(e.Description, "üüü") || !strings.HasSuffix(e.Description, "ü…") {
				t.Errorf("description is not the cut message: %.100q…", e.Description)
			}
			eventually(t, "the alert to count as sent", func() bool { return d.Sent()["discord"] == 1 })
			// The receiver fails the test at cleanup if a limit was broken.
		})
	}
}

func TestDiscordRateLimit(t *testing.T) {
	rcv := notifytest.StartDiscord(t)
	rcv.Script(notifytest.Response{
		Status: 429,
		Header: map[string]string{"Content-Type": "application/json", "Retry-After": "1"},
		Body:   `{"message":"You are being rate limited.","retry_after":0.05,"global":false}`,
	})
	d, _ := newDispatcher(t, discordConfig(rcv.URL()))
	start(t, d)
	d.Send(notify.Alert{Service: "myapp", Event: notify.Rollback, Level: notify.Critical, Message: "rolled back"})

	msgs := rcv.WaitMessages(t, 1)
	attempts := rcv.Attempts()
	if len(attempts) != 2 {
		t.Fatalf("%d requests, want 2 (429, then the retry)", len(attempts))
	}
	gap := attempts[1].Sub(attempts[0])
	if gap < 50*time.Millisecond || gap > 900*time.Millisecond {
		t.Errorf("retried %v after the 429, want retry_after (50ms) from the body, not the 1s header or the 1ms backoff", gap)
	}
	if len(msgs) != 1 {
		t.Errorf("%d messages arrived, want exactly 1", len(msgs))
	}
	eventually(t, "the alert to count as sent", func() bool { return d.Sent()["discord"] == 1 })
	if f := d.Failures()["discord"]; f != 0 {
		t.Errorf(`Failures()["discord"] = %d, want 0`, f)
	}
}

func TestRetryAfterIsCapped(t *testing.T) {
	rcv := notifytest.StartDiscord(t)
	rcv.Script(notifytest.Response{Status: 429, Body: `{"message":"You are being rate limited.","retry_after":3600,"global":true}`})
	d, _ := newDispatcher(t, discordConfig(rcv.URL()), notify.WithMaxRetryAfter(20*time.Millisecond))
	start(t, d)
	d.Send(notify.Alert{Service: "myapp", Event: notify.Died, Level: notify.Critical})
	rcv.WaitMessages(t, 1)
}

func TestRetries(t *testing.T) {
	r := func(status int) notifytest.Response {
		return notifytest.Response{Status: status, Body: `{"message":"nope"}`}
	}
	tests := []struct {
		name         string
		script       []notifytest.Response
		wantAttempts int
		wantSent     uint64
		wantFailed   uint64
		wantLog      string
	}{
		{"5xx then success is retried", []notifytest.Response{r(500), r(502)}, 3, 1, 0, ""},
		{"5xx every time gives up after 3 attempts", []notifytest.Response{r(503), r(503), r(503)}, 3, 0, 1, "http 503 Service Unavailable"},
		{"400 is not retried", []notifytest.Response{r(400)}, 1, 0, 1, `http 400 Bad Request: {\"message\":\"nope\"}`},
		{"404 is not retried", []notifytest.Response{r(404)}, 1, 0, 1, "http 404 Not Found"},
		{"429 without retry_after backs off", []notifytest.Response{r(429)}, 2, 1, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rcv := notifytest.StartDiscord(t)
			rcv.Script(tt.script...)
			d, logs := newDispatcher(t, discordConfig(rcv.URL()))
			start(t, d)
			d.Send(notify.Alert{Service: "myapp", Event: notify.HealFailed, Level: notify.Critical})
			eventually(t, "the alert to be sent or to fail", func() bool {
				return d.Sent()["discord"]+d.Failures()["discord"] > 0
			})
			if got := len(rcv.Attempts()); got != tt.wantAttempts {
				t.Errorf("%d attempts, want %d", got, tt.wantAttempts)
			}
			if s, f := d.Sent()["discord"], d.Failures()["discord"]; s != tt.wantSent || f != tt.wantFailed {
				t.Errorf(`Sent()["discord"] = %d, Failures()["discord"] = %d; want %d, %d`, s, f, tt.wantSent, tt.wantFailed)
			}
			if tt.wantFailed > 0 {
				want := `level=ERROR msg="notification failed" channel=discord event=heal_failed service=myapp attempts=` +
					fmt.Sprint(tt.wantAttempts)
				if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), tt.wantLog) {
					t.Errorf("log lacks %q and %q:\n%s", want, tt.wantLog, logs)
				}
			}
			if strings.Contains(logs.String(), "notifytest-token") {
				t.Errorf("the webhook token leaked into the log:\n%s", logs)
			}
		})
	}
}

func TestHangingChannelTimesOutAndOthersDeliver(t *testing.T) {
	slow := notifytest.StartDiscord(t)
	slow.Script(notifytest.Response{Hang: true}, notifytest.Response{Hang: true})
	fastHook := notifytest.StartWebhook(t)
	cfg := discordConfig(slow.URL())
	cfg.Webhooks = []config.Webhook{{Name: "ops", URL: fastHook.URL()}}
	const timeout = 200 * time.Millisecond
	d, logs := newDispatcher(t, cfg, notify.WithAttemptTimeout(timeout), notify.WithAttempts(2))
	start(t, d)

	sent := time.Now()
	for i := range 3 {
		d.Send(notify.Alert{Service: "myapp", Event: notify.Died, Level: notify.Critical, Message: string(rune('a' + i))})
	}
	fastHook.WaitRequests(t, 3)
	if took := time.Since(sent); took >= timeout {
		t.Errorf("the webhook got its alerts after %v, want well before the hanging Discord's timeout (%v)", took, timeout)
	}
	eventually(t, "the Discord failure", func() bool { return d.Failures()["discord"] == 1 })
	if !strings.Contains(logs.String(), "attempt timed out after 200ms") {
		t.Errorf("log does not say the attempt timed out:\n%s", logs)
	}
	// The next alerts reach Discord once it answers again.
	slow.WaitMessages(t, 2)
	if f := d.Failures(); f["discord"] != 1 || f["webhook:ops"] != 0 {
		t.Errorf("Failures() = %v, want discord 1, webhook:ops 0", f)
	}
}

func TestQueueFullDrops(t *testing.T) {
	hook := notifytest.StartWebhook(t)
	hook.Script(notifytest.Response{Hang: true})
	cfg := config.Notifications{Webhooks: []config.Webhook{{Name: "slow", URL: hook.URL()}}}
	d, logs := newDispatcher(t, cfg,
		notify.WithQueueSize(2), notify.WithAttempts(1), notify.WithFlushTimeout(50*time.Millisecond))
	stop := start(t, d)

	a := notify.Alert{Service: "myapp", Event: notify.Rollback, Level: notify.Critical}
	d.Send(a)
	eventually(t, "the first alert to block the sender", func() bool { return len(hook.Attempts()) == 1 })

	begin := time.Now()
	for range 5 { // 2 fill the queue, 3 are dropped
		d.Send(a)
	}
	if took := time.Since(begin); took > 50*time.Millisecond {
		t.Errorf("Send blocked for %v", took)
	}
	if got := d.Failures()["webhook:slow"]; got != 3 {
		t.Errorf(`Failures()["webhook:slow"] = %d, want 3 dropped`, got)
	}
	want := `level=ERROR msg="notification dropped: queue full" channel=webhook:slow event=rollback service=myapp queue_size=2`
	if got := logs.count(want); got != 3 {
		t.Errorf("log has %d lines %q, want 3:\n%s", got, want, logs)
	}
	stop()
	// The hanging one and the two queued ones fail at the flush deadline.
	if got := d.Failures()["webhook:slow"]; got != 6 {
		t.Errorf(`after Run: Failures()["webhook:slow"] = %d, want 6`, got)
	}
}

func TestRunFlushesQueuedAlerts(t *testing.T) {
	dc := notifytest.StartDiscord(t)
	hook := notifytest.StartWebhook(t)
	cfg := discordConfig(dc.URL())
	cfg.Webhooks = []config.Webhook{{Name: "ops", URL: hook.URL()}}
	d, _ := newDispatcher(t, cfg)

	// Queued before Run, whose context is already done: all must still go.
	for i := range 5 {
		d.Send(notify.Alert{Service: "myapp", Event: notify.Stopping, Message: string(rune('a' + i))})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if got := len(dc.Messages()); got != 5 {
		t.Errorf("discord got %d messages, want 5", got)
	}
	if got := len(hook.Requests()); got != 5 {
		t.Errorf("webhook got %d requests, want 5", got)
	}
	if s := d.Sent(); s["discord"] != 5 || s["webhook:ops"] != 5 {
		t.Errorf("Sent() = %v, want 5 each", s)
	}
	if err := d.Run(context.Background()); err == nil {
		t.Error("a second Run succeeded, want an error")
	}
}

func TestRunReturnsWithinFlushTimeout(t *testing.T) {
	hook := notifytest.StartWebhook(t)
	hook.Script(notifytest.Response{Hang: true}, notifytest.Response{Hang: true})
	cfg := config.Notifications{Webhooks: []config.Webhook{{Name: "hang", URL: hook.URL()}}}
	const flush = 150 * time.Millisecond
	d, logs := newDispatcher(t, cfg, notify.WithAttemptTimeout(time.Minute), notify.WithFlushTimeout(flush))
	stop := start(t, d)
	d.Send(notify.Alert{Service: "myapp", Event: notify.Stopping})
	d.Send(notify.Alert{Service: "myapp", Event: notify.Stopping})
	eventually(t, "the first request", func() bool { return len(hook.Attempts()) == 1 })

	took := stop()
	if took < flush || took > flush+500*time.Millisecond {
		t.Errorf("Run returned %v after the cancel, want about the flush timeout %v", took, flush)
	}
	if got := d.Failures()["webhook:hang"]; got != 2 {
		t.Errorf(`Failures()["webhook:hang"] = %d, want 2`, got)
	}
	if !strings.Contains(logs.String(), "flush timeout 150ms exceeded") {
		t.Errorf("log does not say the flush timed out:\n%s", logs)
	}
}

func TestMinLevel(t *testing.T) {
	dc := notifytest.StartDiscord(t)
	hook := notifytest.StartWebhook(t)
	cfg := config.Notifications{
		Discord:  &config.Discord{WebhookURL: dc.URL(), MinLevel: "critical"},
		Webhooks: []config.Webhook{{Name: "all", URL: hook.URL()}, {Name: "warn", URL: hook.URL(), MinLevel: "warning"}},
	}
	d, _ := newDispatcher(t, cfg)
	for _, l := range []notify.Level{notify.Info, notify.Warning, notify.Critical} {
		d.Send(notify.Alert{Service: "myapp", Event: notify.Died, Level: l})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d.Run(ctx)
	want := map[string]uint64{"discord": 1, "webhook:all": 3, "webhook:warn": 2}
	got := d.Sent()
	for ch, n := range want {
		if got[ch] != n {
			t.Errorf("Sent()[%q] = %d, want %d", ch, got[ch], n)
		}
	}
	if f := d.Failures(); len(f) != 3 || f["discord"]+f["webhook:all"]+f["webhook:warn"] != 0 {
		t.Errorf("Failures() = %v, want all three channels at 0", f)
	}
	if ch := d.Channels(); strings.Join(ch, ",") != "discord,webhook:all,webhook:warn" {
		t.Errorf("Channels() = %v", ch)
	}
}

func TestNewErrors(t *testing.T) {
	hook := func(body string) config.Notifications {
		return config.Notifications{Webhooks: []config.Webhook{
			{Name: "ok", URL: "http://127.0.0.1:1/"},
			{Name: "bad", URL: "http://127.0.0.1:1/", Body: body},
		}}
	}
	tests := []struct {
		name string
		cfg  config.Notifications
		want string
	}{
		{"template does not parse", config.Notifications{Webhooks: []config.Webhook{{Name: "x", URL: "http://h/", Body: `{"text": {{json .Reason}`}}},
			"notifications.webhooks[0].body: template: body:1: "},
		{"second webhook", hook(`{{if}}`), "notifications.webhooks[1].body: template: "},
		{"unknown field", hook(`{"x": {{json .Nope}}}`), "can't evaluate field Nope"},
		{"unknown func", hook(`{{yaml .Reason}}`), `notifications.webhooks[1].body: template: body:1: function "yaml" not defined`},
		{"unquoted reason is not JSON", hook(`{"text": "{{.Reason}}"}`), "notifications.webhooks[1].body: does not render valid JSON"},
		{"bad method", config.Notifications{Webhooks: []config.Webhook{{Name: "x", URL: "http://h/", Method: "DELETE"}}},
			"notifications.webhooks[0].method: must be POST, PUT, PATCH or GET"},
		{"bad level", config.Notifications{Webhooks: []config.Webhook{{Name: "x", URL: "http://h/", MinLevel: "error"}}},
			"notifications.webhooks[0].min_level: must be one of info, warning, critical"},
		{"discord username", config.Notifications{Discord: &config.Discord{WebhookURL: "https://h/api/webhooks/1/t", Username: "My Discord Bot"}},
			"notifications.discord.username: Discord rejects"},
		{"smtp tls", config.Notifications{SMTP: &config.SMTP{Host: "h", Port: 25, From: "a@b", To: []string{"c@d"}, TLS: "ssl"}},
			"notifications.smtp.tls: must be starttls, implicit or none"},
		{"smtp password in clear", config.Notifications{SMTP: &config.SMTP{Host: "mail.example.com", Port: 25, From: "a@b", To: []string{"c@d"}, TLS: "none", Username: "u", Password: "p"}},
			`notifications.smtp.tls: "none" would send the password in clear`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := notify.New(tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestNewEmpty(t *testing.T) {
	d, err := notify.New(config.Notifications{}, nil)
	if err != nil {
		t.Fatalf("New(empty) = %v", err)
	}
	d.Send(notify.Alert{Service: "myapp", Event: notify.Started})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Errorf("Run = %v", err)
	}
	if len(d.Failures()) != 0 {
		t.Errorf("Failures() = %v, want empty", d.Failures())
	}
}

func TestSendAfterRunCountsAsFailure(t *testing.T) {
	hook := notifytest.StartWebhook(t)
	d, logs := newDispatcher(t, config.Notifications{Webhooks: []config.Webhook{{Name: "x", URL: hook.URL()}}})
	flush(t, d)
	d.Send(notify.Alert{Service: "myapp", Event: notify.Stopping})
	if f := d.Failures()["webhook:x"]; f != 1 {
		t.Errorf(`Failures()["webhook:x"] = %d, want 1`, f)
	}
	if !strings.Contains(logs.String(), `level=ERROR msg="notification dropped: dispatcher has stopped" channel=webhook:x event=stopping service=myapp`) {
		t.Errorf("log does not report the drop:\n%s", logs)
	}
}
