package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	goimage "image"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The API's guards, with real HTTP requests to a real dockward that has a
// token (from api.token_file): a foreign Host gets 421 everywhere, a
// cross-site POST or DELETE 403, one without the token 401; reading stays
// open, and the token never reaches the log.
func TestAPIGuards(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "guards")
	const token = "e2e-api-token-0123456789abcdef"
	tokenFile := filepath.Join(s.dir, "api-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.edit = func(c map[string]any) { c["api"].(map[string]any)["token_file"] = tokenFile }
	s.push(healthyImage)
	s.up()
	s.start()

	bearer := map[string]string{"Authorization": "Bearer " + token}
	with := func(h map[string]string, more ...string) map[string]string {
		out := map[string]string{}
		for k, v := range h {
			out[k] = v
		}
		for i := 0; i+1 < len(more); i += 2 {
			out[more[i]] = more[i+1]
		}
		return out
	}
	port := fmt.Sprint(s.apiPort)
	tests := []struct {
		name, method, path, host string
		headers                  map[string]string
		want                     int
	}{
		{"rebinding page reads the status", "GET", "/status", "attacker.example:" + port, nil, 421},
		{"rebinding page reads the page", "GET", "/", "attacker.example", nil, 421},
		{"rebinding page reads metrics", "GET", "/metrics", "attacker.example:" + port, nil, 421},
		{"rebinding page with the token", "POST", "/trigger/" + s.name, "attacker.example:" + port, bearer, 421},
		{"LAN name", "GET", "/health", "myhost.lan:" + port, nil, 421},
		{"cross-site form post", "POST", "/trigger/" + s.name, "127.0.0.1:" + port, with(bearer, "Origin", "https://attacker.example"), 403},
		{"cross-site fetch", "DELETE", "/blocked/" + s.name, "127.0.0.1:" + port, with(bearer, "Sec-Fetch-Site", "cross-site"), 403},
		{"same-site fetch", "POST", "/trigger", "localhost:" + port, with(bearer, "Sec-Fetch-Site", "same-site"), 403},
		{"post without the token", "POST", "/trigger/" + s.name, "127.0.0.1:" + port, nil, 401},
		{"delete without the token", "DELETE", "/blocked/" + s.name, "127.0.0.1:" + port, nil, 401},
		{"wrong token", "POST", "/trigger", "127.0.0.1:" + port, map[string]string{"Authorization": "Bearer " + token + "0"}, 401},
		{"health is open", "GET", "/health", "127.0.0.1:" + port, nil, 200},
		{"metrics are open", "GET", "/metrics", "localhost:" + port, nil, 200},
		{"status is open", "GET", "/status", "[::1]:" + port, nil, 200},
		{"page is open", "GET", "/", "127.0.0.1:" + port, nil, 200},
		{"delete with the token", "DELETE", "/blocked/" + s.name, "127.0.0.1:" + port, bearer, 200},
		{"trigger with the token", "POST", "/trigger/" + s.name + "?wait=true", "127.0.0.1:" + port, bearer, 200},
	}
	for _, tt := range tests {
		code, body := rawRequest(t, s, tt.method, tt.path, tt.host, tt.headers, nil)
		for code == 409 && tt.want == 200 {
			// A poll is checking the service right now; it is done in a moment.
			time.Sleep(200 * time.Millisecond)
			code, body = rawRequest(t, s, tt.method, tt.path, tt.host, tt.headers, nil)
		}
		if code != tt.want {
			t.Errorf("%s: %s %s (Host %s) = %d %s, want %d", tt.name, tt.method, tt.path, tt.host, code, body, tt.want)
		}
	}
	// Only the request with the token triggered a check.
	if n := countLines(s.proc.logs(), "check triggered through the API"); n != 1 {
		t.Errorf("%d checks triggered through the API, want 1 (the one with the token)", n)
	}
	if strings.Contains(s.proc.logs(), token) {
		t.Errorf("the log holds the API token:\n%s", s.proc.logs())
	}
	if !strings.Contains(s.proc.logs(), "api_token=true") {
		t.Errorf("the start line does not say a token is set:\n%s", s.proc.logs())
	}
}

