// Package watcher holds Dockward's long-running parts: the updater that polls
// the registry and deploys, the healer that follows the engine's events, the
// metrics they share and the HTTP API that drives them.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/state"
)

// maxParallelChecks bounds how many services are compared with the registry
// at once, so a large config does not open dozens of connections every poll.
const maxParallelChecks = 4

// rollbackTag is the tag that keeps the previous image during a deploy.
const rollbackTag = "rollback"

// Engine waits: while the engine does not answer, a deploy waits for it,
// polling with backoff, for at most defaultEngineWait.
const (
	defaultEngineWait     = 10 * time.Minute
	defaultEngineRetryMin = 500 * time.Millisecond
	defaultEngineRetryMax = 15 * time.Second
)

// engine is what the watcher needs from the Docker engine.
type engine interface {
	ListContainers(ctx context.Context, project string, all bool) ([]docker.Container, error)
	InspectContainer(ctx context.Context, id string) (docker.ContainerDetails, error)
	InspectImage(ctx context.Context, ref string) (docker.Image, error)
	TagImage(ctx context.Context, source, repo, tag string) error
}

// digester reads a tag's current digest from the registry.
type digester interface {
	Digest(ctx context.Context, repository, tag string) (string, error)
}

// composer runs docker compose for a project.
type composer interface {
	Pull(ctx context.Context, p compose.Project, services ...string) error
	Up(ctx context.Context, p compose.Project, opts compose.UpOptions) error
}

// notifier queues an alert for the team; it must not block.
type notifier interface {
	Send(a notify.Alert)
}

// Outcome says how a check of one service ended.
type Outcome string

// Outcomes of a check.
const (
	UpToDate       Outcome = "up_to_date"
	Deployed       Outcome = "deployed"
	RolledBack     Outcome = "rolled_back"
	RollbackFailed Outcome = "rollback_failed"
	SkipBlocked    Outcome = "blocked"
	CheckFailed    Outcome = "error"
	// EngineAway: the engine did not answer for the whole engine wait. Not
	// a verdict: nothing is blocked, and the deploy resumes later.
	EngineAway Outcome = "engine_unavailable"
	// NoVerdict: the deploy could not be judged (what runs could not be
	// read); nothing is blocked, and the deploy resumes later.
	NoVerdict Outcome = "no_verdict"
)

// Result is what a check of one service did.
type Result struct {
	Service  string  `json:"service"`
	Outcome  Outcome `json:"outcome"`
	Digest   string  `json:"digest,omitempty"`
	Previous string  `json:"previous,omitempty"`
	Reason   string  `json:"reason,omitempty"`
	Seconds  float64 `json:"seconds"`
}

// Errors returned when a check cannot start.
var (
	ErrBusy           = errors.New("a check or deploy of this service is already in progress")
	ErrUnknownService = errors.New("no such service")
	ErrNoImage        = errors.New("service has no image to watch")
	ErrStopping       = errors.New("dockward is stopping")
)

// service is one configured service. It is replaced whole on reload.
type service struct {
	cfg   config.Service
	ref   registry.Ref
	guard *guard
}

// guard lets one check or deploy of a compose project run at a time. It
// is keyed by the project, what it protects, so that a reload that renames
// a service cannot start a second deploy on the same project.
type guard struct {
	busy atomic.Bool
	// deploying is set while containers are being replaced or verified
	// (a deploy, a rollback, a resumed deploy), not during a plain check;
	// the healer leaves the service alone only then.
	deploying atomic.Bool
	// lastRegistryError is the kind of the last registry failure, so a
	// failure is logged when it starts and when it ends, not on every poll.
	// Only the holder of busy touches it.
	lastRegistryError string
	// lastCheckError and lastPullError play the same part for a
	// misconfigured service and for a pull that keeps failing.
	lastCheckError string
	lastPullError  string
	// proved is the last digest of the watched tag proved with its
	// manifest's bytes; only a new one costs a GET.
	proved string
	// engineAlerted is set once the engine's absence was alerted, so that
	// a long outage is one alert, not one per poll; noVerdictAlerted plays
	// the same part for a deploy that cannot be judged. A verdict clears both.
	engineAlerted    bool
	noVerdictAlerted bool
}

