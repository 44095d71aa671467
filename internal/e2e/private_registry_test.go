package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/registry/registrytest"
)

// Private registries: the digest check and compose's pull both
// authenticate, with the credentials from the config, a Docker config.json
// or a credential helper.

// htpasswd over TLS signed by the test's own CA: a good push is deployed and
// a bad one rolled back, with username, password_file and ca_file. The
// engine trusts the CA through /etc/docker/certs.d/<host:port>/ca.crt and
// pulls with the credentials compose passes it.
func TestPrivateRegistryHtpasswdTLS(t *testing.T) {
	t.Parallel()
	const user, password = "deployer", "htpasswd-pa55-e2e-never-logged"
	dir := t.TempDir()
	ca := registrytest.NewCA(t, "dockward e2e CA")
	cert, key := ca.Issue(t, dir)
	reg := registrytest.StartWith(t, registrytest.Options{TLSCert: cert, TLSKey: key, CA: ca,
		Htpasswd: registrytest.Htpasswd(t, dir, user, password)})
	engineTrusts(t, reg.Host, ca)

	s := newScenarioAt(t, "privtls", reg.URL)
	s.dockerEnv = []string{"DOCKER_CONFIG=" + dockerLogin(t, reg.Host, user, password)}
	s.registryCfg = map[string]any{"username": user, "password_file": writeSecret(t, dir, "password", password),
		"ca_file": ca.WriteFile(t, dir, "ca.pem")}
	s.push(healthyImage)
	s.up()
	s.start()

	v2 := s.pushForPull(healthyImage)
	s.waitFor(90*time.Second, "v2 to be deployed from the TLS registry", func() (bool, string) { return s.runs(v2) })

	bad := s.pushForPull(unhealthyImage)
	s.waitFor(90*time.Second, "the bad digest to be blocked", func() (bool, string) {
		b := s.blocked()
		return b == bad, "blocked " + b
	})
	s.waitFor(30*time.Second, "v2 to run again after the rollback", func() (bool, string) { return s.runs(v2) })
	if n := len(s.hooks.events("update_failed")); n != 0 {
		t.Errorf("%d update_failed alerts, want none: %+v", n, s.hooks.events("update_failed"))
	}
	noSecrets(t, s, password)
}

