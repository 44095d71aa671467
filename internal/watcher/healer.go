package watcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
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
	Events(ctx context.Context, filters map[string][]string, since time.Time, opened func(), fn func(docker.Event)) error
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

// An exit with code 0 that nobody asked for is a `stopped` (info), not a
// crash, unless it repeats: the cleanExitRepeats-th such exit of one
// container within cleanExitWindow is a `died` (critical), and the count
// starts again.
const (
	cleanExitRepeats = 3
	cleanExitWindow  = 10 * time.Minute
)

// probeSettle is how long a container whose last health probe was cut
// short is given before it is healed: long enough for the engine to report
// a die that cut it.
const probeSettle = 2 * time.Second

// abnormalProbe reports whether the latest health probe ended without the
// health check's own verdict (exit code 1): it could not run (the engine
// records -1 with its error, such as "cannot exec in a stopped state"),
// timed out, or was killed.
func abnormalProbe(h *docker.Health) bool {
	if h == nil || len(h.Log) == 0 {
		return false
	}
	return h.Log[len(h.Log)-1].ExitCode != 1
}

// deferProbe reports whether healing container id should wait for one
// probeSettle: once per unhealthy spell, so a health check that always
// times out is still healed.
func (h *Healer) deferProbe(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now()
	if at, ok := h.probeDeferred[id]; ok && now.Sub(at) < 5*probeSettle {
		return false
	}
	h.probeDeferred[id] = now
	return true
}

// Compose labels the healer reads besides the project and service.
const labelNumber = "com.docker.compose.container-number"

// eventObserver hears what the event stream tells: whether it is open, and
// which project's containers changed. The updater is one.
type eventObserver interface {
	EventStream(open bool)
	ContainerEvent(project string)
}

// HealerDeps are the parts the healer works with.
type HealerDeps struct {
	Logger *slog.Logger
	Engine healEngine
	Guard  deployGuard
	// Observer, when set, hears of the stream and every container event
	// of a configured project.
	Observer eventObserver
	Notify   notifier
	Store    *state.Store
	Metrics  *Metrics
	Now      func() time.Time // time.Now when nil
}

// Healer follows the engine's event stream: it restarts containers that
// turn unhealthy (with a cooldown and a cap per container), verifies the
// restart, reports crashes with their cause, and is the one place that
// decides watcher_service_healthy.
type Healer struct {
	logger  *slog.Logger
	engine  healEngine
	guard   deployGuard
	observe eventObserver
	notify  notifier
	store   *state.Store
	metrics *Metrics
	now     func() time.Time

	// wake says that pending holds containers to look at again (a cooldown
	// ended, a verify failed); resync asks for a reconcile (the config
	// changed). Both have room for one signal: a signal that finds one
	// already waiting is not needed, and nothing is dropped.
	wake   chan struct{}
	resync chan struct{}
	// work tracks the goroutines Run starts (rechecks, restarts and their
	// verification), so Run returns only once they are done.
	work sync.WaitGroup

	decide      sync.Mutex // held while a restart is decided and recorded
	mu          sync.Mutex
	byProject   map[string]config.Service
	stopTimeout time.Duration
	stopped     map[string]time.Time // container ID → last kill/stop event
	// container ID → when healing it waited for a cut-short probe to settle
	probeDeferred map[string]time.Time
	healing       map[string]bool        // container IDs with a restart or verify in flight
	timers        map[string]*time.Timer // container ID → pending recheck
	pending       map[string]bool        // container IDs due for a recheck
	cleanExits    map[string][]time.Time // service/heal key → recent unasked exits with code 0
	view          healthView
	// Failures to reach the engine are logged at warn when they start and
	// at info when they end, not on every try.
	listFailing    map[string]bool // service name → listing its containers fails
	inspectFailing bool
}

