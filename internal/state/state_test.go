package state_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dockward/dockward/internal/state"
)

const badDigest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

func open(t *testing.T, path string) *state.Store {
	t.Helper()
	s, err := state.Open(path)
	if err != nil {
		t.Fatalf("Open(%q) error: %v", path, err)
	}
	return s
}

func block(digest string) func(*state.Service) {
	return func(s *state.Service) {
		s.Blocked = &state.Block{Digest: digest, Since: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Reason: "unhealthy after deploy"}
	}
}

// TestRestartKeepsBlock is the reason the package exists: a digest blocked
// before a restart is still blocked after it.
func TestRestartKeepsBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	if got := s.All(); len(got) != 0 {
		t.Fatalf("Open(missing file).All() = %v, want empty", got)
	}
	if got := s.Get("web"); !reflect.DeepEqual(got, state.Service{}) {
		t.Fatalf("Get(%q) on an empty store = %+v, want the zero Service", "web", got)
	}
	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatalf("Update(web, block) error: %v", err)
	}
	if got := s.Get("web").Blocked; got == nil || got.Digest != badDigest {
		t.Fatalf("Get(web).Blocked = %+v, want digest %s", got, badDigest)
	}

	restarted := open(t, path)
	got := restarted.Get("web")
	want := state.Service{Blocked: &state.Block{Digest: badDigest, Since: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Reason: "unhealthy after deploy"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after reopen Get(web) = %+v, want %+v", got, want)
	}
	if restarted.Path() != path {
		t.Errorf("Path() = %q, want %q", restarted.Path(), path)
	}
}

func TestRoundTripAllFields(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	when := time.Date(2024, 5, 1, 12, 0, 0, 123456789, time.UTC)
	want := state.Service{
		Blocked: &state.Block{Digest: badDigest, Since: when, Reason: "container web-1 unhealthy"},
		Heal:    state.Heal{LastRestart: when.Add(time.Minute), Consecutive: 2, GaveUp: true},
		Deploy:  &state.Deploy{Digest: "sha256:22", RollbackImage: "localhost:5000/web:rollback", Started: when.Add(-time.Minute)},
		LastDeploy: &state.DeployResult{Digest: "sha256:33", Previous: "sha256:22", Outcome: "rolled_back",
			Started: when.Add(-time.Hour), Seconds: 12.5, Reason: "container web-1 unhealthy"},
	}
	if err := s.Update("web", func(svc *state.Service) { *svc = want }); err != nil {
		t.Fatalf("Update error: %v", err)
	}
	if err := s.Update("db", func(svc *state.Service) { svc.Heal.Consecutive = 1 }); err != nil {
		t.Fatalf("Update error: %v", err)
	}
	got := open(t, path).All()
	wantAll := map[string]state.Service{"web": want, "db": {Heal: state.Heal{Consecutive: 1}}}
	if !reflect.DeepEqual(got, wantAll) {
		t.Errorf("after reopen All() =\n%+v\nwant\n%+v", got, wantAll)
	}
}

// TestGetReturnsCopy checks that callers cannot change the store behind its back.
func TestGetReturnsCopy(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "state.json"))
	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	if err := s.Update("web", func(svc *state.Service) { svc.LastDeploy = &state.DeployResult{Digest: badDigest} }); err != nil {
		t.Fatal(err)
	}
	s.Get("web").Blocked.Digest = "changed"
	s.All()["web"].Blocked.Digest = "changed"
	s.Get("web").LastDeploy.Digest = "changed"
	s.All()["web"].LastDeploy.Digest = "changed"
	if got := s.Get("web").Blocked.Digest; got != badDigest {
		t.Errorf("Get(web).Blocked.Digest = %q after changing copies, want %q", got, badDigest)
	}
	if got := s.Get("web").LastDeploy.Digest; got != badDigest {
		t.Errorf("Get(web).LastDeploy.Digest = %q after changing copies, want %q", got, badDigest)
	}
}

