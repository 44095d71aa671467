package watcher

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/compose"
	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/docker"
	"github.com/dockward/dockward/internal/notify"
	"github.com/dockward/dockward/internal/registry"
	"github.com/dockward/dockward/internal/state"
)

// The fakes are small structs of func fields. A world wires them to a tiny
// Docker host; a test replaces a field to inject a failure or a pause.

type fakeEngine struct {
	listContainers   func(ctx context.Context, project string, all bool) ([]docker.Container, error)
	inspectContainer func(ctx context.Context, id string) (docker.ContainerDetails, error)
	inspectImage     func(ctx context.Context, ref string) (docker.Image, error)
	tagImage         func(ctx context.Context, source, repo, tag string) error
}

var _ engine = (*fakeEngine)(nil)

func (f *fakeEngine) ListContainers(ctx context.Context, project string, all bool) ([]docker.Container, error) {
	return f.listContainers(ctx, project, all)
}

func (f *fakeEngine) InspectContainer(ctx context.Context, id string) (docker.ContainerDetails, error) {
	return f.inspectContainer(ctx, id)
}

func (f *fakeEngine) InspectImage(ctx context.Context, ref string) (docker.Image, error) {
	return f.inspectImage(ctx, ref)
}

func (f *fakeEngine) TagImage(ctx context.Context, source, repo, tag string) error {
	return f.tagImage(ctx, source, repo, tag)
}

type fakeDigester struct {
	digest func(ctx context.Context, repository, tag string) (string, error)
}

var _ digester = (*fakeDigester)(nil)

func (f *fakeDigester) Digest(ctx context.Context, repository, tag string) (string, error) {
	return f.digest(ctx, repository, tag)
}

type fakeComposer struct {
	pull func(ctx context.Context, p compose.Project, services ...string) error
	up   func(ctx context.Context, p compose.Project, opts compose.UpOptions) error
}

var _ composer = (*fakeComposer)(nil)

func (f *fakeComposer) Pull(ctx context.Context, p compose.Project, services ...string) error {
	return f.pull(ctx, p, services...)
}

func (f *fakeComposer) Up(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
	return f.up(ctx, p, opts)
}

type fakeNotifier struct {
	send func(a notify.Alert)
}

var _ notifier = (*fakeNotifier)(nil)

func (f *fakeNotifier) Send(a notify.Alert) { f.send(a) }

// testRegistryHost is the host of the registry in testConfig.
const testRegistryHost = "localhost:5000"

// behaviour is how a container created from an image behaves.
type behaviour int

const (
	behaveHealthy       behaviour = iota // healthcheck passes at once
	behaveSlowHealthy                    // healthcheck "starting" for slowStart, then healthy
	behaveUnhealthy                      // healthcheck fails
	behaveCrash                          // exits and is restarted by its restart policy, again and again
	behaveStarting                       // healthcheck never leaves "starting"
	behaveNoHealthcheck                  // stays up, has no healthcheck
)

// slowStart is how long a behaveSlowHealthy container reports "starting".
const slowStart = 15 * time.Second

// unhealthyOutput is the last probe output of a behaveUnhealthy container.
const unhealthyOutput = "GET /healthz: 500 Internal Server Error"

type fakeImage struct {
	id          string
	repoDigests []string // host/repo@sha256:...
	behaviour   behaviour
}

type fakeContainer struct {
	id, name string
	service  string // compose service
	image    string // the reference in the compose file (the container's config)
	imageID  string
	created  time.Time
	stopped  bool // exited, as after an engine restart without a restart policy
	exitCode int  // once stopped
}

// world is a tiny Docker host and registry. Each compose project has a web
// container from the watched image and a db container from postgres:16.
// Pull points the watched tag at the image of the registry's digest; Up
// recreates each container whose reference now names another image, so
// retagging the previous image and running Up really brings it back.
type world struct {
	mu         sync.Mutex
	projects   map[string]string           // compose project -> watched reference (host/repo:tag)
	images     map[string]*fakeImage       // by ID
	tags       map[string]string           // reference -> image ID
	containers map[string][]*fakeContainer // by project
	remote     map[string]string           // repository:tag -> digest in the registry
	behaviours map[string]behaviour        // registry digest -> how its image behaves once pulled
	calls      []string
	alerts     []notify.Alert
	nextImage  int
	nextCont   int

	engine   *fakeEngine
	registry *fakeDigester
	compose  *fakeComposer
	notify   *fakeNotifier
}