// NewHealer builds a healer for cfg.
func NewHealer(cfg *config.Config, deps HealerDeps) *Healer {
	h := &Healer{
		logger:        deps.Logger,
		engine:        deps.Engine,
		guard:         deps.Guard,
		observe:       deps.Observer,
		notify:        deps.Notify,
		store:         deps.Store,
		metrics:       deps.Metrics,
		now:           deps.Now,
		wake:          make(chan struct{}, 1),
		resync:        make(chan struct{}, 1),
		stopped:       map[string]time.Time{},
		probeDeferred: map[string]time.Time{},
		healing:       map[string]bool{},
		timers:        map[string]*time.Timer{},
		pending:       map[string]bool{},
		cleanExits:    map[string][]time.Time{},
		view:          healthView{},
		listFailing:   map[string]bool{},
	}
	if h.now == nil {
		h.now = time.Now
	}
	h.apply(cfg)
	return h
}

// SetConfig applies a reloaded config and reconciles, so services that
// were added or moved to another project are looked at at once.
func (h *Healer) SetConfig(cfg *config.Config) {
	h.apply(cfg)
	select {
	case h.resync <- struct{}{}:
	default: // a reconcile is already due
	}
}

func (h *Healer) apply(cfg *config.Config) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byProject = map[string]config.Service{}
	names := map[string]bool{}
	for _, s := range cfg.Services {
		h.byProject[s.ComposeProject] = s
		names[s.Name] = true
		h.metrics.SetGaveUp(s.Name, gaveUp(h.store.Get(s.Name)))
	}
	for id, c := range h.view {
		if !names[c.service] || h.byProject[c.project].Name != c.service {
			delete(h.view, id)
		}
	}
	for name := range h.listFailing {
		if !names[name] {
			delete(h.listFailing, name)
		}
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
		"event": {"health_status", "die", "kill", "start", "destroy"},
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
		// handled before this reconnect. The first connect replays what
		// happened while the first reconcile ran, so a container that dies
		// during it is not missed.
		from, seen := since, since
		if since.IsZero() {
			from, seen = start, start.Add(-time.Nanosecond)
		}
		err := h.engine.Events(ctx, filters, from, func() {
			if h.observe != nil {
				h.observe.EventStream(true)
			}
		}, func(ev docker.Event) {
			if h.observe != nil {
				if _, ok := h.service(ev.Attributes[docker.LabelProject]); ok {
					h.observe.ContainerEvent(ev.Attributes[docker.LabelProject])
				}
			}
			if !seen.IsZero() && !ev.Time.After(seen) {
				return
			}
			if !connected {
				connected = true
				backoff = reconnectMin
			}
			// An event stamped in the future (a broken engine or proxy, a
			// clock gone wrong) must not hold the replay point there: every
			// later reconnect would ask for events from then, and get none.
			since = ev.Time
			if now := h.now(); since.After(now) {
				since = now
			}
			h.handle(ctx, ev)
		})
		if h.observe != nil {
			h.observe.EventStream(false)
		}
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

// drainRechecks looks again at the containers whose recheck is due, and
// reconciles when the config changed.
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
		case <-h.resync:
			h.reconcile(ctx)
		case <-h.wake:
			h.mu.Lock()
			due := slices.Sorted(maps.Keys(h.pending))
			clear(h.pending)
			h.mu.Unlock()
			for _, id := range due {
				h.inspectAndHeal(ctx, id)
			}
		}
	}
}

// reconcile inspects every container of every watched project: it heals
// what turned unhealthy unseen and rebuilds the health of each service.
func (h *Healer) reconcile(ctx context.Context) {
	for _, s := range h.services() {
		list, err := h.engine.ListContainers(ctx, s.ComposeProject, true)
		if ctx.Err() != nil {
			return
		}
		h.listResult(s.Name, s.ComposeProject, err)
		if err != nil {
			continue
		}
		keys := make([]string, 0, len(list))
		for _, c := range list {
			if c.Labels[labelOneoff] != "True" {
				keys = append(keys, healKey(c.Labels, c.Name))
			}
		}
		h.migrateHeal(s.Name, keys)
		listed := map[string]bool{}
		for _, c := range list {
			listed[c.ID] = true
			h.inspectAndHeal(ctx, c.ID)
		}
		// Containers removed while nobody listened.
		h.mu.Lock()
		for id, c := range h.view {
			if c.service == s.Name && !listed[id] {
				delete(h.view, id)
			}
		}
		h.publishHealthy(s.Name)
		h.mu.Unlock()
	}
}

