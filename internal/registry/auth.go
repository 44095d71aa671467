package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	// defaultTokenLifetime is used when a token server gives no expires_in.
	defaultTokenLifetime = 60 * time.Second
	// maxTokenMargin caps how long before its expiry a token is renewed.
	maxTokenMargin = 30 * time.Second
	// maxTokenResponse bounds a token server's answer.
	maxTokenResponse = 1 << 20
	// defaultRetryAfter is the back-off after a 429 without Retry-After.
	defaultRetryAfter = 30 * time.Second
	// maxRetryAfter caps the back-off a registry can ask for.
	maxRetryAfter = time.Hour
)

// token is a bearer token cached for one scope.
type token struct {
	value   string
	renewAt time.Time
}

// authState is what the client learnt about the registry's authentication:
// the challenge it answered with, the credentials resolved for it, and the
// tokens it got. It is guarded by Client.mu.
type authState struct {
	challenge *Challenge       // the last Basic or Bearer challenge, nil until one came
	creds     *Credentials     // resolved from the source; nil when not resolved yet
	tokens    map[string]token // by scope
	// backoffUntil: after a 429, no request goes out before this time.
	backoffUntil time.Time
}

// attempt says what a request was sent with, for errors and logs. It never
// holds a secret.
type attempt struct {
	scheme string // "", "Basic" or "Bearer"
	detail string // such as `token from https://auth.example.com/token as user "ci"`
	fresh  bool   // credentials or token obtained for this very request
}

func (a attempt) String() string {
	if a.scheme == "" {
		return "no authentication"
	}
	return a.scheme + " auth (" + a.detail + ")"
}

// SetCredentials replaces the credential source (nil for none) and forgets
// the tokens obtained with the old one. Safe to call while calls run.
func (c *Client) SetCredentials(src CredentialSource) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.creds = src
	c.auth.creds = nil
	c.auth.tokens = nil
}

// scopeOf returns the token scope a request of path needs:
// "repository:<name>:pull" for /v2/<name>/manifests/<ref>, "" for /v2/.
func scopeOf(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	if i := strings.LastIndex(rest, "/manifests/"); i > 0 {
		return "repository:" + rest[:i] + ":pull"
	}
	return ""
}

// do sends a request, authenticating as the registry's challenge asks. The
// first request goes out with what the last challenge asked for (a cached
// token, so a poll is one request); a 401 is answered once: with a new
// token, or with credentials. The caller closes the body. Transport errors
// come back classified as ErrTimeout or ErrNetwork.
func (c *Client) do(ctx context.Context, method, path string, opts ...requestOption) (*http.Response, attempt, error) {
	var ro request
	for _, opt := range opts {
		opt(&ro)
	}
	if until := c.rateLimitedUntil(); !until.IsZero() {
		return nil, attempt{}, &classified{class: ErrRateLimited,
			err: fmt.Errorf("%s %s: rate limited by the registry, not asking again before %s", method, path, until.UTC().Format(time.TimeOnly))}
	}
	scope := scopeOf(path)
	if ro.scope != "" {
		scope = ro.scope
	}
	c.mu.Lock()
	ch := c.auth.challenge
	c.mu.Unlock()
	var at attempt
	var authz string
	if ch != nil {
		var err error
		if authz, at, err = c.authorization(ctx, *ch, scope); err != nil {
			return nil, at, err
		}
	}
	resp, err := c.send(ctx, method, path, authz, ro)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, at, err
	}
	next, ok := pickChallenge(resp.Header.Values("WWW-Authenticate"))
	if !ok {
		return resp, at, nil // no scheme Dockward speaks: report the 401
	}
	if at.fresh && ch != nil && sameChallenge(*ch, next) {
		return resp, at, nil // just authenticated as asked, and refused
	}
	c.mu.Lock()
	c.auth.challenge = &next
	delete(c.auth.tokens, scope)
	if ch != nil {
		c.auth.creds = nil // refused: read them again, they may have changed
	}
	c.mu.Unlock()
	authz, at, err = c.authorization(ctx, next, scope)
	if err != nil || authz == "" {
		// Nothing to answer with (no credentials for Basic): the 401 stands.
		if err != nil {
			resp.Body.Close()
			return nil, at, err
		}
		return resp, at, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp, err = c.send(ctx, method, path, authz, ro)
	return resp, at, err
}

// request holds what a requestOption sets: a body (sent again as is when
// a 401 is answered), its type, and a token scope other than scopeOf's.
type request struct {
	body        []byte
	contentType string
	scope       string
}

