package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// need returns the path of tool, or fails the test saying how to get it.
// These tests never skip: a missing tool would silently hide a broken
// artifact.
func need(t *testing.T, tool, install string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found in PATH: %s", tool, install)
	}
	return path
}

// run executes name with args in dir and returns its combined output.
// env nil means the test's own environment.
func run(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	t.Logf("$ %s %s  (%v)", filepath.Base(name), strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return string(out), err
}

// mustRun is run that fails the test, showing the output, on error.
func mustRun(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := run(t, dir, env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s: %v", root, err)
	}
	return root
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// unitDirectives parses a unit file into "Section.Key" -> values.
func unitDirectives(data []byte) map[string][]string {
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
		default:
			k, v, _ := strings.Cut(line, "=")
			key := section + "." + strings.TrimSpace(k)
			out[key] = append(out[key], strings.TrimSpace(v))
		}
	}
	return out
}

func TestSystemdUnitVerifies(t *testing.T) {
	analyze := need(t, "systemd-analyze", "install the Debian package systemd")
	const unitPath = "systemd/dockward.service"
	unit := readFile(t, unitPath)

	// The contract other parts rely on (Ansible, the daemon's sd_notify use,
	// docs), pinned so a "cleanup" cannot drop it silently.
	d := unitDirectives(unit)
	want := map[string]string{
		"Unit.After":                     "network-online.target docker.service",
		"Unit.Wants":                     "network-online.target docker.service",
		"Service.Type":                   "notify",
		"Service.ExecStart":              "/usr/local/bin/dockward -config /etc/dockward/config.json",
		"Service.ExecReload":             "/usr/local/bin/dockward reload -config /etc/dockward/config.json",
		"Service.WatchdogSec":            "30s",
		"Service.Restart":                "on-failure",
		"Service.KillMode":               "mixed",
		"Service.StateDirectory":         "dockward",
		"Service.ProtectSystem":          "strict",
		"Service.NoNewPrivileges":        "yes",
		"Service.UMask":                  "0077",
		"Service.Environment":            "DOCKER_CONFIG=/var/lib/dockward/docker",
		"Service.ConfigurationDirectory": "dockward",
		"Install.WantedBy":               "multi-user.target",
	}
	for key, v := range want {
		if got := d[key]; !slices.Equal(got, []string{v}) {
			t.Errorf("%s: %s = %q, want %q", unitPath, key, got, v)
		}
	}
	// A docker restart must not take dockward down with it.
	for _, key := range []string{"Unit.Requires", "Unit.BindsTo", "Unit.PartOf", "Service.User", "Service.DynamicUser"} {
		if v, ok := d[key]; ok {
			t.Errorf("%s: unexpected %s=%q", unitPath, key, v)
		}
	}

	// verify rejects a unit whose Exec*= binary does not exist, and
	// dockward is not installed here: point ExecStart= and ExecReload= at
	// this test binary (which exists and is executable) and keep everything
	// else.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const binary = "=/usr/local/bin/dockward "
	for _, key := range []string{"ExecStart", "ExecReload"} {
		if !bytes.Contains(unit, []byte("\n"+key+binary)) {
			t.Fatalf("%s has no %q line to rewrite", unitPath, key+binary)
		}
	}
	// installable writes unit, with the binary rewritten, to a temp dir.
	installable := func(t *testing.T, unit []byte) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "dockward.service")
		writeFile(t, path, string(bytes.ReplaceAll(unit, []byte(binary), []byte("="+self+" "))), 0o644)
		return path
	}
	verify := func(t *testing.T, unit []byte) string {
		t.Helper()
		out, err := run(t, "", nil, analyze, "verify", "--man=no", installable(t, unit))
		if err != nil {
			out += "\n(exit: " + err.Error() + ")"
		}
		return out
	}

	out := verify(t, unit)
	for line := range strings.Lines(out) {
		if strings.Contains(line, "dockward.service") || strings.Contains(line, "(exit:") {
			t.Errorf("systemd-analyze verify %s:\n%s", unitPath, out)
			break
		}
	}

	// The check above is only meaningful if verify reports mistakes on
	// this systemd version: a misspelt key must show up.
	broken := bytes.Replace(unit, []byte("\nType=notify\n"), []byte("\nTyp=notify\n"), 1)
	if out := verify(t, broken); !strings.Contains(out, "dockward.service") {
		t.Errorf("systemd-analyze verify did not report an unknown key; the check is not meaningful:\n%s", out)
	}

	// Guard the sandboxing against regressions. The exposure is 5.8 with
	// this unit (root, docker socket, network), offline and under a running
	// systemd (internal/e2e/systemd_test.go); anything above 6.5 means a
	// protection was dropped.
	if out, err := run(t, "", nil, analyze, "security", "--offline=yes", "--threshold=65", "--no-pager", installable(t, unit)); err != nil {
		t.Errorf("systemd-analyze security: exposure above 6.5 or command failed (%v):\n%s", err, out)
	}
}