// listResult logs a failure to list a project's containers when listing
// starts failing, and says so when it works again.
func (h *Healer) listResult(name, project string, err error) {
	h.mu.Lock()
	was := h.listFailing[name]
	h.listFailing[name] = err != nil
	h.mu.Unlock()
	switch {
	case err != nil && !was:
		h.logger.Warn("reconcile: cannot list the project's containers; its health is unknown until it works again",
			"service", name, "project", project, "err", err)
	case err != nil:
		h.logger.Debug("reconcile: list containers still failing", "service", name, "err", err)
	case was:
		h.logger.Info("reconcile: listing the project's containers works again", "service", name, "project", project)
	}
}

// inspect inspects a container. A failure other than a missing container
// is logged at warn when inspections start failing and at info when they
// work again, not on every call.
func (h *Healer) inspect(ctx context.Context, id string) (docker.ContainerDetails, error) {
	d, err := h.engine.InspectContainer(ctx, id)
	if ctx.Err() != nil {
		return d, err
	}
	failing := err != nil && !errors.Is(err, docker.ErrNotFound)
	h.mu.Lock()
	was := h.inspectFailing
	h.inspectFailing = failing
	h.mu.Unlock()
	switch {
	case failing && !was:
		h.logger.Warn("cannot inspect containers; healing waits until it works again", "container", id, "err", err)
	case failing:
		h.logger.Debug("inspect container still failing", "container", id, "err", err)
	case was:
		h.logger.Info("inspecting containers works again", "container", id)
	}
	return d, err
}

// handle reacts to one event of a watched project's container.
func (h *Healer) handle(ctx context.Context, ev docker.Event) {
	s, ok := h.service(ev.Attributes[docker.LabelProject])
	if !ok {
		return
	}
	log := h.logger.With("service", s.Name, "container", ev.Attributes["name"])
	if ev.Attributes[labelOneoff] == "True" {
		// docker compose run: the operator's own job, never healed nor
		// reported, and no part of the service's health.
		if ev.Action == "die" {
			log.Debug("one-off container exited", "exit_code", ev.Attributes["exitCode"])
		}
		return
	}
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
		h.setView(ev.ID, s, func(c *containerView) {
			c.running, c.finished = true, false
			if c.health != "" {
				c.health = "starting" // a restart runs the healthcheck anew
			}
		})
		h.mu.Unlock()
		// Whether it has a healthcheck, and what it says, only an
		// inspection tells.
		h.inspectAndHeal(ctx, ev.ID)
		return
	case "destroy":
		h.mu.Lock()
		delete(h.stopped, ev.ID)
		delete(h.probeDeferred, ev.ID)
		if _, ok := h.view[ev.ID]; ok {
			delete(h.view, ev.ID)
			h.publishHealthy(s.Name)
		}
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
		h.mu.Lock()
		h.setView(ev.ID, s, func(c *containerView) { c.running, c.health, c.finished = true, status, false })
		h.mu.Unlock()
		h.recovered(s, healKey(ev.Attributes, ev.Attributes["name"]), log)
	case "unhealthy":
		h.mu.Lock()
		h.setView(ev.ID, s, func(c *containerView) { c.running, c.health, c.finished = true, status, false })
		h.mu.Unlock()
		h.inspectAndHeal(ctx, ev.ID)
	}
}

