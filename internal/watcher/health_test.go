package watcher

import (
	"maps"
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/docker"
)

// withHealth returns a running container with a healthcheck in status; the
// probe outputs are oldest first.
func withHealth(id, name, status string, outputs ...string) docker.ContainerDetails {
	h := &docker.Health{Status: status}
	for _, o := range outputs {
		h.Log = append(h.Log, docker.HealthLog{ExitCode: 1, Output: o})
	}
	return docker.ContainerDetails{ID: id, Name: name, HasHealthcheck: true,
		State: docker.ContainerState{Status: "running", Running: true, Health: h}}
}

// noHealthcheck returns a running container without a healthcheck.
func noHealthcheck(id, name string) docker.ContainerDetails {
	return docker.ContainerDetails{ID: id, Name: name, State: docker.ContainerState{Status: "running", Running: true}}
}

func exited(id, name string, code int, oom bool) docker.ContainerDetails {
	return docker.ContainerDetails{ID: id, Name: name, HasHealthcheck: true,
		State: docker.ContainerState{Status: "exited", ExitCode: code, OOMKilled: oom}}
}

func restarting(id, name string, restarts int) docker.ContainerDetails {
	return docker.ContainerDetails{ID: id, Name: name, RestartCount: restarts,
		State: docker.ContainerState{Status: "restarting", Restarting: true, ExitCode: 2}}
}

func restarted(c docker.ContainerDetails, count int) docker.ContainerDetails {
	c.RestartCount = count
	return c
}

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name       string
		containers []docker.ContainerDetails
		baseline   map[string]int
		atDeadline bool
		want       verdict
		reason     []string // substrings of the reason
		notReason  []string // must not appear in the reason
	}{
		{
			name:       "healthy with healthcheck",
			containers: []docker.ContainerDetails{withHealth("c1", "web", "healthy", "ok")},
			want:       healthy,
		},
		{
			name:       "healthy with healthcheck at deadline",
			containers: []docker.ContainerDetails{withHealth("c1", "web", "healthy", "ok")},
			atDeadline: true,
			want:       healthy,
		},
		{
			name:       "unhealthy fails at once with the last probe output",
			containers: []docker.ContainerDetails{withHealth("c1", "web", "unhealthy", "old failure", "  connection refused\n")},
			want:       failed,
			reason:     []string{"container web is unhealthy", "last healthcheck output: connection refused"},
			notReason:  []string{"old failure", "connection refused\n"},
		},
		{
			name:       "starting before deadline",
			containers: []docker.ContainerDetails{withHealth("c1", "web", "starting")},
			want:       pending,
			reason:     []string{"waiting for healthcheck: web"},
		},
		{
			name:       "starting at deadline",
			containers: []docker.ContainerDetails{withHealth("c1", "web", "starting", "dial tcp :8080: connection refused")},
			atDeadline: true,
			want:       failed,
			reason:     []string{"still starting", "web", "last healthcheck output: dial tcp :8080: connection refused"},
		},
		{
			name:       "no healthcheck before deadline",
			containers: []docker.ContainerDetails{noHealthcheck("c1", "web")},
			want:       pending,
			reason:     []string{"no healthcheck"},
		},
		{
			name:       "no healthcheck at deadline",
			containers: []docker.ContainerDetails{noHealthcheck("c1", "web")},
			atDeadline: true,
			want:       healthy,
		},
		{
			name:       "healthcheck configured but no result yet",
			containers: []docker.ContainerDetails{{ID: "c1", Name: "web", HasHealthcheck: true, State: docker.ContainerState{Running: true}}},
			want:       pending,
		},
		{
			name:       "exited",
			containers: []docker.ContainerDetails{exited("c1", "web", 1, false)},
			want:       failed,
			reason:     []string{"container web is exited", "exit code 1"},
			notReason:  []string{"out of memory"},
		},
		{
			name:       "exited before deadline of a container without healthcheck",
			containers: []docker.ContainerDetails{{ID: "c1", Name: "web", State: docker.ContainerState{Status: "exited", ExitCode: 3}}},
			want:       failed,
			reason:     []string{"exit code 3"},
		},
		{
			name:       "killed for lack of memory",
			containers: []docker.ContainerDetails{exited("c1", "web", 137, true)},
			want:       failed,
			reason:     []string{"exit code 137", "killed: out of memory"},
		},
		{
			name: "dead with an engine error",
			containers: []docker.ContainerDetails{{ID: "c1", Name: "web",
				State: docker.ContainerState{Status: "dead", Dead: true, ExitCode: 128, Error: "OCI runtime create failed"}}},
			want:   failed,
			reason: []string{"container web is dead", "exit code 128", "error: OCI runtime create failed"},
		},
		{
			name:       "restarting",
			containers: []docker.ContainerDetails{restarting("c1", "web", 4)},
			want:       failed,
			reason:     []string{"container web is crash-looping", "exit code 2"},
		},
		{
			name:       "restart count grown since the baseline",
			containers: []docker.ContainerDetails{restarted(withHealth("c1", "web", "healthy"), 3)},
			baseline:   map[string]int{"c1": 1},
			want:       failed,
			reason:     []string{"container web is crash-looping", "restarted 2 times"},
		},
		{
			name:       "restart count as in the baseline",
			containers: []docker.ContainerDetails{restarted(withHealth("c1", "web", "healthy"), 3)},
			baseline:   map[string]int{"c1": 3},
			want:       healthy,
		},
		{
			name: "one healthy, one unhealthy",
			containers: []docker.ContainerDetails{
				withHealth("c1", "web", "healthy", "ok"),
				withHealth("c2", "worker", "unhealthy", "queue unreachable"),
			},
			want:   failed,
			reason: []string{"container worker is unhealthy", "queue unreachable"},
		},
		{
			name: "one unhealthy listed first, one healthy",
			containers: []docker.ContainerDetails{
				withHealth("c2", "worker", "unhealthy", "queue unreachable"),
				withHealth("c1", "web", "healthy", "ok"),
			},
			atDeadline: true,
			want:       failed,
			reason:     []string{"container worker is unhealthy"},
		},
		{
			name: "one healthy, one without healthcheck, before deadline",
			containers: []docker.ContainerDetails{
				withHealth("c1", "web", "healthy", "ok"),
				noHealthcheck("c2", "worker"),
			},
			want: pending,
		},
		{
			name: "one healthy, one starting",
			containers: []docker.ContainerDetails{
				withHealth("c1", "web", "healthy", "ok"),
				withHealth("c2", "worker", "starting"),
			},
			want:   pending,
			reason: []string{"worker"},
		},
		{
			name:   "no containers before deadline",
			want:   pending,
			reason: []string{"waiting for containers"},
		},
		{
			name:       "no containers at deadline",
			atDeadline: true,
			want:       failed,
			reason:     []string{"no container"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			baseline := tt.baseline
			if baseline == nil {
				baseline = map[string]int{}
			}
			got, reason := evaluate(tt.containers, baseline, tt.atDeadline)
			if got != tt.want {
				t.Errorf("evaluate(atDeadline=%v) = %v, %q; want %v", tt.atDeadline, got, reason, tt.want)
			}
			for _, s := range tt.reason {
				if !strings.Contains(reason, s) {
					t.Errorf("evaluate(atDeadline=%v) reason = %q, want it to contain %q", tt.atDeadline, reason, s)
				}
			}
			for _, s := range tt.notReason {
				if strings.Contains(reason, s) {
					t.Errorf("evaluate(atDeadline=%v) reason = %q, want it not to contain %q", tt.atDeadline, reason, s)
				}
			}
		})
	}
}

