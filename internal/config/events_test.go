package config_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/config"
)

const goodToken = "s3cret-token-0123456789"

func TestEventsTokenRejects(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // a problem, exactly as Parse lists it
	}{
		{"token and file", withTop(`"registry": {"events_token": "` + goodToken + `", "events_token_file": "/etc/dockward/events.token"},`),
			"registry.events_token_file: set either events_token or events_token_file, not both"},
		{"short token", withTop(`"registry": {"events_token": "short"},`), "registry.events_token: must hold a token of at least 16 characters, has 5"},
		{"token with a space", withTop(`"registry": {"events_token": "0123456789 abcdefgh"},`),
			"registry.events_token: must be printable ASCII without spaces (it is sent in an Authorization header)"},
		{"token with a newline", withTop(`"registry": {"events_token": "0123456789abcdefgh\n"},`),
			"registry.events_token: must be printable ASCII without spaces (it is sent in an Authorization header)"},
		{"relative token file", withTop(`"registry": {"events_token_file": "events.token"},`),
			`registry.events_token_file: must be an absolute path or start with $CREDENTIALS_DIRECTORY/, got "events.token"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), "\n  "+tt.want) {
				t.Fatalf("Parse(%q) error = %v, want the problem %q", tt.in, err, tt.want)
			}
			if strings.Contains(err.Error(), "0123456789") {
				t.Errorf("Parse(%q) error quotes the token: %v", tt.in, err)
			}
		})
	}
}

func TestEventsSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.token")
	writeFile(t, good, "\n"+goodToken+"\n")
	short := filepath.Join(dir, "short.token")
	writeFile(t, short, "abc\n")
	tests := []struct {
		name    string
		reg     config.Registry
		noCreds bool // $CREDENTIALS_DIRECTORY unset
		want    string
		wantErr string
	}{
		{name: "disabled", reg: config.Registry{}, want: ""},
		{name: "inline", reg: config.Registry{EventsToken: goodToken}, want: goodToken},
		{name: "file, whitespace trimmed", reg: config.Registry{EventsTokenFile: good}, want: goodToken},
		{name: "missing file", reg: config.Registry{EventsTokenFile: filepath.Join(dir, "nope")}, wantErr: "registry.events_token_file: open "},
		{name: "short token in file", reg: config.Registry{EventsTokenFile: short}, wantErr: "must hold a token of at least 16 characters, has 3"},
		{name: "systemd credential", reg: config.Registry{EventsTokenFile: "$CREDENTIALS_DIRECTORY/good.token"}, want: goodToken},
		{name: "systemd credential without the variable", reg: config.Registry{EventsTokenFile: "$CREDENTIALS_DIRECTORY/good.token"}, noCreds: true,
			wantErr: "$CREDENTIALS_DIRECTORY, which is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "CREDENTIALS_DIRECTORY" && !tt.noCreds {
					return dir
				}
				return ""
			}
			got, err := tt.reg.EventsSecret(getenv)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("EventsSecret() error = %v, want one containing %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("EventsSecret() error: %v", err)
			case got != tt.want:
				t.Errorf("EventsSecret() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestEventsTokenAccepted(t *testing.T) {
	for _, file := range []string{"/etc/dockward/events.token", "$CREDENTIALS_DIRECTORY/events.token"} {
		c, err := config.Parse([]byte(withTop(`"registry": {"events_token_file": "` + file + `"},`)))
		if err != nil {
			t.Fatalf("Parse with events_token_file %q: %v", file, err)
		}
		if got := c.Registry.EventsTokenFile; got != file {
			t.Errorf("events_token_file = %q, want %q", got, file)
		}
	}
}
