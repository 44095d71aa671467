// Package registry reads tag digests from a Docker registry over the
// Registry HTTP API V2 (the OCI distribution API).
package registry

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout bounds each call when New is given no WithTimeout.
const DefaultTimeout = 15 * time.Second

// maxManifestSize bounds the manifest body read by the GET fallback.
const maxManifestSize = 4 << 20

// acceptManifests lists every manifest media type Dockward accepts, so the
// registry reports the digest of the manifest as pushed (an image index stays
// an index) instead of converting it.
const acceptManifests = "application/vnd.docker.distribution.manifest.v2+json, " +
	"application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, " +
	"application/vnd.oci.image.index.v1+json"

// Client talks to one registry. It is safe for concurrent use.
type Client struct {
	base    *url.URL
	hc      *http.Client
	tls     *tls.Config
	timeout time.Duration
	now     func() time.Time

	mu    sync.Mutex
	creds CredentialSource // nil: anonymous
	auth  authState
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout bounds each call (connection, request and reading the answer);
// the default is DefaultTimeout. A shorter deadline on the call's context wins.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithBasicAuth authenticates with a username and password, as the
// registry's challenge asks: Basic, or Bearer with a token server.
func WithBasicAuth(username, password string) Option {
	return WithCredentials(Static{Username: username, Password: password})
}

// WithCredentials takes the credentials from src, asked when the registry
// first challenges and again after it refused them.
func WithCredentials(src CredentialSource) Option { return func(c *Client) { c.creds = src } }

// WithTLSConfig sets the TLS configuration of the client's own transport,
// used for the registry and its token server: a private CA's pool, or an
// explicit InsecureSkipVerify. It has no effect with WithHTTPClient.
func WithTLSConfig(cfg *tls.Config) Option { return func(c *Client) { c.tls = cfg } }

// WithHTTPClient replaces the client's own keep-alive HTTP client, for
// instance to trust a private CA. Calls are still bounded by the timeout.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// New returns a client for the registry at baseURL, such as
// "http://127.0.0.1:5000" or "https://registry.example.com".
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("registry URL %q: %w", baseURL, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("registry URL %q: scheme must be http or https", baseURL)
	case u.Hostname() == "":
		return nil, fmt.Errorf("registry URL %q: no host", baseURL)
	case u.User != nil:
		return nil, fmt.Errorf("registry URL %q: must not hold credentials", u.Redacted())
	case u.Path != "" && u.Path != "/", u.RawQuery != "", u.Fragment != "":
		return nil, fmt.Errorf("registry URL %q: must have no path, query or fragment (the API lives at /v2/)", baseURL)
	}
	c := &Client{
		base:    &url.URL{Scheme: u.Scheme, Host: u.Host},
		timeout: DefaultTimeout,
		now:     time.Now,
	}
	for _, opt := range opts {
		opt(c)
	}
	if c.timeout <= 0 {
		return nil, fmt.Errorf("registry timeout %v: must be positive", c.timeout)
	}
	if c.hc == nil {
		tr := newTransport(c.timeout)
		tr.TLSClientConfig = c.tls
		// Never follow a redirect with the Authorization header to
		// another host: Go drops it there, which is what is wanted.
		c.hc = &http.Client{Transport: tr}
	}
	return c, nil
}

// newTransport returns a keep-alive transport. The call's context bounds
// the whole exchange; the dial and TLS timeouts only keep a stuck handshake
// from outliving it.
func newTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   timeout,
		ExpectContinueTimeout: time.Second,
	}
}

// Host returns the registry's host[:port], the prefix of the references the
// Docker engine knows its images by.
func (c *Client) Host() string { return c.base.Host }

// Ping checks that the registry speaks the V2 API and accepts the
// credentials: GET /v2/ must answer 200.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, at, err := c.do(ctx, http.MethodGet, "/v2/")
	if err != nil {
		return fmt.Errorf("ping registry %s: %w", c.base.Host, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("ping registry %s: %w", c.base.Host, statusErrorAfter(resp, at))
	}
	return nil
}

// Digest returns the digest of the manifest that repository:tag points to,
// such as "sha256:4f...". It asks with HEAD and reads Docker-Content-Digest;
// when a proxy strips that header it falls back to GET and hashes the body.
func (c *Client) Digest(ctx context.Context, repository, tag string) (string, error) {
	d, err := c.digest(ctx, repository, tag)
	if err != nil {
		return "", fmt.Errorf("get digest of %s/%s:%s: %w", c.base.Host, repository, tag, err)
	}
	return d, nil
}

