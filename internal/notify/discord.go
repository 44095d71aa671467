package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dockward/dockward/internal/config"
)

// Discord's documented embed limits, in characters. Discord rejects the
// whole message with a 400 when one is exceeded.
const (
	discordMaxUsername    = 80
	discordMaxTitle       = 256
	discordMaxDescription = 4096
	discordMaxFieldName   = 256
	discordMaxFieldValue  = 1024
	discordMaxFields      = 25
	discordMaxFooter      = 2048
	discordMaxEmbedTotal  = 6000

	// discordFieldValue is Dockward's own, tighter cap on field values
	// (service, host, image, digest are short), which leaves most of the
	// 6000 total to the description that carries the reason.
	discordFieldValue = 256
)

// Embed colours per level.
const (
	colorInfo     = 0x2ECC71 // green
	colorWarning  = 0xF39C12 // orange
	colorCritical = 0xE74C3C // red
)

type discord struct {
	url      string
	username string
	client   *http.Client
}

func newDiscord(c config.Discord, client *http.Client) (*discord, error) {
	u, err := url.Parse(c.WebhookURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("notifications.discord.webhook_url: must be an http:// or https:// URL")
	}
	name := strings.TrimSpace(c.Username)
	if lower := strings.ToLower(name); strings.Contains(lower, "discord") || strings.Contains(lower, "clyde") {
		return nil, fmt.Errorf("notifications.discord.username: Discord rejects webhook names that contain \"discord\" or \"clyde\"; got %q", c.Username)
	}
	if textLen(name) > discordMaxUsername {
		return nil, fmt.Errorf("notifications.discord.username: must be at most %d characters, got %d", discordMaxUsername, textLen(name))
	}
	return &discord{
		url:      c.WebhookURL,
		username: name,
		client:   client,
	}, nil
}

// discordMessage is the part of Discord's "Execute Webhook" JSON body that
// Dockward uses.
type discordMessage struct {
	Username string         `json:"username,omitempty"`
	Embeds   []discordEmbed `json:"embeds"`
}

type discordEmbed struct {
	Title       string         `json:"title"`
	Description string         `json:"description,omitempty"`
	Color       int            `json:"color"`
	Fields      []discordField `json:"fields,omitempty"`
	Footer      *discordFooter `json:"footer,omitempty"`
	Timestamp   string         `json:"timestamp,omitempty"`
}

type discordField struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Inline bool   `json:"inline"`
}

type discordFooter struct {
	Text string `json:"text"`
}

func (d *discord) send(ctx context.Context, a Alert) error {
	body, err := json.Marshal(discordMessage{Username: d.username, Embeds: []discordEmbed{embed(a)}})
	if err != nil {
		return permanent(fmt.Errorf("encode discord message: %w", err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(body))
	if err != nil {
		return permanent(fmt.Errorf("build discord request: %w", err))
	}
	req.Header.Set("Content-Type", "application/json")
	if err := do(d.client, req); err != nil {
		return fmt.Errorf("post discord webhook: %w", err)
	}
	return nil
}

// embed renders a as one Discord embed within every documented limit.
func embed(a Alert) discordEmbed {
	title := string(a.Event)
	if a.Service != "" {
		title = a.Service + ": " + title
	}
	e := discordEmbed{
		Title:     truncate(clean(title), discordMaxTitle),
		Color:     color(a.Level),
		Footer:    &discordFooter{Text: "dockward"},
		Timestamp: a.Time.UTC().Format(time.RFC3339),
	}
	for _, f := range []struct {
		name, value string
		inline      bool
	}{
		{"Service", a.Service, true},
		{"Event", string(a.Event), true},
		{"Level", a.Level.String(), true},
		{"Host", a.Host, true},
		{"Image", a.Image, false},
		{"Digest", a.Digest, false},
	} {
		v := strings.TrimSpace(clean(f.value))
		if v == "" || len(e.Fields) == discordMaxFields {
			continue // Discord rejects empty field values.
		}
		e.Fields = append(e.Fields, discordField{
			Name:   truncate(f.name, discordMaxFieldName),
			Value:  truncate(v, min(discordFieldValue, discordMaxFieldValue)),
			Inline: f.inline,
		})
	}
	used := textLen(e.Title) + textLen(e.Footer.Text)
	for _, f := range e.Fields {
		used += textLen(f.Name) + textLen(f.Value)
	}
	room := min(discordMaxDescription, discordMaxEmbedTotal-used)
	e.Description = describe(clean(a.Message), clean(a.Reason), room)
	return e
}

func color(l Level) int {
	switch {
	case l >= Critical:
		return colorCritical
	case l == Warning:
		return colorWarning
	}
	return colorInfo
}

// describe puts the message and, below it, the reason in a code block, in
// at most limit characters. The reason is cut first; the code block is
// always closed.
func describe(message, reason string, limit int) string {
	if limit <= 0 {
		return ""
	}
	message = truncate(strings.TrimSpace(message), limit)
	reason = strings.Trim(reason, "\n")
	if strings.TrimSpace(reason) == "" {
		return message
	}
	// A ``` in the reason would close the block early; a zero-width space
	// keeps it visible but inert.
	reason = strings.ReplaceAll(reason, "```", "`\u200b`\u200b`")
	open, end := "```\n", "\n```"
	if message != "" {
		open = message + "\n" + open
	}
	room := limit - textLen(open) - textLen(end)
	if room < 16 { // not enough left to say anything useful
		return message
	}
	return open + truncate(reason, room) + end
}

// clean makes s valid UTF-8 and drops carriage returns, which Discord
// renders as nothing useful.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\r", "\n")
}

// textLen counts s the way the strictest reading of Discord's limits
// does: in UTF-16 code units, so a rune outside the Basic Multilingual
// Plane (most emoji) counts twice. Counting code points instead could let a
// reason full of emoji overflow a limit.
func textLen(s string) int {
	n := 0
	for _, r := range s {
		n++
		if r > 0xFFFF {
			n++
		}
	}
	return n
}

// truncate shortens s to at most n characters (as textLen counts them),
// ending in "…" when it cut. It cuts only between runes.
func truncate(s string, n int) string {
	if textLen(s) <= n {
		return s
	}
	if n <= 0 {
		return ""
	}
	budget := n - 1 // room for the ellipsis
	used := 0
	for i, r := range s {
		w := 1
		if r > 0xFFFF {
			w = 2
		}
		if used+w > budget {
			return s[:i] + "…"
		}
		used += w
	}
	return s
}
