// Package notify tells people what Dockward did: it delivers alerts to
// Discord, by mail (SMTP) and to custom HTTP webhooks.
//
// A Dispatcher owns one queue and one goroutine per configured channel, so a
// slow or dead channel never holds back the others. Send never blocks; Run
// delivers until its context is done and then flushes what is still queued
// within a bound.
package notify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dockward/dockward/internal/config"
)

// Level is how urgent an alert is. Channels can ignore alerts below a level.
type Level int

// Levels, lowest first.
const (
	Info Level = iota
	Warning
	Critical
)

func (l Level) String() string {
	switch l {
	case Info:
		return "info"
	case Warning:
		return "warning"
	case Critical:
		return "critical"
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// ParseLevel reads a min_level from the config. The empty string is Info.
func ParseLevel(s string) (Level, error) {
	switch s {
	case "", "info":
		return Info, nil
	case "warning":
		return Warning, nil
	case "critical":
		return Critical, nil
	}
	return Info, fmt.Errorf("must be one of info, warning, critical; got %q", s)
}

// Event says what happened. Its value is stable: webhook templates and mail
// filters match on it.
type Event string

// Events Dockward reports.
const (
	UpdateStarted      Event = "update_started"
	UpdateSucceeded    Event = "update_succeeded"
	UpdateFailed       Event = "update_failed" // failed before anything changed (pull)
	Rollback           Event = "rollback"
	RollbackFailed     Event = "rollback_failed"
	Blocked            Event = "blocked"
	Unblocked          Event = "unblocked"
	HealRestart        Event = "heal_restart"
	HealSucceeded      Event = "heal_succeeded"
	HealFailed         Event = "heal_failed"
	HealGaveUp         Event = "heal_gave_up"
	Died               Event = "died"
	Stopped            Event = "stopped" // a container exited with code 0 that nobody asked to stop
	Started            Event = "started"
	Stopping           Event = "stopping"
	ConfigReloaded     Event = "config_reloaded"
	ConfigReloadFailed Event = "config_reload_failed"
	// The state file was damaged: StateRecovered when its previous
	// generation was used, StateUnreadable when neither could be read and
	// deploys are paused, DeploysResumed when a fixed file was read.
	StateRecovered  Event = "state_recovered"
	StateUnreadable Event = "state_unreadable"
	DeploysResumed  Event = "deploys_resumed"
	Promoted        Event = "promoted"         // a canary promoted a digest to the fleet's tag
	PromotionFailed Event = "promotion_failed" // a healthy digest could not be promoted
)

// Alert is one thing to tell people about.
type Alert struct {
	Service string
	Event   Event
	Level   Level
	// Message is one human-readable line.
	Message string
	// Reason says why: healthcheck output, a compose error, an exit code.
	// It may be long, span lines and contain quotes.
	Reason string
	Digest string
	Image  string
	// Host is the machine's name; Send fills it in when empty.
	Host string
	// Time is when it happened; Send fills it in when zero.
	Time time.Time
}

// sender delivers an alert to one channel, in one attempt. The Dispatcher
// owns timeouts and retries; see retry.go for how errors are classified.
type sender interface {
	send(ctx context.Context, a Alert) error
}

// Option changes a Dispatcher default.
type Option func(*options)

type options struct {
	queueSize      int
	attempts       int
	attemptTimeout time.Duration
	retryBase      time.Duration
	maxBackoff     time.Duration
	maxRetryAfter  time.Duration
	flushTimeout   time.Duration
	httpClient     *http.Client
	rootCAs        *x509.CertPool
	getenv         func(string) string
	hostname       string
	now            func() time.Time
}

func defaultOptions() options {
	return options{
		queueSize:      256,
		attempts:       3,
		attemptTimeout: 10 * time.Second,
		retryBase:      time.Second,
		maxBackoff:     30 * time.Second,
		maxRetryAfter:  60 * time.Second,
		flushTimeout:   10 * time.Second,
		getenv:         os.Getenv,
		now:            time.Now,
	}
}

// WithQueueSize sets how many alerts each channel holds before Send drops
// (default 256).
func WithQueueSize(n int) Option { return func(o *options) { o.queueSize = max(n, 1) } }

// WithAttempts sets how many times one alert is tried on one channel,
// the first try included (default 3).
func WithAttempts(n int) Option { return func(o *options) { o.attempts = max(n, 1) } }

// WithAttemptTimeout bounds each delivery attempt (default 10s).
func WithAttemptTimeout(d time.Duration) Option { return func(o *options) { o.attemptTimeout = d } }

// WithRetryBase sets the first backoff between attempts; each next one
// doubles, with jitter, up to 30 times the base (default 1s).
func WithRetryBase(d time.Duration) Option {
	return func(o *options) { o.retryBase, o.maxBackoff = d, 30*d }
}

// WithMaxRetryAfter caps how long a 429's retry_after is honoured
// (default 60s).
func WithMaxRetryAfter(d time.Duration) Option { return func(o *options) { o.maxRetryAfter = d } }

// WithFlushTimeout bounds how long Run keeps delivering queued alerts after
// its context is done (default 10s).
func WithFlushTimeout(d time.Duration) Option { return func(o *options) { o.flushTimeout = d } }

// WithHTTPClient sets the client for Discord and webhooks. Timeouts come
// from the Dispatcher, so the client needs none.
func WithHTTPClient(c *http.Client) Option { return func(o *options) { o.httpClient = c } }

// WithRootCAs sets the CAs trusted for SMTP TLS and, unless WithHTTPClient
// is given, for HTTPS. Default: the system pool.
func WithRootCAs(p *x509.CertPool) Option { return func(o *options) { o.rootCAs = p } }

// WithGetenv sets how $VAR in webhook headers is looked up (default os.Getenv).
func WithGetenv(f func(string) string) Option { return func(o *options) { o.getenv = f } }

// WithHostname sets the Host filled into alerts and the name Dockward gives
// in SMTP HELO and Message-ID (default os.Hostname).
func WithHostname(h string) Option { return func(o *options) { o.hostname = h } }

// WithClock sets the clock that stamps alerts (default time.Now).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// channel is one configured destination with its own queue and counters.
type channel struct {
	name   string // metric label: discord, smtp, webhook:<name>
	min    Level
	sender sender
	queue  chan Alert
	sent   atomic.Uint64
	failed atomic.Uint64
}

// Dispatcher fans alerts out to the configured channels.
type Dispatcher struct {
	log      *slog.Logger
	opts     options
	channels []*channel
	running  atomic.Bool
	stopped  atomic.Bool // Run has returned
}

// New builds one sender per configured channel. It parses and trial-renders
// webhook body templates, so a config that passes New will not fail later on
// a broken template; errors name the config field.
func New(cfg config.Notifications, logger *slog.Logger, opts ...Option) (*Dispatcher, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.hostname == "" {
		o.hostname, _ = os.Hostname()
	}
	if o.httpClient == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		if o.rootCAs != nil {
			t.TLSClientConfig = &tls.Config{RootCAs: o.rootCAs, MinVersion: tls.VersionTLS12}
		}
		o.httpClient = &http.Client{Transport: t}
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	d := &Dispatcher{log: logger, opts: o}

	var errs []error
	add := func(name, levelField, level string, s sender, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		minLevel, err := ParseLevel(level)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", levelField, err))
			return
		}
		d.channels = append(d.channels, &channel{
			name:   name,
			min:    minLevel,
			sender: s,
			queue:  make(chan Alert, o.queueSize),
		})
	}
	if c := cfg.Discord; c != nil {
		s, err := newDiscord(*c, o.httpClient)
		add("discord", "notifications.discord.min_level", c.MinLevel, s, err)
	}
	if c := cfg.SMTP; c != nil {
		s, err := newSMTP(*c, o)
		add("smtp", "notifications.smtp.min_level", c.MinLevel, s, err)
	}
	for i, c := range cfg.Webhooks {
		s, err := newWebhook(c, fmt.Sprintf("notifications.webhooks[%d]", i), o)
		add("webhook:"+c.Name, fmt.Sprintf("notifications.webhooks[%d].min_level", i), c.MinLevel, s, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return d, nil
}

// Send queues a for every channel whose min_level it meets. It never
// blocks: when a channel's queue is full the alert is dropped for that
// channel, logged and counted as a failure; so is an alert sent after Run
// has returned. Alerts sent before Run starts wait in the queue.
func (d *Dispatcher) Send(a Alert) {
	if a.Host == "" {
		a.Host = d.opts.hostname
	}
	if a.Time.IsZero() {
		a.Time = d.opts.now()
	}
	stopped := d.stopped.Load()
	for _, c := range d.channels {
		if a.Level < c.min {
			continue
		}
		if stopped {
			c.failed.Add(1)
			d.log.Error("notification dropped: dispatcher has stopped",
				"channel", c.name, "event", a.Event, "service", a.Service)
			continue
		}
		select {
		case c.queue <- a:
		default:
			c.failed.Add(1)
			d.log.Error("notification dropped: queue full",
				"channel", c.name, "event", a.Event, "service", a.Service, "queue_size", cap(c.queue))
		}
	}
}

// Run delivers queued alerts until ctx is done, then keeps delivering what
// is still queued for at most the flush timeout, and returns nil. Cancel
// its ctx after the components that send alerts have stopped, so their last
// alerts get out. Run may be called once.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("notify: Run called twice")
	}
	// Deliveries outlive ctx by up to the flush timeout.
	deliverCtx, cancelDeliver := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelDeliver(nil)

	defer d.stopped.Store(true)

	var wg sync.WaitGroup
	for _, c := range d.channels {
		wg.Go(func() { d.work(ctx, deliverCtx, c) })
	}
	<-ctx.Done()

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	flush := time.NewTimer(d.opts.flushTimeout)
	defer flush.Stop()
	select {
	case <-done:
	case <-flush.C:
		cancelDeliver(fmt.Errorf("shutting down: flush timeout %s exceeded", d.opts.flushTimeout))
		<-done
	}
	return nil
}

// work delivers one channel's alerts in order until ctx is done, then
// drains its queue.
func (d *Dispatcher) work(ctx, deliverCtx context.Context, c *channel) {
	for {
		select {
		case a := <-c.queue:
			d.deliver(deliverCtx, c, a)
		case <-ctx.Done():
			for {
				select {
				case a := <-c.queue:
					d.deliver(deliverCtx, c, a)
				default:
					return
				}
			}
		}
	}
}

// Failures returns, per channel, how many alerts were not delivered: dropped
// on a full queue or failed after their retries. Every configured channel is
// present, zero or not.
func (d *Dispatcher) Failures() map[string]uint64 {
	m := make(map[string]uint64, len(d.channels))
	for _, c := range d.channels {
		m[c.name] = c.failed.Load()
	}
	return m
}

// Sent returns, per channel, how many alerts were delivered.
func (d *Dispatcher) Sent() map[string]uint64 {
	m := make(map[string]uint64, len(d.channels))
	for _, c := range d.channels {
		m[c.name] = c.sent.Load()
	}
	return m
}

// Channels returns the channel names (metric labels) in config order.
func (d *Dispatcher) Channels() []string {
	names := make([]string, len(d.channels))
	for i, c := range d.channels {
		names[i] = c.name
	}
	return names
}
