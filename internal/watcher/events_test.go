package watcher

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

const (
	testEventsToken = "events-token-0123456789"
	eventsType      = "application/vnd.docker.distribution.events.v1+json"
)

// newEventsAPI is newAPI with push events enabled, plus a service "tagged"
// that watches app:v2 (the same repository as app, another tag).
func newEventsAPI(t *testing.T) (*harness, http.Handler) {
	t.Helper()
	w := newWorld()
	for _, name := range []string{"app", "other", "manual"} {
		w.addProject(name, digestA, behaveHealthy)
	}
	tagged := svc("tagged", true)
	tagged.Image = "app:v2"
	tagged.ComposeProject = "tagged"
	h := newHarness(t, w, svc("app", true), svc("other", true), svc("manual", false), tagged)
	return h, NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test", EventsToken: testEventsToken})
}

// pushEvent is an envelope as distribution 2.8 sends it for one manifest
// push (docker push) of digestA, what runs at the start.
func pushEvent(action, repository, tag string) string {
	tagField := ""
	if tag != "" {
		tagField = `, "tag": "` + tag + `"`
	}
	return `{"events": [{"id": "2f4b8a4e-1c1d-4f5e-9f3a-1a2b3c4d5e6f", "timestamp": "2026-11-29T17:00:00.000000000Z", "action": "` + action + `",
  "target": {"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "size": 527,
    "digest": "` + digestA + `", "length": 527,
    "repository": "` + repository + `", "url": "http://localhost:5000/v2/` + repository + `/manifests/` + digestA + `"` + tagField + `},
  "request": {"id": "r1", "addr": "127.0.0.1:40000", "host": "localhost:5000", "method": "PUT", "useragent": "docker/20.10.24"},
  "actor": {}, "source": {"addr": "host:5000", "instanceID": "i1"}}]}`
}

// watchedBody fails the test if the handler reads it.
type watchedBody struct {
	t    *testing.T
	what string
}

func (b watchedBody) Read(p []byte) (int, error) {
	b.t.Errorf("the body was read although %s", b.what)
	return 0, io.EOF
}

func TestRegistryEventsRefused(t *testing.T) {
	bearer := "Bearer " + testEventsToken
	tests := []struct {
		name        string
		auth        string
		contentType string
		body        string // "" with unread: a body that must not be read
		unread      string
		status      int
		result      string
	}{
		{name: "no token", contentType: eventsType, unread: "the token is missing", status: 401, result: "unauthorized"},
		{name: "wrong token", auth: "Bearer " + testEventsToken + "x", contentType: eventsType, unread: "the token is wrong", status: 401, result: "unauthorized"},
		{name: "token prefix", auth: "Bearer " + testEventsToken[:10], contentType: eventsType, unread: "the token is wrong", status: 401, result: "unauthorized"},
		{name: "basic auth", auth: "Basic " + testEventsToken, contentType: eventsType, unread: "the scheme is wrong", status: 401, result: "unauthorized"},
		{name: "json", auth: bearer, contentType: "application/json", unread: "the media type is wrong", status: 415, result: "unsupported_media_type"},
		{name: "no content type", auth: bearer, unread: "the media type is missing", status: 415, result: "unsupported_media_type"},
		{name: "garbage", auth: bearer, contentType: eventsType, body: "not json", status: 400, result: "malformed"},
		{name: "no events list", auth: bearer, contentType: eventsType, body: `{"event": []}`, status: 400, result: "malformed"},
		{name: "events not a list", auth: bearer, contentType: eventsType, body: `{"events": {}}`, status: 400, result: "malformed"},
		{name: "two envelopes", auth: bearer, contentType: eventsType, body: `{"events": []} {"events": []}`, status: 400, result: "malformed"},
		{name: "too large", auth: bearer, contentType: eventsType, body: `{"events": [], "pad": "` + strings.Repeat("x", maxEventsBody) + `"}`, status: 413, result: "too_large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h, api := newEventsAPI(t)
				var body io.Reader = strings.NewReader(tt.body)
				if tt.unread != "" {
					body = watchedBody{t, tt.unread}
				}
				req := httptest.NewRequest("POST", "http://127.0.0.1:9090/registry/events", body)
				if tt.auth != "" {
					req.Header.Set("Authorization", tt.auth)
				}
				if tt.contentType != "" {
					req.Header.Set("Content-Type", tt.contentType)
				}
				rec := httptest.NewRecorder()
				api.ServeHTTP(rec, req)
				var got map[string]string
				decodeJSON(t, rec, tt.status, &got)
				if got["error"] == "" {
					t.Errorf("no error message in %s", rec.Body)
				}
				if strings.Contains(rec.Body.String(), testEventsToken) || strings.Contains(h.logs.String(), testEventsToken) {
					t.Errorf("the token appears in the answer or the log")
				}
				synctest.Wait()
				if n := h.w.count("digest"); n != 0 {
					t.Errorf("%d registry reads after a refused request, want 0", n)
				}
				if got := metric(t, h.metrics, `watcher_registry_events_total{action="none",result="`+tt.result+`"}`); got != "1" {
					t.Errorf(`watcher_registry_events_total{action="none",result=%q} = %q, want 1`, tt.result, got)
				}
			})
		})
	}
}

