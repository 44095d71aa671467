package notifytest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Discord's documented limits for "Execute Webhook", in characters.
// Characters are counted as UTF-16 code units, the stricter reading: a rune
// outside the Basic Multilingual Plane counts twice.
const (
	DiscordMaxContent     = 2000
	DiscordMaxUsername    = 80
	DiscordMaxEmbeds      = 10
	DiscordMaxTitle       = 256
	DiscordMaxDescription = 4096
	DiscordMaxFields      = 25
	DiscordMaxFieldName   = 256
	DiscordMaxFieldValue  = 1024
	DiscordMaxFooter      = 2048
	DiscordMaxAuthor      = 256
	DiscordMaxEmbedsTotal = 6000
)

// DiscordMessage is the JSON body of Discord's "Execute Webhook", as far as
// webhooks may use it. Unknown fields are a contract violation.
type DiscordMessage struct {
	Content         string          `json:"content,omitempty"`
	Username        string          `json:"username,omitempty"`
	AvatarURL       string          `json:"avatar_url,omitempty"`
	TTS             bool            `json:"tts,omitempty"`
	Embeds          []DiscordEmbed  `json:"embeds,omitempty"`
	AllowedMentions json.RawMessage `json:"allowed_mentions,omitempty"`
	Flags           int             `json:"flags,omitempty"`
	ThreadName      string          `json:"thread_name,omitempty"`

	// Received is when the receiver accepted the message.
	Received time.Time `json:"-"`
}

// DiscordEmbed is one embed object.
type DiscordEmbed struct {
	Title       string         `json:"title,omitempty"`
	Type        string         `json:"type,omitempty"`
	Description string         `json:"description,omitempty"`
	URL         string         `json:"url,omitempty"`
	Timestamp   string         `json:"timestamp,omitempty"`
	Color       int            `json:"color,omitempty"`
	Footer      *DiscordFooter `json:"footer,omitempty"`
	Image       *DiscordMedia  `json:"image,omitempty"`
	Thumbnail   *DiscordMedia  `json:"thumbnail,omitempty"`
	Author      *DiscordAuthor `json:"author,omitempty"`
	Fields      []DiscordField `json:"fields,omitempty"`
}

// Field returns the value of the first field called name, or "".
func (e DiscordEmbed) Field(name string) string {
	for _, f := range e.Fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// DiscordField is one embed field.
type DiscordField struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Inline bool   `json:"inline,omitempty"`
}

// DiscordFooter is an embed footer.
type DiscordFooter struct {
	Text    string `json:"text"`
	IconURL string `json:"icon_url,omitempty"`
}

// DiscordMedia is an embed image or thumbnail.
type DiscordMedia struct {
	URL string `json:"url"`
}

// DiscordAuthor is an embed author.
type DiscordAuthor struct {
	Name    string `json:"name"`
	URL     string `json:"url,omitempty"`
	IconURL string `json:"icon_url,omitempty"`
}

// Discord is a Discord webhook endpoint. It checks every request against
// Discord's contract; a violation is answered 400 like Discord would, and
// fails the test at cleanup. Valid messages are answered 204 (unless
// scripted otherwise) and recorded.
type Discord struct {
	receiver
	path string

	// guarded by receiver.mu
	messages   []DiscordMessage
	violations []string
}

// StartDiscord starts a Discord webhook endpoint; t.Cleanup stops it.
func StartDiscord(t testing.TB) *Discord {
	t.Helper()
	d := &Discord{path: "/api/webhooks/123456789012345678/notifytest-token"}
	d.start(t, http.HandlerFunc(d.serve))
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, v := range d.violations {
			t.Errorf("discord receiver: contract violation: %s", v)
		}
	})
	return d
}

// URL is the webhook URL to configure.
func (d *Discord) URL() string { return d.srv.URL + d.path }

// Messages returns the messages accepted so far, in arrival order.
func (d *Discord) Messages() []DiscordMessage {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]DiscordMessage(nil), d.messages...)
}

// WaitMessages waits until at least n messages were accepted and returns
// them; it fails t after WaitTimeout.
func (d *Discord) WaitMessages(t testing.TB, n int) []DiscordMessage {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d Discord message(s)", n), func() bool { return len(d.Messages()) >= n })
	return d.Messages()
}

