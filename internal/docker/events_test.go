package docker

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// streamEvents answers GET /events like the engine: headers at once, then
// one JSON object per line, each flushed, then (if block) nothing more until
// the client goes away.
func streamEvents(lines [][]byte, block bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		for _, l := range lines {
			w.Write(append(l, '\n'))
			rc.Flush()
		}
		if block {
			<-r.Context().Done()
		}
	}
}

func eventLines(t *testing.T) [][]byte {
	return bytes.Split(bytes.TrimSpace(fixture(t, "events.jsonl")), []byte("\n"))
}

func TestEvents(t *testing.T) {
	c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /events": streamEvents(eventLines(t), false),
	})
	filters := map[string][]string{
		"type":  {"container", "image"},
		"label": {"com.docker.compose.project=shop"},
	}
	var got []Event
	err := c.Events(t.Context(), filters, time.Unix(1764117600, 500), nil, func(ev Event) { got = append(got, ev) })
	if !errors.Is(err, errStreamClosed) || err.Error() != "watch docker events: event stream closed" {
		t.Errorf("Events() = %v, want %q", err, "watch docker events: event stream closed")
	}

	web := map[string]string{
		"com.docker.compose.project": "shop",
		"com.docker.compose.service": "web",
		"image":                      "127.0.0.1:5000/shop/web:latest",
		"name":                       "shop-web-1",
	}
	want := []Event{
		{
			Type: "container", Action: "start",
			ID:         "4f1c2d9a8b7e6f5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a29180f7e6d5c",
			Attributes: web,
			Time:       time.Unix(0, 1764118801482019733),
		},
		{
			Type: "container", Action: "health_status: unhealthy",
			ID:         "4f1c2d9a8b7e6f5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a29180f7e6d5c",
			Attributes: web,
			Time:       time.Unix(0, 1764119945201996114),
		},
		{
			Type: "container", Action: "die",
			ID: "a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff",
			Attributes: map[string]string{
				"com.docker.compose.project": "shop",
				"com.docker.compose.service": "worker",
				"exitCode":                   "137",
				"image":                      "127.0.0.1:5000/shop/worker:v1.4.2",
				"name":                       "shop-worker-1",
			},
			Time: time.Unix(0, 1764118480662105377),
		},
		{
			Type: "image", Action: "tag",
			ID:         "sha256:9b2f1e0d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
			Attributes: map[string]string{"name": "127.0.0.1:5000/shop/web:dockward-previous"},
			Time:       time.Unix(0, 1764117611302947513),
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Events() delivered\n%+v\nwant\n%+v", got, want)
	}

	// Filter keys in sorted order, as encoding/json writes a map.
	const wantURI = "GET /v1.41/events?" +
		"filters=%7B%22label%22%3A%5B%22com.docker.compose.project%3Dshop%22%5D%2C%22type%22%3A%5B%22container%22%2C%22image%22%5D%7D" +
		"&since=1764117600"
	if reqs := e.received(); reqs[1] != wantURI {
		t.Errorf("Events() sent %q, want %q", reqs[1], wantURI)
	}
}

func TestEventsWithoutFiltersOrSince(t *testing.T) {
	c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /events": streamEvents(nil, false)})
	err := c.Events(t.Context(), nil, time.Time{}, nil, func(Event) { t.Error("Events() delivered an event from an empty stream") })
	if !errors.Is(err, errStreamClosed) {
		t.Errorf("Events() = %v, want the stream closed", err)
	}
	if reqs := e.received(); reqs[1] != "GET /v1.41/events" {
		t.Errorf("Events() sent %q, want %q", reqs[1], "GET /v1.41/events")
	}
}

func TestEventsCancel(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"while streaming", streamEvents(eventLines(t)[:1], true)},
		{"before the engine answers", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /events": tt.handler})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			timer := time.AfterFunc(200*time.Millisecond, cancel)
			defer timer.Stop()

			done := make(chan error, 1)
			go func() { done <- c.Events(ctx, nil, time.Time{}, nil, func(Event) {}) }()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "watch docker events: ") {
					t.Errorf("Events() after cancel = %v, want a wrapped context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Events() still running 5s after its context was cancelled")
			}
		})
	}
}

