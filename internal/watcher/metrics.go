package watcher

import (
	"bufio"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// deployBuckets are upper bounds, in seconds, for watcher_deploy_duration_seconds.
var deployBuckets = []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600}

// Metrics holds Dockward's counters and gauges and writes them in the
// Prometheus text format (0.0.4). It is safe for concurrent use.
type Metrics struct {
	version string
	start   time.Time

	// notifyFailures reports failed notifications per channel; it is read at
	// scrape time so the dispatcher stays the only owner of those counts.
	notifyFailures func() map[string]uint64
	// deploysPaused reports whether deploys are paused (the state file
	// could not be read); read at scrape time, the store owns it.
	deploysPaused func() bool

	mu       sync.Mutex
	services map[string]*serviceMetrics
	polls    uint64
	lastPoll time.Time
	// registryEvents counts registry notifications by action and result.
	registryEvents map[[2]string]uint64
}

type serviceMetrics struct {
	updates, rollbacks, restarts, failures uint64
	promotions                             uint64
	healthy, blocked, gaveUp               *bool // nil until known
	registryErrors                         map[string]uint64
	deployCount                            uint64
	deploySum                              float64
	deployBuckets                          []uint64
	seen                                   Observation // for the status, see status.go
}

// NewMetrics returns empty metrics; start is the process start time.
func NewMetrics(version string, start time.Time) *Metrics {
	return &Metrics{version: version, start: start, services: map[string]*serviceMetrics{}}
}

// SetNotifyFailures sets where watcher_notifications_failed_total comes from.
func (m *Metrics) SetNotifyFailures(f func() map[string]uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.notifyFailures = f
}

// SetDeploysPaused sets where watcher_deploys_paused comes from.
func (m *Metrics) SetDeploysPaused(f func() bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.deploysPaused = f
}

// Track makes sure every named service has series from the first scrape, and
// drops services that are no longer configured.
func (m *Metrics) Track(names []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	keep := map[string]bool{}
	for _, n := range names {
		keep[n] = true
		m.service(n)
	}
	for n := range m.services {
		if !keep[n] {
			delete(m.services, n)
		}
	}
}

func (m *Metrics) service(name string) *serviceMetrics {
	s, ok := m.services[name]
	if !ok {
		s = &serviceMetrics{registryErrors: map[string]uint64{}, deployBuckets: make([]uint64, len(deployBuckets))}
		m.services[name] = s
	}
	return s
}

func (m *Metrics) with(name string, f func(*serviceMetrics)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m.service(name))
}

func boolPtr(b bool) *bool { return &b }

// Update counts a successful image update.
func (m *Metrics) Update(name string) { m.with(name, func(s *serviceMetrics) { s.updates++ }) }

// Rollback counts a rollback after a failed update.
func (m *Metrics) Rollback(name string) { m.with(name, func(s *serviceMetrics) { s.rollbacks++ }) }

// Restart counts an auto-heal restart.
func (m *Metrics) Restart(name string) { m.with(name, func(s *serviceMetrics) { s.restarts++ }) }

// Promoted counts a canary promotion.
func (m *Metrics) Promoted(name string) { m.with(name, func(s *serviceMetrics) { s.promotions++ }) }

// Failure counts a critical failure.
func (m *Metrics) Failure(name string) { m.with(name, func(s *serviceMetrics) { s.failures++ }) }

// SetHealthy records whether the service's containers are healthy.
func (m *Metrics) SetHealthy(name string, ok bool) {
	m.with(name, func(s *serviceMetrics) { s.healthy = boolPtr(ok) })
}

// SetBlocked records whether the service has a blocked digest.
func (m *Metrics) SetBlocked(name string, blocked bool) {
	m.with(name, func(s *serviceMetrics) { s.blocked = boolPtr(blocked) })
}

// SetGaveUp records whether auto-heal gave up on the service.
func (m *Metrics) SetGaveUp(name string, gaveUp bool) {
	m.with(name, func(s *serviceMetrics) { s.gaveUp = boolPtr(gaveUp) })
}

