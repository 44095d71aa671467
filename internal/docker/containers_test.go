package docker

import (
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestListContainers(t *testing.T) {
	// The filter as the docker CLI sends it: JSON, then query-escaped.
	const filters = "filters=%7B%22label%22%3A%5B%22com.docker.compose.project%3Dshop%22%5D%7D"
	want := []Container{
		{
			ID:      "4f1c2d9a8b7e6f5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a29180f7e6d5c",
			Name:    "shop-web-1",
			Image:   "127.0.0.1:5000/shop/web:latest",
			ImageID: "sha256:9b2f1e0d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
			State:   "running",
			Status:  "Up 2 hours (healthy)",
			Labels: map[string]string{
				"com.docker.compose.config-hash":          "5e0f2a7f0c1b9d3f6e8a4c2b1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e",
				"com.docker.compose.container-number":     "1",
				"com.docker.compose.depends_on":           "",
				"com.docker.compose.image":                "sha256:9b2f1e0d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
				"com.docker.compose.oneoff":               "False",
				"com.docker.compose.project":              "shop",
				"com.docker.compose.project.config_files": "/srv/shop/compose.yaml",
				"com.docker.compose.project.working_dir":  "/srv/shop",
				"com.docker.compose.service":              "web",
				"com.docker.compose.version":              "2.20.2",
			},
		},
		{
			ID:      "a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff",
			Name:    "shop-worker-1", // not its link alias /shop-web-1/worker
			Image:   "sha256:0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091",
			ImageID: "sha256:0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091",
			State:   "exited",
			Status:  "Exited (1) 5 minutes ago",
			Labels: map[string]string{
				"com.docker.compose.container-number": "1",
				"com.docker.compose.oneoff":           "False",
				"com.docker.compose.project":          "shop",
				"com.docker.compose.service":          "worker",
				"com.docker.compose.version":          "2.20.2",
			},
		},
	}
	tests := []struct {
		all     bool
		wantURI string
	}{
		{false, "GET /v1.41/containers/json?all=false&" + filters},
		{true, "GET /v1.41/containers/json?all=true&" + filters},
	}
	for _, tt := range tests {
		c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
			"GET /containers/json": serveFixture(t, 200, "containers_shop.json"),
		})
		got, err := c.ListContainers(t.Context(), "shop", tt.all)
		if err != nil {
			t.Fatalf("ListContainers(%q, %v): %v", "shop", tt.all, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("ListContainers(%q, %v) = %+v, want %+v", "shop", tt.all, got, want)
		}
		if reqs := e.received(); reqs[len(reqs)-1] != tt.wantURI {
			t.Errorf("ListContainers(%q, %v) sent %q, want %q", "shop", tt.all, reqs[len(reqs)-1], tt.wantURI)
		}
	}
}

func TestListContainersNone(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /containers/json": func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, []byte("[]\n")) },
	})
	got, err := c.ListContainers(t.Context(), "nothing", true)
	if err != nil || got == nil || len(got) != 0 {
		t.Errorf("ListContainers(%q, true) = %#v, %v, want an empty slice", "nothing", got, err)
	}
}

