package bench

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// pollInterval is the poll interval of the poll-cycle runs, as in the
// figures the README publishes.
const pollInterval = 2 * time.Second

// PollResult is the cost of idle poll cycles with a number of services.
type PollResult struct {
	Services          int            `json:"services"`
	Cycles            int            `json:"cycles"`
	WallMedianMS      float64        `json:"wall_median_ms"`
	RegistryPerCycle  float64        `json:"registry_requests_per_cycle"`
	DockerPerCycle    float64        `json:"docker_requests_per_cycle"`
	DockerKinds       map[string]int `json:"docker_request_kinds"`
	RegistryConns     int            `json:"registry_connections"`
	DockerConns       int            `json:"docker_connections"`
	CPUPerCycleMS     float64        `json:"cpu_per_cycle_ms"`
	DockerdCPUPerCyMS float64        `json:"dockerd_cpu_per_cycle_ms"`
	RSSKiB            int64          `json:"rss_kib"`
	AnonKiB           int64          `json:"anon_kib"`
	IdleSeconds       float64        `json:"idle_seconds,omitempty"`
	IdleCPUPerCycleMS float64        `json:"idle_cpu_per_cycle_ms,omitempty"`
	CurlFloorMS       float64        `json:"curl_head_floor_ms"`
}

// measurePoll starts n services that are up to date and measures window
// poll cycles; with idle > 0 it first lets dockward idle that long.
func measurePoll(t *testing.T, n, window int, idle time.Duration) PollResult {
	w := newWorld(t)
	w.push("bench/app", "healthy", false)
	// One tag per service: a repository:tag has one service watching it.
	tag := func(i int) string { return fmt.Sprintf("svc-%d", i) }
	w.pushTags("bench/app", n, tag)
	w.runContainers(n, func(i int) string { return w.ref("bench/app", tag(i)) })

	services := make([]map[string]any, n)
	for i := range n {
		p := w.project(i)
		services[i] = map[string]any{
			"name": fmt.Sprintf("svc-%d", i), "image": "bench/app:" + tag(i),
			"compose_file": filepath.Join(w.dir, p+".yml"), "compose_project": p,
			"auto_update": true, "auto_heal": true,
		}
	}
	d := w.startDockward(map[string]any{
		"registry":   map[string]any{"url": "http://" + w.host, "poll_interval": pollInterval.Seconds(), "timeout": 10},
		"docker":     map[string]any{"socket": w.socket},
		"state_file": filepath.Join(w.dir, "state.json"),
		"services":   services,
	})
	pid := d.cmd.Process.Pid
	engine := dockerdPID()
	waitFor(t, 2*time.Minute, "two poll cycles", func() bool { return d.metric("watcher_poll_count_total") >= 2 })
	// Until the healer's first reconcile is done and the event stream is
	// open, every poll reads what runs from the engine: wait for a poll
	// that asks the engine (almost) nothing, so the window measures the
	// steady state.
	for range 60 {
		before, polls := w.docker.snapshot().requests, d.metric("watcher_poll_count_total")
		waitFor(t, time.Minute, "a poll cycle", func() bool { return d.metric("watcher_poll_count_total") > polls })
		if w.docker.snapshot().requests-before <= 3 {
			break
		}
	}

	res := PollResult{Services: n}
	if idle > 0 {
		c0, _ := cpuTicks(pid)
		p0 := d.metric("watcher_poll_count_total")
		time.Sleep(idle) // the idle cost is what accrues while nothing happens
		c1, _ := cpuTicks(pid)
		p1 := d.metric("watcher_poll_count_total")
		res.IdleSeconds = idle.Seconds()
		if p1 > p0 {
			res.IdleCPUPerCycleMS = float64(c1-c0) * 10 / (p1 - p0)
		}
	}

	reg0, dock0 := w.registry.snapshot(), w.docker.snapshot()
	p0 := d.metric("watcher_poll_count_total")
	c0, _ := cpuTicks(pid)
	e0, _ := cpuTicks(engine)
	start := time.Now()
	// No scrape during the window: a scrape costs dockward CPU too.
	time.Sleep(time.Duration(window) * pollInterval)
	p1 := d.metric("watcher_poll_count_total")
	c1, _ := cpuTicks(pid)
	e1, _ := cpuTicks(engine)
	reg1, dock1 := w.registry.snapshot(), w.docker.snapshot()
	res.RSSKiB, res.AnonKiB, _ = memoryKiB(pid)

	cy := p1 - p0
	res.Cycles = int(cy)
	res.RegistryPerCycle = float64(reg1.requests-reg0.requests) / cy
	res.DockerPerCycle = float64(dock1.requests-dock0.requests) / cy
	res.RegistryConns = reg1.conns - reg0.conns
	res.DockerConns = dock1.conns - dock0.conns
	res.CPUPerCycleMS = float64(c1-c0) * 10 / cy
	if engine != 0 {
		res.DockerdCPUPerCyMS = float64(e1-e0) * 10 / cy
	}
	res.DockerKinds = map[string]int{}
	for k, v := range dock1.byKind {
		if d := v - dock0.byKind[k]; d > 0 {
			res.DockerKinds[k] = d
		}
	}
	reqs := append(w.registry.since(start), w.docker.since(start)...)
	walls := cycles(reqs, pollInterval/2)
	res.WallMedianMS = median(durationsMS(walls))
	res.CurlFloorMS = curlFloor(t, w, n)
	t.Logf("%d services: %+v", n, res)
	return res
}

