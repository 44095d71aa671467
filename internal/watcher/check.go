package watcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
)

// plan is a deploy that a check decided on.
type plan struct {
	remote  string
	current current
	started time.Time
	// services are the compose services the deploy acts on: the config's
	// compose_services, else those that run the watched image; none means
	// the whole project.
	services []string
}

// current is what runs now.
type current struct {
	digests []string // registry digests of the running image(s)
	imageID string   // image of the running container, kept as :rollback
	// misnamed is set when a container names the watched repository and
	// tag through another host (127.0.0.1:5000 for localhost:5000): the
	// engine sees two different images, so dockward would deploy forever.
	misnamed string
	// services are the compose services of the containers that run the
	// watched image, sorted.
	services []string
}

// sameImageOtherHost reports whether ref names ref's repository and tag on
// a different registry host.
func sameImageOtherHost(image string, ref registry.Ref) bool {
	host, rest, ok := strings.Cut(image, "/")
	return ok && host != ref.Host && rest == ref.Repository+":"+ref.Tag
}

// prover proves a digest that HEAD named with the manifest's bytes
// (*registry.Client).
type prover interface {
	Prove(ctx context.Context, repository, tag, digest string) error
}

// check compares the registry's digest with what runs, and returns a plan
// when a deploy is due.
func (u *Updater) check(ctx context.Context, s *service) (*plan, Result) {
	name := s.cfg.Name
	log := u.logger.With("service", name)
	started := u.now()
	res := Result{Service: name}

	remote, err := u.registry.Digest(ctx, s.ref.Repository, s.ref.Tag)
	if p, ok := u.registry.(prover); ok && err == nil && remote != s.guard.proved {
		// A digest not seen before is proved once with the manifest's
		// bytes: a wrong Docker-Content-Digest is a registry failure, not a
		// version to deploy.
		if err = p.Prove(ctx, s.ref.Repository, s.ref.Tag, remote); err == nil {
			s.guard.proved = remote
		}
	}
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

	// What runs is known without asking the engine while its event stream
	// reports every change; only "the registry's digest runs" is taken
	// from memory: anything that may lead to a deploy is read afresh.
	project := s.cfg.ComposeProject
	cur, known := u.running.get(name, project)
	if !known || !contains(cur.digests, remote) {
		tok := u.running.token(project)
		cur, err = u.current(ctx, s)
		if err == nil {
			u.running.put(name, project, tok, cur)
		}
	}
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
	services := s.cfg.ComposeServices
	if len(services) == 0 {
		services = cur.services
	}
	return &plan{remote: remote, current: cur, started: started, services: slices.Clone(services)}, res
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
	for _, c := range containers {
		if normalizeRef(c.Image) != s.ref.Local() {
			if sameImageOtherHost(normalizeRef(c.Image), s.ref) {
				cur.misnamed = c.Image
			}
			continue
		}
		if svc := c.Labels[docker.LabelService]; svc != "" && !slices.Contains(cur.services, svc) {
			cur.services = append(cur.services, svc)
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
	sort.Strings(cur.services)
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