func newWorld() *world {
	w := &world{
		projects:   map[string]string{},
		images:     map[string]*fakeImage{"sha256:postgres16": {id: "sha256:postgres16", behaviour: behaveHealthy}},
		tags:       map[string]string{"postgres:16": "sha256:postgres16"},
		containers: map[string][]*fakeContainer{},
		remote:     map[string]string{},
		behaviours: map[string]behaviour{},
	}
	w.engine = &fakeEngine{
		listContainers:   w.listContainers,
		inspectContainer: w.inspectContainer,
		inspectImage:     w.inspectImage,
		tagImage:         w.tagImage,
	}
	w.registry = &fakeDigester{digest: w.digest}
	w.compose = &fakeComposer{pull: w.pull, up: w.up}
	w.notify = &fakeNotifier{send: func(a notify.Alert) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.alerts = append(w.alerts, a)
	}}
	return w
}

// digestOf returns a digest made of one repeated hex character.
func digestOf(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

// addProject adds a compose project whose web container runs name:latest,
// pulled earlier with digest d, and makes d the registry's current digest.
func (w *world) addProject(name, d string, b behaviour) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ref := testRegistryHost + "/" + name + ":latest"
	w.projects[name] = ref
	w.remote[name+":latest"] = d
	w.behaviours[d] = b
	id := w.imageLocked(testRegistryHost+"/"+name, d)
	w.tags[ref] = id
	w.containers[name] = []*fakeContainer{
		w.containerLocked(name, "web", ref, id),
		w.containerLocked(name, "db", "postgres:16", "sha256:postgres16"),
	}
}

// push makes d the registry's digest of name:latest.
func (w *world) push(name, d string, b behaviour) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.remote[name+":latest"] = d
	w.behaviours[d] = b
}

// setBehaviour changes how containers created from now on from the image
// with digest d behave; running containers follow at once.
func (w *world) setBehaviour(d string, b behaviour) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.behaviours[d] = b
	for _, img := range w.images {
		for _, rd := range img.repoDigests {
			if strings.HasSuffix(rd, "@"+d) {
				img.behaviour = b
			}
		}
	}
}

// imageOf returns the ID of the local image pulled with digest d.
func (w *world) imageOf(d string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, img := range w.images {
		for _, rd := range img.repoDigests {
			if strings.HasSuffix(rd, "@"+d) {
				return img.id
			}
		}
	}
	return ""
}

// running returns the image ID of the project's web container.
func (w *world) running(project string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.containers[project][0].imageID
}

// tag returns the image ID that a reference points to.
func (w *world) tag(ref string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.tags[ref]
}

func (w *world) record(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.calls = append(w.calls, fmt.Sprintf(format, args...))
}

// Calls returns the recorded registry, tag and compose calls.
func (w *world) Calls() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.calls...)
}

// count returns how many recorded calls start with prefix.
func (w *world) count(prefix string) int {
	n := 0
	for _, c := range w.Calls() {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// Alerts returns the alerts sent so far.
func (w *world) Alerts() []notify.Alert {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]notify.Alert(nil), w.alerts...)
}

// events returns the events of the alerts sent so far.
func (w *world) events() []notify.Event {
	var out []notify.Event
	for _, a := range w.Alerts() {
		out = append(out, a.Event)
	}
	return out
}

func (w *world) imageLocked(repo, d string) string {
	for _, img := range w.images {
		for _, rd := range img.repoDigests {
			if rd == repo+"@"+d {
				return img.id
			}
		}
	}
	w.nextImage++
	id := fmt.Sprintf("sha256:img%d", w.nextImage)
	w.images[id] = &fakeImage{id: id, repoDigests: []string{repo + "@" + d}, behaviour: w.behaviours[d]}
	return id
}