// curlFloor times n bare HEAD requests for the manifest with curl, one
// process per request as a shell loop would: the floor that any poller of
// n services pays to the registry. It returns the median total of 3 runs.
func curlFloor(t *testing.T, w *world, n int) float64 {
	url := "http://" + w.host + "/v2/bench/app/manifests/latest"
	var totals []float64
	for range 3 {
		start := time.Now()
		for range n {
			out, err := exec.Command("curl", "-sfI", "-o", "/dev/null",
				"-H", "Accept: application/vnd.docker.distribution.manifest.v2+json", url).CombinedOutput()
			if err != nil {
				t.Fatalf("curl -I %s: %v\n%s", url, err, out)
			}
		}
		totals = append(totals, float64(time.Since(start).Microseconds())/1000)
	}
	return median(totals)
}

// LatencyResult is how fast one service gets a good push live and a bad
// push undone.
type LatencyResult struct {
	GoodRounds int `json:"good_rounds"`
	BadRounds  int `json:"bad_rounds"`
	// push returned → dockward starts the deploy (tags :rollback)
	DetectMS float64 `json:"detect_ms"`
	// deploy start → new container healthy (pull, up, health checks)
	StartToHealthyMS float64 `json:"start_to_healthy_ms"`
	// push returned → new container healthy
	PushToHealthyMS float64 `json:"push_to_healthy_ms"`
	// new container healthy → dockward's success alert
	VerdictMS float64 `json:"healthy_to_verdict_ms"`
	// the floor: push returned → healthy with a bare compose pull && up -d
	FloorPushToHealthyMS float64 `json:"floor_push_to_healthy_ms"`
	// bad container unhealthy → dockward acts (blocked alert)
	UnhealthyToActMS float64 `json:"unhealthy_to_act_ms"`
	// bad push returned → previous version healthy again
	BadPushToRestoredMS float64 `json:"bad_push_to_restored_ms"`
}

