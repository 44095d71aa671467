package registry

import (
	"strings"
	"testing"
)

func TestParseRef(t *testing.T) {
	const host = "localhost:5000"
	tests := []struct {
		name    string
		s       string
		host    string
		want    Ref
		wantErr string // a substring of the error; "" when parsing succeeds
	}{
		{name: "repo and tag", s: "myapp:latest", want: Ref{host, "myapp", "latest"}},
		{name: "no tag means latest", s: "team/app", want: Ref{host, "team/app", "latest"}},
		{name: "nested path", s: "a/b/c:v1.2.3", want: Ref{host, "a/b/c", "v1.2.3"}},
		{name: "full reference with the registry's host", s: "localhost:5000/myapp:v2", want: Ref{host, "myapp", "v2"}},
		{name: "host compared case-insensitively", s: "LocalHost:5000/myapp", want: Ref{host, "myapp", "latest"}},
		{name: "dotted host", s: "registry.example.com/team/app:1", host: "registry.example.com", want: Ref{"registry.example.com", "team/app", "1"}},
		{name: "separators", s: "a.b_c__d-e---f:x", want: Ref{host, "a.b_c__d-e---f", "x"}},
		{name: "tag grammar", s: "app:_V1.0-rc_2", want: Ref{host, "app", "_V1.0-rc_2"}},
		{name: "128 character tag", s: "app:" + strings.Repeat("t", 128), want: Ref{host, "app", strings.Repeat("t", 128)}},
		{name: "repo that looks like host:port without a slash", s: "localhost:5000", want: Ref{host, "localhost", "5000"}},

		{name: "other host", s: "ghcr.io/team/app:v1", wantErr: `names registry host "ghcr.io", but the watched registry is "localhost:5000"`},
		{name: "other port", s: "localhost:5001/app", wantErr: `"localhost:5001"`},
		{name: "bare localhost is another host", s: "localhost/app", wantErr: `names registry host "localhost"`},
		{name: "digest", s: "app@sha256:" + strings.Repeat("a", 64), wantErr: "must be a tag"},
		{name: "tag and digest", s: "app:v1@sha256:" + strings.Repeat("a", 64), wantErr: "must be a tag"},
		{name: "empty", s: "", wantErr: "empty"},
		{name: "uppercase repo", s: "MyApp:v1", wantErr: `component "MyApp"`},
		{name: "empty component", s: "team//app", wantErr: `component ""`},
		{name: "trailing slash", s: "team/", wantErr: `component ""`},
		{name: "leading separator", s: "-app", wantErr: `component "-app"`},
		{name: "trailing separator", s: "app.", wantErr: `component "app."`},
		{name: "triple underscore", s: "a___b", wantErr: `component "a___b"`},
		{name: "mixed separators", s: "a._b", wantErr: `component "a._b"`},
		{name: "host only", s: "localhost:5000/", wantErr: "repository is empty"},
		{name: "empty tag", s: "app:", wantErr: "tag is empty"},
		{name: "tag starting with dot", s: "app:.v1", wantErr: `tag ".v1"`},
		{name: "tag starting with dash", s: "app:-v1", wantErr: `tag "-v1"`},
		{name: "colon in the first component makes it a host", s: "app:v1/x", wantErr: `names registry host "app:v1"`},
		{name: "129 character tag", s: "app:" + strings.Repeat("t", 129), wantErr: "limit is 128"},
		{name: "too long", s: strings.Repeat("a", 250), wantErr: "limit is 255"},
		{name: "space", s: "my app", wantErr: "component"},
		{name: "empty registry host", s: "app", host: "-", wantErr: "invalid registry host"},
		{name: "registry host docker would read as a hub path", s: "app", host: "registry", wantErr: "Docker Hub"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := host
			switch tt.host {
			case "":
			case "-":
				h = ""
			default:
				h = tt.host
			}
			got, err := ParseRef(tt.s, h)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRef(%q, %q) = %v, %v, want an error containing %q", tt.s, h, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRef(%q, %q) = %#v, %v, want %#v", tt.s, h, got, err, tt.want)
			}
		})
	}
}

func TestRefMethods(t *testing.T) {
	r := Ref{Host: "localhost:5000", Repository: "team/app", Tag: "v1"}
	for _, tt := range []struct{ name, got, want string }{
		{"Local", r.Local(), "localhost:5000/team/app:v1"},
		{"LocalRepo", r.LocalRepo(), "localhost:5000/team/app"},
		{"WithTag", r.WithTag("dockward-previous"), "localhost:5000/team/app:dockward-previous"},
		{"String", r.String(), "localhost:5000/team/app:v1"},
	} {
		if tt.got != tt.want {
			t.Errorf("%s() = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{
		"myapp:latest", "team/app", "localhost:5000/myapp:v2", "ghcr.io/a/b:c", "a@sha256:00",
		"a.b_c__d-e---f:x", "localhost:5000", "a//b", ":tag", "app:", "UPPER", "a/b/c/d/e/f:g.h-i_j",
	} {
		f.Add(s, "localhost:5000")
	}
	f.Add("registry.example.com/app", "registry.example.com")
	f.Fuzz(func(t *testing.T, s, host string) {
		r, err := ParseRef(s, host)
		if err != nil {
			return
		}
		if r.Host != host {
			t.Fatalf("ParseRef(%q, %q).Host = %q", s, host, r.Host)
		}
		if validateRepository(r.Repository) != nil || validateTag(r.Tag) != nil {
			t.Fatalf("ParseRef(%q, %q) = %#v: invalid repository or tag accepted", s, host, r)
		}
		// What Local prints must parse back to the same reference, in both
		// the full and the relative form.
		for _, again := range []string{r.Local(), r.Repository + ":" + r.Tag} {
			r2, err := ParseRef(again, host)
			if err != nil || r2 != r {
				t.Fatalf("ParseRef(%q, %q) = %#v, %v, want %#v (from %q)", again, host, r2, err, r, s)
			}
		}
	})
}