// died judges a container that exited: asked for, a crash, a clean exit,
// or a clean exit that keeps repeating.
func (h *Healer) died(ctx context.Context, s config.Service, ev docker.Event, log *slog.Logger) {
	key := healKey(ev.Attributes, ev.Attributes["name"])
	code, codeErr := strconv.Atoi(ev.Attributes["exitCode"])
	now := h.now()
	h.mu.Lock()
	stoppedAt, asked := h.stopped[ev.ID]
	asked = asked && now.Sub(stoppedAt) <= intentionalWindow
	delete(h.stopped, ev.ID)
	for id, at := range h.stopped {
		if now.Sub(at) > intentionalWindow {
			delete(h.stopped, id)
		}
	}
	// A clean exit on its own is a finished job, which does not count
	// towards the service's health; a stopped service does.
	h.setView(ev.ID, s, func(c *containerView) {
		c.running, c.finished = false, codeErr == nil && code == 0 && !asked
	})
	h.mu.Unlock()
	if asked {
		log.Debug("container stopped on purpose", "exit_code", ev.Attributes["exitCode"])
		return
	}
	if h.guard.Deploying(s.Name) {
		log.Debug("container died during a deploy; the deploy handles it")
		return
	}
	name := ev.Attributes["name"]
	d, err := h.inspect(ctx, ev.ID)
	if codeErr != nil && err == nil {
		code, codeErr = d.State.ExitCode, nil
	}
	if codeErr == nil && code == 0 {
		n := h.cleanExit(s.Name+"/"+key, now)
		if n < cleanExitRepeats {
			log.Info("container exited with code 0 on its own", "exits_within_window", n)
			h.notify.Send(notify.Alert{Service: s.Name, Event: notify.Stopped, Level: notify.Info,
				Message: fmt.Sprintf("%s: container %s exited with code 0 on its own", s.Name, name),
				Reason:  fmt.Sprintf("exit code 0, not asked for (no stop signal); %d of %d such exits within %v make it a crash", n, cleanExitRepeats, cleanExitWindow)})
			return
		}
	}
	h.metrics.Failure(s.Name)
	reason := "exit code " + ev.Attributes["exitCode"]
	if codeErr == nil {
		reason = fmt.Sprintf("exit code %d", code)
	}
	if codeErr == nil && code == 0 {
		reason += fmt.Sprintf(", the %d. exit with code 0 within %v that nobody asked for", cleanExitRepeats, cleanExitWindow)
	}
	if err == nil {
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
	log.Error("container died", "reason", reason)
	h.notify.Send(notify.Alert{Service: s.Name, Event: notify.Died, Level: notify.Critical,
		Message: fmt.Sprintf("%s: container %s died (%s)", s.Name, name, firstLine(reason)), Reason: reason})
}

// cleanExit records an unasked exit with code 0 of a container and returns
// how many there were within cleanExitWindow; the count starts again once
// it reaches cleanExitRepeats.
func (h *Healer) cleanExit(key string, now time.Time) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, times := range h.cleanExits {
		times = slices.DeleteFunc(times, func(t time.Time) bool { return now.Sub(t) > cleanExitWindow })
		if len(times) == 0 {
			delete(h.cleanExits, k)
		} else {
			h.cleanExits[k] = times
		}
	}
	times := append(h.cleanExits[key], now)
	if len(times) >= cleanExitRepeats {
		delete(h.cleanExits, key)
	} else {
		h.cleanExits[key] = times
	}
	return len(times)
}

// inspectAndHeal looks at one container, records what it sees for the
// service's health, and restarts the container if it is unhealthy and the
// rules allow it.
func (h *Healer) inspectAndHeal(ctx context.Context, id string) {
	d, err := h.inspect(ctx, id)
	if errors.Is(err, docker.ErrNotFound) {
		h.mu.Lock()
		if c, ok := h.view[id]; ok {
			delete(h.view, id)
			h.publishHealthy(c.service)
		}
		h.mu.Unlock()
		return
	}
	if err != nil {
		return
	}
	s, ok := h.service(d.Labels[docker.LabelProject])
	if !ok || d.Labels[labelOneoff] == "True" {
		return
	}
	h.mu.Lock()
	_, asked := h.stopped[id]
	h.setView(id, s, func(c *containerView) {
		st := d.State
		c.running, c.health = st.Running, ""
		if d.HasHealthcheck && st.Health != nil {
			c.health = st.Health.Status
		}
		c.finished = !st.Running && !st.Restarting && st.Status == "exited" && st.ExitCode == 0 && !asked
	})
	h.mu.Unlock()
	if d.State.Health == nil || !d.State.Running {
		return
	}
	if d.State.Health.Status == "unhealthy" && abnormalProbe(d.State.Health) && h.deferProbe(d.ID) {
		// The probe did not give the health check's own verdict: it may
		// have been cut by the process exiting, before the engine reports
		// the die. A restart now would pass a crash off as a stop on
		// purpose, so look again shortly; then the die has been reported,
		// or the container is unhealthy indeed and is healed.
		h.logger.Debug("health probe cut short; looking again before healing", "service", s.Name, "container", d.Name,
			"probe", d.State.Health.LastOutput())
		h.recheckAfter(d.ID, probeSettle)
		return
	}
	switch d.State.Health.Status {
	case "unhealthy":
		h.heal(ctx, s, d)
	case "healthy":
		h.recovered(s, healKey(d.Labels, d.Name), h.logger.With("service", s.Name, "container", d.Name))
	}
}

