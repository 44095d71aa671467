package config_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/config"
)

// sample is the config from the original design, with every field it lists.
const sample = `{
  "registry": {
    "url": "http://localhost:5000",
    "poll_interval": 300
  },
  "api": {
    "port": "9090"
  },
  "notifications": {
    "discord": {
      "webhook_url": "https://discord.com/api/webhooks/ID/TOKEN"
    }
  },
  "services": [
    {
      "name": "myapp",
      "image": "myapp:latest",
      "compose_file": "/srv/myapp.com/docker-compose.yml",
      "compose_project": "myapp",
      "auto_update": true,
      "auto_heal": true,
      "health_grace": 60,
      "heal_cooldown": 300
    }
  ]
}
`

// minimal is the smallest valid config: one service with its required fields.
const minimal = `{"services": [{"name": "web", "compose_file": "/srv/web/compose.yml", "compose_project": "web"}]}`

// withService returns a config whose only service has the required fields
// plus extra, which starts with a comma.
func withService(extra string) string {
	return `{"services": [{"name": "web", "compose_file": "/srv/web/compose.yml", "compose_project": "web"` + extra + `}]}`
}

// withTop returns a valid config plus the top-level fields in extra, which
// ends with a comma.
func withTop(extra string) string {
	return `{` + extra + ` "services": [{"name": "web", "compose_file": "/srv/web/compose.yml", "compose_project": "web"}]}`
}