// ansibleEnv is a hermetic environment: no ANSIBLE_* from the caller,
// HOME and Ansible's temp dirs inside the test's temp dir, no colours, and
// ansible.cfg from this repository.
func ansibleEnv(home, cfg string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ANSIBLE_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	return append(env,
		"HOME="+home,
		"ANSIBLE_CONFIG="+cfg,
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(home, "ansible-local"),
		"ANSIBLE_REMOTE_TEMP="+filepath.Join(home, "ansible-remote"),
		"ANSIBLE_NOCOLOR=1",
		"NO_COLOR=1",
		"ANSIBLE_STDOUT_CALLBACK=default",
	)
}

var recapRE = regexp.MustCompile(`(?m)^localhost\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)`)

func TestAnsiblePlaybook(t *testing.T) {
	playbook := need(t, "ansible-playbook", "install the Debian package ansible-core")
	lint := need(t, "ansible-lint", "install the Debian package ansible-lint")
	goTool := need(t, "go", "install Go (go test puts it in PATH)")

	root := repoRoot(t)
	ansibleDir := filepath.Join(root, "deploy", "ansible")
	tmp := t.TempDir()
	env := ansibleEnv(filepath.Join(tmp, "home"), filepath.Join(ansibleDir, "ansible.cfg"))

	binary := filepath.Join(tmp, "bin", "dockward")
	// -buildvcs=false: VCS stamping fails when the checkout belongs to
	// another user (git "dubious ownership"), and is irrelevant here.
	mustRun(t, root, nil, goTool, "build", "-buildvcs=false", "-o", binary, "./cmd/dockward")

	mustRun(t, ansibleDir, env, playbook, "-i", "localhost,", "--syntax-check", "playbooks/dockward.yml")
	mustRun(t, ansibleDir, env, lint, "--offline", "-c", ".ansible-lint", "playbooks/dockward.yml", "roles/dockward")

	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	group, err := user.LookupGroupId(me.Gid)
	if err != nil {
		t.Fatal(err)
	}

	composeFile := filepath.Join(tmp, "srv", "myapp", "docker-compose.yml")
	writeFile(t, composeFile, "services:\n  web:\n    image: localhost:5000/myapp:latest\n", 0o644)
	// YAML so that the webhook body can be marked !unsafe: a Go template
	// must reach config.json untouched by Jinja.
	vars := func(compose string) string {
		return fmt.Sprintf(`
dockward_registry_url: http://localhost:5000
dockward_poll_interval: 60
dockward_registry_username: deployer
dockward_registry_password: ansible-registry-pa55-never-shown
dockward_api_port: 9191
dockward_notifications:
  webhooks:
    - name: ntfy
      url: https://ntfy.example.com/deploys
      method: POST
      headers: {Authorization: "Bearer $NTFY_TOKEN"}
      body: !unsafe '{"text": "{{ .Service }}: {{ .Message }}"}'
dockward_services:
  - name: myapp
    image: myapp:latest
    compose_file: %q
    compose_project: myapp
    auto_update: true
    auto_heal: true
    health_grace: 60
    heal_cooldown: 300
`, compose)
	}
	goodVars := filepath.Join(tmp, "good.yml")
	badVars := filepath.Join(tmp, "bad.yml")
	writeFile(t, goodVars, vars(composeFile), 0o600)
	writeFile(t, badVars, vars("srv/myapp/docker-compose.yml"), 0o600) // relative: invalid

	dest := filepath.Join(tmp, "root")
	deploy := func(varsFile string) (string, error) {
		return run(t, ansibleDir, env, playbook,
			"-i", "localhost,", "-c", "local", "playbooks/dockward.yml",
			"-e", "dockward_hosts=all",
			"-e", "ansible_become=false",
			"-e", "dockward_root="+dest,
			"-e", "dockward_manage_service=false",
			"-e", "dockward_binary_src="+binary,
			"-e", "dockward_owner="+me.Username,
			"-e", "dockward_group="+group.Name,
			"-e", "@"+varsFile)
	}

	// First run installs everything.
	out, err := deploy(goodVars)
	if err != nil {
		t.Fatalf("first run: %v\n%s", err, out)
	}
	installed := map[string]os.FileMode{
		"usr/local/bin/dockward":              0o755,
		"etc/dockward/config.json":            0o600,
		"etc/dockward/registry-password":      0o600,
		"etc/systemd/system/dockward.service": 0o644,
	}
	for rel, mode := range installed {
		fi, err := os.Stat(filepath.Join(dest, rel))
		if err != nil {
			t.Errorf("after first run: %v", err)
			continue
		}
		if got := fi.Mode().Perm(); got != mode {
			t.Errorf("%s: mode %#o, want %#o", rel, got, mode)
		}
	}
	if got, want := readFile(t, filepath.Join(dest, "etc/systemd/system/dockward.service")), readFile(t, "systemd/dockward.service"); !bytes.Equal(got, want) {
		t.Error("installed unit differs from deploy/systemd/dockward.service")
	}

	configPath := filepath.Join(dest, "etc/dockward/config.json")
	configBytes := readFile(t, configPath)
	var cfg struct {
		Registry struct {
			URL          string `json:"url"`
			PollInterval int    `json:"poll_interval"`
			Username     string `json:"username"`
			PasswordFile string `json:"password_file"`
		} `json:"registry"`
		API struct {
			Port string `json:"port"`
		} `json:"api"`
		Notifications struct {
			Webhooks []struct {
				Body    string            `json:"body"`
				Headers map[string]string `json:"headers"`
			} `json:"webhooks"`
		} `json:"notifications"`
		Services []struct {
			Name        string `json:"name"`
			ComposeFile string `json:"compose_file"`
			AutoUpdate  bool   `json:"auto_update"`
			HealthGrace int    `json:"health_grace"`
		} `json:"services"`
	}
	if err := json.Unmarshal(configBytes, &cfg); err != nil {
		t.Fatalf("config.json: %v\n%s", err, configBytes)
	}
	if cfg.Registry.URL != "http://localhost:5000" || cfg.Registry.PollInterval != 60 || cfg.API.Port != "9191" {
		t.Errorf("config.json registry/api = %+v %+v, want url http://localhost:5000, poll_interval 60, port \"9191\"", cfg.Registry, cfg.API)
	}
	if len(cfg.Services) != 1 || cfg.Services[0].ComposeFile != composeFile || !cfg.Services[0].AutoUpdate || cfg.Services[0].HealthGrace != 60 {
		t.Errorf("config.json services = %+v, want myapp with compose_file %s", cfg.Services, composeFile)
	}
	const body = `{"text": "{{ .Service }}: {{ .Message }}"}`
	if len(cfg.Notifications.Webhooks) != 1 || cfg.Notifications.Webhooks[0].Body != body ||
		cfg.Notifications.Webhooks[0].Headers["Authorization"] != "Bearer $NTFY_TOKEN" {
		t.Errorf("config.json webhooks = %+v, want body %s", cfg.Notifications.Webhooks, body)
	}
	// The registry password is in its own 0600 file, named by the config;
	// neither the config, the unit nor Ansible's output shows it.
	const registryPassword = "ansible-registry-pa55-never-shown"
	if want := filepath.Join(dest, "etc/dockward/registry-password"); cfg.Registry.Username != "deployer" || cfg.Registry.PasswordFile != want {
		t.Errorf("config.json registry = %+v, want username deployer and password_file %s", cfg.Registry, want)
	}
	if got := strings.TrimSpace(string(readFile(t, filepath.Join(dest, "etc/dockward/registry-password")))); got != registryPassword {
		t.Errorf("registry-password holds %d bytes, not the password", len(got))
	}
	for _, where := range []string{string(configBytes), string(readFile(t, filepath.Join(dest, "etc/systemd/system/dockward.service"))), out} {
		if strings.Contains(where, registryPassword) {
			t.Errorf("the registry password shows in the config, the unit or Ansible's output")
		}
	}
	mustRun(t, tmp, nil, filepath.Join(dest, "usr/local/bin/dockward"), "check", "-config", configPath)

	// Second run: nothing to do.
	out, err = deploy(goodVars)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if m := recapRE.FindStringSubmatch(out); m == nil || m[1] != "0" || m[3] != "0" {
		t.Errorf("second run is not idempotent, want changed=0 failed=0 in PLAY RECAP:\n%s", out)
	}

	// An invalid config fails validation and leaves the installed one alone.
	out, err = deploy(badVars)
	if err == nil {
		t.Fatalf("run with a relative compose_file succeeded, want a validation failure:\n%s", out)
	}
	if !strings.Contains(out, "failed to validate") || !strings.Contains(out, "compose_file") {
		t.Errorf("run with a relative compose_file: want %q naming compose_file in the output:\n%s", "failed to validate", out)
	}
	if got := readFile(t, configPath); !bytes.Equal(got, configBytes) {
		t.Errorf("config.json changed after a failed validation:\n%s", got)
	}
}

