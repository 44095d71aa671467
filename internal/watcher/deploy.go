package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// Phase is the step a deploy is in. It is written to the in-flight record
// before the step starts, so that a start after a crash resumes that step.
type Phase string

// The phases of a deploy, in order. A deploy ends at verified, rolled back
// or rollback failed; each of those is reported, then the record cleared.
const (
	// PhaseRollbackTagged: the running image is kept as :rollback; the new
	// image is being pulled.
	PhaseRollbackTagged Phase = "rollback_tagged"
	// PhasePulled: the new image is here; nothing runs it yet.
	PhasePulled Phase = "pulled"
	// PhaseUp: compose up is recreating the services in scope.
	PhaseUp Phase = "up"
	// PhaseVerifying: the new version is being proven healthy.
	PhaseVerifying Phase = "verifying"
	// PhaseVerified: proven healthy; to be reported.
	PhaseVerified Phase = "verified"
	// PhaseRollingBack: the digest is blocked and the previous image is
	// being put back and verified.
	PhaseRollingBack Phase = "rolling_back"
	// PhaseRolledBack: the previous version is healthy again; to be reported.
	PhaseRolledBack Phase = "rolled_back"
	// PhaseRollbackFailed: the rollback failed; to be reported.
	PhaseRollbackFailed Phase = "rollback_failed"
)

// EngineUnavailable is the alert sent when the engine has not answered for
// the whole engine wait. It is not a verdict: nothing is blocked.
const EngineUnavailable notify.Event = "engine_unavailable"

// errEngineBack says the engine was away during a step and answers again:
// the step starts over, because what runs now decides, not what ran before.
var errEngineBack = errors.New("the docker engine was away and answers again")

// errEngineAway says the engine did not answer within the engine wait.
var errEngineAway = errors.New("the docker engine does not answer")

// engineProbeInterval is how often a verification pings the engine between
// its looks at the containers.
const engineProbeInterval = 500 * time.Millisecond

// maxEngineTextRetries bounds how often a compose step that failed with
// words of an unreachable engine is retried while the engine itself answers.
const maxEngineTextRetries = 3

// deployment is one deploy of one service as a transaction: it moves
// through the phases, writing each to the in-flight record before the
// step, and ends with one verdict that the updater's reporter announces.
// A deployment is run by the holder of the service's guard.
type deployment struct {
	u       *Updater
	s       *service
	log     *slog.Logger
	rec     state.Deploy
	res     Result
	started time.Time // of this run, for its duration
	// resumed is set for a deploy taken up from its record.
	resumed bool
	// textRetries counts compose failures retried for their words alone.
	textRetries int
}

// newDeployment starts a deploy of the plan's digest.
func (u *Updater) newDeployment(s *service, p *plan) *deployment {
	d := &deployment{
		u: u, s: s, started: p.started,
		log: u.logger.With("service", s.cfg.Name),
		rec: state.Deploy{
			Digest:        p.remote,
			RollbackImage: p.current.imageID,
			Started:       p.started,
			Project:       s.cfg.ComposeProject,
			Services:      p.services,
		},
	}
	if len(p.current.digests) > 0 {
		d.rec.Previous = p.current.digests[0]
	}
	d.res = Result{Service: s.cfg.Name, Digest: p.remote, Previous: d.rec.Previous}
	return d
}

// resumeDeployment takes up a deploy that a previous run (or an earlier
// attempt that the engine cut short) left in rec.
func (u *Updater) resumeDeployment(s *service, rec state.Deploy) *deployment {
	d := &deployment{
		u: u, s: s, started: u.now(), rec: rec, resumed: true,
		log: u.logger.With("service", s.cfg.Name),
	}
	if Phase(rec.Phase) == PhaseVerifying {
		// The engine or the host may have restarted since: containers
		// without a restart policy are stopped then. compose up starts them
		// again and leaves running ones alone; what runs then is judged.
		d.rec.Phase = string(PhaseUp)
	}
	d.res = Result{Service: s.cfg.Name, Digest: rec.Digest, Previous: rec.Previous}
	return d
}

// project is the compose project the deploy acts on.
func (d *deployment) project() compose.Project {
	cfg := d.s.cfg
	name := d.rec.Project
	if name == "" {
		name = cfg.ComposeProject
	}
	return compose.Project{Name: name, Files: cfg.Files(), EnvFile: cfg.EnvFile}
}