// measureLatency deploys rounds good pushes and rounds bad ones on one
// service polled every 2 s, and times the same good deploy done by hand.
func measureLatency(t *testing.T, rounds int) LatencyResult {
	w := newWorld(t)
	h := startHooks(t)
	const repo = "bench/latency"
	image := w.ref(repo, "latest")
	w.push(repo, "healthy", true)
	project := w.project(9999)
	file := w.composeFile(project, image)
	compose(t, file, project, "up", "-d", "--wait")

	d := w.startDockward(map[string]any{
		"registry":      map[string]any{"url": "http://" + w.host, "poll_interval": pollInterval.Seconds(), "timeout": 10},
		"docker":        map[string]any{"socket": w.socket, "stop_timeout": 2},
		"state_file":    filepath.Join(w.dir, "state.json"),
		"notifications": h.notifications(),
		"services": []map[string]any{{
			"name": "latency", "image": repo + ":latest", "compose_file": file, "compose_project": project,
			"auto_update": true, "health_grace": 30,
		}},
	})
	waitFor(t, time.Minute, "the first poll", func() bool { return d.metric("watcher_poll_count_total") >= 1 })

	rollbackTag := regexp.MustCompile(`^/v[0-9.]+/images/.*/tag$|^/images/.*/tag$`)
	var detect, startHealthy, pushHealthy, verdict, act, restored []float64
	res := LatencyResult{}
	for range rounds {
		// A good push.
		digest := w.push(repo, "healthy", true)
		pushed := time.Now()
		c := waitHealthyDigest(t, project, digest, 2*time.Minute)
		tagged := w.docker.first(pushed, "POST", rollbackTag)
		ok := waitAlert(h, "update_succeeded", digest, time.Minute)
		if tagged.IsZero() || !ok {
			t.Fatalf("good push %s: deploy not seen (tagged %v, alert %v)\n%s", digest, tagged, ok, d.logs.String())
		}
		okAt, _ := h.at("update_succeeded", digest)
		detect = append(detect, ms(tagged.Sub(pushed)))
		startHealthy = append(startHealthy, ms(c.healthyAt.Sub(tagged)))
		pushHealthy = append(pushHealthy, ms(c.healthyAt.Sub(pushed)))
		verdict = append(verdict, ms(okAt.Sub(c.healthyAt)))
		res.GoodRounds++

		// A bad push: dockward must put the good version back.
		good := c.imageID
		bad := w.push(repo, "unhealthy", true)
		badPushed := time.Now()
		sick := waitUnhealthyDigest(t, project, bad, 2*time.Minute)
		if !waitAlert(h, "blocked", bad, 2*time.Minute) {
			t.Fatalf("bad push %s: no blocked alert\n%s", bad, d.logs.String())
		}
		blockedAt, _ := h.at("blocked", bad)
		back := waitHealthyImage(t, project, good, 2*time.Minute)
		act = append(act, ms(blockedAt.Sub(sick)))
		restored = append(restored, ms(back.Sub(badPushed)))
		res.BadRounds++
	}

	// The floor: the same good deploy by hand, as fast as compose allows,
	// on an image of its own that dockward does not watch.
	var floor []float64
	floorRepo := "bench/floor"
	w.push(floorRepo, "healthy", true)
	floorProject := project + "-floor"
	floorFile := w.composeFile(floorProject, w.ref(floorRepo, "latest"))
	compose(t, floorFile, floorProject, "up", "-d", "--wait")
	for range rounds {
		digest := w.push(floorRepo, "healthy", true)
		pushed := time.Now()
		compose(t, floorFile, floorProject, "pull")
		compose(t, floorFile, floorProject, "up", "-d")
		c := waitHealthyDigest(t, floorProject, digest, 2*time.Minute)
		floor = append(floor, ms(c.healthyAt.Sub(pushed)))
	}
	compose(t, floorFile, floorProject, "down", "-t", "1")

	res.DetectMS = median(detect)
	res.StartToHealthyMS = median(startHealthy)
	res.PushToHealthyMS = median(pushHealthy)
	res.VerdictMS = median(verdict)
	res.FloorPushToHealthyMS = median(floor)
	res.UnhealthyToActMS = median(act)
	res.BadPushToRestoredMS = median(restored)
	t.Logf("latency: %+v", res)
	return res
}

// observed is a container of the project as the engine reports it.
type observed struct {
	id, imageID string
	healthyAt   time.Time // engine time of the health check that made it healthy
}

type inspected struct {
	ID    string
	Image string
	State struct {
		Running bool
		Health  *struct {
			Status string
			Log    []struct {
				End      time.Time
				ExitCode int
			}
		}
	}
}

