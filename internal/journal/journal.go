// Package journal makes slog output readable by journald with the right
// priority.
//
// systemd connects a service's stderr to the journal and, by default
// (SyslogLevelPrefix=yes), strips a leading "<N>" from each line and uses N
// as the syslog priority. The handler returned by NewHandler adds that prefix
// when stderr is the journal stream and otherwise writes plain logfmt-style
// lines, so the same binary reads well in a terminal and in journalctl.
package journal

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Priorities from sd-daemon.h; slog has no notice/critical levels.
const (
	prioErr     = 3
	prioWarning = 4
	prioInfo    = 6
	prioDebug   = 7
)

// priority maps a slog level to a syslog priority. Levels in between round
// down to the less severe priority (Info+2 is still info).
func priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return prioErr
	case l >= slog.LevelWarn:
		return prioWarning
	case l >= slog.LevelInfo:
		return prioInfo
	default:
		return prioDebug
	}
}

// NewHandler returns a slog.Handler writing one text line per record to w,
// dropping records below level (nil means Info).
//
// If w is connected to the journal, each line starts with "<N>" and carries
// no time= attribute, since journald stamps lines itself. w counts as
// connected when JOURNAL_STREAM (read via getenv) is set and, if w is an
// *os.File, names that file's device and inode as systemd documents; this
// keeps the prefix away from a terminal or a redirect when the variable was
// merely inherited. Otherwise the handler is a plain slog.TextHandler.
//
// The handler is safe for concurrent use; derived handlers (With, WithGroup)
// share its lock, so lines from different loggers never interleave.
func NewHandler(w io.Writer, getenv func(string) string, level slog.Leveler) slog.Handler {
	if level == nil {
		level = slog.LevelInfo
	}
	if !connected(w, getenv("JOURNAL_STREAM")) {
		return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: dropTime}
	mu := new(sync.Mutex)
	h := &handler{}
	for i, p := range []int{prioErr, prioWarning, prioInfo, prioDebug} {
		pw := &prefixWriter{mu: mu, w: w, prefix: []byte("<" + strconv.Itoa(p) + ">")}
		h.byPrio[i] = slog.NewTextHandler(pw, opts)
	}
	return h
}

// Writer returns a writer that gives every line written to w the syslog
// priority of level, or w itself when w is not the journal stream (see
// NewHandler). It is for the few lines written without a logger, such as
// the error a command exits with. Each Write should hold whole lines.
func Writer(w io.Writer, getenv func(string) string, level slog.Level) io.Writer {
	if !connected(w, getenv("JOURNAL_STREAM")) {
		return w
	}
	return &prefixWriter{mu: new(sync.Mutex), w: w, prefix: []byte("<" + strconv.Itoa(priority(level)) + ">")}
}

// connected reports whether w is the journal stream named by the
// JOURNAL_STREAM value stream ("DEV:INODE").
func connected(w io.Writer, stream string) bool {
	if stream == "" {
		return false
	}
	f, ok := w.(*os.File)
	if !ok {
		return true // nothing to compare against; trust the environment
	}
	dev, ino, ok := fileID(f)
	if !ok {
		return true
	}
	wantDev, wantIno, found := strings.Cut(stream, ":")
	if !found {
		return false
	}
	d, err1 := strconv.ParseUint(wantDev, 10, 64)
	i, err2 := strconv.ParseUint(wantIno, 10, 64)
	return err1 == nil && err2 == nil && d == dev && i == ino
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// handler routes each record to one of four TextHandlers that differ only in
// the prefix their writer adds.
type handler struct {
	byPrio [4]slog.Handler // err, warning, info, debug
}

func (h *handler) pick(l slog.Level) slog.Handler {
	switch priority(l) {
	case prioErr:
		return h.byPrio[0]
	case prioWarning:
		return h.byPrio[1]
	case prioInfo:
		return h.byPrio[2]
	default:
		return h.byPrio[3]
	}
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.byPrio[0].Enabled(ctx, l)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

func (h *handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return h.derive(func(in slog.Handler) slog.Handler { return in.WithAttrs(attrs) })
}

func (h *handler) WithGroup(name string) slog.Handler {
	return h.derive(func(in slog.Handler) slog.Handler { return in.WithGroup(name) })
}

func (h *handler) derive(f func(slog.Handler) slog.Handler) slog.Handler {
	out := &handler{}
	for i, in := range h.byPrio {
		out.byPrio[i] = f(in)
	}
	return out
}

// prefixWriter prepends prefix to every line of each Write and passes the
// result to w in a single Write under mu, so one record is one line with
// exactly one prefix even when several handlers share w.
type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var buf bytes.Buffer
	buf.Grow(len(b) + len(p.prefix))
	for rest := b; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line = rest[:i+1]
		}
		rest = rest[len(line):]
		buf.Write(p.prefix)
		buf.Write(line)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.w.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}