type requestOption func(*request)

// withBody sends body with the given Content-Type.
func withBody(contentType string, body []byte) requestOption {
	return func(r *request) { r.contentType, r.body = contentType, body }
}

// withScope asks for a token of scope instead of the pull scope of the path.
func withScope(scope string) requestOption { return func(r *request) { r.scope = scope } }

// send sends one request with the Authorization header authz (none when
// empty), and notes a 429's back-off.
func (c *Client) send(ctx context.Context, method, path, authz string, ro request) (*http.Response, error) {
	u := *c.base
	u.Path = path
	var body io.Reader
	if ro.body != nil {
		body = bytes.NewReader(ro.body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if ro.contentType != "" {
		req.Header.Set("Content-Type", ro.contentType)
	}
	req.Header.Set("Accept", acceptManifests)
	req.Header.Set("User-Agent", "dockward")
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, classifyTransport(ctx, err)
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		c.backOff(resp.Header.Get("Retry-After"))
	}
	return resp, nil
}

// pickChallenge returns the Bearer challenge with a realm, else the Basic
// one, from WWW-Authenticate header values.
func pickChallenge(values []string) (Challenge, bool) {
	chs := ParseChallenges(strings.Join(values, ", "))
	for _, ch := range chs {
		if strings.EqualFold(ch.Scheme, "Bearer") && ch.Params["realm"] != "" {
			return ch, true
		}
	}
	for _, ch := range chs {
		if strings.EqualFold(ch.Scheme, "Basic") {
			return ch, true
		}
	}
	return Challenge{}, false
}

// sameChallenge reports whether two challenges ask for the same thing; the
// error and scope parameters do not count.
func sameChallenge(a, b Challenge) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && a.Params["realm"] == b.Params["realm"] && a.Params["service"] == b.Params["service"]
}

// authorization returns the Authorization header answering ch for scope.
func (c *Client) authorization(ctx context.Context, ch Challenge, scope string) (string, attempt, error) {
	if strings.EqualFold(ch.Scheme, "Basic") {
		creds, fresh, err := c.credentials(ctx)
		at := attempt{scheme: "Basic", detail: creds.String(), fresh: fresh}
		if err != nil {
			return "", at, err
		}
		if creds.Empty() {
			at.detail = "no credentials configured"
			return "", at, nil // send none: the registry's 401 is the error
		}
		if !c.mayExpose(c.base) {
			return "", at, &classified{class: ErrUnauthorized, err: fmt.Errorf(
				"registry %s asks for Basic auth over plain http; credentials are only sent over https or to a loopback registry", c.base.Host)}
		}
		req := http.Request{Header: http.Header{}}
		req.SetBasicAuth(creds.Username, creds.Password)
		return req.Header.Get("Authorization"), at, nil
	}

	// Bearer: a token for the scope, cached or new.
	realm := ch.Params["realm"]
	at := attempt{scheme: "Bearer", detail: "token from " + redactRealm(realm)}
	c.mu.Lock()
	t, ok := c.auth.tokens[scope]
	c.mu.Unlock()
	if ok && c.now().Before(t.renewAt) {
		return "Bearer " + t.value, at, nil
	}
	creds, _, err := c.credentials(ctx)
	at.detail += " as " + creds.String()
	if err != nil {
		return "", at, err
	}
	t, err = c.fetchToken(ctx, ch, scope, creds)
	if err != nil {
		return "", at, err
	}
	at.fresh = true
	c.mu.Lock()
	if c.auth.tokens == nil {
		c.auth.tokens = map[string]token{}
	}
	c.auth.tokens[scope] = t
	c.mu.Unlock()
	return "Bearer " + t.value, at, nil
}

// credentials returns the resolved credentials, asking the source when
// they are not resolved yet (fresh is then true).
func (c *Client) credentials(ctx context.Context) (creds Credentials, fresh bool, err error) {
	c.mu.Lock()
	src, cached := c.creds, c.auth.creds
	c.mu.Unlock()
	if cached != nil {
		return *cached, false, nil
	}
	if src == nil {
		return Credentials{}, true, nil
	}
	creds, err = src.Credentials(ctx, c.base.Host)
	if err != nil {
		// No credentials to answer with: the operator must fix them, as
		// after a 401.
		return Credentials{}, true, &classified{class: ErrUnauthorized, err: fmt.Errorf("credentials for %s: %w", c.base.Host, err)}
	}
	c.mu.Lock()
	if c.creds == src {
		c.auth.creds = &creds
	}
	c.mu.Unlock()
	return creds, true, nil
}

