// Package docker is a small client for the Docker Engine HTTP API, spoken
// over the engine's unix socket. It covers what Dockward needs: listing and
// inspecting a compose project's containers, restarting them, pulling,
// tagging and removing images, and following the event stream.
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// maxAPIVersion is the newest Engine API version whose behaviour this client
// is written against. A newer engine is spoken to at this version, an older
// one at its own; an engine whose oldest accepted version (MinAPIVersion) is
// newer than this cannot be spoken to at all. Everything the client reads -
// containers/json, containers/{id}/json with State.Health and
// Config.Healthcheck, restart?t=, images/{ref}/json RepoDigests, image tag,
// remove and pull, events with filters and since - is the same from API 1.41
// (Docker 20.10) to 1.47 (late Docker 27 releases). Docker 29 refuses any
// version below 1.44.
const maxAPIVersion = "1.47"

const (
	// defaultTimeout bounds each call that is not a long-lived stream.
	defaultTimeout = 30 * time.Second
	// dialTimeout bounds connecting to the socket.
	dialTimeout = 5 * time.Second
	// maxErrorBody is how much of an error response is read for its message.
	maxErrorBody = 64 << 10
)

// ErrNotFound matches (with errors.Is) an APIError for a missing container
// or image.
var ErrNotFound = errors.New("not found")

// APIError is a non-2xx answer from the engine.
type APIError struct {
	Op         string // what was being done, e.g. "inspect container abc123"
	StatusCode int
	Message    string // the engine's "message", or the raw body if it had none
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: docker API %d: %s", e.Op, e.StatusCode, e.Message)
}

// Is reports whether a 404 is being matched against ErrNotFound.
func (e *APIError) Is(target error) bool {
	return target == ErrNotFound && e.StatusCode == http.StatusNotFound
}

// negotiationError is the engine's error answer to GET /version. It keeps
// the status, so that a 5xx reads as an engine that is away, but is no
// APIError: a 404 there is not the caller's container or image missing.
type negotiationError struct {
	msg    string
	status int
}

func (e *negotiationError) Error() string { return e.msg }

// Client talks to one Docker engine. It is safe for concurrent use.
type Client struct {
	http    *http.Client
	logger  *slog.Logger
	timeout time.Duration // per call; the header phase of streams

	// versionLock guards apiVersion. It is a channel rather than a mutex so
	// that a caller waiting on another's negotiation can give up with its ctx.
	versionLock chan struct{}
	apiVersion  string // negotiated, "" until negotiation succeeds
	// negotiated is what the last successful negotiation learned, for
	// readers that must not wait (a status page).
	negotiated atomic.Pointer[[2]string] // engine version, API version
}

// New returns a client for the engine listening on socketPath, typically
// /var/run/docker.sock. Nothing is dialled until the first call. A nil logger
// discards.
func New(socketPath string, logger *slog.Logger) *Client {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dialer := &net.Dialer{Timeout: dialTimeout}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:        8,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &Client{
		http: &http.Client{
			Transport: transport,
			// The engine does not redirect; a redirect would come from its
			// router cleaning a path and must not be followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		logger:      logger.With("component", "docker", "socket", socketPath),
		timeout:     defaultTimeout,
		versionLock: make(chan struct{}, 1),
	}
}

// Version returns the API version the client speaks to the engine,
// negotiating it with GET /version on first use: the older of the engine's
// ApiVersion and maxAPIVersion, provided the engine's MinAPIVersion allows
// it. A failed negotiation is retried by the next call, and so is one whose
// version the engine has since rejected (see send).
func (c *Client) Version(ctx context.Context) (string, error) {
	select {
	case c.versionLock <- struct{}{}:
	case <-ctx.Done():
		return "", fmt.Errorf("negotiate docker API version: %w", ctx.Err())
	}
	defer func() { <-c.versionLock }()
	if c.apiVersion != "" {
		return c.apiVersion, nil
	}

	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var v struct {
		Version       string
		APIVersion    string `json:"ApiVersion"`
		MinAPIVersion string // absent from engines older than API 1.25
	}
	// /version is the one path asked for without a version prefix.
	resp, err := c.roundTrip(ctx, "negotiate docker API version", http.MethodGet, "/version", nil)
	if apiErr, ok := errors.AsType[*APIError](err); ok {
		// Not an APIError any more: a 404 here must not read as the
		// caller's container or image being missing.
		return "", &negotiationError{msg: apiErr.Error(), status: apiErr.StatusCode}
	}
	if err != nil {
		return "", err
	}
	defer closeBody(resp)
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return "", fmt.Errorf("negotiate docker API version: decode /version: %w", err)
	}
	use, err := negotiate(v.APIVersion, v.MinAPIVersion)
	if err != nil {
		return "", fmt.Errorf("negotiate docker API version: %w", err)
	}
	c.apiVersion = use
	c.negotiated.Store(&[2]string{v.Version, use})
	c.logger.Info("docker engine connected",
		"engine_version", v.Version, "engine_api_version", v.APIVersion,
		"engine_min_api_version", v.MinAPIVersion, "api_version", use)
	return use, nil
}