func projectContainers(t *testing.T, project string) []inspected {
	out, err := exec.Command("docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+project).Output()
	if err != nil {
		t.Fatalf("docker ps: %v", err)
	}
	ids := strings.Fields(string(out))
	if len(ids) == 0 {
		return nil
	}
	out, err = exec.Command("docker", append([]string{"inspect"}, ids...)...).Output()
	if err != nil {
		return nil // a container went away between ps and inspect
	}
	var cs []inspected
	json.Unmarshal(out, &cs)
	return cs
}

// imageDigests returns the registry digests of an image ID.
func imageDigests(t *testing.T, id string) []string {
	out, err := exec.Command("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", id).Output()
	if err != nil {
		return nil
	}
	var rds []string
	json.Unmarshal(out, &rds)
	var ds []string
	for _, rd := range rds {
		if _, d, ok := strings.Cut(rd, "@"); ok {
			ds = append(ds, d)
		}
	}
	return ds
}

// firstPass is when the health check first passed (healthy) or failed.
func firstResult(c inspected, pass bool) time.Time {
	if c.State.Health == nil {
		return time.Time{}
	}
	for _, l := range c.State.Health.Log {
		if (l.ExitCode == 0) == pass {
			return l.End
		}
	}
	return time.Time{}
}

func waitHealthyDigest(t *testing.T, project, digest string, timeout time.Duration) observed {
	t.Helper()
	var got observed
	waitFor(t, timeout, "a healthy container of "+project+" running "+digest, func() bool {
		for _, c := range projectContainers(t, project) {
			if c.State.Running && c.State.Health != nil && c.State.Health.Status == "healthy" && slices.Contains(imageDigests(t, c.Image), digest) {
				got = observed{id: c.ID, imageID: c.Image, healthyAt: firstResult(c, true)}
				return true
			}
		}
		return false
	})
	return got
}

func waitUnhealthyDigest(t *testing.T, project, digest string, timeout time.Duration) time.Time {
	t.Helper()
	var at time.Time
	waitFor(t, timeout, "an unhealthy container of "+project+" running "+digest, func() bool {
		for _, c := range projectContainers(t, project) {
			if c.State.Health != nil && c.State.Health.Status == "unhealthy" && slices.Contains(imageDigests(t, c.Image), digest) {
				at = firstResult(c, false)
				return true
			}
		}
		return false
	})
	return at
}

func waitHealthyImage(t *testing.T, project, imageID string, timeout time.Duration) time.Time {
	t.Helper()
	var at time.Time
	waitFor(t, timeout, "a healthy container of "+project+" running "+imageID, func() bool {
		for _, c := range projectContainers(t, project) {
			if c.Image == imageID && c.State.Running && c.State.Health != nil && c.State.Health.Status == "healthy" {
				at = firstResult(c, true)
				return true
			}
		}
		return false
	})
	return at
}

func waitAlert(h *hooks, event, digest string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, ok := h.at(event, digest); ok {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func compose(t *testing.T, file, project string, args ...string) {
	t.Helper()
	run(t, "docker", append([]string{"compose", "-f", file, "-p", project}, args...)...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func durationsMS(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// formatTable renders the results for the terminal and BENCHMARKS.md.
func formatTable(r Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dockward benchmark, %s (full=%v)\n\n", r.Date, r.Full)
	fmt.Fprintf(&b, "release binary: %.2f MB\n\n", float64(r.BinaryBytes)/1e6)
	fmt.Fprintf(&b, "| services | cycle wall ms | curl -I floor ms | registry req/cycle | docker req/cycle | conns reg/docker | dockward CPU ms/cycle | dockerd CPU ms/cycle | RSS MiB | anon MiB |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range r.Polls {
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %.2f | %.2f | %d/%d | %.1f | %.1f | %.1f | %.1f |\n",
			p.Services, p.WallMedianMS, p.CurlFloorMS, p.RegistryPerCycle, p.DockerPerCycle,
			p.RegistryConns, p.DockerConns, p.CPUPerCycleMS, p.DockerdCPUPerCyMS, float64(p.RSSKiB)/1024, float64(p.AnonKiB)/1024)
	}
	for _, p := range r.Polls {
		if p.IdleSeconds > 0 {
			fmt.Fprintf(&b, "\nidle %d services for %.0f s: CPU %.1f ms per cycle, RSS %.1f MiB (anonymous %.1f MiB)\n",
				p.Services, p.IdleSeconds, p.IdleCPUPerCycleMS, float64(p.RSSKiB)/1024, float64(p.AnonKiB)/1024)
		}
	}
	l := r.Latency
	fmt.Fprintf(&b, "\n| one service, poll 2 s (medians of %d) | ms |\n|---|---|\n", l.GoodRounds)
	fmt.Fprintf(&b, "| push returned → deploy starts (detection) | %.0f |\n", l.DetectMS)
	fmt.Fprintf(&b, "| deploy starts → new version healthy (pull, up, health) | %.0f |\n", l.StartToHealthyMS)
	fmt.Fprintf(&b, "| push returned → new version healthy | %.0f |\n", l.PushToHealthyMS)
	fmt.Fprintf(&b, "| floor: push returned → healthy by bare compose pull && up -d | %.0f |\n", l.FloorPushToHealthyMS)
	fmt.Fprintf(&b, "| new version healthy → success verdict | %.0f |\n", l.VerdictMS)
	fmt.Fprintf(&b, "| bad version unhealthy → dockward acts | %.0f |\n", l.UnhealthyToActMS)
	fmt.Fprintf(&b, "| bad push returned → previous version healthy again | %.0f |\n", l.BadPushToRestoredMS)
	return b.String()
}
