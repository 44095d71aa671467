package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// healEngine is what the healer needs from the Docker engine.
type healEngine interface {
	ListContainers(ctx context.Context, project string, all bool) ([]docker.Container, error)
	InspectContainer(ctx context.Context, id string) (docker.ContainerDetails, error)
	RestartContainer(ctx context.Context, id string, stopTimeout time.Duration) error
	Events(ctx context.Context, filters map[string][]string, since time.Time, fn func(docker.Event)) error
}

// deployGuard tells whether a service is being deployed; the healer leaves
// such a service alone.
type deployGuard interface {
	Deploying(name string) bool
}

// Backoff bounds for reconnecting to the event stream.
const (
	reconnectMin = 500 * time.Millisecond
	reconnectMax = 30 * time.Second
	// A die within this long after a kill event was asked for (docker
	// stop, compose down, a heal restart): not a crash. Long, because a
	// database may take minutes to stop; a start clears the mark anyway.
	intentionalWindow = 10 * time.Minute
)

// HealerDeps are the parts the healer works with.
type HealerDeps struct {
	Logger  *slog.Logger
	Engine  healEngine
	Guard   deployGuard
	Notify  notifier
	Store   *state.Store
	Metrics *Metrics
	Now     func() time.Time // time.Now when nil
}

// Healer follows the engine's event stream: it restarts containers that
// turn unhealthy (with a cooldown and a cap), verifies the restart, and
// reports crashes with their cause.
type Healer struct {
	logger  *slog.Logger
	engine  healEngine
	guard   deployGuard
	notify  notifier
	store   *state.Store
	metrics *Metrics
	now     func() time.Time

	// recheck carries container IDs to look at again (a cooldown ended, a
	// verify failed); the event loop drains it.
	recheck chan string
	// work tracks the goroutines Run starts (rechecks, restarts and their
	// verification), so Run returns only once they are done.
	work sync.WaitGroup

	decide      sync.Mutex // held while a restart is decided and recorded
	mu          sync.Mutex
	byProject   map[string]config.Service
	stopTimeout time.Duration
	stopped     map[string]time.Time // container ID → last kill/stop event
	healing     map[string]bool      // container IDs with a restart or verify in flight
	timers      map[string]*time.Timer
}

// NewHealer builds a healer for cfg.
func NewHealer(cfg *config.Config, deps HealerDeps) *Healer {
	h := &Healer{
		logger:  deps.Logger,
		engine:  deps.Engine,
		guard:   deps.Guard,
		notify:  deps.Notify,
		store:   deps.Store,
		metrics: deps.Metrics,
		now:     deps.Now,
		recheck: make(chan string, 64),
		stopped: map[string]time.Time{},
		healing: map[string]bool{},
		timers:  map[string]*time.Timer{},
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.SetConfig(cfg)
	return h
}

// SetConfig applies a (re)loaded config.
func (h *Healer) SetConfig(cfg *config.Config) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byProject = map[string]config.Service{}
	for _, s := range cfg.Services {
		h.byProject[s.ComposeProject] = s
		st := h.store.Get(s.Name).Heal
		h.metrics.SetGaveUp(s.Name, st.GaveUp)
	}
	h.stopTimeout = cfg.Docker.StopTimeout.Duration()
}

func (h *Healer) service(project string) (config.Service, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.byProject[project]
	return s, ok
}

func (h *Healer) services() []config.Service {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]config.Service, 0, len(h.byProject))
	for _, s := range h.byProject {
		out = append(out, s)
	}
	return out
}

// Run follows the event stream until ctx is done. When the stream breaks it
// reconnects with jittered, capped backoff, replays the events it missed,
// and reconciles: it inspects every watched container, so nothing that
// happened while disconnected is lost.
func (h *Healer) Run(ctx context.Context) error {
	filters := map[string][]string{
		"type":  {"container"},
		"event": {"health_status", "die", "kill", "start"},
		// Label filters are ANDed by the engine, so match the key here and
		// the project in handle.
		"label": {docker.LabelProject},
	}
	backoff := reconnectMin
	var since time.Time
	connected := false
	defer h.work.Wait()
	h.work.Add(1)
	go func() {
		defer h.work.Done()
		h.drainRechecks(ctx)
	}()
	for {
		start := h.now()
		if !connected {
			h.reconcile(ctx)
		}
		// The engine replays from since's whole second on: skip what was
		// handled before this reconnect.
		seen := since
		err := h.engine.Events(ctx, filters, since, func(ev docker.Event) {
			if !seen.IsZero() && !ev.Time.After(seen) {
				return
			}
			if !connected {
				connected = true
				backoff = reconnectMin
			}
			since = ev.Time
			h.handle(ctx, ev)
		})
		if ctx.Err() != nil {
			return nil
		}
		if since.IsZero() {
			since = start
		}
		if connected || backoff == reconnectMin {
			h.logger.Warn("docker event stream lost; reconnecting", "err", err)
		}
		connected = false
		// Streams that ran for a while reset the backoff.
		if h.now().Sub(start) > reconnectMax {
			backoff = reconnectMin
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(backoff*2, reconnectMax)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (h *Healer) drainRechecks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			h.mu.Lock()
			for _, t := range h.timers {
				t.Stop()
			}
			h.mu.Unlock()
			return
		case id := <-h.recheck:
			h.inspectAndHeal(ctx, id)
		}
	}
}

