// Package config loads and validates Dockward's JSON configuration.
//
// The field names are a contract with users' existing config files; new
// fields are additions with defaults, never renames.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/dockward/dockward/internal/registry"
)

// DefaultPath is where the daemon looks for its config when -config is not given.
const DefaultPath = "/etc/dockward/config.json"

// Config is the whole configuration file.
type Config struct {
	Registry      Registry      `json:"registry"`
	API           API           `json:"api"`
	Docker        Docker        `json:"docker"`
	StateFile     string        `json:"state_file,omitempty"`
	LogLevel      string        `json:"log_level,omitempty"`
	Notifications Notifications `json:"notifications"`
	Services      []Service     `json:"services"`
}

// Registry is the Registry v2 endpoint that CI pushes to. The credentials
// are optional: an open registry needs none. At most one source of them is
// set: username with password or password_file, or docker_config.
type Registry struct {
	URL          string  `json:"url"`
	PollInterval Seconds `json:"poll_interval"`
	Timeout      Seconds `json:"timeout"`
	Username     string  `json:"username,omitempty"`
	Password     string  `json:"password,omitempty"`
	// PasswordFile is read at start and on reload; it may start with
	// $CREDENTIALS_DIRECTORY/ (systemd's LoadCredential=).
	PasswordFile string `json:"password_file,omitempty"`
	// DockerConfig is a Docker CLI config.json (auths, credHelpers or
	// credsStore). When no credentials are set and $DOCKER_CONFIG/config.json
	// exists, that file is used.
	DockerConfig string `json:"docker_config,omitempty"`
	// CAFile is a PEM bundle added to the system's roots, for a registry
	// signed by a private CA.
	CAFile             string `json:"ca_file,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`
	// EventsToken (or the file EventsTokenFile holds it) enables POST
	// /registry/events, where the registry's notifications must present it
	// as "Authorization: Bearer <token>".
	EventsToken     string `json:"events_token,omitempty"`
	EventsTokenFile string `json:"events_token_file,omitempty"`
}

// credentialsDirectory prefixes a password_file under systemd's
// LoadCredential=.
const credentialsDirectory = "$CREDENTIALS_DIRECTORY/"

// ErrNoCredentialsDirectory: password_file starts with
// $CREDENTIALS_DIRECTORY, and it is not set (outside the unit, such as
// `dockward check` run by hand).
var ErrNoCredentialsDirectory = errors.New("registry.password_file: starts with $CREDENTIALS_DIRECTORY, which is not set (LoadCredential= in the unit sets it)")

// PasswordPath returns password_file with $CREDENTIALS_DIRECTORY expanded,
// or "" when it is unset or the variable is.
func (r Registry) PasswordPath(getenv func(string) string) string {
	rest, ok := strings.CutPrefix(r.PasswordFile, credentialsDirectory)
	if !ok {
		return r.PasswordFile
	}
	dir := getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, rest)
}

// ReadPassword returns the password: registry.password, or the first line
// of password_file. It never quotes the file.
func (r Registry) ReadPassword(getenv func(string) string) (string, error) {
	if r.PasswordFile == "" {
		return r.Password, nil
	}
	path := r.PasswordPath(getenv)
	if path == "" {
		return "", ErrNoCredentialsDirectory
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("registry.password_file: %w", err)
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("registry.password_file: %s: the first line is empty", path)
	}
	return pw, nil
}

