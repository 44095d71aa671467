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
	"sort"
	"strings"
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
	Pull(ctx context.Context, file, project string) error
	Up(ctx context.Context, file, project string, opts compose.UpOptions) error
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

// service is one configured service. It is replaced whole on reload; the
// guard is carried over so a reload cannot start a second deploy.
type service struct {
	cfg   config.Service
	ref   registry.Ref
	guard *guard
}

// guard lets one check or deploy of a service run at a time.
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
}

// Updater polls the registry and deploys new digests, one service at a time
// per service, with rollback and blocking on failure.
type Updater struct {
	logger   *slog.Logger
	engine   engine
	registry digester
	compose  composer
	notify   notifier
	store    *state.Store
	metrics  *Metrics
	now      func() time.Time

	// deployCtx outlives a stop signal so a deploy in flight can finish or
	// roll back; stopDeploys cancels it when the stop bound is reached.
	deployCtx   context.Context
	stopDeploys context.CancelFunc
	inflight    sync.WaitGroup

	mu           sync.Mutex
	services     map[string]*service
	order        []string
	pollInterval time.Duration
	stopBound    time.Duration
	stopping     bool
	reloaded     chan struct{}

	sched scheduled // checks asked for by Schedule (schedule.go)
}

// NewUpdater builds an updater for cfg.
func NewUpdater(cfg *config.Config, deps UpdaterDeps) (*Updater, error) {
	u := &Updater{
		logger:   deps.Logger,
		engine:   deps.Engine,
		registry: deps.Registry,
		compose:  deps.Compose,
		notify:   deps.Notify,
		store:    deps.Store,
		metrics:  deps.Metrics,
		now:      deps.Now,
		services: map[string]*service{},
		reloaded: make(chan struct{}, 1),
	}
	if u.now == nil {
		u.now = time.Now
	}
	u.deployCtx, u.stopDeploys = context.WithCancel(context.Background())
	if err := u.SetConfig(cfg); err != nil {
		return nil, err
	}
	return u, nil
}

// SetConfig applies a (re)loaded config. Services that stay keep their guard,
// so a deploy in flight is not doubled; their persisted state is untouched.
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
	for i, sc := range cfg.Services {
		s := &service{cfg: sc, guard: &guard{}}
		if old, ok := u.services[sc.Name]; ok {
			s.guard = old.guard
		}
		if sc.Image != "" {
			s.ref, err = registry.ParseRef(sc.Image, host)
			if err != nil {
				return fmt.Errorf("services[%d].image: %w", i, err)
			}
		}
		next[sc.Name] = s
		order = append(order, sc.Name)
	}
	u.services = next
	u.order = order
	u.pollInterval = cfg.Registry.PollInterval.Duration()
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

// Busy reports whether a check or deploy of the service is running.
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

