package notify_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/notify/notifytest"
)

// mailReason exercises quoted-printable: a line far longer than 76
// characters, non-ASCII, "=", trailing spaces, a lone "." line (SMTP's end
// of data) and a "From " line.
func mailReason() string {
	return "compose up failed: \"container myapp-web-1 is unhealthy\"\n" +
		strings.Repeat("très long journal ligne = ", 20) + "\n" +
		"trailing spaces   \n" +
		".\n" +
		"From the healthcheck: exit 1 — 日本語 🚀\n" +
		"..dots"
}

func flush(t *testing.T, d *notify.Dispatcher) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Run(ctx); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestSMTP(t *testing.T) {
	cert := notifytest.NewCert(t)
	tests := []struct {
		name   string
		tls    string
		server []notifytest.SMTPOption
	}{
		{"plain", "none", nil},
		{"starttls", "starttls", []notifytest.SMTPOption{notifytest.WithSTARTTLS(cert)}},
		{"implicit tls", "implicit", []notifytest.SMTPOption{notifytest.WithImplicitTLS(cert)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			host, port, messages := notifytest.StartSMTP(t, tt.server...)
			to := []string{"ops@example.com", "oncall@example.org"}
			d, logs := newDispatcher(t, config.Notifications{SMTP: &config.SMTP{
				Host: host, Port: port, From: "dockward@example.com", To: to, TLS: tt.tls,
			}}, notify.WithRootCAs(cert.Pool))
			reason := mailReason()
			at := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
			d.Send(notify.Alert{
				Service: "myapp", Event: notify.Rollback, Level: notify.Critical,
				Message: "rolled back myapp to sha256:old", Reason: reason,
				Digest: "sha256:new", Image: "registry.local:5000/myapp:latest", Time: at,
			})
			flush(t, d)
			if s := d.Sent()["smtp"]; s != 1 {
				t.Fatalf(`Sent()["smtp"] = %d, want 1; log:`+"\n%s", s, logs)
			}

			msgs := notifytest.WaitMessages(t, messages, 1)
			if len(msgs) != 1 {
				t.Fatalf("%d mails, want 1", len(msgs))
			}
			m := msgs[0]
			if !slices.Equal(m.To, to) {
				t.Errorf("envelope recipients = %q, want %q", m.To, to)
			}
			if m.From != "dockward@example.com" {
				t.Errorf("envelope sender = %q", m.From)
			}
			if want := "[dockward] critical myapp: rollback"; m.Subject != want {
				t.Errorf("Subject = %q, want %q", m.Subject, want)
			}
			if got, err := m.Header.AddressList("To"); err != nil || len(got) != 2 {
				t.Errorf("To header = %q (%v), want both recipients", m.Header.Get("To"), err)
			}
			if date, err := m.Header.Date(); err != nil || !date.Equal(at) {
				t.Errorf("Date = %v (%v), want %v", date, err, at)
			}
			if id := m.Header.Get("Message-ID"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@host-1>") {
				t.Errorf("Message-ID = %q", id)
			}
			for k, want := range map[string]string{
				"MIME-Version":              "1.0",
				"Content-Type":              "text/plain; charset=utf-8",
				"Content-Transfer-Encoding": "quoted-printable",
			} {
				if got := m.Header.Get(k); got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if !strings.Contains(m.Body, "\n"+reason+"\n") {
				t.Errorf("decoded body does not hold the reason verbatim:\n%s", m.Body)
			}
			if !strings.Contains(m.Body, "rolled back myapp to sha256:old") || !strings.Contains(m.Body, "Digest:  sha256:new") {
				t.Errorf("decoded body lacks the message or digest:\n%s", m.Body)
			}
			for i, line := range strings.Split(string(m.Raw), "\n") {
				if len(strings.TrimRight(line, "\r")) > 78 {
					t.Errorf("raw line %d is %d bytes long; quoted-printable should keep lines short", i, len(line))
				}
			}
		})
	}
}

func TestSMTPHeaderInjection(t *testing.T) {
	host, port, messages := notifytest.StartSMTP(t)
	d, _ := newDispatcher(t, config.Notifications{SMTP: &config.SMTP{
		Host: host, Port: port, From: "dockward@example.com", To: []string{"ops@example.com"}, TLS: "none",
	}})
	d.Send(notify.Alert{Service: "myapp\r\nBcc: evil@example.com", Event: "died\nX-Evil: 1", Level: notify.Critical})
	flush(t, d)
	m := notifytest.WaitMessages(t, messages, 1)[0]
	if len(m.To) != 1 || m.Header.Get("Bcc") != "" || m.Header.Get("X-Evil") != "" {
		t.Errorf("alert text became headers or recipients: to %q, headers %v", m.To, m.Header)
	}
	if !strings.Contains(m.Subject, "myapp  Bcc: evil@example.com") {
		t.Errorf("Subject = %q", m.Subject)
	}
}

func TestSMTPFailures(t *testing.T) {
	cert := notifytest.NewCert(t)
	tests := []struct {
		name    string
		tls     string
		server  []notifytest.SMTPOption
		wantLog string
	}{
		// STARTTLS is required when asked for; never fall back to clear text.
		{"starttls not offered", "starttls", nil, "does not offer STARTTLS"},
		// A server that insists on STARTTLS refuses MAIL with a 5xx: not retried.
		{"server requires starttls", "none", []notifytest.SMTPOption{notifytest.WithSTARTTLS(cert)}, "530"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			host, port, messages := notifytest.StartSMTP(t, tt.server...)
			d, logs := newDispatcher(t, config.Notifications{SMTP: &config.SMTP{
				Host: host, Port: port, From: "dockward@example.com", To: []string{"ops@example.com"}, TLS: tt.tls,
			}}, notify.WithRootCAs(cert.Pool))
			d.Send(notify.Alert{Service: "myapp", Event: notify.Died, Level: notify.Critical})
			flush(t, d)
			if f := d.Failures()["smtp"]; f != 1 {
				t.Errorf(`Failures()["smtp"] = %d, want 1`, f)
			}
			want := `level=ERROR msg="notification failed" channel=smtp event=died service=myapp attempts=1 `
			if !strings.Contains(logs.String(), want) || !strings.Contains(logs.String(), tt.wantLog) {
				t.Errorf("log lacks %q and %q:\n%s", want, tt.wantLog, logs)
			}
			if n := len(messages()); n != 0 {
				t.Errorf("%d mails arrived, want none", n)
			}
		})
	}
}

func TestSMTPUntrustedCertificate(t *testing.T) {
	host, port, _ := notifytest.StartSMTP(t, notifytest.WithImplicitTLS(notifytest.NewCert(t)))
	d, logs := newDispatcher(t, config.Notifications{SMTP: &config.SMTP{
		Host: host, Port: port, From: "dockward@example.com", To: []string{"ops@example.com"}, TLS: "implicit",
	}})
	d.Send(notify.Alert{Service: "myapp", Event: notify.Died, Level: notify.Critical})
	flush(t, d)
	if f := d.Failures()["smtp"]; f != 1 || !strings.Contains(logs.String(), "attempts=1 ") {
		t.Errorf("Failures = %d, want 1 after a single attempt (a bad certificate is not retried):\n%s", f, logs)
	}
}
