package watcher

import (
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/state"
)

type fixedEngineVersion struct{ engine, api string }

func (f fixedEngineVersion) EngineVersion() (string, string) { return f.engine, f.api }

var _ engineVersioner = fixedEngineVersion{}

// statusWorld runs, on synctest's clock, a day in the life of four
// services: app deploys a good push, other a bad one that is rolled back
// and blocked, manual was restarted by auto-heal a minute ago, static has
// no image. It returns the API and the harness.
func statusWorld(t *testing.T) *harness {
	t.Helper()
	h, _ := newAPI(t)
	time.Sleep(time.Hour) // uptime
	h.w.push("app", digestB, behaveSlowHealthy)
	if res := h.trigger(t, "app"); res.Outcome != Deployed {
		t.Fatalf("app: %+v, want deployed", res)
	}
	time.Sleep(time.Minute)
	h.w.push("other", digestC, behaveUnhealthy)
	if res := h.trigger(t, "other"); res.Outcome != RolledBack {
		t.Fatalf("other: %+v, want rolled back", res)
	}
	h.u.PollAll(t.Context()) // manual has no auto_update: not checked
	// The healer is the one writer of watcher_service_healthy; here it
	// would have seen app's and other's containers healthy.
	h.metrics.SetHealthy("app", true)
	h.metrics.SetHealthy("other", true)
	time.Sleep(time.Minute)
	if err := h.store.Update("manual", func(s *state.Service) {
		s.Containers = map[string]state.Heal{
			"web-1": {LastRestart: time.Now().Add(-time.Minute), Consecutive: 1},
			"web-2": {LastRestart: time.Now().Add(-time.Hour), Consecutive: 0},
		}
	}); err != nil {
		t.Fatal(err)
	}
	h.metrics.SetHealthy("manual", false)
	time.Sleep(10 * time.Second)
	return h
}

func TestStatusGolden(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := statusWorld(t)
		api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "v1.2.3",
			Engine: fixedEngineVersion{"20.10.24+dfsg1", "1.41"}, Compose: "docker compose v2.40.3",
			Started: time.Date(1999, 12, 31, 23, 0, 0, 0, time.UTC)})
		rec := serve(api, "GET", "/status")
		var st Status
		decodeJSON(t, rec, 200, &st)
		golden(t, "status.golden.json", rec.Body.String())

		byName := map[string]ServiceStatus{}
		for _, s := range st.Services {
			byName[s.Name] = s
		}
		for name, want := range map[string]struct {
			state     string
			attention bool
		}{
			"app": {"ok", false}, "other": {"blocked", true}, "manual": {"unhealthy", true}, "static": {"unknown", false},
		} {
			s := byName[name]
			if s.State != want.state || s.NeedsAttention() != want.attention {
				t.Errorf("%s: state %q, needs attention %v; want %q, %v", name, s.State, s.NeedsAttention(), want.state, want.attention)
			}
		}
		if got := byName["app"]; got.Running == nil || got.Running.Digest != digestB || got.Registry == nil || got.Registry.Digest != digestB {
			t.Errorf("app runs %+v, registry %+v; want both %s", got.Running, got.Registry, digestB)
		}
		if got := byName["other"]; got.Running == nil || got.Running.Digest != digestA || got.Blocked == nil || got.Blocked.Digest != digestC ||
			got.LastDeploy == nil || got.LastDeploy.Outcome != "rolled_back" {
			t.Errorf("other runs %+v, blocked %+v, last deploy %+v; want %s running, %s blocked and rolled back", got.Running, got.Blocked, got.LastDeploy, digestA, digestC)
		}
		if got := byName["manual"].Heal; got.Restarts != 1 || got.CooldownUntil == nil || !got.CooldownUntil.Equal(time.Now().Add(4*time.Minute-10*time.Second)) {
			t.Errorf("manual heal = %+v, want 1 restart and a cooldown until %v", got, time.Now().Add(4*time.Minute-10*time.Second))
		}

		page := serve(api, "GET", "/")
		if page.Code != 200 || page.Header().Get("Content-Type") != "text/html; charset=utf-8" {
			t.Fatalf("GET / = %d %q", page.Code, page.Header().Get("Content-Type"))
		}
		golden(t, "page.golden.html", page.Body.String())
	})
}

