package watcher

import (
	"crypto/subtle"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// maxBodyBytes bounds every request body. No route reads more than a few
// bytes today; a handler that needs less may narrow it.
const maxBodyBytes = 64 << 10

// guarded wraps the whole API in its guards, in this order:
//
//  1. A Host that is not a loopback name or address (localhost, 127.0.0.1,
//     [::1], any port) gets 421 on every path. The API binds 127.0.0.1, so
//     another Host means a DNS-rebinding page is talking to it through a
//     browser.
//  2. A POST or DELETE that a browser marks as cross-site (an Origin of
//     another origin, or Sec-Fetch-Site cross-site or same-site) gets 403:
//     a page open in a browser on this host must not trigger or unblock.
//  3. With a token configured, a POST or DELETE without
//     "Authorization: Bearer <token>" gets 401. Reading (GET, HEAD) stays
//     open: /health, /metrics, /status and / need no token. POST
//     /registry/events is the exception: the registry sends its own token
//     (registry.events_token), which that handler checks.
//  4. Every request body is limited to maxBodyBytes.
//
// curl and scripts send no Origin and no Sec-Fetch-Site, so they pass 2.
func guarded(next http.Handler, token string) http.Handler {
	want := []byte(token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			writeError(w, http.StatusMisdirectedRequest, "this API answers only to a loopback Host (localhost, 127.0.0.1 or [::1])")
			return
		}
		// The mux would answer a path with "..", "." or "//" with a redirect
		// to its clean form, which a client following it may POST to: a
		// path names one route as written, or none.
		if !cleanPath(r.URL.Path) {
			writeError(w, http.StatusBadRequest, "the path must not hold empty, \".\" or \"..\" segments")
			return
		}
		mutating := r.Method == http.MethodPost || r.Method == http.MethodDelete
		if mutating {
			if why := crossSite(r); why != "" {
				writeError(w, http.StatusForbidden, "refusing a cross-site "+r.Method+" ("+why+")")
				return
			}
			// POST /registry/events carries the registry's own token
			// (registry.events_token), which its handler checks.
			if len(want) > 0 && r.URL.Path != registryEventsPath && !bearer(r, want) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="dockward"`)
				writeError(w, http.StatusUnauthorized, r.Method+" needs the API token: Authorization: Bearer <api.token>")
				return
			}
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
		next.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether a Host header names this host's loopback
// interface: localhost, 127.0.0.1 or [::1], with or without a port.
func loopbackHost(host string) bool {
	name := host
	if h, port, err := net.SplitHostPort(host); err == nil {
		if !validPort(port) {
			return false
		}
		name = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		name = host[1 : len(host)-1]
	}
	// An IPv6 address is always in brackets; nothing else is.
	if strings.HasPrefix(host, "[") {
		return name == "::1"
	}
	switch strings.ToLower(name) {
	case "localhost", "127.0.0.1":
		return true
	}
	return false
}

func validPort(p string) bool {
	if p == "" || len(p) > 5 {
		return false
	}
	for _, c := range p {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// crossSite says why a browser marked the request as coming from another
// site, or "" when it did not.
func crossSite(r *http.Request) string {
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "cross-site", "same-site":
		return "Sec-Fetch-Site: " + site
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	u, err := url.Parse(origin)
	if err != nil || u.Scheme != "http" || !strings.EqualFold(u.Host, r.Host) {
		return "Origin " + origin + " is not http://" + r.Host
	}
	return ""
}

// bearer reports whether the request carries the token, compared in
// constant time.
func bearer(r *http.Request, want []byte) bool {
	scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), want) == 1
}

// cleanPath reports whether p is an absolute path without empty, "." or
// ".." segments (a trailing slash aside).
func cleanPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		switch {
		case seg == "." || seg == "..":
			return false
		case seg == "" && i != len(segs)-1:
			return false
		}
	}
	return true
}