// heal restarts an unhealthy container unless a deploy owns the service,
// the container's cooldown is running, or the cap of its consecutive
// restarts was reached.
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

	// The cooldown check and the restart's record happen together.
	h.decide.Lock()
	defer h.decide.Unlock()
	key := healKey(d.Labels, d.Name)
	st := h.healState(s.Name, key)
	now := h.now()
	why := d.State.Health.LastOutput()
	switch {
	case st.GaveUp:
		log.Debug("container is unhealthy; auto-heal gave up on it earlier")
		done()
		return
	case st.Consecutive >= s.HealMaxRestarts:
		done()
		h.giveUp(s, d, key, st, why, log)
		return
	case !st.LastRestart.IsZero() && now.Sub(st.LastRestart) < s.HealCooldown.Duration():
		left := s.HealCooldown.Duration() - now.Sub(st.LastRestart)
		log.Info("container is unhealthy; inside the heal cooldown, not restarting", "cooldown_left", left.Round(time.Second))
		done()
		h.recheckAfter(d.ID, left)
		return
	}

	if err := h.updateHeal(s.Name, key, func(st *state.Heal) {
		st.LastRestart = now
		st.Consecutive++
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
		h.verify(ctx, s, d, key, log)
	}()
}

// verify checks, heal_verify_delay after a restart, that the container is
// healthy (not merely starting).
func (h *Healer) verify(ctx context.Context, s config.Service, d docker.ContainerDetails, key string, log *slog.Logger) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(s.HealVerifyDelay.Duration()):
	}
	after, err := h.inspect(ctx, d.ID)
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
	} else {
		out = "inspect failed: " + err.Error()
	}
	if status == "healthy" {
		log.Info("container healthy again after restart")
		if err := h.updateHeal(s.Name, key, func(st *state.Heal) { st.Consecutive = 0 }); err != nil {
			log.Error("persist heal state", "err", err)
		}
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

func (h *Healer) giveUp(s config.Service, d docker.ContainerDetails, key string, st state.Heal, why string, log *slog.Logger) {
	if err := h.updateHeal(s.Name, key, func(st *state.Heal) { st.GaveUp = true }); err != nil {
		log.Error("persist heal state", "err", err)
	}
	h.metrics.Failure(s.Name)
	log.Error("auto-heal gave up on the container: no more restarts until it is healthy again or a deploy is triggered",
		"restarts", st.Consecutive)
	h.notify.Send(notify.Alert{Service: s.Name, Event: notify.HealGaveUp, Level: notify.Critical,
		Message: fmt.Sprintf("%s: container %s is still unhealthy after %d restarts; auto-heal gave up on it until it is healthy again or a deploy is triggered", s.Name, d.Name, st.Consecutive),
		Reason:  "last healthcheck output: " + why})
}

// recovered clears a container's heal counters once it is healthy on its
// own. A failed heal followed by recovery on its own does not count towards
// giving up weeks later. Other containers of the service keep theirs.
func (h *Healer) recovered(s config.Service, key string, log *slog.Logger) {
	st := h.healState(s.Name, key)
	if !st.GaveUp && st.Consecutive == 0 {
		return
	}
	if err := h.updateHeal(s.Name, key, func(st *state.Heal) { st.GaveUp, st.Consecutive = false, 0 }); err != nil {
		log.Error("persist heal state", "err", err)
		return
	}
	if st.GaveUp {
		log.Info("container healthy again; auto-heal re-armed for it")
	}
}

// healState is the heal state of one container of a service. A container
// without one of its own starts from what a state file of an older
// dockward kept for the whole service.
func (h *Healer) healState(name, key string) state.Heal {
	return containerHeal(h.store.Get(name), key)
}

func containerHeal(st state.Service, key string) state.Heal {
	if hs, ok := st.Containers[key]; ok {
		return hs
	}
	return st.Heal
}

// updateHeal changes the heal state of one container of a service, and the
// service's watcher_heal_gave_up with it.
func (h *Healer) updateHeal(name, key string, change func(*state.Heal)) error {
	var after state.Service
	err := h.store.Update(name, func(st *state.Service) {
		hs := containerHeal(*st, key)
		change(&hs)
		if st.Containers == nil {
			st.Containers = map[string]state.Heal{}
		}
		if hs == (state.Heal{}) {
			delete(st.Containers, key)
		} else {
			st.Containers[key] = hs
		}
		after = *st
	})
	h.metrics.SetGaveUp(name, gaveUp(after))
	return err
}

// migrateHeal moves the service-wide heal state of an older state file to
// each of the service's containers that has none yet, and clears it.
func (h *Healer) migrateHeal(name string, keys []string) {
	if h.store.Get(name).Heal == (state.Heal{}) {
		return
	}
	err := h.store.Update(name, func(st *state.Service) {
		if st.Containers == nil {
			st.Containers = map[string]state.Heal{}
		}
		for _, k := range keys {
			if _, ok := st.Containers[k]; !ok {
				st.Containers[k] = st.Heal
			}
		}
		st.Heal = state.Heal{}
	})
	if err != nil {
		h.logger.Error("persist heal state moved to the containers", "service", name, "err", err)
		return
	}
	h.logger.Info("heal state of the service now kept per container", "service", name, "containers", strings.Join(keys, ","))
}

// gaveUp reports whether auto-heal gave up on any container of a service.
func gaveUp(st state.Service) bool {
	if st.Heal.GaveUp {
		return true
	}
	for _, hs := range st.Containers {
		if hs.GaveUp {
			return true
		}
	}
	return false
}

// healSummary sums up the heal state of a service's containers for the
// status page: the most consecutive restarts of one container, the latest
// restart, and whether auto-heal gave up on any.
func healSummary(st state.Service) state.Heal {
	sum := st.Heal
	for _, hs := range st.Containers {
		sum.Consecutive = max(sum.Consecutive, hs.Consecutive)
		if hs.LastRestart.After(sum.LastRestart) {
			sum.LastRestart = hs.LastRestart
		}
		sum.GaveUp = sum.GaveUp || hs.GaveUp
	}
	return sum
}

// HealGaveUp reports whether auto-heal gave up on any container of the
// service: the updater re-arms it when an operator triggers a deploy.
func HealGaveUp(store *state.Store, name string) bool { return gaveUp(store.Get(name)) }

// ResetHeal re-arms auto-heal for every container of a service (an
// operator triggered a deploy). The last restarts are kept for the
// cooldowns.
func ResetHeal(store *state.Store, name string) error {
	return store.Update(name, func(st *state.Service) {
		st.Heal.GaveUp, st.Heal.Consecutive = false, 0
		for k, hs := range st.Containers {
			hs.GaveUp, hs.Consecutive = false, 0
			if hs == (state.Heal{}) {
				delete(st.Containers, k)
			} else {
				st.Containers[k] = hs
			}
		}
	})
}

// recheckAfter looks at a container again once d has passed, since the
// engine reports a health status only when it changes. A recheck is never
// dropped: due containers wait in a set until the drain loop takes them.
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
		h.pending[id] = true
		h.mu.Unlock()
		select {
		case h.wake <- struct{}{}:
		default: // a wake-up is already waiting; it takes this one too
		}
	})
}

// healKey names a container's heal state so that it survives the
// container being recreated (a deploy, compose up): its compose service
// and number, "web-1". A container without compose labels goes by its name.
func healKey(labels map[string]string, name string) string {
	if svc := labels[docker.LabelService]; svc != "" {
		return svc + "-" + cmp.Or(labels[labelNumber], "1")
	}
	return name
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