// containerLocked creates the container of a compose service.
func (w *world) containerLocked(project, service, ref, imageID string) *fakeContainer {
	w.nextCont++
	return &fakeContainer{id: fmt.Sprintf("c%d", w.nextCont), name: project + "-" + service + "-1", service: service,
		image: ref, imageID: imageID, created: time.Now()}
}

func (w *world) resolveLocked(ref string) (*fakeImage, bool) {
	if img, ok := w.images[ref]; ok {
		return img, true
	}
	img, ok := w.images[w.tags[normalizeRef(ref)]]
	return img, ok
}

func (w *world) digest(ctx context.Context, repository, tag string) (string, error) {
	w.record("digest %s:%s", repository, tag)
	w.mu.Lock()
	defer w.mu.Unlock()
	d, ok := w.remote[repository+":"+tag]
	if !ok {
		return "", fmt.Errorf("GET /v2/%s/manifests/%s: %w", repository, tag, registry.ErrNotFound)
	}
	return d, nil
}

func (w *world) pull(ctx context.Context, p compose.Project, services ...string) error {
	w.record("pull %s", strings.Join(append([]string{p.Name}, services...), " "))
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(services) > 0 && !slices.Contains(services, "web") {
		return nil // the watched image is web's
	}
	ref := w.projects[p.Name]
	repo := strings.TrimSuffix(ref, ":latest")
	d, ok := w.remote[strings.TrimPrefix(repo, testRegistryHost+"/")+":latest"]
	if !ok {
		return fmt.Errorf("pull %s: manifest unknown", ref)
	}
	w.tags[ref] = w.imageLocked(repo, d)
	return nil
}

func (w *world) up(ctx context.Context, p compose.Project, opts compose.UpOptions) error {
	call := []string{"up", p.Name}
	if opts.NoDeps && len(opts.Services) > 0 {
		call = append(call, "--no-deps")
	}
	if opts.NoPull {
		call = append(call, "--pull never")
	}
	w.record("%s", strings.Join(append(call, opts.Services...), " "))
	w.mu.Lock()
	defer w.mu.Unlock()
	cs := w.containers[p.Name]
	for i, c := range cs {
		if len(opts.Services) > 0 && !slices.Contains(opts.Services, c.service) {
			continue
		}
		img, ok := w.resolveLocked(c.image)
		if !ok {
			return fmt.Errorf("compose up: image %s not found", c.image)
		}
		switch {
		case img.id != c.imageID:
			cs[i] = w.containerLocked(p.Name, c.service, c.image, img.id)
		case c.stopped:
			c.stopped, c.created = false, time.Now()
		}
	}
	return nil
}

func (w *world) tagImage(ctx context.Context, source, repo, tag string) error {
	w.record("tag %s %s:%s", source, repo, tag)
	w.mu.Lock()
	defer w.mu.Unlock()
	img, ok := w.resolveLocked(source)
	if !ok {
		return fmt.Errorf("tag image %s: %w", source, docker.ErrNotFound)
	}
	w.tags[repo+":"+tag] = img.id
	return nil
}

func (w *world) inspectImage(ctx context.Context, ref string) (docker.Image, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	img, ok := w.resolveLocked(ref)
	if !ok {
		return docker.Image{}, fmt.Errorf("inspect image %s: %w", ref, docker.ErrNotFound)
	}
	out := docker.Image{ID: img.id, RepoDigests: append([]string(nil), img.repoDigests...)}
	for r, id := range w.tags {
		if id == img.id {
			out.RepoTags = append(out.RepoTags, r)
		}
	}
	return out, nil
}

func (w *world) listContainers(ctx context.Context, project string, all bool) ([]docker.Container, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := []docker.Container{}
	for _, c := range w.containers[project] {
		out = append(out, docker.Container{ID: c.id, Name: c.name, Image: c.image, ImageID: c.imageID, State: "running",
			Labels: map[string]string{docker.LabelProject: project, docker.LabelService: c.service}})
	}
	return out, nil
}