// UpdaterDeps are the parts the updater works with.
type UpdaterDeps struct {
	Logger   *slog.Logger
	Engine   engine
	Registry digester
	Compose  composer
	Notify   notifier
	Store    *state.Store
	Metrics  *Metrics
	Now      func() time.Time // time.Now when nil
	// EngineWait bounds how long a deploy waits for an engine that does not
	// answer; 10 minutes when zero.
	EngineWait time.Duration
	// Promoter copies a canary's verified digest to its promote_tag
	// (promote.go); nil when no service promotes.
	Promoter promoter
}

// Updater polls the registry and deploys new digests, one check or deploy
// at a time per compose project, with rollback and blocking on failure. It
// schedules; a deployment (deploy.go) is the deploy itself.
type Updater struct {
	logger   *slog.Logger
	engine   engine
	registry digester
	compose  composer
	notify   notifier
	store    *state.Store
	metrics  *Metrics
	now      func() time.Time
	promoter promoter

	engineWait     time.Duration
	engineRetryMin time.Duration
	engineRetryMax time.Duration

	// deployCtx outlives a stop signal so a deploy in flight can finish or
	// roll back; stopDeploys cancels it when the stop bound is reached.
	deployCtx   context.Context
	stopDeploys context.CancelFunc
	inflight    sync.WaitGroup
	resumed     atomic.Bool
	// flushFailing is set while the state file cannot be written.
	flushFailing atomic.Bool

	mu           sync.Mutex
	services     map[string]*service
	guards       map[string]*guard // by compose project
	order        []string
	pollInterval time.Duration
	stopBound    time.Duration
	stopping     bool
	dockerSocket string
	reloaded     chan struct{}

	sched   scheduled     // checks asked for by Schedule (schedule.go)
	running *runningCache // what runs, kept while the event stream is open (running.go)
}

// NewUpdater builds an updater for cfg.
func NewUpdater(cfg *config.Config, deps UpdaterDeps) (*Updater, error) {
	u := &Updater{
		logger:         deps.Logger,
		engine:         deps.Engine,
		registry:       deps.Registry,
		compose:        deps.Compose,
		notify:         deps.Notify,
		store:          deps.Store,
		metrics:        deps.Metrics,
		now:            deps.Now,
		engineWait:     deps.EngineWait,
		promoter:       deps.Promoter,
		engineRetryMin: defaultEngineRetryMin,
		engineRetryMax: defaultEngineRetryMax,
		services:       map[string]*service{},
		guards:         map[string]*guard{},
		reloaded:       make(chan struct{}, 1),
	}
	if u.now == nil {
		u.now = time.Now
	}
	u.running = newRunning(u.now)
	if u.engineWait <= 0 {
		u.engineWait = defaultEngineWait
	}
	u.deployCtx, u.stopDeploys = context.WithCancel(context.Background())
	if err := u.SetConfig(cfg); err != nil {
		return nil, err
	}
	return u, nil
}

