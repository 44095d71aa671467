package docker

import (
	"errors"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Image references go into the path as they are, colons and slashes
// included, the way the docker CLI sends them.
func TestImageRefsInPath(t *testing.T) {
	refs := []string{
		"alpine",
		"postgres:16",
		"127.0.0.1:5000/app:latest",
		"127.0.0.1:5000/shop/web:v1.5.0",
		"registry.example.com:5000/shop/web@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
		"sha256:9b2f1e0d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
		"9b2f1e0d3c4a",
	}
	for _, ref := range refs {
		t.Run(strings.ReplaceAll(ref, "/", "_"), func(t *testing.T) {
			c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
				"GET /images/" + ref + "/json": serveFixture(t, 200, "image_web.json"),
				"POST /images/" + ref + "/tag": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) },
				"DELETE /images/" + ref:        serveFixture(t, 200, "remove_image.json"),
			})
			ctx := t.Context()
			if _, err := c.InspectImage(ctx, ref); err != nil {
				t.Errorf("InspectImage(%q): %v", ref, err)
			}
			if err := c.TagImage(ctx, ref, "127.0.0.1:5000/shop/web", "dockward-previous"); err != nil {
				t.Errorf("TagImage(%q, ...): %v", ref, err)
			}
			if err := c.RemoveImage(ctx, ref); err != nil {
				t.Errorf("RemoveImage(%q): %v", ref, err)
			}
			want := []string{
				"GET /version",
				"GET /v1.41/images/" + ref + "/json",
				"POST /v1.41/images/" + ref + "/tag?repo=127.0.0.1%3A5000%2Fshop%2Fweb&tag=dockward-previous",
				"DELETE /v1.41/images/" + ref + "?force=false&noprune=false",
			}
			if got := e.received(); !reflect.DeepEqual(got, want) {
				t.Errorf("engine received\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// Characters that mean something in a URL are escaped and reach the engine
// as they were.
func TestImageRefEscaped(t *testing.T) {
	const ref = "odd ref?#%"
	c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /images/odd%20ref%3F%23%25/json": func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1.41/images/"+ref+"/json" {
				t.Errorf("engine decoded path %q", r.URL.Path)
			}
			serveFixture(t, 200, "image_web.json")(w, r)
		},
	})
	if _, err := c.InspectImage(t.Context(), ref); err != nil {
		t.Errorf("InspectImage(%q): %v (engine received %q)", ref, err, e.received())
	}
}

// References that the engine's router would resolve to another route never
// reach it.
func TestInvalidPathRefs(t *testing.T) {
	c, e := newEngine(t, "1.41", nil)
	ctx := t.Context()
	for _, ref := range []string{"", "..", "../../containers/abc123", "app/./x", "127.0.0.1:5000//app", "app/"} {
		calls := []struct {
			name string
			err  error
		}{
			{"InspectImage", func() error { _, err := c.InspectImage(ctx, ref); return err }()},
			{"TagImage", c.TagImage(ctx, ref, "app", "v1")},
			{"RemoveImage", c.RemoveImage(ctx, ref)},
			{"InspectContainer", func() error { _, err := c.InspectContainer(ctx, ref); return err }()},
			{"RestartContainer", c.RestartContainer(ctx, ref, time.Second)},
		}
		for _, call := range calls {
			if call.err == nil || !strings.Contains(call.err.Error(), "reference") {
				t.Errorf("%s(%q) = %v, want an invalid reference error", call.name, ref, call.err)
			}
		}
	}
	if reqs := e.received(); len(reqs) != 0 {
		t.Errorf("engine received %q, want nothing", reqs)
	}
}

