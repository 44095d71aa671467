package registry

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testUser     = "ci"
	testPassword = "pa55-w0rd-never-shown"
)

// authServer is a registry that wants Basic credentials or a bearer token
// from its token server, and counts the requests each receives.
type authServer struct {
	t        *testing.T
	registry *httptest.Server
	tokens   *httptest.Server

	mu         sync.Mutex
	requests   []string // "HEAD /v2/...", "token scope=..."
	valid      map[string]bool
	issued     int
	expiresIn  int    // 0: no expires_in
	tokenField string // "token" or "access_token"
	anonymous  bool   // the token server gives tokens without credentials
	wantPOST   bool   // identity token: expect the OAuth2 form
}

func newAuthServer(t *testing.T, scheme string) *authServer {
	s := &authServer{t: t, valid: map[string]bool{}, expiresIn: 300, tokenField: "token"}
	s.tokens = httptest.NewServer(http.HandlerFunc(s.serveToken))
	t.Cleanup(s.tokens.Close)
	s.registry = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.note(r.Method + " " + r.URL.Path)
		ok := false
		switch scheme {
		case "Basic":
			u, p, has := r.BasicAuth()
			ok = has && u == testUser && subtle.ConstantTimeCompare([]byte(p), []byte(testPassword)) == 1
			if !ok {
				w.Header().Set("WWW-Authenticate", `Basic realm="Registry Realm"`)
			}
		case "Bearer":
			tok, has := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			s.mu.Lock()
			ok = has && s.valid[tok]
			s.mu.Unlock()
			if !ok {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test-registry",scope="repository:team/app:pull"`, s.tokens.URL))
			}
		}
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Docker-Content-Digest", goodDigest)
	}))
	t.Cleanup(s.registry.Close)
	return s
}

func (s *authServer) serveToken(w http.ResponseWriter, r *http.Request) {
	var user, pass string
	var has bool
	if s.wantPOST {
		if r.Method != http.MethodPost || r.PostFormValue("grant_type") != "refresh_token" || r.PostFormValue("client_id") == "" {
			s.t.Errorf("token request %s %v, want an OAuth2 refresh_token POST", r.Method, r.PostForm)
		}
		user, pass, has = testUser, r.PostFormValue("refresh_token"), true
	} else {
		user, pass, has = r.BasicAuth()
	}
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		q = r.PostForm
	}
	s.note("token scope=" + q.Get("scope") + " service=" + q.Get("service"))
	if !s.anonymous && (!has || user != testUser || pass != testPassword) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if s.anonymous && has {
		s.t.Errorf("anonymous token request carried credentials")
	}
	s.mu.Lock()
	s.issued++
	tok := fmt.Sprintf("tok-%d-secret", s.issued)
	s.valid[tok] = true
	s.mu.Unlock()
	body := map[string]any{s.tokenField: tok}
	if s.expiresIn > 0 {
		body["expires_in"] = s.expiresIn
	}
	json.NewEncoder(w).Encode(body)
}

func (s *authServer) note(r string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r)
}

// take returns the requests since the last call.
func (s *authServer) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.requests
	s.requests = nil
	return r
}

// revoke makes every token issued so far invalid, as a registry restarted
// with a new signing key does.
func (s *authServer) revoke() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.valid = map[string]bool{}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newAuthClient(t *testing.T, s *authServer, opts ...Option) (*Client, *fakeClock) {
	t.Helper()
	c, err := New(s.registry.URL, opts...)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	c.now = clock.Now
	return c, clock
}

const (
	head  = "HEAD /v2/team/app/manifests/v1"
	fetch = "token scope=repository:team/app:pull service=test-registry"
)