// TestStatusAfterRestart: what a new process knows from the state file
// alone, before it checked anything.
func TestStatusAfterRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := statusWorld(t)
		// Same store, new process: nothing observed yet.
		again := newHarnessWithStore(t, h.w, h.store, svc("app", true), svc("other", true), svc("manual", false))
		api := NewAPI(APIDeps{Updater: again.u, Metrics: again.metrics, Store: again.store, Logger: again.logger, Version: "v1.2.3"})
		var st Status
		decodeJSON(t, serve(api, "GET", "/status"), 200, &st)
		if st.Daemon.LastPoll != nil || st.Daemon.Engine != "" {
			t.Errorf("daemon = %+v, want no last poll and no engine yet", st.Daemon)
		}
		app, other := st.Services[0], st.Services[1]
		if app.Running == nil || app.Running.Digest != digestB || app.Registry != nil || app.LastCheck != nil || app.NextPoll != nil {
			t.Errorf("app after restart = %+v, want running %s from the last deploy, nothing read or checked", app, digestB)
		}
		if app.State != "unknown" || app.NeedsAttention() {
			t.Errorf("app after restart: state %q, attention %v; want unknown, no", app.State, app.NeedsAttention())
		}
		if other.Running == nil || other.Running.Digest != digestA || other.Blocked == nil || other.State != "blocked" || !other.NeedsAttention() {
			t.Errorf("other after restart = %+v, want %s running (rolled back), blocked", other, digestA)
		}
	})
}

func TestHealOf(t *testing.T) {
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	tests := []struct {
		name string
		st   state.Service
		want HealStatus
	}{
		{"nothing", state.Service{}, HealStatus{Containers: map[string]ContainerHeal{}}},
		{"two containers", state.Service{Containers: map[string]state.Heal{
			"web-1": {LastRestart: now.Add(-time.Minute), Consecutive: 2},
			"web-2": {LastRestart: now.Add(-time.Hour), Consecutive: 3, GaveUp: true},
		}}, HealStatus{
			ContainerHeal: ContainerHeal{Restarts: 3, LastRestart: at(-time.Minute), CooldownUntil: at(4 * time.Minute), GaveUp: true},
			Containers: map[string]ContainerHeal{
				"web-1": {Restarts: 2, LastRestart: at(-time.Minute), CooldownUntil: at(4 * time.Minute)},
				"web-2": {Restarts: 3, LastRestart: at(-time.Hour), GaveUp: true},
			},
		}},
		{"service-wide state of an older file", state.Service{Heal: state.Heal{LastRestart: now.Add(-2 * time.Minute), Consecutive: 1}},
			HealStatus{ContainerHeal: ContainerHeal{Restarts: 1, LastRestart: at(-2 * time.Minute), CooldownUntil: at(3 * time.Minute)}, Containers: map[string]ContainerHeal{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := healOf(tt.st, 5*time.Minute, now)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("healOf(%+v) =\n%+v\nwant\n%+v", tt.st, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	yes, no := true, false
	blocked := &BlockStatus{Digest: digestC}
	tests := []struct {
		name string
		s    ServiceStatus
		want string
	}{
		{"nothing known", ServiceStatus{}, "unknown"},
		{"healthy", ServiceStatus{Healthy: &yes}, "ok"},
		{"unhealthy", ServiceStatus{Healthy: &no}, "unhealthy"},
		{"blocked and healthy", ServiceStatus{Healthy: &yes, Blocked: blocked}, "blocked"},
		{"blocked and unhealthy", ServiceStatus{Healthy: &no, Blocked: blocked}, "unhealthy"},
		{"rollback failed", ServiceStatus{Healthy: &no, Blocked: blocked, LastDeploy: &DeployStatus{Digest: digestC, Outcome: "rollback_failed"}}, "rollback_failed"},
		{"rollback failed, then a newer block", ServiceStatus{Healthy: &yes, Blocked: &BlockStatus{Digest: digestB}, LastDeploy: &DeployStatus{Digest: digestC, Outcome: "rollback_failed"}}, "blocked"},
		{"gave up", ServiceStatus{Healthy: &no, Heal: HealStatus{ContainerHeal: ContainerHeal{GaveUp: true}}, Blocked: blocked}, "gave_up"},
		{"deploying", ServiceStatus{Healthy: &no, Deploying: true, Blocked: blocked}, "deploying"},
		{"check failed", ServiceStatus{Healthy: &yes, LastCheck: &CheckStatus{Outcome: CheckFailed}}, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarize(tt.s); got != tt.want {
				t.Errorf("summarize(%+v) = %q, want %q", tt.s, got, tt.want)
			}
		})
	}
}

// TestPageEscapes: a reason comes from a container's healthcheck output and
// a digest from the registry; neither may inject markup.
func TestPageEscapes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, api := newAPI(t)
		evil := `<script>alert(1)</script><img src=x onerror=alert(2)>`
		if err := h.store.Update("app", func(s *state.Service) {
			s.Blocked = &state.Block{Digest: "sha256:" + evil, Since: time.Now(), Reason: evil}
		}); err != nil {
			t.Fatal(err)
		}
		rec := serve(api, "GET", "/")
		body := rec.Body.String()
		if strings.Contains(body, "<script>") || strings.Contains(body, "<img") {
			t.Errorf("the page carries markup from a reason:\n%s", body)
		}
		if !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			t.Errorf("the page lacks the escaped reason")
		}
		if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("Content-Security-Policy = %q, want default-src 'none'", csp)
		}
		// No script, no external asset.
		for _, tag := range []string{"<script", "<img", "<link", "<iframe", "<object", "<embed", "@import", "url(", "http://", "https://"} {
			if strings.Contains(body, tag) {
				t.Errorf("the page holds %q: it must neither run nor load anything", tag)
			}
		}
	})
}

