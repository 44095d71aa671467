package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Errors a call can be tested against with errors.Is. They classify a
// failure; the returned error's message says what was being done.
var (
	// ErrNotFound: the registry answered 404, the tag or the repository is missing.
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry answered 401 or 403.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrServer: the registry answered with a 5xx status.
	ErrServer = errors.New("registry server error")
	// ErrTimeout: the call's deadline passed or the network timed out.
	ErrTimeout = errors.New("timeout")
	// ErrNetwork: the registry could not be reached or the connection broke.
	ErrNetwork = errors.New("network error")
	// ErrBadResponse: the registry answered, but with something unusable.
	ErrBadResponse = errors.New("bad registry response")
	// ErrRateLimited: the registry or its token server answered 429, or
	// the client is still backing off after one.
	ErrRateLimited = errors.New("rate limited")
)

// Labels returned by Kind. They are stable: callers use them as Prometheus
// label values and to notice a change of state.
const (
	KindNotFound     = "not_found"
	KindUnauthorized = "unauthorized"
	KindServerError  = "server_error"
	KindTimeout      = "timeout"
	KindNetwork      = "network"
	KindBadResponse  = "bad_response"
	KindRateLimited  = "rate_limited"
	KindOther        = "other"
)

// Kind returns a short stable label for err: one of the Kind* constants, or
// "" for a nil error.
func Kind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrTimeout):
		return KindTimeout
	case errors.Is(err, ErrNotFound):
		return KindNotFound
	case errors.Is(err, ErrUnauthorized):
		return KindUnauthorized
	case errors.Is(err, ErrServer):
		return KindServerError
	case errors.Is(err, ErrNetwork):
		return KindNetwork
	case errors.Is(err, ErrBadResponse):
		return KindBadResponse
	case errors.Is(err, ErrRateLimited):
		return KindRateLimited
	default:
		return KindOther
	}
}

// StatusError reports a registry answer with an unexpected HTTP status. It
// matches ErrNotFound (404), ErrUnauthorized (401, 403), ErrRateLimited
// (429) and ErrServer (5xx) under errors.Is.
type StatusError struct {
	Method     string
	Path       string
	StatusCode int
	// Auth says what the request was authenticated with, such as
	// `Bearer auth (token from https://auth.example.com/token as user "ci")`;
	// never a secret. Empty when unknown.
	Auth string
	// Challenges are parsed from the WWW-Authenticate header, if any.
	Challenges []Challenge
}

func (e *StatusError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Auth != "" && (e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden) {
		b.WriteString(" after " + e.Auth)
	}
	if len(e.Challenges) > 0 {
		b.WriteString(" (www-authenticate: ")
		for i, c := range e.Challenges {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(c.summary())
		}
		b.WriteString(")")
	}
	return b.String()
}

// Is reports whether e belongs to the class target.
func (e *StatusError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.StatusCode == http.StatusNotFound
	case ErrUnauthorized:
		return e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden
	case ErrServer:
		return e.StatusCode >= 500 && e.StatusCode <= 599
	case ErrRateLimited:
		return e.StatusCode == http.StatusTooManyRequests
	}
	return false
}

func statusError(resp *http.Response) *StatusError {
	e := &StatusError{
		Method:     resp.Request.Method,
		Path:       resp.Request.URL.Path,
		StatusCode: resp.StatusCode,
	}
	if h := resp.Header.Values("WWW-Authenticate"); len(h) > 0 {
		e.Challenges = ParseChallenges(strings.Join(h, ", "))
	}
	return e
}

// statusErrorAfter is statusError, noting how the request was
// authenticated.
func statusErrorAfter(resp *http.Response, at attempt) *StatusError {
	e := statusError(resp)
	e.Auth = at.String()
	return e
}

// classified attaches a class (one of the Err* sentinels) to an error
// without changing its message.
type classified struct {
	class error
	err   error
}

func (e *classified) Error() string   { return e.err.Error() }
func (e *classified) Unwrap() []error { return []error{e.err, e.class} }

// classifyTransport classifies an error from sending a request or reading a
// response body. ctx is the call's context.
func classifyTransport(ctx context.Context, err error) error {
	var ne net.Error
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded),
		errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return &classified{class: ErrTimeout, err: err}
	case errors.Is(err, context.Canceled):
		return err
	default:
		return &classified{class: ErrNetwork, err: err}
	}
}

func badResponse(format string, args ...any) error {
	return &classified{class: ErrBadResponse, err: fmt.Errorf(format, args...)}
}