func TestInspectImage(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"GET /images/127.0.0.1:5000/shop/web:latest/json": serveFixture(t, 200, "image_web.json"),
		"GET /images/127.0.0.1:5000/shop/web:gone/json":   serveError(404, "no such image: 127.0.0.1:5000/shop/web:gone: No such image: 127.0.0.1:5000/shop/web:gone"),
	})
	ctx := t.Context()

	ref := "127.0.0.1:5000/shop/web:latest"
	got, err := c.InspectImage(ctx, ref)
	want := Image{
		ID:          "sha256:9b2f1e0d3c4a5b6978a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607",
		RepoTags:    []string{"127.0.0.1:5000/shop/web:latest", "127.0.0.1:5000/shop/web:dockward-previous"},
		RepoDigests: []string{"127.0.0.1:5000/shop/web@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"},
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("InspectImage(%q) = %+v, %v, want %+v", ref, got, err, want)
	}

	ref = "127.0.0.1:5000/shop/web:gone"
	_, err = c.InspectImage(ctx, ref)
	const wantErr = "inspect image 127.0.0.1:5000/shop/web:gone: docker API 404: no such image: 127.0.0.1:5000/shop/web:gone: No such image: 127.0.0.1:5000/shop/web:gone"
	if !errors.Is(err, ErrNotFound) || err.Error() != wantErr {
		t.Errorf("InspectImage(%q) = %v, want ErrNotFound reading %q", ref, err, wantErr)
	}
}

func TestTagImageErrors(t *testing.T) {
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"POST /images/nope/tag": serveError(404, "No such image: nope:latest"),
	})
	err := c.TagImage(t.Context(), "nope", "app", "v1")
	const want = "tag image nope as app:v1: docker API 404: No such image: nope:latest"
	if !errors.Is(err, ErrNotFound) || err.Error() != want {
		t.Errorf("TagImage(%q, %q, %q) = %v, want ErrNotFound reading %q", "nope", "app", "v1", err, want)
	}
}

func TestRemoveImageInUse(t *testing.T) {
	const ref = "127.0.0.1:5000/shop/web:latest"
	const msg = `conflict: unable to remove repository reference "127.0.0.1:5000/shop/web:latest" (must force) - container 4f1c2d9a8b7e is using its referenced image 9b2f1e0d3c4a`
	c, _ := newEngine(t, "1.41", map[string]http.HandlerFunc{
		"DELETE /images/" + ref: serveError(http.StatusConflict, msg),
	})
	err := c.RemoveImage(t.Context(), ref)
	apiErr, ok := errors.AsType[*APIError](err)
	if !ok || apiErr.StatusCode != http.StatusConflict || errors.Is(err, ErrNotFound) {
		t.Fatalf("RemoveImage(%q) = %v, want a 409 APIError", ref, err)
	}
	if want := "remove image " + ref + ": docker API 409: " + msg; err.Error() != want {
		t.Errorf("RemoveImage(%q) = %q, want %q", ref, err, want)
	}
}

