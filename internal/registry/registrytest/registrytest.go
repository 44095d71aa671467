// Package registrytest runs a real registry (Debian's docker-registry,
// distribution 2.8) for tests and pushes tiny images to it over the HTTP API.
package registrytest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

const startTimeout = 10 * time.Second

// Option configures a registry that Start runs.
type Option func(*options)

type options struct {
	notifyURL, notifyToken string
}

// WithNotifications makes the registry send its notification events
// (pushes, pulls, deletes) to url, with "Authorization: Bearer <token>" when
// token is not empty. The registry retries a failed delivery, with a short
// backoff, until the endpoint accepts it.
func WithNotifications(url, token string) Option {
	return func(o *options) { o.notifyURL, o.notifyToken = url, token }
}

// Start runs docker-registry on 127.0.0.1 with filesystem storage in a
// temporary directory and returns its base URL, such as
// "http://127.0.0.1:41234". The registry is killed at test cleanup. Start
// fails the test when docker-registry is not installed or does not answer
// GET /v2/ within 10s.
func Start(t testing.TB, opts ...Option) string {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return StartWith(t, Options{notify: o}).URL
}

// Options configure a registry started by StartWith.
type Options struct {
	// TLS serves https with this certificate and key (PEM files).
	TLSCert, TLSKey string
	// CA is the CA that issued TLSCert, to check that the registry is up.
	CA *CA
	// Htpasswd requires Basic credentials from this htpasswd file (bcrypt).
	Htpasswd string
	// Token requires bearer tokens from this token server.
	Token *TokenServer

	notify options // from Start's options
}

// Registry is a running docker-registry.
type Registry struct {
	URL  string // such as "http://127.0.0.1:41234" or "https://..."
	Host string // 127.0.0.1:port

	t       testing.TB
	dir     string
	opts    Options
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  chan error
	stopped bool
}

// StartWith runs docker-registry as Start does, with TLS and authentication
// as opts say.
func StartWith(t testing.TB, opts Options) *Registry {
	t.Helper()
	r := &Registry{t: t, dir: t.TempDir(), Host: FreeAddr(t), opts: opts}
	r.URL = "http://" + r.Host
	if opts.TLSCert != "" {
		r.URL = "https://" + r.Host
	}
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("docker-registry output:\n%s", r.out.String())
		}
	})
	r.start()
	return r
}

// Restart stops the registry and starts it again on the same port and
// storage, with the token server's current keys (see TokenServer.Rotate).
func (r *Registry) Restart() {
	r.t.Helper()
	r.stop()
	r.start()
}

func (r *Registry) stop() {
	if r.cmd == nil || r.stopped {
		return
	}
	r.cmd.Process.Kill()
	<-r.exited
	r.stopped = true
}