// EngineVersion returns the engine's version (such as "24.0.7") and the
// API version the client speaks to it, as of the last successful
// negotiation; both are empty before one. It does no I/O.
func (c *Client) EngineVersion() (engine, api string) {
	if v := c.negotiated.Load(); v != nil {
		return v[0], v[1]
	}
	return "", ""
}

// negotiate picks the version to speak to an engine that serves API versions
// engineMin to engineMax: the older of engineMax and maxAPIVersion. An
// engineMin newer than maxAPIVersion is an error, as the engine would refuse
// every call; an empty engineMin, from an engine too old to report one, sets
// no lower bound. Versions compare numerically: 1.5 is older than 1.47.
func negotiate(engineMax, engineMin string) (string, error) {
	high, err := parseAPIVersion(engineMax)
	if err != nil {
		return "", fmt.Errorf("engine ApiVersion: %w", err)
	}
	ours, err := parseAPIVersion(maxAPIVersion)
	if err != nil {
		return "", err
	}
	if engineMin != "" {
		low, err := parseAPIVersion(engineMin)
		if err != nil {
			return "", fmt.Errorf("engine MinAPIVersion: %w", err)
		}
		if high.less(low) {
			return "", fmt.Errorf("engine reports MinAPIVersion %s above its ApiVersion %s", engineMin, engineMax)
		}
		if ours.less(low) {
			return "", fmt.Errorf("the Docker engine requires API ≥ %s but dockward speaks at most %s; upgrade dockward", engineMin, maxAPIVersion)
		}
	}
	if high.less(ours) {
		return engineMax, nil
	}
	return maxAPIVersion, nil
}

// forgetVersion drops the negotiated version if it is still version, so that
// the next call negotiates again. It gives up, leaving the version, if ctx
// ends while another call holds the lock.
func (c *Client) forgetVersion(ctx context.Context, version string) {
	select {
	case c.versionLock <- struct{}{}:
	case <-ctx.Done():
		return
	}
	defer func() { <-c.versionLock }()
	if c.apiVersion == version {
		c.apiVersion = ""
	}
}

// isVersionRejection reports whether an engine's error message refuses the
// API version of the request, as in "client version 1.41 is too old.
// Minimum supported API version is 1.44, please upgrade your client to a
// newer version" or "client version 1.47 is too new. Maximum supported API
// version is 1.41".
func isVersionRejection(message string) bool {
	rest, ok := strings.CutPrefix(strings.ToLower(message), "client version ")
	return ok && (strings.Contains(rest, " is too old") || strings.Contains(rest, " is too new"))
}

type apiVersion struct{ major, minor int }

func (v apiVersion) less(w apiVersion) bool {
	return v.major < w.major || v.major == w.major && v.minor < w.minor
}

func parseAPIVersion(s string) (apiVersion, error) {
	majorText, minorText, ok := strings.Cut(s, ".")
	if !ok {
		return apiVersion{}, fmt.Errorf("malformed API version %q", s)
	}
	major, err1 := strconv.Atoi(majorText)
	minor, err2 := strconv.Atoi(minorText)
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return apiVersion{}, fmt.Errorf("malformed API version %q", s)
	}
	return apiVersion{major, minor}, nil
}

