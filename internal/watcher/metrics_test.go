package watcher

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var (
	metricsStart = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	metricsNow   = metricsStart.Add(90*time.Minute + 500*time.Millisecond)
)

// sampleMetrics records a fixed sequence of events for two services.
func sampleMetrics() *Metrics {
	m := NewMetrics("v1.2.3", metricsStart)
	m.SetNotifyFailures(func() map[string]uint64 { return map[string]uint64{"smtp": 1, "discord": 2} })
	m.SetDeploysPaused(func() bool { return true })
	m.Track([]string{"web", "api", "gone"})
	m.Track([]string{"web", "api"})

	m.Update("web")
	m.DeployDuration("web", 3*time.Second)
	m.Update("web")
	m.DeployDuration("web", 45500*time.Millisecond)
	m.SetHealthy("web", true)
	m.SetBlocked("web", false)
	m.Restart("web")
	m.SetGaveUp("web", false)

	m.RegistryError("api", "timeout")
	m.RegistryError("api", "not_found")
	m.RegistryError("api", "timeout")
	m.Rollback("api")
	m.DeployDuration("api", 61*time.Second)
	m.Failure("api")
	m.DeployDuration("api", 700*time.Second)
	m.SetHealthy("api", false)
	m.SetBlocked("api", true)

	m.Promoted("web")

	m.RegistryEvent("push", "scheduled")
	m.RegistryEvent("push", "ignored")
	m.RegistryEvent("pull", "ignored")
	m.RegistryEvent("push", "scheduled")
	m.RegistryEvent("none", "unauthorized")

	m.Polled(metricsStart.Add(5 * time.Minute))
	m.Polled(metricsStart.Add(10 * time.Minute))
	return m
}

func writeMetrics(t *testing.T, m *Metrics, now time.Time) string {
	t.Helper()
	var b bytes.Buffer
	if err := m.WriteTo(&b, now); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	return b.String()
}

func TestMetricsGolden(t *testing.T) {
	got := writeMetrics(t, sampleMetrics(), metricsNow)
	// The Go version is the toolchain's; the golden file holds a placeholder.
	got = strings.ReplaceAll(got, `goversion="`+runtime.Version()+`"`, `goversion="GOVERSION"`)
	// So is the goroutine count.
	got = regexp.MustCompile(`(?m)^go_goroutines \d+$`).ReplaceAllString(got, "go_goroutines GOROUTINES")

	golden := filepath.Join("testdata", "metrics.golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("WriteTo output differs from %s (go test -update rewrites it):\n%s", golden, lineDiff(string(want), got))
	}
}

// lineDiff lists the lines that differ between want and got.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
		}
	}
	return b.String()
}

// TestMetricsPromtool runs the real promtool over the output: it parses it
// and lints names, types and help texts.
func TestMetricsPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found (%v): apt-get install prometheus", err)
	}
	tests := []struct {
		name string
		m    func() *Metrics
	}{
		{"events for two services", sampleMetrics},
		{"fresh, no services", func() *Metrics { return NewMetrics("dev", metricsStart) }},
		{"service with every series unset", func() *Metrics {
			m := NewMetrics("dev", metricsStart)
			m.Track([]string{"web"})
			return m
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := writeMetrics(t, tt.m(), metricsNow)
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(out)
			report, err := cmd.CombinedOutput()
			if err != nil || len(bytes.TrimSpace(report)) > 0 {
				t.Errorf("promtool check metrics: %v\n%s\non:\n%s", err, report, out)
			}
		})
	}
}

