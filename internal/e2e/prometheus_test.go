package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The hand-written /metrics is checked by the tools operators will use:
// promtool lints it, and a real Prometheus server scrapes dockward after a
// deploy, answers queries about it (counters, the histogram) and evaluates
// the alert rules shipped in deploy/prometheus against it.
func TestPrometheusScrapesDockward(t *testing.T) {
	t.Parallel()
	promBin := lookPrometheusTool(t, "prometheus")
	promtoolBin := lookPrometheusTool(t, "promtool")
	rulesPath, err := filepath.Abs("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	rulesYAML, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatalf("read alert rules: %v", err)
	}

	s := newScenario(t, "prom")
	s.push(healthyImage)
	s.up()
	s.start()
	v2 := s.push(healthyImage)
	// Wait for dockward's verdict before asking the engine what runs: while
	// compose recreates the container, `docker ps` can list an id that is
	// gone by the time runs() inspects it.
	s.waitFor(60*time.Second, "v2 to be deployed by polling", func() (bool, string) {
		n := s.serviceMetric("watcher_updates_total")
		return n == 1, fmt.Sprintf("watcher_updates_total = %v", n)
	})
	if ok, detail := s.runs(v2); !ok {
		t.Fatalf("after the deploy: %s", detail)
	}

	// promtool lints the exposition exactly as dockward serves it.
	code, body := s.request("GET", "/metrics")
	if code != 200 {
		t.Fatalf("GET /metrics = %d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lint := exec.CommandContext(ctx, promtoolBin, "check", "metrics")
	lint.Stdin = strings.NewReader(body)
	if out, err := lint.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s\n/metrics:\n%s", err, out, body)
	}

	// A real Prometheus scrapes dockward every second and evaluates the
	// shipped alert rules every second.
	prom := startPrometheus(t, promBin, s.apiPort, rulesPath)
	target := fmt.Sprintf("127.0.0.1:%d", s.apiPort)

	s.waitFor(20*time.Second, "Prometheus to scrape watcher_updates_total = 1", func() (bool, string) {
		v, detail := prom.value(`watcher_updates_total{service="prom"}`)
		return v == 1, detail
	})
	got := prom.vector(`watcher_updates_total{service="prom"}`)
	if want := map[string]string{"__name__": "watcher_updates_total", "job": "dockward", "instance": target, "service": "prom"}; len(got) != 1 || !equalLabels(got[0].Metric, want) {
		t.Errorf("watcher_updates_total{service=\"prom\"} = %+v, want one series labelled %v", got, want)
	}
	if v, detail := prom.value(`up{job="dockward"}`); v != 1 {
		t.Errorf("up{job=\"dockward\"}: %s, want 1", detail)
	}
	for _, q := range []string{`watcher_service_healthy{service="prom"}`, `dockward_build_info{job="dockward"}`} {
		if v, detail := prom.value(q); v != 1 {
			t.Errorf("%s: %s, want 1", q, detail)
		}
	}
	var targets struct {
		ActiveTargets []struct {
			ScrapePool string `json:"scrapePool"`
			ScrapeURL  string `json:"scrapeUrl"`
			Health     string `json:"health"`
			LastError  string `json:"lastError"`
		} `json:"activeTargets"`
	}
	prom.get("/api/v1/targets", nil, &targets)
	if len(targets.ActiveTargets) != 1 {
		t.Errorf("/api/v1/targets lists %d active targets, want 1: %+v", len(targets.ActiveTargets), targets)
	}
	for _, tg := range targets.ActiveTargets {
		if tg.ScrapePool != "dockward" || tg.ScrapeURL != "http://"+target+"/metrics" || tg.Health != "up" || tg.LastError != "" {
			t.Errorf("target %+v, want pool dockward, url http://%s/metrics, health up, no lastError", tg, target)
		}
	}

	// The histogram parses as one: the single deploy falls in exactly one
	// bucket, and histogram_quantile interpolates inside that bucket.
	if v, detail := prom.value(`watcher_deploy_duration_seconds_count{service="prom"}`); v != 1 {
		t.Errorf("watcher_deploy_duration_seconds_count: %s, want 1", detail)
	}
	sum, detail := prom.value(`watcher_deploy_duration_seconds_sum{service="prom"}`)
	if !(sum > 0) {
		t.Errorf("watcher_deploy_duration_seconds_sum: %s, want > 0", detail)
	}
	lo, hi := 0.0, math.Inf(1)
	buckets := prom.vector(`watcher_deploy_duration_seconds_bucket{service="prom"}`)
	for _, b := range buckets {
		le, err := strconv.ParseFloat(b.Metric["le"], 64)
		if err != nil {
			t.Fatalf("bucket %v: le: %v", b.Metric, err)
		}
		switch n := b.value(t); n {
		case 0:
			lo = math.Max(lo, le)
		case 1:
			hi = math.Min(hi, le)
		default:
			t.Errorf("bucket le=%s = %v after one deploy, want 0 or 1", b.Metric["le"], n)
		}
	}
	if len(buckets) < 2 || !(lo < sum && sum <= hi) {
		t.Errorf("buckets %+v: the deploy of %vs falls in (%v, %v], want the sum inside", buckets, sum, lo, hi)
	}
	q50, detail := prom.value(`histogram_quantile(0.5, watcher_deploy_duration_seconds_bucket{service="prom"})`)
	if !(lo < q50 && q50 <= hi) {
		t.Errorf("histogram_quantile(0.5): %s, want within (%v, %v]", detail, lo, hi)
	}
	t.Logf("deploy took %.2fs; bucket (%v, %v]; histogram_quantile(0.5) = %v", sum, lo, hi, q50)

	// Every alert of alerts.yml is loaded, evaluates without error against
	// real dockward series, and none is pending or firing for a healthy service.
	var want []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert:\s*(\S+)`).FindAllSubmatch(rulesYAML, -1) {
		want = append(want, string(m[1]))
	}
	slices.Sort(want)
	if len(want) == 0 {
		t.Fatalf("found no alerts in %s", rulesPath)
	}
	type rule struct {
		Name, Health, State string
		LastError           string `json:"lastError"`
	}
	var rules []rule
	s.waitFor(20*time.Second, "every alert rule to be evaluated", func() (bool, string) {
		var resp struct {
			Groups []struct{ Rules []rule }
		}
		prom.get("/api/v1/rules", url.Values{"type": {"alert"}}, &resp)
		rules = nil
		for _, g := range resp.Groups {
			rules = append(rules, g.Rules...)
		}
		for _, r := range rules {
			if r.Health == "unknown" {
				return false, fmt.Sprintf("%+v", rules)
			}
		}
		return len(rules) > 0, fmt.Sprintf("%+v", rules)
	})
	var names []string
	for _, r := range rules {
		names = append(names, r.Name)
		if r.Health != "ok" || r.LastError != "" || r.State != "inactive" {
			t.Errorf("alert %s: health %q, state %q, lastError %q; want ok and inactive", r.Name, r.Health, r.State, r.LastError)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, want) {
		t.Errorf("Prometheus loaded alerts %v, want %v from %s", names, want, rulesPath)
	}
}

// lookPrometheusTool finds a binary of Debian's prometheus package. The test
// fails without it: it must not pass by skipping.
func lookPrometheusTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%v: this test needs Prometheus; apt-get install prometheus", err)
	}
	return p
}

// promServer is a Prometheus server started for one test.
type promServer struct {
	t    *testing.T
	base string
	proc *process
}

// startPrometheus runs Prometheus on a free port, scraping dockward's API
// as job "dockward" every second with the given rule file, and waits until
// it is ready. It is stopped, and its output shown on failure, at cleanup.
func startPrometheus(t *testing.T, bin string, apiPort int, rulesPath string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %q
scrape_configs:
  - job_name: dockward
    static_configs:
      - targets: ["127.0.0.1:%d"]
`, rulesPath, apiPort)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	p := &promServer{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	p.proc = startProcess(t, nil, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port),
		"--log.level=warn",
	)
	// Registered after t.TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		if err := p.proc.stop(10 * time.Second); err != nil {
			t.Logf("stop prometheus: %v", err)
		}
		if t.Failed() {
			t.Logf("prometheus output:\n%s", p.proc.logs())
		}
	})
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for {
		if exited, err := p.proc.exited(); exited {
			t.Fatalf("prometheus exited during start: %v", err)
		}
		resp, err := http.Get(p.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("prometheus ready on %s after %v", p.base, time.Since(start).Round(time.Millisecond))
	return p
}

// get calls the HTTP API and decodes the data of a successful response.
func (p *promServer) get(path string, query url.Values, data any) {
	p.t.Helper()
	resp, err := http.Get(p.base + path + "?" + query.Encode())
	if err != nil {
		p.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatalf("GET %s: %v", path, err)
	}
	var r struct {
		Status    string
		Data      json.RawMessage
		ErrorType string `json:"errorType"`
		Error     string
	}
	if err := json.Unmarshal(b, &r); err != nil {
		p.t.Fatalf("GET %s = %d: decode %q: %v", path, resp.StatusCode, b, err)
	}
	if resp.StatusCode != 200 || r.Status != "success" {
		p.t.Fatalf("GET %s?%s = %d %s: %s: %s", path, query.Encode(), resp.StatusCode, r.Status, r.ErrorType, r.Error)
	}
	if err := json.Unmarshal(r.Data, data); err != nil {
		p.t.Fatalf("GET %s: decode data %s: %v", path, r.Data, err)
	}
}

// promSample is one series of an instant vector.
type promSample struct {
	Metric map[string]string
	Value  [2]any // [unix time, "value"]
}

func (s promSample) value(t *testing.T) float64 {
	t.Helper()
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		t.Fatalf("sample %+v: %v", s, err)
	}
	return v
}

// vector runs an instant query that must return a vector.
func (p *promServer) vector(query string) []promSample {
	p.t.Helper()
	var data struct {
		ResultType string
		Result     []promSample
	}
	p.get("/api/v1/query", url.Values{"query": {query}}, &data)
	if data.ResultType != "vector" {
		p.t.Fatalf("query %s: result type %q, want vector", query, data.ResultType)
	}
	return data.Result
}

// value runs an instant query and returns its single value, or NaN (and
// what came back instead) if it does not return exactly one series.
func (p *promServer) value(query string) (float64, string) {
	p.t.Helper()
	got := p.vector(query)
	if len(got) != 1 {
		return math.NaN(), fmt.Sprintf("query %s returned %d series: %+v", query, len(got), got)
	}
	v := got[0].value(p.t)
	return v, fmt.Sprintf("query %s = %v", query, v)
}

func equalLabels(got, want map[string]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}
