package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeComposeServices writes a compose file whose services all run the
// scenario's image; each value is the YAML of the service beyond image,
// network and stop grace (indented by four spaces), e.g. environment.
func (s *scenario) writeComposeServices(services map[string]string, order ...string) {
	s.t.Helper()
	y := "version: \"2.4\"\nservices:\n"
	for _, name := range order {
		y += fmt.Sprintf("  %s:\n    image: %s\n    network_mode: none\n    restart: \"no\"\n    stop_grace_period: 2s\n%s",
			name, s.ref("latest"), services[name])
	}
	if err := os.WriteFile(s.compose, []byte(y), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// composeV2 runs the docker compose v2 plugin on the scenario's project.
func (s *scenario) composeV2(args ...string) string {
	s.t.Helper()
	return runTool(s.t, "docker", append([]string{"compose", "-f", s.compose, "-p", s.project}, args...)...)
}

// serviceContainer returns the ID of the project's container of a compose
// service.
func (s *scenario) serviceContainer(service string) string {
	s.t.Helper()
	ids := strings.Fields(docker(s.t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project,
		"--filter", "label=com.docker.compose.service="+service, "--filter", "label=com.docker.compose.oneoff=False"))
	if len(ids) != 1 {
		s.t.Fatalf("compose service %s of %s has containers %v, want one", service, s.project, ids)
	}
	return ids[0]
}

// eventsAbout returns the notifications of an event whose message names a
// container.
func (h *hookReceiver) eventsAbout(event, container string) []hook {
	var out []hook
	for _, e := range h.events(event) {
		if strings.Contains(e.Message, container) {
			out = append(out, e)
		}
	}
	return out
}

// all returns every notification received.
func (h *hookReceiver) all() []hook {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

// One project, two compose services: db healthy, web unhealthy for good.
// web is restarted up to the cap and given up on; db turning sick and
// healthy again is healed on its own count and re-arms nothing of web's,
// and watcher_service_healthy stays 0 while web is unhealthy.
func TestHealPerContainerMultiService(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "hmulti")
	s.pollInterval = 3600
	s.service = map[string]any{"auto_update": false, "auto_heal": true,
		"heal_cooldown": 2, "heal_verify_delay": 2, "heal_max_restarts": 2}
	s.push(healthyImage)
	s.writeComposeServices(map[string]string{
		"db":  "",
		"web": "    environment:\n      APP_MODE: unhealthy\n",
	}, "db", "web")
	s.composeV2("up", "-d")
	db, web := s.serviceContainer("db"), s.serviceContainer("web")
	s.start()

	// The service is never healthy while web is not: sampled throughout
	// (absent, -1, until the first reconcile).
	healthyGauge := func(when string) {
		t.Helper()
		if v := s.serviceMetric("watcher_service_healthy"); v == 1 {
			t.Errorf("%s: watcher_service_healthy = %v, want 0 (web is unhealthy)", when, v)
		}
	}
	s.waitFor(90*time.Second, "auto-heal to give up on web", func() (bool, string) {
		healthyGauge("while web is healed")
		return len(s.hooks.eventsAbout("heal_gave_up", "web")) == 1,
			fmt.Sprintf("restarts %d, failed %d", len(s.hooks.events("heal_restart")), len(s.hooks.events("heal_failed")))
	})
	if got := s.hooks.eventsAbout("heal_restart", "web"); len(got) != 2 {
		t.Errorf("%d heal_restart notifications for web, want 2 (heal_max_restarts)", len(got))
	}
	if n := s.serviceMetric("watcher_restarts_total"); n != 2 {
		t.Errorf("watcher_restarts_total = %v, want 2", n)
	}
	if n := s.serviceMetric("watcher_heal_gave_up"); n != 1 {
		t.Errorf("watcher_heal_gave_up = %v, want 1", n)
	}
	webStarted := s.startedAt(web)

	// db turns sick: healed with its own count (attempt 1), and its
	// healthy events re-arm nothing of web's.
	docker(t, "exec", db, "/app", "-sick")
	s.waitFor(60*time.Second, "db to be healed", func() (bool, string) {
		healthyGauge("while db is healed")
		return len(s.hooks.eventsAbout("heal_succeeded", "db")) == 1,
			fmt.Sprintf("db restarts %v", s.hooks.eventsAbout("heal_restart", "db"))
	})
	if r := s.hooks.eventsAbout("heal_restart", "db"); len(r) != 1 || !strings.Contains(r[0].Message, "attempt 1 of 2") {
		t.Errorf("db heal_restart notifications = %+v, want one, attempt 1 of 2", r)
	}
	if n := s.serviceMetric("watcher_restarts_total"); n != 3 {
		t.Errorf("watcher_restarts_total = %v, want 3 (web twice, db once)", n)
	}
	if n := s.serviceMetric("watcher_heal_gave_up"); n != 1 {
		t.Errorf("watcher_heal_gave_up = %v after db's heal, want still 1 (web)", n)
	}
	if v := s.serviceMetric("watcher_service_healthy"); v != 0 {
		t.Errorf("after db's heal: watcher_service_healthy = %v, want 0 (web is unhealthy)", v)
	}
	if at := s.startedAt(web); at != webStarted {
		t.Errorf("web restarted after auto-heal gave up on it (started %s, was %s)", at, webStarted)
	}
	if n := countLines(s.proc.logs(), "auto-heal re-armed"); n != 0 {
		t.Errorf("%d log lines about re-arming auto-heal, want none: db's health must not re-arm web", n)
	}

	// The state file keeps the heal state per container, by compose
	// service and number, and a restarted dockward keeps web given up.
	s.stop()
	b, err := os.ReadFile(filepath.Join(s.dir, "state", "state.json"))
	if err != nil || !strings.Contains(string(b), `"web-1"`) || !strings.Contains(string(b), `"gave_up": true`) {
		t.Errorf("state file does not keep web-1 given up (%v):\n%s", err, b)
	}
	s.start()
	s.waitFor(30*time.Second, "the restarted dockward to report the gauges", func() (bool, string) {
		return s.serviceMetric("watcher_heal_gave_up") == 1 && s.serviceMetric("watcher_service_healthy") == 0,
			fmt.Sprintf("gave up %v, healthy %v", s.serviceMetric("watcher_heal_gave_up"), s.serviceMetric("watcher_service_healthy"))
	})
	if at := s.startedAt(web); at != webStarted {
		t.Errorf("web restarted by the restarted dockward although auto-heal gave up on it")
	}
}

// textReceiver is a webhook endpoint for plain-text bodies: it records the
// Content-Type and body of every request.
type textReceiver struct {
	url string
	mu  sync.Mutex
	got []textHook
}

type textHook struct{ contentType, body string }

func startTextReceiver(t *testing.T) *textReceiver {
	r := &textReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, textHook{req.Header.Get("Content-Type"), string(b)})
		r.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	r.url = srv.URL
	return r
}

func (r *textReceiver) hooks() []textHook {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]textHook(nil), r.got...)
}

