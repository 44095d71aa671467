package watcher

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const testToken = "t0ken-for-the-guard-tests"

// TestGuard checks each guard on every route: the Host, cross-site
// mutations, the token, in that order.
func TestGuard(t *testing.T) {
	tests := []struct {
		name    string
		token   string // api.token
		method  string
		target  string
		host    string
		headers map[string]string
		status  int
		errHas  string
	}{
		// Host: 421 on every path and method, whatever else is right.
		{name: "rebinding host reads status", method: "GET", target: "/status", host: "evil.example:9090", status: 421, errHas: "loopback Host"},
		{name: "rebinding host reads page", method: "GET", target: "/", host: "evil.example", status: 421},
		{name: "rebinding host reads health", method: "GET", target: "/health", host: "evil.example", status: 421},
		{name: "rebinding host with the token", token: testToken, method: "POST", target: "/trigger", host: "evil.example",
			headers: map[string]string{"Authorization": "Bearer " + testToken}, status: 421},
		{name: "LAN address", method: "GET", target: "/status", host: "192.168.1.10:9090", status: 421},
		{name: "other loopback address", method: "GET", target: "/status", host: "127.0.0.2:9090", status: 421},
		{name: "localhost as a subdomain", method: "GET", target: "/status", host: "localhost.evil.example", status: 421},
		{name: "localhost with a bad port", method: "GET", target: "/status", host: "localhost:90x0", status: 421},
		{name: "empty host", method: "GET", target: "/status", host: "", status: 421},
		{name: "localhost", method: "GET", target: "/status", host: "localhost", status: 200},
		{name: "LOCALHOST with port", method: "GET", target: "/status", host: "LOCALHOST:9090", status: 200},
		{name: "127.0.0.1 with port", method: "GET", target: "/health", host: "127.0.0.1:9090", status: 200},
		{name: "127.0.0.1", method: "GET", target: "/health", host: "127.0.0.1", status: 200},
		{name: "[::1] with port", method: "GET", target: "/health", host: "[::1]:9090", status: 200},
		{name: "[::1]", method: "GET", target: "/health", host: "[::1]", status: 200},

		// Cross-site mutations: 403, with or without a token.
		{name: "form post from a web page", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "https://evil.example"}, status: 403, errHas: "cross-site POST"},
		{name: "origin null", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "null"}, status: 403},
		{name: "origin of another port", method: "DELETE", target: "/blocked/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "http://127.0.0.1:8080"}, status: 403},
		{name: "origin localhost for a 127.0.0.1 host", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "http://localhost:9090"}, status: 403},
		{name: "origin https of the same host", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "https://127.0.0.1:9090"}, status: 403},
		{name: "sec-fetch-site cross-site", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Sec-Fetch-Site": "cross-site"}, status: 403, errHas: "Sec-Fetch-Site: cross-site"},
		{name: "sec-fetch-site same-site", method: "DELETE", target: "/blocked/app", host: "localhost:9090",
			headers: map[string]string{"Sec-Fetch-Site": "same-site"}, status: 403},
		{name: "cross-site with the token", token: testToken, method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "https://evil.example", "Authorization": "Bearer " + testToken}, status: 403},
		{name: "cross-site read is allowed", method: "GET", target: "/status", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, status: 200},
		{name: "same origin", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Origin": "http://127.0.0.1:9090", "Sec-Fetch-Site": "same-origin"}, status: 202},
		{name: "typed in the address bar", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Sec-Fetch-Site": "none"}, status: 202},
		{name: "curl without a token", method: "POST", target: "/trigger/app", host: "127.0.0.1:9090", status: 202},
		{name: "curl unblocks without a token", method: "DELETE", target: "/blocked/app", host: "127.0.0.1:9090", status: 200},

		// The token: only POST and DELETE need it.
		{name: "post without the token", token: testToken, method: "POST", target: "/trigger/app", host: "127.0.0.1:9090", status: 401, errHas: "needs the API token"},
		{name: "delete without the token", token: testToken, method: "DELETE", target: "/blocked/app", host: "127.0.0.1:9090", status: 401},
		{name: "wrong token", token: testToken, method: "POST", target: "/trigger", host: "127.0.0.1:9090",
			headers: map[string]string{"Authorization": "Bearer " + testToken + "x"}, status: 401},
		{name: "token prefix", token: testToken, method: "POST", target: "/trigger", host: "127.0.0.1:9090",
			headers: map[string]string{"Authorization": "Bearer " + testToken[:10]}, status: 401},
		{name: "basic instead of bearer", token: testToken, method: "POST", target: "/trigger", host: "127.0.0.1:9090",
			headers: map[string]string{"Authorization": "Basic " + testToken}, status: 401},
		{name: "bare token", token: testToken, method: "POST", target: "/trigger", host: "127.0.0.1:9090",
			headers: map[string]string{"Authorization": testToken}, status: 401},
		{name: "right token", token: testToken, method: "POST", target: "/trigger/app", host: "127.0.0.1:9090",
			headers: map[string]string{"Authorization": "Bearer " + testToken}, status: 202},
		{name: "right token, scheme in lower case", token: testToken, method: "DELETE", target: "/blocked/app", host: "localhost",
			headers: map[string]string{"Authorization": "bearer " + testToken}, status: 200},
		{name: "health stays open", token: testToken, method: "GET", target: "/health", host: "127.0.0.1:9090", status: 200},
		{name: "metrics stay open", token: testToken, method: "GET", target: "/metrics", host: "127.0.0.1:9090", status: 200},
		{name: "status stays open", token: testToken, method: "GET", target: "/status", host: "127.0.0.1:9090", status: 200},
		{name: "page stays open", token: testToken, method: "GET", target: "/", host: "127.0.0.1:9090", status: 200},
		{name: "blocked list stays open", token: testToken, method: "GET", target: "/blocked", host: "127.0.0.1:9090", status: 200},
		{name: "HEAD stays open", token: testToken, method: "HEAD", target: "/status", host: "127.0.0.1:9090", status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := newAPI(t)
			api := NewAPI(APIDeps{Updater: h.u, Metrics: h.metrics, Store: h.store, Logger: h.logger, Version: "test", Token: tt.token})
			req := httptest.NewRequest(tt.method, tt.target, nil)
			req.Host = tt.host
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			api.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("%s %s (Host %q, %v) = %d, want %d; body: %s", tt.method, tt.target, tt.host, tt.headers, rec.Code, tt.status, rec.Body)
			}
			if tt.status >= 400 {
				var body map[string]string
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatalf("error body %q is not JSON: %v", rec.Body, err)
				}
				if !strings.Contains(body["error"], tt.errHas) {
					t.Errorf("error = %q, want one containing %q", body["error"], tt.errHas)
				}
				if tt.token != "" && strings.Contains(rec.Body.String(), tt.token) {
					t.Errorf("the answer quotes the token: %s", rec.Body)
				}
			}
			if tt.status == 401 && rec.Header().Get("WWW-Authenticate") != `Bearer realm="dockward"` {
				t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", rec.Header().Get("WWW-Authenticate"))
			}
			if tt.status == 421 || tt.status == 403 || tt.status == 401 {
				if calls := h.w.Calls(); len(calls) != 0 {
					t.Errorf("a refused request reached the updater: calls %q", calls)
				}
			}
			if strings.Contains(h.logs.String(), testToken) {
				t.Errorf("the log holds the token:\n%s", h.logs)
			}
		})
	}
}

