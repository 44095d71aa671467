package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A malformed config is refused by `dockward check` and by the daemon's
// start alike: a non-zero exit, a message that names the field, never a
// panic, and the daemon never listens.
func TestBadConfig(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "badcfg")
	s.apiPort = freePort(t)
	base := s.config()
	set := func(path string, v any) func(map[string]any) {
		return func(c map[string]any) {
			keys := strings.Split(path, ".")
			m := c
			for _, k := range keys[:len(keys)-1] {
				if k == "services" {
					m = c["services"].([]map[string]any)[0]
					continue
				}
				m = m[k].(map[string]any)
			}
			m[keys[len(keys)-1]] = v
		}
	}
	tests := []struct {
		name  string
		edit  func(map[string]any)
		raw   string // the file's bytes instead of the edited config
		words string // in the message
	}{
		{name: "negative poll interval", edit: set("registry.poll_interval", -1), words: "registry.poll_interval"},
		{name: "poll interval as words", edit: set("registry.poll_interval", "often"), words: "poll_interval"},
		{name: "huge poll interval", edit: set("registry.poll_interval", 1e300), words: "registry.poll_interval"},
		{name: "zero timeout", edit: set("registry.timeout", 0), words: "registry.timeout"},
		{name: "registry URL with another scheme", edit: set("registry.url", "ftp://127.0.0.1:5000"), words: "registry.url"},
		{name: "registry URL not a URL", edit: set("registry.url", "http://[::1"), words: "registry.url"},
		{name: "port out of range", edit: set("api.port", "99999"), words: "api.port"},
		{name: "port as a word", edit: set("api.port", "http"), words: "api.port"},
		{name: "name with a slash", edit: set("services.name", "a/b"), words: "services[0].name"},
		{name: "name ..", edit: set("services.name", ".."), words: "services[0].name"},
		{name: "name with a space", edit: set("services.name", "my app"), words: "services[0].name"},
		{name: "name in unicode", edit: set("services.name", "café"), words: "services[0].name"},
		{name: "name of 200 letters", edit: set("services.name", strings.Repeat("a", 200)), words: "services[0].name"},
		{name: "image in capitals", edit: set("services.image", "E2E/App:latest"), words: "services[0].image"},
		{name: "image with a space", edit: set("services.image", "e2e/app :latest"), words: "services[0].image"},
		{name: "relative compose file", edit: set("services.compose_file", "docker-compose.yml"), words: "services[0].compose_file"},
		{name: "negative grace", edit: set("services.health_grace", -5), words: "services[0].health_grace"},
		{name: "grace as an object", edit: set("services.health_grace", map[string]any{"s": 1}), words: "health_grace"},
		{name: "log level", edit: set("log_level", "loud"), words: "log_level"},
		{name: "misspelled field", edit: set("registry.pol_interval", 5), words: "pol_interval"},
		{name: "services not a list", edit: func(c map[string]any) { c["services"] = "web" }, words: "services"},
		{name: "not JSON", raw: "registry:\n  url: http://x\n", words: "config"},
		{name: "empty file", raw: "", words: "config"},
		{name: "a JSON list", raw: "[1, 2]", words: "config"},
		{name: "nested ten thousand deep", raw: strings.Repeat("[", 10001) + strings.Repeat("]", 10001), words: "config"},
		{name: "two documents", raw: `{"registry": {"url": "http://127.0.0.1:5000"}} {}`, words: "config"},
		{name: "NUL bytes", raw: "{\"log_level\": \"info\x00\"}", words: "config"},
	}
	for i, tt := range tests {
		b := []byte(tt.raw)
		if tt.edit != nil {
			c := cloneConfig(t, base)
			tt.edit(c)
			var err error
			if b, err = json.Marshal(c); err != nil {
				t.Fatal(err)
			}
		}
		path := filepath.Join(s.dir, fmt.Sprintf("bad-%d.json", i))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, argv := range [][]string{{"check", "-config", path}, {"-config", path}} {
			out, code := runDockward(t, argv...)
			if code == 0 || !strings.Contains(out, tt.words) || strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("%s: dockward %s exited %d, want non-zero and a message with %q:\n%s", tt.name, strings.Join(argv[:len(argv)-1], " "), code, tt.words, out)
			}
			if strings.Contains(out, "dockward started") {
				t.Errorf("%s: dockward started with it", tt.name)
			}
		}
	}
}

func cloneConfig(t *testing.T, c map[string]any) map[string]any {
	t.Helper()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	// Keep services a []map[string]any for the edits.
	svcs := out["services"].([]any)
	list := make([]map[string]any, len(svcs))
	for i, s := range svcs {
		list[i] = s.(map[string]any)
	}
	out["services"] = list
	return out
}

