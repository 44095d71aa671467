package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dockward/dockward/internal/config"
	"github.com/dockward/dockward/internal/watcher"
)

// exitError carries an exit code other than 1 up to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// runStatus prints the running daemon's GET /status as a table:
// `dockward status [-config PATH | -addr HOST:PORT]`. It returns an error
// (exit 1) when a service is blocked, unhealthy or gave up, and an
// exitError with code 2 when the daemon cannot be asked.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dockward status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", config.DefaultPath, "config of the running daemon (for api.port)")
	addr := fs.String("addr", "", "the daemon's API, HOST:PORT or a URL (default: 127.0.0.1:<api.port of -config>)")
	asJSON := fs.Bool("json", false, "print the JSON of GET /status instead of a table")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the daemon")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: dockward status [-config PATH | -addr HOST:PORT] [-json]\n\nExit status: 0 all services fine, 1 deploys are paused or a service is blocked, unhealthy or gave up, 2 the daemon could not be asked.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{2, errUsage}
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return &exitError{2, fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	base := *addr
	if base == "" {
		cfg, err := config.Load(*configPath)
		if err != nil {
			return &exitError{2, fmt.Errorf("%w (or give the API with -addr 127.0.0.1:PORT)", err)}
		}
		base = net.JoinHostPort("127.0.0.1", string(cfg.API.Port))
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	body, err := fetchStatus(ctx, strings.TrimRight(base, "/")+"/status", *timeout)
	if err != nil {
		return &exitError{2, err}
	}
	var st watcher.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return &exitError{2, fmt.Errorf("decode the status from %s: %w", base, err)}
	}
	if *asJSON {
		stdout.Write(body)
	} else if err := printStatus(stdout, st); err != nil {
		return &exitError{2, err}
	}
	var bad []string
	for _, s := range st.Services {
		if s.NeedsAttention() {
			bad = append(bad, s.Name+" ("+strings.ReplaceAll(s.State, "_", " ")+")")
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d services need attention: %s", len(bad), len(st.Services), strings.Join(bad, ", "))
	}
	if st.Daemon.DeploysPaused != "" {
		return errors.New(st.Daemon.DeploysPaused)
	}
	return nil
}

func fetchStatus(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the daemon (is dockward running?): %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read the status from %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// printStatus writes the status as a table, a line per service, then the
// reasons that do not fit in a column.
func printStatus(w io.Writer, st watcher.Status) error {
	now := st.Daemon.Now
	ago := func(t time.Time) string { return agoFrom(now, t) }
	d := st.Daemon
	engine := "not reached yet"
	if d.Engine != "" {
		engine = d.Engine + " (API " + d.EngineAPI + ")"
	}
	lastPoll := "none yet"
	if d.LastPoll != nil {
		lastPoll = ago(*d.LastPoll)
	}
	fmt.Fprintf(w, "dockward %s, up %s; engine %s; %s; last poll %s, every %s\n\n", d.Version,
		human(time.Duration(d.UptimeSeconds*float64(time.Second))), engine, d.Compose, lastPoll,
		human(time.Duration(d.PollIntervalSeconds*float64(time.Second))))

	if d.DeploysPaused != "" {
		fmt.Fprintf(w, "DEPLOYS ARE PAUSED: %s\n\n", d.DeploysPaused)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tSTATE\tRUNNING\tREGISTRY\tLAST DEPLOY\tBLOCKED\tHEAL\tNEXT POLL")
	var notes []string
	for _, s := range st.Services {
		running, registry, deploy, blocked := "-", "-", "-", "-"
		if s.Running != nil {
			running = shortDigest(s.Running.Digest)
		}
		if s.Registry != nil {
			registry = shortDigest(s.Registry.Digest)
		}
		if l := s.LastDeploy; l != nil {
			deploy = fmt.Sprintf("%s %s %s (%.1fs)", strings.ReplaceAll(l.Outcome, "_", " "), shortDigest(l.Digest), ago(l.Started), l.Seconds)
		}
		if b := s.Blocked; b != nil {
			blocked = shortDigest(b.Digest) + " " + ago(b.Since)
			notes = append(notes, fmt.Sprintf("%s: %s blocked: %s", s.Name, shortDigest(b.Digest), b.Reason))
		}
		heal := "off"
		if s.AutoHeal {
			heal = fmt.Sprintf("%d restarts", s.Heal.Restarts)
			if s.Heal.Restarts == 1 {
				heal = "1 restart"
			}
			if s.Heal.GaveUp {
				heal = "GAVE UP after " + heal
			} else if s.Heal.CooldownUntil != nil {
				heal += ", cooldown ends " + untilFrom(now, *s.Heal.CooldownUntil)
			}
		}
		next := "-"
		if s.NextPoll != nil {
			next = untilFrom(now, *s.NextPoll)
		}
		if c := s.LastCheck; c != nil && c.Outcome == watcher.CheckFailed {
			notes = append(notes, fmt.Sprintf("%s: last check failed %s: %s", s.Name, ago(c.At), c.Reason))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, strings.ToUpper(s.State), running, registry, deploy, blocked, heal, next)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("print the status: %w", err)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
	return nil
}

// shortDigest shortens a digest for a table: sha256:0123456789ab.
func shortDigest(d string) string {
	if algo, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return algo + ":" + hex[:12]
	}
	return d
}

func agoFrom(now, t time.Time) string {
	if d := now.Sub(t); d >= 0 {
		return human(d) + " ago"
	}
	return "in " + human(t.Sub(now))
}

func untilFrom(now, t time.Time) string {
	if d := t.Sub(now); d >= time.Second {
		return "in " + human(d)
	}
	return "due now"
}

func human(d time.Duration) string {
	switch {
	case d < time.Second:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
