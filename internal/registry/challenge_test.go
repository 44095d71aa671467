package registry

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestParseChallenges(t *testing.T) {
	type params = map[string]string
	tests := []struct {
		name   string
		header string
		want   []Challenge
	}{
		{
			name:   "docker hub style bearer",
			header: `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"`,
			want: []Challenge{{"Bearer", params{
				"realm": "https://auth.docker.io/token", "service": "registry.docker.io", "scope": "repository:samalba/my-app:pull,push",
			}}},
		},
		{
			name:   "basic realm",
			header: `Basic realm="Registry Realm"`,
			want:   []Challenge{{"Basic", params{"realm": "Registry Realm"}}},
		},
		{
			name:   "two challenges, spaces and token values",
			header: `Basic realm="a" , Bearer  realm = "b" ,error=invalid_token`,
			want:   []Challenge{{"Basic", params{"realm": "a"}}, {"Bearer", params{"realm": "b", "error": "invalid_token"}}},
		},
		{
			name:   "names are case-insensitive, first one wins",
			header: `Bearer REALM="a", Realm="b"`,
			want:   []Challenge{{"Bearer", params{"realm": "a"}}},
		},
		{
			name:   "escapes in quoted strings",
			header: `Bearer realm="a \"quoted\" \\ value"`,
			want:   []Challenge{{"Bearer", params{"realm": `a "quoted" \ value`}}},
		},
		{
			name:   "unterminated quote runs to the end",
			header: `Bearer realm="https://auth`,
			want:   []Challenge{{"Bearer", params{"realm": "https://auth"}}},
		},
		{
			name:   "token68 is skipped",
			header: `Basic dXNlcjpwYXNz==, Bearer realm="r"`,
			want:   []Challenge{{"Basic", params{}}, {"Bearer", params{"realm": "r"}}},
		},
		{
			name:   "scheme without parameters",
			header: `Negotiate, Basic realm="r"`,
			want:   []Challenge{{"Negotiate", params{}}, {"Basic", params{"realm": "r"}}},
		},
		{name: "empty", header: "", want: nil},
		{name: "only commas", header: " , ,, ", want: nil},
		{
			name:   "junk is skipped",
			header: `"" Bearer realm="r", =, scope`,
			want:   []Challenge{{"Bearer", params{"realm": "r"}}, {"scope", params{}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseChallenges(tt.header)
			if !equalChallenges(got, tt.want) {
				t.Errorf("ParseChallenges(%q) = %v, want %v", tt.header, got, tt.want)
			}
		})
	}
}

func equalChallenges(a, b []Challenge) bool {
	return slices.EqualFunc(a, b, func(x, y Challenge) bool {
		return x.Scheme == y.Scheme && maps.Equal(x.Params, y.Params)
	})
}

// formatChallenges writes challenges back as a header, every value quoted.
func formatChallenges(cs []Challenge) string {
	var b strings.Builder
	for i, c := range cs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(c.Scheme)
		for j, k := range slices.Sorted(maps.Keys(c.Params)) {
			if j == 0 {
				b.WriteString(" ")
			} else {
				b.WriteString(",")
			}
			v := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(c.Params[k])
			b.WriteString(k + `="` + v + `"`)
		}
	}
	return b.String()
}

func FuzzParseChallenges(f *testing.F) {
	for _, s := range []string{
		`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"`,
		`Basic realm="Registry Realm"`,
		`Basic realm="a" , Bearer  realm = "b" ,error=invalid_token`,
		`Basic dXNlcjpwYXNz==, Bearer realm="r"`,
		`Bearer realm="a \"q\" \\ v`,
		`"" Bearer realm="r", =, scope`,
		`,,,`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		got := ParseChallenges(header)
		for _, c := range got {
			if c.Scheme == "" || strings.IndexFunc(c.Scheme, func(r rune) bool { return r > 127 || !isTokenChar(byte(r)) }) >= 0 {
				t.Fatalf("ParseChallenges(%q): scheme %q is not a token", header, c.Scheme)
			}
			for k := range c.Params {
				if k == "" || k != strings.ToLower(k) {
					t.Fatalf("ParseChallenges(%q): parameter name %q is empty or not lowercase", header, k)
				}
			}
			_ = c.summary()
		}
		// Written back with every value quoted, the challenges parse the same.
		again := formatChallenges(got)
		if got2 := ParseChallenges(again); !equalChallenges(got2, got) {
			t.Fatalf("ParseChallenges(%q) = %v\nformatted %q parses to %v", header, got, again, got2)
		}
	})
}