func TestBearerTokenIsCachedPerScopeAndRenewed(t *testing.T) {
	s := newAuthServer(t, "Bearer")
	s.expiresIn = 100
	c, clock := newAuthClient(t, s, WithBasicAuth(testUser, testPassword))
	steps := []struct {
		name    string
		before  func()
		want    []string
		wantErr bool
	}{
		{name: "first poll: challenge, token, HEAD", want: []string{head, fetch, head}},
		{name: "cached token: one HEAD", want: []string{head}},
		{name: "still cached just before the margin", before: func() { clock.Advance(89 * time.Second) }, want: []string{head}},
		{name: "renewed before expiry (100s minus a 10s margin)", before: func() { clock.Advance(2 * time.Second) }, want: []string{fetch, head}},
		{name: "cached again", want: []string{head}},
		{name: "a refused token is replaced once", before: s.revoke, want: []string{head, fetch, head}},
		{name: "and cached", want: []string{head}},
	}
	for _, st := range steps {
		if st.before != nil {
			st.before()
		}
		got, err := c.Digest(t.Context(), "team/app", "v1")
		if err != nil || got != goodDigest {
			t.Fatalf("%s: Digest = %q, %v, want %s", st.name, got, err, goodDigest)
		}
		if reqs := s.take(); strings.Join(reqs, "|") != strings.Join(st.want, "|") {
			t.Errorf("%s: requests %q, want %q", st.name, reqs, st.want)
		}
	}
}

func TestBearerTokenVariants(t *testing.T) {
	tests := []struct {
		name  string
		setup func(*authServer)
		opts  []Option
		// renew is how long the token is used before a new one is asked for.
		renew time.Duration
	}{
		{name: "access_token and no expires_in: 60s minus 6s", setup: func(s *authServer) { s.tokenField, s.expiresIn = "access_token", 0 },
			opts: []Option{WithBasicAuth(testUser, testPassword)}, renew: 54 * time.Second},
		{name: "anonymous token", setup: func(s *authServer) { s.anonymous = true }, renew: 270 * time.Second},
		{name: "identity token: OAuth2 refresh POST", setup: func(s *authServer) { s.wantPOST = true },
			opts: []Option{WithCredentials(Static{IdentityToken: testPassword})}, renew: 270 * time.Second},
		{name: "long lifetime: margin capped at 30s", setup: func(s *authServer) { s.expiresIn = 3600 },
			opts: []Option{WithBasicAuth(testUser, testPassword)}, renew: 3570 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newAuthServer(t, "Bearer")
			tt.setup(s)
			c, clock := newAuthClient(t, s, tt.opts...)
			for i, want := range [][]string{{head, fetch, head}, {head}} {
				if _, err := c.Digest(t.Context(), "team/app", "v1"); err != nil {
					t.Fatalf("Digest #%d: %v", i, err)
				}
				if reqs := s.take(); strings.Join(reqs, "|") != strings.Join(want, "|") {
					t.Fatalf("Digest #%d: requests %q, want %q", i, reqs, want)
				}
			}
			clock.Advance(tt.renew - time.Second)
			c.Digest(t.Context(), "team/app", "v1")
			if reqs := s.take(); len(reqs) != 1 {
				t.Errorf("1s before renewal: requests %q, want one HEAD", reqs)
			}
			clock.Advance(time.Second)
			c.Digest(t.Context(), "team/app", "v1")
			if reqs := s.take(); strings.Join(reqs, "|") != fetch+"|"+head {
				t.Errorf("at renewal: requests %q, want a token and a HEAD", reqs)
			}
		})
	}
}

func TestBasicAuthAnswersTheChallenge(t *testing.T) {
	s := newAuthServer(t, "Basic")
	c, _ := newAuthClient(t, s, WithBasicAuth(testUser, testPassword))
	for i, want := range [][]string{{head, head}, {head}, {head}} {
		if _, err := c.Digest(t.Context(), "team/app", "v1"); err != nil {
			t.Fatalf("Digest #%d: %v", i, err)
		}
		if reqs := s.take(); strings.Join(reqs, "|") != strings.Join(want, "|") {
			t.Errorf("Digest #%d: requests %q, want %q", i, reqs, want)
		}
	}
}