// reconcile inspects every container of every watched project.
func (h *Healer) reconcile(ctx context.Context) {
	for _, s := range h.services() {
		list, err := h.engine.ListContainers(ctx, s.ComposeProject, true)
		if err != nil {
			if ctx.Err() == nil {
				h.logger.Debug("reconcile: list containers", "service", s.Name, "err", err)
			}
			continue
		}
		for _, c := range list {
			h.inspectAndHeal(ctx, c.ID)
		}
	}
}

// handle reacts to one event of a watched project's container.
func (h *Healer) handle(ctx context.Context, ev docker.Event) {
	s, ok := h.service(ev.Attributes[docker.LabelProject])
	if !ok {
		return
	}
	log := h.logger.With("service", s.Name, "container", ev.Attributes["name"])
	switch ev.Action {
	case "kill":
		// docker stop, compose down and restarts signal before the die;
		// a reload signal (HUP, USR1, …) does not mean a stop.
		if !stopSignal(ev.Attributes["signal"]) {
			return
		}
		h.mu.Lock()
		h.stopped[ev.ID] = h.now()
		h.mu.Unlock()
		return
	case "start":
		// A die after a fresh start is a crash unless a new kill comes first.
		h.mu.Lock()
		delete(h.stopped, ev.ID)
		h.mu.Unlock()
		return
	case "die":
		h.died(ctx, s, ev, log)
		return
	}
	status, ok := ev.HealthStatus()
	if !ok {
		return
	}
	switch status {
	case "healthy":
		h.metrics.SetHealthy(s.Name, true)
		h.recovered(s, log)
	case "unhealthy":
		h.metrics.SetHealthy(s.Name, false)
		h.inspectAndHeal(ctx, ev.ID)
	}
}

// died reports a container that exited on its own.
func (h *Healer) died(ctx context.Context, s config.Service, ev docker.Event, log *slog.Logger) {
	h.mu.Lock()
	stoppedAt, asked := h.stopped[ev.ID]
	delete(h.stopped, ev.ID)
	for id, at := range h.stopped {
		if h.now().Sub(at) > intentionalWindow {
			delete(h.stopped, id)
		}
	}
	h.mu.Unlock()
	if asked && h.now().Sub(stoppedAt) <= intentionalWindow {
		log.Debug("container stopped on purpose", "exit_code", ev.Attributes["exitCode"])
		return
	}
	if h.guard.Deploying(s.Name) {
		log.Debug("container died during a deploy; the deploy handles it")
		return
	}
	h.metrics.SetHealthy(s.Name, false)
	h.metrics.Failure(s.Name)
	code := ev.Attributes["exitCode"]
	reason := "exit code " + code
	d, err := h.engine.InspectContainer(ctx, ev.ID)
	if err == nil {
		reason = fmt.Sprintf("exit code %d", d.State.ExitCode)
		if d.State.OOMKilled {
			reason += ", killed: out of memory"
		}
		if d.State.Error != "" {
			reason += ", error: " + d.State.Error
		}
		if out := d.State.Health.LastOutput(); out != "" {
			reason += "\nlast healthcheck output: " + out
		}
	}
	name := ev.Attributes["name"]
	log.Error("container died", "reason", reason)
	h.notify.Send(notify.Alert{Service: s.Name, Event: notify.Died, Level: notify.Critical,
		Message: fmt.Sprintf("%s: container %s died (%s)", s.Name, name, firstLine(reason)), Reason: reason})
}

