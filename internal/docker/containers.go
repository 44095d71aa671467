package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Label keys docker compose puts on the containers it creates.
const (
	LabelProject = "com.docker.compose.project"
	LabelService = "com.docker.compose.service"
)

// Container is one entry of a container listing.
type Container struct {
	ID   string
	Name string // without the leading slash
	// Image is the reference the container was created from. The engine
	// shows the image ID here instead once that reference has been moved
	// to another image.
	Image   string
	ImageID string // sha256:...
	State   string // created, running, restarting, exited, ...
	Status  string // human text: "Up 2 hours (healthy)"
	Labels  map[string]string
}

// ListContainers lists the containers of a compose project, only running
// ones unless all is set. It never returns a nil slice without an error.
func (c *Client) ListContainers(ctx context.Context, project string, all bool) ([]Container, error) {
	filters, err := json.Marshal(map[string][]string{"label": {LabelProject + "=" + project}})
	if err != nil {
		return nil, fmt.Errorf("list containers of project %s: encode filters: %w", project, err)
	}
	req := request{
		op:     "list containers of project " + project,
		method: http.MethodGet,
		path:   "/containers/json",
		query:  url.Values{"all": {strconv.FormatBool(all)}, "filters": {string(filters)}},
	}
	var raw []struct {
		ID      string `json:"Id"`
		Names   []string
		Image   string
		ImageID string
		State   string
		Status  string
		Labels  map[string]string
	}
	if err := c.call(ctx, req, 0, &raw); err != nil {
		return nil, err
	}
	out := make([]Container, 0, len(raw))
	for _, r := range raw {
		out = append(out, Container{
			ID:      r.ID,
			Name:    primaryName(r.Names),
			Image:   r.Image,
			ImageID: r.ImageID,
			State:   r.State,
			Status:  r.Status,
			Labels:  r.Labels,
		})
	}
	return out, nil
}

// primaryName picks the container's own name from a listing's Names, which
// also holds legacy link aliases such as "/other/alias".
func primaryName(names []string) string {
	for _, n := range names {
		if n = strings.TrimPrefix(n, "/"); !strings.Contains(n, "/") {
			return n
		}
	}
	if len(names) > 0 {
		return strings.TrimPrefix(names[0], "/")
	}
	return ""
}

// ContainerDetails is what Dockward reads from a container inspection.
type ContainerDetails struct {
	ID             string
	Name           string // without the leading slash
	Image          string // the reference from the container's config
	ImageID        string // sha256:...
	Labels         map[string]string
	State          ContainerState
	RestartCount   int
	HasHealthcheck bool   // a healthcheck is configured and not disabled
	Service        string // the com.docker.compose.service label
	RestartPolicy  string // "no" (or ""), "always", "unless-stopped", "on-failure"
}

// ContainerState is the engine's State object; the fields carry the engine's
// names so it decodes as is.
type ContainerState struct {
	Status     string // created, running, paused, restarting, removing, exited, dead
	Running    bool
	Restarting bool
	OOMKilled  bool
	Dead       bool
	ExitCode   int
	Error      string
	StartedAt  time.Time
	FinishedAt time.Time // zero time (0001-01-01) while never exited
	Health     *Health   // nil without a healthcheck
}

// Health is the result of a container's healthcheck.
type Health struct {
	Status        string // starting, healthy, unhealthy
	FailingStreak int
	Log           []HealthLog // the last few probes, oldest first
}

// HealthLog is one healthcheck probe.
type HealthLog struct {
	Start    time.Time
	End      time.Time
	ExitCode int
	Output   string
}

// LastOutput returns the trimmed output of the latest probe, or "" when
// there is none.
func (h *Health) LastOutput() string {
	if h == nil || len(h.Log) == 0 {
		return ""
	}
	return strings.TrimSpace(h.Log[len(h.Log)-1].Output)
}

// InspectContainer inspects a container by ID or name. A missing container
// is an error matching ErrNotFound.
func (c *Client) InspectContainer(ctx context.Context, id string) (ContainerDetails, error) {
	if err := checkPathRef(id); err != nil {
		return ContainerDetails{}, fmt.Errorf("inspect container: %w", err)
	}
	req := request{
		op:     "inspect container " + id,
		method: http.MethodGet,
		path:   "/containers/" + id + "/json",
	}
	var raw struct {
		ID           string `json:"Id"`
		Name         string
		Image        string // the image ID
		RestartCount int
		State        ContainerState
		Config       struct {
			Image       string
			Labels      map[string]string
			Healthcheck *struct{ Test []string }
		}
		HostConfig struct {
			RestartPolicy struct{ Name string }
		}
	}
	if err := c.call(ctx, req, 0, &raw); err != nil {
		return ContainerDetails{}, err
	}
	hc := raw.Config.Healthcheck
	return ContainerDetails{
		ID:             raw.ID,
		Name:           strings.TrimPrefix(raw.Name, "/"),
		Image:          raw.Config.Image,
		ImageID:        raw.Image,
		Labels:         raw.Config.Labels,
		State:          raw.State,
		RestartCount:   raw.RestartCount,
		HasHealthcheck: hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE",
		Service:        raw.Config.Labels[LabelService],
		RestartPolicy:  raw.HostConfig.RestartPolicy.Name,
	}, nil
}

// RestartContainer restarts a container, giving it stopTimeout (rounded up
// to whole seconds) to stop before it is killed.
func (c *Client) RestartContainer(ctx context.Context, id string, stopTimeout time.Duration) error {
	if err := checkPathRef(id); err != nil {
		return fmt.Errorf("restart container: %w", err)
	}
	seconds := int64(max(stopTimeout, 0)+time.Second-1) / int64(time.Second)
	req := request{
		op:     "restart container " + id,
		method: http.MethodPost,
		path:   "/containers/" + id + "/restart",
		query:  url.Values{"t": {strconv.FormatInt(seconds, 10)}},
	}
	// The engine answers once the container is back up, so the call must
	// outlast the stop timeout.
	return c.call(ctx, req, time.Duration(seconds)*time.Second+c.timeout, nil)
}