// SetConfig applies a (re)loaded config. A service keeps the guard of its
// compose project, whatever its name, so a deploy in flight is not doubled;
// persisted state is untouched.
func (u *Updater) SetConfig(cfg *config.Config) error {
	base, err := url.Parse(cfg.Registry.URL)
	if err != nil {
		return fmt.Errorf("registry.url: %w", err)
	}
	host := base.Host
	next := map[string]*service{}
	order := make([]string, 0, len(cfg.Services))
	u.mu.Lock()
	defer u.mu.Unlock()
	guards := map[string]*guard{}
	for i, sc := range cfg.Services {
		g, ok := u.guards[sc.ComposeProject]
		if !ok {
			g = &guard{}
		}
		guards[sc.ComposeProject] = g
		s := &service{cfg: sc, guard: g}
		if sc.Image != "" {
			s.ref, err = registry.ParseRef(sc.Image, host)
			if err != nil {
				return fmt.Errorf("services[%d].image: %w", i, err)
			}
		}
		next[sc.Name] = s
		order = append(order, sc.Name)
	}
	// A project that left the config keeps its guard while its deploy is
	// in flight, so that a reload that brings it back cannot double it.
	for project, g := range u.guards {
		if _, ok := guards[project]; !ok && g.busy.Load() {
			guards[project] = g
		}
	}
	u.services = next
	u.guards = guards
	u.order = order
	u.pollInterval = cfg.Registry.PollInterval.Duration()
	u.dockerSocket = cfg.Docker.Socket
	// A deploy in flight gets its grace period to finish, plus a rollback
	// and its own grace period, before a stop cancels it. systemd's
	// TimeoutStopSec (180s in the shipped unit) must exceed this.
	u.stopBound = 0
	for _, s := range cfg.Services {
		u.stopBound = max(u.stopBound, StopBound(s))
	}
	select {
	case u.reloaded <- struct{}{}:
	default:
	}
	u.metrics.Track(order)
	for _, name := range order {
		blocked := u.store.Get(name).Blocked != nil
		u.metrics.SetBlocked(name, blocked)
	}
	return nil
}

// socket names the engine for messages.
func (u *Updater) socket() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.dockerSocket
}

// StopBound is how long a stop waits for a deploy of s in flight: its grace
// period, a rollback and the rollback's grace period.
func StopBound(s config.Service) time.Duration {
	return 2*s.HealthGrace.Duration() + 30*time.Second
}

// SetStopBound overrides how long a stop waits for deploys in flight.
func (u *Updater) SetStopBound(d time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.stopBound = d
}

func (u *Updater) lookup(name string) (*service, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	s, ok := u.services[name]
	return s, ok
}

// Services returns the configured service names in config order.
func (u *Updater) Services() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.order...)
}

// Busy reports whether a check or deploy of the service's project is running.
func (u *Updater) Busy(name string) bool {
	s, ok := u.lookup(name)
	return ok && s.guard.busy.Load()
}

// Deploying reports whether the service's containers are being replaced or
// verified by a deploy or rollback. The healer leaves such a service alone.
func (u *Updater) Deploying(name string) bool {
	s, ok := u.lookup(name)
	return ok && s.guard.deploying.Load()
}

// acquire takes the guard of the service's project. The caller must call
// release.
func (u *Updater) acquire(name string) (*service, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopping {
		return nil, ErrStopping
	}
	if err := u.errIfPaused(); err != nil {
		return nil, err
	}
	s, ok := u.services[name]
	if !ok {
		return nil, ErrUnknownService
	}
	if s.cfg.Image == "" {
		return nil, ErrNoImage
	}
	if !s.guard.busy.CompareAndSwap(false, true) {
		return nil, ErrBusy
	}
	u.inflight.Add(1)
	return s, nil
}

func (u *Updater) release(s *service) {
	s.guard.busy.Store(false)
	u.released(s.guard)
	u.inflight.Done()
}

// Run polls every poll_interval until ctx is done. Then it starts no new
// deploys and waits for the ones in flight, up to the stop bound. It
// resumes interrupted deploys first, unless Resume already did.
func (u *Updater) Run(ctx context.Context) error {
	u.mu.Lock()
	interval := u.pollInterval
	u.mu.Unlock()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	u.Resume(ctx)
	u.PollAll(ctx)
	for {
		select {
		case <-ctx.Done():
			return u.shutdown()
		case <-ticker.C:
			u.PollAll(ctx)
		case <-u.reloaded:
			u.mu.Lock()
			if u.pollInterval != interval {
				interval = u.pollInterval
				ticker.Reset(interval)
			}
			u.mu.Unlock()
		}
	}
}

