package e2e

import (
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry/registrytest"
)

// measure enables TestMeasurePushToDeployStart, a measurement run by hand:
//
//	go test -count=1 -timeout 30m -parallel 3 -v -run TestMeasurePushToDeployStart ./internal/e2e -args -measure
var measure = flag.Bool("measure", false, "run the push-to-deploy measurement (minutes)")

const (
	eventsToken     = "e2e-events-token-0123456789abcdef"
	eventsMediaType = "application/vnd.docker.distribution.events.v1+json"
)

// newEventsScenario is a scenario whose registry (a real docker-registry)
// notifies dockward of every push, with dockward polling every poll seconds.
// The API port is chosen first: the registry's config names it.
func newEventsScenario(t *testing.T, name string, poll float64) *scenario {
	t.Helper()
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/registry/events", port)
	s := newScenario(t, name, registrytest.WithNotifications(url, eventsToken))
	s.apiPort, s.api = port, fmt.Sprintf("http://127.0.0.1:%d", port)
	s.pollInterval = poll
	s.registryCfg = map[string]any{"events_token": eventsToken}
	return s
}

// startEvents starts dockward and fails if it had to move to another API
// port, which the registry would not know.
func (s *scenario) startEvents() {
	s.t.Helper()
	want := s.apiPort
	s.start()
	if s.apiPort != want {
		s.t.Fatalf("the API port %d was taken, dockward listens on %d: the registry notifies the old one; run again", want, s.apiPort)
	}
}