func TestRegistryEventsDisabled(t *testing.T) {
	h, _ := newEventsAPI(t)
	api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test"})
	req := httptest.NewRequest("POST", "http://127.0.0.1:9090/registry/events", strings.NewReader(pushEvent("push", "app", "latest")))
	req.Header.Set("Authorization", "Bearer "+testEventsToken)
	req.Header.Set("Content-Type", eventsType)
	rec := httptest.NewRecorder()
	api.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotFound {
		t.Errorf("POST /registry/events without events_token = %d, want 404", rec.Code)
	}
}

func TestRegistryEventsSchedule(t *testing.T) {
	tests := []struct {
		name        string
		contentType string
		body        string
		scheduled   []string // services checked
		action      string   // action label counted
		result      string
	}{
		{name: "push of a watched tag", body: pushEvent("push", "app", "latest"), scheduled: []string{"app"}, action: "push", result: "scheduled"},
		{name: "push of the other watched tag", body: pushEvent("push", "app", "v2"), scheduled: []string{"tagged"}, action: "push", result: "scheduled"},
		{name: "distribution 3 envelope", contentType: "application/vnd.docker.distribution.events.v2+json", body: pushEvent("push", "other", "latest"),
			scheduled: []string{"other"}, action: "push", result: "scheduled"},
		{name: "media type with a parameter", contentType: eventsType + "; charset=utf-8", body: pushEvent("push", "app", "latest"),
			scheduled: []string{"app"}, action: "push", result: "scheduled"},
		{name: "push by digest only", body: pushEvent("push", "app", ""), action: "push", result: "ignored"},
		{name: "push of an unwatched tag", body: pushEvent("push", "app", "v3"), action: "push", result: "ignored"},
		{name: "push of an unknown repository", body: pushEvent("push", "nope", "latest"), action: "push", result: "ignored"},
		{name: "push for a service without auto_update", body: pushEvent("push", "manual", "latest"), action: "push", result: "ignored"},
		{name: "pull", body: pushEvent("pull", "app", "latest"), action: "pull", result: "ignored"},
		{name: "delete", body: pushEvent("delete", "app", "latest"), action: "delete", result: "ignored"},
		{name: "unknown action", body: pushEvent("frobnicate", "app", "latest"), action: "other", result: "ignored"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h, api := newEventsAPI(t)
				ct := tt.contentType
				if ct == "" {
					ct = eventsType
				}
				req := httptest.NewRequest("POST", "http://127.0.0.1:9090/registry/events", strings.NewReader(tt.body))
				req.Header.Set("Authorization", "Bearer "+testEventsToken)
				req.Header.Set("Content-Type", ct)
				rec := httptest.NewRecorder()
				api.ServeHTTP(rec, req)
				var got struct {
					Events    int
					Ignored   int
					Scheduled []string
				}
				decodeJSON(t, rec, 200, &got)
				want := tt.scheduled
				if want == nil {
					want = []string{}
				}
				if !slices.Equal(got.Scheduled, want) || got.Events != 1 {
					t.Errorf("answer = %+v, want 1 event and scheduled %v", got, want)
				}
				time.Sleep(time.Minute)
				synctest.Wait()
				var reads []string
				for _, c := range h.w.Calls() {
					if strings.HasPrefix(c, "digest ") {
						reads = append(reads, c)
					}
				}
				var wantReads []string
				for _, name := range tt.scheduled {
					ref := name + ":latest"
					if name == "tagged" {
						// The registry has no app:v2 yet: the check fails,
						// and is tried again a few times.
						for range hintRetries {
							wantReads = append(wantReads, "digest app:v2")
						}
						ref = "app:v2"
					}
					wantReads = append(wantReads, "digest "+ref)
				}
				if !slices.Equal(reads, wantReads) {
					t.Errorf("registry reads = %v, want %v", reads, wantReads)
				}
				series := `watcher_registry_events_total{action="` + tt.action + `",result="` + tt.result + `"}`
				if got := metric(t, h.metrics, series); got != "1" {
					t.Errorf("%s = %q, want 1", series, got)
				}
			})
		})
	}
}