// acquire takes the service's guard. The caller must call release.
func (u *Updater) acquire(name string) (*service, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopping {
		return nil, ErrStopping
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
	u.released(s.cfg.Name)
	u.inflight.Done()
}

// Run polls every poll_interval until ctx is done. Then it starts no new
// deploys and waits for the ones in flight, up to the stop bound.
func (u *Updater) Run(ctx context.Context) error {
	u.mu.Lock()
	interval := u.pollInterval
	u.mu.Unlock()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	u.resume(ctx)
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

// resume finishes deploys that a previous run left half done (killed, power
// lost): it verifies what runs now, and rolls back if that fails.
func (u *Updater) resume(ctx context.Context) {
	for _, name := range u.Services() {
		d := u.store.Get(name).Deploy
		if d == nil {
			continue
		}
		s, err := u.acquire(name)
		if err != nil {
			continue
		}
		log := u.logger.With("service", name)
		log.Warn("the previous run stopped during a deploy; verifying what runs now", "digest", d.Digest, "started", d.Started)
		if cur, err := u.current(ctx, s); err == nil && !contains(cur.digests, d.Digest) && cur.imageID == d.RollbackImage && d.RollbackImage != "" {
			// The previous version never stopped running: nothing to finish.
			log.Info("the interrupted deploy had not switched versions; the next poll retries it")
			u.clearDeploy(name)
			u.release(s)
			continue
		}
		// The rest runs like any deploy in flight: in the background,
		// holding the guard, and bounded by a stop.
		go func() {
			defer u.release(s)
			u.resumeOne(u.deployCtx, s, *d)
		}()
	}
}

func (u *Updater) clearDeploy(name string) {
	if err := u.store.Update(name, func(st *state.Service) { st.Deploy = nil }); err != nil {
		u.logger.Error("clear in-flight deploy record", "service", name, "err", err)
	}
}

func (u *Updater) resumeOne(ctx context.Context, s *service, d state.Deploy) {
	s.guard.deploying.Store(true)
	defer s.guard.deploying.Store(false)
	name := s.cfg.Name
	log := u.logger.With("service", name)
	p := &plan{remote: d.Digest, current: current{imageID: d.RollbackImage}, started: u.now()}
	res := Result{Service: name, Digest: d.Digest}
	// Name the version a rollback goes back to, as a deploy does.
	if d.RollbackImage != "" {
		if img, err := u.engine.InspectImage(ctx, d.RollbackImage); err == nil {
			if ds := repoDigests(img, s.ref.LocalRepo()); len(ds) > 0 {
				p.current.digests, res.Previous = ds, ds[0]
			}
		}
	}
	finish := func(o Outcome, reason string) Result {
		res.Outcome, res.Reason = o, reason
		res.Seconds = u.now().Sub(p.started).Seconds()
		return res
	}
	ok, why := u.verify(ctx, s)
	switch {
	case ok:
		log.Info("interrupted deploy verified healthy", "digest", d.Digest)
		u.metrics.Update(name)
		res = finish(Deployed, "")
	case ctx.Err() != nil:
		return // stopped again: the record stays for the next start
	default:
		res = u.rollback(ctx, s, p, res, "interrupted deploy: "+why, finish)
		if ctx.Err() != nil {
			return
		}
	}
	u.clearDeploy(name)
	u.logResult(res)
}

// PollAll checks every auto_update service once. A service that is already
// being checked or deployed is skipped. Deploys that a check starts go on
// in the background, so a slow deploy does not hold up other services.
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
			p, res := u.check(ctx, s)
			<-sem
			if p == nil {
				u.release(s)
				u.logResult(res)
				return
			}
			go func() {
				defer u.release(s)
				u.logResult(u.deploy(u.deployCtx, s, p))
			}()
		}()
	}
	wg.Wait()
	// Changes a failed save kept in memory are written as soon as the
	// disk allows.
	if err := u.store.Flush(); err != nil {
		u.logger.Error("write state file", "err", err)
	}
	u.metrics.Polled(u.now())
}

// Trigger checks one service now and deploys if its digest changed. It
// returns at once with ErrBusy if the service is being checked or deployed;
// otherwise the result arrives on the channel when the check (and any
// deploy) is done.
func (u *Updater) Trigger(name string) (<-chan Result, error) {
	s, err := u.acquire(name)
	if err != nil {
		return nil, err
	}
	// An operator asking for a deploy re-arms an auto-heal that gave up.
	if u.store.Get(name).Heal.GaveUp {
		if err := ResetHeal(u.store, name); err != nil {
			u.logger.Error("re-arm auto-heal", "service", name, "err", err)
		} else {
			u.metrics.SetGaveUp(name, false)
			u.logger.Info("auto-heal re-armed by a triggered deploy", "service", name)
		}
	}
	out := make(chan Result, 1)
	go func() {
		ctx := u.deployCtx
		p, res := u.check(ctx, s)
		if p != nil {
			res = u.deploy(ctx, s, p)
		}
		u.logResult(res)
		// Free the guard before the result is out: a caller that triggers
		// again as soon as it has the result must not be told it is busy.
		u.release(s)
		out <- res
	}()
	return out, nil
}

func (u *Updater) logResult(r Result) {
	u.observe(r) // for GET /status
	switch r.Outcome {
	case UpToDate, SkipBlocked:
		u.logger.Debug("checked", "service", r.Service, "outcome", r.Outcome, "digest", r.Digest)
	case CheckFailed:
		// check and deploy log their own failures when they change.
	default:
		u.logger.Info("deploy finished", "service", r.Service, "outcome", r.Outcome, "digest", r.Digest,
			"previous", r.Previous, "seconds", r.Seconds, "reason", r.Reason)
	}
}