// runDockward runs the binary to its end (at most 30s) and returns its
// output and exit code.
func runDockward(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockwardBin, args...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("dockward %s still running after 30s:\n%s", strings.Join(args, " "), out)
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run dockward: %v", err)
	}
	return string(out), code
}

// Bad input at the API's edges: names with '/', '..', spaces or unicode
// in paths, oversized bodies and malformed registry event envelopes get a
// JSON 4xx, never a 5xx, a redirect or a hang, and change nothing.
func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "badapi")
	s.pollInterval = 3600
	s.registryCfg = map[string]any{"events_token": eventsToken}
	v1 := s.push(healthyImage)
	s.up()
	s.start()

	client := &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	do := func(method, rawPath string, body io.Reader, header map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, s.api+"/", body)
		if err != nil {
			t.Fatal(err)
		}
		// The path goes on the wire as written.
		req.URL.Opaque = rawPath
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	names := []string{"a/b", "a%2Fb", "..", "%2E%2E", "../" + s.name, "my%20app", "my app", "caf%C3%A9", "%E2%80%AE" + s.name,
		"%00", "%ff%fe", s.name + "%2F..", strings.Repeat("x", 8000)}
	for _, name := range names {
		for _, route := range []struct{ method, prefix string }{{"POST", "/trigger/"}, {"DELETE", "/blocked/"}} {
			code, body := do(route.method, route.prefix+name, nil, nil)
			if code < 400 || code >= 500 || (code != 404 && code != 400 && code != 405 && code != 431) {
				t.Errorf("%s %s%s = %d %s, want a 4xx", route.method, route.prefix, truncateName(name), code, body)
			}
			if code == 404 && !strings.Contains(body, `"error"`) {
				t.Errorf("%s %s%s = 404 without a JSON error: %s", route.method, route.prefix, truncateName(name), body)
			}
		}
	}

	// Oversized bodies: a route that reads none answers as usual; the
	// events route refuses more than 64 KiB.
	big := strings.Repeat("x", 8<<20)
	if code, body := do("POST", "/trigger/"+s.name, strings.NewReader(big), nil); code != 202 && code != 409 {
		t.Errorf("POST /trigger/%s with 8 MiB body = %d %s, want 202 or 409", s.name, code, body)
	}
	events := map[string]string{"Authorization": "Bearer " + eventsToken, "Content-Type": eventsMediaType}
	if code, body := do("POST", "/registry/events", strings.NewReader(`{"events": [`+strings.Repeat(`{"action": "push"},`, 10000)+`{}]}`), events); code != 413 {
		t.Errorf("POST /registry/events with an envelope over 64 KiB = %d %s, want 413", code, body)
	}

	envelopes := []string{
		``, `null`, `[]`, `"events"`, `{}`, `{"events": null}`, `{"events": "push"}`, `{"events": {}}`, `{"events": [1, "x", null]}`,
		`{"events": [{"action": 7}]}`, `{"events": [{"target": "x"}]}`, `{"events": [` + strings.Repeat("[", 5000) + `]}`,
		`{"events": []} trailing`,
		"\xff\xfe{\"events\": []}", `{"events": [{"action": "push", "target": {"repository": "` + s.repo + `", "tag": "latest", "digest": "not a digest"}}]} x`,
	}
	for _, env := range envelopes {
		code, body := do("POST", "/registry/events", strings.NewReader(env), events)
		if code != 400 && code != 413 {
			t.Errorf("POST /registry/events %q = %d %s, want 400 (or 413)", truncateName(env), code, body)
		}
	}
	// Well-formed envelopes with unknown fields, events of no interest or
	// a repository no one watches are accepted and ignored.
	for _, env := range []string{
		`{"events": [{"action": "pull", "x": [1, {"y": null}], "target": {"repository": "` + s.repo + `", "tag": "latest"}}, {}], "extra": true}`,
		`{"events": [{"action": "push", "target": {"repository": "` + strings.Repeat("a", 60000) + `", "tag": "latest"}}]}`,
		`{"events": [{"action": "push", "target": {"repository": "../../etc", "tag": "../x"}}]}`,
	} {
		code, body := do("POST", "/registry/events", strings.NewReader(env), events)
		if code != 200 || !strings.Contains(body, `"scheduled": []`) {
			t.Errorf("POST /registry/events %q = %d %s, want 200 and nothing scheduled", truncateName(env), code, body)
		}
	}

	if code, body := s.request("GET", "/health"); code != 200 {
		t.Fatalf("GET /health after the bad input = %d %s", code, body)
	}
	s.waitFor(60*time.Second, "v1 to run healthy", func() (bool, string) { return s.runs(v1) })
	if n := countLines(s.proc.logs(), "new digest; deploying"); n != 0 {
		t.Errorf("%d deploys started by bad input", n)
	}
	if strings.Contains(s.proc.logs(), "panic") {
		t.Errorf("dockward panicked:\n%s", s.proc.logs())
	}
}

func truncateName(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