// scopeText says which services a deploy acts on, for logs and messages.
func (d *deployment) scopeText() string {
	if len(d.rec.Services) == 0 {
		return "the whole project " + d.project().Name
	}
	return "services " + strings.Join(d.rec.Services, ", ")
}

// run moves the deploy through its phases from where it is, and returns
// its result. A stop (ctx done) leaves the record for the next start.
func (d *deployment) run(ctx context.Context) Result {
	d.s.guard.deploying.Store(true)
	defer d.s.guard.deploying.Store(false)
	for {
		if ctx.Err() != nil {
			return d.stopped("stopped during " + string(d.phaseOrStart()))
		}
		var err error
		switch Phase(d.rec.Phase) {
		case "":
			err = d.begin(ctx)
		case PhaseRollbackTagged:
			err = d.pull(ctx)
		case PhasePulled:
			d.setPhase(PhaseUp)
		case PhaseUp:
			err = d.up(ctx)
		case PhaseVerifying:
			err = d.verifyNew(ctx)
		case PhaseRollingBack:
			err = d.rollback(ctx)
		case PhaseVerified:
			return d.verdict(Deployed, "")
		case PhaseRolledBack:
			return d.verdict(RolledBack, d.rec.Reason)
		case PhaseRollbackFailed:
			return d.verdict(RollbackFailed, d.rec.Reason)
		default:
			// Written by a newer dockward: start the services and verify
			// what runs.
			d.log.Warn("unknown deploy phase in the state file; starting the services and verifying what runs", "phase", d.rec.Phase)
			d.setPhase(PhaseUp)
		}
		var ns *notStartedError
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return d.stopped(fmt.Sprintf("stopped during %s: %v", d.phaseOrStart(), err))
		case errors.Is(err, errEngineAway):
			return d.engineAway(err)
		case errors.As(err, &ns):
			return d.notStarted(ns.step, ns.err)
		default:
			return d.noVerdict(err)
		}
	}
}

func (d *deployment) phaseOrStart() Phase {
	if d.rec.Phase == "" {
		return "start"
	}
	return Phase(d.rec.Phase)
}

// setPhase writes the record with its new phase. A failed write is kept in
// memory by the store and written with the next successful save; the
// deploy goes on, as it must once containers are changing.
func (d *deployment) setPhase(p Phase) {
	d.rec.Phase = string(p)
	rec := d.rec
	if err := d.u.store.Update(d.s.cfg.Name, func(st *state.Service) { st.Deploy = &rec }); err != nil {
		d.log.Error("record the deploy phase (kept in memory; written on the next successful save)", "phase", p, "err", err)
	}
	d.log.Debug("deploy phase", "phase", p, "digest", d.rec.Digest)
}

// notStartedError is a failure before anything that runs was changed.
type notStartedError struct {
	step string
	err  error
}

func (e *notStartedError) Error() string { return e.step + ": " + e.err.Error() }

// begin keeps the running image as :rollback and writes the first record.
func (d *deployment) begin(ctx context.Context) error {
	s := d.s
	if strings.HasPrefix(s.guard.lastPullError, d.rec.Digest+" ") {
		// The last attempt at this digest failed before anything changed,
		// and said so: a retry each poll is not news.
		d.log.Debug("new digest; trying the deploy again", "digest", d.rec.Digest, "failed_at", strings.TrimPrefix(s.guard.lastPullError, d.rec.Digest+" "))
	} else if len(d.rec.Services) == 0 {
		d.log.Info("new digest; deploying the whole project: no container of the image runs yet to tell its compose services",
			"image", s.ref.Local(), "digest", d.rec.Digest, "project", d.project().Name)
	} else {
		d.log.Info("new digest; deploying", "image", s.ref.Local(), "digest", d.rec.Digest, "previous", d.rec.Previous,
			"services", strings.Join(d.rec.Services, ","))
	}
	rollbackRef := s.ref.LocalRepo() + ":" + rollbackTag
	if d.rec.RollbackImage != "" {
		err := d.engineCall(ctx, "tag the running image as "+rollbackRef, func() error {
			return d.u.engine.TagImage(ctx, d.rec.RollbackImage, s.ref.LocalRepo(), rollbackTag)
		})
		if err != nil {
			if errors.Is(err, errEngineAway) || ctx.Err() != nil {
				return err
			}
			return &notStartedError{"tag the running image as " + rollbackRef, err}
		}
	} else {
		d.log.Warn("no running container of this image: nothing to roll back to if the new version fails")
	}
	d.rec.Phase = string(PhaseRollbackTagged)
	rec := d.rec
	if err := d.u.store.Update(s.cfg.Name, func(st *state.Service) { st.Deploy = &rec }); err != nil {
		// The record stays in memory: take it back, so that a later save
		// does not persist a deploy that never began. Its write fails as
		// the one above did, which notStarted reports once.
		d.u.store.Update(s.cfg.Name, func(st *state.Service) { st.Deploy = nil })
		d.rec.Phase = ""
		return &notStartedError{"record the deploy in the state file", err}
	}
	return nil
}

