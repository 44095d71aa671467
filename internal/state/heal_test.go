package state_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/state"
)

// Heal state is kept per container; a file of an older dockward, with one
// heal state for the whole service, still reads.
func TestHealPerContainerFormat(t *testing.T) {
	when := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		file   string // a state file to open; none when empty
		change func(*state.Service)
		want   state.Service
		stored string // services.web as written, compacted
	}{
		{
			name: "containers",
			change: func(svc *state.Service) {
				svc.Containers = map[string]state.Heal{"web-1": {LastRestart: when, Consecutive: 2}, "web-2": {GaveUp: true}}
			},
			want:   state.Service{Containers: map[string]state.Heal{"web-1": {LastRestart: when, Consecutive: 2}, "web-2": {GaveUp: true}}},
			stored: `{"containers":{"web-1":{"last_restart":"2024-05-01T12:00:00Z","consecutive":2},"web-2":{"gave_up":true}}}`,
		},
		{
			name: "older file with service-wide heal state",
			file: `{"version": 1, "services": {"web": {"heal": {"consecutive": 3, "gave_up": true}}}}`,
			want: state.Service{Heal: state.Heal{Consecutive: 3, GaveUp: true}},
			// Read as is; the healer moves it to the containers.
			stored: `{"heal":{"consecutive":3,"gave_up":true}}`,
		},
		{
			name:   "no containers left: the service is dropped",
			file:   `{"version": 1, "services": {"web": {"containers": {"web-1": {"consecutive": 1}}}}}`,
			change: func(svc *state.Service) { delete(svc.Containers, "web-1") },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if tt.file != "" {
				if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s := open(t, path)
			change := tt.change
			if change == nil {
				change = func(*state.Service) {}
			}
			if err := s.Update("web", change); err != nil {
				t.Fatal(err)
			}
			// Get hands out a copy: changing it changes nothing stored.
			got := s.Get("web")
			for k := range got.Containers {
				got.Containers[k] = state.Heal{Consecutive: 99}
			}
			if got := open(t, path).Get("web"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("reopened Get(web) = %+v, want %+v", got, tt.want)
			}
			if got := s.Get("web"); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Get(web) after changing a copy = %+v, want %+v", got, tt.want)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var doc struct {
				Services map[string]json.RawMessage `json:"services"`
			}
			if err := json.Unmarshal(b, &doc); err != nil {
				t.Fatalf("state file is not valid JSON: %v\n%s", err, b)
			}
			raw, ok := doc.Services["web"]
			if tt.stored == "" {
				if ok {
					t.Errorf("services.web = %s, want it dropped", raw)
				}
				return
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, raw); err != nil {
				t.Fatal(err)
			}
			if compact.String() != tt.stored {
				t.Errorf("services.web = %s, want %s", compact.String(), tt.stored)
			}
		})
	}
}