func (r Registry) validate(p *problems, u *url.URL) {
	const f = "registry."
	switch {
	case r.Username != "" && r.Password == "" && r.PasswordFile == "":
		p.add(f+"username", "is set, but neither password nor password_file is")
	case r.Username == "" && (r.Password != "" || r.PasswordFile != ""):
		p.add(f+"username", "is required with a password or password_file")
	case r.Password != "" && r.PasswordFile != "":
		p.add(f+"password", "and password_file are both set; set one")
	}
	if r.PasswordFile != "" && !filepath.IsAbs(r.PasswordFile) && !strings.HasPrefix(r.PasswordFile, credentialsDirectory) {
		p.add(f+"password_file", "must be an absolute path or start with $CREDENTIALS_DIRECTORY/, got %q", r.PasswordFile)
	}
	if r.DockerConfig != "" {
		switch {
		case r.Username != "":
			p.add(f+"docker_config", "and username are both set: use one source of credentials")
		case !filepath.IsAbs(r.DockerConfig):
			p.add(f+"docker_config", "must be an absolute path, got %q", r.DockerConfig)
		case filepath.Base(r.DockerConfig) != "config.json":
			p.add(f+"docker_config", "must be a file named config.json (compose reads $DOCKER_CONFIG/config.json), got %q", r.DockerConfig)
		}
	}
	if r.CAFile != "" && !filepath.IsAbs(r.CAFile) {
		p.add(f+"ca_file", "must be an absolute path, got %q", r.CAFile)
	}
	if r.CAFile != "" && r.InsecureSkipVerify {
		p.add(f+"insecure_skip_verify", "and ca_file are both set; with a CA file the certificate can be verified")
	}
	if u == nil {
		return
	}
	if u.Scheme == "http" && (r.CAFile != "" || r.InsecureSkipVerify) {
		p.add(f+"url", "is http://, but ca_file or insecure_skip_verify is set: use https://")
	}
	if u.Scheme == "http" && r.Username != "" && !isLoopback(u.Hostname()) {
		p.add(f+"url", "is http:// to a host that is not loopback: credentials are only sent over https")
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// API is the local HTTP API. It always binds to 127.0.0.1.
type API struct {
	Port Port `json:"port"`
	// Token, or the first line of TokenFile, is the bearer token that POST
	// and DELETE requests must carry. Empty: no token is needed.
	Token     string `json:"token,omitempty"`
	TokenFile string `json:"token_file,omitempty"`
}

// minTokenLength keeps a token out of reach of guessing.
const minTokenLength = 16

// BearerToken returns the API token: api.token, or the first line of
// api.token_file (which may start with $CREDENTIALS_DIRECTORY/, for
// systemd's LoadCredential=). Empty means no token is set. Errors never
// quote the token.
func (a API) BearerToken(getenv func(string) string) (string, error) {
	if a.TokenFile == "" {
		return a.Token, nil
	}
	path := a.TokenFile
	if rest, ok := strings.CutPrefix(path, credentialsDirectory); ok {
		dir := getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return "", errors.New("api.token_file: starts with $CREDENTIALS_DIRECTORY, which is not set (LoadCredential= in the unit sets it)")
		}
		path = filepath.Join(dir, rest)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("api.token_file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	tok := strings.TrimSpace(line)
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("api.token_file: %s: the first line %w", path, err)
	}
	return tok, nil
}

// checkToken says what is wrong with a token, without quoting it.
func checkToken(tok string) error {
	if len(tok) < minTokenLength {
		return fmt.Errorf("must hold a token of at least %d characters, has %d", minTokenLength, len(tok))
	}
	for _, r := range tok {
		if r <= ' ' || r > '~' {
			return errors.New("must be printable ASCII without spaces (it is sent in an Authorization header)")
		}
	}
	return nil
}

// Docker says how to reach the engine and how to run compose.
type Docker struct {
	Socket string `json:"socket"`
	// ComposeCommand overrides detection, e.g. ["docker", "compose"] or
	// ["/usr/bin/docker-compose"]. Empty means: v2 plugin if present, else v1.
	ComposeCommand []string `json:"compose_command,omitempty"`
	ComposeTimeout Seconds  `json:"compose_timeout"`
	StopTimeout    Seconds  `json:"stop_timeout"`
}

// Service is one docker compose project that Dockward guards.
type Service struct {
	Name        string `json:"name"`
	Image       string `json:"image"`
	ComposeFile string `json:"compose_file,omitempty"`
	// ComposeFiles is an alternative to ComposeFile for projects with
	// override files: each is passed with -f, in order.
	ComposeFiles   []string `json:"compose_files,omitempty"`
	ComposeProject string   `json:"compose_project"`
	// EnvFile is passed to compose as --env-file when set.
	EnvFile string `json:"env_file,omitempty"`
	// ComposeServices names the compose services that run the watched
	// image. When empty they are learned from the project's containers.
	ComposeServices    []string `json:"compose_services,omitempty"`
	AutoUpdate         bool     `json:"auto_update"`
	AutoHeal           bool     `json:"auto_heal"`
	HealthGrace        Seconds  `json:"health_grace"`
	HealCooldown       Seconds  `json:"heal_cooldown"`
	HealthPollInterval Seconds  `json:"health_poll_interval"`
	HealVerifyDelay    Seconds  `json:"heal_verify_delay"`
	HealMaxRestarts    int      `json:"heal_max_restarts"`
	// PromoteTag makes this host a canary: a digest that deployed healthy
	// and stayed healthy for PromoteAfter seconds is copied in the registry
	// to <repository>:<PromoteTag>, which the fleet's hosts watch.
	PromoteTag   string  `json:"promote_tag,omitempty"`
	PromoteAfter Seconds `json:"promote_after,omitempty"`
}

// Notifications lists where alerts go. Every channel is optional.
type Notifications struct {
	Discord  *Discord  `json:"discord,omitempty"`
	SMTP     *SMTP     `json:"smtp,omitempty"`
	Webhooks []Webhook `json:"webhooks,omitempty"`
}

// Discord is a channel webhook.
type Discord struct {
	WebhookURL string `json:"webhook_url"`
	Username   string `json:"username,omitempty"`
	MinLevel   string `json:"min_level,omitempty"`
}

// SMTP sends alerts by mail.
type SMTP struct {
	Host     string     `json:"host"`
	Port     int        `json:"port"`
	From     string     `json:"from"`
	To       StringList `json:"to"`
	Username string     `json:"username,omitempty"`
	Password string     `json:"password,omitempty"`
	// TLS is "starttls", "implicit" or "none". Empty means implicit on port
	// 465 and starttls elsewhere.
	TLS      string `json:"tls,omitempty"`
	MinLevel string `json:"min_level,omitempty"`
}

// Webhook is a custom HTTP receiver whose body is a Go text/template. A
// body that looks like JSON (its first non-space character is { or [), or
// whose Content-Type header names JSON, must render valid JSON; any other
// body is plain text, sent as text/plain; charset=utf-8 unless the headers
// name a Content-Type. The notify package checks the template at load.
type Webhook struct {
	Name     string            `json:"name"`
	URL      string            `json:"url"`
	Method   string            `json:"method,omitempty"`
	Headers  map[string]string `json:"headers,omitempty"`
	Body     string            `json:"body,omitempty"`
	MinLevel string            `json:"min_level,omitempty"`
}

// Levels that notification channels can filter on, lowest first.
var levels = []string{"info", "warning", "critical"}

// Seconds is a duration written in the config as a number of seconds;
// fractions are allowed (0.5).
type Seconds float64

// Duration converts s to a time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(float64(s) * float64(time.Second)) }

// Port is a TCP port, written either as "9090" (as in the original design)
// or as 9090.
type Port string

// UnmarshalJSON accepts a JSON string or number.
func (p *Port) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*p = Port(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return typeError(b, reflect.TypeFor[string]())
	}
	*p = Port(n.String())
	return nil
}

// StringList accepts a single string or a list of strings.
type StringList []string

// UnmarshalJSON accepts "a@b" or ["a@b", "c@d"].
func (l *StringList) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*l = StringList{s}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return typeError(b, reflect.TypeFor[[]string]())
	}
	*l = list
	return nil
}

