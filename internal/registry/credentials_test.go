package registry

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeHelper puts a docker-credential-NAME script on PATH that implements
// the helper protocol's get: it reads the server on stdin and answers from
// a table, or says "credentials not found".
func writeHelper(t *testing.T, name, script string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "docker-credential-"+name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func writeDockerConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDockerConfigCredentials(t *testing.T) {
	// The helper answers for reg.example.com only, as docker-credential-*
	// programs do: the server URL on stdin, JSON on stdout.
	writeHelper(t, "dwtest", `read server
if [ "$1" != get ]; then echo "unexpected $1" >&2; exit 2; fi
case "$server" in
  reg.example.com) echo '{"ServerURL":"reg.example.com","Username":"helper-user","Secret":"helper-secret"}' ;;
  tok.example.com) echo '{"ServerURL":"tok.example.com","Username":"<token>","Secret":"helper-idtoken"}' ;;
  broken.example.com) echo 'not json' ;;
  fails.example.com) echo 'something broke: helper-secret' >&2; exit 1 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
`)
	b64 := base64.StdEncoding.EncodeToString([]byte("b64-user:b64:pass"))
	tests := []struct {
		name    string
		config  string
		host    string
		want    Credentials
		wantErr string
	}{
		{name: "auths auth base64, password with a colon", host: "reg.example.com:5000",
			config: `{"auths":{"reg.example.com:5000":{"auth":"` + b64 + `"}}}`,
			want:   Credentials{Username: "b64-user", Password: "b64:pass"}},
		{name: "auths username and password under an https key", host: "reg.example.com",
			config: `{"auths":{"https://reg.example.com/v1/":{"username":"u","password":"p"}}}`,
			want:   Credentials{Username: "u", Password: "p"}},
		{name: "auths identitytoken", host: "reg.example.com",
			config: `{"auths":{"reg.example.com":{"username":"u","identitytoken":"idt"}}}`,
			want:   Credentials{Username: "u", IdentityToken: "idt"}},
		{name: "docker hub key for registry-1.docker.io", host: "registry-1.docker.io",
			config: `{"auths":{"https://index.docker.io/v1/":{"auth":"` + b64 + `"}}}`,
			want:   Credentials{Username: "b64-user", Password: "b64:pass"}},
		{name: "no entry: anonymous", host: "other.example.com",
			config: `{"auths":{"reg.example.com":{"auth":"` + b64 + `"}}}`},
		{name: "credHelpers wins over auths", host: "reg.example.com",
			config: `{"auths":{"reg.example.com":{"auth":"` + b64 + `"}},"credHelpers":{"reg.example.com":"dwtest"}}`,
			want:   Credentials{Username: "helper-user", Password: "helper-secret"}},
		{name: "credsStore", host: "reg.example.com", config: `{"credsStore":"dwtest"}`,
			want: Credentials{Username: "helper-user", Password: "helper-secret"}},
		{name: "credsStore with nothing falls back to auths", host: "other.example.com",
			config: `{"credsStore":"dwtest","auths":{"other.example.com":{"username":"u","password":"p"}}}`,
			want:   Credentials{Username: "u", Password: "p"}},
		{name: "helper identity token", host: "tok.example.com", config: `{"credsStore":"dwtest"}`,
			want: Credentials{IdentityToken: "helper-idtoken"}},
		{name: "helper not found", host: "reg.example.com", config: `{"credsStore":"missing"}`,
			wantErr: "docker-credential-missing is not on PATH"},
		{name: "helper prints junk", host: "broken.example.com", config: `{"credsStore":"dwtest"}`,
			wantErr: "not the helper protocol's JSON"},
		{name: "helper fails: its output is not quoted", host: "fails.example.com", config: `{"credsStore":"dwtest"}`,
			wantErr: "docker-credential-dwtest get fails.example.com: exit status 1"},
		{name: "bad base64", host: "reg.example.com", config: `{"auths":{"reg.example.com":{"auth":"%%%"}}}`,
			wantErr: `"auth" is not base64`},
		{name: "invalid JSON", host: "reg.example.com", config: `{"auths":{"reg.example.com":{"auth":"secret-in-a-broken-file"`,
			wantErr: "invalid JSON at byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := DockerConfig{Path: writeDockerConfig(t, tt.config)}
			got, err := d.Credentials(t.Context(), tt.host)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Credentials(%s) = %v, %v, want error containing %q", tt.host, got, err, tt.wantErr)
				}
				for _, secret := range []string{"helper-secret", "secret-in-a-broken-file", "b64:pass"} {
					if strings.Contains(err.Error(), secret) {
						t.Errorf("error %q shows a secret", err)
					}
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Credentials(%s) = %#v, %v, want %#v (user %q)", tt.host, got, err, tt.want, tt.want.Username)
			}
		})
	}
}

func TestDockerConfigCheck(t *testing.T) {
	writeHelper(t, "dwcheck", "exit 1\n")
	tests := []struct {
		name, config, want, wantErr string
	}{
		{name: "auths", config: `{"auths":{"reg.example.com":{"auth":"dTpw"}}}`, want: "auths entry"},
		{name: "helper on PATH", config: `{"credHelpers":{"reg.example.com":"dwcheck"}}`, want: "docker-credential-dwcheck (credHelpers)"},
		{name: "helper missing", config: `{"credsStore":"nope"}`, wantErr: "not on PATH"},
		{name: "no entry", config: `{"auths":{}}`, wantErr: "no auths entry, credHelpers entry or credsStore for reg.example.com"},
		{name: "empty entry", config: `{"auths":{"reg.example.com":{}}}`, wantErr: `no "auth"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DockerConfig{Path: writeDockerConfig(t, tt.config)}.Check("reg.example.com")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Check = %q, %v, want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(got, tt.want) {
				t.Fatalf("Check = %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

// FuzzDockerConfig feeds arbitrary files to the config.json reader: it must
// not panic, and its errors must not quote the file.
func FuzzDockerConfig(f *testing.F) {
	f.Add(`{"auths":{"reg.example.com":{"auth":"dTpw"}}}`, "reg.example.com")
	f.Add(`{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}`, "registry-1.docker.io")
	f.Add(`{"auths":{"reg":{"identitytoken":"x"}},"credsStore":""}`, "REG")
	f.Add(`{"auths":{"reg":{"auth":"!!!"}}}`, "reg")
	f.Add(`[1,2`, "x")
	f.Fuzz(func(t *testing.T, body, host string) {
		p := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		d := DockerConfig{Path: p}
		// No helper runs: credsStore and credHelpers name programs that are
		// not on the fuzzer's PATH, or are rejected as names.
		t.Setenv("PATH", t.TempDir())
		_, err := d.Credentials(t.Context(), host)
		if err != nil && len(body) >= 8 && strings.Contains(err.Error(), body) {
			t.Errorf("error %q quotes the file", err)
		}
	})
}