func (r *Registry) start() {
	t := r.t
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry not found (%v): install it with `apt-get install docker-registry` (Debian's distribution 2.8); the registry tests need a real registry", err)
	}
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: dockward-test
`, strconv.Quote(filepath.Join(r.dir, "data")), r.Host)
	if r.opts.TLSCert != "" {
		config += fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", strconv.Quote(r.opts.TLSCert), strconv.Quote(r.opts.TLSKey))
	}
	switch {
	case r.opts.Htpasswd != "":
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: dockward-test\n    path: %s\n", strconv.Quote(r.opts.Htpasswd))
	case r.opts.Token != nil:
		tok := r.opts.Token
		config += fmt.Sprintf("auth:\n  token:\n    realm: %s\n    service: %s\n    issuer: %s\n    rootcertbundle: %s\n",
			strconv.Quote(tok.URL+"/token"), strconv.Quote(tok.Service), strconv.Quote(tok.Issuer), strconv.Quote(tok.rootBundle(t)))
	}
	// After the tls lines, which belong to the http section.
	if o := r.opts.notify; o.notifyURL != "" {
		config += notificationsConfig(o.notifyURL, o.notifyToken)
	}
	configPath := filepath.Join(r.dir, "config.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatalf("write registry config: %v", err)
	}

	r.out = &syncBuffer{}
	cmd := exec.Command(bin, "serve", configPath)
	cmd.Stdout = r.out
	cmd.Stderr = r.out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	r.cmd, r.stopped = cmd, false
	r.exited = make(chan error, 1)
	go func() { r.exited <- cmd.Wait() }()

	hc := &http.Client{Timeout: time.Second}
	if r.opts.CA != nil {
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.opts.CA.Pool()}}
	}
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := hc.Get(r.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			// With authentication, 401 is how a registry that is up answers.
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized && (r.opts.Htpasswd != "" || r.opts.Token != nil) {
				return
			}
		}
		select {
		case werr := <-r.exited:
			r.exited <- werr // for the cleanup
			t.Fatalf("docker-registry exited before serving (%v); output:\n%s", werr, r.out.String())
		case <-deadline.C:
			t.Fatalf("docker-registry did not answer GET /v2/ within %v (last: %v); output:\n%s", startTimeout, describe(resp, err), r.out.String())
		case <-tick.C:
		}
	}
}

// notificationsConfig is the registry config section that sends events to
// one endpoint. Strings are quoted the JSON way, which YAML reads too.
func notificationsConfig(url, token string) string {
	headers := ""
	if token != "" {
		headers = fmt.Sprintf("      headers:\n        Authorization: [%s]\n", strconv.Quote("Bearer "+token))
	}
	return fmt.Sprintf(`notifications:
  endpoints:
    - name: dockward
      url: %s
%s      timeout: 2s
      threshold: 1
      backoff: 200ms
`, strconv.Quote(url), headers)
}

func describe(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// FreeAddr returns a 127.0.0.1 address whose port was free a moment ago.
// It is drawn below the kernel's ephemeral range (32768 and up on Linux),
// which outgoing connections use: a port from ":0" is in that range and
// can be taken by any client socket before the server that was meant to
// have it binds it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // in use
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatalf("no free port found in 20000-31999")
	return ""
}

// Push uploads a tiny single-layer image to repository:tag of the registry at
// baseURL and returns the digest of the manifest, the sha256 of the exact
// bytes PUT. The layer is a gzipped tar holding one file whose bytes are
// content, so different contents give different digests and the image can be
// pulled by a real Docker engine (it has no command to run).
func Push(t testing.TB, baseURL, repository, tag string, content []byte) string {
	t.Helper()
	layer, diffID := layerTar(t, content)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{diffID}},
	})
	if err != nil {
		t.Fatalf("encode image config: %v", err)
	}
	configDigest := PushBlob(t, baseURL, repository, config)
	layerDigest := PushBlob(t, baseURL, repository, layer)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.docker.distribution.manifest.v2+json",
		"config": map[string]any{
			"mediaType": "application/vnd.docker.container.image.v1+json",
			"size":      len(config),
			"digest":    configDigest,
		},
		"layers": []map[string]any{{
			"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
			"size":      len(layer),
			"digest":    layerDigest,
		}},
	})
	if err != nil {
		t.Fatalf("encode manifest: %v", err)
	}
	return PutManifest(t, baseURL, repository, tag, "application/vnd.docker.distribution.manifest.v2+json", manifest)
}

// PutManifest PUTs manifest bytes under repository:tag and returns their
// sha256 digest, after checking that the registry reports the same one.
func PutManifest(t testing.TB, baseURL, repository, tag, mediaType string, manifest []byte) string {
	t.Helper()
	want := digestOf(manifest)
	req := newRequest(t, http.MethodPut, baseURL+"/v2/"+repository+"/manifests/"+tag, manifest)
	req.Header.Set("Content-Type", mediaType)
	resp := send(t, req, http.StatusCreated)
	if got := resp.Header.Get("Docker-Content-Digest"); got != want {
		t.Fatalf("PUT manifest %s:%s: registry says digest %q, the bytes hash to %q", repository, tag, got, want)
	}
	return want
}

// PushBlob uploads blob to repository with a monolithic upload (POST to
// start, PUT with the bytes and their digest) and returns its digest.
func PushBlob(t testing.TB, baseURL, repository string, blob []byte) string {
	t.Helper()
	d := digestOf(blob)
	resp := send(t, newRequest(t, http.MethodPost, baseURL+"/v2/"+repository+"/blobs/uploads/", nil), http.StatusAccepted)
	base, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("parse registry URL %q: %v", baseURL, err)
	}
	loc, err := base.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatalf("start blob upload to %s: bad Location %q: %v", repository, resp.Header.Get("Location"), err)
	}
	q := loc.Query()
	q.Set("digest", d)
	loc.RawQuery = q.Encode()
	req := newRequest(t, http.MethodPut, loc.String(), blob)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp = send(t, req, http.StatusCreated)
	if got := resp.Header.Get("Docker-Content-Digest"); got != d {
		t.Fatalf("PUT blob to %s: registry says digest %q, the bytes hash to %q", repository, got, d)
	}
	return d
}

func newRequest(t testing.TB, method, u string, body []byte) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return req
}

// send does req and fails the test unless the status is want.
func send(t testing.TB, req *http.Request, want int) *http.Response {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s, want %d: %s", req.Method, req.URL, resp.Status, want, body)
	}
	return resp
}

// layerTar returns a gzipped tar holding one file, and the diff ID (digest
// of the uncompressed tar). Both are deterministic.
func layerTar(t testing.TB, content []byte) (gz []byte, diffID string) {
	t.Helper()
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	hdr := &tar.Header{Name: "dockward-test", Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		t.Fatalf("write layer tar: %v", err)
	}
	tw.Write(content)
	if err := tw.Close(); err != nil {
		t.Fatalf("write layer tar: %v", err)
	}
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	zw.Write(raw.Bytes())
	if err := zw.Close(); err != nil {
		t.Fatalf("gzip layer: %v", err)
	}
	return zipped.Bytes(), digestOf(raw.Bytes())
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// syncBuffer collects the registry's output, written by exec's copying
// goroutine and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