// typeError reports that b, given to an UnmarshalJSON method, is not a t. The
// decoder adds the field name; the method cannot know the offset.
func typeError(b []byte, t reflect.Type) error {
	kind := "number"
	if len(b) > 0 {
		switch b[0] {
		case '{':
			kind = "object"
		case '[':
			kind = "array"
		case '"':
			kind = "string"
		case 't', 'f':
			kind = "bool"
		}
	}
	return &json.UnmarshalTypeError{Value: kind, Type: t}
}

// UnmarshalJSON fills in the defaults before decoding so that a field that is
// absent gets its default while an explicit 0 is kept (and rejected).
func (s *Service) UnmarshalJSON(b []byte) error {
	type plain Service
	p := plain(defaultService())
	if err := decodeStrict(b, &p); err != nil {
		return err
	}
	*s = Service(p)
	return nil
}

// plainService decodes like Service but without its defaults.
type plainService Service

func defaultService() Service {
	return Service{
		HealthGrace:        60,
		HealCooldown:       300,
		HealthPollInterval: 5,
		HealVerifyDelay:    30,
		HealMaxRestarts:    3,
	}
}

// Default returns the configuration used for every field the file leaves out.
func Default() Config {
	return Config{
		Registry: Registry{URL: "http://localhost:5000", PollInterval: 300, Timeout: 10},
		API:      API{Port: "9090"},
		Docker:   Docker{Socket: "/var/run/docker.sock", ComposeTimeout: 300, StopTimeout: 10},
		LogLevel: "info",
	}
}