// TestLastDeployAloneIsKept: a service whose only state is its last deploy
// is not dropped as empty.
func TestLastDeployAloneIsKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	last := state.DeployResult{Digest: badDigest, Outcome: "deployed", Started: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Seconds: 3}
	if err := s.Update("web", func(svc *state.Service) { svc.LastDeploy = &last }); err != nil {
		t.Fatal(err)
	}
	if got := open(t, path).Get("web").LastDeploy; got == nil || *got != last {
		t.Errorf("after reopen Get(web).LastDeploy = %+v, want %+v", got, last)
	}
}

func TestFileAndDirectoryModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "dockward")
	path := filepath.Join(dir, "state.json")
	s := open(t, path)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Open created %s before any Update (stat error %v)", dir, err)
	}
	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatalf("Update error: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("state file mode = %v, want 0600", got)
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		di, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := di.Mode().Perm(); got != 0o700 {
			t.Errorf("directory %s mode = %v, want 0700", d, got)
		}
	}
}

func TestFileFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version  *int                       `json:"version"`
		Services map[string]json.RawMessage `json:"services"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("state file is not valid JSON: %v\n%s", err, b)
	}
	if doc.Version == nil || *doc.Version != 1 {
		t.Errorf("state file version = %v, want 1\n%s", doc.Version, b)
	}
	want := `{"blocked":{"digest":"` + badDigest + `","since":"2024-05-01T12:00:00Z","reason":"unhealthy after deploy"}}`
	var got bytes.Buffer
	if err := json.Compact(&got, doc.Services["web"]); err != nil {
		t.Fatal(err)
	}
	if got.String() != want {
		t.Errorf("services.web = %s, want %s", got.String(), want)
	}
	if !strings.HasSuffix(string(b), "}\n") {
		t.Errorf("state file does not end with a newline: %q", b)
	}
}

func TestNoTempFilesLeft(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	s := open(t, path)
	for i := range 50 {
		if err := s.Update(fmt.Sprintf("svc%d", i%5), func(svc *state.Service) { svc.Heal.Consecutive++ }); err != nil {
			t.Fatalf("Update %d error: %v", i, err)
		}
	}
	// Clearing a service also rewrites the file.
	if err := s.Update("svc0", func(svc *state.Service) { *svc = state.Service{} }); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !reflect.DeepEqual(names, []string{"state.json", "state.json.prev"}) {
		t.Errorf("directory holds %v after 51 updates, want only [state.json state.json.prev]", names)
	}
}

func TestOpenAccepts(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    map[string]state.Service
	}{
		{"services null", `{"version": 1, "services": null}`, map[string]state.Service{}},
		{"services absent", `{"version": 1}`, map[string]state.Service{}},
		{"one service", `{"version": 1, "services": {"web": {"heal": {"consecutive": 2}}}}`, map[string]state.Service{"web": {Heal: state.Heal{Consecutive: 2}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s := open(t, path)
			if got := s.All(); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Open(%q).All() = %+v, want %+v", tt.content, got, tt.want)
			}
			// A store opened from an old file can be written to.
			if err := s.Update("db", func(svc *state.Service) { svc.Heal.GaveUp = true }); err != nil {
				t.Errorf("Update after Open(%q) error: %v", tt.content, err)
			}
		})
	}
}

func TestUpdateToZeroRemovesService(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	if err := s.Update("db", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	if err := s.Update("web", func(svc *state.Service) { svc.Blocked = nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.All()["web"]; ok {
		t.Errorf("All() still has web after it was cleared: %+v", s.All())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc state.File
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if _, ok := doc.Services["web"]; ok {
		t.Errorf("state file still has services.web after it was cleared:\n%s", b)
	}
	if _, ok := doc.Services["db"]; !ok {
		t.Errorf("state file lost services.db:\n%s", b)
	}
}

// breakDir makes writes to dir fail without touching the state file in it:
// the directory is moved aside and a plain file takes its place (chmod would
// not stop root). It returns where the old directory now is and a func that
// puts it back.
func breakDir(t *testing.T, dir string) (aside string, repair func()) {
	t.Helper()
	aside = dir + ".aside"
	if err := os.Rename(dir, aside); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	return aside, func() {
		t.Helper()
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(aside, dir); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestFailedSaveKeepsChangeInMemory is why a failed write must not undo the
// change: a block that could not be saved must still stop the next deploy of
// that digest, and reach the file as soon as writing works again.
func TestFailedSaveKeepsChangeInMemory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dockward")
	path := filepath.Join(dir, "state.json")
	s := open(t, path)
	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	if s.Dirty() {
		t.Fatal("Dirty() = true after a successful Update, want false")
	}
	onDisk := readFile(t, path)
	aside, repair := breakDir(t, dir)

	tests := []struct {
		name    string
		service string
		change  func(*state.Service)
		want    state.Service // what Get(service) returns afterwards
	}{
		{"change an existing service", "web",
			func(svc *state.Service) { svc.Blocked.Digest = "sha256:22"; svc.Heal.Consecutive = 9 },
			state.Service{Blocked: &state.Block{Digest: "sha256:22", Since: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Reason: "unhealthy after deploy"}, Heal: state.Heal{Consecutive: 9}}},
		{"clear an existing service", "web",
			func(svc *state.Service) { *svc = state.Service{} },
			state.Service{}},
		{"add a new service", "db",
			block("sha256:33"),
			state.Service{Blocked: &state.Block{Digest: "sha256:33", Since: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Reason: "unhealthy after deploy"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.Update(tt.service, tt.change)
			if err == nil {
				t.Fatalf("Update(%s) with %s a file = nil, want an error", tt.service, dir)
			}
			if !strings.Contains(err.Error(), "kept in memory") {
				t.Errorf("Update(%s) error = %q, want it to say the change is kept in memory", tt.service, err)
			}
			if got := s.Get(tt.service); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("after a failed Update(%s) Get = %+v, want the change kept: %+v", tt.service, got, tt.want)
			}
			if !s.Dirty() {
				t.Errorf("Dirty() = false after a failed Update(%s), want true", tt.service)
			}
		})
	}
	if _, ok := s.All()["web"]; ok {
		t.Errorf("All() still has web after it was cleared in memory: %+v", s.All())
	}
	wantAll := map[string]state.Service{"db": s.Get("db")}

	// Still broken: Flush fails, and nothing is lost or written.
	if err := s.Flush(); err == nil {
		t.Errorf("Flush() with %s a file = nil, want an error", dir)
	} else if !strings.Contains(err.Error(), "kept in memory") {
		t.Errorf("Flush() error = %q, want it to say the state is kept in memory", err)
	}
	if !s.Dirty() {
		t.Error("Dirty() = false after a failed Flush, want true")
	}
	if got := s.All(); !reflect.DeepEqual(got, wantAll) {
		t.Errorf("after a failed Flush All() = %+v, want %+v", got, wantAll)
	}
	if got := readFile(t, filepath.Join(aside, "state.json")); got != onDisk {
		t.Errorf("failed saves changed the state file to\n%s\nwant it left as\n%s", got, onDisk)
	}

	repair()
	if got := readFile(t, path); got != onDisk {
		t.Fatalf("state file before Flush =\n%s\nwant the old content\n%s", got, onDisk)
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush after the directory is back: %v", err)
	}
	if s.Dirty() {
		t.Error("Dirty() = true after a successful Flush, want false")
	}
	if got := open(t, path).All(); !reflect.DeepEqual(got, wantAll) {
		t.Errorf("after Flush and reopen All() = %+v, want %+v", got, wantAll)
	}
	if got := s.All(); !reflect.DeepEqual(got, wantAll) {
		t.Errorf("after Flush All() = %+v, want %+v", got, wantAll)
	}
}

// TestUpdateHealsDirtyStore checks that any successful Update writes the
// changes earlier failed Updates kept in memory, not only its own.
func TestUpdateHealsDirtyStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dockward")
	path := filepath.Join(dir, "state.json")
	s := open(t, path)
	if err := s.Update("web", func(svc *state.Service) { svc.Heal.Consecutive = 1 }); err != nil {
		t.Fatal(err)
	}
	_, repair := breakDir(t, dir)
	if err := s.Update("web", block(badDigest)); err == nil {
		t.Fatal("Update with the directory broken = nil, want an error")
	}
	if !s.Dirty() {
		t.Fatal("Dirty() = false after a failed Update, want true")
	}
	repair()

	if err := s.Update("db", func(svc *state.Service) { svc.Heal.Consecutive = 1 }); err != nil {
		t.Fatalf("Update after the directory is back: %v", err)
	}
	if s.Dirty() {
		t.Error("Dirty() = true after a successful Update, want false")
	}
	got := open(t, path).All()
	want := map[string]state.Service{
		"web": {Blocked: &state.Block{Digest: badDigest, Since: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC), Reason: "unhealthy after deploy"}, Heal: state.Heal{Consecutive: 1}},
		"db":  {Heal: state.Heal{Consecutive: 1}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after reopen All() = %+v, want %+v", got, want)
	}
}

// TestFlushCleanStoreDoesNotWrite checks that Flush writes only when there is
// something the file lacks: a rewrite would replace the file (a new inode).
func TestFlushCleanStoreDoesNotWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "dockward")
	path := filepath.Join(dir, "state.json")
	s := open(t, path)

	// Nothing stored yet: Flush creates neither the file nor its directory.
	if s.Dirty() {
		t.Fatal("Dirty() = true on a freshly opened store, want false")
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush() on a fresh store: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Flush on a fresh store created %s (stat error %v)", dir, err)
	}

	if err := s.Update("web", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Make sure a rewrite would show in the mtime even on a coarse clock.
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Flush(); err != nil {
			t.Fatalf("Flush() %d on a clean store: %v", i, err)
		}
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("Flush on a clean store replaced the state file (new inode)")
	}
	if !after.ModTime().Equal(old) {
		t.Errorf("Flush on a clean store changed the file's mtime to %v, want %v", after.ModTime(), old)
	}
	if s.Dirty() {
		t.Error("Dirty() = true after Flush on a clean store, want false")
	}
}

// TestConcurrentUpdates runs many Updates at once (meant for -race) and
// checks that every one of them reached the file.
func TestConcurrentUpdates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	const goroutines, each = 16, 8
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				// Every goroutine bumps a shared counter and its own one, and reads.
				if err := s.Update("shared", func(svc *state.Service) { svc.Heal.Consecutive++ }); err != nil {
					errs <- err
				}
				if err := s.Update(fmt.Sprintf("g%d", g), func(svc *state.Service) { svc.Heal.Consecutive++ }); err != nil {
					errs <- err
				}
				_ = s.Get("shared")
				_ = s.All()
				_ = s.Dirty()
				if err := s.Flush(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Update error: %v", err)
	}

	got := open(t, path).All()
	if n := got["shared"].Heal.Consecutive; n != goroutines*each {
		t.Errorf("after reopen shared count = %d, want %d", n, goroutines*each)
	}
	for g := range goroutines {
		name := fmt.Sprintf("g%d", g)
		if n := got[name].Heal.Consecutive; n != each {
			t.Errorf("after reopen %s count = %d, want %d", name, n, each)
		}
	}
	if len(got) != goroutines+1 {
		t.Errorf("after reopen %d services, want %d", len(got), goroutines+1)
	}
}

func TestStoresDoNotShareFiles(t *testing.T) {
	dir := t.TempDir()
	pathA, pathB := filepath.Join(dir, "a.json"), filepath.Join(dir, "b.json")
	a, b := open(t, pathA), open(t, pathB)
	if err := a.Update("web", block(badDigest)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pathB); !os.IsNotExist(err) {
		t.Fatalf("Update on store A created %s (stat error %v)", pathB, err)
	}
	if err := b.Update("db", func(svc *state.Service) { svc.Heal.Consecutive = 1 }); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := a.Update("web", func(svc *state.Service) { svc.Heal.Consecutive = i + 1 }); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := open(t, pathA).All(), a.All(); !reflect.DeepEqual(got, want) {
		t.Errorf("reopen of %s = %+v, want %+v", pathA, got, want)
	}
	if got, want := open(t, pathB).All(), map[string]state.Service{"db": {Heal: state.Heal{Consecutive: 1}}}; !reflect.DeepEqual(got, want) {
		t.Errorf("reopen of %s = %+v, want %+v", pathB, got, want)
	}
	if _, ok := b.All()["web"]; ok {
		t.Errorf("store B sees store A's service: %+v", b.All())
	}
}
