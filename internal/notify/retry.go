package notify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/textproto"
	"time"
)

// statusError is a non-2xx HTTP answer.
type statusError struct {
	code       int
	status     string // e.g. "400 Bad Request"
	body       string // the start of the body, for the log
	retryAfter time.Duration
}

func (e *statusError) Error() string {
	if e.body == "" {
		return "http " + e.status
	}
	return fmt.Sprintf("http %s: %s", e.status, e.body)
}

// permanentError marks a failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error { return &permanentError{err} }

// retryable says whether an attempt that failed with err is worth another
// try, and how long the receiver asked us to wait (0: use the backoff).
// Network errors, timeouts, HTTP 5xx and 429, and SMTP 4xx replies are
// retried; other HTTP 4xx, SMTP 5xx and permanent errors are not.
func retryable(err error) (retry bool, after time.Duration) {
	var pe *permanentError
	if errors.As(err, &pe) {
		return false, 0
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return false, 0
	}
	var se *statusError
	if errors.As(err, &se) {
		switch {
		case se.code == 429:
			return true, se.retryAfter
		case se.code >= 500:
			return true, 0
		}
		return false, 0
	}
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code < 500, 0
	}
	return true, 0
}

// backoff is the wait before attempt n+1 after n failed attempts:
// base·2^(n-1), capped, of which the upper half is random jitter.
func backoff(base, maxWait time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half)
}

// wait blocks for d or until ctx is done, whichever is first, and says
// whether the full wait passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deliver sends a to c, retrying as retryable allows, and counts and logs
// the outcome. ctx bounds the whole delivery; each attempt gets its own
// timeout.
func (d *Dispatcher) deliver(ctx context.Context, c *channel, a Alert) {
	log := d.log.With("channel", c.name, "event", a.Event, "service", a.Service)
	var err error
	tries := 0
	for {
		if ctx.Err() != nil {
			err = context.Cause(ctx)
			break
		}
		actx, cancel := context.WithTimeout(ctx, d.opts.attemptTimeout)
		err = c.sender.send(actx, a)
		tries++
		timedOut := errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		cancel()
		if err == nil {
			c.sent.Add(1)
			log.Debug("notification sent", "attempts", tries)
			return
		}
		if timedOut {
			err = fmt.Errorf("attempt timed out after %s: %w", d.opts.attemptTimeout, err)
		}
		retry, after := retryable(err)
		if !retry || tries >= d.opts.attempts {
			break
		}
		pause := backoff(d.opts.retryBase, d.opts.maxBackoff, tries)
		if after > 0 {
			pause = min(after, d.opts.maxRetryAfter)
		}
		log.Warn("notification attempt failed; will retry", "attempt", tries, "retry_in", pause, "err", err)
		if !wait(ctx, pause) {
			err = fmt.Errorf("%w (last attempt: %w)", context.Cause(ctx), err)
			break
		}
	}
	c.failed.Add(1)
	log.Error("notification failed", "attempts", tries, "err", err)
}