// checkPathRef checks a container ID or name, or an image reference, before
// it goes into a request path unescaped: the engine's router would resolve
// "." and ".." segments, and an empty one would change the route.
func checkPathRef(ref string) error {
	if ref == "" {
		return errors.New("empty reference")
	}
	for seg := range strings.SplitSeq(ref, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("invalid reference %q", ref)
		}
	}
	return nil
}

// request describes one call to the engine.
type request struct {
	op     string // for errors: "inspect container abc123"
	method string
	path   string // unversioned, e.g. "/containers/abc123/json"
	query  url.Values
}

// send makes a versioned request and returns the response with its body
// open, or an error wrapping an *APIError for a non-2xx status. It applies
// no timeout of its own; the caller bounds ctx.
//
// An engine that refuses the negotiated version (400 "client version ... is
// too old" or "too new") has changed since negotiation, typically upgraded
// in place; the error says so and the next call negotiates again.
func (c *Client) send(ctx context.Context, req request) (*http.Response, error) {
	version, err := c.Version(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.op, err)
	}
	resp, err := c.roundTrip(ctx, req.op, req.method, "/v"+version+req.path, req.query)
	if apiErr, ok := errors.AsType[*APIError](err); ok &&
		apiErr.StatusCode == http.StatusBadRequest && isVersionRejection(apiErr.Message) {
		c.forgetVersion(ctx, version)
		c.logger.Warn("docker engine refused the negotiated API version; negotiating again on the next call",
			"api_version", version, "error", apiErr.Message)
		return nil, fmt.Errorf("%w (the engine no longer accepts API %s, negotiated with it earlier; dockward negotiates again on the next call)", apiErr, version)
	}
	return resp, err
}

// call makes a request bounded by timeout (the client's default when zero)
// and decodes a JSON answer into out unless out is nil.
func (c *Client) call(ctx context.Context, req request, timeout time.Duration, out any) error {
	if timeout <= 0 {
		timeout = c.timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.send(ctx, req)
	if err != nil {
		return err
	}
	defer closeBody(resp)
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s: decode response: %w", req.op, err)
	}
	return nil
}

// roundTrip sends one request to path, which is used as is: Go leaves the
// ':', '/' and '@' of image references unescaped in a path, which is what the
// engine expects in /images/127.0.0.1:5000/app:latest/json.
func (c *Client) roundTrip(ctx context.Context, op, method, path string, query url.Values) (*http.Response, error) {
	u := url.URL{Scheme: "http", Host: "docker", Path: path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer closeBody(resp)
	return nil, &APIError{Op: op, StatusCode: resp.StatusCode, Message: errorMessage(resp.Body)}
}

// errorMessage extracts the engine's {"message": "..."} from an error body,
// falling back to the body's text.
func errorMessage(body io.Reader) string {
	raw, err := io.ReadAll(io.LimitReader(body, maxErrorBody))
	if err != nil && len(raw) == 0 {
		return fmt.Sprintf("(reading error body: %v)", err)
	}
	var e struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Message != "" {
		return e.Message
	}
	if text := strings.TrimSpace(string(raw)); text != "" {
		return text
	}
	return "(empty body)"
}

// closeBody drains a little of what is left, so the connection can be
// reused, and closes the body.
func closeBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorBody))
	_ = resp.Body.Close()
}

// Unavailable reports whether err says that the engine did not answer, as
// opposed to answering "no": the socket is missing or refuses connections
// (dockerd stopped or restarting), the connection broke mid-answer, a call
// timed out, or the engine answered with a 5xx status. A caller that
// cancelled its own context should check that first: a cancelled call is
// not an engine that is away.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if apiErr, ok := errors.AsType[*APIError](err); ok {
		return apiErr.StatusCode >= 500
	}
	if negErr, ok := errors.AsType[*negotiationError](err); ok {
		return negErr.status >= 500
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
		return true
	}
	if _, ok := errors.AsType[*net.OpError](err); ok {
		return true
	}
	if netErr, ok := errors.AsType[net.Error](err); ok && netErr.Timeout() {
		return true
	}
	return false
}
