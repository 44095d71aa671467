package e2e

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/registry/registrytest"
)

// newFleet is a second dockward on the same engine and the same registry
// as canary: its own compose project, watching <repo>:<tag>.
func newFleet(t *testing.T, canary *scenario, tag string) *scenario {
	t.Helper()
	f := newScenario(t, canary.name+"-fleet")
	f.registry, f.host, f.repo = canary.registry, canary.host, canary.repo
	f.service = map[string]any{"image": f.repo + ":" + tag}
	y := fmt.Sprintf(`version: "2.4"
services:
  app:
    image: %s
    network_mode: none
    restart: "no"
    stop_grace_period: 2s
`, f.ref(tag))
	if err := os.WriteFile(f.compose, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// tagDigest asks the registry (not dockward) which digest repo:tag has.
func (s *scenario) tagDigest(tag string) string {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodHead, s.registry+"/v2/"+s.repo+"/manifests/"+tag, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("HEAD %s:%s: %v", s.repo, tag, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return resp.Header.Get("Docker-Content-Digest")
}

// logTime returns the time of the first log line that matches re, and the
// line; zero when there is none.
func (s *scenario) logTime(re *regexp.Regexp) (time.Time, string) {
	s.t.Helper()
	for _, line := range strings.Split(s.proc.logs(), "\n") {
		if !re.MatchString(line) {
			continue
		}
		ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			s.t.Fatalf("parse time of %q: %v", line, err)
		}
		return at, line
	}
	return time.Time{}, ""
}

// One engine, one registry, two dockward instances: the canary deploys
// repo:latest and promotes it to repo:stable once it stayed healthy; the
// fleet watches repo:stable. A good push reaches both, canary first; a bad
// push is blocked on the canary and the fleet never sees it.
func TestCanaryPromotesToFleet(t *testing.T) {
	t.Parallel()
	canary := newScenario(t, "canary")
	canary.service = map[string]any{"promote_tag": "stable", "promote_after": 3}
	fleet := newFleet(t, canary, "stable")

	v1 := canary.push(healthyImage)
	canary.docker("tag", canary.ref("latest"), canary.ref("stable"))
	canary.docker("push", canary.ref("stable"))
	if got := canary.tagDigest("stable"); got != v1 {
		t.Fatalf(":stable is %q before the test, want v1 %s", got, v1)
	}
	canary.up()
	fleet.composeTool("-f", fleet.compose, "-p", fleet.project, "up", "-d")
	canary.start()
	fleet.start()
	fleet.waitPolls(2)

	// A good push: the canary deploys it, soaks, promotes; then the fleet.
	v2 := canary.push(healthyImage)
	canary.waitFor(60*time.Second, "the canary to run v2", func() (bool, string) { return canary.runs(v2) })
	if ok, _ := fleet.runs(v2); ok {
		t.Fatal("the fleet runs v2 as soon as the canary does: it did not wait for the promotion")
	}
	canary.waitFor(60*time.Second, "the promotion of v2 to :stable", func() (bool, string) {
		got := canary.tagDigest("stable")
		return got == v2, ":stable is " + got
	})
	fleet.waitFor(60*time.Second, "the fleet to run v2", func() (bool, string) { return fleet.runs(v2) })

	verified, _ := canary.logTime(regexp.MustCompile(`deployed and healthy.* digest=` + v2 + `|deploy finished.*outcome=deployed.* digest=` + v2))
	promoted, line := canary.logTime(regexp.MustCompile(`msg=promoted .*digest=` + v2))
	fleetStart, ok := fleet.deployStart(v2)
	switch {
	case promoted.IsZero() || verified.IsZero() || !ok:
		t.Fatalf("missing log lines: canary verified %v, promoted %v, fleet deploy start found %v", verified, promoted, ok)
	case promoted.Sub(verified) < 3*time.Second:
		t.Errorf("promoted %v after the canary's verdict, want at least the 3s soak", promoted.Sub(verified))
	case !fleetStart.After(promoted):
		t.Errorf("the fleet started deploying v2 at %v, before the canary promoted it at %v", fleetStart, promoted)
	}
	t.Logf("canary verified v2 at %s, promoted at %s (%s); the fleet started deploying at %s", verified.Format(time.TimeOnly), promoted.Format(time.TimeOnly), line, fleetStart.Format(time.TimeOnly))
	canary.waitFor(10*time.Second, "the promoted notification", func() (bool, string) {
		got := canary.hooks.events("promoted")
		return len(got) == 1 && got[0].Digest == v2 && got[0].Level == "info", fmt.Sprintf("%+v", got)
	})
	if n := canary.serviceMetric("watcher_promotions_total"); n != 1 {
		t.Errorf("canary watcher_promotions_total = %v, want 1", n)
	}
	fleet.waitFor(10*time.Second, "the fleet's update to be counted", func() (bool, string) {
		n := fleet.serviceMetric("watcher_updates_total")
		return n == 1, fmt.Sprintf("fleet watcher_updates_total = %v", n)
	})

	// A bad push: blocked on the canary; :stable and the fleet stay at v2.
	bad := canary.push(unhealthyImage)
	canary.waitFor(90*time.Second, "the canary to block the bad digest", func() (bool, string) {
		b := canary.blocked()
		return b == bad, "blocked " + b
	})
	canary.waitFor(60*time.Second, "the canary to run v2 again", func() (bool, string) { return canary.runs(v2) })
	// Longer than the soak and a few fleet polls.
	fleet.waitPolls(5)
	if got := canary.tagDigest("stable"); got != v2 {
		t.Errorf(":stable is %s after a bad push, want v2 %s", got, v2)
	}
	if ok, detail := fleet.runs(v2); !ok {
		t.Errorf("the fleet after a bad push on the canary: %s", detail)
	}
	if n := fleet.serviceMetric("watcher_updates_total"); n != 1 {
		t.Errorf("fleet watcher_updates_total = %v after the bad push, want still 1", n)
	}
	if n := canary.serviceMetric("watcher_promotions_total"); n != 1 {
		t.Errorf("canary watcher_promotions_total = %v after the bad push, want still 1", n)
	}
	if got := canary.hooks.events("promotion_failed"); len(got) != 0 {
		t.Errorf("promotion_failed notifications: %+v", got)
	}
	if strings.Contains(fleet.proc.logs(), bad) {
		t.Errorf("the fleet's log mentions the bad digest %s: it saw it", bad)
	}
}

// A fleet that takes the registry's push events gets the promotion at
// once: the canary's PUT of :stable is a push of the fleet's tag. The fleet
// polls every 300 s, so only the event can deploy it.
func TestPromotionReachesFleetByPushEvent(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	canary := newScenario(t, "canaryev", registrytest.WithNotifications(fmt.Sprintf("http://127.0.0.1:%d/registry/events", port), eventsToken))
	canary.service = map[string]any{"promote_tag": "stable", "promote_after": 2}
	fleet := newFleet(t, canary, "stable")
	fleet.apiPort, fleet.api = port, fmt.Sprintf("http://127.0.0.1:%d", port)
	fleet.pollInterval = 300
	fleet.registryCfg = map[string]any{"events_token": eventsToken}

	canary.push(healthyImage)
	canary.docker("tag", canary.ref("latest"), canary.ref("stable"))
	canary.docker("push", canary.ref("stable"))
	canary.up()
	fleet.composeTool("-f", fleet.compose, "-p", fleet.project, "up", "-d")
	canary.start()
	fleet.startEvents()

	v2 := canary.push(healthyImage)
	canary.waitFor(90*time.Second, "the promotion of v2 to :stable", func() (bool, string) {
		got := canary.tagDigest("stable")
		return got == v2, ":stable is " + got
	})
	promotedAt := time.Now()
	fleet.waitFor(60*time.Second, "the fleet to run v2", func() (bool, string) { return fleet.runs(v2) })
	t.Logf("the fleet runs v2 %v after the promotion was seen", time.Since(promotedAt).Round(time.Millisecond))
	if n := fleet.metric("watcher_poll_count_total"); n != 1 {
		t.Fatalf("fleet watcher_poll_count_total = %v, want 1: a poll ran, so the deploy does not prove the event", n)
	}
	if n := countLines(fleet.proc.logs(), "registry push event: checking now", "image="+fleet.repo+":stable"); n < 1 {
		t.Errorf("no push event for :stable in the fleet's log")
	}
	// The pushes of :latest reached the fleet too, and were ignored.
	if n := fleet.metric(`watcher_registry_events_total{action="push",result="ignored"}`); n < 1 {
		t.Errorf("fleet ignored push events = %v, want the :latest pushes", n)
	}
}

// On a registry with token auth, the canary promotes with its credentials:
// the token for the copy must carry push (scope pull,push), or the PUT is
// refused.
func TestPromotionOnTokenRegistry(t *testing.T) {
	t.Parallel()
	const user, password = "canary-bot", "promote-pa55-e2e-never-logged"
	tokens := registrytest.StartTokenServer(t, map[string]string{user: password}, 300)
	reg := registrytest.StartWith(t, registrytest.Options{Token: tokens})
	s := newScenarioAt(t, "promotoken", reg.URL)
	s.dockerEnv = []string{"DOCKER_CONFIG=" + dockerLogin(t, s.host, user, password)}
	s.registryCfg = map[string]any{"username": user, "password_file": writeSecret(t, t.TempDir(), "password", password)}
	s.service = map[string]any{"promote_tag": "stable", "promote_after": 1}
	s.push(healthyImage)
	s.up()
	s.start()

	v2 := s.push(healthyImage)
	s.waitFor(90*time.Second, "the promoted notification", func() (bool, string) {
		got := s.hooks.events("promoted")
		return len(got) == 1 && got[0].Digest == v2, fmt.Sprintf("promoted %+v, promotion_failed %+v", got, s.hooks.events("promotion_failed"))
	})
	c, err := registry.New(reg.URL, registry.WithBasicAuth(user, password))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Digest(t.Context(), s.repo, "stable"); err != nil || got != v2 {
		t.Errorf(":stable = %q, %v; want the promoted %s", got, err, v2)
	}
	noSecrets(t, s, password)
}