// inspectAndHeal looks at one container and restarts it if it is unhealthy
// and the rules allow it.
func (h *Healer) inspectAndHeal(ctx context.Context, id string) {
	d, err := h.engine.InspectContainer(ctx, id)
	if err != nil {
		if !errors.Is(err, docker.ErrNotFound) && ctx.Err() == nil {
			h.logger.Debug("inspect container", "container", id, "err", err)
		}
		return
	}
	s, ok := h.service(d.Labels[docker.LabelProject])
	if !ok || d.State.Health == nil {
		return
	}
	if d.State.Health.Status == "unhealthy" && d.State.Running {
		h.heal(ctx, s, d)
	}
}

// heal restarts an unhealthy container unless a deploy owns the service,
// the cooldown is running, or the cap of consecutive restarts was reached.
func (h *Healer) heal(ctx context.Context, s config.Service, d docker.ContainerDetails) {
	log := h.logger.With("service", s.Name, "container", d.Name)
	if !s.AutoHeal {
		log.Debug("container is unhealthy; auto_heal is off")
		return
	}
	if h.guard.Deploying(s.Name) {
		// The deploy's verification handles it; look again once it is done.
		log.Debug("container is unhealthy during a deploy; looking again shortly")
		h.recheckAfter(d.ID, s.HealthPollInterval.Duration())
		return
	}
	h.mu.Lock()
	if h.healing[d.ID] {
		h.mu.Unlock()
		return
	}
	h.healing[d.ID] = true
	h.mu.Unlock()
	done := func() {
		h.mu.Lock()
		delete(h.healing, d.ID)
		h.mu.Unlock()
	}

	// Two containers of one service turning unhealthy together must not
	// both pass the cooldown check.
	h.decide.Lock()
	defer h.decide.Unlock()
	st := h.store.Get(s.Name).Heal
	now := h.now()
	why := d.State.Health.LastOutput()
	switch {
	case st.GaveUp:
		log.Debug("container is unhealthy; auto-heal gave up earlier")
		done()
		return
	case st.Consecutive >= s.HealMaxRestarts:
		done()
		h.giveUp(s, d, st, why, log)
		return
	case !st.LastRestart.IsZero() && now.Sub(st.LastRestart) < s.HealCooldown.Duration():
		left := s.HealCooldown.Duration() - now.Sub(st.LastRestart)
		log.Info("container is unhealthy; inside the heal cooldown, not restarting", "cooldown_left", left.Round(time.Second))
		done()
		h.recheckAfter(d.ID, left)
		return
	}

	if err := h.store.Update(s.Name, func(st *state.Service) {
		st.Heal.LastRestart = now
		st.Heal.Consecutive++
	}); err != nil {
		log.Error("persist heal restart", "err", err)
	}
	h.metrics.Restart(s.Name)
	log.Warn("container unhealthy; restarting", "attempt", st.Consecutive+1, "max", s.HealMaxRestarts, "healthcheck", why)
	h.notify.Send(notify.Alert{Service: s.Name, Event: notify.HealRestart, Level: notify.Warning,
		Message: fmt.Sprintf("%s: container %s is unhealthy; restarting it (attempt %d of %d)", s.Name, d.Name, st.Consecutive+1, s.HealMaxRestarts),
		Reason:  "last healthcheck output: " + why})
	h.mu.Lock()
	h.stopped[d.ID] = now // the restart's own die is not a crash
	stopTimeout := h.stopTimeout
	h.mu.Unlock()
	h.work.Add(1)
	go func() {
		defer h.work.Done()
		defer done()
		// A restart that has begun is finished even during a stop, so the
		// container is not left stopped; the engine bounds it by the stop
		// timeout.
		if err := h.engine.RestartContainer(context.WithoutCancel(ctx), d.ID, stopTimeout); err != nil {
			if ctx.Err() != nil {
				return
			}
			h.metrics.Failure(s.Name)
			log.Error("heal restart failed", "err", err)
			h.notify.Send(notify.Alert{Service: s.Name, Event: notify.HealFailed, Level: notify.Critical,
				Message: fmt.Sprintf("%s: restarting unhealthy container %s failed", s.Name, d.Name), Reason: err.Error()})
			h.recheckAfter(d.ID, s.HealCooldown.Duration())
			return
		}
		h.verify(ctx, s, d, log)
	}()
}