// fetchToken asks the token server of a Bearer challenge for a token (the
// Docker token protocol): GET realm?service=…&scope=…, with Basic
// credentials when there are some, or an OAuth2 refresh-token POST when the
// credentials are an identity token.
func (c *Client) fetchToken(ctx context.Context, ch Challenge, scope string, creds Credentials) (token, error) {
	realm, err := url.Parse(ch.Params["realm"])
	if err != nil || (realm.Scheme != "http" && realm.Scheme != "https") || realm.Host == "" {
		return token{}, badResponse("registry %s: Bearer challenge with an unusable realm %q", c.base.Host, truncate(ch.Params["realm"], 200))
	}
	what := fmt.Sprintf("Bearer auth: get token from %s for %s as %s", redactRealm(realm.String()), orNone(scope), creds)
	if !creds.Empty() && !c.mayExpose(realm) {
		return token{}, &classified{class: ErrUnauthorized, err: fmt.Errorf(
			"%s: the token server is plain http and not loopback; credentials are only sent over https or to a loopback host", what)}
	}
	form := url.Values{}
	if s := ch.Params["service"]; s != "" {
		form.Set("service", s)
	}
	if scope != "" {
		form.Set("scope", scope)
	}
	var req *http.Request
	if creds.IdentityToken != "" {
		form.Set("grant_type", "refresh_token")
		form.Set("refresh_token", creds.IdentityToken)
		form.Set("client_id", "dockward")
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, realm.String(), strings.NewReader(form.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	} else {
		q := realm.Query()
		for k, v := range form {
			q[k] = v
		}
		realm.RawQuery = q.Encode()
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
		if err == nil && !creds.Empty() {
			req.SetBasicAuth(creds.Username, creds.Password)
		}
	}
	if err != nil {
		return token{}, fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("User-Agent", "dockward")
	resp, err := c.hc.Do(req)
	if err != nil {
		return token{}, fmt.Errorf("%s: %w", what, classifyTransport(ctx, err))
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests {
		c.backOff(resp.Header.Get("Retry-After"))
	}
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		e := statusError(resp)
		e.Path = redactRealm(resp.Request.URL.String())
		return token{}, fmt.Errorf("%s: %w", what, e)
	}
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	if err != nil {
		return token{}, fmt.Errorf("%s: %w", what, classifyTransport(ctx, err))
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return token{}, badResponse("%s: the answer is not JSON", what) // never quote it: it may hold a token
	}
	value := body.Token
	if value == "" {
		value = body.AccessToken
	}
	if value == "" || strings.ContainsAny(value, " \t\r\n") {
		return token{}, badResponse("%s: no usable token or access_token in the answer", what)
	}
	lifetime := defaultTokenLifetime
	if body.ExpiresIn > 0 && body.ExpiresIn < int64(24*time.Hour/time.Second) {
		lifetime = time.Duration(body.ExpiresIn) * time.Second
	}
	margin := min(lifetime/10, maxTokenMargin)
	return token{value: value, renewAt: c.now().Add(lifetime - margin)}, nil
}

// mayExpose reports whether credentials may be sent to u: over https, or
// to a loopback host.
func (c *Client) mayExpose(u *url.URL) bool {
	if u.Scheme == "https" {
		return true
	}
	h := u.Hostname()
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// backOff stops requests for the time a 429's Retry-After asks (seconds or
// an HTTP date), 30s when it says nothing usable, at most an hour.
func (c *Client) backOff(retryAfter string) {
	now := c.now()
	wait := defaultRetryAfter
	if s, err := strconv.Atoi(strings.TrimSpace(retryAfter)); err == nil && s >= 0 {
		wait = time.Duration(s) * time.Second
	} else if t, err := http.ParseTime(retryAfter); err == nil {
		wait = t.Sub(now)
	}
	wait = min(max(wait, time.Second), maxRetryAfter)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.auth.backoffUntil = now.Add(wait)
}

// rateLimitedUntil returns the end of a 429 back-off in progress, or zero.
func (c *Client) rateLimitedUntil() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.now().Before(c.auth.backoffUntil) {
		return c.auth.backoffUntil
	}
	return time.Time{}
}

// redactRealm keeps a token server URL's scheme, host and path.
func redactRealm(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "an unparsable realm"
	}
	return u.Scheme + "://" + u.Host + u.Path
}

func orNone(scope string) string {
	if scope == "" {
		return "no scope"
	}
	return scope
}
