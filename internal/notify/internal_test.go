package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/textproto"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dockward/dockward/internal/notify/notifytest"
)

func TestTruncate(t *testing.T) {
	tests := []struct {
		name string
		in   string
		n    int
		want string
	}{
		{"fits", "hello", 5, "hello"},
		{"cut ascii", "hello world", 6, "hello…"},
		{"zero", "hello", 0, ""},
		{"one", "hello", 1, "…"},
		{"empty", "", 3, ""},
		{"multibyte kept whole", "héllo wörld", 4, "hél…"},
		{"cjk", "日本語のテキスト", 4, "日本語…"},
		// 🚀 is outside the BMP: two UTF-16 units, so it does not fit in
		// the 2 units left after "ab".
		{"astral counts twice", "ab🚀cd", 4, "ab…"},
		{"astral fits", "ab🚀cd", 6, "ab🚀cd"},
		{"astral exact", "🚀🚀🚀", 5, "🚀🚀…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := truncate(tt.in, tt.n)
			if got != tt.want {
				t.Errorf("truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
			}
			if !utf8.ValidString(got) {
				t.Errorf("truncate(%q, %d) = %q is not valid UTF-8", tt.in, tt.n, got)
			}
			if textLen(got) > tt.n {
				t.Errorf("truncate(%q, %d) is %d long", tt.in, tt.n, textLen(got))
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	long := strings.Repeat("é\"x\n", 3000)
	tests := []struct {
		name                   string
		message, reason        string
		limit                  int
		wantPrefix, wantSuffix string
	}{
		{"message only", "deployed", "", 100, "deployed", "deployed"},
		{"reason in a block", "rolled back", "exit 1", 100, "rolled back\n```\nexit 1", "exit 1\n```"},
		{"long reason cut, block closed", "rolled back", long, 4096, "rolled back\n```\né\"x", "…\n```"},
		{"fence in reason defused", "", "a```b", 100, "```\na`\u200b`\u200b`b", "b\n```"},
		{"no room for the reason", "rolled back", "exit 1", 20, "rolled back", "rolled back"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := describe(tt.message, tt.reason, tt.limit)
			if textLen(got) > tt.limit {
				t.Errorf("describe: %d characters, limit %d", textLen(got), tt.limit)
			}
			if !strings.HasPrefix(got, tt.wantPrefix) || !strings.HasSuffix(got, tt.wantSuffix) {
				t.Errorf("describe(%q, %.20q…, %d) = %.60q…%q, want prefix %q and suffix %q",
					tt.message, tt.reason, tt.limit, got, got[max(0, len(got)-10):], tt.wantPrefix, tt.wantSuffix)
			}
		})
	}
}

func TestEmbedLimits(t *testing.T) {
	huge := strings.Repeat("日本🚀\"", 3000)
	a := Alert{
		Service: "myapp", Event: Rollback, Level: Critical,
		Message: huge, Reason: huge, Digest: huge, Image: huge, Host: huge,
		Time: time.Unix(0, 0),
	}
	e := embed(a)
	total := textLen(e.Title) + textLen(e.Description) + textLen(e.Footer.Text)
	for _, f := range e.Fields {
		total += textLen(f.Name) + textLen(f.Value)
		if textLen(f.Value) > discordMaxFieldValue {
			t.Errorf("field %s is %d long", f.Name, textLen(f.Value))
		}
	}
	if total > discordMaxEmbedTotal {
		t.Errorf("embed holds %d characters, limit %d", total, discordMaxEmbedTotal)
	}
	if textLen(e.Description) > discordMaxDescription {
		t.Errorf("description is %d long", textLen(e.Description))
	}
}

func TestRetryAfter(t *testing.T) {
	tests := []struct {
		name   string
		header string
		body   string
		want   time.Duration
	}{
		{"discord body", "", `{"message":"You are being rate limited.","retry_after":0.05,"global":false}`, 50 * time.Millisecond},
		{"body wins over rounded header", "1", `{"retry_after":0.25}`, 250 * time.Millisecond},
		{"header seconds", "2", ``, 2 * time.Second},
		{"header fraction", "0.5", `not json`, 500 * time.Millisecond},
		{"nothing", "", ``, 0},
		{"garbage", "soon", `{}`, 0},
		{"negative", "-3", `{"retry_after":-1}`, 0},
		{"absurd is clamped to a day", "1e12", ``, 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retryAfter(tt.header, []byte(tt.body)); got != tt.want {
				t.Errorf("retryAfter(%q, %q) = %v, want %v", tt.header, tt.body, got, tt.want)
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantRetry bool
		wantAfter time.Duration
	}{
		{"network", errors.New("connection refused"), true, 0},
		{"5xx", fmt.Errorf("post: %w", &statusError{code: 502}), true, 0},
		{"429", &statusError{code: 429, retryAfter: time.Second}, true, time.Second},
		{"400", &statusError{code: 400}, false, 0},
		{"404", &statusError{code: 404}, false, 0},
		{"permanent", permanent(errors.New("no STARTTLS")), false, 0},
		{"smtp 4xx", fmt.Errorf("rcpt: %w", &textproto.Error{Code: 451}), true, 0},
		{"smtp 5xx", fmt.Errorf("rcpt: %w", &textproto.Error{Code: 550}), false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			retry, after := retryable(tt.err)
			if retry != tt.wantRetry || after != tt.wantAfter {
				t.Errorf("retryable(%v) = %v, %v; want %v, %v", tt.err, retry, after, tt.wantRetry, tt.wantAfter)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	base, maxWait := 100*time.Millisecond, time.Second
	tests := []struct {
		n        int
		min, max time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{3, 200 * time.Millisecond, 400 * time.Millisecond},
		{10, 500 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		for range 50 {
			if got := backoff(base, maxWait, tt.n); got < tt.min || got > tt.max {
				t.Fatalf("backoff(%v, %v, %d) = %v, want within [%v, %v]", base, maxWait, tt.n, got, tt.min, tt.max)
			}
		}
	}
}

func TestLevel(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Level
	}{{"", Info}, {"info", Info}, {"warning", Warning}, {"critical", Critical}} {
		got, err := ParseLevel(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if tt.in != "" && got.String() != tt.in {
			t.Errorf("%v.String() = %q, want %q", got, got.String(), tt.in)
		}
	}
	if _, err := ParseLevel("error"); err == nil {
		t.Error(`ParseLevel("error") succeeded, want an error`)
	}
}

func TestMessageHeaders(t *testing.T) {
	m := &mailer{from: "dockward@example.com", to: []string{"a@example.com", "b@example.com"}, helo: "host-1"}
	msg := string(m.message(Alert{
		Service: "myapp\r\nBcc: evil@example.com",
		Event:   Rollback,
		Level:   Critical,
		Time:    time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}))
	head, _, _ := strings.Cut(msg, "\r\n\r\n")
	for _, line := range strings.Split(head, "\r\n") {
		if strings.HasPrefix(strings.ToLower(line), "bcc:") {
			t.Errorf("a service name injected a header: %q", line)
		}
	}
	for _, want := range []string{
		"From: dockward@example.com\r\n",
		"To: a@example.com, b@example.com\r\n",
		"Subject: [dockward] critical myapp  Bcc: evil@example.com: rollback\r\n",
		"Date: Thu, 02 Jan 2025 03:04:05 +0000\r\n",
		"MIME-Version: 1.0\r\n",
		"Content-Type: text/plain; charset=utf-8\r\n",
		"Content-Transfer-Encoding: quoted-printable\r\n",
	} {
		if !strings.Contains(head+"\r\n", want) {
			t.Errorf("message header lacks %q:\n%s", want, head)
		}
	}
}

// FuzzEmbed checks that whatever an alert holds, the Discord message obeys
// Discord's contract as the test receiver enforces it.
func FuzzEmbed(f *testing.F) {
	f.Add("myapp", "rolled back", "exit 1", "sha256:abc")
	f.Add("", "", "", "")
	f.Add("svc", strings.Repeat("🚀", 3000), strings.Repeat("日\"\n", 4000), strings.Repeat("x", 2000))
	f.Add("a\xffb", "```", "\r\n\r```\x00", "\u200b")
	f.Fuzz(func(t *testing.T, service, message, reason, digest string) {
		a := Alert{Service: service, Event: Rollback, Level: Critical, Message: message, Reason: reason,
			Digest: digest, Image: digest, Host: service, Time: time.Unix(0, 0)}
		body, err := json.Marshal(discordMessage{Username: "dockward", Embeds: []discordEmbed{embed(a)}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := notifytest.ParseDiscord("application/json", body); err != nil {
			t.Errorf("embed breaks Discord's contract: %v", err)
		}
	})
}