// TestMetricsContract checks that every metric the README promises is
// written with a HELP and a TYPE line of the right type, and has a sample.
func TestMetricsContract(t *testing.T) {
	out := writeMetrics(t, sampleMetrics(), metricsNow)
	contract := []struct{ name, typ string }{
		{"watcher_updates_total", "counter"},
		{"watcher_rollbacks_total", "counter"},
		{"watcher_restarts_total", "counter"},
		{"watcher_failures_total", "counter"},
		{"watcher_service_healthy", "gauge"},
		{"watcher_service_blocked", "gauge"},
		{"watcher_poll_count_total", "counter"},
		{"watcher_last_poll_timestamp_seconds", "gauge"},
		{"watcher_uptime_seconds", "gauge"},
		{"watcher_deploys_paused", "gauge"},
	}
	lines := strings.Split(out, "\n")
	for _, c := range contract {
		var help, typ, samples int
		for _, l := range lines {
			switch {
			case strings.HasPrefix(l, "# HELP "+c.name+" ") && len(l) > len("# HELP "+c.name+" "):
				help++
			case l == "# TYPE "+c.name+" "+c.typ:
				typ++
			case strings.HasPrefix(l, c.name+" ") || strings.HasPrefix(l, c.name+"{"):
				samples++
			}
		}
		if help != 1 || typ != 1 || samples == 0 {
			t.Errorf("%s: %d HELP lines, %d TYPE %s lines, %d samples; want 1, 1 and at least 1", c.name, help, typ, c.typ, samples)
		}
	}
	for _, want := range []string{
		`watcher_updates_total{service="web"} 2`,
		`watcher_poll_count_total 2`,
		`watcher_last_poll_timestamp_seconds 1.7145654e+09`,
		`watcher_uptime_seconds 5400.5`,
		`watcher_deploys_paused 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestMetricsHistogram(t *testing.T) {
	m := NewMetrics("dev", metricsStart)
	durations := []time.Duration{0, 500 * time.Millisecond, time.Second, 1001 * time.Millisecond, 7 * time.Second,
		30 * time.Second, 59 * time.Second, 599 * time.Second, 600 * time.Second, 601 * time.Second, time.Hour}
	var sum float64
	for _, d := range durations {
		m.DeployDuration("web", d)
		sum += d.Seconds()
	}
	out := writeMetrics(t, m, metricsNow)

	var les []string
	var counts []uint64
	var count uint64
	var gotSum float64
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, `watcher_deploy_duration_seconds_bucket{service="web",le="`); ok {
			le, v, _ := strings.Cut(rest, `"} `)
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("bucket line %q: %v", l, err)
			}
			les, counts = append(les, le), append(counts, n)
		}
		if v, ok := strings.CutPrefix(l, `watcher_deploy_duration_seconds_count{service="web"} `); ok {
			count, _ = strconv.ParseUint(v, 10, 64)
		}
		if v, ok := strings.CutPrefix(l, `watcher_deploy_duration_seconds_sum{service="web"} `); ok {
			gotSum, _ = strconv.ParseFloat(v, 64)
		}
	}
	if len(les) != len(deployBuckets)+1 || les[len(les)-1] != "+Inf" {
		t.Fatalf("buckets = %v, want the %d bounds then +Inf", les, len(deployBuckets))
	}
	prev := -1.0
	for i := range deployBuckets {
		le, err := strconv.ParseFloat(les[i], 64)
		if err != nil || le <= prev {
			t.Errorf("bucket %d le=%q: not a number above the previous bound %v", i, les[i], prev)
		}
		prev = le
		want := uint64(0)
		for _, d := range durations {
			if d.Seconds() <= le {
				want++
			}
		}
		if counts[i] != want {
			t.Errorf("bucket le=%q = %d, want %d (cumulative)", les[i], counts[i], want)
		}
		if i > 0 && counts[i] < counts[i-1] {
			t.Errorf("bucket le=%q = %d is below le=%q = %d: not cumulative", les[i], counts[i], les[i-1], counts[i-1])
		}
	}
	if inf := counts[len(counts)-1]; inf != count || count != uint64(len(durations)) {
		t.Errorf("+Inf bucket = %d, count = %d; want both %d", inf, count, len(durations))
	}
	if gotSum != sum {
		t.Errorf("sum = %v, want %v", gotSum, sum)
	}
}

func TestMetricsTrackDropsRemovedServices(t *testing.T) {
	m := NewMetrics("dev", metricsStart)
	m.Track([]string{"web", "api"})
	m.Update("api")
	m.Track([]string{"web"})
	out := writeMetrics(t, m, metricsNow)
	if strings.Contains(out, `service="api"`) {
		t.Errorf("output after api was removed still has its series:\n%s", out)
	}
	if !strings.Contains(out, `watcher_updates_total{service="web"} 0`+"\n") {
		t.Errorf("output lacks the zero counter of a tracked service:\n%s", out)
	}
}

func TestEscape(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "web-1.prod_a", "web-1.prod_a"},
		{"empty", "", ""},
		{"double quote", `we"ird`, `we\"ird`},
		{"backslash", `C:\path`, `C:\\path`},
		{"newline", "two\nlines", `two\nlines`},
		{"all three", "we\"ird\\name\n", `we\"ird\\name\n`},
		{"escaped already", `\"`, `\\\"`},
		{"other control and unicode kept", "tab\there é", "tab\there é"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := escape(tt.in); got != tt.want {
				t.Errorf("escape(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