// RegistryError counts a failed registry poll by kind (not_found, timeout, …).
func (m *Metrics) RegistryError(name, kind string) {
	m.with(name, func(s *serviceMetrics) { s.registryErrors[kind]++ })
}

// RegistryEvent counts a registry notification event by its action (push,
// pull, …) and what Dockward did with it (scheduled, ignored, or why the
// request was refused).
func (m *Metrics) RegistryEvent(action, result string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.registryEvents == nil {
		m.registryEvents = map[[2]string]uint64{}
	}
	m.registryEvents[[2]string{action, result}]++
}

// DeployDuration records how long a deploy took, from start to verdict.
func (m *Metrics) DeployDuration(name string, d time.Duration) {
	m.with(name, func(s *serviceMetrics) {
		sec := d.Seconds()
		s.deployCount++
		s.deploySum += sec
		for i, le := range deployBuckets {
			if sec <= le {
				s.deployBuckets[i]++
			}
		}
	})
}

// Polled records a completed poll cycle.
func (m *Metrics) Polled(at time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.polls++
	m.lastPoll = at
}

// LastPoll is when the last poll cycle finished (zero before the first).
func (m *Metrics) LastPoll() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastPoll
}

// WriteTo writes every metric in the Prometheus text format, families and
// series in a stable order.
func (m *Metrics) WriteTo(w io.Writer, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	bw := bufio.NewWriter(w)
	names := make([]string, 0, len(m.services))
	for n := range m.services {
		names = append(names, n)
	}
	sort.Strings(names)

	counter := func(name, help string, get func(*serviceMetrics) uint64) {
		header(bw, name, "counter", help)
		for _, n := range names {
			fmt.Fprintf(bw, "%s{service=\"%s\"} %d\n", name, escape(n), get(m.services[n]))
		}
	}
	gauge := func(name, help string, get func(*serviceMetrics) *bool) {
		header(bw, name, "gauge", help)
		for _, n := range names {
			if v := get(m.services[n]); v != nil {
				fmt.Fprintf(bw, "%s{service=\"%s\"} %d\n", name, escape(n), b2i(*v))
			}
		}
	}

	counter("watcher_updates_total", "Successful image updates.", func(s *serviceMetrics) uint64 { return s.updates })
	counter("watcher_rollbacks_total", "Rollbacks after failed updates.", func(s *serviceMetrics) uint64 { return s.rollbacks })
	counter("watcher_restarts_total", "Auto-heal restarts.", func(s *serviceMetrics) uint64 { return s.restarts })
	counter("watcher_failures_total", "Critical failures (rollback failed, heal failed, crash).", func(s *serviceMetrics) uint64 { return s.failures })
	counter("watcher_promotions_total", "Digests this canary promoted to the fleet's tag after their soak.", func(s *serviceMetrics) uint64 { return s.promotions })
	gauge("watcher_service_healthy", "1 if the service has containers and every one runs and none is unhealthy (one-off containers and finished jobs aside), 0 if not.", func(s *serviceMetrics) *bool { return s.healthy })
	gauge("watcher_service_blocked", "1 if a digest is blocked after a rollback, 0 if not.", func(s *serviceMetrics) *bool { return s.blocked })
	gauge("watcher_heal_gave_up", "1 if auto-heal gave up restarting a container of the service, 0 if not.", func(s *serviceMetrics) *bool { return s.gaveUp })

	header(bw, "watcher_registry_errors_total", "counter", "Failed registry polls by kind of error.")
	for _, n := range names {
		kinds := make([]string, 0, len(m.services[n].registryErrors))
		for k := range m.services[n].registryErrors {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			fmt.Fprintf(bw, "watcher_registry_errors_total{service=\"%s\",kind=\"%s\"} %d\n", escape(n), escape(k), m.services[n].registryErrors[k])
		}
	}

	header(bw, "watcher_registry_events_total", "counter", "Registry notification events by action and result (scheduled, ignored, or why the request was refused).")
	eventKeys := make([][2]string, 0, len(m.registryEvents))
	for k := range m.registryEvents {
		eventKeys = append(eventKeys, k)
	}
	sort.Slice(eventKeys, func(i, j int) bool {
		if eventKeys[i][0] != eventKeys[j][0] {
			return eventKeys[i][0] < eventKeys[j][0]
		}
		return eventKeys[i][1] < eventKeys[j][1]
	})
	for _, k := range eventKeys {
		fmt.Fprintf(bw, "watcher_registry_events_total{action=\"%s\",result=\"%s\"} %d\n", escape(k[0]), escape(k[1]), m.registryEvents[k])
	}

	header(bw, "watcher_deploy_duration_seconds", "histogram", "Time from the start of a deploy to its verdict (healthy or rolled back).")
	for _, n := range names {
		s := m.services[n]
		for i, le := range deployBuckets {
			fmt.Fprintf(bw, "watcher_deploy_duration_seconds_bucket{service=\"%s\",le=\"%s\"} %d\n", escape(n), formatFloat(le), s.deployBuckets[i])
		}
		fmt.Fprintf(bw, "watcher_deploy_duration_seconds_bucket{service=\"%s\",le=\"+Inf\"} %d\n", escape(n), s.deployCount)
		fmt.Fprintf(bw, "watcher_deploy_duration_seconds_sum{service=\"%s\"} %s\n", escape(n), formatFloat(s.deploySum))
		fmt.Fprintf(bw, "watcher_deploy_duration_seconds_count{service=\"%s\"} %d\n", escape(n), s.deployCount)
	}

	header(bw, "watcher_notifications_failed_total", "counter", "Notifications that could not be delivered, by channel.")
	if m.notifyFailures != nil {
		failures := m.notifyFailures()
		channels := make([]string, 0, len(failures))
		for c := range failures {
			channels = append(channels, c)
		}
		sort.Strings(channels)
		for _, c := range channels {
			fmt.Fprintf(bw, "watcher_notifications_failed_total{channel=\"%s\"} %d\n", escape(c), failures[c])
		}
	}

	header(bw, "watcher_poll_count_total", "counter", "Registry poll cycles completed.")
	fmt.Fprintf(bw, "watcher_poll_count_total %d\n", m.polls)
	header(bw, "watcher_last_poll_timestamp_seconds", "gauge", "Unix time of the last completed poll cycle (0 before the first).")
	fmt.Fprintf(bw, "watcher_last_poll_timestamp_seconds %s\n", formatFloat(unixSeconds(m.lastPoll)))
	header(bw, "watcher_deploys_paused", "gauge", "1 if deploys are paused because the state file could not be read, 0 if not.")
	fmt.Fprintf(bw, "watcher_deploys_paused %d\n", b2i(m.deploysPaused != nil && m.deploysPaused()))
	header(bw, "watcher_uptime_seconds", "gauge", "Seconds since Dockward started.")
	fmt.Fprintf(bw, "watcher_uptime_seconds %s\n", formatFloat(now.Sub(m.start).Seconds()))
	header(bw, "dockward_build_info", "gauge", "Build information; always 1.")
	fmt.Fprintf(bw, "dockward_build_info{version=\"%s\",goversion=\"%s\"} 1\n", escape(m.version), escape(runtime.Version()))
	// The one runtime series client_golang users expect: a count that
	// only grows is a leak.
	header(bw, "go_goroutines", "gauge", "Number of goroutines that currently exist.")
	fmt.Fprintf(bw, "go_goroutines %d\n", runtime.NumGoroutine())
	return bw.Flush()
}

func header(w io.Writer, name, typ, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// escape escapes a label value as the text format requires.
func escape(s string) string {
	if !strings.ContainsAny(s, "\\\"\n") {
		return s
	}
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