func TestPrometheusRules(t *testing.T) {
	promtool := need(t, "promtool", "install the Debian package prometheus")
	dir, err := filepath.Abs("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, dir, nil, promtool, "check", "rules", "alerts.yml")
	mustRun(t, dir, nil, promtool, "test", "rules", "alerts_test.yml")

	// The example scrape config, pointed at the real rules file.
	example := string(readFile(t, filepath.Join(dir, "prometheus.example.yml")))
	const rulesRef = "/etc/prometheus/rules/dockward.yml"
	if !strings.Contains(example, rulesRef) || !strings.Contains(example, `"127.0.0.1:9090"`) || !strings.Contains(example, "job_name: dockward") {
		t.Errorf("prometheus.example.yml must load %s and scrape job dockward at 127.0.0.1:9090", rulesRef)
	}
	cfg := filepath.Join(t.TempDir(), "prometheus.yml")
	writeFile(t, cfg, strings.ReplaceAll(example, rulesRef, filepath.Join(dir, "alerts.yml")), 0o644)
	mustRun(t, dir, nil, promtool, "check", "config", cfg)

	// Every alert exists and has a test where it fires and one where it
	// must not (an empty exp_alerts).
	rules := string(readFile(t, filepath.Join(dir, "alerts.yml")))
	fires, quiet := map[string]bool{}, map[string]bool{}
	current := ""
	for line := range strings.Lines(string(readFile(t, filepath.Join(dir, "alerts_test.yml")))) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "alertname:"):
			current = strings.TrimSpace(strings.TrimPrefix(line, "alertname:"))
		case strings.HasPrefix(line, "exp_alerts: []"):
			quiet[current] = true
		case line == "exp_alerts:":
			fires[current] = true
		}
	}
	for _, name := range []string{"DockwardRollback", "DockwardServiceBlocked", "DockwardServiceUnhealthy", "DockwardPollingStale", "DockwardHealGaveUp", "DockwardDown"} {
		if !strings.Contains(rules, "- alert: "+name+"\n") {
			t.Errorf("alerts.yml: no alert %s", name)
		}
		if !fires[name] || !quiet[name] {
			t.Errorf("alerts_test.yml: %s needs a case where it fires (%v) and one where it does not (%v)", name, fires[name], quiet[name])
		}
	}
}