// Token auth (the Docker token protocol) with a token server that issues
// short-lived JWTs: a good push is deployed; tokens are renewed while
// polling, and a poll with a cached token is one HEAD; a wrong password is
// one critical alert and no deploy, and fixing it is one recovery alert and
// the deploy; a registry restarted with a new signing key makes Dockward
// get a new token.
func TestPrivateRegistryToken(t *testing.T) {
	t.Parallel()
	const user, password = "ci-bot", "token-pa55-e2e-never-logged"
	dir := t.TempDir()
	tokens := registrytest.StartTokenServer(t, map[string]string{user: password}, 3)
	reg := registrytest.StartWith(t, registrytest.Options{Token: tokens})
	proxy := startCountingProxy(t, reg.URL)

	s := newScenarioAt(t, "privtoken", proxy.url)
	s.dockerEnv = []string{"DOCKER_CONFIG=" + dockerLogin(t, s.host, user, password)}
	pwFile := writeSecret(t, dir, "password", password)
	s.registryCfg = map[string]any{"username": user, "password_file": pwFile}
	s.push(healthyImage)
	s.up()
	s.start()

	v2 := s.pushForPull(healthyImage)
	engineTokens := tokens.Issued("docker")
	s.waitFor(90*time.Second, "v2 to be deployed from the token registry", func() (bool, string) { return s.runs(v2) })
	if n := tokens.Issued("docker"); n <= engineTokens {
		t.Errorf("the engine got no token while deploying (%d before, %d after): compose did not pass the credentials", engineTokens, n)
	}

	// Tokens live 3s: polling every second renews them before they expire.
	before := tokens.Issued("dockward")
	s.waitPolls(5)
	if n := tokens.Issued("dockward") - before; n < 1 {
		t.Errorf("%d tokens fetched in 5 polls with 3s tokens, want at least one renewal", n)
	}

	// With a long-lived token cached, a poll is one HEAD and nothing else.
	tokens.SetExpiresIn(300)
	renewed := tokens.Issued("dockward")
	s.waitFor(30*time.Second, "a long-lived token", func() (bool, string) {
		return tokens.Issued("dockward") > renewed, "no token fetched yet"
	})
	proxy.reset()
	startPolls := s.metric("watcher_poll_count_total")
	tokensBefore := tokens.Issued("dockward")
	s.waitPolls(10)
	polls := s.metric("watcher_poll_count_total") - startPolls
	heads, others := proxy.counts("dockward")
	t.Logf("with a cached token: %d polls, %d registry HEADs by dockward, %d other registry requests by dockward, %d tokens fetched",
		int(polls), heads, others, tokens.Issued("dockward")-tokensBefore)
	if float64(heads) < polls-1 || float64(heads) > polls+1 || others != 0 || tokens.Issued("dockward") != tokensBefore {
		t.Errorf("%v polls cost %d HEADs, %d other requests and %d tokens; want one HEAD per poll and nothing else",
			polls, heads, others, tokens.Issued("dockward")-tokensBefore)
	}

	// A wrong password: one critical alert, nothing deployed, no block.
	s.stop()
	writeSecret(t, dir, "password", "wr0ng-pa55-never-logged")
	s.start()
	v3 := s.pushForPull(healthyImage)
	s.waitPolls(4)
	failed := s.hooks.events("update_failed")
	if len(failed) != 1 || failed[0].Level != "critical" || !strings.Contains(failed[0].Reason, "401 Unauthorized") ||
		!strings.Contains(failed[0].Reason, `as user "`+user+`"`) {
		t.Fatalf("update_failed alerts = %+v, want one critical naming the 401 and the user", failed)
	}
	if got := s.metric(fmt.Sprintf(`watcher_registry_errors_total{service="%s",kind="unauthorized"}`, s.name)); got < 4 {
		t.Errorf("unauthorized errors = %v after 4 polls, want at least 4", got)
	}
	if ok, detail := s.runs(v2); !ok || s.blocked() != "" {
		t.Fatalf("with a wrong password: %s, blocked %q; want v2 still running and nothing blocked", detail, s.blocked())
	}

	// The right password again, read on reload: recovery and the deploy.
	writeSecret(t, dir, "password", password)
	if err := s.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	s.waitFor(90*time.Second, "v3 to be deployed after the password is fixed", func() (bool, string) { return s.runs(v3) })
	s.waitFor(10*time.Second, "one recovery alert", func() (bool, string) {
		f := s.hooks.events("update_failed")
		return len(f) == 2 && f[1].Level == "info", fmt.Sprintf("%+v", f)
	})

	// The registry restarts with a new signing key: the cached token is
	// refused and a new one fetched; the next push is deployed.
	tokens.SetExpiresIn(300)
	tokens.Rotate()
	reg.Restart()
	before = tokens.Issued("dockward")
	v4 := s.pushForPull(healthyImage)
	s.waitFor(90*time.Second, "v4 to be deployed after the key rotation", func() (bool, string) { return s.runs(v4) })
	if tokens.Issued("dockward") <= before {
		t.Errorf("no new token after the registry changed its key")
	}
	if n := len(s.hooks.events("update_failed")); n != 2 {
		t.Errorf("%d update_failed alerts, want 2 (the wrong password and its recovery): %+v", n, s.hooks.events("update_failed"))
	}
	noSecrets(t, s, password, "wr0ng-pa55-never-logged")
}

// docker_config: the config.json that `docker login` wrote (an auths
// entry) serves both the digest check and compose's pull.
func TestPrivateRegistryDockerConfig(t *testing.T) {
	t.Parallel()
	const user, password = "deployer", "auths-pa55-e2e-never-logged"
	dir := t.TempDir()
	reg := registrytest.StartWith(t, registrytest.Options{Htpasswd: registrytest.Htpasswd(t, dir, user, password)})
	s := newScenarioAt(t, "privauths", reg.URL)
	login := dockerLogin(t, reg.Host, user, password)
	s.dockerEnv = []string{"DOCKER_CONFIG=" + login}
	s.registryCfg = map[string]any{"docker_config": filepath.Join(login, "config.json")}
	s.push(healthyImage)
	s.up()
	s.start()
	v2 := s.pushForPull(healthyImage)
	s.waitFor(90*time.Second, "v2 to be deployed with the docker config's auths entry", func() (bool, string) { return s.runs(v2) })
	if !strings.Contains(s.proc.logs(), "auths entry of "+filepath.Join(login, "config.json")) {
		t.Errorf("the start log does not say the credentials come from the auths entry:\n%s", s.proc.logs())
	}
	noSecrets(t, s, password)
}