// postEvents sends a request to dockward's events endpoint as a registry
// would, and returns the status and body.
func (s *scenario) postEvents(auth, contentType, body string) (int, string) {
	s.t.Helper()
	req, err := http.NewRequest("POST", s.api+"/registry/events", strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("POST /registry/events: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// With polling every 300 s, a push reaches the host within seconds: the
// registry's push event makes dockward check at once. Requests without the
// token, of another type or malformed are refused and change nothing.
func TestPushEventDeploysAtOnce(t *testing.T) {
	t.Parallel()
	s := newEventsScenario(t, "events", 300)
	s.push(healthyImage)
	s.up()
	s.startEvents()
	s.waitFor(30*time.Second, "the first poll", func() (bool, string) {
		n := s.metric("watcher_poll_count_total")
		return n >= 1, fmt.Sprintf("watcher_poll_count_total = %v", n)
	})
	// The registry retries the events of the first push until dockward
	// listens; they find v1 running.
	s.waitFor(30*time.Second, "the first push's event", func() (bool, string) {
		n := s.metric(`watcher_registry_events_total{action="push",result="scheduled"}`)
		return n >= 1, fmt.Sprintf("scheduled push events: %v", n)
	})

	v2 := s.push(healthyImage)
	pushed := time.Now()
	s.waitFor(60*time.Second, "v2 to be deployed after its push event", func() (bool, string) { return s.runs(v2) })
	t.Logf("v2 running and healthy %v after docker push returned", time.Since(pushed).Round(time.Millisecond))
	if n := s.metric("watcher_poll_count_total"); n != 1 {
		t.Fatalf("watcher_poll_count_total = %v, want 1: a poll ran, so the deploy does not prove the event", n)
	}
	if n := countLines(s.proc.logs(), "registry push event: checking now", "service="+s.name); n < 2 {
		t.Errorf("%d 'registry push event' log lines, want at least 2 (one per push)", n)
	}
	s.waitFor(10*time.Second, "the update to be counted", func() (bool, string) {
		n := s.serviceMetric("watcher_updates_total")
		return n == 1, fmt.Sprintf("watcher_updates_total = %v", n)
	})
	// Blob pushes (no tag) and dockward's own pull are events too: ignored.
	if n := s.metric(`watcher_registry_events_total{action="push",result="ignored"}`); n < 1 {
		t.Errorf(`watcher_registry_events_total{action="push",result="ignored"} = %v, want the blob pushes counted`, n)
	}

	// Refused requests: nothing is checked, nothing changes.
	envelope := `{"events": [{"action": "push", "target": {"repository": "` + s.repo + `", "tag": "latest", "digest": "` + v2 + `"}}]}`
	refused := []struct {
		name, auth, contentType, body string
		status                        int
		result                        string
	}{
		{"wrong token", "Bearer wrong-" + eventsToken, eventsMediaType, envelope, 401, "unauthorized"},
		{"no token", "", eventsMediaType, envelope, 401, "unauthorized"},
		{"wrong media type", "Bearer " + eventsToken, "application/json", envelope, 415, "unsupported_media_type"},
		{"garbage", "Bearer " + eventsToken, eventsMediaType, "{not json", 400, "malformed"},
	}
	for _, r := range refused {
		code, body := s.postEvents(r.auth, r.contentType, r.body)
		if code != r.status || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: POST /registry/events = %d %s, want %d with an error", r.name, code, body, r.status)
		}
		if strings.Contains(body, eventsToken) {
			t.Errorf("%s: the answer contains the token", r.name)
		}
	}
	for _, want := range []struct {
		result string
		n      float64
	}{{"unauthorized", 2}, {"unsupported_media_type", 1}, {"malformed", 1}} {
		series := `watcher_registry_events_total{action="none",result="` + want.result + `"}`
		if got := s.metric(series); got != want.n {
			t.Errorf("%s = %v, want %v", series, got, want.n)
		}
	}
	if strings.Contains(s.proc.logs(), eventsToken) {
		t.Error("the events token appears in dockward's log")
	}
	if n := countLines(s.proc.logs(), "registry push event: checking now"); n > 3 {
		t.Errorf("%d push-event checks, want at most 3: a refused request scheduled one", n)
	}
	if ok, detail := s.runs(v2); !ok {
		t.Errorf("after the refused requests: %s", detail)
	}

	// A well-formed event with the token is accepted; the check it
	// schedules finds v2 deployed.
	code, body := s.postEvents("Bearer "+eventsToken, eventsMediaType, envelope)
	if code != 200 || !strings.Contains(body, `"scheduled": [`) || !strings.Contains(body, s.name) {
		t.Errorf("POST /registry/events with the token = %d %s, want 200 scheduling %s", code, body, s.name)
	}
	s.waitFor(30*time.Second, "the hand-sent event's check", func() (bool, string) {
		n := countLines(s.proc.logs(), "checked", "service="+s.name, "outcome=up_to_date")
		return n >= 1, fmt.Sprintf("%d up_to_date checks logged", n)
	})
	if got := s.serviceMetric("watcher_updates_total"); got != 1 {
		t.Errorf("watcher_updates_total = %v after an event for the running digest, want 1", got)
	}
}

// deployStartRE finds when dockward started deploying a digest: the time of
// its "new digest; deploying" line (logfmt, as outside the journal).
var deployStartRE = regexp.MustCompile(`time=(\S+) .*msg="new digest; deploying".* digest=(sha256:[0-9a-f]{64})`)

// deployStart returns when dockward's log says it started deploying digest.
func (s *scenario) deployStart(digest string) (time.Time, bool) {
	for _, line := range strings.Split(s.proc.logs(), "\n") {
		m := deployStartRE.FindStringSubmatch(line)
		if m == nil || m[2] != digest {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			s.t.Fatalf("parse time of %q: %v", line, err)
		}
		return at, true
	}
	return time.Time{}, false
}

// TestMeasurePushToDeployStart measures the time from `docker push`
// returning to dockward starting the deploy, with push events (polling every
// 300 s) and with polling alone every 2 s and every 30 s, and logs the
// median of a few pushes each, made at random moments of the poll cycle.
// It is a measurement, not an assertion on time, and runs only with
// -measure. The time can be negative: the registry notifies as soon as it
// has the manifest, before docker push has printed its digest and exited.
func TestMeasurePushToDeployStart(t *testing.T) {
	if !*measure {
		t.Skip("a measurement that takes minutes; run it with -measure")
	}
	const runs = 7
	modes := []struct {
		name   string
		events bool
		poll   float64
	}{
		{"push-events", true, 300},
		{"poll-2s", false, 2},
		{"poll-30s", false, 30},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			name := "measure-" + strings.ReplaceAll(m.name, "-", "")
			var s *scenario
			if m.events {
				s = newEventsScenario(t, name, m.poll)
			} else {
				s = newScenario(t, name)
				s.pollInterval = m.poll
			}
			s.grace = 30
			s.push(healthyImage)
			s.up()
			if m.events {
				s.startEvents()
			} else {
				s.start()
			}
			var took []time.Duration
			for i := range runs {
				// A push comes at a random moment of the poll cycle, not
				// in step with the previous deploy's end.
				cycle := time.Duration(m.poll * float64(time.Second))
				if m.events {
					cycle = 2 * time.Second
				}
				time.Sleep(rand.N(cycle))
				d := s.push(healthyImage)
				pushed := time.Now()
				var started time.Time
				s.waitFor(time.Duration(2*m.poll)*time.Second+60*time.Second, "the deploy to start", func() (bool, string) {
					at, ok := s.deployStart(d)
					started = at
					return ok, "no 'new digest; deploying' line for " + d
				})
				s.waitFor(90*time.Second, "the deploy to finish", func() (bool, string) { return s.runs(d) })
				took = append(took, started.Sub(pushed))
				t.Logf("%s run %d: push returned -> deploy started in %v", m.name, i+1, started.Sub(pushed).Round(time.Millisecond))
			}
			slices.Sort(took)
			t.Logf("%s: median %v over %d pushes (min %v, max %v)", m.name, took[len(took)/2].Round(time.Millisecond), runs,
				took[0].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
		})
	}
}