func TestEvaluateFillsBaselineOnFirstSight(t *testing.T) {
	web := restarted(withHealth("c1", "web", "healthy"), 4) // restarted before the deploy
	db := withHealth("c2", "db", "healthy")
	baseline := map[string]int{"c9": 7}

	if got, reason := evaluate([]docker.ContainerDetails{web, db}, baseline, false); got != healthy {
		t.Fatalf("first evaluate = %v, %q; want %v (restarts before the first look are the baseline)", got, reason, healthy)
	}
	want := map[string]int{"c1": 4, "c2": 0, "c9": 7}
	if !maps.Equal(baseline, want) {
		t.Fatalf("baseline after first evaluate = %v, want %v", baseline, want)
	}

	if got, reason := evaluate([]docker.ContainerDetails{web, db}, baseline, false); got != healthy {
		t.Fatalf("second evaluate with the same restart counts = %v, %q; want %v", got, reason, healthy)
	}
	if got, reason := evaluate([]docker.ContainerDetails{restarted(web, 5), db}, baseline, false); got != failed || !strings.Contains(reason, "crash-looping") {
		t.Fatalf("evaluate after one more restart = %v, %q; want %v crash-looping", got, reason, failed)
	}
	if !maps.Equal(baseline, want) {
		t.Fatalf("baseline after a restart = %v, want it unchanged at %v", baseline, want)
	}
}

func TestVerdictString(t *testing.T) {
	for v, want := range map[verdict]string{pending: "pending", healthy: "healthy", failed: "failed"} {
		if got := v.String(); got != want {
			t.Errorf("verdict(%d).String() = %q, want %q", int(v), got, want)
		}
	}
}
