package watcher

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

const metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// newAPI returns the API over a world with three services: app (auto
// update), other (auto update) and manual (no auto update), and static,
// which has no image.
func newAPI(t *testing.T) (*harness, http.Handler) {
	t.Helper()
	w := newWorld()
	for _, name := range []string{"app", "other", "manual"} {
		w.addProject(name, digestA, behaveHealthy)
	}
	static := svc("static", false)
	static.Image = ""
	h := newHarness(t, w, svc("app", true), svc("other", true), svc("manual", false), static)
	return h, NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test"})
}

// serve sends a request as curl on this host would: to 127.0.0.1, without
// Origin or Sec-Fetch-Site.
func serve(api http.Handler, method, target string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, target, nil)
	req.Host = "127.0.0.1:9090"
	api.ServeHTTP(rec, req)
	return rec
}

// decodeJSON checks that rec is a JSON answer with status and decodes it.
func decodeJSON(t *testing.T, rec *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if rec.Code != status {
		t.Errorf("status = %d, want %d; body: %s", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("decode %s: %v", rec.Body, err)
	}
}

func TestAPIRoutes(t *testing.T) {
	tests := []struct {
		name, method, target string
		status               int
		allow                string // the Allow header of a 405
		errorHas             string // a substring of the JSON error, if an error
	}{
		{name: "unknown service", method: "POST", target: "/trigger/nope", status: 404, errorHas: `no service named "nope"`},
		{name: "service without image", method: "POST", target: "/trigger/static", status: 400, errorHas: "no image"},
		{name: "trigger by GET", method: "GET", target: "/trigger/app", status: 405, allow: "POST", errorHas: "GET is not allowed"},
		{name: "trigger all by GET", method: "GET", target: "/trigger", status: 405, allow: "POST"},
		{name: "health by DELETE", method: "DELETE", target: "/health", status: 405, allow: "GET"},
		{name: "metrics by POST", method: "POST", target: "/metrics", status: 405, allow: "GET"},
		{name: "blocked by POST", method: "POST", target: "/blocked", status: 405, allow: "GET"},
		{name: "unblock by GET", method: "GET", target: "/blocked/app", status: 405, allow: "DELETE"},
		{name: "unblock unknown service", method: "DELETE", target: "/blocked/nope", status: 404, errorHas: `no service named "nope"`},
		{name: "unknown path", method: "GET", target: "/nope", status: 404, errorHas: "no route for /nope"},
		{name: "trigger without a name", method: "POST", target: "/trigger/", status: 404, errorHas: "no route"},
		{name: "path below a service", method: "POST", target: "/trigger/app/now", status: 404, errorHas: "no route"},
		{name: "page by POST", method: "POST", target: "/", status: 405, allow: "GET", errorHas: "POST is not allowed on /"},
		{name: "status by POST", method: "POST", target: "/status", status: 405, allow: "GET"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, api := newAPI(t)
			rec := serve(api, tt.method, tt.target)
			var body map[string]string
			decodeJSON(t, rec, tt.status, &body)
			if got := rec.Header().Get("Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
			if body["error"] == "" || !strings.Contains(body["error"], tt.errorHas) {
				t.Errorf("error = %q, want one containing %q", body["error"], tt.errorHas)
			}
			if calls := h.w.Calls(); len(calls) != 0 {
				t.Errorf("calls = %q, want none", calls)
			}
		})
	}
}

func TestAPIHealth(t *testing.T) {
	h, api := newAPI(t)
	var body map[string]any
	decodeJSON(t, serve(api, "GET", "/health"), 200, &body)
	if body["status"] != "ok" || body["version"] != "test" || body["services"] != 4.0 {
		t.Errorf("GET /health = %v, want status ok, version test, 4 services", body)
	}
	if _, ok := body["last_poll"]; ok {
		t.Errorf("GET /health before any poll has last_poll: %v", body)
	}

	h.metrics.Polled(time.Date(2024, 5, 1, 12, 0, 0, 0, time.FixedZone("CEST", 2*3600)))
	decodeJSON(t, serve(api, "GET", "/health"), 200, &body)
	if body["last_poll"] != "2024-05-01T10:00:00Z" {
		t.Errorf("last_poll = %v, want 2024-05-01T10:00:00Z", body["last_poll"])
	}
}

func TestAPIMetrics(t *testing.T) {
	h, api := newAPI(t)
	h.metrics.Update("app")
	rec := serve(api, "GET", "/metrics")
	if rec.Code != 200 {
		t.Fatalf("GET /metrics status = %d, want 200", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != metricsContentType {
		t.Errorf("GET /metrics Content-Type = %q, want %q", ct, metricsContentType)
	}
	for _, want := range []string{`watcher_updates_total{service="app"} 1`, `watcher_updates_total{service="manual"} 0`, "watcher_uptime_seconds "} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("GET /metrics lacks %q:\n%s", want, rec.Body)
		}
	}
}

// TestAPIOverHTTP speaks real HTTP to the handler.
func TestAPIOverHTTP(t *testing.T) {
	_, api := newAPI(t)
	srv := httptest.NewServer(api)
	defer srv.Close()

	for _, tt := range []struct {
		method, path string
		status       int
		contentType  string
		emptyBody    bool
	}{
		{"GET", "/health", 200, "application/json", false},
		{"HEAD", "/health", 200, "application/json", true},
		{"GET", "/metrics", 200, metricsContentType, false},
		{"PUT", "/blocked", 405, "application/json", false},
	} {
		req, err := http.NewRequest(tt.method, srv.URL+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != tt.contentType || (len(body) == 0) != tt.emptyBody {
			t.Errorf("%s %s = %d %q with %d bytes, want %d %q (empty body: %v)", tt.method, tt.path,
				resp.StatusCode, resp.Header.Get("Content-Type"), len(body), tt.status, tt.contentType, tt.emptyBody)
		}
	}
}

func TestAPITrigger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, api := newAPI(t)
		h.w.push("app", digestB, behaveSlowHealthy)

		var accepted map[string]string
		decodeJSON(t, serve(api, "POST", "/trigger/app"), 202, &accepted)
		if accepted["service"] != "app" || accepted["status"] != "triggered" {
			t.Errorf("POST /trigger/app = %v, want service app, status triggered", accepted)
		}
		synctest.Wait() // the deploy waits for the healthcheck

		var busy map[string]string
		decodeJSON(t, serve(api, "POST", "/trigger/app"), 409, &busy)
		if !strings.Contains(busy["error"], "app: ") || !strings.Contains(busy["error"], "in progress") {
			t.Errorf("POST /trigger/app during a deploy: error = %q, want app's deploy in progress", busy["error"])
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := metric(t, h.metrics, `watcher_updates_total{service="app"}`); got != "1" {
			t.Errorf("watcher_updates_total after the triggered deploy = %q, want 1", got)
		}

		// ?wait=true answers with the result.
		h.w.push("app", digestC, behaveSlowHealthy)
		start := time.Now()
		var res Result
		decodeJSON(t, serve(api, "POST", "/trigger/app?wait=true"), 200, &res)
		want := Result{Service: "app", Outcome: Deployed, Digest: digestC, Previous: digestB, Seconds: slowStart.Seconds()}
		if res != want {
			t.Errorf("POST /trigger/app?wait=true = %+v, want %+v", res, want)
		}
		if got := time.Since(start); got != slowStart {
			t.Errorf("POST /trigger/app?wait=true answered after %v, want %v, when the deploy was done", got, slowStart)
		}

		// The JSON field names are part of the API.
		rec := serve(api, "POST", "/trigger/app?wait=1")
		var raw map[string]any
		decodeJSON(t, rec, 200, &raw)
		if raw["service"] != "app" || raw["outcome"] != "up_to_date" || raw["digest"] != digestC || raw["seconds"] != 0.0 {
			t.Errorf("POST /trigger/app?wait=1 = %s, want service, outcome up_to_date, digest and seconds", rec.Body)
		}
	})
}

func TestAPITriggerAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, api := newAPI(t)
		h.w.push("app", digestB, behaveSlowHealthy)
		h.w.push("manual", digestC, behaveHealthy)

		var body map[string][]string
		decodeJSON(t, serve(api, "POST", "/trigger"), 202, &body)
		if !slices.Equal(body["triggered"], []string{"app", "other"}) || body["busy"] == nil || len(body["busy"]) != 0 {
			t.Errorf("POST /trigger = %v, want triggered [app other] and busy []", body)
		}
		synctest.Wait()

		decodeJSON(t, serve(api, "POST", "/trigger"), 202, &body)
		if !slices.Equal(body["triggered"], []string{"other"}) || !slices.Equal(body["busy"], []string{"app"}) {
			t.Errorf("POST /trigger during app's deploy = %v, want triggered [other], busy [app]", body)
		}
		time.Sleep(time.Minute)
		synctest.Wait()

		var all struct {
			Results []Result `json:"results"`
			Busy    []string `json:"busy"`
		}
		decodeJSON(t, serve(api, "POST", "/trigger?wait=true"), 200, &all)
		if len(all.Results) != 2 || all.Results[0].Service != "app" || all.Results[1].Service != "other" ||
			all.Results[0].Outcome != UpToDate || all.Results[1].Outcome != UpToDate || all.Busy == nil || len(all.Busy) != 0 {
			t.Errorf("POST /trigger?wait=true = %+v, want app and other up to date, busy []", all)
		}
		if n := h.w.count("pull manual"); n != 0 {
			t.Errorf("manual was pulled %d times, want 0: it has auto_update false", n)
		}
		if n := h.w.count("pull"); n != 1 {
			t.Errorf("%d pulls, want 1 (app)", n)
		}
	})
}

