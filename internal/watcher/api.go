package watcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"
)

// API is Dockward's HTTP interface. It is served on 127.0.0.1 only.
type API struct {
	updater *Updater
	metrics *Metrics
	logger  *slog.Logger
	version string
	now     func() time.Time

	// What GET /status and the page read.
	services serviceSource
	state    stateSource
	seen     observationSource
	engine   engineVersioner
	compose  string
	started  time.Time
	page     *template.Template
	// eventsToken enables POST /registry/events when set.
	eventsToken string
}

// APIDeps are what the API serves and reads.
type APIDeps struct {
	Updater *Updater
	Metrics *Metrics
	Store   stateSource     // *state.Store
	Engine  engineVersioner // *docker.Client; nil: engine unknown
	Logger  *slog.Logger
	Version string
	Compose string    // the compose in use, as compose.Runner.Version says
	Started time.Time // when the process started
	// Token, when set, is the bearer token that POST and DELETE need.
	Token string
	// EventsToken, when set, enables POST /registry/events: a registry's
	// push notifications, sent with "Authorization: Bearer <EventsToken>",
	// schedule checks. Without it the route does not exist.
	EventsToken string
	Now         func() time.Time // time.Now when nil
}

// NewAPI returns the HTTP handler for every route, behind the guards.
func NewAPI(deps APIDeps) http.Handler {
	a := &API{
		updater: deps.Updater, metrics: deps.Metrics, logger: deps.Logger, version: deps.Version, now: deps.Now,
		services: deps.Updater, state: deps.Store, seen: deps.Metrics, engine: deps.Engine,
		compose: deps.Compose, started: deps.Started, eventsToken: deps.EventsToken, page: parsePage(),
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.started.IsZero() {
		a.started = a.now()
	}
	return guarded(a.routes(), deps.Token)
}

// routes declares every route in one place. Methods are checked by the
// handlers so that a wrong method gets a JSON 405 with an Allow header.
func (a *API) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/health", methods{http.MethodGet: a.health})
	mux.Handle("/metrics", methods{http.MethodGet: a.serveMetrics})
	mux.Handle("/status", methods{http.MethodGet: a.status})
	mux.Handle("/trigger", methods{http.MethodPost: a.triggerAll})
	mux.Handle("/trigger/{name}", methods{http.MethodPost: a.triggerOne})
	mux.Handle("/blocked", methods{http.MethodGet: a.blocked})
	mux.Handle("/blocked/{name}", methods{http.MethodDelete: a.unblock})
	if a.eventsToken != "" {
		events := newRegistryEvents(a.updater, a.metrics, a.logger, a.eventsToken)
		mux.Handle(registryEventsPath, methods{http.MethodPost: events.serve})
	}
	// "/" matches every path no other route does: the page is served at
	// "/" exactly and anything else is a JSON 404.
	page := methods{http.MethodGet: a.servePage}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			writeError(w, http.StatusNotFound, "no route for "+r.URL.Path)
			return
		}
		page.ServeHTTP(w, r)
	})
	return mux
}

// methods maps HTTP methods to handlers; HEAD is served by GET.
type methods map[string]http.HandlerFunc

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	if h, ok := m[method]; ok {
		h(w, r)
		return
	}
	allowed := make([]string, 0, len(m))
	for k := range m {
		allowed = append(allowed, k)
	}
	sort.Strings(allowed)
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; use "+strings.Join(allowed, " or "))
}

func (a *API) health(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{"status": "ok", "version": a.version, "services": len(a.updater.Services())}
	if lp := a.metrics.LastPoll(); !lp.IsZero() {
		body["last_poll"] = lp.UTC().Format(time.RFC3339)
	}
	if reason, paused := a.updater.DeploysPaused(); paused {
		body["status"], body["reason"] = "deploys_paused", reason
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *API) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.buildStatus(a.now()))
}

func (a *API) serveMetrics(w http.ResponseWriter, r *http.Request) {
	var buf bytes.Buffer
	if err := a.metrics.WriteTo(&buf, a.now()); err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write(buf.Bytes())
}

// wait reports whether the caller asked to wait for the outcome (?wait=true).
func wait(r *http.Request) bool {
	switch r.URL.Query().Get("wait") {
	case "1", "true", "yes":
		return true
	}
	return false
}