func TestPullImage(t *testing.T) {
	tests := []struct {
		name          string
		ref           string
		handler       http.HandlerFunc
		wantFromImage string
		wantTag       string
		wantErr       string // "" for success
		wantNotFound  bool
	}{
		{
			name:          "registry with port",
			ref:           "127.0.0.1:5000/shop/web:v1.5.0",
			handler:       serveFixture(t, 200, "pull_ok.jsonl"),
			wantFromImage: "127.0.0.1:5000/shop/web",
			wantTag:       "v1.5.0",
		},
		{
			name:          "no tag pulls latest, not every tag",
			ref:           "127.0.0.1:5000/shop/web",
			handler:       serveFixture(t, 200, "pull_ok.jsonl"),
			wantFromImage: "127.0.0.1:5000/shop/web",
			wantTag:       "latest",
		},
		{
			name:          "digest",
			ref:           "127.0.0.1:5000/shop/web@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
			handler:       serveFixture(t, 200, "pull_ok.jsonl"),
			wantFromImage: "127.0.0.1:5000/shop/web",
			wantTag:       "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
		},
		{
			name:          "error inside the stream",
			ref:           "127.0.0.1:5000/shop/web:v1.5.0",
			handler:       serveFixture(t, 200, "pull_error.jsonl"),
			wantFromImage: "127.0.0.1:5000/shop/web",
			wantTag:       "v1.5.0",
			wantErr:       "pull image 127.0.0.1:5000/shop/web:v1.5.0: unexpected EOF",
		},
		{
			name: "error line without errorDetail",
			ref:  "app:v1",
			handler: func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, 200, []byte(`{"status":"Pulling from library/app","id":"v1"}`+"\n"+`{"error":"toomanyrequests: rate limit"}`+"\n"))
			},
			wantFromImage: "app",
			wantTag:       "v1",
			wantErr:       "pull image app:v1: toomanyrequests: rate limit",
		},
		{
			name:          "registry unreachable",
			ref:           "127.0.0.1:5000/app:v1",
			handler:       serveError(500, `Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused`),
			wantFromImage: "127.0.0.1:5000/app",
			wantTag:       "v1",
			wantErr:       `pull image 127.0.0.1:5000/app:v1: docker API 500: Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused`,
		},
		{
			name:          "tag not in registry",
			ref:           "127.0.0.1:5000/app:nope",
			handler:       serveError(404, "manifest for 127.0.0.1:5000/app:nope not found: manifest unknown: manifest unknown"),
			wantFromImage: "127.0.0.1:5000/app",
			wantTag:       "nope",
			wantErr:       "pull image 127.0.0.1:5000/app:nope: docker API 404: manifest for 127.0.0.1:5000/app:nope not found: manifest unknown: manifest unknown",
			wantNotFound:  true,
		},
		{
			name: "stream cut mid-line",
			ref:  "app:v1",
			handler: func(w http.ResponseWriter, r *http.Request) {
				writeJSON(w, 200, []byte(`{"status":"Pulling from library/app","id":"v1"}`+"\n"+`{"status":"Downl`))
			},
			wantFromImage: "app",
			wantTag:       "v1",
			wantErr:       "pull image app:v1: read progress: unexpected EOF",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, e := newEngine(t, "1.41", map[string]http.HandlerFunc{"POST /images/create": tt.handler})
			err := c.PullImage(t.Context(), tt.ref)
			reqs := e.received()
			sent, perr := url.ParseRequestURI(strings.TrimPrefix(reqs[len(reqs)-1], "POST "))
			if perr != nil {
				t.Fatalf("engine received %q: %v", reqs[len(reqs)-1], perr)
			}
			gotFromImage, gotTag := sent.Query().Get("fromImage"), sent.Query().Get("tag")
			if gotFromImage != tt.wantFromImage || gotTag != tt.wantTag {
				t.Errorf("PullImage(%q) sent fromImage=%q tag=%q, want %q and %q", tt.ref, gotFromImage, gotTag, tt.wantFromImage, tt.wantTag)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("PullImage(%q) = %v, want nil", tt.ref, err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("PullImage(%q) = %v, want %q", tt.ref, err, tt.wantErr)
			}
			if got := errors.Is(err, ErrNotFound); got != tt.wantNotFound {
				t.Errorf("errors.Is(PullImage(%q), ErrNotFound) = %v, want %v", tt.ref, got, tt.wantNotFound)
			}
		})
	}
}

func TestSplitRef(t *testing.T) {
	tests := []struct {
		ref, repo, tag string
	}{
		{"alpine", "alpine", "latest"},
		{"alpine:3.20", "alpine", "3.20"},
		{"library/alpine:3.20", "library/alpine", "3.20"},
		{"127.0.0.1:5000/app", "127.0.0.1:5000/app", "latest"},
		{"127.0.0.1:5000/app:v1", "127.0.0.1:5000/app", "v1"},
		{"localhost:5000/team/app:v1.2.3", "localhost:5000/team/app", "v1.2.3"},
		{"app@sha256:abc", "app", "sha256:abc"},
		{"127.0.0.1:5000/app@sha256:abc", "127.0.0.1:5000/app", "sha256:abc"},
		{"127.0.0.1:5000/app:v1@sha256:abc", "127.0.0.1:5000/app", "sha256:abc"},
	}
	for _, tt := range tests {
		if repo, tag := splitRef(tt.ref); repo != tt.repo || tag != tt.tag {
			t.Errorf("splitRef(%q) = %q, %q, want %q, %q", tt.ref, repo, tag, tt.repo, tt.tag)
		}
	}
}