// rawRequest sends a request to dockward's API with any Host header.
func rawRequest(t *testing.T, s *scenario, method, path, host string, headers map[string]string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.api+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// statusDoc is GET /status as a client reads it, by its JSON names.
type statusDoc struct {
	Daemon struct {
		Version   string     `json:"version"`
		Engine    string     `json:"engine"`
		EngineAPI string     `json:"engine_api"`
		Compose   string     `json:"compose"`
		LastPoll  *time.Time `json:"last_poll"`
		Uptime    float64    `json:"uptime_seconds"`
	} `json:"daemon"`
	Services []serviceDoc `json:"services"`
}

type serviceDoc struct {
	Name     string `json:"name"`
	State    string `json:"state"`
	Healthy  *bool  `json:"healthy"`
	Running  *seen  `json:"running"`
	Registry *seen  `json:"registry"`
	Last     *struct {
		Digest  string    `json:"digest"`
		Outcome string    `json:"outcome"`
		Started time.Time `json:"started"`
		Seconds float64   `json:"seconds"`
		Reason  string    `json:"reason"`
	} `json:"last_deploy"`
	Blocked *struct {
		Digest string    `json:"digest"`
		Since  time.Time `json:"since"`
		Reason string    `json:"reason"`
	} `json:"blocked"`
	Heal struct {
		Restarts int  `json:"restarts"`
		GaveUp   bool `json:"gave_up"`
	} `json:"heal"`
	NextPoll *time.Time `json:"next_poll"`
}

type seen struct {
	Digest string    `json:"digest"`
	At     time.Time `json:"at"`
}

func (s *scenario) status() statusDoc {
	s.t.Helper()
	code, body := s.request("GET", "/status")
	if code != 200 {
		s.t.Fatalf("GET /status = %d %s", code, body)
	}
	var st statusDoc
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		s.t.Fatalf("decode /status %q: %v", body, err)
	}
	return st
}

func (st statusDoc) service(name string) serviceDoc {
	for _, s := range st.Services {
		if s.Name == name {
			return s
		}
	}
	return serviceDoc{}
}

// sibling is a second service of s's dockward: its own repository and
// compose project on s's registry. s.start must list it (see withSiblings).
func (s *scenario) sibling(name string) *scenario {
	s.t.Helper()
	c := *s
	c.name = name
	c.repo = "e2e/" + name
	c.project = "dwe2e-" + name + s.project[strings.LastIndex(s.project, "-"):]
	c.dir = s.t.TempDir()
	c.compose = filepath.Join(c.dir, "docker-compose.yml")
	c.proc = nil
	s.t.Cleanup(func() {
		// The sibling's project is taken down once the dockward that
		// watches it has stopped: before, its next poll deployed it again.
		if s.proc != nil {
			s.proc.stop(30 * time.Second)
		}
		c.cleanup()
	})
	return &c
}

// withSiblings makes s's dockward watch the siblings too.
func (s *scenario) withSiblings(sibs ...*scenario) {
	s.edit = func(c map[string]any) {
		for _, sib := range sibs {
			c["services"] = append(c["services"].([]map[string]any), sib.serviceConfig())
		}
	}
}