// pull pulls the new image of the services in scope and checks which
// digest arrived: CI may have pushed again since the check.
func (d *deployment) pull(ctx context.Context) error {
	s := d.s
	err := d.composeCall(ctx, "pull", func() error { return d.u.compose.Pull(ctx, d.project(), d.rec.Services...) })
	if err != nil {
		if errors.Is(err, errEngineAway) || ctx.Err() != nil {
			return err
		}
		// Nothing was changed yet: the running version stays. A pull failure
		// is usually transient, so the digest is not blocked.
		return &notStartedError{"pull", err}
	}
	s.guard.lastPullError = ""
	var img docker.Image
	err = d.engineCall(ctx, "inspect the pulled image", func() error {
		var err error
		img, err = d.u.engine.InspectImage(ctx, s.ref.Local())
		return err
	})
	if err != nil {
		if errors.Is(err, errEngineAway) || ctx.Err() != nil {
			return err
		}
		// Without it the digest that would run is unknown: do not start it.
		d.restoreTag(ctx)
		return &notStartedError{"inspect the pulled image " + s.ref.Local(), err}
	}
	switch ds := repoDigests(img, s.ref.LocalRepo()); {
	case len(ds) == 0:
		d.log.Warn("the pulled image has no digest of its repository; cannot tell whether the tag moved since the check",
			"image", s.ref.Local(), "checked", d.rec.Digest)
	case !contains(ds, d.rec.Digest):
		// Block what was pulled, not what was checked.
		d.log.Info("the tag moved during the deploy", "checked", d.rec.Digest, "pulled", ds[0])
		d.rec.Digest = ds[0]
		d.res.Digest = ds[0]
	}
	d.u.notify.Send(notify.Alert{Service: s.cfg.Name, Event: notify.UpdateStarted, Level: notify.Info, Digest: d.rec.Digest, Image: s.ref.Local(),
		Message: fmt.Sprintf("%s: deploying %s (was %s)", s.cfg.Name, short(d.rec.Digest), orNone(short(d.rec.Previous)))})
	d.setPhase(PhasePulled)
	return nil
}

// restoreTag points the watched tag back at the running image after a pull
// that is not going to be deployed, so that a later compose up by hand does
// not start an unverified image.
func (d *deployment) restoreTag(ctx context.Context) {
	if d.rec.RollbackImage == "" {
		return
	}
	if err := d.u.engine.TagImage(ctx, d.rec.RollbackImage, d.s.ref.LocalRepo(), d.s.ref.Tag); err != nil {
		d.log.Error("point the tag back at the running image", "image", d.s.ref.Local(), "err", err)
	}
}

// up recreates the services in scope from the new image.
func (d *deployment) up(ctx context.Context) error {
	err := d.composeCall(ctx, "compose up", func() error {
		return d.u.compose.Up(ctx, d.project(), compose.UpOptions{NoDeps: true, Services: d.rec.Services})
	})
	switch {
	case err == nil:
		d.setPhase(PhaseVerifying)
		return nil
	case errors.Is(err, errEngineAway) || ctx.Err() != nil:
		return err
	}
	d.startRollback("compose up: " + err.Error())
	return nil
}

