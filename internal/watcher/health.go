package watcher

import (
	"fmt"
	"sort"
	"strings"

	"github.com/dockward/dockward/internal/docker"
)

// verdict is what one look at a project's containers says about a deploy.
type verdict int

const (
	pending verdict = iota // keep watching
	healthy                // proven healthy: done
	failed                 // proven broken: roll back now
)

func (v verdict) String() string {
	switch v {
	case healthy:
		return "healthy"
	case failed:
		return "failed"
	}
	return "pending"
}

// evaluate applies the health rules to the project's containers:
//   - every container must be running, and its restart count must not grow
//     (a crash loop under a restart policy is a failure);
//   - a container with a healthcheck must reach "healthy"; "unhealthy" fails at
//     once; "starting" at the deadline fails;
//   - a container without a healthcheck passes only by staying up until the
//     deadline;
//   - a container that stopped but that its restart policy (always,
//     unless-stopped) starts again is awaited until the deadline: the engine
//     stops every container before it exits, while it still answers, so that
//     is what an engine restart looks like at first; the engine then goes
//     away, and the deploy waits for it and judges what runs once it is back.
//
// baseline holds the restart count first seen for each container ID and is
// filled in by evaluate. The reason explains a failure, or what is awaited.
func evaluate(containers []docker.ContainerDetails, baseline map[string]int, atDeadline bool) (verdict, string) {
	if len(containers) == 0 {
		if atDeadline {
			return failed, "no container of the project is running"
		}
		return pending, "waiting for containers"
	}
	sorted := append([]docker.ContainerDetails(nil), containers...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })

	var waiting, down []string
	needFullGrace := false
	for _, c := range sorted {
		first, seen := baseline[c.ID]
		if !seen {
			baseline[c.ID] = c.RestartCount
			first = c.RestartCount
		}
		st := c.State
		switch {
		case st.Restarting || c.RestartCount > first:
			return failed, fmt.Sprintf("container %s is crash-looping (restarted %d times, last exit code %d)%s",
				c.Name, c.RestartCount-first, st.ExitCode, lastOutput(st))
		case !st.Running && !atDeadline && startedAgainByEngine(c):
			down = append(down, c.Name)
			continue
		case !st.Running:
			reason := fmt.Sprintf("container %s is %s (exit code %d", c.Name, orUnknown(st.Status), st.ExitCode)
			if st.OOMKilled {
				reason += ", killed: out of memory"
			}
			if st.Error != "" {
				reason += ", error: " + st.Error
			}
			return failed, reason + ")" + lastOutput(st)
		}
		if !c.HasHealthcheck || st.Health == nil {
			needFullGrace = true
			continue
		}
		switch st.Health.Status {
		case "healthy":
		case "unhealthy":
			return failed, fmt.Sprintf("container %s is unhealthy%s", c.Name, lastOutput(st))
		default:
			waiting = append(waiting, c.Name)
		}
	}
	switch {
	case len(down) > 0:
		return pending, "stopped, and started again by its restart policy (is the engine restarting?): " + strings.Join(down, ", ")
	case len(waiting) > 0 && atDeadline:
		return failed, fmt.Sprintf("still starting at the deadline: %s%s", strings.Join(waiting, ", "), lastOutputOf(sorted, waiting[0]))
	case len(waiting) > 0:
		return pending, "waiting for healthcheck: " + strings.Join(waiting, ", ")
	case needFullGrace && !atDeadline:
		return pending, "no healthcheck: must stay running for the whole grace period"
	}
	return healthy, "all containers running and healthy"
}

// startedAgainByEngine reports whether the engine starts a stopped
// container again by itself: when it starts, for a container that it
// stopped on its way down.
func startedAgainByEngine(c docker.ContainerDetails) bool {
	return !c.State.Dead && (c.RestartPolicy == "always" || c.RestartPolicy == "unless-stopped")
}

func lastOutput(st docker.ContainerState) string {
	if out := st.Health.LastOutput(); out != "" {
		return "; last healthcheck output: " + out
	}
	return ""
}

func lastOutputOf(cs []docker.ContainerDetails, name string) string {
	for _, c := range cs {
		if c.Name == name {
			return lastOutput(c.State)
		}
	}
	return ""
}

func orUnknown(s string) string {
	if s == "" {
		return "not running"
	}
	return s
}

// relevant drops the containers that say nothing about a deploy: one-off
// containers (docker compose run) and finished jobs, containers of another
// image that exited with code 0 (migrations, init steps). The containers
// of the watched image always count.
func relevant(cs []docker.ContainerDetails, watched string) []docker.ContainerDetails {
	out := make([]docker.ContainerDetails, 0, len(cs))
	for _, c := range cs {
		if c.Labels[labelOneoff] == "True" {
			continue
		}
		finished := !c.State.Running && !c.State.Restarting && c.State.ExitCode == 0 && c.State.Status == "exited"
		if finished && normalizeRef(c.Image) != watched {
			continue
		}
		out = append(out, c)
	}
	return out
}

// labelOneoff marks containers made by `docker compose run`.
const labelOneoff = "com.docker.compose.oneoff"