// TestGuardLimitsBodies checks that a body beyond the limit cannot be read
// by a handler.
func TestGuardLimitsBodies(t *testing.T) {
	var read int64
	var readErr error
	api := guarded(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		read, readErr = io.Copy(io.Discard, r.Body)
	}), "")
	for _, tt := range []struct {
		size    int
		wantErr bool
	}{{maxBodyBytes, false}, {maxBodyBytes + 1, true}, {10 << 20, true}} {
		req := httptest.NewRequest("POST", "/trigger", bytes.NewReader(make([]byte, tt.size)))
		req.Host = "127.0.0.1:9090"
		api.ServeHTTP(httptest.NewRecorder(), req)
		if (readErr != nil) != tt.wantErr || read > maxBodyBytes {
			t.Errorf("body of %d bytes: read %d, err %v; want at most %d bytes read, error %v", tt.size, read, readErr, maxBodyBytes, tt.wantErr)
		}
	}
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"localhost": true, "localhost:1": true, "Localhost:65535": true, "127.0.0.1": true, "127.0.0.1:80": true,
		"[::1]": true, "[::1]:9090": true,
		"": false, "::1": false, "[::1]:": false, "localhost:": false, "127.0.0.1:123456": false, "0.0.0.0": false,
		"127.1": false, "[::ffff:127.0.0.1]": false, "localhost.": false, "example.com": false, "127.0.0.1.nip.io": false,
		"localhost:9090:1": false, "[localhost]": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}