// verifyNew proves the new version healthy within the grace period, and
// that it is the new digest that runs.
func (d *deployment) verifyNew(ctx context.Context) error {
	ok, why, err := d.verify(ctx)
	switch {
	case errors.Is(err, errEngineBack):
		// The engine restarted under the deploy: start the services again
		// (containers without a restart policy are stopped) and judge what
		// runs then, with a whole grace period.
		d.setPhase(PhaseUp)
		return nil
	case err != nil:
		return err
	case !ok:
		d.startRollback(why)
		return nil
	}
	cur, err := d.currentOf(ctx)
	switch {
	case errors.Is(err, errEngineBack):
		d.setPhase(PhaseUp)
		return nil
	case err != nil:
		return fmt.Errorf("read the running version after verification: %w", err)
	case !contains(cur.digests, d.rec.Digest):
		d.startRollback(fmt.Sprintf("after compose up no container of project %s runs %s@%s: does the compose file name %s?",
			d.project().Name, d.s.ref.LocalRepo(), short(d.rec.Digest), d.s.ref.Local()))
		return nil
	}
	d.setPhase(PhaseVerified)
	return nil
}

// currentOf reads what runs, waiting for the engine while it is away and
// retrying other failures a few times: a failed read is not a verdict.
func (d *deployment) currentOf(ctx context.Context) (current, error) {
	var cur current
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			if werr := sleepCtx(ctx, d.s.cfg.HealthPollInterval.Duration()); werr != nil {
				return current{}, werr
			}
		}
		cur, err = d.u.current(ctx, d.s)
		if err == nil || ctx.Err() != nil {
			return cur, err
		}
		if docker.Unavailable(err) {
			if werr := d.waitEngine(ctx, "read the running version", err); werr != nil {
				return current{}, werr
			}
			return current{}, errEngineBack
		}
		d.log.Warn("read the running version", "attempt", attempt+1, "err", err)
	}
	return current{}, err
}

// startRollback blocks the failed digest and moves to rolling back, in one
// write of the state, so that a crash cannot leave one without the other.
func (d *deployment) startRollback(reason string) {
	name := d.s.cfg.Name
	if d.resumed {
		reason = "interrupted deploy: " + reason
	}
	d.log.Error("new version failed; rolling back", "digest", d.rec.Digest, "reason", reason, "scope", d.scopeText())
	d.rec.Phase, d.rec.Reason = string(PhaseRollingBack), reason
	rec := d.rec
	block := state.Block{Digest: d.rec.Digest, Since: d.u.now(), Reason: reason}
	if err := d.u.store.Update(name, func(st *state.Service) { st.Blocked, st.Deploy = &block, &rec }); err != nil {
		// Still roll back: the store keeps the block in memory and writes it
		// on the next successful save (every poll tries).
		d.log.Error("persist blocked digest (kept in memory; written on the next successful save)", "err", err)
	}
	d.u.metrics.SetBlocked(name, true)
	d.u.notify.Send(notify.Alert{Service: name, Event: notify.Blocked, Level: notify.Warning, Digest: d.rec.Digest, Image: d.s.ref.Local(),
		Message: fmt.Sprintf("%s: digest %s failed verification and is blocked until a new digest is pushed or it is unblocked", name, short(d.rec.Digest)),
		Reason:  reason})
}

// rollback puts the previous image back under the watched tag, recreates
// the services in scope without pulling, and verifies them.
func (d *deployment) rollback(ctx context.Context) error {
	s := d.s
	fail := func(why string) error {
		d.rec.Reason = d.rec.Reason + "; rollback failed: " + why
		d.setPhase(PhaseRollbackFailed)
		return nil
	}
	if d.rec.RollbackImage == "" {
		return fail("no previous image to roll back to")
	}
	err := d.engineCall(ctx, "retag the previous image", func() error {
		return d.u.engine.TagImage(ctx, d.rec.RollbackImage, s.ref.LocalRepo(), s.ref.Tag)
	})
	switch {
	case errors.Is(err, errEngineAway) || ctx.Err() != nil:
		return err
	case err != nil:
		return fail(fmt.Sprintf("retag previous image as %s: %v", s.ref.Local(), err))
	}
	err = d.composeCall(ctx, "compose up (rollback)", func() error {
		return d.u.compose.Up(ctx, d.project(), compose.UpOptions{NoPull: true, NoDeps: true, Services: d.rec.Services})
	})
	switch {
	case errors.Is(err, errEngineAway) || ctx.Err() != nil:
		return err
	case err != nil:
		return fail("compose up: " + err.Error())
	}
	ok, why, err := d.verify(ctx)
	switch {
	case errors.Is(err, errEngineBack):
		return nil // the phase stays: roll back again, then judge what runs
	case err != nil:
		return err
	case !ok:
		return fail("previous version is not healthy either: " + why)
	}
	d.setPhase(PhaseRolledBack)
	return nil
}