// TestPageFiftyServices: the page stays one table with a row per service.
func TestPageFiftyServices(t *testing.T) {
	w := newWorld()
	var services []string
	for i := range 50 {
		name := "svc" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		w.addProject(name, digestA, behaveHealthy)
		services = append(services, name)
	}
	cfgs := make([]config.Service, 0, 50)
	for _, n := range services {
		cfgs = append(cfgs, svc(n, true))
	}
	h := newHarness(t, w, cfgs...)
	h.u.PollAll(t.Context())
	for _, n := range services {
		h.metrics.SetHealthy(n, true) // as the healer, the one writer of the gauge, reports them
	}
	api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test"})
	body := serve(api, "GET", "/").Body.String()
	rows := regexp.MustCompile(`<tr id="service-(svc[a-z]{2})" class="service s-ok" data-service="svc[a-z]{2}" data-state="ok">`).FindAllStringSubmatch(body, -1)
	if len(rows) != 50 {
		t.Fatalf("the page has %d healthy service rows, want 50", len(rows))
	}
	for i, r := range rows {
		if r[1] != services[i] {
			t.Errorf("row %d is %s, want %s (config order)", i, r[1], services[i])
		}
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to write it): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file %s (run go test -update to accept):\n%s", name, path, got)
	}
}

// Fakes of the status sources, for a status of any size without a world.
type (
	fakeServices struct{ cfgs []config.Service }
	fakeState    map[string]state.Service
	fakeSeen     map[string]Observation
)

var (
	_ serviceSource     = fakeServices{}
	_ stateSource       = fakeState{}
	_ observationSource = fakeSeen{}
)

func (f fakeServices) ServiceConfigs() []config.Service { return f.cfgs }
func (f fakeServices) ImageRefs() map[string]string {
	out := map[string]string{}
	for _, c := range f.cfgs {
		out[c.Name] = testRegistryHost + "/" + c.Image
	}
	return out
}
func (f fakeServices) DeploysPaused() (string, bool) { return "", false }
func (f fakeServices) Deploying(string) bool         { return false }
func (f fakeServices) PollInterval() time.Duration   { return 5 * time.Minute }
func (f fakeState) Get(name string) state.Service    { return f[name] }
func (f fakeSeen) Observed(name string) Observation  { return f[name] }
func (f fakeSeen) LastPoll() time.Time               { return time.Unix(1e9, 0) }

// fiftyServices is an API over 50 services, every fifth one blocked.
func fiftyServices() *API {
	now := time.Unix(1e9, 0)
	yes := true
	svcs, st, seen := fakeServices{}, fakeState{}, fakeSeen{}
	for i := range 50 {
		name := fmt.Sprintf("service-%02d", i)
		svcs.cfgs = append(svcs.cfgs, svc(name, true))
		s := state.Service{LastDeploy: &state.DeployResult{Digest: digestB, Previous: digestA, Outcome: "deployed", Started: now.Add(-time.Hour), Seconds: 4}}
		if i%5 == 0 {
			s.Blocked = &state.Block{Digest: digestC, Since: now.Add(-time.Minute), Reason: "container " + name + "-web-1 is unhealthy; last healthcheck output: " + unhealthyOutput}
		}
		st[name] = s
		seen[name] = Observation{Healthy: &yes, RegistryDigest: digestB, RegistryRead: now, Running: digestB, RunningSeen: now, LastCheck: now, LastOutcome: UpToDate}
	}
	return &API{services: svcs, state: st, seen: seen, version: "bench", started: now.Add(-time.Hour), now: func() time.Time { return now }, page: parsePage()}
}

// BenchmarkStatus50 measures GET /status with 50 services.
func BenchmarkStatus50(b *testing.B) {
	h := methods{"GET": fiftyServices().status}
	req := httptest.NewRequest("GET", "/status", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// BenchmarkPage50 measures GET / with 50 services.
func BenchmarkPage50(b *testing.B) {
	h := methods{"GET": fiftyServices().servePage}
	req := httptest.NewRequest("GET", "/", nil)
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// TestPagePaused: with a state file nothing can read, the page says deploys
// are paused, in a banner and in its title.
func TestPagePaused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	store := openStoreFiles(t, path, storeFiles{"garbage", "-"})
	w := newWorld()
	w.addProject("app", digestA, behaveHealthy)
	h := newHarnessWithStore(t, w, store, svc("app", true))
	api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: store, Logger: h.logger, Version: "test"})
	page := serve(api, "GET", "/").Body.String()
	if !strings.Contains(page, `<p class="paused"><b>Deploys are paused:</b> `) || !strings.Contains(page, "<title>(paused) ") {
		t.Errorf("the page does not say deploys are paused:\n%s", page)
	}
}
