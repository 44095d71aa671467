package watcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/state"
)

// promoteAttempts bounds the copies tried for one promotion; the waits
// between them double from promoteRetry.
const (
	promoteAttempts = 4
	promoteRetry    = 5 * time.Second
)

// promoter copies a manifest to another tag in the registry and checks
// that the tag then points to it.
type promoter interface {
	Promote(ctx context.Context, repository, digest, tag string) error
}

// promoteLater is called when a deploy of the service was verified: with
// promote_tag set, the digest waits (in the state file) for the end of its
// soak, then is copied to the promote tag.
func (u *Updater) promoteLater(s *service, digest string) {
	if s.cfg.PromoteTag == "" {
		return
	}
	name := s.cfg.Name
	log := u.logger.With("service", name)
	if u.promoter == nil {
		log.Error("promote_tag is set, but this dockward has no registry client to promote with")
		return
	}
	now := u.now()
	p := state.Promotion{Digest: digest, Tag: s.cfg.PromoteTag, Verified: now, NotBefore: now.Add(s.cfg.PromoteAfter.Duration())}
	if err := u.store.Update(name, func(st *state.Service) { st.Promotion = &p }); err != nil {
		log.Error("record the pending promotion (kept in memory; written on the next successful save)", "err", err)
	}
	log.Info("promotion pending: the new version must stay healthy until then", "digest", digest,
		"tag", s.ref.Repository+":"+p.Tag, "not_before", p.NotBefore.UTC().Format(time.RFC3339))
	go u.soak(name, p)
}

// resumePromotions takes up the promotions that a previous run left
// pending: their soak goes on from what runs now.
func (u *Updater) resumePromotions() {
	for _, name := range u.Services() {
		if p := u.store.Get(name).Promotion; p != nil {
			u.logger.Info("resuming the pending promotion", "service", name, "digest", p.Digest, "tag", p.Tag,
				"not_before", p.NotBefore.UTC().Format(time.RFC3339))
			go u.soak(name, *p)
		}
	}
}

// mark is what a container looked like when the soak first saw it; a
// change means it died, was restarted or was replaced.
type mark struct {
	restarts int
	started  time.Time
}

// soak watches the service until p's soak ends, then promotes the digest.
// It returns when the promotion is done, cancelled, replaced by a newer
// one, or when dockward stops (the promotion stays pending for the next
// start).
func (u *Updater) soak(name string, p state.Promotion) {
	ctx := u.deployCtx
	log := u.logger.With("service", name, "digest", p.Digest, "tag", p.Tag)
	var seen map[string]mark
	attempts := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if cur := u.store.Get(name).Promotion; cur == nil || *cur != p {
			return // done, cancelled or replaced by a newer deploy's
		}
		s, ok := u.lookup(name)
		if !ok || s.cfg.PromoteTag != p.Tag {
			u.cancelPromotion(name, p, "the service or its promote_tag changed in the config")
			return
		}
		every := s.cfg.HealthPollInterval.Duration()
		why, err := u.soakTrouble(ctx, s, p.Digest, &seen)
		switch {
		case err != nil:
			// Not a verdict: the engine may be away for a moment.
			log.Debug("cannot look at the service during the soak; looking again", "err", err)
			timer.Reset(every)
			continue
		case why != "":
			u.cancelPromotion(name, p, why)
			return
		}
		if wait := p.NotBefore.Sub(u.now()); wait > 0 {
			timer.Reset(min(every, wait))
			continue
		}

		// The soak is over. Promote under the service's guard, so that no
		// deploy or rollback runs between the last look and the copy.
		g, err := u.acquire(name)
		switch {
		case errors.Is(err, ErrBusy):
			timer.Reset(min(every, time.Second))
			continue
		case err != nil:
			return // stopping: the promotion stays pending for the next start
		}
		err = u.promoteNow(ctx, g, p, &seen)
		u.release(g)
		var cancel *cancelled
		switch {
		case err == nil:
			return
		case errors.As(err, &cancel):
			u.cancelPromotion(name, p, cancel.why)
			return
		case ctx.Err() != nil:
			return
		}
		attempts++
		if attempts >= promoteAttempts {
			u.failPromotion(g, p, err)
			return
		}
		wait := promoteRetry << (attempts - 1)
		log.Warn("promotion failed; trying again", "attempt", attempts, "in", wait, "err", err)
		timer.Reset(wait)
	}
}

// cancelled is a promotion that must not happen, and why.
type cancelled struct{ why string }

func (c *cancelled) Error() string { return c.why }

