package watcher

import (
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/state"
)

// Status is what GET /status answers and what the page at / shows: the
// daemon and, in config order, every service. Times are UTC; a time or an
// object that is not known (yet) is null.
type Status struct {
	Daemon   DaemonStatus    `json:"daemon"`
	Services []ServiceStatus `json:"services"`
}

// DaemonStatus describes the running dockward.
type DaemonStatus struct {
	Version       string    `json:"version"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// Engine is the Docker engine's version and EngineAPI the API version
	// spoken to it; both empty until the engine has answered once.
	Engine              string     `json:"engine"`
	EngineAPI           string     `json:"engine_api"`
	Compose             string     `json:"compose"`
	PollIntervalSeconds float64    `json:"poll_interval_seconds"`
	LastPoll            *time.Time `json:"last_poll"`
	Now                 time.Time  `json:"now"`
	// DeploysPaused, when set, says why deploys are paused (the state
	// file cannot be read; see GET /health).
	DeploysPaused string `json:"deploys_paused,omitempty"`
}

// ServiceStatus is everything known about one service.
type ServiceStatus struct {
	Name       string `json:"name"`
	Image      string `json:"image"` // the watched tag, as the compose file names it
	Project    string `json:"compose_project"`
	AutoUpdate bool   `json:"auto_update"`
	AutoHeal   bool   `json:"auto_heal"`
	// State sums the rest up in one word: ok, deploying, blocked,
	// unhealthy, gave_up, rollback_failed, error (the last check failed)
	// or unknown (nothing checked yet).
	State     string `json:"state"`
	Deploying bool   `json:"deploying"`
	// Healthy is null until the service's containers were looked at.
	Healthy    *bool            `json:"healthy"`
	Running    *DigestSeen      `json:"running"`  // the digest the containers run, as last seen
	Registry   *DigestSeen      `json:"registry"` // the tag's digest in the registry, as last read
	LastCheck  *CheckStatus     `json:"last_check"`
	LastDeploy *DeployStatus    `json:"last_deploy"`
	Blocked    *BlockStatus     `json:"blocked"`
	Heal       HealStatus       `json:"heal"`
	Promotion  *PromotionStatus `json:"promotion"`
	// NextPoll is when the next poll checks the service (null without
	// auto_update, or before the first poll).
	NextPoll *time.Time `json:"next_poll"`
}

// DigestSeen is a digest and when it was seen.
type DigestSeen struct {
	Digest string    `json:"digest"`
	At     time.Time `json:"at"`
}

// CheckStatus is how the last check of the service ended.
type CheckStatus struct {
	At      time.Time `json:"at"`
	Outcome Outcome   `json:"outcome"`
	Reason  string    `json:"reason,omitempty"`
}

// DeployStatus is the verdict of the last deploy.
type DeployStatus struct {
	Digest   string    `json:"digest"`
	Previous string    `json:"previous,omitempty"`
	Outcome  string    `json:"outcome"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Reason   string    `json:"reason,omitempty"`
}

// BlockStatus is a blocked digest.
type BlockStatus struct {
	Digest string    `json:"digest"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"`
}

// HealStatus is the auto-heal state of the service: the most restarts of
// one of its containers, the latest restart and cooldown, whether auto-heal
// gave up on any of them, and each container's own state.
type HealStatus struct {
	ContainerHeal
	Containers map[string]ContainerHeal `json:"containers"` // by compose service and number, "web-1"
}

// ContainerHeal is the auto-heal state of one container.
type ContainerHeal struct {
	Restarts      int        `json:"restarts"` // restarts since it was last healthy
	LastRestart   *time.Time `json:"last_restart"`
	CooldownUntil *time.Time `json:"cooldown_until"` // null when no cooldown runs
	GaveUp        bool       `json:"gave_up"`
}

// PromotionStatus is a promotion of a verified digest to another tag that
// waits for its soak time (promote.go).
type PromotionStatus struct {
	Tag    string    `json:"tag"`
	Digest string    `json:"digest"`
	Due    time.Time `json:"due"`
}

// NeedsAttention reports whether an operator should look at the service:
// a blocked digest, containers that are not healthy, or an auto-heal that
// gave up. `dockward status` exits 1 when one does.
func (s ServiceStatus) NeedsAttention() bool {
	return s.Blocked != nil || (s.Healthy != nil && !*s.Healthy) || s.Heal.GaveUp
}