// verdict reports how the deploy ended and clears the record.
func (d *deployment) verdict(o Outcome, reason string) Result {
	d.res.Digest = d.rec.Digest
	d.res.Outcome, d.res.Reason = o, reason
	d.res.Seconds = d.u.now().Sub(d.started).Seconds()
	d.u.report(d.res, d.s.ref.Local())
	d.u.clearDeploy(d.s.cfg.Name)
	d.u.running.forget(d.s.cfg.Name)
	return d.res
}

// stopped ends a run that a stop cut short. The record stays, and the next
// start resumes the phase it names.
func (d *deployment) stopped(reason string) Result {
	d.log.Warn("stopped during a deploy; the next start resumes it", "phase", d.rec.Phase, "reason", reason)
	d.res.Outcome, d.res.Reason = CheckFailed, reason
	d.res.Seconds = d.u.now().Sub(d.started).Seconds()
	d.u.report(d.res, d.s.ref.Local())
	return d.res
}

// notStarted ends a deploy that failed before anything that runs changed:
// the running version stays and the next poll retries. It is not a
// verdict; it alerts once per digest and cause, so a failure that persists
// is not an alert every poll.
func (d *deployment) notStarted(what string, err error) Result {
	if d.rec.Phase != "" {
		d.u.clearDeploy(d.s.cfg.Name)
	}
	name := d.s.cfg.Name
	if key := d.rec.Digest + " " + what; d.s.guard.lastPullError != key {
		d.s.guard.lastPullError = key
		d.log.Error("deploy not started; the running version stays and the next poll retries", "step", what, "err", err)
		d.u.notify.Send(notify.Alert{Service: name, Event: notify.UpdateFailed, Level: notify.Warning, Digest: d.rec.Digest, Image: d.s.ref.Local(),
			Message: fmt.Sprintf("%s: deploying %s failed at %s; the running version stays and the next poll retries", name, short(d.rec.Digest), what),
			Reason:  err.Error()})
	} else {
		d.log.Debug("deploy not started again", "step", what, "err", err)
	}
	d.res.Outcome, d.res.Reason = CheckFailed, what+": "+err.Error()
	d.res.Seconds = d.u.now().Sub(d.started).Seconds()
	d.res.Digest = d.rec.Digest
	d.u.report(d.res, d.s.ref.Local())
	return d.res
}

// noVerdict ends a run that could not reach a verdict for a reason other
// than the engine: the record stays, and the next poll resumes it.
func (d *deployment) noVerdict(err error) Result {
	d.res.Outcome, d.res.Reason = NoVerdict, fmt.Sprintf("%s: %v", d.phaseOrStart(), err)
	d.res.Seconds = d.u.now().Sub(d.started).Seconds()
	d.u.report(d.res, d.s.ref.Local())
	return d.res
}

// engineAway ends a run whose engine did not answer within the engine
// wait: no verdict, nothing blocked; the record stays and the next poll
// (or start) resumes the phase.
func (d *deployment) engineAway(err error) Result {
	d.res.Outcome, d.res.Reason = EngineAway, fmt.Sprintf("%s: %v", d.phaseOrStart(), err)
	d.res.Seconds = d.u.now().Sub(d.started).Seconds()
	d.u.report(d.res, d.s.ref.Local())
	return d.res
}

// engineCall runs fn, an engine call; while the engine is away it waits
// for it and calls again.
func (d *deployment) engineCall(ctx context.Context, what string, fn func() error) error {
	for {
		err := fn()
		if err == nil || ctx.Err() != nil || !docker.Unavailable(err) {
			return err
		}
		if werr := d.waitEngine(ctx, what, err); werr != nil {
			return werr
		}
	}
}