func (c *Client) digest(ctx context.Context, repository, tag string) (string, error) {
	if err := validateRepository(repository); err != nil {
		return "", err
	}
	if err := validateTag(tag); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	path := "/v2/" + repository + "/manifests/" + tag
	resp, at, err := c.do(ctx, http.MethodHead, path)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
			if !validDigest(h) {
				return "", badResponse("HEAD %s: invalid Docker-Content-Digest %q", path, truncate(h, 200))
			}
			return h, nil
		}
	case http.StatusMethodNotAllowed:
	default:
		return "", statusErrorAfter(resp, at)
	}
	return c.digestFromBody(ctx, path)
}

// Prove fetches the manifest that repository:tag points to and checks that
// its bytes hash to digest, as a HEAD answered: a Docker-Content-Digest that
// a stale cache or a broken proxy got wrong is an ErrBadResponse instead of a
// digest to deploy. It costs a GET, so a caller proves a digest once, when
// it first sees it.
func (c *Client) Prove(ctx context.Context, repository, tag, digest string) error {
	if err := c.prove(ctx, repository, tag, digest); err != nil {
		return fmt.Errorf("prove digest %s of %s/%s:%s: %w", digest, c.base.Host, repository, tag, err)
	}
	return nil
}

func (c *Client) prove(ctx context.Context, repository, tag, digest string) error {
	if err := validateRepository(repository); err != nil {
		return err
	}
	if err := validateTag(tag); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	path := "/v2/" + repository + "/manifests/" + tag
	got, err := c.digestFromBody(ctx, path)
	if err != nil {
		return err
	}
	if got != digest {
		return badResponse("GET %s: the manifest is %s, not the %s that HEAD named", path, got, digest)
	}
	return nil
}

// digestFromBody fetches the manifest and hashes its exact bytes.
func (c *Client) digestFromBody(ctx context.Context, path string) (string, error) {
	resp, at, err := c.do(ctx, http.MethodGet, path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", statusErrorAfter(resp, at)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxManifestSize+1))
	if err != nil {
		return "", fmt.Errorf("GET %s: read manifest: %w", path, classifyTransport(ctx, err))
	}
	if len(body) > maxManifestSize {
		return "", badResponse("GET %s: manifest larger than %d bytes", path, maxManifestSize)
	}
	if err := checkManifest(body); err != nil {
		return "", badResponse("GET %s: the answer (Content-Type %q, %d bytes) is not a manifest: %v",
			path, truncate(resp.Header.Get("Content-Type"), 100), len(body), err)
	}
	sum := sha256.Sum256(body)
	computed := "sha256:" + hex.EncodeToString(sum[:])
	h := resp.Header.Get("Docker-Content-Digest")
	if h == "" {
		return computed, nil
	}
	// The header survived on GET: it must be valid and match the body.
	if !validDigest(h) {
		return "", badResponse("GET %s: invalid Docker-Content-Digest %q", path, truncate(h, 200))
	}
	var hh hash.Hash = sha256.New()
	if strings.HasPrefix(h, "sha512:") {
		hh = sha512.New()
	}
	hh.Write(body)
	if got := h[strings.IndexByte(h, ':')+1:]; got != hex.EncodeToString(hh.Sum(nil)) {
		return "", badResponse("GET %s: Docker-Content-Digest %s does not match the manifest's bytes (%s)", path, h, computed)
	}
	return h, nil
}

// checkManifest reports why body is not an image manifest or index: every
// one is a JSON object with a schemaVersion. An HTML page from a proxy or a
// cut body must not be hashed into a digest to deploy.
func checkManifest(body []byte) error {
	var m struct {
		SchemaVersion *int `json:"schemaVersion"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return err
	}
	if m.SchemaVersion == nil {
		return errors.New("no schemaVersion")
	}
	return nil
}

// validDigest reports whether d is "sha256:" and 64 lowercase hex digits, or
// "sha512:" and 128.
func validDigest(d string) bool {
	algo, hexPart, ok := strings.Cut(d, ":")
	if !ok {
		return false
	}
	switch {
	case algo == "sha256" && len(hexPart) == 64, algo == "sha512" && len(hexPart) == 128:
	default:
		return false
	}
	for i := 0; i < len(hexPart); i++ {
		if c := hexPart[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
