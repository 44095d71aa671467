package watcher

import (
	"errors"
	"testing"
)

func TestComposeSaysEngineAway(t *testing.T) {
	tests := []struct {
		name string
		out  string
		want bool
	}{
		{"no socket", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", true},
		{"engine cut the connection", `error during connect: Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.41/containers/json": EOF`, true},
		{"engine refused", "dial unix /var/run/docker.sock: connect: connection refused", true},
		{"registry refused the engine's pull", ` app Error Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused
Error response from daemon: Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused`, false},
		{"registry cut the engine's pull", "Error response from daemon: Get \"http://127.0.0.1:5000/v2/\": unexpected EOF", false},
		{"manifest unknown", "Error response from daemon: manifest for x:latest not found", false},
	}
	for _, tt := range tests {
		if got := composeSaysEngineAway(errors.New(tt.out)); got != tt.want {
			t.Errorf("%s: composeSaysEngineAway(%q) = %v, want %v", tt.name, tt.out, got, tt.want)
		}
	}
}