// Metric names dockward exposes (the spec's contract plus the additions).
var knownMetrics = map[string]bool{
	"watcher_updates_total":                  true,
	"watcher_rollbacks_total":                true,
	"watcher_restarts_total":                 true,
	"watcher_failures_total":                 true,
	"watcher_service_healthy":                true,
	"watcher_service_blocked":                true,
	"watcher_poll_count_total":               true,
	"watcher_last_poll_timestamp_seconds":    true,
	"watcher_uptime_seconds":                 true,
	"watcher_deploy_duration_seconds_bucket": true,
	"watcher_deploy_duration_seconds_sum":    true,
	"watcher_deploy_duration_seconds_count":  true,
	"watcher_registry_errors_total":          true,
	"watcher_notifications_failed_total":     true,
	"watcher_heal_gave_up":                   true,
	"dockward_build_info":                    true,
}

var (
	promStringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchersRE = regexp.MustCompile(`\{[^}]*\}`)
	promRangeRE    = regexp.MustCompile(`\[[^\]]*\]`)
	promGroupingRE = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdentRE    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords   = map[string]bool{
		"and": true, "or": true, "unless": true, "by": true, "without": true, "on": true,
		"ignoring": true, "group_left": true, "group_right": true, "bool": true, "offset": true,
		"inf": true, "nan": true, "atan2": true,
	}
)