// A credential helper named in credHelpers (docker-credential-dwtest, on
// the daemon's PATH) gives the credentials to the digest check and to
// compose's pull.
func TestPrivateRegistryCredentialHelper(t *testing.T) {
	t.Parallel()
	const user, password = "deployer", "helper-pa55-e2e-never-logged"
	dir := t.TempDir()
	reg := registrytest.StartWith(t, registrytest.Options{Htpasswd: registrytest.Htpasswd(t, dir, user, password)})
	s := newScenarioAt(t, "privhelper", reg.URL)
	s.dockerEnv = []string{"DOCKER_CONFIG=" + dockerLogin(t, reg.Host, user, password)}

	bin := filepath.Join(dir, "bin")
	calls := filepath.Join(dir, "helper-calls")
	helper := fmt.Sprintf(`#!/bin/sh
# The Docker credential helper protocol: "get", the server on stdin, JSON out.
read server
echo "$1 $server" >> %q
if [ "$1" = get ] && [ "$server" = %q ]; then
  printf '{"ServerURL":"%%s","Username":"%%s","Secret":"%%s"}\n' "$server" %q %q
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
`, calls, reg.Host, user, password)
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-dwtest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	cfgDir := filepath.Join(dir, "docker")
	if err := os.MkdirAll(cfgDir, 0o700); err != nil {
		t.Fatal(err)
	}
	writeSecret(t, cfgDir, "config.json", fmt.Sprintf(`{"credHelpers": {%q: "dwtest"}}`, reg.Host))
	s.registryCfg = map[string]any{"docker_config": filepath.Join(cfgDir, "config.json")}
	s.env = []string{"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH")}

	s.push(healthyImage)
	s.up()
	s.start()
	v2 := s.pushForPull(healthyImage)
	s.waitFor(90*time.Second, "v2 to be deployed with the helper's credentials", func() (bool, string) { return s.runs(v2) })
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	// One call from the digest check, at least one from compose's pull.
	if n := strings.Count(string(b), "get "+reg.Host); n < 2 {
		t.Errorf("the helper was asked %d times for %s, want the digest check and compose's pull:\n%s", n, reg.Host, b)
	}
	noSecrets(t, s, password)
}

// pushForPull pushes img and removes it from the engine, so that the
// deploy must pull it, with the credentials. Dockward is paused meanwhile
// (SIGSTOP): a poll between the push and the removal would find the image
// already there, and a removal during its pull would break the pull.
func (s *scenario) pushForPull(img image) string {
	s.t.Helper()
	if s.proc != nil {
		if err := s.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			s.t.Fatal(err)
		}
		defer s.proc.cmd.Process.Signal(syscall.SIGCONT)
	}
	d := s.push(img)
	s.docker("rmi", s.ref("latest"))
	return d
}

// dockerLogin logs the docker CLI in to host, in a config folder of the
// test's own, and returns the folder (for DOCKER_CONFIG).
func dockerLogin(t *testing.T, host, user, password string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", "--config", dir, "login", "--username", user, "--password-stdin", host)
	cmd.Stdin = strings.NewReader(password)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker login %s: %v\n%s", host, err, out)
	}
	return dir
}

// engineTrusts makes the Docker engine trust ca for the registry at host
// (host:port), and undoes it at cleanup.
func engineTrusts(t *testing.T, host string, ca *registrytest.CA) {
	t.Helper()
	dir := filepath.Join("/etc/docker/certs.d", host)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("trust the test CA for %s: %v", host, err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ca.WriteFile(t, dir, "ca.crt")
}

func writeSecret(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// noSecrets fails when dockward's output or an alert shows a secret.
func noSecrets(t *testing.T, s *scenario, secrets ...string) {
	t.Helper()
	for _, secret := range secrets {
		if s.proc != nil && strings.Contains(s.proc.logs(), secret) {
			t.Errorf("dockward's log shows a password")
		}
		s.hooks.mu.Lock()
		for _, h := range s.hooks.got {
			if strings.Contains(h.Message+h.Reason, secret) {
				t.Errorf("alert %s shows a password", h.Event)
			}
		}
		s.hooks.mu.Unlock()
	}
}

// countingProxy forwards to a registry and counts requests by the first
// word of their User-Agent and by method.
type countingProxy struct {
	url string
	mu  sync.Mutex
	n   map[string]int // "agent METHOD"
}

func startCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &countingProxy{n: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		agent, _, _ := strings.Cut(r.UserAgent(), "/")
		agent, _, _ = strings.Cut(agent, " ")
		p.mu.Lock()
		p.n[agent+" "+r.Method]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

func (p *countingProxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n = map[string]int{}
}

// counts returns agent's HEAD requests and all its others.
func (p *countingProxy) counts(agent string) (heads, others int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, v := range p.n {
		a, method, _ := strings.Cut(k, " ")
		switch {
		case a != agent:
		case method == http.MethodHead:
			heads += v
		default:
			others += v
		}
	}
	return heads, others
}