func TestInspectContainer(t *testing.T) {
	tests := []struct {
		fixture string
		want    ContainerDetails
	}{
		{
			fixture: "container_web_unhealthy.json",
			want: ContainerDetails{
				ID:      "4f1c2d9a8b7e6f5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a29180f7e6d5c",
				Name:    "shop-web-1",
				Image:   "127.0.0.1:5000/shop/web:latest",
				ImageID: "sha256:9b2f1e0d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
				Labels: map[string]string{
					"com.docker.compose.config-hash":         "5e0f2a7f0c1b9d3f6e8a4c2b1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e",
					"com.docker.compose.container-number":    "1",
					"com.docker.compose.oneoff":              "False",
					"com.docker.compose.project":             "shop",
					"com.docker.compose.project.working_dir": "/srv/shop",
					"com.docker.compose.service":             "web",
					"com.docker.compose.version":             "2.20.2",
				},
				State: ContainerState{
					Status:     "running",
					Running:    true,
					StartedAt:  mustTime(t, "2026-11-26T00:00:01.482019733Z"),
					FinishedAt: mustTime(t, "2026-11-25T23:59:58.907112640Z"),
					Health: &Health{
						Status:        "unhealthy",
						FailingStreak: 3,
						Log: []HealthLog{
							{
								Start:  mustTime(t, "2026-11-26T01:58:00.001927402Z"),
								End:    mustTime(t, "2026-11-26T01:58:00.118364811Z"),
								Output: "ok\n",
							},
							{
								Start:    mustTime(t, "2026-11-26T01:58:30.120771520Z"),
								End:      mustTime(t, "2026-11-26T01:58:35.121046978Z"),
								ExitCode: -1,
								Output:   "Health check exceeded timeout (5s)",
							},
							{
								Start:    mustTime(t, "2026-11-26T01:59:05.123101884Z"),
								End:      mustTime(t, "2026-11-26T01:59:05.201996114Z"),
								ExitCode: 1,
								Output:   "wget: server returned error: HTTP/1.1 503 Service Unavailable\n",
							},
						},
					},
				},
				RestartCount:   2,
				HasHealthcheck: true,
				Service:        "web",
				RestartPolicy:  "unless-stopped",
			},
		},
		{
			fixture: "container_worker_oomkilled.json",
			want: ContainerDetails{
				ID:      "a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff",
				Name:    "shop-worker-1",
				Image:   "127.0.0.1:5000/shop/worker:v1.4.2",
				ImageID: "sha256:0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091",
				Labels: map[string]string{
					"com.docker.compose.container-number": "1",
					"com.docker.compose.oneoff":           "False",
					"com.docker.compose.project":          "shop",
					"com.docker.compose.service":          "worker",
					"com.docker.compose.version":          "2.20.2",
				},
				State: ContainerState{
					Status:     "exited",
					OOMKilled:  true,
					ExitCode:   137,
					StartedAt:  mustTime(t, "2026-11-26T01:50:12.004417393Z"),
					FinishedAt: mustTime(t, "2026-11-26T01:54:40.662105377Z"),
				},
				Service:       "worker",
				RestartPolicy: "unless-stopped",
			},
		},
		{
			fixture: "container_db_healthcheck_none.json",
			want: ContainerDetails{
				ID:      "c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2",
				Name:    "shop-db-1",
				Image:   "postgres:16",
				ImageID: "sha256:5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c",
				Labels: map[string]string{
					"com.docker.compose.project": "shop",
					"com.docker.compose.service": "db",
				},
				State:         ContainerState{Status: "created"}, // 0001-01-01T00:00:00Z is the zero time
				Service:       "db",
				RestartPolicy: "unless-stopped",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
				"GET /containers/" + tt.want.Name + "/json": serveFixture(t, 200, tt.fixture),
			})
			got, err := c.InspectContainer(t.Context(), tt.want.Name)
			if err != nil {
				t.Fatalf("InspectContainer(%q): %v", tt.want.Name, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("InspectContainer(%q) =\n%+v\nwant\n%+v", tt.want.Name, got, tt.want)
			}
			if reqs := e.received(); reqs[1] != "GET /v1.41/containers/"+tt.want.Name+"/json" {
				t.Errorf("InspectContainer(%q) sent %q", tt.want.Name, reqs[1])
			}
		})
	}
}

func TestInspectContainerNotFound(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /containers/abc123/json": serveError(404, "No such container: abc123"),
	})
	_, err := c.InspectContainer(t.Context(), "abc123")
	const want = "inspect container abc123: docker API 404: No such container: abc123"
	if !errors.Is(err, ErrNotFound) || err.Error() != want {
		t.Errorf("InspectContainer(%q) = %v, want ErrNotFound reading %q", "abc123", err, want)
	}
}

func TestHealthLastOutput(t *testing.T) {
	tests := []struct {
		name   string
		health *Health
		want   string
	}{
		{"no healthcheck", nil, ""},
		{"no probe yet", &Health{Status: "starting"}, ""},
		{"last of several, trimmed", &Health{Log: []HealthLog{{Output: "first"}, {Output: "  connection refused\n"}}}, "connection refused"},
	}
	for _, tt := range tests {
		if got := tt.health.LastOutput(); got != tt.want {
			t.Errorf("%s: LastOutput() = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestRestartContainer(t *testing.T) {
	tests := []struct {
		stopTimeout time.Duration
		wantT       string
	}{
		{10 * time.Second, "10"},
		{1500 * time.Millisecond, "2"},
		{0, "0"},
		{-time.Second, "0"},
	}
	for _, tt := range tests {
		c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
			"POST /containers/shop-web-1/restart": func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusNoContent)
			},
		})
		if err := c.RestartContainer(t.Context(), "shop-web-1", tt.stopTimeout); err != nil {
			t.Fatalf("RestartContainer(%q, %s): %v", "shop-web-1", tt.stopTimeout, err)
		}
		want := "POST /v1.41/containers/shop-web-1/restart?t=" + tt.wantT
		if reqs := e.received(); reqs[1] != want {
			t.Errorf("RestartContainer(%q, %s) sent %q, want %q", "shop-web-1", tt.stopTimeout, reqs[1], want)
		}
	}
}

// The engine answers a restart only once the container is up again, so the
// call must be allowed longer than the stop timeout.
func TestRestartContainerOutlastsCallTimeout(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"POST /containers/slow/restart": func(w http.ResponseWriter, r *http.Request) {
			select { // stopping, within t=1
			case <-time.After(300 * time.Millisecond):
				w.WriteHeader(http.StatusNoContent)
			case <-r.Context().Done():
			}
		},
		"POST /containers/missing/restart": serveError(404, "No such container: missing"),
	})
	shortenTimeout(t, c, 100*time.Millisecond)
	if err := c.RestartContainer(t.Context(), "slow", time.Second); err != nil {
		t.Errorf("RestartContainer(%q, 1s) with a 100ms call timeout: %v", "slow", err)
	}
	err := c.RestartContainer(t.Context(), "missing", time.Second)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("RestartContainer(%q, 1s) = %v, want ErrNotFound", "missing", err)
	}
}