// Crashes that matter: a migration job exiting 0 is an info `stopped`, a
// failing `docker compose run` one-off is nothing, a real crash is a
// critical `died`. The alerts also reach a plain-text (ntfy-style) webhook
// as text/plain.
func TestCrashRulesAndPlainTextWebhook(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "oneoff")
	s.pollInterval = 3600
	s.service = map[string]any{"auto_update": false, "auto_heal": true}
	text := startTextReceiver(t)
	s.notify = map[string]any{"webhooks": []map[string]any{
		s.notifications()["webhooks"].([]map[string]any)[0],
		// No Content-Type: refused at start before; plain text now.
		{"name": "ntfy", "url": text.url, "body": "{{.Service}}: {{.Message}}"},
	}}
	s.push(healthyImage)
	s.writeComposeServices(map[string]string{
		"app":     "",
		"migrate": "    command: [\"-check\"]\n", // the healthcheck, run once: exits 0
	}, "app", "migrate")
	s.start()

	s.composeV2("up", "-d")
	app := s.serviceContainer("app")
	s.waitFor(30*time.Second, "the migration's stopped notification", func() (bool, string) {
		return len(s.hooks.events("stopped")) == 1, fmt.Sprintf("%+v", s.hooks.events("stopped"))
	})
	if st := s.hooks.events("stopped")[0]; st.Level != "info" || !strings.Contains(st.Message, "migrate") {
		t.Errorf("stopped notification = %+v, want level info about the migrate container", st)
	}
	s.waitFor(30*time.Second, "the service to be healthy (the finished job does not count)", func() (bool, string) {
		v := s.serviceMetric("watcher_service_healthy")
		return v == 1, fmt.Sprintf("watcher_service_healthy = %v (%s)", v, s.health())
	})

	// A one-off that fails: `docker compose run --rm app -check` in the
	// unhealthy mode exits 1.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run := exec.CommandContext(ctx, "docker", "compose", "-f", s.compose, "-p", s.project,
		"run", "--rm", "-e", "APP_MODE=unhealthy", "app", "-check")
	out, err := run.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("docker compose run = %v, want exit status 1\n%s", err, out)
	}

	// A real crash afterwards: its alert proves the one-off's die, which
	// came first on the event stream, was handled.
	docker(t, "exec", app, "/app", "-crash")
	s.waitFor(30*time.Second, "the crash's died notification", func() (bool, string) {
		return len(s.hooks.events("died")) >= 1, fmt.Sprintf("%+v", s.hooks.events("died"))
	})
	died := s.hooks.events("died")
	if len(died) != 1 || died[0].Level != "critical" || !strings.Contains(died[0].Message, "exit code 3") ||
		strings.Contains(died[0].Message, "run") {
		t.Errorf("died notifications = %+v, want one, critical, for the app's exit code 3 (none for the one-off)", died)
	}
	if n := countLines(s.proc.logs(), "one-off container exited"); n != 1 {
		t.Errorf("%d log lines about the one-off, want 1", n)
	}
	if n := s.serviceMetric("watcher_failures_total"); n != 1 {
		t.Errorf("watcher_failures_total = %v, want 1 (the crash only)", n)
	}
	if v := s.serviceMetric("watcher_service_healthy"); v != 0 {
		t.Errorf("watcher_service_healthy = %v after the crash, want 0", v)
	}

	// The plain-text webhook got the same alerts, as text/plain.
	var want []string
	for _, h := range s.hooks.all() {
		if h.Service != "" {
			want = append(want, h.Service+": "+h.Message)
		}
	}
	slices.Sort(want)
	s.waitFor(30*time.Second, "the plain-text webhook to get the service's alerts", func() (bool, string) {
		n := 0
		for _, h := range text.hooks() {
			if strings.HasPrefix(h.body, s.name+": ") {
				n++
			}
		}
		return n == len(want), fmt.Sprintf("%d of %d: %+v", n, len(want), text.hooks())
	})
	for _, h := range text.hooks() {
		if h.contentType != "text/plain; charset=utf-8" {
			t.Errorf("plain-text webhook Content-Type = %q, want text/plain; charset=utf-8", h.contentType)
		}
	}
	var got []string
	for _, h := range text.hooks() {
		if strings.HasPrefix(h.body, s.name+": ") {
			got = append(got, h.body)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("plain-text bodies:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