// dockwardStatus runs `dockward status` and returns its exit code and output.
func dockwardStatus(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockwardBin, append([]string{"status"}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	if err != nil {
		t.Fatalf("dockward status: %v", err)
	}
	return 0, stdout.String(), stderr.String()
}

// /status, the page and `dockward status` after a good deploy of one
// service and a blocked push of another; then across a restart, and once a
// fix is pushed. The page is loaded in headless Chromium.
func TestStatusAfterDeployAndBlock(t *testing.T) {
	t.Parallel()
	s := newScenario(t, "status")
	bad := s.sibling("statusbad")
	s.withSiblings(bad)
	s.push(healthyImage)
	s.up()
	b1 := bad.push(healthyImage)
	bad.up()
	s.start()
	cfgPath := filepath.Join(s.dir, "config.json")

	v2 := s.push(healthyImage)
	x := bad.push(unhealthyImage)
	s.waitFor(90*time.Second, "v2 deployed and the bad push blocked, as /status tells", func() (bool, string) {
		st := s.status()
		good, blocked := st.service(s.name), st.service(bad.name)
		ok := good.State == "ok" && good.Last != nil && good.Last.Digest == v2 && good.Last.Outcome == "deployed" &&
			blocked.State == "blocked" && blocked.Blocked != nil && blocked.Blocked.Digest == x && blocked.Last != nil && blocked.Last.Outcome == "rolled_back"
		return ok, fmt.Sprintf("%+v", st.Services)
	})
	if ok, why := s.runs(v2); !ok {
		t.Errorf("%s: %s", s.name, why)
	}
	s.waitFor(30*time.Second, "the previous version to run the bad service again", func() (bool, string) { return bad.runs(b1) })

	st := s.status()
	good, blocked := st.service(s.name), st.service(bad.name)
	if st.Daemon.Engine == "" || st.Daemon.EngineAPI == "" || st.Daemon.Compose == "" || st.Daemon.LastPoll == nil || st.Daemon.Uptime <= 0 {
		t.Errorf("daemon = %+v, want engine, API and compose versions, a last poll and uptime", st.Daemon)
	}
	if good.Running == nil || good.Running.Digest != v2 || good.Registry == nil || good.Registry.Digest != v2 ||
		good.Healthy == nil || !*good.Healthy || good.Last.Seconds <= 0 || good.NextPoll == nil {
		t.Errorf("%s = %+v, want v2 %s running and in the registry, healthy, a deploy that took time, a next poll", s.name, good, v2)
	}
	if blocked.Running == nil || blocked.Running.Digest != b1 || blocked.Registry == nil || blocked.Registry.Digest != x ||
		!strings.Contains(blocked.Blocked.Reason, "unhealthy") || blocked.Last.Digest != x {
		t.Errorf("%s = %+v, want %s running, %s in the registry and blocked as unhealthy", bad.name, blocked, b1, x)
	}

	// dockward status reads api.port from the config and exits 1.
	code, out, errOut := dockwardStatus(t, "-config", cfgPath)
	if code != 1 || !strings.Contains(errOut, "1 of 2 services need attention: "+bad.name+" (blocked)") {
		t.Errorf("dockward status = exit %d, stderr %q; want exit 1 naming %s as blocked", code, errOut, bad.name)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^` + s.name + `\s+OK\s+` + regexp.QuoteMeta(v2[:19]) + `\s+` + regexp.QuoteMeta(v2[:19]) + `\s+deployed ` + regexp.QuoteMeta(v2[:19])),
		regexp.MustCompile(`(?m)^` + bad.name + `\s+BLOCKED\s+` + regexp.QuoteMeta(b1[:19]) + `\s+` + regexp.QuoteMeta(x[:19]) + `\s+rolled back ` + regexp.QuoteMeta(x[:19])),
		regexp.MustCompile(`(?m)^` + bad.name + `: ` + regexp.QuoteMeta(x[:19]) + ` blocked: .*unhealthy`),
	} {
		if !want.MatchString(out) {
			t.Errorf("dockward status output does not match %s:\n%s", want, out)
		}
	}
	t.Logf("dockward status:\n%s%s", out, errOut)

	// The page, in a real browser.
	checkPageInChromium(t, s, map[string]string{s.name: "ok", bad.name: "blocked"}, map[string][]string{
		s.name:   {"healthy", v2[:19]},
		bad.name: {"blocked", x[:19], "unhealthy", b1[:19]},
	})

	// The last deploys are in the state file: a restart keeps them.
	s.stop()
	s.start()
	st = s.status()
	if g, b := st.service(s.name), st.service(bad.name); g.Last == nil || g.Last.Digest != v2 || b.Last == nil || b.Last.Digest != x || b.Blocked == nil {
		t.Errorf("after a restart: %s last deploy %+v, %s last deploy %+v blocked %+v; want both kept", s.name, g.Last, bad.name, b.Last, b.Blocked)
	}

	// A fix clears the block; nothing needs attention any more.
	fix := bad.push(healthyImage)
	s.waitFor(90*time.Second, "the fix deployed, as /status tells", func() (bool, string) {
		b := s.status().service(bad.name)
		return b.State == "ok" && b.Blocked == nil && b.Running != nil && b.Running.Digest == fix, fmt.Sprintf("%+v", b)
	})
	code, out, errOut = dockwardStatus(t, "-addr", fmt.Sprintf("127.0.0.1:%d", s.apiPort))
	if code != 0 {
		t.Errorf("dockward status after the fix = exit %d\n%s%s; want 0", code, out, errOut)
	}
	// A daemon that does not answer: exit 2.
	code, _, errOut = dockwardStatus(t, "-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	if code != 2 || !strings.Contains(errOut, "is dockward running?") {
		t.Errorf("dockward status without a daemon = exit %d, %q; want 2", code, errOut)
	}
}

// checkPageInChromium loads dockward's page in headless Chromium, finds
// each service's row with its state and words in the DOM it built, and
// keeps screenshots at desktop and phone width.
func checkPageInChromium(t *testing.T, s *scenario, states map[string]string, words map[string][]string) {
	t.Helper()
	url := s.api + "/"
	dom := chromium(t, "--dump-dom", url)
	dir := artifactsDir(t)
	domPath := filepath.Join(dir, "status-page-dom.html")
	if err := os.WriteFile(domPath, []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("the page's DOM as Chromium built it: %s", domPath)
	rows := regexp.MustCompile(`(?s)<tr id="service-([^"]+)" class="service s-([a-z_]+)" data-service="[^"]+" data-state="([a-z_]+)">(.*?)</tr>`).FindAllStringSubmatch(dom, -1)
	found := map[string]bool{}
	for _, r := range rows {
		name, class, state, cells := r[1], r[2], r[3], r[4]
		found[name] = true
		if want, ok := states[name]; !ok || state != want || class != want {
			t.Errorf("row of %s has state %q (class s-%s), want %q", name, state, class, want)
		}
		for _, w := range words[name] {
			if !strings.Contains(cells, w) {
				t.Errorf("row of %s lacks %q:\n%s", name, w, cells)
			}
		}
	}
	for name := range states {
		if !found[name] {
			t.Errorf("the page has no row for %s:\n%s", name, dom)
		}
	}
	if !strings.Contains(dom, `http-equiv="refresh"`) {
		t.Errorf("the page does not refresh itself")
	}

	for _, shot := range []struct {
		name          string
		width, height int
	}{{"desktop", 1280, 800}, {"phone", 390, 844}} {
		path := filepath.Join(dir, "status-page-"+shot.name+".png")
		os.Remove(path)
		chromium(t, fmt.Sprintf("--window-size=%d,%d", shot.width, shot.height), "--hide-scrollbars", "--screenshot="+path, url)
		img := readPNG(t, path)
		if b := img.Bounds(); b.Dx() != shot.width || b.Dy() != shot.height {
			t.Errorf("%s screenshot is %dx%d, want %dx%d", shot.name, b.Dx(), b.Dy(), shot.width, shot.height)
		}
		// The states show in colour too: green for healthy, red for blocked.
		for colour, rgb := range map[string][3]uint32{"green (#1a7f37)": {0x1a, 0x7f, 0x37}, "red (#cf222e)": {0xcf, 0x22, 0x2e}} {
			if n := countColour(img, rgb); n < 100 {
				t.Errorf("%s screenshot has %d pixels of %s, want a badge's worth", shot.name, n, colour)
			}
		}
		t.Logf("screenshot of the status page (%s, %dx%d): %s", shot.name, shot.width, shot.height, path)
	}
}

// chromium runs headless Chromium from Debian's package. It reaches
// loopback only: every other name fails to resolve, and anything else would
// go through a proxy that does not exist.
func chromium(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the page test needs Chromium (Debian package chromium; make test installs it): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
		"--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9",
		"--user-data-dir=" + t.TempDir()}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

// artifactsDir is where tests keep files for people to look at:
// $DOCKWARD_ARTIFACTS, else dockward-e2e-artifacts in the temp directory.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("DOCKWARD_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "dockward-e2e-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readPNG(t *testing.T, path string) goimage.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode screenshot %s: %v", path, err)
	}
	return img
}

// countColour counts the pixels within a small distance of rgb.
func countColour(img goimage.Image, rgb [3]uint32) int {
	n := 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if near(r>>8, rgb[0]) && near(g>>8, rgb[1]) && near(bl>>8, rgb[2]) {
				n++
			}
		}
	}
	return n
}

func near(a, b uint32) bool { return a+8 >= b && b+8 >= a }