func TestEventsHeaderTimeout(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /events": func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() },
	})
	shortenTimeout(t, c, 100*time.Millisecond)
	start := time.Now()
	err := c.Events(t.Context(), nil, time.Time{}, nil, func(Event) {})
	const want = "watch docker events: no response from the engine within 100ms"
	if err == nil || err.Error() != want {
		t.Errorf("Events() = %v, want %q", err, want)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Events() took %s to give up", d)
	}
}

// Once the headers are in, the stream may stay quiet far longer than the
// per-call timeout.
func TestEventsQuietStreamOutlivesCallTimeout(t *testing.T) {
	lines := eventLines(t)
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /events": func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			rc := http.NewResponseController(w)
			rc.Flush()
			select {
			case <-time.After(time.Second):
			case <-r.Context().Done():
				return
			}
			w.Write(append(lines[0], '\n'))
		},
	})
	shortenTimeout(t, c, 250*time.Millisecond)
	n := 0
	err := c.Events(t.Context(), nil, time.Time{}, nil, func(Event) { n++ })
	if n != 1 || !errors.Is(err, errStreamClosed) {
		t.Errorf("Events() delivered %d events and returned %v, want 1 and the stream closed", n, err)
	}
}

func TestEventsBadStream(t *testing.T) {
	good := eventLines(t)[0]
	tests := []struct {
		name    string
		lines   [][]byte
		wantN   int
		wantErr string
	}{
		{"cut mid-event", [][]byte{good, []byte(`{"Type":"container","Action":"start"`)}, 1, "watch docker events: decode event: unexpected EOF"},
		{"not JSON", [][]byte{[]byte(`<html>`)}, 0, "watch docker events: decode event: invalid character '<' looking for beginning of value"},
		{"wrong shape", [][]byte{good, []byte(`["start"]`)}, 1, "watch docker events: decode event: json: cannot unmarshal array into Go value of type struct"},
		{"null", [][]byte{[]byte(`null`)}, 0, `watch docker events: decode event: event without Type or Action (actor "")`},
		{"no action", [][]byte{[]byte(`{"Type":"container","Actor":{"ID":"abc"}}`)}, 0, `watch docker events: decode event: event without Type or Action (actor "abc")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{"GET /events": streamEvents(tt.lines, false)})
			n := 0
			err := c.Events(t.Context(), nil, time.Time{}, nil, func(Event) { n++ })
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || errors.Is(err, errStreamClosed) {
				t.Errorf("Events() = %v, want %q", err, tt.wantErr)
			}
			if n != tt.wantN {
				t.Errorf("Events() delivered %d events, want %d", n, tt.wantN)
			}
		})
	}
}

func TestEventHealthStatus(t *testing.T) {
	tests := []struct {
		action string
		want   string
		wantOK bool
	}{
		{"health_status: unhealthy", "unhealthy", true},
		{"health_status: healthy", "healthy", true},
		{"health_status: starting", "starting", true},
		{"health_status:healthy", "healthy", true},
		{"start", "", false},
		{"exec_start: sh -c wget -qO- http://127.0.0.1:8080/healthz", "", false},
	}
	for _, tt := range tests {
		got, ok := Event{Type: "container", Action: tt.action}.HealthStatus()
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("Event{Action: %q}.HealthStatus() = %q, %v, want %q, %v", tt.action, got, ok, tt.want, tt.wantOK)
		}
	}
}

func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("null"))
	f.Add([]byte("{}"))
	f.Add([]byte(`{"Type":"container","Action":"die","timeNano":-1}`))
	f.Add([]byte(`{"Type":"container","Action":"start","time":1764118801}{"Type":"network"`))
	for _, l := range bytes.Split(fixture(f, "events.jsonl"), []byte("\n")) {
		f.Add(l)
	}
	f.Add(fixture(f, "events.jsonl"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		err := decodeEvents(bytes.NewReader(stream), func(ev Event) {
			if ev.Type == "" || ev.Action == "" {
				t.Errorf("decodeEvents delivered %+v without Type or Action", ev)
			}
		})
		if err == nil {
			t.Error("decodeEvents returned nil; a stream always ends in an error")
		}
	})
}
