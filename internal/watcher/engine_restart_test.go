package watcher

import (
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/docker"
)

// withPolicy sets a container's restart policy.
func withPolicy(c docker.ContainerDetails, policy string) docker.ContainerDetails {
	c.RestartPolicy = policy
	return c
}

// An engine on its way down stops every container while it still answers:
// a container that its restart policy starts again is no verdict before
// the deadline.
func TestEvaluateStoppedByTheEngine(t *testing.T) {
	tests := []struct {
		name       string
		c          docker.ContainerDetails
		atDeadline bool
		want       verdict
		reason     string
	}{
		{"unless-stopped before the deadline", withPolicy(exited("c1", "web", 0, false), "unless-stopped"), false, pending,
			"stopped, and started again by its restart policy (is the engine restarting?): web"},
		{"always before the deadline", withPolicy(exited("c1", "web", 143, false), "always"), false, pending,
			"stopped, and started again by its restart policy (is the engine restarting?): web"},
		{"unless-stopped at the deadline", withPolicy(exited("c1", "web", 0, false), "unless-stopped"), true, failed,
			"container web is exited (exit code 0)"},
		{"on-failure", withPolicy(exited("c1", "web", 0, false), "on-failure"), false, failed,
			"container web is exited (exit code 0)"},
		{"no policy", withPolicy(exited("c1", "web", 0, false), "no"), false, failed,
			"container web is exited (exit code 0)"},
		{"no policy named", exited("c1", "web", 0, false), false, failed,
			"container web is exited (exit code 0)"},
		{"dead", withPolicy(docker.ContainerDetails{ID: "c1", Name: "web", State: docker.ContainerState{Status: "dead", Dead: true}}, "always"), false, failed,
			"container web is dead"},
		{"crash loop under always", withPolicy(restarting("c1", "web", 1), "always"), false, failed,
			"crash-looping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := evaluate([]docker.ContainerDetails{tt.c}, map[string]int{}, tt.atDeadline)
			if got != tt.want || !strings.Contains(reason, tt.reason) {
				t.Errorf("evaluate(%s, atDeadline=%v) = %v %q, want %v %q", tt.name, tt.atDeadline, got, reason, tt.want, tt.reason)
			}
		})
	}
}

func TestStoppedOthers(t *testing.T) {
	running := func(policy string) docker.ContainerDetails {
		return withPolicy(noHealthcheck("d1", "db"), policy)
	}
	stopped := func(policy string) docker.ContainerDetails {
		c := withPolicy(exited("d1", "db", 0, false), policy)
		c.Labels = map[string]string{docker.LabelService: "db"}
		return c
	}
	tests := []struct {
		name       string
		first      docker.ContainerDetails
		then       docker.ContainerDetails
		atDeadline bool
		want       string
	}{
		{"still running", running("no"), running("no"), false, ""},
		{"stopped without a policy", running("no"), stopped("no"), false,
			"container db of service db, outside the deploy, stopped during it (exited, exit code 0)"},
		{"stopped, started again by the engine", running("unless-stopped"), stopped("unless-stopped"), false, ""},
		{"stopped, and still at the deadline", running("unless-stopped"), stopped("unless-stopped"), true,
			"container db of service db, outside the deploy, stopped during it (exited, exit code 0)"},
		{"never ran", stopped("always"), stopped("always"), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen := map[string]bool{}
			if got := stoppedOthers([]docker.ContainerDetails{tt.first}, seen, false); got != "" {
				t.Fatalf("stoppedOthers on first sight = %q, want nothing", got)
			}
			if got := stoppedOthers([]docker.ContainerDetails{tt.then}, seen, tt.atDeadline); got != tt.want {
				t.Errorf("stoppedOthers(%s, atDeadline=%v) = %q, want %q", tt.name, tt.atDeadline, got, tt.want)
			}
		})
	}
}