func (u *Updater) shutdown() error {
	u.mu.Lock()
	u.stopping = true
	bound := u.stopBound
	u.mu.Unlock()
	done := make(chan struct{})
	go func() {
		u.inflight.Wait()
		close(done)
	}()
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		u.logger.Error("deploys still in flight at the stop bound; cancelling them (the next start resumes them)", "bound", bound)
		u.stopDeploys()
		<-done
	}
	u.stopDeploys()
	return nil
}

// Resume takes up the deploys that a previous run left half done (killed,
// power lost). It claims each one's guard before it returns, so that call
// it before the API serves: a trigger then finds the service busy instead
// of the unverified digest "up to date". The deploys go on in the
// background, each from the phase its record names. Only the first call
// does anything.
func (u *Updater) Resume(ctx context.Context) {
	if !u.resumed.CompareAndSwap(false, true) {
		return
	}
	u.resumePromotions()
	for _, name := range u.Services() {
		rec := u.store.Get(name).Deploy
		if rec == nil {
			continue
		}
		s, err := u.acquire(name)
		if err != nil {
			u.logger.Warn("cannot resume the interrupted deploy now", "service", name, "err", err)
			continue
		}
		u.logger.Warn("the previous run stopped during a deploy; resuming it", "service", name,
			"digest", rec.Digest, "phase", orNone(rec.Phase), "started", rec.Started)
		go func() {
			defer u.release(s)
			u.resume(u.deployCtx, s, *rec)
		}()
	}
}

// resume runs a deployment from its record. The caller holds the guard.
func (u *Updater) resume(ctx context.Context, s *service, rec state.Deploy) Result {
	if rec.Phase == "" {
		// Written before phases were recorded: finish as those versions
		// did, by verifying what runs.
		if res, done := u.resumeUnphased(ctx, s, &rec); done {
			return res
		}
	}
	return u.resumeDeployment(s, rec).run(ctx)
}

// resumeUnphased prepares a record without a phase: if the previous
// version never stopped running there is nothing to finish; otherwise the
// deploy is verified.
func (u *Updater) resumeUnphased(ctx context.Context, s *service, rec *state.Deploy) (Result, bool) {
	name := s.cfg.Name
	if cur, err := u.current(ctx, s); err == nil && !contains(cur.digests, rec.Digest) && cur.imageID == rec.RollbackImage && rec.RollbackImage != "" {
		u.logger.Info("the interrupted deploy had not switched versions; the next poll retries it", "service", name)
		u.clearDeploy(name)
		return Result{Service: name, Outcome: CheckFailed, Digest: rec.Digest, Reason: "interrupted before the new version started"}, true
	}
	if rec.RollbackImage != "" {
		if img, err := u.engine.InspectImage(ctx, rec.RollbackImage); err == nil {
			if ds := repoDigests(img, s.ref.LocalRepo()); len(ds) > 0 {
				rec.Previous = ds[0]
			}
		}
	}
	rec.Phase = string(PhaseVerifying)
	return Result{}, false
}

func (u *Updater) clearDeploy(name string) {
	if err := u.store.Update(name, func(st *state.Service) { st.Deploy = nil }); err != nil {
		u.logger.Error("clear in-flight deploy record", "service", name, "err", err)
	}
}