// Several push events for one service in one envelope are one check, a
// pull beside them is ignored, and the push deploys the new digest.
func TestRegistryEventsEnvelopeDeploys(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, api := newEventsAPI(t)
		h.w.push("app", digestB, behaveHealthy)
		one := strings.ReplaceAll(pushEvent("push", "app", "latest"), digestA, digestB)
		events := one[len(`{"events": [`) : len(one)-len(`]}`)]
		body := `{"events": [` + events + `, ` + events + `, ` + strings.Replace(events, `"action": "push"`, `"action": "pull"`, 1) + `]}`
		req := httptest.NewRequest("POST", "http://127.0.0.1:9090/registry/events", bytes.NewReader([]byte(body)))
		req.Header.Set("Authorization", "Bearer "+testEventsToken)
		req.Header.Set("Content-Type", eventsType)
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req)
		var got struct {
			Events    int
			Scheduled []string
		}
		decodeJSON(t, rec, 200, &got)
		if got.Events != 3 || !slices.Equal(got.Scheduled, []string{"app"}) {
			t.Errorf("answer = %+v, want 3 events, scheduled [app]", got)
		}
		synctest.Wait()
		if n := h.w.count("digest app:latest"); n != 1 {
			t.Errorf("%d registry reads for three events, want 1", n)
		}
		if got := h.w.running("app"); got != h.w.imageOf(digestB) {
			t.Errorf("running %s after the push event, want the image of %s", got, digestB)
		}
		if got := metric(t, h.metrics, `watcher_registry_events_total{action="push",result="scheduled"}`); got != "2" {
			t.Errorf("scheduled push events = %q, want 2", got)
		}
		if got := metric(t, h.metrics, `watcher_registry_events_total{action="pull",result="ignored"}`); got != "1" {
			t.Errorf("ignored pull events = %q, want 1", got)
		}
	})
}

// FuzzParseEnvelope checks that no body makes the envelope parser panic,
// and that whatever it accepts has an events list.
func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte(pushEvent("push", "app", "latest")))
	f.Add([]byte(`{"events": []}`))
	f.Add([]byte(`{"events": null}`))
	f.Add([]byte(`{"events": [{"target": 5}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := parseEnvelope(b)
		if err == nil && events == nil && !bytes.Contains(b, []byte("[")) {
			t.Errorf("parseEnvelope(%q) accepted a body without a list", b)
		}
	})
}

// With api.token set too, /registry/events wants the events token (the
// registry can send only one Authorization header), and the events token
// opens nothing else.
func TestRegistryEventsBesideAPIToken(t *testing.T) {
	const apiToken = "api-token-0123456789abcdef"
	tests := []struct {
		name, path, token string
		status            int
	}{
		{"events with the events token", "/registry/events", testEventsToken, 200},
		{"events with the API token", "/registry/events", apiToken, 401},
		{"events without a token", "/registry/events", "", 401},
		{"trigger with the events token", "/trigger/app", testEventsToken, 401},
		{"trigger with the API token", "/trigger/app", apiToken, 202},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h, _ := newEventsAPI(t)
				api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test",
					Token: apiToken, EventsToken: testEventsToken})
				req := httptest.NewRequest("POST", "http://127.0.0.1:9090"+tt.path, strings.NewReader(pushEvent("push", "app", "latest")))
				req.Header.Set("Content-Type", eventsType)
				if tt.token != "" {
					req.Header.Set("Authorization", "Bearer "+tt.token)
				}
				rec := httptest.NewRecorder()
				api.ServeHTTP(rec, req)
				if rec.Code != tt.status {
					t.Errorf("POST %s = %d %s, want %d", tt.path, rec.Code, rec.Body, tt.status)
				}
				synctest.Wait()
			})
		})
	}
}