// Load reads, decodes and validates the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates a config document.
func Parse(b []byte) (*Config, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, errors.New("the file is empty; see config.sample.json")
	}
	cfg := Default()
	if err := decodeStrict(b, &cfg); err != nil {
		// Service.UnmarshalJSON decodes each service on its own, so offsets in
		// its type errors count from the service, not the file. Decode the
		// services again without it to report the right line.
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) && strings.HasPrefix(typ.Field, "services.") {
			var plain struct {
				Services []plainService `json:"services"`
			}
			if perr := json.NewDecoder(bytes.NewReader(b)).Decode(&plain); perr != nil {
				err = perr
			}
		}
		return nil, describeDecodeError(b, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the top-level object")
	}
	return nil
}

// describeDecodeError adds a line and column to JSON errors that carry an offset.
func describeDecodeError(b []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := position(b, syn.Offset)
		return fmt.Errorf("line %d, column %d: %w", line, col, err)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "value"
		}
		if typ.Offset == 0 { // from typeError: no position known
			return fmt.Errorf("%s: must be %s, not %s", field, typ.Type, typ.Value)
		}
		line, col := position(b, typ.Offset)
		return fmt.Errorf("line %d, column %d: %s: must be %s, not %s", line, col, field, typ.Type, typ.Value)
	}
	// encoding/json gives no position for an unknown field; point at the
	// first place the key appears, which is where a typo usually is.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if key, uerr := strconv.Unquote(name); uerr == nil {
			hint := " (check the spelling; README.md lists every field)"
			if loc := regexp.MustCompile(regexp.QuoteMeta(strconv.Quote(key)) + `\s*:`).FindIndex(b); loc != nil {
				line, col := position(b, int64(loc[0])+1)
				return fmt.Errorf("line %d, column %d: unknown field %q%s", line, col, key, hint)
			}
			return fmt.Errorf("unknown field %q%s", key, hint)
		}
	}
	return err
}