func (d *Discord) serve(w http.ResponseWriter, req *http.Request) {
	now := time.Now()
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	resp, scripted := d.arrive(now)
	if err == nil {
		err = d.checkRequest(req)
	}
	var msg DiscordMessage
	if err == nil {
		msg, err = ParseDiscord(req.Header.Get("Content-Type"), body)
	}
	if err != nil {
		d.mu.Lock()
		d.violations = append(d.violations, err.Error())
		d.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]any{"code": 50035, "message": "Invalid Form Body", "errors": err.Error()})
		return
	}
	if scripted {
		d.reply(w, req, resp)
		if resp.Hang || !ok(resp.Status) {
			return
		}
	} else {
		w.WriteHeader(http.StatusNoContent)
	}
	msg.Received = now
	d.mu.Lock()
	d.messages = append(d.messages, msg)
	d.mu.Unlock()
}

func (d *Discord) checkRequest(req *http.Request) error {
	if req.Method != http.MethodPost {
		return fmt.Errorf("method %s, want POST", req.Method)
	}
	if req.URL.Path != d.path {
		return fmt.Errorf("path %q, want %q", req.URL.Path, d.path)
	}
	return nil
}

// ParseDiscord decodes an Execute Webhook body and checks it against
// Discord's documented shape and limits. The error lists every problem.
func ParseDiscord(contentType string, body []byte) (DiscordMessage, error) {
	var m DiscordMessage
	if mt, _, err := mime.ParseMediaType(contentType); err != nil || mt != "application/json" {
		return m, fmt.Errorf("Content-Type %q, want application/json", contentType)
	}
	if !utf8.Valid(body) {
		return m, errors.New("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, fmt.Errorf("decode body: %w", err)
	}
	if dec.More() {
		return m, errors.New("data after the JSON object")
	}
	var p []string
	bad := func(format string, args ...any) { p = append(p, fmt.Sprintf(format, args...)) }
	limit := func(field, s string, n int) int {
		l := DiscordLen(s)
		if l > n {
			bad("%s is %d characters, limit %d", field, l, n)
		}
		return l
	}
	if m.Content == "" && len(m.Embeds) == 0 {
		bad("neither content nor embeds")
	}
	limit("content", m.Content, DiscordMaxContent)
	if m.Username != "" {
		limit("username", m.Username, DiscordMaxUsername)
		if l := strings.ToLower(m.Username); strings.Contains(l, "discord") || strings.Contains(l, "clyde") {
			bad("username %q contains \"discord\" or \"clyde\"", m.Username)
		}
	}
	if len(m.Embeds) > DiscordMaxEmbeds {
		bad("%d embeds, limit %d", len(m.Embeds), DiscordMaxEmbeds)
	}
	total := 0
	for i, e := range m.Embeds {
		f := func(name string) string { return fmt.Sprintf("embeds[%d].%s", i, name) }
		total += limit(f("title"), e.Title, DiscordMaxTitle)
		total += limit(f("description"), e.Description, DiscordMaxDescription)
		if e.Color < 0 || e.Color > 0xFFFFFF {
			bad("%s %d is not an RGB colour", f("color"), e.Color)
		}
		if e.Timestamp != "" {
			if _, err := time.Parse(time.RFC3339, e.Timestamp); err != nil {
				bad("%s %q is not ISO8601: %v", f("timestamp"), e.Timestamp, err)
			}
		}
		if e.Footer != nil {
			total += limit(f("footer.text"), e.Footer.Text, DiscordMaxFooter)
		}
		if e.Author != nil {
			total += limit(f("author.name"), e.Author.Name, DiscordMaxAuthor)
		}
		if len(e.Fields) > DiscordMaxFields {
			bad("%s: %d fields, limit %d", f("fields"), len(e.Fields), DiscordMaxFields)
		}
		for j, fl := range e.Fields {
			ff := func(name string) string { return fmt.Sprintf("embeds[%d].fields[%d].%s", i, j, name) }
			if strings.TrimSpace(fl.Name) == "" {
				bad("%s is empty", ff("name"))
			}
			if strings.TrimSpace(fl.Value) == "" {
				bad("%s is empty", ff("value"))
			}
			total += limit(ff("name"), fl.Name, DiscordMaxFieldName)
			total += limit(ff("value"), fl.Value, DiscordMaxFieldValue)
		}
	}
	if total > DiscordMaxEmbedsTotal {
		bad("embeds hold %d characters in total, limit %d", total, DiscordMaxEmbedsTotal)
	}
	if len(p) > 0 {
		return m, errors.New(strings.Join(p, "; "))
	}
	return m, nil
}

// DiscordLen counts characters as UTF-16 code units, the stricter reading of
// Discord's limits.
func DiscordLen(s string) int {
	n := 0
	for _, r := range s {
		n++
		if r > 0xFFFF {
			n++
		}
	}
	return n
}
