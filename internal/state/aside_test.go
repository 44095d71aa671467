package state

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestKeepCopyNeverOverwrites: copies made in the same second get their own
// names; a content that is already kept is not copied again.
func TestKeepCopyNeverOverwrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	now := time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	tests := []struct {
		content, want string
	}{
		{"first", path + ".damaged-20260102T150405Z"},
		{"second", path + ".damaged-20260102T150405Z-1"},
		{"first", path + ".damaged-20260102T150405Z"},
		{"third", path + ".damaged-20260102T150405Z-2"},
	}
	for _, tt := range tests {
		got, err := keepCopy(path, []byte(tt.content), now)
		if err != nil || got != tt.want {
			t.Fatalf("keepCopy(%q) = %q, %v; want %q", tt.content, got, err, tt.want)
		}
		if b, _ := os.ReadFile(got); string(b) != tt.content {
			t.Errorf("%s holds %q, want %q", got, b, tt.content)
		}
	}
}
