package config_test

import (
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/config"
)

func TestPromotionConfig(t *testing.T) {
	canary := func(extra string) string {
		return withService(`, "image": "team/app:latest", "auto_update": true` + extra)
	}
	tests := []struct {
		name string
		in   string
		want string // a problem as Parse lists it; "" for a valid config
	}{
		{name: "promote tag and soak", in: canary(`, "promote_tag": "stable", "promote_after": 120`)},
		{name: "promote tag, no soak", in: canary(`, "promote_tag": "v1.2-stable"`)},
		{name: "soak without tag", in: canary(`, "promote_after": 60`), want: "services[0].promote_after: is set, but promote_tag is not"},
		{name: "negative soak", in: canary(`, "promote_tag": "stable", "promote_after": -1`), want: "services[0].promote_after: must be a number of seconds, 0 or more, got -1"},
		{name: "soak overflows", in: canary(`, "promote_tag": "stable", "promote_after": 1e10`), want: "services[0].promote_after: must be less than 292 years, got 1e+10 seconds"},
		{name: "the watched tag", in: canary(`, "promote_tag": "latest"`),
			want: `services[0].promote_tag: "latest" is the tag this service watches; promote to another tag, which the fleet watches`},
		{name: "not a tag", in: canary(`, "promote_tag": "-stable"`), want: `services[0].promote_tag: "-stable" is not a valid tag`},
		{name: "a reference, not a tag", in: canary(`, "promote_tag": "app:stable"`), want: `services[0].promote_tag: "app:stable" is not a valid tag`},
		{name: "a path, not a tag", in: canary(`, "promote_tag": "x/stable"`), want: `services[0].promote_tag: "x/stable" is not a valid tag`},
		{name: "without auto_update", in: withService(`, "image": "team/app:latest", "promote_tag": "stable"`),
			want: "services[0].promote_tag: needs image and auto_update: only a digest this host deployed is promoted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := config.Parse([]byte(tt.in))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse(%q) error: %v", tt.in, err)
				}
				if c.Services[0].PromoteTag == "" {
					t.Errorf("promote_tag not decoded")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "\n  "+tt.want) {
				t.Fatalf("Parse(%q) error = %v, want the problem %q", tt.in, err, tt.want)
			}
		})
	}
}
