package watcher

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/docker"
)

// BenchmarkMetricsWriteTo measures one /metrics scrape with 20 services.
func BenchmarkMetricsWriteTo(b *testing.B) {
	m := NewMetrics("bench", time.Unix(0, 0))
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("app%d", i))
	}
	m.Track(names)
	for _, n := range names {
		m.Update(n)
		m.SetHealthy(n, true)
		m.SetBlocked(n, false)
		m.DeployDuration(n, 3*time.Second)
		m.RegistryError(n, "timeout")
	}
	now := time.Unix(100, 0)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.WriteTo(io.Discard, now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEvaluate measures one health verdict over a five-container project.
func BenchmarkEvaluate(b *testing.B) {
	var cs []docker.ContainerDetails
	for i := range 5 {
		cs = append(cs, docker.ContainerDetails{
			ID: fmt.Sprintf("c%d", i), Name: fmt.Sprintf("app_%d", i), HasHealthcheck: true,
			State: docker.ContainerState{Status: "running", Running: true, Health: &docker.Health{Status: "healthy"}},
		})
	}
	baseline := map[string]int{}
	b.ReportAllocs()
	for b.Loop() {
		if v, _ := evaluate(cs, baseline, false); v != healthy {
			b.Fatalf("evaluate = %v, want healthy", v)
		}
	}
}