// triggerOne checks one service now. Without ?wait it answers 202 at once;
// with it, the answer is the check's result.
func (a *API) triggerOne(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	results, err := a.updater.Trigger(name)
	if err != nil {
		writeTriggerError(w, name, err)
		return
	}
	a.logger.Info("check triggered through the API", "service", name)
	if !wait(r) {
		writeJSON(w, http.StatusAccepted, map[string]string{"service": name, "status": "triggered"})
		return
	}
	answer := waitLonger(w)
	select {
	case res := <-results:
		answer()
		writeJSON(w, http.StatusOK, res)
	case <-r.Context().Done():
	}
}

// triggerAll checks every auto_update service now, like a poll.
func (a *API) triggerAll(w http.ResponseWriter, r *http.Request) {
	type started struct {
		name    string
		results <-chan Result
	}
	var runs []started
	body := map[string][]string{"triggered": {}, "busy": {}}
	for _, name := range a.updater.Services() {
		s, ok := a.updater.lookup(name)
		if !ok || !s.cfg.AutoUpdate {
			continue
		}
		results, err := a.updater.Trigger(name)
		switch {
		case errors.Is(err, ErrBusy):
			body["busy"] = append(body["busy"], name)
		case errors.Is(err, ErrStopping), errors.Is(err, ErrPaused):
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		case err != nil:
			a.logger.Warn("trigger", "service", name, "err", err)
		default:
			body["triggered"] = append(body["triggered"], name)
			runs = append(runs, started{name, results})
		}
	}
	a.logger.Info("check of all services triggered through the API", "triggered", body["triggered"], "busy", body["busy"])
	if !wait(r) {
		writeJSON(w, http.StatusAccepted, body)
		return
	}
	answer := waitLonger(w)
	out := struct {
		Results []Result `json:"results"`
		Busy    []string `json:"busy"`
	}{Results: []Result{}, Busy: body["busy"]}
	for _, run := range runs {
		select {
		case res := <-run.results:
			out.Results = append(out.Results, res)
		case <-r.Context().Done():
			return
		}
	}
	answer()
	writeJSON(w, http.StatusOK, out)
}

// answerTimeout bounds writing the answer of a ?wait=true trigger.
const answerTimeout = 30 * time.Second

// waitLonger lifts the server's read and write deadlines while a ?wait=true
// trigger waits for its deploy, which takes as long as the grace periods and
// compose allow. The client going away still ends the wait (the request's
// context). The returned func sets a write deadline for the answer, so a
// client that does not read it cannot hold the connection.
func waitLonger(w http.ResponseWriter) (answer func()) {
	rc := http.NewResponseController(w)
	// Errors mean a writer without deadlines (a test recorder): nothing to lift.
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
	return func() { rc.SetWriteDeadline(time.Now().Add(answerTimeout)) }
}

func writeTriggerError(w http.ResponseWriter, name string, err error) {
	switch {
	case errors.Is(err, ErrUnknownService):
		writeError(w, http.StatusNotFound, "no service named "+quote(name))
	case errors.Is(err, ErrBusy):
		writeError(w, http.StatusConflict, name+": "+err.Error())
	case errors.Is(err, ErrNoImage):
		writeError(w, http.StatusBadRequest, name+": "+err.Error())
	case errors.Is(err, ErrStopping), errors.Is(err, ErrPaused):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

type blockedEntry struct {
	Service string    `json:"service"`
	Digest  string    `json:"digest"`
	Since   time.Time `json:"since"`
	Reason  string    `json:"reason"`
}

func (a *API) blocked(w http.ResponseWriter, r *http.Request) {
	all := a.updater.Blocked()
	list := make([]blockedEntry, 0, len(all))
	for name, b := range all {
		list = append(list, blockedEntry{Service: name, Digest: b.Digest, Since: b.Since, Reason: b.Reason})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Service < list[j].Service })
	writeJSON(w, http.StatusOK, map[string]any{"blocked": list})
}

func (a *API) unblock(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	b, was, err := a.updater.Unblock(name)
	switch {
	case errors.Is(err, ErrUnknownService):
		writeError(w, http.StatusNotFound, "no service named "+quote(name))
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	body := map[string]any{"service": name, "was_blocked": was}
	if was {
		body["digest"] = b.Digest
	}
	writeJSON(w, http.StatusOK, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, `{"error":"encode response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