func position(b []byte, offset int64) (line, col int) {
	if offset > int64(len(b)) {
		offset = int64(len(b))
	}
	before := b[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	// The offset counts the byte in error, so that byte is at offset-1.
	col = max(int(offset)-bytes.LastIndexByte(before, '\n')-1, 1)
	return line, col
}

// ValidationError lists every problem found in a config, each naming its field.
type ValidationError struct {
	Problems []string
}

func (e *ValidationError) Error() string {
	return "invalid config:\n  " + strings.Join(e.Problems, "\n  ")
}

var (
	// Service names appear in URL paths (/trigger/<name>) and metric labels.
	serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// Compose's own rule for project names.
	composeProjectRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	// A compose service name that cannot be mistaken for a flag.
	composeServiceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
)

// Validate checks every field and reports all problems at once.
func (c *Config) Validate() error {
	var p problems
	registryHost := "" // set when registry.url is valid, to check images against

	u, err := url.Parse(c.Registry.URL)
	switch {
	case c.Registry.URL == "":
		p.add("registry.url", "is required")
	case err != nil:
		p.add("registry.url", "is not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		p.add("registry.url", "must start with http:// or https://, got %q", redactURL(c.Registry.URL))
	case u.Host == "":
		p.add("registry.url", "must include a host, got %q", redactURL(c.Registry.URL))
	case u.User != nil || u.RawQuery != "" || u.Fragment != "":
		p.add("registry.url", "must be scheme://host[:port] only, without credentials, query or fragment; got %q", redactURL(c.Registry.URL))
	case u.Path != "" && u.Path != "/":
		p.add("registry.url", "must not have a path (Dockward adds /v2/), got %q", u.Path)
	default:
		registryHost = u.Host
	}
	if registryHost == "" {
		u = nil
	}
	c.Registry.validate(&p, u)
	p.positive("registry.poll_interval", c.Registry.PollInterval)
	p.positive("registry.timeout", c.Registry.Timeout)
	c.Registry.validateEvents(&p)

	if port, err := strconv.Atoi(string(c.API.Port)); err != nil || port < 1 || port > 65535 {
		p.add("api.port", "must be a port number from 1 to 65535, got %q", c.API.Port)
	}
	switch {
	case c.API.Token != "" && c.API.TokenFile != "":
		p.add("api.token", "set api.token or api.token_file, not both")
	case c.API.TokenFile != "" && !filepath.IsAbs(c.API.TokenFile) && !strings.HasPrefix(c.API.TokenFile, credentialsDirectory):
		p.add("api.token_file", "must be an absolute path or start with $CREDENTIALS_DIRECTORY/, got %q", c.API.TokenFile)
	case c.API.Token != "":
		if err := checkToken(c.API.Token); err != nil {
			p.add("api.token", "%v", err)
		}
	}

	if c.Docker.Socket == "" || !filepath.IsAbs(c.Docker.Socket) {
		p.add("docker.socket", "must be an absolute path, got %q", c.Docker.Socket)
	}
	if len(c.Docker.ComposeCommand) > 0 && c.Docker.ComposeCommand[0] == "" {
		p.add("docker.compose_command[0]", "must name a program")
	}
	p.positive("docker.compose_timeout", c.Docker.ComposeTimeout)
	p.positive("docker.stop_timeout", c.Docker.StopTimeout)

	if c.StateFile != "" && !filepath.IsAbs(c.StateFile) {
		p.add("state_file", "must be an absolute path, got %q", c.StateFile)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		p.add("log_level", "must be one of debug, info, warn, error; got %q", c.LogLevel)
	}

	c.Notifications.validate(&p)

	if len(c.Services) == 0 {
		p.add("services", "must list at least one service")
	}
	names := map[string]int{}
	projects := map[string]int{}
	images := map[string]int{} // repository:tag -> index of the service watching it
	for i, s := range c.Services {
		f := func(name string) string { return fmt.Sprintf("services[%d].%s", i, name) }
		switch {
		case s.Name == "":
			p.add(f("name"), "is required")
		case !serviceNameRE.MatchString(s.Name):
			p.add(f("name"), "%q must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit (it is used in URL paths)", s.Name)
		default:
			if j, dup := names[s.Name]; dup {
				p.add(f("name"), "%q is already used by services[%d]", s.Name, j)
			} else {
				names[s.Name] = i
			}
		}
		switch {
		case s.Image == "" && s.AutoUpdate:
			p.add(f("image"), "is required when auto_update is true")
		case s.Image != "" && registryHost != "":
			ref, err := registry.ParseRef(s.Image, registryHost)
			if err != nil {
				p.add(f("image"), "%v", err)
				break
			}
			// Two services of one image would share its :rollback tag and
			// roll each other back.
			key := ref.Repository + ":" + ref.Tag
			if j, dup := images[key]; dup {
				p.add(f("image"), "%s is already watched by services[%d] (%q); service %q cannot watch it too: each repository:tag has one service",
					key, j, c.Services[j].Name, s.Name)
			} else {
				images[key] = i
			}
		}
		switch {
		case s.ComposeFile != "" && len(s.ComposeFiles) > 0:
			p.add(f("compose_files"), "must not be set together with compose_file: use one of them")
		case s.ComposeFile == "" && len(s.ComposeFiles) == 0:
			p.add(f("compose_file"), "is required (or compose_files)")
		case s.ComposeFile != "" && !filepath.IsAbs(s.ComposeFile):
			p.add(f("compose_file"), "must be an absolute path, got %q", s.ComposeFile)
		}
		for j, file := range s.ComposeFiles {
			if !filepath.IsAbs(file) {
				p.add(f(fmt.Sprintf("compose_files[%d]", j)), "must be an absolute path, got %q", file)
			}
		}
		if s.EnvFile != "" && !filepath.IsAbs(s.EnvFile) {
			p.add(f("env_file"), "must be an absolute path, got %q", s.EnvFile)
		}
		seenServices := map[string]bool{}
		for j, name := range s.ComposeServices {
			switch {
			case !composeServiceRE.MatchString(name):
				p.add(f(fmt.Sprintf("compose_services[%d]", j)), "%q must be letters, digits, '.', '_' or '-', starting with a letter or digit", name)
			case seenServices[name]:
				p.add(f(fmt.Sprintf("compose_services[%d]", j)), "%q is listed twice", name)
			}
			seenServices[name] = true
		}
		switch {
		case s.ComposeProject == "":
			p.add(f("compose_project"), "is required")
		case !composeProjectRE.MatchString(s.ComposeProject):
			p.add(f("compose_project"), "%q must be lowercase letters, digits, '_' or '-', starting with a letter or digit", s.ComposeProject)
		default:
			if j, dup := projects[s.ComposeProject]; dup {
				p.add(f("compose_project"), "%q is already used by services[%d]", s.ComposeProject, j)
			} else {
				projects[s.ComposeProject] = i
			}
		}
		p.positive(f("health_grace"), s.HealthGrace)
		p.positive(f("health_poll_interval"), s.HealthPollInterval)
		p.positive(f("heal_verify_delay"), s.HealVerifyDelay)
		if s.HealCooldown < 0 || math.IsNaN(float64(s.HealCooldown)) {
			p.add(f("heal_cooldown"), "must not be negative, got %v", float64(s.HealCooldown))
		} else if float64(s.HealCooldown) >= maxSeconds {
			p.add(f("heal_cooldown"), "must be less than 292 years, got %v seconds", float64(s.HealCooldown))
		}
		if s.HealMaxRestarts < 1 {
			p.add(f("heal_max_restarts"), "must be at least 1, got %d", s.HealMaxRestarts)
		}
		s.validatePromotion(&p, f, registryHost)
	}
	return p.err()
}

// validatePromotion checks promote_tag and promote_after.
func (s *Service) validatePromotion(p *problems, f func(string) string, registryHost string) {
	switch v := float64(s.PromoteAfter); {
	case v < 0 || math.IsNaN(v) || math.IsInf(v, 0):
		p.add(f("promote_after"), "must be a number of seconds, 0 or more, got %v", v)
	case v >= maxSeconds:
		p.add(f("promote_after"), "must be less than 292 years, got %v seconds", v)
	case v > 0 && s.PromoteTag == "":
		p.add(f("promote_after"), "is set, but promote_tag is not")
	}
	if s.PromoteTag == "" {
		return
	}
	if !s.AutoUpdate || s.Image == "" {
		p.add(f("promote_tag"), "needs image and auto_update: only a digest this host deployed is promoted")
		return
	}
	if registryHost == "" {
		return
	}
	ref, err := registry.ParseRef(s.Image, registryHost)
	if err != nil {
		return // reported for image
	}
	switch promoted, err := registry.ParseRef(ref.Repository+":"+s.PromoteTag, registryHost); {
	case err != nil || promoted.Tag != s.PromoteTag:
		p.add(f("promote_tag"), "%q is not a valid tag (letters, digits, '_', '.', '-'; at most 128, not starting with '.' or '-')", s.PromoteTag)
	case s.PromoteTag == ref.Tag:
		p.add(f("promote_tag"), "%q is the tag this service watches; promote to another tag, which the fleet watches", s.PromoteTag)
	}
}

// validateEvents checks the push-events token settings. Problems never
// quote the token.
func (r *Registry) validateEvents(p *problems) {
	switch {
	case r.EventsToken != "" && r.EventsTokenFile != "":
		p.add("registry.events_token_file", "set either events_token or events_token_file, not both")
	case r.EventsToken != "":
		if err := checkToken(r.EventsToken); err != nil {
			p.add("registry.events_token", "%v", err)
		}
	case r.EventsTokenFile != "" && !filepath.IsAbs(r.EventsTokenFile) && !strings.HasPrefix(r.EventsTokenFile, credentialsDirectory):
		p.add("registry.events_token_file", "must be an absolute path or start with $CREDENTIALS_DIRECTORY/, got %q", r.EventsTokenFile)
	}
}

// EventsSecret returns the push-events token: events_token, or the content
// of events_token_file without surrounding whitespace (the file may start
// with $CREDENTIALS_DIRECTORY/, as password_file). It is "" when push
// events are disabled. It never quotes the token.
func (r Registry) EventsSecret(getenv func(string) string) (string, error) {
	if r.EventsTokenFile == "" {
		return r.EventsToken, nil
	}
	path := Registry{PasswordFile: r.EventsTokenFile}.PasswordPath(getenv)
	if path == "" {
		return "", errors.New("registry.events_token_file: starts with $CREDENTIALS_DIRECTORY, which is not set (LoadCredential= in the unit sets it)")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("registry.events_token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("registry.events_token_file: %s %v", path, err)
	}
	return tok, nil
}

func (n *Notifications) validate(p *problems) {
	if d := n.Discord; d != nil {
		p.httpURL("notifications.discord.webhook_url", d.WebhookURL)
		p.level("notifications.discord.min_level", d.MinLevel)
	}
	if s := n.SMTP; s != nil {
		const f = "notifications.smtp."
		if s.Host == "" {
			p.add(f+"host", "is required")
		}
		if s.Port < 1 || s.Port > 65535 {
			p.add(f+"port", "must be a port number from 1 to 65535, got %d", s.Port)
		}
		if !strings.Contains(s.From, "@") {
			p.add(f+"from", "must be an email address, got %q", s.From)
		}
		if len(s.To) == 0 {
			p.add(f+"to", "must list at least one recipient")
		}
		for i, to := range s.To {
			if !strings.Contains(to, "@") {
				p.add(fmt.Sprintf("%sto[%d]", f, i), "must be an email address, got %q", to)
			}
		}
		switch s.TLS {
		case "", "starttls", "implicit", "none":
		default:
			p.add(f+"tls", "must be starttls, implicit or none; got %q", s.TLS)
		}
		if s.Password != "" && s.Username == "" {
			p.add(f+"username", "is required when password is set")
		}
		p.level(f+"min_level", s.MinLevel)
	}
	seen := map[string]int{}
	for i, w := range n.Webhooks {
		f := func(name string) string { return fmt.Sprintf("notifications.webhooks[%d].%s", i, name) }
		if w.Name == "" {
			p.add(f("name"), "is required (it labels watcher_notifications_failed_total)")
		} else if j, dup := seen[w.Name]; dup {
			p.add(f("name"), "%q is already used by notifications.webhooks[%d]", w.Name, j)
		} else {
			seen[w.Name] = i
		}
		p.httpURL(f("url"), w.URL)
		switch strings.ToUpper(w.Method) {
		case "", "POST", "PUT", "PATCH", "GET":
		default:
			p.add(f("method"), "must be POST, PUT, PATCH or GET; got %q", w.Method)
		}
		p.level(f("min_level"), w.MinLevel)
	}
}

type problems []string

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, field+": "+fmt.Sprintf(format, args...))
}

// maxSeconds is the first value too large for a time.Duration (292 years).
const maxSeconds = float64(math.MaxInt64) / float64(time.Second)

func (p *problems) positive(field string, v Seconds) {
	switch {
	case !(v > 0) || math.IsInf(float64(v), 0):
		p.add(field, "must be a positive number of seconds, got %v", float64(v))
	case float64(v) >= maxSeconds || v.Duration() <= 0:
		// Duration would overflow or round to 0, and time.NewTicker panics.
		p.add(field, "must be at least 1ns and less than 292 years, got %v seconds", float64(v))
	}
}

func (p *problems) httpURL(field, raw string) {
	u, err := url.Parse(raw)
	switch {
	case raw == "":
		p.add(field, "is required")
	case err != nil:
		p.add(field, "is not a URL") // the parse error would quote it, token and all
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		p.add(field, "must be an http:// or https:// URL, got %q", redactURL(raw))
	}
}

// redactURL keeps a URL's scheme and host for an error message: webhook
// URLs carry their token in the path, and any URL may carry a password.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err == nil && u.Host == "" && u.Opaque == "" && u.Scheme != "" {
		if u.Path != "" {
			return u.Scheme + "://…"
		}
		return u.Scheme + "://"
	}
	if err == nil && u.Host != "" {
		out := u.Scheme + "://" + u.Host
		if u.Path != "" || u.RawQuery != "" || u.User != nil {
			out += "/…"
		}
		return out
	}
	head, rest, _ := strings.Cut(raw, "/")
	if _, host, ok := strings.Cut(head, "@"); ok {
		head, rest = host, "…"
	}
	if rest != "" {
		head += "/…"
	}
	return head
}

