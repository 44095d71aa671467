package watcher

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
)

// Media types of a registry's notification envelope: distribution 2.x
// (Debian's docker-registry) sends v1, distribution 3 sends v2 with the
// same fields that Dockward reads.
const (
	eventsMediaTypeV1 = "application/vnd.docker.distribution.events.v1+json"
	eventsMediaTypeV2 = "application/vnd.docker.distribution.events.v2+json"
)

// registryEventsPath is where a registry sends its notifications.
const registryEventsPath = "/registry/events"

// maxEventsBody bounds an envelope, as the API's guard bounds every body.
// The registry sends a few events per request, each under a kilobyte.
const maxEventsBody = 64 << 10

// Results counted in watcher_registry_events_total. A request that is
// refused as a whole counts once, with action "none".
const (
	eventScheduled    = "scheduled"              // a push of a watched tag: a check was scheduled
	eventIgnored      = "ignored"                // not a push, no tag, or no service watches it
	eventUnauthorized = "unauthorized"           // no or wrong bearer token
	eventBadType      = "unsupported_media_type" // not a notification envelope
	eventMalformed    = "malformed"              // not valid envelope JSON
	eventTooLarge     = "too_large"              // body over maxEventsBody
)

// envelope is the body of a registry notification: one or more events.
// Only the fields Dockward uses are decoded; others are allowed.
type envelope struct {
	Events *[]registryEvent `json:"events"`
}

type registryEvent struct {
	ID     string `json:"id"`
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Digest     string `json:"digest"`
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
	} `json:"target"`
}

// registryEvents serves POST /registry/events: a registry's push
// notifications schedule checks of the services that watch the pushed tag.
type registryEvents struct {
	updater *Updater
	metrics *Metrics
	logger  *slog.Logger
	// tokenSum is the SHA-256 of the token: comparing digests of equal
	// length keeps the comparison constant-time in the token's length too.
	tokenSum [sha256.Size]byte
	// refusing is set while requests are refused for their token, so
	// that a misconfigured registry retrying is logged once, not forever.
	refusing atomic.Bool
}

func newRegistryEvents(u *Updater, m *Metrics, logger *slog.Logger, token string) *registryEvents {
	return &registryEvents{updater: u, metrics: m, logger: logger, tokenSum: sha256.Sum256([]byte(token))}
}

// authorized reports whether r carries "Authorization: Bearer <token>".
func (e *registryEvents) authorized(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	return subtle.ConstantTimeCompare(sum[:], e.tokenSum[:]) == 1
}

func (e *registryEvents) serve(w http.ResponseWriter, r *http.Request) {
	// The token is checked before anything of the body is read.
	if !e.authorized(r) {
		e.metrics.RegistryEvent("none", eventUnauthorized)
		if !e.refusing.Swap(true) {
			e.logger.Warn("registry event refused: missing or wrong bearer token (registry.events_token); later refusals are logged at debug level",
				"remote", r.RemoteAddr)
		} else {
			e.logger.Debug("registry event refused: missing or wrong bearer token", "remote", r.RemoteAddr)
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="dockward registry events"`)
		writeError(w, http.StatusUnauthorized, "registry events need Authorization: Bearer <registry.events_token>")
		return
	}
	if e.refusing.Swap(false) {
		e.logger.Info("registry events are accepted again")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != eventsMediaTypeV1 && mt != eventsMediaTypeV2) {
		e.metrics.RegistryEvent("none", eventBadType)
		writeError(w, http.StatusUnsupportedMediaType, "Content-Type must be "+eventsMediaTypeV1+" (a registry notification envelope)")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEventsBody))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		e.metrics.RegistryEvent("none", eventTooLarge)
		writeError(w, http.StatusRequestEntityTooLarge, "a notification envelope must be at most 64 KiB")
		return
	case err != nil:
		e.metrics.RegistryEvent("none", eventMalformed)
		writeError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	events, err := parseEnvelope(body)
	if err != nil {
		e.metrics.RegistryEvent("none", eventMalformed)
		writeError(w, http.StatusBadRequest, "not a notification envelope: "+err.Error())
		return
	}

	var scheduled []string
	seen := map[string]bool{}
	// The last push of a tag in the envelope is the digest to expect.
	expect := map[string]string{}
	for _, ev := range events {
		for _, name := range e.match(ev) {
			expect[name] = ev.Target.Digest
		}
	}
	ignored := 0
	for _, ev := range events {
		names := e.match(ev)
		if len(names) == 0 {
			ignored++
			e.metrics.RegistryEvent(actionLabel(ev.Action), eventIgnored)
			continue
		}
		e.metrics.RegistryEvent(actionLabel(ev.Action), eventScheduled)
		for _, name := range names {
			if seen[name] {
				continue // several events for one service in one envelope: one check
			}
			seen[name] = true
			if err := e.updater.Schedule(name, expect[name]); err != nil {
				e.logger.Debug("registry push event: check not scheduled", "service", name, "err", err)
				continue
			}
			scheduled = append(scheduled, name)
			e.logger.Info("registry push event: checking now", "service", name,
				"image", ev.Target.Repository+":"+ev.Target.Tag, "event_digest", ev.Target.Digest)
		}
	}
	if scheduled == nil {
		scheduled = []string{}
	}
	// Any 2xx tells the registry the envelope was delivered; it retries
	// anything else, forever.
	writeJSON(w, http.StatusOK, map[string]any{"events": len(events), "ignored": ignored, "scheduled": scheduled})
}

// parseEnvelope decodes a notification envelope. It must be one JSON
// object with an "events" list; unknown fields are allowed.
func parseEnvelope(body []byte) ([]registryEvent, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	var env envelope
	if err := dec.Decode(&env); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the envelope")
	}
	if env.Events == nil {
		return nil, errors.New(`no "events" list`)
	}
	return *env.Events, nil
}

// match returns the auto_update services that a push event asks to check:
// a push of a manifest under a tag that the service watches. Pulls, deletes,
// blob pushes and manifests pushed by digest only match nothing.
func (e *registryEvents) match(ev registryEvent) []string {
	if ev.Action != "push" || ev.Target.Tag == "" || ev.Target.Repository == "" {
		return nil
	}
	return e.updater.watching(ev.Target.Repository, ev.Target.Tag)
}

// watching returns the auto_update services that watch repository:tag.
func (u *Updater) watching(repository, tag string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []string
	for _, name := range u.order {
		s := u.services[name]
		if s.cfg.AutoUpdate && s.cfg.Image != "" && s.ref.Repository == repository && s.ref.Tag == tag {
			out = append(out, name)
		}
	}
	return out
}

// actionLabel bounds the action label to the registry's known actions.
func actionLabel(a string) string {
	switch a {
	case "push", "pull", "delete", "mount":
		return a
	}
	return "other"
}