func (w *world) inspectContainer(ctx context.Context, id string) (docker.ContainerDetails, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for project, cs := range w.containers {
		for _, c := range cs {
			if c.id == id {
				d := docker.ContainerDetails{ID: c.id, Name: c.name, Image: c.image, ImageID: c.imageID,
					Labels: map[string]string{docker.LabelProject: project, docker.LabelService: c.service}}
				w.images[c.imageID].behaviour.apply(&d, time.Since(c.created))
				if c.stopped {
					d.State = docker.ContainerState{Status: "exited", ExitCode: c.exitCode}
				}
				return d, nil
			}
		}
	}
	return docker.ContainerDetails{}, fmt.Errorf("inspect container %s: %w", id, docker.ErrNotFound)
}

// apply sets the state of a container that has existed for age.
func (b behaviour) apply(d *docker.ContainerDetails, age time.Duration) {
	d.HasHealthcheck = b != behaveNoHealthcheck
	d.State = docker.ContainerState{Status: "running", Running: true}
	probe := func(status string, exit int, output string) {
		d.State.Health = &docker.Health{Status: status, Log: []docker.HealthLog{{ExitCode: exit, Output: output + "\n"}}}
	}
	switch b {
	case behaveHealthy:
		probe("healthy", 0, "ok")
	case behaveSlowHealthy:
		if age < slowStart {
			d.State.Health = &docker.Health{Status: "starting"}
		} else {
			probe("healthy", 0, "ok")
		}
	case behaveUnhealthy:
		probe("unhealthy", 1, unhealthyOutput)
	case behaveStarting:
		d.State.Health = &docker.Health{Status: "starting"}
	case behaveCrash:
		d.State = docker.ContainerState{Status: "restarting", Restarting: true, ExitCode: 1}
		d.RestartCount = 1 + int(age/(2*time.Second))
	}
}

// syncBuffer is a log sink that tests read while the updater writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// count returns how many log lines contain every one of parts.
func (b *syncBuffer) count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(b.String(), "\n") {
		all := line != ""
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// svc returns a service config with the defaults config.Load applies.
func svc(name string, autoUpdate bool) config.Service {
	return config.Service{
		Name:               name,
		Image:              name + ":latest",
		ComposeFile:        "/srv/" + name + "/compose.yml",
		ComposeProject:     name,
		AutoUpdate:         autoUpdate,
		AutoHeal:           true,
		HealthGrace:        60,
		HealCooldown:       300,
		HealthPollInterval: 5,
		HealVerifyDelay:    30,
		HealMaxRestarts:    3,
	}
}

func testConfig(services ...config.Service) *config.Config {
	cfg := config.Default()
	cfg.Registry.URL = "http://" + testRegistryHost
	cfg.Services = services
	return &cfg
}

// harness is an updater wired to a world, a real state store in a temp
// directory, real metrics and a captured log.
type harness struct {
	w       *world
	u       *Updater
	store   *state.Store
	metrics *Metrics
	logs    *syncBuffer
	logger  *slog.Logger
}

func newHarness(t *testing.T, w *world, services ...config.Service) *harness {
	t.Helper()
	store, err := state.Open(filepath.Join(t.TempDir(), "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	return newHarnessWithStore(t, w, store, services...)
}

// newHarnessWithStore is newHarness on a store that outlives the harness,
// as the state file outlives a process.
func newHarnessWithStore(t *testing.T, w *world, store *state.Store, services ...config.Service) *harness {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	metrics := NewMetrics("test", time.Now())
	u, err := NewUpdater(testConfig(services...), UpdaterDeps{
		Logger:   logger,
		Engine:   w.engine,
		Registry: w.registry,
		Compose:  w.compose,
		Notify:   w.notify,
		Store:    store,
		Metrics:  metrics,
	})
	if err != nil {
		t.Fatalf("NewUpdater: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("log:\n%s", logs)
		}
	})
	return &harness{w: w, u: u, store: store, metrics: metrics, logs: logs, logger: logger}
}

// trigger checks a service and waits for the result.
func (h *harness) trigger(t *testing.T, name string) Result {
	t.Helper()
	results, err := h.u.Trigger(name)
	if err != nil {
		t.Fatalf("Trigger(%q) = %v", name, err)
	}
	return <-results
}

// metric returns the value of one series in the metrics output, or "" if
// the series is missing.
func metric(t *testing.T, m *Metrics, series string) string {
	t.Helper()
	var b bytes.Buffer
	if err := m.WriteTo(&b, time.Now()); err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}