func TestAPIBlocked(t *testing.T) {
	h, api := newAPI(t)
	since := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for name, d := range map[string]string{"app": digestB, "other": digestC} {
		if err := h.store.Update(name, func(s *state.Service) {
			s.Blocked = &state.Block{Digest: d, Since: since, Reason: "container " + name + "-web-1 is unhealthy"}
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Blocks are read from the store; metrics are set from it on (re)load.
	if err := h.u.SetConfig(testConfig(svc("app", true), svc("other", true), svc("manual", false))); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, h.metrics, `watcher_service_blocked{service="app"}`); got != "1" {
		t.Errorf("watcher_service_blocked{app} = %q, want 1", got)
	}

	rec := serve(api, "GET", "/blocked")
	var list struct {
		Blocked []map[string]string `json:"blocked"`
	}
	decodeJSON(t, rec, 200, &list)
	want := []map[string]string{
		{"service": "app", "digest": digestB, "since": "2024-05-01T12:00:00Z", "reason": "container app-web-1 is unhealthy"},
		{"service": "other", "digest": digestC, "since": "2024-05-01T12:00:00Z", "reason": "container other-web-1 is unhealthy"},
	}
	if len(list.Blocked) != len(want) {
		t.Fatalf("GET /blocked = %s, want %v", rec.Body, want)
	}
	for i := range want {
		for k, v := range want[i] {
			if list.Blocked[i][k] != v {
				t.Errorf("GET /blocked entry %d %s = %q, want %q", i, k, list.Blocked[i][k], v)
			}
		}
	}

	var body map[string]any
	decodeJSON(t, serve(api, "DELETE", "/blocked/app"), 200, &body)
	if body["service"] != "app" || body["was_blocked"] != true || body["digest"] != digestB {
		t.Errorf("DELETE /blocked/app = %v, want was_blocked true with digest %s", body, digestB)
	}
	if b := h.store.Get("app").Blocked; b != nil {
		t.Errorf("stored block after DELETE = %+v, want none", b)
	}
	if got := metric(t, h.metrics, `watcher_service_blocked{service="app"}`); got != "0" {
		t.Errorf("watcher_service_blocked{app} after DELETE = %q, want 0", got)
	}
	if got := h.w.Alerts(); len(got) != 1 || got[0].Event != notify.Unblocked || got[0].Digest != digestB {
		t.Errorf("alerts = %+v, want one %s of %s", got, notify.Unblocked, digestB)
	}

	body = nil
	decodeJSON(t, serve(api, "DELETE", "/blocked/app"), 200, &body)
	if body["was_blocked"] != false {
		t.Errorf("second DELETE /blocked/app = %v, want was_blocked false", body)
	}
	if _, ok := body["digest"]; ok {
		t.Errorf("second DELETE /blocked/app = %v, want no digest", body)
	}

	decodeJSON(t, serve(api, "DELETE", "/blocked/other"), 200, &body)
	rec = serve(api, "GET", "/blocked")
	decodeJSON(t, rec, 200, &list)
	if list.Blocked == nil || len(list.Blocked) != 0 || !strings.Contains(rec.Body.String(), `"blocked": []`) {
		t.Errorf("GET /blocked with nothing blocked = %s, want an empty list", rec.Body)
	}
}
