package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Credentials authenticate Dockward to a registry or to its token server.
// Their String and GoString hide the secrets, so that a stray %v cannot
// print them.
type Credentials struct {
	Username string
	Password string
	// IdentityToken is an OAuth2 refresh token, as `docker login` stores it
	// for some registries ("identitytoken"); it replaces the password when
	// asking a token server for a token.
	IdentityToken string
}

// Empty reports whether there is nothing to authenticate with.
func (c Credentials) Empty() bool {
	return c.Username == "" && c.Password == "" && c.IdentityToken == ""
}

// String names the user, never the secret.
func (c Credentials) String() string {
	switch {
	case c.Empty():
		return "no credentials"
	case c.IdentityToken != "":
		return fmt.Sprintf("identity token of %q", c.Username)
	default:
		return fmt.Sprintf("user %q", c.Username)
	}
}

// GoString is String, for %#v.
func (c Credentials) GoString() string { return c.String() }

// CredentialSource gives the credentials for a registry host (host[:port]).
// The client asks again after the registry refused them, so a source that
// reads a file or runs a helper picks up a new login without a restart.
type CredentialSource interface {
	Credentials(ctx context.Context, host string) (Credentials, error)
}

// Static is a CredentialSource that always gives the same credentials.
type Static Credentials

// Credentials returns c.
func (c Static) Credentials(context.Context, string) (Credentials, error) { return Credentials(c), nil }

// DockerConfig is a CredentialSource reading a Docker CLI config.json: a
// helper named in credHelpers for the host, else the credsStore helper, else
// the host's entry in auths. The file is read on every call.
type DockerConfig struct {
	Path string
	// Timeout bounds a credential helper's run; 0 means 30s.
	Timeout time.Duration
}

// dockerConfigFile is the part of config.json Dockward reads.
type dockerConfigFile struct {
	Auths       map[string]dockerAuth `json:"auths"`
	CredsStore  string                `json:"credsStore"`
	CredHelpers map[string]string     `json:"credHelpers"`
}

type dockerAuth struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

// Check reads and parses the file and reports whether it can give
// credentials for host, without running any helper: what `dockward check`
// says about it.
func (d DockerConfig) Check(host string) (string, error) {
	f, err := d.read()
	if err != nil {
		return "", err
	}
	if h, ok := lookupHost(f.CredHelpers, host); ok {
		return fmt.Sprintf("credential helper docker-credential-%s (credHelpers)", h), checkHelperName(h)
	}
	if f.CredsStore != "" {
		return fmt.Sprintf("credential helper docker-credential-%s (credsStore)", f.CredsStore), checkHelperName(f.CredsStore)
	}
	a, ok := lookupHost(f.Auths, host)
	if !ok {
		return "", fmt.Errorf("docker config %s: no auths entry, credHelpers entry or credsStore for %s", d.Path, host)
	}
	if _, err := a.credentials(); err != nil {
		return "", fmt.Errorf("docker config %s: auths entry for %s: %w", d.Path, host, err)
	}
	return "auths entry", nil
}

// Credentials reads the file and returns the credentials it gives for host.
func (d DockerConfig) Credentials(ctx context.Context, host string) (Credentials, error) {
	f, err := d.read()
	if err != nil {
		return Credentials{}, err
	}
	if h, ok := lookupHost(f.CredHelpers, host); ok {
		return d.helper(ctx, h, host)
	}
	if f.CredsStore != "" {
		c, err := d.helper(ctx, f.CredsStore, host)
		if err != nil || !c.Empty() {
			return c, err
		}
	}
	a, ok := lookupHost(f.Auths, host)
	if !ok {
		return Credentials{}, nil
	}
	c, err := a.credentials()
	if err != nil {
		return Credentials{}, fmt.Errorf("docker config %s: auths entry for %s: %w", d.Path, host, err)
	}
	return c, nil
}

func (d DockerConfig) read() (*dockerConfigFile, error) {
	b, err := os.ReadFile(d.Path)
	if err != nil {
		return nil, fmt.Errorf("read docker config: %w", err)
	}
	var f dockerConfigFile
	if err := json.Unmarshal(b, &f); err != nil {
		// The decoder's message may quote a piece of the file: leave it out.
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, fmt.Errorf("docker config %s: invalid JSON at byte %d", d.Path, syn.Offset)
		}
		return nil, fmt.Errorf("docker config %s: not a Docker config.json", d.Path)
	}
	return &f, nil
}

func (a dockerAuth) credentials() (Credentials, error) {
	c := Credentials{Username: a.Username, Password: a.Password, IdentityToken: a.IdentityToken}
	if a.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(a.Auth))
		if err != nil {
			return Credentials{}, errors.New(`"auth" is not base64`)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return Credentials{}, errors.New(`"auth" is not base64 of user:password`)
		}
		c.Username, c.Password = user, pass
	}
	if c.Empty() {
		return Credentials{}, errors.New(`no "auth", "username"/"password" or "identitytoken"`)
	}
	return c, nil
}

// lookupHost finds host in a map keyed the way docker login writes keys:
// "host:port", "https://host:port" or "https://host/v1/". Docker Hub's
// hosts all match "index.docker.io" and "docker.io".
func lookupHost[V any](m map[string]V, host string) (V, bool) {
	if v, ok := m[host]; ok {
		return v, true
	}
	want := normalizeHost(host)
	for k, v := range m {
		if normalizeHost(k) == want {
			return v, true
		}
	}
	var zero V
	return zero, false
}

func normalizeHost(s string) string {
	s = strings.ToLower(s)
	if _, rest, ok := strings.Cut(s, "://"); ok {
		s = rest
	}
	s, _, _ = strings.Cut(s, "/")
	switch s {
	case "docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		return "docker.io"
	}
	return s
}

func checkHelperName(name string) error {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return fmt.Errorf("credential helper name %q: must be a plain name (docker-credential-NAME on PATH)", name)
	}
	if _, err := exec.LookPath("docker-credential-" + name); err != nil {
		return fmt.Errorf("credential helper docker-credential-%s is not on PATH", name)
	}
	return nil
}

// helper runs "docker-credential-<name> get" with the host on stdin, the
// Docker credential helper protocol. A helper that has nothing for the host
// says "credentials not found": that is no credentials, not an error.
func (d DockerConfig) helper(ctx context.Context, name, host string) (Credentials, error) {
	if err := checkHelperName(name); err != nil {
		return Credentials{}, err
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	prog := "docker-credential-" + name
	cmd := exec.CommandContext(ctx, prog, "get")
	cmd.Stdin = strings.NewReader(host + "\n")
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stdout.String() + " " + stderr.String())
		if strings.Contains(strings.ToLower(msg), "credentials not found") {
			return Credentials{}, nil
		}
		// The helper's output is not quoted: a broken helper might print
		// a secret.
		return Credentials{}, fmt.Errorf("%s get %s: %w", prog, host, err)
	}
	var out struct {
		Username string `json:"Username"`
		Secret   string `json:"Secret"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return Credentials{}, fmt.Errorf("%s get %s: output is not the helper protocol's JSON", prog, host)
	}
	if out.Username == "<token>" {
		return Credentials{IdentityToken: out.Secret}, nil
	}
	return Credentials{Username: out.Username, Password: out.Secret}, nil
}