// summarize is the one word for ServiceStatus.State.
func summarize(s ServiceStatus) string {
	switch {
	case s.Deploying:
		return "deploying"
	case s.Heal.GaveUp:
		return "gave_up"
	case s.Blocked != nil && s.LastDeploy != nil && s.LastDeploy.Outcome == string(RollbackFailed) && s.LastDeploy.Digest == s.Blocked.Digest:
		return "rollback_failed"
	case s.Healthy != nil && !*s.Healthy:
		return "unhealthy"
	case s.Blocked != nil:
		return "blocked"
	case s.LastCheck != nil && s.LastCheck.Outcome == CheckFailed:
		return "error"
	case s.Healthy != nil:
		return "ok"
	}
	return "unknown"
}

// The sources the status is read from, declared here where they are used.
type (
	// serviceSource is the running configuration; *Updater.
	serviceSource interface {
		ServiceConfigs() []config.Service
		ImageRefs() map[string]string
		Deploying(name string) bool
		PollInterval() time.Duration
		DeploysPaused() (reason string, paused bool)
	}
	// stateSource is what is persisted; *state.Store.
	stateSource interface {
		Get(name string) state.Service
	}
	// observationSource is what was seen since the start; *Metrics.
	observationSource interface {
		Observed(name string) Observation
		LastPoll() time.Time
	}
	// engineVersioner knows the engine's version without asking it; *docker.Client.
	engineVersioner interface {
		EngineVersion() (engine, api string)
	}
)

// buildStatus reads the status from its sources. It does no I/O beyond
// reading memory, so the page can be refreshed freely.
func (a *API) buildStatus(now time.Time) Status {
	interval := a.services.PollInterval()
	st := Status{
		Daemon: DaemonStatus{
			Version:             a.version,
			Started:             a.started.UTC(),
			UptimeSeconds:       now.Sub(a.started).Seconds(),
			Compose:             a.compose,
			PollIntervalSeconds: interval.Seconds(),
			LastPoll:            utcOrNil(a.seen.LastPoll()),
			Now:                 now.UTC(),
		},
		Services: []ServiceStatus{},
	}
	if a.engine != nil {
		st.Daemon.Engine, st.Daemon.EngineAPI = a.engine.EngineVersion()
	}
	st.Daemon.DeploysPaused, _ = a.services.DeploysPaused()
	var nextPoll *time.Time
	if last := a.seen.LastPoll(); !last.IsZero() {
		// Polls tick every interval; a poll ends shortly after its tick.
		nextPoll = utcOrNil(last.Add(interval))
	}
	refs := a.services.ImageRefs()
	for _, c := range a.services.ServiceConfigs() {
		stored := a.state.Get(c.Name)
		seen := a.seen.Observed(c.Name)
		s := ServiceStatus{
			Name:       c.Name,
			Project:    c.ComposeProject,
			AutoUpdate: c.AutoUpdate,
			AutoHeal:   c.AutoHeal,
			Deploying:  a.services.Deploying(c.Name),
			Healthy:    seen.Healthy,
			Heal:       healOf(stored, c.HealCooldown.Duration(), now),
		}
		s.Image = refs[c.Name]
		if c.AutoUpdate {
			s.NextPoll = nextPoll
		}
		if b := stored.Blocked; b != nil {
			s.Blocked = &BlockStatus{Digest: b.Digest, Since: b.Since.UTC(), Reason: b.Reason}
		}
		if p := stored.Promotion; p != nil {
			s.Promotion = &PromotionStatus{Tag: p.Tag, Digest: p.Digest, Due: p.NotBefore.UTC()}
		}
		if d := stored.LastDeploy; d != nil {
			s.LastDeploy = &DeployStatus{Digest: d.Digest, Previous: d.Previous, Outcome: d.Outcome,
				Started: d.Started.UTC(), Seconds: d.Seconds, Reason: d.Reason}
		}
		if seen.RegistryDigest != "" {
			s.Registry = &DigestSeen{Digest: seen.RegistryDigest, At: seen.RegistryRead.UTC()}
		}
		if !seen.LastCheck.IsZero() {
			s.LastCheck = &CheckStatus{At: seen.LastCheck.UTC(), Outcome: seen.LastOutcome, Reason: seen.LastReason}
		}
		s.Running = running(seen, stored.LastDeploy)
		s.State = summarize(s)
		st.Services = append(st.Services, s)
	}
	return st
}