// PollAll checks every auto_update service once. A service that is already
// being checked or deployed is skipped; one whose deploy is still recorded
// as in flight (the engine was away) is resumed instead of checked. Deploys
// go on in the background, so a slow deploy does not hold up other services.
func (u *Updater) PollAll(ctx context.Context) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, maxParallelChecks)
	for _, name := range u.Services() {
		if s, ok := u.lookup(name); !ok || !s.cfg.AutoUpdate {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The guard is taken only once a slot is free, so a service
			// waiting for its turn is not reported busy.
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			s, err := u.acquire(name)
			if err != nil {
				<-sem
				if errors.Is(err, ErrBusy) {
					u.logger.Debug("skipping poll: check or deploy in progress", "service", name)
				}
				return
			}
			if rec := u.store.Get(name).Deploy; rec != nil {
				<-sem
				go func() {
					defer u.release(s)
					u.resume(u.deployCtx, s, *rec)
				}()
				return
			}
			p, res := u.check(ctx, s)
			<-sem
			if p == nil {
				u.release(s)
				u.report(res, s.ref.Local())
				return
			}
			go func() {
				defer u.release(s)
				u.newDeployment(s, p).run(u.deployCtx)
			}()
		}()
	}
	wg.Wait()
	// Changes a failed save kept in memory are written as soon as the
	// disk allows. A disk that keeps refusing is one error, not one per
	// poll, and its end is one line too.
	if err := u.store.Flush(); err != nil {
		if !u.flushFailing.Swap(true) {
			u.logger.Error("write state file; retrying every poll (later failures are logged at debug level)", "path", u.store.Path(), "err", err)
		} else {
			u.logger.Debug("write state file", "err", err)
		}
	} else if !u.store.Dirty() && u.flushFailing.Swap(false) {
		u.logger.Info("state file written again; nothing kept in memory only", "path", u.store.Path())
	}
	u.metrics.Polled(u.now())
}

// Trigger checks one service now and deploys if its digest changed (or
// resumes its deploy still recorded as in flight). It returns at once with
// ErrBusy if the service's project is being checked or deployed; otherwise
// the result arrives on the channel when the check (and any deploy) is done.
func (u *Updater) Trigger(name string) (<-chan Result, error) {
	s, err := u.acquire(name)
	if err != nil {
		return nil, err
	}
	// An operator asking for a deploy re-arms an auto-heal that gave up.
	if HealGaveUp(u.store, name) {
		if err := ResetHeal(u.store, name); err != nil {
			u.logger.Error("re-arm auto-heal", "service", name, "err", err)
		} else {
			u.metrics.SetGaveUp(name, false)
			u.logger.Info("auto-heal re-armed by a triggered deploy", "service", name)
		}
	}
	out := make(chan Result, 1)
	go func() {
		res := u.checkAndDeploy(u.deployCtx, s)
		// Free the guard before the result is out: a caller that triggers
		// again as soon as it has the result must not be told it is busy.
		u.release(s)
		out <- res
	}()
	return out, nil
}

// checkAndDeploy checks a service whose guard the caller holds and deploys
// if its digest changed; a deploy still recorded as in flight is resumed
// instead. The result is reported.
func (u *Updater) checkAndDeploy(ctx context.Context, s *service) Result {
	if rec := u.store.Get(s.cfg.Name).Deploy; rec != nil {
		return u.resume(ctx, s, *rec)
	}
	p, res := u.check(ctx, s)
	if p == nil {
		u.report(res, s.ref.Local())
		return res
	}
	return u.newDeployment(s, p).run(ctx)
}

