package watcher

import (
	"errors"
	"sync"
	"time"
)

// hintRetries bounds how often a scheduled check is repeated while the
// registry still shows the running digest although the request announced
// another one, or the check failed (a registry or engine hiccup).
// Distribution 2.x sends a push event before it moves the tag, so the
// first check can come too early. The waits double from hintDelay:
// 0.2 + 0.4 + … + 3.2 s. Polling stays the safety net after that.
const (
	hintRetries = 5
	hintDelay   = 200 * time.Millisecond
)

// scheduled tracks the checks that Schedule asked for (a registry push
// event). It coalesces them: a service has at most one such check waiting,
// and at most one goroutine that runs them.
type scheduled struct {
	mu sync.Mutex
	// wanted: a check was asked for and has not started reading the
	// registry yet. Asking again while it is set adds nothing.
	wanted map[string]bool
	// active: a goroutine runs the service's asked-for checks. It is
	// cleared when that goroutine leaves, also when it leaves because a
	// poll, a trigger or a deploy holds the guard: released starts a new
	// one then.
	active map[string]bool
	// expect is the digest the latest request announced ("" for none).
	expect map[string]string
}

// Schedule asks for a check of the service as soon as possible, and a
// deploy if its digest changed: at once when nothing else runs for the
// service, else right after the check or deploy in progress. It returns at
// once. Requests that arrive before the check starts are one check; a
// request during a check or deploy queues exactly one more after it.
//
// The check reads the digest from the registry like a poll: expect, the
// digest a push event announced ("" if unknown), is a hint, never deployed
// as such. When the registry still shows the running digest and not
// expect, the check is repeated a few times within seconds, because the
// event may have come before the registry moved the tag.
func (u *Updater) Schedule(name, expect string) error {
	s, ok := u.lookup(name)
	if !ok {
		return ErrUnknownService
	}
	if s.cfg.Image == "" {
		return ErrNoImage
	}
	u.mu.Lock()
	stopping := u.stopping
	u.mu.Unlock()
	if stopping {
		return ErrStopping
	}
	u.sched.mu.Lock()
	defer u.sched.mu.Unlock()
	if u.sched.wanted == nil {
		u.sched.wanted, u.sched.active, u.sched.expect = map[string]bool{}, map[string]bool{}, map[string]string{}
	}
	u.sched.wanted[name] = true
	u.sched.expect[name] = expect
	if !u.sched.active[name] {
		u.sched.active[name] = true
		go u.runScheduled(name)
	}
	return nil
}

// released is called each time a guard is released, so that a check asked
// for while the guard was held starts now. Every service that shares the
// guard (it is the compose project's) is looked at.
func (u *Updater) released(g *guard) {
	u.mu.Lock()
	var names []string
	for name, s := range u.services {
		if s.guard == g {
			names = append(names, name)
		}
	}
	u.mu.Unlock()
	u.sched.mu.Lock()
	defer u.sched.mu.Unlock()
	for _, name := range names {
		if u.sched.wanted[name] && !u.sched.active[name] {
			u.sched.active[name] = true
			go u.runScheduled(name)
		}
	}
}

// runScheduled runs the asked-for checks of one service until none is left.
func (u *Updater) runScheduled(name string) {
	retries, retried := 0, ""
	for {
		u.sched.mu.Lock()
		if !u.sched.wanted[name] {
			delete(u.sched.active, name)
			delete(u.sched.expect, name)
			u.sched.mu.Unlock()
			return
		}
		expect := u.sched.expect[name]
		u.sched.mu.Unlock()

		s, err := u.acquire(name)
		if errors.Is(err, ErrBusy) {
			u.sched.mu.Lock()
			// The holder calls released after it frees the guard, and
			// released takes this lock: either the guard is still held
			// now and released starts a new runner, or it was freed
			// already and this one tries again.
			if u.Busy(name) {
				delete(u.sched.active, name)
				u.sched.mu.Unlock()
				u.logger.Debug("check asked for; it runs after the check or deploy in progress", "service", name)
				return
			}
			u.sched.mu.Unlock()
			continue
		}
		if err != nil {
			// Stopping, or the service went away with a reload.
			u.sched.mu.Lock()
			delete(u.sched.wanted, name)
			delete(u.sched.active, name)
			delete(u.sched.expect, name)
			u.sched.mu.Unlock()
			u.logger.Debug("asked-for check dropped", "service", name, "err", err)
			return
		}
		// From here on a new request is one more check after this one.
		u.sched.mu.Lock()
		delete(u.sched.wanted, name)
		u.sched.mu.Unlock()
		res := u.runCheck(s)

		if expect != retried {
			retries, retried = 0, expect
		}
		early := res.Outcome == UpToDate && res.Digest != expect
		if expect == "" || !(early || res.Outcome == CheckFailed) || retries >= hintRetries {
			continue
		}
		// The registry does not show the announced digest yet, or the
		// check failed: look again shortly, unless a new request comes
		// first.
		wait := hintDelay << retries
		retries++
		u.logger.Debug("the pushed digest is not deployed yet; checking again", "service", name,
			"outcome", res.Outcome, "registry", res.Digest, "pushed", expect, "in", wait, "reason", res.Reason)
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-u.deployCtx.Done():
			timer.Stop()
		}
		u.sched.mu.Lock()
		if !u.sched.wanted[name] {
			u.sched.wanted[name] = true
			u.sched.expect[name] = expect
		}
		u.sched.mu.Unlock()
	}
}

// runCheck checks a service whose guard the caller holds, deploys if its
// digest changed, and releases the guard.
func (u *Updater) runCheck(s *service) Result {
	defer u.release(s)
	return u.checkAndDeploy(u.deployCtx, s)
}