// verify checks, heal_verify_delay after a restart, that the container is
// healthy (not merely starting).
func (h *Healer) verify(ctx context.Context, s config.Service, d docker.ContainerDetails, log *slog.Logger) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(s.HealVerifyDelay.Duration()):
	}
	after, err := h.engine.InspectContainer(ctx, d.ID)
	if errors.Is(err, docker.ErrNotFound) || h.guard.Deploying(s.Name) || ctx.Err() != nil {
		// Replaced by a deploy or compose in the meantime: nothing to judge.
		log.Info("container replaced before the heal could be verified")
		return
	}
	status := "unknown"
	out := ""
	if err == nil {
		status = after.State.Status
		if after.State.Health != nil {
			status = after.State.Health.Status
			out = after.State.Health.LastOutput()
		}
	}
	if status == "healthy" {
		log.Info("container healthy again after restart")
		if err := h.store.Update(s.Name, func(st *state.Service) { st.Heal.Consecutive = 0 }); err != nil {
			log.Error("persist heal state", "err", err)
		}
		h.metrics.SetHealthy(s.Name, true)
		h.notify.Send(notify.Alert{Service: s.Name, Event: notify.HealSucceeded, Level: notify.Info,
			Message: fmt.Sprintf("%s: container %s is healthy again after the restart", s.Name, d.Name)})
		return
	}
	h.metrics.Failure(s.Name)
	reason := fmt.Sprintf("%s %v after the restart", status, s.HealVerifyDelay.Duration())
	if out != "" {
		reason += "; last healthcheck output: " + out
	}
	log.Error("container not healthy after restart", "status", status, "healthcheck", out)
	h.notify.Send(notify.Alert{Service: s.Name, Event: notify.HealFailed, Level: notify.Critical,
		Message: fmt.Sprintf("%s: container %s is still not healthy after a restart", s.Name, d.Name), Reason: reason})
	h.recheckAfter(d.ID, s.HealCooldown.Duration()-s.HealVerifyDelay.Duration())
}

func (h *Healer) giveUp(s config.Service, d docker.ContainerDetails, st state.Heal, why string, log *slog.Logger) {
	if err := h.store.Update(s.Name, func(st *state.Service) { st.Heal.GaveUp = true }); err != nil {
		log.Error("persist heal state", "err", err)
	}
	h.metrics.SetGaveUp(s.Name, true)
	h.metrics.Failure(s.Name)
	log.Error("auto-heal gave up: no more restarts until the service is healthy again or a deploy is triggered",
		"restarts", st.Consecutive)
	h.notify.Send(notify.Alert{Service: s.Name, Event: notify.HealGaveUp, Level: notify.Critical,
		Message: fmt.Sprintf("%s: container %s is still unhealthy after %d restarts; auto-heal gave up until it is healthy again or a deploy is triggered", s.Name, d.Name, st.Consecutive),
		Reason:  "last healthcheck output: " + why})
}

// recovered clears the heal counters once the service is healthy on its own.
// A failed heal followed by recovery on its own does not count towards
// giving up weeks later.
func (h *Healer) recovered(s config.Service, log *slog.Logger) {
	st := h.store.Get(s.Name).Heal
	if !st.GaveUp && st.Consecutive == 0 {
		return
	}
	if err := ResetHeal(h.store, s.Name); err != nil {
		log.Error("persist heal state", "err", err)
		return
	}
	h.metrics.SetGaveUp(s.Name, false)
	if st.GaveUp {
		log.Info("service healthy again; auto-heal re-armed")
	}
}

// ResetHeal re-arms auto-heal for a service (it is healthy again, or an
// operator triggered a deploy).
func ResetHeal(store *state.Store, name string) error {
	return store.Update(name, func(st *state.Service) {
		st.Heal.GaveUp = false
		st.Heal.Consecutive = 0
	})
}

// recheckAfter looks at a container again once d has passed, since the
// engine reports a health status only when it changes.
func (h *Healer) recheckAfter(id string, d time.Duration) {
	d = max(d, time.Second)
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.timers[id]; ok {
		t.Stop()
	}
	h.timers[id] = time.AfterFunc(d, func() {
		h.mu.Lock()
		delete(h.timers, id)
		h.mu.Unlock()
		select {
		case h.recheck <- id:
		default:
		}
	})
}

// stopSignal reports whether a kill event's signal asks the container to
// stop: SIGTERM, SIGKILL, SIGINT or SIGQUIT (nginx's stop signal), by number
// or name. An event without a signal counts as a stop.
func stopSignal(sig string) bool {
	switch strings.TrimPrefix(strings.ToUpper(sig), "SIG") {
	case "", "15", "TERM", "9", "KILL", "2", "INT", "3", "QUIT":
		return true
	}
	return false
}

func firstLine(s string) string {
	for i := range len(s) {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
