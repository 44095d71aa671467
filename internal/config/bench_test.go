package config

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkParse measures loading a config with 20 services (start-up and
// every SIGHUP reload).
func BenchmarkParse(b *testing.B) {
	var services []string
	for i := range 20 {
		services = append(services, fmt.Sprintf(`{"name": "app%d", "image": "app%d:latest", "compose_file": "/srv/app%d/docker-compose.yml", "compose_project": "app%d", "auto_update": true, "auto_heal": true}`, i, i, i, i))
	}
	doc := []byte(`{"registry": {"url": "http://localhost:5000", "poll_interval": 30}, "services": [` + strings.Join(services, ",") + `]}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(doc); err != nil {
			b.Fatal(err)
		}
	}
}
