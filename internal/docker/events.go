package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Event is one entry of the engine's event stream.
type Event struct {
	Type       string // container, image, network, ...
	Action     string // start, die, "health_status: unhealthy", ...
	ID         string // the actor: a container ID, an image reference, ...
	Attributes map[string]string
	Time       time.Time
}

// HealthStatus returns the status of a health_status event: "healthy",
// "unhealthy" or "starting". ok is false for any other event.
func (e Event) HealthStatus() (status string, ok bool) {
	status, ok = strings.CutPrefix(e.Action, "health_status:")
	if !ok {
		return "", false
	}
	return strings.TrimSpace(status), true
}

// Events follows the engine's event stream, calling fn for each event in
// order; the stream waits while fn runs. filters is the engine's filter
// map, e.g. {"type": {"container"}, "label": {"com.docker.compose.project=shop"}}.
// A non-zero since replays events from that second on, so an event may be
// seen again after a reconnect.
//
// opened, when not nil, is called once the engine has answered and the
// stream is open: from then on a change is seen as an event.
//
// Events runs until ctx is done, returning ctx's error wrapped, or until the
// stream ends or breaks, returning an error: the engine closing the stream
// is an error so that the caller reconnects. Only reaching the engine and
// its response headers are bounded by the client's timeout.
func (c *Client) Events(ctx context.Context, filters map[string][]string, since time.Time, opened func(), fn func(Event)) error {
	const op = "watch docker events"
	query := url.Values{}
	if len(filters) > 0 {
		encoded, err := json.Marshal(filters)
		if err != nil {
			return fmt.Errorf("%s: encode filters: %w", op, err)
		}
		query.Set("filters", string(encoded))
	}
	if !since.IsZero() {
		query.Set("since", strconv.FormatInt(since.Unix(), 10))
	}

	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	headerTimer := time.AfterFunc(c.timeout, cancel)
	resp, err := c.send(streamCtx, request{op: op, method: http.MethodGet, path: "/events", query: query})
	if !headerTimer.Stop() {
		if err == nil {
			closeBody(resp)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", op, ctx.Err())
		}
		return fmt.Errorf("%s: no response from the engine within %s", op, c.timeout)
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", op, ctx.Err())
		}
		return err
	}
	defer resp.Body.Close()
	if opened != nil {
		opened()
	}

	err = decodeEvents(resp.Body, fn)
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	return fmt.Errorf("%s: %w", op, err)
}

// errStreamClosed is what decodeEvents returns when the engine ends the stream.
var errStreamClosed = errors.New("event stream closed")

// decodeEvents decodes one engine event after another from r, calling fn
// for each, until r ends (errStreamClosed) or fails.
func decodeEvents(r io.Reader, fn func(Event)) error {
	dec := json.NewDecoder(r)
	for {
		var raw struct {
			Type   string
			Action string
			Actor  struct {
				ID         string
				Attributes map[string]string
			}
			Time     int64 `json:"time"`
			TimeNano int64 `json:"timeNano"`
		}
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return errStreamClosed
		}
		if err != nil {
			return fmt.Errorf("decode event: %w", err)
		}
		if raw.Type == "" || raw.Action == "" {
			return fmt.Errorf("decode event: event without Type or Action (actor %q)", raw.Actor.ID)
		}
		t := time.Unix(0, raw.TimeNano)
		if raw.TimeNano == 0 {
			t = time.Unix(raw.Time, 0)
		}
		fn(Event{
			Type:       raw.Type,
			Action:     raw.Action,
			ID:         raw.Actor.ID,
			Attributes: raw.Actor.Attributes,
			Time:       t,
		})
	}
}