// healOf reads a service's heal state, which is kept per container: the
// sum (healSummary, which also reads the service-wide state of older
// files) and each container's own.
func healOf(st state.Service, cooldown time.Duration, now time.Time) HealStatus {
	one := func(h state.Heal) ContainerHeal {
		c := ContainerHeal{Restarts: h.Consecutive, LastRestart: utcOrNil(h.LastRestart), GaveUp: h.GaveUp}
		if until := h.LastRestart.Add(cooldown); !h.LastRestart.IsZero() && until.After(now) {
			c.CooldownUntil = utcOrNil(until)
		}
		return c
	}
	out := HealStatus{ContainerHeal: one(healSummary(st)), Containers: map[string]ContainerHeal{}}
	for k, h := range st.Containers {
		out.Containers[k] = one(h)
	}
	return out
}

// running is the digest the service runs, as last seen: by a check or
// deploy since the start, else by the last deploy in the state file.
func running(seen Observation, last *state.DeployResult) *DigestSeen {
	if !seen.RunningSeen.IsZero() {
		if seen.Running == "" {
			return nil // a rollback failed: what runs is not known
		}
		return &DigestSeen{Digest: seen.Running, At: seen.RunningSeen.UTC()}
	}
	if last == nil {
		return nil
	}
	end := last.Started.Add(time.Duration(last.Seconds * float64(time.Second))).UTC()
	switch Outcome(last.Outcome) {
	case Deployed:
		return &DigestSeen{Digest: last.Digest, At: end}
	case RolledBack:
		if last.Previous != "" {
			return &DigestSeen{Digest: last.Previous, At: end}
		}
	}
	return nil
}

func utcOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// Observation is what the updater and healer saw of a service since the
// start; it is kept in memory only.
type Observation struct {
	Healthy        *bool // nil until known
	RegistryDigest string
	RegistryRead   time.Time
	Running        string // "" with RunningSeen set: not known (a rollback failed)
	RunningSeen    time.Time
	LastCheck      time.Time
	LastOutcome    Outcome
	LastReason     string
}

// Observed returns what was seen of a service.
func (m *Metrics) Observed(name string) Observation {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.services[name]
	if !ok {
		return Observation{}
	}
	o := s.seen
	if s.healthy != nil {
		o.Healthy = boolPtr(*s.healthy)
	}
	return o
}

// observe records what a check (and any deploy) learned: the registry's
// digest, the running one and the outcome. started is when the check began,
// which is when the registry was read.
func (m *Metrics) observe(r Result, started, now time.Time) {
	m.with(r.Service, func(s *serviceMetrics) {
		o := &s.seen
		o.LastCheck, o.LastOutcome, o.LastReason = now, r.Outcome, r.Reason
		if r.Digest != "" {
			o.RegistryDigest, o.RegistryRead = r.Digest, started
		}
		switch r.Outcome {
		case UpToDate, Deployed:
			o.Running, o.RunningSeen = r.Digest, now
		case RolledBack:
			o.Running, o.RunningSeen = r.Previous, now
		case RollbackFailed:
			o.Running, o.RunningSeen = "", now
		}
	})
}

// observe records a check's result for the status: in memory, and the
// verdict of a deploy in the state file, so the last deploy survives a
// restart.
func (u *Updater) observe(r Result) {
	now := u.now()
	started := now.Add(-time.Duration(r.Seconds * float64(time.Second)))
	u.metrics.observe(r, started, now)
	switch r.Outcome {
	case Deployed, RolledBack, RollbackFailed:
	default:
		return
	}
	last := state.DeployResult{Digest: r.Digest, Previous: r.Previous, Outcome: string(r.Outcome),
		Started: started, Seconds: r.Seconds, Reason: r.Reason}
	if err := u.store.Update(r.Service, func(s *state.Service) { s.LastDeploy = &last }); err != nil {
		u.logger.Error("record the deploy's verdict for /status", "service", r.Service, "err", err)
	}
}

// ServiceConfigs returns the configured services in config order.
func (u *Updater) ServiceConfigs() []config.Service {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]config.Service, 0, len(u.order))
	for _, name := range u.order {
		out = append(out, u.services[name].cfg)
	}
	return out
}

// ImageRefs returns, by service name, the reference the compose file must
// name for each service with an image.
func (u *Updater) ImageRefs() map[string]string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := map[string]string{}
	for name, s := range u.services {
		if s.cfg.Image != "" {
			out[name] = s.ref.Local()
		}
	}
	return out
}

// PollInterval is the time between polls.
func (u *Updater) PollInterval() time.Duration {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.pollInterval
}