func (p *problems) level(field, v string) {
	if v == "" {
		return
	}
	for _, l := range levels {
		if v == l {
			return
		}
	}
	p.add(field, "must be one of %s; got %q", strings.Join(levels, ", "), v)
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}

// StatePath says where the state file lives: state_file from the config,
// else $STATE_DIRECTORY/state.json (systemd's StateDirectory=), else
// /var/lib/dockward/state.json.
func (c *Config) StatePath(getenv func(string) string) string {
	if c.StateFile != "" {
		return c.StateFile
	}
	if dir := getenv("STATE_DIRECTORY"); dir != "" {
		// systemd passes a colon-separated list when several are configured.
		dir, _, _ = strings.Cut(dir, ":")
		return filepath.Join(dir, "state.json")
	}
	return "/var/lib/dockward/state.json"
}

// Files returns the service's compose files: compose_files, or
// compose_file alone.
func (s Service) Files() []string {
	if len(s.ComposeFiles) > 0 {
		return s.ComposeFiles
	}
	if s.ComposeFile == "" {
		return nil
	}
	return []string{s.ComposeFile}
}

// Service returns the service with the given name.
func (c *Config) Service(name string) (Service, bool) {
	for _, s := range c.Services {
		if s.Name == name {
			return s, true
		}
	}
	return Service{}, false
}