func TestParseSample(t *testing.T) {
	got, err := config.Parse([]byte(sample))
	if err != nil {
		t.Fatalf("Parse(sample) error: %v", err)
	}
	want := &config.Config{
		Registry: config.Registry{URL: "http://localhost:5000", PollInterval: 300, Timeout: 10},
		API:      config.API{Port: "9090"},
		Docker:   config.Docker{Socket: "/var/run/docker.sock", ComposeTimeout: 300, StopTimeout: 10},
		LogLevel: "info",
		Notifications: config.Notifications{
			Discord: &config.Discord{WebhookURL: "https://discord.com/api/webhooks/ID/TOKEN"},
		},
		Services: []config.Service{{
			Name:               "myapp",
			Image:              "myapp:latest",
			ComposeFile:        "/srv/myapp.com/docker-compose.yml",
			ComposeProject:     "myapp",
			AutoUpdate:         true,
			AutoHeal:           true,
			HealthGrace:        60,
			HealCooldown:       300,
			HealthPollInterval: 5,
			HealVerifyDelay:    30,
			HealMaxRestarts:    3,
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Parse(sample) =\n%+v\nwant\n%+v", got, want)
	}
	if s, ok := got.Service("myapp"); !ok || s.Name != "myapp" {
		t.Errorf("Service(%q) = %+v, %v, want the service, true", "myapp", s, ok)
	}
	if _, ok := got.Service("nope"); ok {
		t.Errorf("Service(%q) found a service, want none", "nope")
	}
}

func TestParseDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   string
		get  func(*config.Config) any
		want any
	}{
		{"registry.url when registry is absent", minimal, func(c *config.Config) any { return c.Registry.URL }, "http://localhost:5000"},
		{"registry.url when registry has only poll_interval", withTop(`"registry": {"poll_interval": 30},`), func(c *config.Config) any { return c.Registry.URL }, "http://localhost:5000"},
		{"registry.poll_interval", minimal, func(c *config.Config) any { return c.Registry.PollInterval }, config.Seconds(300)},
		{"registry.poll_interval when registry has only url", withTop(`"registry": {"url": "http://reg.local:5000"},`), func(c *config.Config) any { return c.Registry.PollInterval }, config.Seconds(300)},
		{"registry.timeout", minimal, func(c *config.Config) any { return c.Registry.Timeout }, config.Seconds(10)},
		{"api.port", minimal, func(c *config.Config) any { return c.API.Port }, config.Port("9090")},
		{"api.port when api is empty", withTop(`"api": {},`), func(c *config.Config) any { return c.API.Port }, config.Port("9090")},
		{"docker.socket", minimal, func(c *config.Config) any { return c.Docker.Socket }, "/var/run/docker.sock"},
		{"docker.compose_command", minimal, func(c *config.Config) any { return c.Docker.ComposeCommand }, []string(nil)},
		{"docker.compose_timeout", minimal, func(c *config.Config) any { return c.Docker.ComposeTimeout }, config.Seconds(300)},
		{"log_level", minimal, func(c *config.Config) any { return c.LogLevel }, "info"},
		{"state_file", minimal, func(c *config.Config) any { return c.StateFile }, ""},
		{"notifications", minimal, func(c *config.Config) any { return c.Notifications }, config.Notifications{}},
		{"health_grace", minimal, func(c *config.Config) any { return c.Services[0].HealthGrace }, config.Seconds(60)},
		{"heal_cooldown", minimal, func(c *config.Config) any { return c.Services[0].HealCooldown }, config.Seconds(300)},
		{"health_poll_interval", minimal, func(c *config.Config) any { return c.Services[0].HealthPollInterval }, config.Seconds(5)},
		{"heal_verify_delay", minimal, func(c *config.Config) any { return c.Services[0].HealVerifyDelay }, config.Seconds(30)},
		{"heal_max_restarts", minimal, func(c *config.Config) any { return c.Services[0].HealMaxRestarts }, 3},
		{"auto_update", minimal, func(c *config.Config) any { return c.Services[0].AutoUpdate }, false},
		{"auto_heal", minimal, func(c *config.Config) any { return c.Services[0].AutoHeal }, false},
		{"health_grace of the second service when the first sets it", `{"services": [
			{"name": "a", "compose_file": "/a.yml", "compose_project": "a", "health_grace": 10},
			{"name": "b", "compose_file": "/b.yml", "compose_project": "b"}]}`,
			func(c *config.Config) any { return c.Services[1].HealthGrace }, config.Seconds(60)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.in, err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q): %s = %#v, want %#v", tt.in, tt.name, got, tt.want)
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name string
		in   string
		get  func(*config.Config) any
		want any
	}{
		{"api.port as a string", withTop(`"api": {"port": "8081"},`), func(c *config.Config) any { return c.API.Port }, config.Port("8081")},
		{"api.port as a number", withTop(`"api": {"port": 8081},`), func(c *config.Config) any { return c.API.Port }, config.Port("8081")},
		{"api.token", withTop(`"api": {"token": "0123456789abcdef-_.~"},`), func(c *config.Config) any { return c.API.Token }, "0123456789abcdef-_.~"},
		{"api.token_file", withTop(`"api": {"token_file": "/etc/dockward/api-token"},`), func(c *config.Config) any { return c.API.TokenFile }, "/etc/dockward/api-token"},
		{"api.token_file as a credential", withTop(`"api": {"token_file": "$CREDENTIALS_DIRECTORY/api-token"},`), func(c *config.Config) any { return c.API.TokenFile }, "$CREDENTIALS_DIRECTORY/api-token"},
		{"smtp to as a string", withTop(`"notifications": {"smtp": {"host": "mail.local", "port": 587, "from": "d@x.org", "to": "ops@x.org"}},`),
			func(c *config.Config) any { return c.Notifications.SMTP.To }, config.StringList{"ops@x.org"}},
		{"smtp to as a list", withTop(`"notifications": {"smtp": {"host": "mail.local", "port": 587, "from": "d@x.org", "to": ["a@x.org", "b@x.org"]}},`),
			func(c *config.Config) any { return c.Notifications.SMTP.To }, config.StringList{"a@x.org", "b@x.org"}},
		{"credentials over http to loopback", withTop(`"registry": {"url": "http://127.0.0.1:5000", "username": "ci", "password_file": "$CREDENTIALS_DIRECTORY/registry"},`),
			func(c *config.Config) any { return c.Registry.PasswordFile }, "$CREDENTIALS_DIRECTORY/registry"},
		{"docker_config and ca_file", withTop(`"registry": {"url": "https://r.example.com", "docker_config": "/var/lib/dockward/docker/config.json", "ca_file": "/etc/dockward/ca.pem"},`),
			func(c *config.Config) any { return c.Registry.CAFile }, "/etc/dockward/ca.pem"},
		{"fractional poll_interval", withTop(`"registry": {"poll_interval": 0.5},`), func(c *config.Config) any { return c.Registry.PollInterval.Duration().String() }, "500ms"},
		{"fractional health_poll_interval", withService(`, "health_poll_interval": 0.25`), func(c *config.Config) any { return c.Services[0].HealthPollInterval }, config.Seconds(0.25)},
		{"heal_cooldown 0 means no cooldown", withService(`, "heal_cooldown": 0`), func(c *config.Config) any { return c.Services[0].HealCooldown }, config.Seconds(0)},
		{"name of 63 characters", `{"services": [{"name": "` + strings.Repeat("a", 63) + `", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			func(c *config.Config) any { return len(c.Services[0].Name) }, 63},
		{"name with dot, dash and underscore", `{"services": [{"name": "my-app_2.com", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			func(c *config.Config) any { return c.Services[0].Name }, "my-app_2.com"},
		{"image on the watched registry host", withService(`, "image": "localhost:5000/team/web:v2", "auto_update": true`),
			func(c *config.Config) any { return c.Services[0].Image }, "localhost:5000/team/web:v2"},
		{"image without auto_update may be empty", withService(`, "auto_heal": true`), func(c *config.Config) any { return c.Services[0].Image }, ""},
		{"registry url with a trailing slash", withTop(`"registry": {"url": "https://reg.example.com/"},`), func(c *config.Config) any { return c.Registry.URL }, "https://reg.example.com/"},
		{"compose_command", withTop(`"docker": {"compose_command": ["docker", "compose"]},`), func(c *config.Config) any { return c.Docker.ComposeCommand }, []string{"docker", "compose"}},
		{"webhook with method in lower case", withTop(`"notifications": {"webhooks": [{"name": "ops", "url": "http://hooks.local/x", "method": "put", "min_level": "critical"}]},`),
			func(c *config.Config) any { return c.Notifications.Webhooks[0].Method }, "put"},
		{"compose_files, env_file and compose_services", `{"services": [{"name": "a", "compose_project": "a",
			"compose_files": ["/srv/a/compose.yml", "/srv/a/compose.prod.yml"], "env_file": "/srv/a/prod.env", "compose_services": ["web", "web-2"]}]}`,
			func(c *config.Config) any {
				s := c.Services[0]
				return fmt.Sprintln(s.Files(), s.EnvFile, s.ComposeServices)
			}, "[/srv/a/compose.yml /srv/a/compose.prod.yml] /srv/a/prod.env [web web-2]\n"},
		{"compose_file alone is the one file", minimal, func(c *config.Config) any { return c.Services[0].Files() }, []string{"/srv/web/compose.yml"}},
		{"one image, two tags", `{"services": [
			{"name": "a", "image": "localhost:5000/app:blue", "compose_file": "/a.yml", "compose_project": "a"},
			{"name": "b", "image": "localhost:5000/app:green", "compose_file": "/b.yml", "compose_project": "b"}]}`,
			func(c *config.Config) any { return len(c.Services) }, 2},
		{"leading and trailing whitespace", "\n\t " + minimal + "\n\n", func(c *config.Config) any { return len(c.Services) }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in))
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.in, err)
			}
			if got := tt.get(c); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

// TestParseRejects checks that each bad config fails with a problem that
// names the field and says what is wrong.
func TestParseRejects(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name string
		in   string
		want string // a problem, exactly as Parse lists it
	}{
		// Intervals: explicit 0 or negative is an error, absent is the default.
		{"poll_interval 0", withTop(`"registry": {"poll_interval": 0},`), "registry.poll_interval: must be a positive number of seconds, got 0"},
		{"poll_interval negative", withTop(`"registry": {"poll_interval": -5},`), "registry.poll_interval: must be a positive number of seconds, got -5"},
		{"poll_interval rounds to 0ns", withTop(`"registry": {"poll_interval": 1e-10},`), "registry.poll_interval: must be at least 1ns and less than 292 years, got 1e-10 seconds"},
		{"poll_interval overflows a Duration", withTop(`"registry": {"poll_interval": 1e10},`), "registry.poll_interval: must be at least 1ns and less than 292 years, got 1e+10 seconds"},
		{"registry.timeout 0", withTop(`"registry": {"timeout": 0},`), "registry.timeout: must be a positive number of seconds, got 0"},
		// Registry credentials and TLS: one source, sent only where safe.
		{"username without password", withTop(`"registry": {"url": "https://r.example.com", "username": "ci"},`), "registry.username: is set, but neither password nor password_file is"},
		{"password without username", withTop(`"registry": {"url": "https://r.example.com", "password": "pw"},`), "registry.username: is required with a password or password_file"},
		{"password and password_file", withTop(`"registry": {"url": "https://r.example.com", "username": "ci", "password": "pw", "password_file": "/etc/pw"},`), "registry.password: and password_file are both set; set one"},
		{"relative password_file", withTop(`"registry": {"url": "https://r.example.com", "username": "ci", "password_file": "pw"},`), `registry.password_file: must be an absolute path or start with $CREDENTIALS_DIRECTORY/, got "pw"`},
		{"docker_config and username", withTop(`"registry": {"url": "https://r.example.com", "username": "ci", "password": "pw", "docker_config": "/d/config.json"},`), "registry.docker_config: and username are both set: use one source of credentials"},
		{"docker_config not config.json", withTop(`"registry": {"url": "https://r.example.com", "docker_config": "/d/auth.json"},`), `registry.docker_config: must be a file named config.json (compose reads $DOCKER_CONFIG/config.json), got "/d/auth.json"`},
		{"relative ca_file", withTop(`"registry": {"url": "https://r.example.com", "ca_file": "ca.pem"},`), `registry.ca_file: must be an absolute path, got "ca.pem"`},
		{"ca_file and insecure", withTop(`"registry": {"url": "https://r.example.com", "ca_file": "/ca.pem", "insecure_skip_verify": true},`), "registry.insecure_skip_verify: and ca_file are both set; with a CA file the certificate can be verified"},
		{"ca_file over http", withTop(`"registry": {"url": "http://r.example.com", "ca_file": "/ca.pem"},`), "registry.url: is http://, but ca_file or insecure_skip_verify is set: use https://"},
		{"credentials over plain http", withTop(`"registry": {"url": "http://r.example.com", "username": "ci", "password": "pw"},`), "registry.url: is http:// to a host that is not loopback: credentials are only sent over https"},
		{"compose_timeout 0", withTop(`"docker": {"compose_timeout": 0},`), "docker.compose_timeout: must be a positive number of seconds, got 0"},
		{"stop_timeout negative", withTop(`"docker": {"stop_timeout": -1},`), "docker.stop_timeout: must be a positive number of seconds, got -1"},
		{"health_grace 0", withService(`, "health_grace": 0`), "services[0].health_grace: must be a positive number of seconds, got 0"},
		{"health_grace negative", withService(`, "health_grace": -60`), "services[0].health_grace: must be a positive number of seconds, got -60"},
		{"health_poll_interval 0", withService(`, "health_poll_interval": 0`), "services[0].health_poll_interval: must be a positive number of seconds, got 0"},
		{"heal_verify_delay negative", withService(`, "heal_verify_delay": -0.5`), "services[0].heal_verify_delay: must be a positive number of seconds, got -0.5"},
		{"heal_cooldown negative", withService(`, "heal_cooldown": -1`), "services[0].heal_cooldown: must not be negative, got -1"},
		{"heal_cooldown overflows a Duration", withService(`, "heal_cooldown": 1e300`), "services[0].heal_cooldown: must be less than 292 years, got 1e+300 seconds"},
		{"heal_max_restarts 0", withService(`, "heal_max_restarts": 0`), "services[0].heal_max_restarts: must be at least 1, got 0"},

		// API.
		{"api.token and token_file", withTop(`"api": {"token": "0123456789abcdef", "token_file": "/t"},`), "api.token: set api.token or api.token_file, not both"},
		{"api.token_file relative", withTop(`"api": {"token_file": "token"},`), `api.token_file: must be an absolute path or start with $CREDENTIALS_DIRECTORY/, got "token"`},
		{"api.token too short", withTop(`"api": {"token": "secret"},`), "api.token: must hold a token of at least 16 characters, has 6"},
		{"api.token with a space", withTop(`"api": {"token": "0123456789 abcdef"},`), "api.token: must be printable ASCII without spaces (it is sent in an Authorization header)"},
		{"api.token with a newline", withTop(`"api": {"token": "0123456789abcdef\n"},`), "api.token: must be printable ASCII without spaces (it is sent in an Authorization header)"},

		// Services.
		{"no services", `{}`, "services: must list at least one service"},
		{"empty services", `{"services": []}`, "services: must list at least one service"},
		{"duplicate name", `{"services": [
			{"name": "web", "compose_file": "/a.yml", "compose_project": "a"},
			{"name": "web", "compose_file": "/b.yml", "compose_project": "b"}]}`,
			`services[1].name: "web" is already used by services[0]`},
		{"duplicate compose_project", `{"services": [
			{"name": "a", "compose_file": "/a.yml", "compose_project": "shop"},
			{"name": "b", "compose_file": "/b.yml", "compose_project": "other"},
			{"name": "c", "compose_file": "/c.yml", "compose_project": "shop"}]}`,
			`services[2].compose_project: "shop" is already used by services[0]`},
		{"name with a space", `{"services": [{"name": "my app", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			`services[0].name: "my app" must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)`},
		{"name with a slash", `{"services": [{"name": "a/b", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			`services[0].name: "a/b" must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)`},
		{"name climbing out", `{"services": [{"name": "../x", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			`services[0].name: "../x" must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)`},
		{"name starting with a dot", `{"services": [{"name": ".hidden", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			`services[0].name: ".hidden" must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)`},
		{"name empty", `{"services": [{"name": "", "compose_file": "/x.yml", "compose_project": "a"}]}`, "services[0].name: is required"},
		{"name absent", `{"services": [{"compose_file": "/x.yml", "compose_project": "a"}]}`, "services[0].name: is required"},
		{"name of 64 characters", `{"services": [{"name": "` + long + `", "compose_file": "/x.yml", "compose_project": "a"}]}`,
			`services[0].name: "` + long + `" must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)`},
		{"compose_file relative", `{"services": [{"name": "a", "compose_file": "srv/a/compose.yml", "compose_project": "a"}]}`,
			`services[0].compose_file: must be an absolute path, got "srv/a/compose.yml"`},
		{"compose_file absent", `{"services": [{"name": "a", "compose_project": "a"}]}`, "services[0].compose_file: is required (or compose_files)"},
		{"compose_file and compose_files", withService(`, "compose_files": ["/srv/web/a.yml"]`), "services[0].compose_files: must not be set together with compose_file: use one of them"},
		{"compose_files relative", `{"services": [{"name": "a", "compose_project": "a", "compose_files": ["/srv/a/compose.yml", "override.yml"]}]}`,
			`services[0].compose_files[1]: must be an absolute path, got "override.yml"`},
		{"env_file relative", withService(`, "env_file": "prod.env"`), `services[0].env_file: must be an absolute path, got "prod.env"`},
		{"compose_services like a flag", withService(`, "compose_services": ["web", "--build"]`),
			`services[0].compose_services[1]: "--build" must be letters, digits, '.', '_' or '-', starting with a letter or digit`},
		{"compose_services twice", withService(`, "compose_services": ["web", "web"]`), `services[0].compose_services[1]: "web" is listed twice`},
		{"two services watch one repository and tag", `{"services": [
			{"name": "shop", "image": "localhost:5000/team/app", "compose_file": "/a.yml", "compose_project": "a"},
			{"name": "shop-eu", "image": "localhost:5000/team/app:latest", "compose_file": "/b.yml", "compose_project": "b"}]}`,
			`services[1].image: team/app:latest is already watched by services[0] ("shop"); service "shop-eu" cannot watch it too: each repository:tag has one service`},
		{"compose_project absent", `{"services": [{"name": "a", "compose_file": "/a.yml"}]}`, "services[0].compose_project: is required"},
		{"compose_project upper case", `{"services": [{"name": "a", "compose_file": "/a.yml", "compose_project": "Shop"}]}`,
			`services[0].compose_project: "Shop" must be lowercase letters, digits, '_' or '-', starting with a letter or digit`},
		{"image required with auto_update", withService(`, "auto_update": true`), "services[0].image: is required when auto_update is true"},
		{"image on another registry host", withService(`, "image": "ghcr.io/x/y:1"`),
			`services[0].image: image reference "ghcr.io/x/y:1": names registry host "ghcr.io", but the watched registry is "localhost:5000"`},
		{"image with a digest", withService(`, "image": "web@sha256:` + strings.Repeat("ab", 32) + `"`),
			`services[0].image: image reference "web@sha256:` + strings.Repeat("ab", 32) + `": digests are not supported, a watched image must be a tag`},

		// Registry.
		{"registry url without scheme", withTop(`"registry": {"url": "localhost:5000"},`), `registry.url: must start with http:// or https://, got "localhost:5000"`},
		{"registry url ftp", withTop(`"registry": {"url": "ftp://reg.local"},`), `registry.url: must start with http:// or https://, got "ftp://reg.local"`},
		{"registry url with a path", withTop(`"registry": {"url": "http://localhost:5000/v2"},`), `registry.url: must not have a path (Dockward adds /v2/), got "/v2"`},
		{"registry url without host", withTop(`"registry": {"url": "http://"},`), `registry.url: must include a host, got "http://"`},
		{"registry url with credentials", withTop(`"registry": {"url": "http://ci:s3cret@localhost:5000"},`),
			`registry.url: must be scheme://host[:port] only, without credentials, query or fragment; got "http://localhost:5000/…"`},
		{"discord url typo keeps the token out", withTop(`"notifications": {"discord": {"webhook_url": "htps://discord.com/api/webhooks/1/T0KEN"}},`),
			`notifications.discord.webhook_url: must be an http:// or https:// URL, got "htps://discord.com/…"`},
		{"registry url empty", withTop(`"registry": {"url": ""},`), "registry.url: is required"},

		// Top level.
		{"api.port out of range", withTop(`"api": {"port": 65536},`), `api.port: must be a port number from 1 to 65535, got "65536"`},
		{"api.port 0", withTop(`"api": {"port": "0"},`), `api.port: must be a port number from 1 to 65535, got "0"`},
		{"api.port not a number", withTop(`"api": {"port": "http"},`), `api.port: must be a port number from 1 to 65535, got "http"`},
		{"log_level invalid", withTop(`"log_level": "trace",`), `log_level: must be one of debug, info, warn, error; got "trace"`},
		{"docker.socket relative", withTop(`"docker": {"socket": "docker.sock"},`), `docker.socket: must be an absolute path, got "docker.sock"`},
		{"docker.compose_command empty program", withTop(`"docker": {"compose_command": ["", "compose"]},`), "docker.compose_command[0]: must name a program"},
		{"state_file relative", withTop(`"state_file": "state.json",`), `state_file: must be an absolute path, got "state.json"`},

		// Notifications.
		{"discord webhook_url missing", withTop(`"notifications": {"discord": {}},`), "notifications.discord.webhook_url: is required"},
		{"discord min_level", withTop(`"notifications": {"discord": {"webhook_url": "https://discord.com/x", "min_level": "error"}},`),
			`notifications.discord.min_level: must be one of info, warning, critical; got "error"`},
		{"webhook url without scheme", withTop(`"notifications": {"webhooks": [{"name": "ops", "url": "hooks.local/x"}]},`),
			`notifications.webhooks[0].url: must be an http:// or https:// URL, got "hooks.local/…"`},
		{"webhook url bad escape", withTop(`"notifications": {"webhooks": [{"name": "ops", "url": "http://h/%zz"}]},`),
			`notifications.webhooks[0].url: is not a URL`},
		{"webhook method", withTop(`"notifications": {"webhooks": [{"name": "ops", "url": "http://hooks.local/x", "method": "DELETE"}]},`),
			`notifications.webhooks[0].method: must be POST, PUT, PATCH or GET; got "DELETE"`},
		{"webhook min_level", withTop(`"notifications": {"webhooks": [{"name": "ops", "url": "http://hooks.local/x", "min_level": "warn"}]},`),
			`notifications.webhooks[0].min_level: must be one of info, warning, critical; got "warn"`},
		{"webhook name missing", withTop(`"notifications": {"webhooks": [{"url": "http://hooks.local/x"}]},`),
			"notifications.webhooks[0].name: is required (it labels watcher_notifications_failed_total)"},
		{"webhook name duplicate", withTop(`"notifications": {"webhooks": [{"name": "ops", "url": "http://h/1"}, {"name": "ops", "url": "http://h/2"}]},`),
			`notifications.webhooks[1].name: "ops" is already used by notifications.webhooks[0]`},
		{"smtp to empty list", withTop(`"notifications": {"smtp": {"host": "mail.local", "port": 25, "from": "d@x.org", "to": []}},`),
			"notifications.smtp.to: must list at least one recipient"},
		{"smtp to not an address", withTop(`"notifications": {"smtp": {"host": "mail.local", "port": 25, "from": "d@x.org", "to": ["ops@x.org", "root"]}},`),
			`notifications.smtp.to[1]: must be an email address, got "root"`},
		{"smtp password without username", withTop(`"notifications": {"smtp": {"host": "mail.local", "port": 25, "from": "d@x.org", "to": "o@x.org", "password": "s"}},`),
			"notifications.smtp.username: is required when password is set"},
		{"smtp tls", withTop(`"notifications": {"smtp": {"host": "mail.local", "port": 25, "from": "d@x.org", "to": "o@x.org", "tls": "ssl"}},`),
			`notifications.smtp.tls: must be starttls, implicit or none; got "ssl"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error with %q", tt.in, c, tt.want)
			}
			var verr *config.ValidationError
			if !errors.As(err, &verr) {
				t.Fatalf("Parse(%q) error = %v (%T), want a *config.ValidationError", tt.in, err, err)
			}
			if !slicesContains(verr.Problems, tt.want) {
				t.Errorf("Parse(%q) problems =\n  %s\nwant one of them to be\n  %s", tt.in, strings.Join(verr.Problems, "\n  "), tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%q) error %q does not contain %q", tt.in, err, tt.want)
			}
		})
	}
}

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestParseReportsAllProblems pins that one run of Parse lists every
// problem in the file, in file order, each prefixed by its field path.
func TestParseReportsAllProblems(t *testing.T) {
	in := `{
  "registry": {"url": "http://localhost:5000", "poll_interval": 0},
  "api": {"port": 70000},
  "log_level": "verbose",
  "notifications": {
    "webhooks": [{"name": "ops", "url": "ftp://example.com/hook", "method": "DELETE", "min_level": "loud"}]
  },
  "services": [
    {"name": "my app", "compose_file": "srv/app.yml", "compose_project": "app", "auto_update": true, "health_grace": -1},
    {"name": "api", "image": "ghcr.io/x/y:1", "compose_file": "/srv/api.yml", "compose_project": "app", "heal_max_restarts": 0}
  ]
}`
	want := []string{
		"registry.poll_interval: must be a positive number of seconds, got 0",
		`api.port: must be a port number from 1 to 65535, got "70000"`,
		`log_level: must be one of debug, info, warn, error; got "verbose"`,
		`notifications.webhooks[0].url: must be an http:// or https:// URL, got "ftp://example.com/…"`,
		`notifications.webhooks[0].method: must be POST, PUT, PATCH or GET; got "DELETE"`,
		`notifications.webhooks[0].min_level: must be one of info, warning, critical; got "loud"`,
		`services[0].name: "my app" must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)`,
		"services[0].image: is required when auto_update is true",
		`services[0].compose_file: must be an absolute path, got "srv/app.yml"`,
		"services[0].health_grace: must be a positive number of seconds, got -1",
		`services[1].image: image reference "ghcr.io/x/y:1": names registry host "ghcr.io", but the watched registry is "localhost:5000"`,
		`services[1].compose_project: "app" is already used by services[0]`,
		"services[1].heal_max_restarts: must be at least 1, got 0",
	}
	c, err := config.Parse([]byte(in))
	if err == nil {
		t.Fatalf("Parse = %+v, want an error", c)
	}
	var verr *config.ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("Parse error = %v (%T), want a *config.ValidationError", err, err)
	}
	if !reflect.DeepEqual(verr.Problems, want) {
		t.Errorf("Parse problems =\n  %s\nwant\n  %s", strings.Join(verr.Problems, "\n  "), strings.Join(want, "\n  "))
	}
	if wantMsg := "invalid config:\n  " + strings.Join(want, "\n  "); err.Error() != wantMsg {
		t.Errorf("Parse error =\n%s\nwant\n%s", err, wantMsg)
	}
}

// TestParseDecodeErrors covers documents that are not valid JSON or do not
// fit the config's shape: the error says where.
func TestParseDecodeErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // the whole error message
	}{
		{"syntax error", "{\n  \"registry\": {\n    \"url\": \"http://localhost:5000\",,\n  }\n}",
			"line 3, column 36: invalid character ',' looking for beginning of object key string"},
		{"syntax error on the first line", `{"services" []}`,
			"line 1, column 13: invalid character '[' after object key"},
		{"type error", "{\n  \"registry\": {\n    \"poll_interval\": \"5m\"\n  }\n}",
			"line 3, column 25: registry.poll_interval: must be config.Seconds, not string"},
		{"type error in the second service", "{\n  \"services\": [\n    {\"name\": \"a\", \"compose_file\": \"/a.yml\", \"compose_project\": \"a\"},\n    {\"name\": \"b\",\n     \"health_grace\": \"60\"}\n  ]\n}",
			"line 5, column 25: services.health_grace: must be config.Seconds, not string"},
		{"heal_max_restarts not an integer", withService(`, "heal_max_restarts": 1.5`),
			"line 1, column 120: services.heal_max_restarts: must be int, not number 1.5"},
		{"api.port a bool", withTop(`"api": {"port": true},`), "api.port: must be string, not bool"},
		{"smtp to a number", withTop(`"notifications": {"smtp": {"to": 5}},`), "notifications.smtp.to: must be []string, not number"},
		{"unknown top-level field", withTop(`"registy": {},`), `line 1, column 2: unknown field "registy" (check the spelling; README.md lists every field)`},
		{"unknown field in a service", withService(`, "helth_grace": 30`), `line 1, column 97: unknown field "helth_grace" (check the spelling; README.md lists every field)`},
		{"unknown field in notifications", withTop(`"notifications": {"slack": {}},`), `line 1, column 20: unknown field "slack" (check the spelling; README.md lists every field)`},
		{"unknown field in discord", withTop(`"notifications": {"discord": {"webhook": "https://x"}},`), `line 1, column 32: unknown field "webhook" (check the spelling; README.md lists every field)`},
		{"trailing garbage", minimal + " }", "unexpected data after the top-level object"},
		{"second object", minimal + "\n" + minimal, "unexpected data after the top-level object"},
		{"not an object", `["services"]`, "line 1, column 1: value: must be config.Config, not array"},
		{"truncated", `{"services": [`, "unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in))
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error %q", tt.in, c, tt.want)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("Parse(%q) error = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestStatePath(t *testing.T) {
	tests := []struct {
		name      string
		stateFile string
		env       map[string]string
		want      string
	}{
		{"state_file wins", "/data/dockward.json", map[string]string{"STATE_DIRECTORY": "/var/lib/dockward-sd"}, "/data/dockward.json"},
		{"STATE_DIRECTORY", "", map[string]string{"STATE_DIRECTORY": "/var/lib/dockward-sd"}, "/var/lib/dockward-sd/state.json"},
		{"STATE_DIRECTORY with several entries", "", map[string]string{"STATE_DIRECTORY": "/var/lib/one:/var/lib/two"}, "/var/lib/one/state.json"},
		{"default", "", nil, "/var/lib/dockward/state.json"},
		{"empty STATE_DIRECTORY", "", map[string]string{"STATE_DIRECTORY": ""}, "/var/lib/dockward/state.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Default()
			c.StateFile = tt.stateFile
			getenv := func(k string) string { return tt.env[k] }
			if got := c.StatePath(getenv); got != tt.want {
				t.Errorf("StatePath(state_file=%q, env=%v) = %q, want %q", tt.stateFile, tt.env, got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := dir + "/good.json"
	writeFile(t, good, sample)
	if _, err := config.Load(good); err != nil {
		t.Errorf("Load(%q) error: %v", good, err)
	}
	bad := dir + "/bad.json"
	writeFile(t, bad, `{"services": []}`)
	_, err := config.Load(bad)
	var verr *config.ValidationError
	if err == nil || !errors.As(err, &verr) || !strings.HasPrefix(err.Error(), "config "+bad+": ") {
		t.Errorf("Load(%q) error = %v, want a *config.ValidationError prefixed with the path", bad, err)
	}
	missing := dir + "/missing.json"
	if _, err := config.Load(missing); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Load(%q) error = %v, want one naming the path", missing, err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// FuzzParse checks that Parse never panics on any input, and that whatever
// it accepts survives a round trip through json.Marshal: the daemon and
// tools that rewrite the file must not change its meaning.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(minimal))
	f.Add([]byte(withTop(`"api": {"port": 8081}, "notifications": {"smtp": {"host": "m", "port": 465, "from": "a@b", "to": "c@d", "username": "u", "password": "p", "tls": "implicit"}, "webhooks": [{"name": "w", "url": "http://h/x", "method": "PUT", "headers": {"Authorization": "Bearer $TOKEN"}, "body": "{{json .Message}}", "min_level": "warning"}]},`)))
	f.Add([]byte(withService(`, "health_grace": 0.5, "heal_cooldown": 0, "heal_max_restarts": 1, "image": "localhost:5000/web:1", "auto_update": true`)))
	f.Add([]byte(withTop(`"docker": {"socket": "/run/docker.sock", "compose_command": ["docker-compose"], "compose_timeout": 1e3}, "state_file": "/tmp/s.json", "log_level": "debug",`)))
	f.Add([]byte(`{"registry": {"poll_interval": "5m"}}`))
	f.Add([]byte(`{"services": [{"name": "my app", "helth_grace": 1}]}`))
	f.Add([]byte(`{"services": [null, {}]} trailing`))
	f.Add([]byte(`{"api": {"port": [1]}, "notifications": {"smtp": {"to": null}}}`))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, in []byte) {
		c1, err := config.Parse(in)
		if err != nil {
			if c1 != nil {
				t.Fatalf("Parse(%q) = %+v, %v; want nil with an error", in, c1, err)
			}
			return
		}
		b1, err := json.Marshal(c1)
		if err != nil {
			t.Fatalf("json.Marshal(Parse(%q)) error: %v", in, err)
		}
		c2, err := config.Parse(b1)
		if err != nil {
			t.Fatalf("Parse(%q) accepted, but its re-marshaled form %s fails: %v", in, b1, err)
		}
		// nil and empty lists marshal alike (omitempty), so compare what
		// the two configs say, then require the second round to be exact.
		b2, err := json.Marshal(c2)
		if err != nil {
			t.Fatalf("json.Marshal(%+v) error: %v", c2, err)
		}
		if string(b1) != string(b2) {
			t.Fatalf("round trip of %q changed it:\n%s\n%s", in, b1, b2)
		}
		c3, err := config.Parse(b2)
		if err != nil {
			t.Fatalf("Parse(%s) error: %v", b2, err)
		}
		if !reflect.DeepEqual(c2, c3) {
			t.Fatalf("Parse(%s) =\n%+v\nthen\n%+v", b2, c2, c3)
		}
		if n1 := normalize(c1); !reflect.DeepEqual(n1, c2) {
			t.Fatalf("round trip of %q changed it:\n%+v\n%+v", in, n1, c2)
		}
	})
}

// normalize returns a copy of c with empty lists and maps made nil, as
// omitempty drops them.
func normalize(c *config.Config) *config.Config {
	n := *c
	if len(n.Docker.ComposeCommand) == 0 {
		n.Docker.ComposeCommand = nil
	}
	n.Notifications.Webhooks = nil
	for _, w := range c.Notifications.Webhooks {
		if len(w.Headers) == 0 {
			w.Headers = nil
		}
		n.Notifications.Webhooks = append(n.Notifications.Webhooks, w)
	}
	return &n
}

func TestReadPassword(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(dir+"/"+name, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("pw", "s3cret-line\nsecond line ignored\n")
	write("crlf", "s3cret-crlf\r\n")
	write("empty", "\n")
	env := map[string]string{"CREDENTIALS_DIRECTORY": dir}
	tests := []struct {
		name    string
		reg     config.Registry
		getenv  func(string) string
		want    string
		wantErr string
	}{
		{name: "password", reg: config.Registry{Password: "inline"}, want: "inline"},
		{name: "file: first line", reg: config.Registry{PasswordFile: dir + "/pw"}, want: "s3cret-line"},
		{name: "file with CRLF", reg: config.Registry{PasswordFile: dir + "/crlf"}, want: "s3cret-crlf"},
		{name: "credentials directory", reg: config.Registry{PasswordFile: "$CREDENTIALS_DIRECTORY/pw"}, getenv: func(k string) string { return env[k] }, want: "s3cret-line"},
		{name: "credentials directory unset", reg: config.Registry{PasswordFile: "$CREDENTIALS_DIRECTORY/pw"}, wantErr: "CREDENTIALS_DIRECTORY, which is not set"},
		{name: "missing file", reg: config.Registry{PasswordFile: dir + "/nope"}, wantErr: "no such file"},
		{name: "empty first line", reg: config.Registry{PasswordFile: dir + "/empty"}, wantErr: "the first line is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := tt.getenv
			if getenv == nil {
				getenv = func(string) string { return "" }
			}
			got, err := tt.reg.ReadPassword(getenv)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ReadPassword() = %q, %v, want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadPassword() = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

func TestBearerToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := dir + "/" + name
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const tok = "s3cr3t-t0ken-0123456789"
	creds := func(k string) string {
		if k == "CREDENTIALS_DIRECTORY" {
			return dir
		}
		return ""
	}
	tests := []struct {
		name    string
		api     config.API
		getenv  func(string) string
		want    string
		wantErr string // a substring of the error
	}{
		{name: "none", api: config.API{}, want: ""},
		{name: "inline", api: config.API{Token: tok}, want: tok},
		{name: "file with a newline", api: config.API{TokenFile: write("nl", tok+"\n")}, want: tok},
		{name: "file with CRLF", api: config.API{TokenFile: write("crlf", tok+"\r\n")}, want: tok},
		{name: "first line of two", api: config.API{TokenFile: write("two", tok+"\nsecond line\n")}, want: tok},
		{name: "credential", api: config.API{TokenFile: "$CREDENTIALS_DIRECTORY/nl"}, getenv: creds, want: tok},
		{name: "credential without the variable", api: config.API{TokenFile: "$CREDENTIALS_DIRECTORY/nl"}, wantErr: "$CREDENTIALS_DIRECTORY, which is not set"},
		{name: "file too short", api: config.API{TokenFile: write("short", "abc\n")}, wantErr: "the first line must hold a token of at least 16 characters, has 3"},
		{name: "empty file", api: config.API{TokenFile: write("empty", "")}, wantErr: "at least 16 characters, has 0"},
		{name: "space inside", api: config.API{TokenFile: write("space", "s3cr3t t0ken-0123456789\n")}, wantErr: "printable ASCII without spaces"},
		{name: "missing file", api: config.API{TokenFile: dir + "/missing"}, wantErr: "api.token_file: open " + dir + "/missing: no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := tt.getenv
			if getenv == nil {
				getenv = func(string) string { return "" }
			}
			got, err := tt.api.BearerToken(getenv)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("BearerToken() = %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "s3cr3t") {
					t.Errorf("BearerToken() error quotes the token: %v", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("BearerToken() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
