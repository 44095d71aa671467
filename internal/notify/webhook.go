package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/template"
	"time"

	"github.com/dockward/dockward/internal/config"
)

// TemplateData is what a webhook body template sees. Level and Event are
// their names ("critical", "rollback"); Time is a time.Time in UTC, so
// {{.Time.Format "2006-01-02"}} works. The template func json renders any
// value as a JSON literal: {"text": {{json .Reason}}} is valid JSON
// whatever the reason holds.
type TemplateData struct {
	Service string    `json:"service"`
	Event   string    `json:"event"`
	Level   string    `json:"level"`
	Message string    `json:"message"`
	Reason  string    `json:"reason"`
	Digest  string    `json:"digest"`
	Image   string    `json:"image"`
	Host    string    `json:"host"`
	Time    time.Time `json:"time"`
}

func templateData(a Alert) TemplateData {
	return TemplateData{
		Service: a.Service,
		Event:   string(a.Event),
		Level:   a.Level.String(),
		Message: a.Message,
		Reason:  a.Reason,
		Digest:  a.Digest,
		Image:   a.Image,
		Host:    a.Host,
		Time:    a.Time.UTC(),
	}
}

// sampleAlert is what New renders each body template with, to catch
// templates that parse but cannot run or do not produce JSON.
func sampleAlert() Alert {
	return Alert{
		Service: "myapp",
		Event:   Rollback,
		Level:   Critical,
		Message: "rolled back myapp: new image unhealthy",
		Reason:  "healthcheck \"GET /health\" failed:\n\tconnection refused\\n <&>",
		Digest:  "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		Image:   "registry.local:5000/myapp:latest",
		Host:    "host-1",
		Time:    time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

type webhook struct {
	method string
	url    string
	header http.Header
	body   *template.Template // nil: the default JSON document
	client *http.Client
}

// newWebhook checks and prepares one webhook; field is its config path,
// e.g. "notifications.webhooks[0]".
func newWebhook(c config.Webhook, field string, o options) (*webhook, error) {
	w := &webhook{
		method: strings.ToUpper(c.Method),
		url:    c.URL,
		header: http.Header{},
		client: o.httpClient,
	}
	if w.method == "" {
		w.method = http.MethodPost
	}
	switch w.method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodGet:
	default:
		return nil, fmt.Errorf("%s.method: must be POST, PUT, PATCH or GET; got %q", field, c.Method)
	}
	if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s.url: must be an http:// or https:// URL", field)
	}
	for k, v := range c.Headers {
		if !validHeaderName(k) {
			return nil, fmt.Errorf("%s.headers: %q is not a valid header name", field, k)
		}
		v = os.Expand(v, o.getenv)
		if strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("%s.headers.%s: value must not contain a line break (after $VAR expansion)", field, k)
		}
		w.header.Set(k, v)
	}
	if c.Body != "" {
		t, err := template.New("body").Funcs(template.FuncMap{"json": jsonLiteral}).Parse(c.Body)
		if err != nil {
			return nil, fmt.Errorf("%s.body: %w", field, err)
		}
		w.body = t
	}
	if w.method == http.MethodGet {
		return w, nil // no body is sent
	}
	sample, err := w.render(sampleAlert())
	if err != nil {
		return nil, fmt.Errorf("%s.body: %w", field, err)
	}
	// The body is JSON when it looks like JSON or the configured
	// Content-Type says so, and then it must be valid JSON. Any other body
	// is plain text. The type is decided once, from the sample alert.
	configured := w.header.Get("Content-Type")
	looksJSON := looksLikeJSON(sample)
	if configured == "" {
		w.header.Set("Content-Type", "text/plain; charset=utf-8")
		if looksJSON {
			w.header.Set("Content-Type", "application/json")
		}
	}
	if (looksJSON || isJSONType(configured)) && !json.Valid(sample) {
		return nil, fmt.Errorf("%s.body: does not render valid JSON for a sample alert whose reason holds quotes and line breaks "+
			"(quote values with the json func: {\"text\": {{json .Reason}}}): %s", field, oneLine(string(sample), 200))
	}
	return w, nil
}

// looksLikeJSON reports whether a body is meant as JSON: its first
// non-space character opens an object or an array.
func looksLikeJSON(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return len(b) > 0 && (b[0] == '{' || b[0] == '[')
}

// isJSONType reports whether a Content-Type value names JSON:
// application/json, or a +json type such as application/problem+json.
func isJSONType(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func (w *webhook) send(ctx context.Context, a Alert) error {
	var body io.Reader = http.NoBody
	if w.method != http.MethodGet {
		b, err := w.render(a)
		if err != nil {
			return permanent(fmt.Errorf("render webhook body: %w", err))
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, w.method, w.url, body)
	if err != nil {
		return permanent(fmt.Errorf("build webhook request: %w", err))
	}
	for k, v := range w.header {
		req.Header[k] = v
	}
	if h := req.Header.Get("Host"); h != "" {
		req.Host = h
	}
	if err := do(w.client, req); err != nil {
		return fmt.Errorf("%s webhook: %w", w.method, err)
	}
	return nil
}

// render produces the request body for a.
func (w *webhook) render(a Alert) ([]byte, error) {
	data := templateData(a)
	if w.body == nil {
		return json.Marshal(data)
	}
	var buf bytes.Buffer
	if err := w.body.Execute(&buf, data); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// jsonLiteral is the template func json.
func jsonLiteral(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// validHeaderName reports whether s is an RFC 7230 token.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r > 127 || !strings.ContainsRune("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", r) {
			return false
		}
	}
	return true
}