// Wrong credentials are ErrUnauthorized with the scheme and user named and
// the secret nowhere; the client never loops.
func TestWrongCredentials(t *testing.T) {
	const wrong = "wr0ng-pa55-never-shown"
	tests := []struct {
		scheme  string
		inError []string
		want    [][]string
	}{
		{scheme: "Basic", inError: []string{"401 Unauthorized", `Basic auth (user "ci")`, `realm="Registry Realm"`},
			want: [][]string{{head, head}, {head, head}}},
		{scheme: "Bearer", inError: []string{"401 Unauthorized", "get token from http://127.0.0.1:", `as user "ci"`},
			want: [][]string{{head, fetch}, {fetch}}},
	}
	for _, tt := range tests {
		t.Run(tt.scheme, func(t *testing.T) {
			s := newAuthServer(t, tt.scheme)
			c, _ := newAuthClient(t, s, WithBasicAuth(testUser, wrong))
			for i, want := range tt.want {
				_, err := c.Digest(t.Context(), "team/app", "v1")
				if !errors.Is(err, ErrUnauthorized) || Kind(err) != KindUnauthorized {
					t.Fatalf("Digest #%d = %v, want ErrUnauthorized", i, err)
				}
				for _, w := range tt.inError {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				if strings.Contains(err.Error(), wrong) || strings.Contains(fmt.Sprintf("%+v %#v", err, err), wrong) {
					t.Errorf("error %q shows the password", err)
				}
				if reqs := s.take(); strings.Join(reqs, "|") != strings.Join(want, "|") {
					t.Errorf("Digest #%d: requests %q, want %q", i, reqs, want)
				}
			}
			// Fixed credentials work at the next call.
			c.SetCredentials(Static{Username: testUser, Password: testPassword})
			if _, err := c.Digest(t.Context(), "team/app", "v1"); err != nil {
				t.Errorf("after SetCredentials: %v", err)
			}
		})
	}
}

// A token never appears in an error, even when the registry refuses it.
func TestTokenNotInErrors(t *testing.T) {
	s := newAuthServer(t, "Bearer")
	c, _ := newAuthClient(t, s, WithBasicAuth(testUser, testPassword))
	if _, err := c.Digest(t.Context(), "team/app", "v1"); err != nil {
		t.Fatal(err)
	}
	// The registry now refuses the token, and the token server the user.
	s.revoke()
	c.SetCredentials(Static{Username: "someone-else", Password: testPassword})
	_, err := c.Digest(t.Context(), "team/app", "v1")
	if err == nil {
		t.Fatal("Digest succeeded with a refused token and refused credentials")
	}
	for _, secret := range []string{"tok-1-secret", testPassword} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error %q contains a secret", err)
		}
	}
}

func TestRateLimitBacksOff(t *testing.T) {
	var mu sync.Mutex
	n := 0
	c := newTestClient(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Header().Set("Docker-Content-Digest", goodDigest)
	})
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	c.now = clock.Now
	count := func() int { mu.Lock(); defer mu.Unlock(); return n }

	if _, err := c.Digest(t.Context(), "team/app", "v1"); Kind(err) != KindRateLimited {
		t.Fatalf("first Digest = %v, want rate_limited", err)
	}
	clock.Advance(119 * time.Second)
	_, err := c.Digest(t.Context(), "team/app", "v1")
	if Kind(err) != KindRateLimited || !strings.Contains(err.Error(), "not asking again before") {
		t.Fatalf("Digest during the back-off = %v, want rate_limited without a request", err)
	}
	if got := count(); got != 1 {
		t.Fatalf("%d requests during the back-off, want 1", got)
	}
	clock.Advance(time.Second)
	if _, err := c.Digest(t.Context(), "team/app", "v1"); err != nil {
		t.Fatalf("Digest after Retry-After: %v", err)
	}
}

func TestBackOffDuration(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tests := []struct {
		retryAfter string
		want       time.Duration
	}{
		{"", defaultRetryAfter},
		{"junk", defaultRetryAfter},
		{"5", 5 * time.Second},
		{"0", time.Second},
		{"999999", maxRetryAfter},
		{now.Add(90 * time.Second).UTC().Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).UTC().Format(http.TimeFormat), time.Second},
	}
	for _, tt := range tests {
		c := &Client{now: func() time.Time { return now }}
		c.backOff(tt.retryAfter)
		if got := c.auth.backoffUntil.Sub(now); got != tt.want {
			t.Errorf("backOff(%q) waits %v, want %v", tt.retryAfter, got, tt.want)
		}
	}
}

