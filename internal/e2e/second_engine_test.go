package e2e

import (
	"strings"
	"testing"
)

// With docker.socket on a second engine (as with rootless Docker), every
// engine call of a deploy goes there, compose's included, even when
// dockward's environment names the default engine: a good push is deployed
// and a bad one rolled back on the second engine, and the default engine,
// left running, sees no container, no pull and no tag of the service.
func TestSecondEngine(t *testing.T) {
	t.Parallel()
	e := startEngine(t)
	s := newScenario(t, "second")
	e.use(s)
	s.pollInterval = 3600
	s.grace = 5
	// An inherited DOCKER_HOST or DOCKER_CONTEXT must not win over
	// docker.socket.
	s.env = []string{"DOCKER_HOST=unix:///var/run/docker.sock", "DOCKER_CONTEXT=default"}
	events := watchEvents(t, s.host+"/"+s.repo, s.project)

	s.push(healthyImage)
	s.up()
	s.start()
	logs := s.proc.logs()
	if countLines(logs, "dockward started", "engine="+e.host+" ") != 1 {
		t.Errorf("the start line does not name the engine %s:\n%s", e.host, logs)
	}
	if countLines(logs, "level=WARN", "DOCKER_HOST=unix:///var/run/docker.sock differs from docker.socket "+e.socket) != 1 {
		t.Errorf("no warning that DOCKER_HOST names another engine:\n%s", logs)
	}

	v2 := s.push(healthyImage)
	if r := s.trigger(); r.Outcome != "deployed" || r.Digest != v2 {
		t.Fatalf("trigger = %+v, want deployed %s", r, v2)
	}
	if ok, detail := s.runs(v2); !ok {
		t.Fatalf("on the second engine after the deploy: %s", detail)
	}
	bad := s.push(unhealthyImage)
	if r := s.trigger(); r.Outcome != "rolled_back" || r.Digest != bad {
		t.Fatalf("trigger = %+v, want rolled_back %s", r, bad)
	}
	if ok, detail := s.runs(v2); !ok {
		t.Errorf("on the second engine after the rollback: %s", detail)
	}
	if b := s.blocked(); b != bad {
		t.Errorf("blocked %q, want %s", b, bad)
	}
	rb := s.docker("image", "inspect", "-f", "{{json .RepoDigests}}", s.ref("rollback"))
	if !strings.Contains(rb, v2) {
		t.Errorf("%s on the second engine has RepoDigests %s, want v2 %s, what ran before the bad push", s.ref("rollback"), rb, v2)
	}

	// The default engine: nothing of the service, at any time.
	events.sync()
	if got := events.matched(); len(got) > 0 {
		t.Errorf("the default engine saw %d events of the service's image or project, want none:\n%s", len(got), strings.Join(got, "\n"))
	}
	if out := docker(t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project); strings.TrimSpace(out) != "" {
		t.Errorf("the default engine has containers of project %s: %s", s.project, out)
	}
	if out := docker(t, "images", "-q", s.host+"/"+s.repo); strings.TrimSpace(out) != "" {
		t.Errorf("the default engine has images of %s: %s", s.host+"/"+s.repo, out)
	}
}
