package watcher

import (
	"math/rand/v2"
	"time"
)

// backoff yields waits that double from min up to max, each with up to
// ±20% jitter, so that retries of many waiters do not march in step.
type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max}
}

// next returns the wait before the next try.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	jitter := time.Duration((rand.Float64()*0.4 - 0.2) * float64(b.cur))
	return max(b.cur+jitter, time.Millisecond)
}
