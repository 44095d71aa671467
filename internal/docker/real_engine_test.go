package docker

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"
)

// realSocket is where the Docker engine listens on the machines Dockward
// runs on.
const realSocket = "/var/run/docker.sock"

// TestRealEngine runs the client against the engine on this machine. It
// fails, rather than skips, without one: a client that has never met a real
// engine is not tested.
func TestRealEngine(t *testing.T) {
	if _, err := os.Stat(realSocket); err != nil {
		t.Fatalf("TestRealEngine needs a running Docker engine at %s: %v", realSocket, err)
	}
	c := New(realSocket, testLogger(t))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	version, err := c.Version(ctx)
	if err != nil {
		t.Fatalf("Version(): %v", err)
	}
	v, err := parseAPIVersion(version)
	if err != nil || maxVersion(t).less(v) {
		t.Fatalf("Version() = %q, %v, want a version no newer than %s", version, err, maxAPIVersion)
	}
	t.Logf("engine API version in use: %s", version)

	// The engine's own refusals of a version it does not serve are
	// recognised as such (Docker 20.10 words them "client version 1.11 is
	// too old. ..." and "... is too new. ...").
	for _, asked := range []string{"1.11", "1.99"} {
		_, err := c.roundTrip(ctx, "probe API "+asked, http.MethodGet, "/v"+asked+"/version", nil)
		apiErr, ok := errors.AsType[*APIError](err)
		if !ok || apiErr.StatusCode != http.StatusBadRequest || !isVersionRejection(apiErr.Message) {
			t.Errorf("GET /v%s/version = %v, want a 400 refusing the version", asked, err)
		} else {
			t.Logf("GET /v%s/version: %v", asked, err)
		}
	}

	project := "dockward-test-none-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	for _, all := range []bool{false, true} {
		containers, err := c.ListContainers(ctx, project, all)
		if err != nil || containers == nil || len(containers) != 0 {
			t.Errorf("ListContainers(%q, %v) = %#v, %v, want an empty slice", project, all, containers, err)
		}
	}

	for _, ref := range []string{"127.0.0.1:5000/dockward/missing:never", "dockward-missing@sha256:0000000000000000000000000000000000000000000000000000000000000000"} {
		if _, err := c.InspectImage(ctx, ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("InspectImage(%q) = %v, want ErrNotFound", ref, err)
		} else {
			t.Logf("InspectImage(%q): %v", ref, err)
		}
	}

	id := project + "-container"
	if _, err := c.InspectContainer(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("InspectContainer(%q) = %v, want ErrNotFound", id, err)
	}

	// The event stream opens, stays open while quiet, and ends with ctx.
	evCtx, evCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer evCancel()
	err = c.Events(evCtx, map[string][]string{"label": {"com.docker.compose.project=" + project}}, time.Time{}, nil, func(ev Event) {
		t.Errorf("Events() delivered %+v for a project with no containers", ev)
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Events() = %v, want the context's deadline", err)
	}
}

func maxVersion(t *testing.T) apiVersion {
	v, err := parseAPIVersion(maxAPIVersion)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