func TestMayExpose(t *testing.T) {
	tests := []struct {
		url  string
		want bool
	}{
		{"https://registry.example.com", true},
		{"http://registry.example.com", false},
		{"http://127.0.0.1:5000", true},
		{"http://127.8.9.10:5000", true},
		{"http://[::1]:5000", true},
		{"http://localhost:5000", true},
		{"http://10.0.0.1:5000", false},
		{"http://localhost.example.com", false},
	}
	for _, tt := range tests {
		u, _ := url.Parse(tt.url)
		if got := (&Client{}).mayExpose(u); got != tt.want {
			t.Errorf("mayExpose(%s) = %v, want %v", tt.url, got, tt.want)
		}
	}
}

// Basic credentials are not sent to a plain-http registry that is not on
// loopback; the registry is reached through a proxy-like base URL here, so
// the refusal is checked without a request leaving the machine.
func TestNoBasicOverPlainHTTP(t *testing.T) {
	c, err := New("http://registry.example.com", WithBasicAuth(testUser, testPassword))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.authorization(context.Background(), Challenge{Scheme: "Basic", Params: map[string]string{}}, "")
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "only sent over https") {
		t.Errorf("authorization(Basic) over http = %v, want a refusal", err)
	}
	_, _, err = c.authorization(context.Background(), Challenge{Scheme: "Bearer", Params: map[string]string{"realm": "http://auth.example.com/token"}}, "repository:a:pull")
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "only sent over https") {
		t.Errorf("authorization(Bearer with an http realm) = %v, want a refusal", err)
	}
}

func TestScopeOf(t *testing.T) {
	tests := map[string]string{
		"/v2/":                          "",
		"/v2/app/manifests/latest":      "repository:app:pull",
		"/v2/team/app/manifests/v1":     "repository:team/app:pull",
		"/v2/a/manifests/b/manifests/c": "repository:a/manifests/b:pull",
		"/other":                        "",
	}
	for path, want := range tests {
		if got := scopeOf(path); got != want {
			t.Errorf("scopeOf(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestPickChallenge(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		scheme string
		ok     bool
	}{
		{"bearer preferred", []string{`Basic realm="r"`, `Bearer realm="https://a/token"`}, "Bearer", true},
		{"bearer without realm falls back to basic", []string{`Bearer service="x", Basic realm="r"`}, "Basic", true},
		{"lowercase scheme", []string{`bearer realm="https://a/token"`}, "bearer", true},
		{"unknown scheme", []string{`Negotiate`}, "", false},
		{"none", nil, "", false},
	}
	for _, tt := range tests {
		ch, ok := pickChallenge(tt.values)
		if ok != tt.ok || ch.Scheme != tt.scheme {
			t.Errorf("%s: pickChallenge(%q) = %q, %v, want %q, %v", tt.name, tt.values, ch.Scheme, ok, tt.scheme, tt.ok)
		}
	}
}

func TestCredentialsStringHidesSecrets(t *testing.T) {
	c := Credentials{Username: "ci", Password: testPassword, IdentityToken: "idtok-never-shown"}
	for _, s := range []string{c.String(), fmt.Sprintf("%v %+v %#v %s", c, c, c, c)} {
		if strings.Contains(s, testPassword) || strings.Contains(s, "idtok-never-shown") {
			t.Errorf("formatted credentials %q show a secret", s)
		}
	}
}

type failingSource struct{}

func (failingSource) Credentials(context.Context, string) (Credentials, error) {
	return Credentials{}, errors.New("docker-credential-x get: exit status 1")
}

// A credential source that fails is ErrUnauthorized, so it is alerted like
// refused credentials.
func TestCredentialSourceFailure(t *testing.T) {
	for _, scheme := range []string{"Basic", "Bearer"} {
		s := newAuthServer(t, scheme)
		c, _ := newAuthClient(t, s, WithCredentials(failingSource{}))
		_, err := c.Digest(t.Context(), "team/app", "v1")
		if Kind(err) != KindUnauthorized || !strings.Contains(err.Error(), "credentials for 127.0.0.1:") {
			t.Errorf("%s: Digest with a failing source = %v, want unauthorized naming the source's failure", scheme, err)
		}
	}
}