// composeCall runs fn, a compose command. Compose reports an engine that
// is away in its own words, so on failure the engine is asked: while it is
// away, the call waits for it and runs again.
func (d *deployment) composeCall(ctx context.Context, what string, fn func() error) error {
	for {
		err := fn()
		if err == nil || ctx.Err() != nil {
			return err
		}
		_, probeErr := d.u.engine.ListContainers(ctx, d.project().Name, false)
		switch {
		case ctx.Err() != nil:
			return err
		case docker.Unavailable(probeErr):
		case composeSaysEngineAway(err) && d.textRetries < maxEngineTextRetries:
			// The engine answers again already: it was restarting.
			d.textRetries++
		default:
			return err
		}
		if werr := d.waitEngine(ctx, what, err); werr != nil {
			return werr
		}
	}
}

// composeSaysEngineAway reports whether compose's output says it could not
// reach the engine.
func composeSaysEngineAway(err error) bool {
	msg := strings.ToLower(err.Error())
	if strings.Contains(msg, "error response from daemon") {
		// The engine answered: what it could not reach is the registry.
		return false
	}
	for _, s := range []string{"cannot connect to the docker daemon", "is the docker daemon running", "connection refused",
		"connection reset", "unexpected eof", "error during connect", "broken pipe"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// waitEngine waits, with backoff, until the engine answers again or the
// engine wait ends (errEngineAway). cause is the failure that started it.
func (d *deployment) waitEngine(ctx context.Context, what string, cause error) error {
	start := d.u.now()
	d.log.Warn("docker engine unavailable; waiting for it (this is not a verdict on the deploy)",
		"socket", d.u.socket(), "step", what, "phase", d.rec.Phase, "err", cause)
	bo := newBackoff(d.u.engineRetryMin, d.u.engineRetryMax)
	bound := d.u.engineWait
	for {
		wait := bo.next()
		if left := bound - d.u.now().Sub(start); left <= 0 {
			return fmt.Errorf("%w for %v (%s): %v", errEngineAway, bound, what, cause)
		} else if wait > left {
			wait = left
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
		_, err := d.u.engine.ListContainers(ctx, d.project().Name, false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !docker.Unavailable(err) {
			d.log.Info("docker engine answers again; going on from what runs now", "socket", d.u.socket(),
				"after", d.u.now().Sub(start).Round(time.Millisecond), "phase", d.rec.Phase)
			return nil
		}
		cause = err
	}
}

// verify watches the containers of the services in scope until they are
// proven healthy, proven broken, or the grace period ends; the project's
// other containers must merely keep running. While the engine is away it
// waits for it, then returns errEngineBack: the grace period starts again.
func (d *deployment) verify(ctx context.Context) (bool, string, error) {
	s := d.s
	grace := s.cfg.HealthGrace.Duration()
	every := s.cfg.HealthPollInterval.Duration()
	deadline := d.u.now().Add(grace)
	baseline := map[string]int{}
	othersRunning := map[string]bool{}
	timer := time.NewTimer(0)
	defer timer.Stop()
	// Between the looks at the containers the engine is pinged more often,
	// so that a quick restart of dockerd (which stops containers without a
	// restart policy) is noticed and not judged as the new version failing.
	var probe <-chan time.Time
	if every > engineProbeInterval {
		t := time.NewTicker(engineProbeInterval)
		defer t.Stop()
		probe = t.C
	}
	// An event of the project (healthy, unhealthy, died, started) is looked
	// at when it arrives: the health poll is only the fallback.
	events, stopListening := d.u.running.listen(d.project().Name)
	defer stopListening()
	var lastLook time.Time
	lastErr := ""
	for {
		select {
		case <-ctx.Done():
			return false, "", ctx.Err()
		case <-events:
			if wait := verifyMinLook - d.u.now().Sub(lastLook); wait > 0 {
				timer.Reset(wait) // a burst of events is one look
				continue
			}
		case <-probe:
			_, err := d.u.engine.ListContainers(ctx, d.project().Name, false)
			if ctx.Err() != nil {
				return false, "", ctx.Err()
			}
			if docker.Unavailable(err) {
				if werr := d.waitEngine(ctx, "verify", err); werr != nil {
					return false, "", werr
				}
				return false, "", errEngineBack
			}
			continue
		case <-timer.C:
		}
		lastLook = d.u.now()
		atDeadline := !lastLook.Before(deadline)
		containers, err := d.u.projectContainers(ctx, d.project().Name)
		switch {
		case err != nil && ctx.Err() != nil:
			return false, "", ctx.Err()
		case err != nil && docker.Unavailable(err):
			if werr := d.waitEngine(ctx, "verify", err); werr != nil {
				return false, "", werr
			}
			return false, "", errEngineBack
		case err != nil:
			lastErr = err.Error()
			if atDeadline {
				return false, "could not inspect containers: " + lastErr, nil
			}
		default:
			mine, others := d.split(relevant(containers, s.ref.Local()))
			v, reason := evaluate(mine, baseline, atDeadline)
			if v != failed {
				if why := stoppedOthers(others, othersRunning, atDeadline); why != "" {
					v, reason = failed, why
				}
			}
			switch v {
			case healthy:
				return true, reason, nil
			case failed:
				if stoppedCleanly(mine) || stoppedCleanly(others) {
					// dockerd stops every container before it goes away,
					// while it still answers: wait a little to see
					// whether it is going away.
					if err := d.watchForEngineStop(ctx); err != nil {
						return false, "", err
					}
				}
				return false, reason, nil
			}
		}
		timer.Reset(max(min(every, deadline.Sub(d.u.now())), 0))
	}
}

// engineStopWindow is how long a verdict that rests on a container that
// exited cleanly (code 0, or 143 for SIGTERM) waits to see whether the
// engine goes away: a stopping dockerd stops its containers first (each
// gets its stop timeout, 10 s by default) while it still answers.
const engineStopWindow = 15 * time.Second

// stoppedCleanly reports whether a container exited with code 0 or 143, as
// the containers of a stopping engine do.
func stoppedCleanly(cs []docker.ContainerDetails) bool {
	for _, c := range cs {
		st := c.State
		if !st.Running && !st.Restarting && st.Status == "exited" && (st.ExitCode == 0 || st.ExitCode == 143) {
			return true
		}
	}
	return false
}

// watchForEngineStop pings the engine for engineStopWindow. If it goes
// away, it waits for it and returns errEngineBack: the verdict is void.
// If it keeps answering, it returns nil and the verdict stands.
func (d *deployment) watchForEngineStop(ctx context.Context) error {
	d.log.Info("a container exited cleanly during the verification; checking that the engine is not stopping before judging",
		"window", engineStopWindow)
	ticker := time.NewTicker(engineProbeInterval)
	defer ticker.Stop()
	end := d.u.now().Add(engineStopWindow)
	for d.u.now().Before(end) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
		_, err := d.u.engine.ListContainers(ctx, d.project().Name, false)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if docker.Unavailable(err) {
			if werr := d.waitEngine(ctx, "verify", err); werr != nil {
				return werr
			}
			return errEngineBack
		}
	}
	return nil
}

// split separates the containers of the services in scope from the others.
func (d *deployment) split(cs []docker.ContainerDetails) (mine, others []docker.ContainerDetails) {
	if len(d.rec.Services) == 0 {
		return cs, nil
	}
	for _, c := range cs {
		if slices.Contains(d.rec.Services, c.Labels[docker.LabelService]) {
			mine = append(mine, c)
		} else {
			others = append(others, c)
		}
	}
	return mine, others
}

// stoppedOthers names a container outside the deploy's scope that was
// running when first seen and is not any more. wasRunning is filled in.
// Before the deadline, one that the engine starts again by itself (its
// restart policy) is not named: the engine may be restarting.
func stoppedOthers(others []docker.ContainerDetails, wasRunning map[string]bool, atDeadline bool) string {
	for _, c := range others {
		running := c.State.Running || c.State.Restarting
		seen, ok := wasRunning[c.ID]
		if !ok {
			wasRunning[c.ID] = running
			continue
		}
		if seen && !running && (atDeadline || !startedAgainByEngine(c)) {
			return fmt.Sprintf("container %s of service %s, outside the deploy, stopped during it (%s, exit code %d)",
				c.Name, orUnknown(c.Labels[docker.LabelService]), orUnknown(c.State.Status), c.State.ExitCode)
		}
	}
	return ""
}

// sleepCtx waits for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