// report announces how a check or deploy ended: the log line, the metrics
// and the alert of every verdict are written here and nowhere else. A
// verified deploy is reported in the Deployed case.
func (u *Updater) report(r Result, image string) {
	u.observe(r) // for GET /status
	log := u.logger.With("service", r.Service)
	name := r.Service
	alert := func(event notify.Event, level notify.Level, message, reason string) {
		u.notify.Send(notify.Alert{Service: name, Event: event, Level: level, Digest: r.Digest, Image: image, Message: message, Reason: reason})
	}
	s, _ := u.lookup(name)
	verdict := func() {
		u.metrics.DeployDuration(name, time.Duration(r.Seconds*float64(time.Second)))
		if s != nil {
			s.guard.engineAlerted, s.guard.noVerdictAlerted = false, false
		}
	}
	switch r.Outcome {
	case UpToDate, SkipBlocked:
		log.Debug("checked", "outcome", r.Outcome, "digest", r.Digest)
	case CheckFailed:
		// check and deploy log their own failures when they change.
	case Deployed:
		verdict()
		u.metrics.Update(name)
		log.Info("deploy finished", "outcome", r.Outcome, "digest", r.Digest, "previous", r.Previous, "seconds", r.Seconds,
			"verdict", "live and healthy")
		alert(notify.UpdateSucceeded, notify.Info, fmt.Sprintf("%s: %s is live and healthy (took %.1fs)", name, short(r.Digest), r.Seconds), "")
		if s != nil {
			u.promoteLater(s, r.Digest) // a canary promotes it after its soak (promote.go)
		}
	case RolledBack:
		verdict()
		u.metrics.Rollback(name)
		log.Warn("deploy finished", "outcome", r.Outcome, "digest", r.Digest, "previous", r.Previous, "seconds", r.Seconds,
			"verdict", "rolled back to the previous version; the digest stays blocked", "reason", r.Reason)
		alert(notify.Rollback, notify.Warning, fmt.Sprintf("%s: %s failed and was rolled back to %s", name, short(r.Digest), orNone(short(r.Previous))), r.Reason)
	case RollbackFailed:
		verdict()
		u.metrics.Rollback(name)
		u.metrics.Failure(name)
		log.Error("deploy finished", "outcome", r.Outcome, "digest", r.Digest, "previous", r.Previous, "seconds", r.Seconds,
			"verdict", "rollback failed; the service needs an operator", "reason", r.Reason)
		alert(notify.RollbackFailed, notify.Critical, fmt.Sprintf("%s: rollback failed; the service needs an operator", name),
			fmt.Sprintf("deploy of %s failed: %s", short(r.Digest), r.Reason))
	case EngineAway:
		log.Error("docker engine unavailable; deploy paused without a verdict, nothing blocked; it resumes once the engine answers",
			"socket", u.socket(), "digest", r.Digest, "reason", r.Reason)
		if s != nil && !s.guard.engineAlerted {
			s.guard.engineAlerted = true
			alert(EngineUnavailable, notify.Critical,
				fmt.Sprintf("%s: the docker engine at %s does not answer; the deploy of %s waits for it (nothing is blocked)", name, u.socket(), short(r.Digest)),
				r.Reason)
		}
	case NoVerdict:
		log.Error("deploy could not be judged; nothing blocked; the next poll resumes it", "digest", r.Digest, "reason", r.Reason)
		if s != nil && !s.guard.noVerdictAlerted {
			s.guard.noVerdictAlerted = true
			alert(notify.UpdateFailed, notify.Warning,
				fmt.Sprintf("%s: the deploy of %s could not be judged; the next poll resumes it", name, short(r.Digest)), r.Reason)
		}
	}
}

// Unblock clears a blocked digest so the next check may deploy it again.
// It reports whether anything was blocked.
func (u *Updater) Unblock(name string) (state.Block, bool, error) {
	if _, ok := u.lookup(name); !ok {
		return state.Block{}, false, ErrUnknownService
	}
	b := u.store.Get(name).Blocked
	if b == nil {
		return state.Block{}, false, nil
	}
	u.unblock(name)
	u.logger.Info("blocked digest cleared by operator", "service", name, "digest", b.Digest)
	u.notify.Send(notify.Alert{Service: name, Event: notify.Unblocked, Level: notify.Info, Digest: b.Digest,
		Message: fmt.Sprintf("%s: digest %s unblocked by an operator; the next check may deploy it", name, short(b.Digest))})
	return *b, true, nil
}

// unblock clears a block. The store keeps the change in memory even when
// the file cannot be written (and writes it later), so it always takes effect.
func (u *Updater) unblock(name string) {
	if err := u.store.Update(name, func(s *state.Service) { s.Blocked = nil }); err != nil {
		u.logger.Error("persist unblock", "service", name, "err", err)
	}
	u.metrics.SetBlocked(name, false)
}

// Blocked lists blocked digests by service.
func (u *Updater) Blocked() map[string]state.Block {
	out := map[string]state.Block{}
	for _, name := range u.Services() {
		if b := u.store.Get(name).Blocked; b != nil {
			out[name] = *b
		}
	}
	return out
}
