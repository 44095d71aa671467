package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// A compose project of three services, each from its own repository of the
// test registry: web (watched), db and worker. A newer db is in the
// registry too. A deploy of web pulls and recreates web only: db and worker
// keep their containers, and db's new image is not pulled. A bad web push
// is rolled back, web only.
func TestMultiServiceDeployTouchesOnlyTheWatchedService(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "multi")
	s.pollInterval = 3600
	s.grace = 4
	dbRepo, workerRepo := s.repo+"-db", s.repo+"-worker"
	t.Cleanup(func() {
		for _, repo := range []string{dbRepo, workerRepo} {
			out, _ := s.tryDocker("images", "-q", s.host+"/"+repo)
			if ids := strings.Fields(out); len(ids) > 0 {
				s.tryDocker(append([]string{"rmi", "-f"}, ids...)...)
			}
		}
	})

	web1 := s.push(healthyImage)
	db1 := s.pushTo(dbRepo, healthyImage)
	worker1 := s.pushTo(workerRepo, image{mode: "healthy", noHealthcheck: true})
	y := fmt.Sprintf(`version: "2.4"
services:
  web:
    image: %s
    network_mode: none
    restart: "no"
    stop_grace_period: 2s
  db:
    image: %s
    network_mode: none
    restart: "no"
    stop_grace_period: 2s
  worker:
    image: %s
    network_mode: none
    restart: "no"
    stop_grace_period: 2s
    depends_on: [db]
`, s.ref("latest"), s.host+"/"+dbRepo+":latest", s.host+"/"+workerRepo+":latest")
	if err := os.WriteFile(s.compose, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	s.composeTool("-f", s.compose, "-p", s.project, "up", "-d")

	// A new db digest is in the registry; the engine must never get it.
	// Built here, it is removed from the engine again at once.
	db2 := s.pushTo(dbRepo, healthyImage)
	s.docker("rmi", s.host+"/"+dbRepo+":latest")
	if s.hasImage(dbRepo, db2) {
		t.Fatalf("db's new digest %s is still on the engine before the test", db2)
	}

	before := s.serviceContainers()
	for _, svc := range []string{"web", "db", "worker"} {
		if before[svc] == "" {
			t.Fatalf("no running %s container after compose up: %v", svc, before)
		}
	}
	s.start()
	s.checkCompose()

	// A good web push: web only.
	web2 := s.push(healthyImage)
	start := time.Now()
	if r := s.trigger(); r.Outcome != "deployed" || r.Digest != web2 || r.Previous != web1 {
		t.Fatalf("trigger = %+v, want deployed %s over %s", r, web2, web1)
	}
	t.Logf("web deploy: trigger to deployed in %v (grace %vs)", time.Since(start).Round(10*time.Millisecond), s.grace)
	after := s.serviceContainers()
	if after["web"] == before["web"] {
		t.Errorf("web container %s was not recreated", after["web"])
	}
	for _, svc := range []string{"db", "worker"} {
		if after[svc] != before[svc] {
			t.Errorf("%s container changed from %s to %s by a deploy of web", svc, before[svc], after[svc])
		}
	}
	if got := s.running(); len(got) != 1 || got[0] != web2 {
		t.Errorf("web runs %v, want %s", got, web2)
	}
	if s.hasImage(dbRepo, db2) {
		t.Errorf("db's new digest %s was pulled by a deploy of web", db2)
	}
	if got := s.serviceDigest("db", dbRepo); got != db1 {
		t.Errorf("db runs %s, want %s", got, db1)
	}
	if got := s.serviceDigest("worker", workerRepo); got != worker1 {
		t.Errorf("worker runs %s, want %s", got, worker1)
	}
	if n := countLines(s.proc.logs(), "new digest; deploying", "services=web"); n != 1 {
		t.Errorf("%d lines say the deploy acts on service web, want 1", n)
	}

	// A bad web push: rolled back, web only.
	bad := s.push(unhealthyImage)
	start = time.Now()
	if r := s.trigger(); r.Outcome != "rolled_back" || r.Digest != bad {
		t.Fatalf("trigger = %+v, want rolled back %s", r, bad)
	}
	t.Logf("bad web push: trigger to rolled back in %v (grace %vs)", time.Since(start).Round(10*time.Millisecond), s.grace)
	final := s.serviceContainers()
	for _, svc := range []string{"db", "worker"} {
		if final[svc] != before[svc] {
			t.Errorf("%s container changed from %s to %s by a rolled back deploy of web", svc, before[svc], final[svc])
		}
	}
	s.waitFor(30*time.Second, "web to run the previous version, healthy", func() (bool, string) {
		got := s.running()
		h := s.serviceHealth("web")
		return len(got) == 1 && got[0] == web2 && h == "running/healthy", fmt.Sprintf("web runs %v (%s)", got, h)
	})
	if b := s.blocked(); b != bad {
		t.Errorf("blocked = %q, want %s", b, bad)
	}
	if s.hasImage(dbRepo, db2) {
		t.Errorf("db's new digest %s was pulled by the rollback", db2)
	}
	for _, svc := range []string{"db", "worker"} {
		if h := s.serviceHealth(svc); !strings.HasPrefix(h, "running/") {
			t.Errorf("%s is %s after the rollback, want running", svc, h)
		}
	}
}

// pushTo pushes a test image as repo:latest, another repository of the
// scenario's registry, and returns its digest.
func (s *scenario) pushTo(repo string, img image) string {
	s.t.Helper()
	own := s.repo
	s.repo = repo
	defer func() { s.repo = own }()
	return s.push(img)
}

// serviceContainers maps each compose service of the project to the ID of
// its running container.
func (s *scenario) serviceContainers() map[string]string {
	s.t.Helper()
	out := s.docker("ps", "--filter", "label=com.docker.compose.project="+s.project, "--filter", "status=running",
		"--format", `{{.ID}} {{.Label "com.docker.compose.service"}}`)
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if id, svc, ok := strings.Cut(line, " "); ok {
			m[svc] = id
		}
	}
	return m
}

// serviceDigest is the registry digest, in repo, of the image that the
// service's container runs.
func (s *scenario) serviceDigest(service, repo string) string {
	s.t.Helper()
	id := s.serviceContainers()[service]
	if id == "" {
		return ""
	}
	img := strings.TrimSpace(s.docker("inspect", "-f", "{{.Image}}", id))
	var rds []string
	if err := json.Unmarshal([]byte(s.docker("image", "inspect", "-f", "{{json .RepoDigests}}", img)), &rds); err != nil {
		s.t.Fatal(err)
	}
	for _, rd := range rds {
		if r, d, ok := strings.Cut(rd, "@"); ok && r == s.host+"/"+repo {
			return d
		}
	}
	return ""
}

// serviceHealth is "status/health" of the service's container.
func (s *scenario) serviceHealth(service string) string {
	s.t.Helper()
	out := strings.TrimSpace(s.docker("ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project,
		"--filter", "label=com.docker.compose.service="+service))
	if out == "" {
		return "missing"
	}
	st, err := s.tryDocker("inspect", "-f", "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}", strings.Fields(out)[0])
	if err != nil {
		return "missing"
	}
	return strings.TrimSpace(st)
}

// hasImage reports whether the engine has an image with digest d of repo.
func (s *scenario) hasImage(repo, d string) bool {
	_, err := s.tryDocker("image", "inspect", s.host+"/"+repo+"@"+d)
	return err == nil
}
