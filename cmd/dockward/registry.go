package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/registry"
)

// registryAccess is how Dockward reaches the registry: TLS, the
// credentials of the digest check, and the Docker config compose pulls with.
type registryAccess struct {
	host  string
	tls   *tls.Config               // nil: Go's defaults
	creds registry.CredentialSource // nil: anonymous
	// static is set for username and password: they are written to a
	// config.json of Dockward's own for compose.
	static *registry.Credentials
	// dockerDir is the DOCKER_CONFIG compose runs with; "" leaves its
	// environment alone.
	dockerDir string
	// what says where the credentials come from, never what they are.
	what string
}

// loadRegistryAccess reads the files the registry section names (password
// file, Docker config, CA bundle) and checks them. Errors name the field
// and never quote a file.
func loadRegistryAccess(r config.Registry, getenv func(string) string) (*registryAccess, error) {
	u, err := url.Parse(r.URL)
	if err != nil {
		return nil, errors.New("registry.url: is not a URL")
	}
	a := &registryAccess{host: u.Host, what: "anonymous"}
	switch {
	case r.CAFile != "":
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		pem, err := os.ReadFile(r.CAFile)
		if err != nil {
			return nil, fmt.Errorf("registry.ca_file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("registry.ca_file: %s holds no PEM certificate", r.CAFile)
		}
		a.tls = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	case r.InsecureSkipVerify:
		a.tls = &tls.Config{InsecureSkipVerify: true}
	}
	switch {
	case r.Username != "":
		pw, err := r.ReadPassword(getenv)
		if err != nil {
			return nil, err
		}
		c := registry.Credentials{Username: r.Username, Password: pw}
		a.creds, a.static = registry.Static(c), &c
		a.what = fmt.Sprintf("user %q (registry.password)", r.Username)
		if r.PasswordFile != "" {
			a.what = fmt.Sprintf("user %q (registry.password_file)", r.Username)
		}
	case r.DockerConfig != "":
		d := registry.DockerConfig{Path: r.DockerConfig}
		how, err := d.Check(a.host)
		if err != nil {
			return nil, fmt.Errorf("registry.docker_config: %w", err)
		}
		a.creds, a.dockerDir = d, filepath.Dir(r.DockerConfig)
		a.what = fmt.Sprintf("%s of %s", how, r.DockerConfig)
	case getenv("DOCKER_CONFIG") != "":
		// The unit's DOCKER_CONFIG: the file `docker login` wrote, which
		// compose reads too through the inherited environment.
		path := filepath.Join(getenv("DOCKER_CONFIG"), "config.json")
		if _, err := os.Stat(path); err != nil {
			break
		}
		d := registry.DockerConfig{Path: path}
		a.creds = d
		how, err := d.Check(a.host)
		if err != nil {
			a.what = fmt.Sprintf("anonymous for now (%v); read again when the registry asks", err)
		} else {
			a.what = fmt.Sprintf("%s of %s ($DOCKER_CONFIG)", how, path)
		}
	}
	return a, nil
}

// options returns the registry client's options for a.
func (a *registryAccess) options() []registry.Option {
	var opts []registry.Option
	if a.tls != nil {
		opts = append(opts, registry.WithTLSConfig(a.tls))
	}
	if a.creds != nil {
		opts = append(opts, registry.WithCredentials(a.creds))
	}
	return opts
}

// composeConfig is the private folder holding the config.json that compose
// pulls with when the credentials are a username and password.
type composeConfig struct {
	dir     string
	cleanup func() error
}

// newComposeConfig makes a private folder for compose's config.json: in
// $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=, removed by systemd too)
// or a new 0700 temporary folder. Close removes it.
func newComposeConfig(getenv func(string) string) (*composeConfig, error) {
	if rt, _, _ := strings.Cut(getenv("RUNTIME_DIRECTORY"), ":"); rt != "" {
		dir := filepath.Join(rt, "docker")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("compose docker config: %w", err)
		}
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("compose docker config: %w", err)
		}
		return &composeConfig{dir: dir, cleanup: func() error { return os.RemoveAll(dir) }}, nil
	}
	dir, err := os.MkdirTemp("", "dockward-docker-")
	if err != nil {
		return nil, fmt.Errorf("compose docker config: %w", err)
	}
	return &composeConfig{dir: dir, cleanup: func() error { return os.RemoveAll(dir) }}, nil
}

// write replaces config.json with one auths entry for host: mode 0600,
// written to a temporary file and renamed, so compose never reads half.
func (c *composeConfig) write(host string, creds registry.Credentials) error {
	auth := base64.StdEncoding.EncodeToString([]byte(creds.Username + ":" + creds.Password))
	b, err := json.MarshalIndent(map[string]any{"auths": map[string]any{host: map[string]string{"auth": auth}}}, "", "  ")
	if err != nil {
		return fmt.Errorf("compose docker config: %w", err)
	}
	f, err := os.CreateTemp(c.dir, ".config-*.json")
	if err != nil {
		return fmt.Errorf("compose docker config: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("compose docker config: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("compose docker config: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(c.dir, "config.json")); err != nil {
		return fmt.Errorf("compose docker config: %w", err)
	}
	return nil
}

// checkOnline asks the registry for the digest of each service's image,
// one authenticated HEAD each, and prints the outcome: what `dockward check
// -online` does to test credentials before a restart. It fails when any
// service fails.
func checkOnline(ctx context.Context, cfg *config.Config, getenv func(string) string, stdout io.Writer) error {
	access, err := loadRegistryAccess(cfg.Registry, getenv)
	if err != nil {
		return err
	}
	opts := append(access.options(), registry.WithTimeout(cfg.Registry.Timeout.Duration()))
	reg, err := registry.New(cfg.Registry.URL, opts...)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "registry %s: credentials: %s\n", reg.Host(), access.what)
	failed := 0
	for _, s := range cfg.Services {
		if s.Image == "" {
			fmt.Fprintf(stdout, "service %s: no image, nothing to check\n", s.Name)
			continue
		}
		ref, err := registry.ParseRef(s.Image, reg.Host())
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "service %s: %v\n", s.Name, err)
			continue
		}
		start := time.Now()
		d, err := reg.Digest(ctx, ref.Repository, ref.Tag)
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "service %s: %s: FAILED (%s): %v\n", s.Name, ref.Local(), registry.Kind(err), err)
			continue
		}
		fmt.Fprintf(stdout, "service %s: %s: OK %s (%v)\n", s.Name, ref.Local(), d, time.Since(start).Round(time.Millisecond))
	}
	if failed > 0 {
		return fmt.Errorf("online check: %d of %d services failed", failed, len(cfg.Services))
	}
	return nil
}