// metricNames returns the metric names a PromQL expression selects:
// identifiers that are not function calls, keywords, label names (inside
// {}, by (...), on (...)), durations or Grafana $variables.
func metricNames(expr string) []string {
	s := promStringRE.ReplaceAllString(expr, `""`)
	s = promMatchersRE.ReplaceAllString(s, "{}")
	s = promRangeRE.ReplaceAllString(s, "[]")
	s = promGroupingRE.ReplaceAllString(s, "")
	var names []string
	for _, loc := range promIdentRE.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("$.0123456789", rune(s[loc[0]-1])) {
			continue // $variable, or part of a number like 1e3
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") || promKeywords[strings.ToLower(name)] {
			continue
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`watcher_service_healthy{instance=~"$instance", service=~"$service"}`, []string{"watcher_service_healthy"}},
		{`histogram_quantile(0.95, sum by (service, le) (increase(watcher_deploy_duration_seconds_bucket{service=~"$service"}[$__range])))`, []string{"watcher_deploy_duration_seconds_bucket"}},
		{`time() - watcher_last_poll_timestamp_seconds > 900 and on (job, instance) watcher_uptime_seconds > 9e2`, []string{"watcher_last_poll_timestamp_seconds", "watcher_uptime_seconds"}},
		{`sum(rate(foo_total{a="b{c}"}[5m])) by (x) / ignoring(y) group_left bar offset 1h`, []string{"foo_total", "bar"}},
		{`up{job="dockward"} == bool 0`, []string{"up"}},
	}
	for _, tt := range tests {
		if got := metricNames(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

type grafanaPanel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // inside collapsed rows
}

func TestGrafanaDashboard(t *testing.T) {
	promtool := need(t, "promtool", "install the Debian package prometheus")
	data := readFile(t, "grafana/dashboard.json")
	var dash struct {
		Title      string         `json:"title"`
		UID        string         `json:"uid"`
		Panels     []grafanaPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("grafana/dashboard.json is not valid JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("dashboard title %q, uid %q: both must be set", dash.Title, dash.UID)
	}

	var panels []grafanaPanel
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			panels = append(panels, p)
			walk(p.Panels)
		}
	}
	walk(dash.Panels)

	var exprs []string
	ids := map[int]bool{}
	for _, p := range panels {
		if p.Type == "row" {
			continue
		}
		if p.Title == "" || p.GridPos == nil || ids[p.ID] {
			t.Errorf("panel %d %q: needs a unique id, a title and a gridPos", p.ID, p.Title)
		}
		ids[p.ID] = true
		if !bytes.Contains(p.Datasource, []byte(`"${datasource}"`)) {
			t.Errorf("panel %q: datasource %s, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			names := metricNames(tg.Expr)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q selects no metric", p.Title, tg.Expr)
			}
			for _, name := range names {
				if !knownMetrics[name] {
					t.Errorf("panel %q: query %q uses %s, which dockward does not expose", p.Title, tg.Expr, name)
				}
			}
		}
	}

	// Template variables query metrics too: label_values(metric{...}, label).
	labelValuesRE := regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)`)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Errorf("variable %s: query %s: %v", v.Name, v.Query, err)
			}
		}
		m := labelValuesRE.FindStringSubmatch(q.Query)
		if m == nil || !knownMetrics[m[1]] {
			t.Errorf("variable %s: query %q must be label_values() of a dockward metric", v.Name, q.Query)
		}
	}

	// The panels an operator looks for, identified by what they query.
	required := []struct {
		what string
		ok   func(exprs []string) bool
	}{
		{"updates and rollbacks", func(e []string) bool {
			return anyContains(e, "watcher_updates_total") && anyContains(e, "watcher_rollbacks_total")
		}},
		{"blocked services", func(e []string) bool { return anyContains(e, "watcher_service_blocked") }},
		{"service health", func(e []string) bool { return anyContains(e, "watcher_service_healthy") }},
		{"auto-heal restarts", func(e []string) bool { return anyContains(e, "watcher_restarts_total") }},
		{"deploy duration p50 and p95", func(e []string) bool {
			return anyContains(e, "histogram_quantile(0.5,", "watcher_deploy_duration_seconds_bucket") &&
				anyContains(e, "histogram_quantile(0.95,", "watcher_deploy_duration_seconds_bucket")
		}},
		{"poll staleness", func(e []string) bool { return anyContains(e, "time() - watcher_last_poll_timestamp_seconds") }},
	}
	for _, r := range required {
		found := false
		for _, p := range panels {
			var e []string
			for _, tg := range p.Targets {
				e = append(e, tg.Expr)
			}
			found = found || r.ok(e)
		}
		if !found {
			t.Errorf("dashboard has no panel for %s", r.what)
		}
	}

	// Every query must parse: feed them to promtool as recording rules,
	// with Grafana's variables replaced by values PromQL accepts.
	vars := strings.NewReplacer(
		"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
		"${instance}", ".*", "$instance", ".*", "${service}", ".*", "$service", ".*",
	)
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, err := json.Marshal(vars.Replace(e))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	rulesFile := filepath.Join(t.TempDir(), "dashboard_queries.yml")
	writeFile(t, rulesFile, rules.String(), 0o644)
	if out, err := run(t, "", nil, promtool, "check", "rules", rulesFile); err != nil {
		t.Errorf("dashboard queries do not parse: %v\n%s\n%s", err, out, rules.String())
	}
}

// anyContains reports whether one of exprs contains all of subs.
func anyContains(exprs []string, subs ...string) bool {
	for _, e := range exprs {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(e, s)
		}
		if all {
			return true
		}
	}
	return false
}
