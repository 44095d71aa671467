package watcher

import "github.com/dockward/dockward/internal/config"

// healthView is what the healer knows of each watched container, by ID. It
// is the one place watcher_service_healthy is decided (serviceHealthy), fed
// by the event stream and by every inspection (reconcile, rechecks).
type healthView map[string]containerView

// containerView is one container as the service's health sees it.
type containerView struct {
	service string // the config service it belongs to
	project string
	running bool
	// health is the healthcheck's status: starting, healthy or unhealthy;
	// "" without a healthcheck.
	health string
	// finished: it exited with code 0 without being asked to stop, as a
	// job (a migration) does when it is done. It no longer counts.
	finished bool
}

// serviceHealthy decides whether a service is healthy: it has at least one
// container that counts, all of them run, and each one with a healthcheck
// reports healthy (unhealthy is not, and neither is starting: a container
// being healed or deployed has not proven itself yet). One-off containers
// (docker compose run) never enter the view; finished jobs do not count. A
// container stopped on purpose (docker stop) counts: the service is not
// healthy while it is down.
func serviceHealthy(v healthView, service string) bool {
	counted := 0
	for _, c := range v {
		if c.service != service || c.finished {
			continue
		}
		if !c.running || (c.health != "" && c.health != "healthy") {
			return false
		}
		counted++
	}
	return counted > 0
}

// setView changes what is known of one container of s and publishes the
// service's health. h.mu is held.
func (h *Healer) setView(id string, s config.Service, change func(*containerView)) {
	c, ok := h.view[id]
	if !ok {
		c = containerView{service: s.Name, project: s.ComposeProject}
	}
	change(&c)
	h.view[id] = c
	h.publishHealthy(s.Name)
}

// publishHealthy sets watcher_service_healthy from the view. h.mu is held,
// so that the last change seen is the last one published.
func (h *Healer) publishHealthy(service string) {
	h.metrics.SetHealthy(service, serviceHealthy(h.view, service))
}