// plan is a deploy that a check decided on.
type plan struct {
	remote  string
	current current
	started time.Time
}

// current is what runs now.
type current struct {
	digests []string // registry digests of the running image(s)
	imageID string   // image of the running container, kept as :rollback
	// misnamed is set when a container names the watched repository and
	// tag through another host (127.0.0.1:5000 for localhost:5000): the
	// engine sees two different images, so dockward would deploy forever.
	misnamed string
}

// sameImageOtherHost reports whether ref names ref's repository and tag on
// a different registry host.
func sameImageOtherHost(image string, ref registry.Ref) bool {
	host, rest, ok := strings.Cut(image, "/")
	return ok && host != ref.Host && rest == ref.Repository+":"+ref.Tag
}

// check compares the registry's digest with what runs, and returns a plan
// when a deploy is due.
func (u *Updater) check(ctx context.Context, s *service) (*plan, Result) {
	name := s.cfg.Name
	log := u.logger.With("service", name)
	started := u.now()
	res := Result{Service: name}

	remote, err := u.registry.Digest(ctx, s.ref.Repository, s.ref.Tag)
	if err != nil && ctx.Err() != nil {
		// Stopped: not a registry failure.
		res.Outcome, res.Reason = CheckFailed, err.Error()
		return nil, res
	}
	if err != nil {
		kind := registry.Kind(err)
		u.metrics.RegistryError(name, kind)
		if s.guard.lastRegistryError != kind {
			log.Warn("registry poll failed", "image", s.ref.Local(), "kind", kind, "err", err)
			if kind == registry.KindUnauthorized {
				u.notify.Send(notify.Alert{Service: name, Event: notify.UpdateFailed, Level: notify.Critical, Image: s.ref.Local(),
					Message: fmt.Sprintf("%s: the registry refuses Dockward's credentials for %s; nothing is deployed until they are fixed", name, s.ref.Local()),
					Reason:  err.Error()})
			}
			s.guard.lastRegistryError = kind
		}
		res.Outcome, res.Reason = CheckFailed, err.Error()
		return nil, res
	}
	if s.guard.lastRegistryError != "" {
		log.Info("registry poll works again", "image", s.ref.Local(), "after", s.guard.lastRegistryError)
		if s.guard.lastRegistryError == registry.KindUnauthorized {
			u.notify.Send(notify.Alert{Service: name, Event: notify.UpdateFailed, Level: notify.Info, Image: s.ref.Local(), Digest: remote,
				Message: fmt.Sprintf("%s: the registry accepts Dockward's credentials again for %s", name, s.ref.Local())})
		}
		s.guard.lastRegistryError = ""
	}
	res.Digest = remote

	if b := u.store.Get(name).Blocked; b != nil {
		if b.Digest == remote {
			res.Outcome, res.Reason = SkipBlocked, b.Reason
			return nil, res
		}
		u.unblock(name)
		log.Info("new digest pushed; block cleared", "blocked", b.Digest, "digest", remote)
		u.notify.Send(notify.Alert{Service: name, Event: notify.Unblocked, Level: notify.Info, Digest: remote, Image: s.ref.Local(),
			Message: fmt.Sprintf("%s: a new digest was pushed, so the blocked digest %s is cleared", name, short(b.Digest))})
	}

	cur, err := u.current(ctx, s)
	if err != nil {
		log.Error("read running version", "err", err)
		res.Outcome, res.Reason = CheckFailed, err.Error()
		return nil, res
	}
	if cur.imageID == "" && cur.misnamed != "" {
		err := fmt.Errorf("compose project %s runs %s, not %s: name the image in the compose file exactly as %s, or Dockward cannot tell which version runs",
			s.cfg.ComposeProject, cur.misnamed, s.ref.Local(), s.ref.Local())
		if s.guard.lastCheckError != err.Error() {
			log.Error("cannot deploy", "err", err)
			s.guard.lastCheckError = err.Error()
		}
		res.Outcome, res.Reason = CheckFailed, err.Error()
		return nil, res
	}
	s.guard.lastCheckError = ""
	if len(cur.digests) > 0 {
		res.Previous = cur.digests[0]
	}
	for _, d := range cur.digests {
		if d == remote {
			res.Outcome = UpToDate
			res.Seconds = u.now().Sub(started).Seconds()
			return nil, res
		}
	}
	return &plan{remote: remote, current: cur, started: started}, res
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

// current finds the containers of the project that run the watched image
// and the registry digests of the images they were created from. It asks
// about the image each container runs, not what the tag points at now.
func (u *Updater) current(ctx context.Context, s *service) (current, error) {
	containers, err := u.projectContainers(ctx, s.cfg.ComposeProject)
	if err != nil {
		return current{}, err
	}
	var cur current
	seen := map[string]bool{}
	containers = relevant(containers, s.ref.Local())
	allHealthy := len(containers) > 0
	for _, c := range containers {
		if !c.State.Running || (c.State.Health != nil && c.State.Health.Status != "healthy") {
			allHealthy = false
		}
		if normalizeRef(c.Image) != s.ref.Local() {
			if sameImageOtherHost(normalizeRef(c.Image), s.ref) {
				cur.misnamed = c.Image
			}
			continue
		}
		if seen[c.ImageID] {
			continue
		}
		seen[c.ImageID] = true
		if cur.imageID == "" || c.State.Running {
			cur.imageID = c.ImageID
		}
		img, err := u.engine.InspectImage(ctx, c.ImageID)
		if err != nil {
			return current{}, fmt.Errorf("inspect image of container %s: %w", c.Name, err)
		}
		cur.digests = append(cur.digests, repoDigests(img, s.ref.LocalRepo())...)
	}
	u.metrics.SetHealthy(s.cfg.Name, allHealthy)
	return cur, nil
}

// projectContainers lists and inspects every container of a compose project.
func (u *Updater) projectContainers(ctx context.Context, project string) ([]docker.ContainerDetails, error) {
	list, err := u.engine.ListContainers(ctx, project, true)
	if err != nil {
		return nil, fmt.Errorf("list containers of project %s: %w", project, err)
	}
	out := make([]docker.ContainerDetails, 0, len(list))
	for _, c := range list {
		d, err := u.engine.InspectContainer(ctx, c.ID)
		if errors.Is(err, docker.ErrNotFound) {
			continue // removed between list and inspect
		}
		if err != nil {
			return nil, fmt.Errorf("inspect container %s: %w", c.Name, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// repoDigests returns the digests an image has in one repository.
func repoDigests(img docker.Image, repo string) []string {
	var out []string
	for _, rd := range img.RepoDigests {
		if r, d, ok := strings.Cut(rd, "@"); ok && r == repo {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// normalizeRef adds the implicit :latest to a reference without tag or digest.
func normalizeRef(ref string) string {
	if strings.Contains(ref, "@") {
		return ref
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref
	}
	return ref + ":latest"
}

// deploy tags the running image as :rollback, pulls and recreates the
// project, and proves the new version healthy within the grace period. On
// failure it blocks the digest and rolls back.
func (u *Updater) deploy(ctx context.Context, s *service, p *plan) Result {
	s.guard.deploying.Store(true)
	defer s.guard.deploying.Store(false)
	name, cfg := s.cfg.Name, s.cfg
	log := u.logger.With("service", name)
	res := Result{Service: name, Digest: p.remote}
	if len(p.current.digests) > 0 {
		res.Previous = p.current.digests[0]
	}
	finish := func(o Outcome, reason string) Result {
		res.Outcome, res.Reason = o, reason
		res.Seconds = u.now().Sub(p.started).Seconds()
		if o != CheckFailed {
			u.metrics.DeployDuration(name, u.now().Sub(p.started))
		}
		return res
	}

	log.Info("new digest; deploying", "image", s.ref.Local(), "digest", p.remote, "previous", res.Previous)
	// notStarted reports a failure before anything changed, once per
	// digest and cause, so a failure that persists is not an alert every poll.
	notStarted := func(what string, err error) Result {
		reason := what + ": " + err.Error()
		if key := p.remote + " " + what; s.guard.lastPullError != key {
			s.guard.lastPullError = key
			log.Error("deploy not started; the running version stays and the next poll retries", "step", what, "err", err)
			u.notify.Send(notify.Alert{Service: name, Event: notify.UpdateFailed, Level: notify.Warning, Digest: p.remote, Image: s.ref.Local(),
				Message: fmt.Sprintf("%s: deploying %s failed at %s; the running version stays and the next poll retries", name, short(p.remote), what),
				Reason:  err.Error()})
		} else {
			log.Debug("deploy not started again", "step", what, "err", err)
		}
		return finish(CheckFailed, reason)
	}

	rollbackRef := s.ref.LocalRepo() + ":" + rollbackTag
	if p.current.imageID != "" {
		if err := u.engine.TagImage(ctx, p.current.imageID, s.ref.LocalRepo(), rollbackTag); err != nil {
			return notStarted("tag the running image as "+rollbackRef, err)
		}
	} else {
		log.Warn("no running container of this image: nothing to roll back to if the new version fails")
	}
	if err := u.store.Update(name, func(st *state.Service) {
		st.Deploy = &state.Deploy{Digest: p.remote, RollbackImage: p.current.imageID, Started: p.started}
	}); err != nil {
		// The record stays in memory: take it back, so that a later save
		// does not persist a deploy that never began.
		u.clearDeploy(name)
		return notStarted("record the deploy in the state file", err)
	}
	// The in-flight record is cleared once the deploy has a verdict. If the
	// process is stopped before that, it stays, and the next start resumes.
	defer func() {
		if ctx.Err() != nil {
			return
		}
		if err := u.store.Update(name, func(st *state.Service) { st.Deploy = nil }); err != nil {
			log.Error("clear in-flight deploy record", "err", err)
		}
	}()

	if err := u.compose.Pull(ctx, cfg.ComposeFile, cfg.ComposeProject); err != nil {
		if ctx.Err() != nil {
			return finish(CheckFailed, "stopped during pull")
		}
		// Nothing was changed yet: the running version stays. A pull failure
		// is usually transient, so the digest is not blocked.
		return notStarted("pull", err)
	}
	s.guard.lastPullError = ""
	u.notify.Send(notify.Alert{Service: name, Event: notify.UpdateStarted, Level: notify.Info, Digest: p.remote, Image: s.ref.Local(),
		Message: fmt.Sprintf("%s: deploying %s (was %s)", name, short(p.remote), orNone(short(res.Previous)))})
	if img, err := u.engine.InspectImage(ctx, s.ref.Local()); err == nil {
		// CI may have pushed again since the check: block what was pulled.
		if ds := repoDigests(img, s.ref.LocalRepo()); len(ds) > 0 && !contains(ds, p.remote) {
			log.Info("the tag moved during the deploy", "checked", p.remote, "pulled", ds[0])
			res.Digest = ds[0]
		}
	}

	reason := ""
	if err := u.compose.Up(ctx, cfg.ComposeFile, cfg.ComposeProject, compose.UpOptions{}); err != nil {
		reason = "compose up: " + err.Error()
	} else if ok, why := u.verify(ctx, s); !ok {
		reason = why
	} else if cur, err := u.current(ctx, s); err == nil && !contains(cur.digests, res.Digest) {
		reason = fmt.Sprintf("after compose up no container of project %s runs %s@%s: does the compose file name %s?",
			cfg.ComposeProject, s.ref.LocalRepo(), short(res.Digest), s.ref.Local())
	}
	if reason == "" {
		u.metrics.Update(name)
		u.metrics.SetHealthy(name, true)
		log.Info("deployed and healthy", "digest", res.Digest, "seconds", u.now().Sub(p.started).Seconds())
		u.notify.Send(notify.Alert{Service: name, Event: notify.UpdateSucceeded, Level: notify.Info, Digest: res.Digest, Image: s.ref.Local(),
			Message: fmt.Sprintf("%s: %s is live and healthy (took %.1fs)", name, short(res.Digest), u.now().Sub(p.started).Seconds())})
		return finish(Deployed, "")
	}
	if ctx.Err() != nil {
		return finish(CheckFailed, "stopped during deploy: "+reason)
	}
	return u.rollback(ctx, s, p, res, reason, finish)
}

// rollback blocks the failed digest, puts the previous image back under the
// watched tag and recreates the project without pulling.
func (u *Updater) rollback(ctx context.Context, s *service, p *plan, res Result, reason string, finish func(Outcome, string) Result) Result {
	name, cfg := s.cfg.Name, s.cfg
	log := u.logger.With("service", name)
	u.metrics.Rollback(name)
	u.metrics.SetHealthy(name, false)
	log.Error("new version failed; rolling back", "digest", res.Digest, "reason", reason)

	block := state.Block{Digest: res.Digest, Since: u.now(), Reason: reason}
	if err := u.store.Update(name, func(st *state.Service) { st.Blocked = &block }); err != nil {
		// Still roll back: the store keeps the block in memory and writes it
		// on the next successful save (every poll tries).
		log.Error("persist blocked digest (kept in memory; written on the next successful save)", "err", err)
	}
	u.metrics.SetBlocked(name, true)
	u.notify.Send(notify.Alert{Service: name, Event: notify.Blocked, Level: notify.Warning, Digest: res.Digest, Image: s.ref.Local(),
		Message: fmt.Sprintf("%s: digest %s failed verification and is blocked until a new digest is pushed or it is unblocked", name, short(res.Digest)),
		Reason:  reason})

	fail := func(why string) Result {
		if ctx.Err() != nil {
			// Stopped, not failed: the in-flight record stays and the next
			// start verifies what runs.
			log.Warn("stopped during rollback; the next start resumes it", "reason", why)
			return finish(CheckFailed, reason+"; stopped during rollback: "+why)
		}
		u.metrics.Failure(name)
		log.Error("rollback failed; service needs an operator", "reason", why)
		u.notify.Send(notify.Alert{Service: name, Event: notify.RollbackFailed, Level: notify.Critical, Digest: res.Digest, Image: s.ref.Local(),
			Message: fmt.Sprintf("%s: rollback failed; the service needs an operator", name),
			Reason:  fmt.Sprintf("deploy of %s failed: %s\nrollback failed: %s", short(res.Digest), reason, why)})
		return finish(RollbackFailed, reason+"; rollback failed: "+why)
	}
	if p.current.imageID == "" {
		return fail("no previous image to roll back to")
	}
	if err := u.engine.TagImage(ctx, p.current.imageID, s.ref.LocalRepo(), s.ref.Tag); err != nil {
		return fail(fmt.Sprintf("retag previous image as %s: %v", s.ref.Local(), err))
	}
	if err := u.compose.Up(ctx, cfg.ComposeFile, cfg.ComposeProject, compose.UpOptions{NoPull: true}); err != nil {
		return fail("compose up: " + err.Error())
	}
	if ok, why := u.verify(ctx, s); !ok {
		return fail("previous version is not healthy either: " + why)
	}
	u.metrics.SetHealthy(name, true)
	log.Warn("rolled back to the previous version", "blocked", res.Digest, "running", res.Previous)
	u.notify.Send(notify.Alert{Service: name, Event: notify.Rollback, Level: notify.Warning, Digest: res.Digest, Image: s.ref.Local(),
		Message: fmt.Sprintf("%s: %s failed and was rolled back to %s", name, short(res.Digest), orNone(short(res.Previous))),
		Reason:  reason})
	return finish(RolledBack, reason)
}

// verify watches the project's containers until they are proven healthy,
// proven broken, or the grace period ends.
func (u *Updater) verify(ctx context.Context, s *service) (bool, string) {
	grace := s.cfg.HealthGrace.Duration()
	every := s.cfg.HealthPollInterval.Duration()
	deadline := u.now().Add(grace)
	baseline := map[string]int{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return false, "stopped: " + ctx.Err().Error()
		case <-timer.C:
		}
		atDeadline := !u.now().Before(deadline)
		containers, err := u.projectContainers(ctx, s.cfg.ComposeProject)
		if err != nil {
			lastErr = err.Error()
			if atDeadline {
				return false, "could not inspect containers: " + lastErr
			}
		} else {
			v, reason := evaluate(relevant(containers, s.ref.Local()), baseline, atDeadline)
			switch v {
			case healthy:
				return true, reason
			case failed:
				return false, reason
			}
		}
		wait := min(every, deadline.Sub(u.now()))
		if wait < 0 {
			wait = 0
		}
		timer.Reset(wait)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// short shortens a digest for messages: sha256:0123456789ab.
func short(d string) string {
	if algo, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return algo + ":" + hex[:12]
	}
	return d
}

func orNone(s string) string {
	if s == "" {
		return "nothing"
	}
	return s
}