// promoteNow checks the service a last time and copies the digest to the
// promote tag. The caller holds the guard.
func (u *Updater) promoteNow(ctx context.Context, s *service, p state.Promotion, seen *map[string]mark) error {
	name := s.cfg.Name
	if b := u.store.Get(name).Blocked; b != nil && b.Digest == p.Digest {
		return &cancelled{"the digest is blocked"}
	}
	why, err := u.soakTrouble(ctx, s, p.Digest, seen)
	if err != nil {
		return err
	}
	if why != "" {
		return &cancelled{why}
	}
	if err := u.promoter.Promote(ctx, s.ref.Repository, p.Digest, p.Tag); err != nil {
		return err
	}
	if err := u.store.Update(name, func(st *state.Service) {
		if st.Promotion != nil && *st.Promotion == p {
			st.Promotion = nil
		}
	}); err != nil {
		u.logger.Error("clear the done promotion (kept in memory; written on the next successful save)", "service", name, "err", err)
	}
	u.metrics.Promoted(name)
	target := s.ref.LocalRepo() + ":" + p.Tag
	u.logger.Info("promoted", "service", name, "digest", p.Digest, "tag", target,
		"healthy_for", u.now().Sub(p.Verified).Round(time.Second).String())
	u.notify.Send(notify.Alert{Service: name, Event: notify.Promoted, Level: notify.Info, Digest: p.Digest, Image: target,
		Message: fmt.Sprintf("%s: %s stayed healthy for %s and is promoted to %s", name, short(p.Digest),
			u.now().Sub(p.Verified).Round(time.Second), target)})
	return nil
}

// cancelPromotion drops a pending promotion that must not happen.
func (u *Updater) cancelPromotion(name string, p state.Promotion, why string) {
	u.dropPromotion(name, p)
	u.logger.Warn("promotion cancelled: the new version did not stay healthy and unchanged", "service", name,
		"digest", p.Digest, "tag", p.Tag, "reason", why)
}

// failPromotion drops a promotion whose copies all failed, and alerts.
func (u *Updater) failPromotion(s *service, p state.Promotion, err error) {
	name := s.cfg.Name
	u.dropPromotion(name, p)
	u.metrics.Failure(name)
	target := s.ref.LocalRepo() + ":" + p.Tag
	u.logger.Error("promotion failed; the fleet keeps the previous version", "service", name, "digest", p.Digest,
		"tag", target, "attempts", promoteAttempts, "err", err)
	u.notify.Send(notify.Alert{Service: name, Event: notify.PromotionFailed, Level: notify.Critical, Digest: p.Digest, Image: target,
		Message: fmt.Sprintf("%s: %s is healthy here but could not be promoted to %s; the fleet keeps the previous version", name, short(p.Digest), target),
		Reason:  err.Error()})
}

func (u *Updater) dropPromotion(name string, p state.Promotion) {
	if err := u.store.Update(name, func(st *state.Service) {
		if st.Promotion != nil && *st.Promotion == p {
			st.Promotion = nil
		}
	}); err != nil {
		u.logger.Error("drop the pending promotion (kept in memory; written on the next successful save)", "service", name, "err", err)
	}
}

// soakTrouble says why the digest must not be promoted ("" if nothing is
// wrong): a container of the project is not running or not healthy, was
// restarted or replaced since the soak first saw it, or the watched image
// runs another digest. An error is no verdict (the engine did not answer).
func (u *Updater) soakTrouble(ctx context.Context, s *service, digest string, seen *map[string]mark) (string, error) {
	containers, err := u.projectContainers(ctx, s.cfg.ComposeProject)
	if err != nil {
		return "", err
	}
	containers = relevant(containers, s.ref.Local())
	if len(containers) == 0 {
		return "no container of project " + s.cfg.ComposeProject + " runs", nil
	}
	first := *seen == nil
	if first {
		*seen = map[string]mark{}
	}
	images := map[string]bool{}
	for _, c := range containers {
		switch {
		case !c.State.Running || c.State.Restarting:
			return fmt.Sprintf("container %s is %s", c.Name, c.State.Status), nil
		case c.State.Health != nil && c.State.Health.Status != "healthy":
			return fmt.Sprintf("container %s is %s", c.Name, c.State.Health.Status), nil
		}
		m := mark{restarts: c.RestartCount, started: c.State.StartedAt}
		if first {
			(*seen)[c.ID] = m
		} else if was, ok := (*seen)[c.ID]; !ok {
			return fmt.Sprintf("container %s was replaced", c.Name), nil
		} else if m.restarts != was.restarts || !m.started.Equal(was.started) {
			return fmt.Sprintf("container %s restarted (it died, or was healed)", c.Name), nil
		}
		if normalizeRef(c.Image) == s.ref.Local() {
			images[c.ImageID] = true
		}
	}
	if len(images) == 0 {
		return "no container runs " + s.ref.Local(), nil
	}
	for id := range images {
		img, err := u.engine.InspectImage(ctx, id)
		if err != nil {
			return "", fmt.Errorf("inspect image %s: %w", id, err)
		}
		if !contains(repoDigests(img, s.ref.LocalRepo()), digest) {
			return fmt.Sprintf("the service runs another version now (%s), not %s", orNone(short(first1(repoDigests(img, s.ref.LocalRepo())))), short(digest)), nil
		}
	}
	return "", nil
}

func first1(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return list[0]
}
