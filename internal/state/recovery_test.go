package state_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dockward/dockward/internal/state"
)

// good is a valid state file that blocks badDigest for web.
const good = `{"version": 1, "services": {"web": {"blocked": {"digest": "` + badDigest + `", "since": "2024-05-01T12:00:00Z", "reason": "unhealthy after deploy"}, "heal": {}}}}`

// damaged are contents of a state file that cannot be used.
var damaged = []struct{ name, content, want string }{
	{"empty", "", "empty (0 bytes)"},
	{"blank", "\n\n", "empty (2 bytes)"},
	{"truncated", good[:len(good)/2], "parse: unexpected EOF"},
	{"garbage", "\x00\x00\x7fELF\x00garbage", "parse: invalid character"},
	{"not an object", "[]", "parse: json: cannot unmarshal array"},
	{"wrong type", `{"version": 1, "services": {"web": {"heal": {"consecutive": "two"}}}}`, "parse: json: cannot unmarshal string"},
	{"two documents", good + good, "data after the JSON document"},
	{"future version", `{"version": 2, "services": {}}`, "format version 2, this dockward reads 1"},
	{"version 0", `{"version": 0, "services": {}}`, "format version 0, this dockward reads 1"},
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// asideCopies returns the contents of the damaged copies kept beside path.
func asideCopies(t *testing.T, path string) []string {
	t.Helper()
	names, err := filepath.Glob(path + ".damaged-*")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		out = append(out, readFile(t, n))
	}
	slices.Sort(out)
	return out
}

func wantBlocked(t *testing.T, s *state.Store) {
	t.Helper()
	if b := s.Get("web").Blocked; b == nil || b.Digest != badDigest {
		t.Errorf("Get(web).Blocked = %+v, want %s still blocked", b, badDigest)
	}
}

// TestOpenDamagedPauses: a main file that cannot be used and no previous
// generation to fall back to give a paused store, with the reason, the
// damaged file left where it is (a restart pauses again) and a copy aside.
func TestOpenDamagedPauses(t *testing.T) {
	for _, tt := range damaged {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			write(t, path, tt.content)
			s := open(t, path)
			reason, paused := s.Paused()
			if !paused {
				t.Fatalf("Open(%q).Paused() = false, want paused", tt.content)
			}
			for _, want := range []string{tt.want, path, "no previous generation", "deploys paused", ".damaged-"} {
				if !strings.Contains(reason, want) {
					t.Errorf("Paused() reason = %q, want it to contain %q", reason, want)
				}
			}
			if rec := s.Recovery(); !rec.Paused() || rec.FromPrevious || len(rec.SetAside) != 1 || rec.SetAsideErr != nil {
				t.Errorf("Recovery() = %+v, want paused with one copy set aside", rec)
			}
			if got := asideCopies(t, path); !reflect.DeepEqual(got, []string{tt.content}) {
				t.Errorf("damaged copies = %q, want [%q]", got, tt.content)
			}
			// A paused store keeps changes in memory and writes nothing.
			if err := s.Update("web", func(svc *state.Service) { svc.Heal.Consecutive = 1 }); err != nil {
				t.Errorf("Update on a paused store: %v", err)
			}
			if err := s.Flush(); err != nil {
				t.Errorf("Flush on a paused store: %v", err)
			}
			if got := s.Get("web").Heal.Consecutive; got != 1 {
				t.Errorf("paused store lost an Update in memory: consecutive = %d", got)
			}
			if got := readFile(t, path); got != tt.content {
				t.Errorf("paused store changed the damaged file to %q", got)
			}
			if _, err := os.Stat(state.PrevPath(path)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("paused store wrote %s (stat: %v)", state.PrevPath(path), err)
			}
			// A restart is paused again and keeps no second identical copy.
			again := open(t, path)
			if _, paused := again.Paused(); !paused {
				t.Error("second Open of the same damaged file is not paused")
			}
			if got := asideCopies(t, path); len(got) != 1 {
				t.Errorf("after a second Open %d damaged copies, want 1", len(got))
			}
		})
	}
}

// TestOpenFallsBackToPrevious: a damaged main file with a good previous
// generation loads the previous one, moves the damaged file aside, and the
// next save writes both generations again.
func TestOpenFallsBackToPrevious(t *testing.T) {
	cases := append(slices.Clone(damaged), struct{ name, content, want string }{"missing", "", "is missing"})
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			if tt.name != "missing" {
				write(t, path, tt.content)
			}
			write(t, state.PrevPath(path), good)
			s := open(t, path)
			if reason, paused := s.Paused(); paused {
				t.Fatalf("Open with a good previous generation is paused: %s", reason)
			}
			rec := s.Recovery()
			if !rec.FromPrevious || rec.Damaged == nil || !strings.Contains(rec.Damaged.Error(), tt.want) || rec.Paused() {
				t.Errorf("Recovery() = %+v, want from the previous generation, damaged: %q", rec, tt.want)
			}
			wantBlocked(t, s)
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("damaged %s still in place (stat: %v), want it moved aside", path, err)
			}
			if tt.name != "missing" {
				if got := asideCopies(t, path); !reflect.DeepEqual(got, []string{tt.content}) {
					t.Errorf("damaged copies = %q, want [%q]", got, tt.content)
				}
			}
			// A restart before any save still finds the previous generation.
			wantBlocked(t, open(t, path))

			if err := s.Update("db", func(svc *state.Service) { svc.Heal.Consecutive = 2 }); err != nil {
				t.Fatal(err)
			}
			re := open(t, path)
			if rec := re.Recovery(); rec.Damaged != nil {
				t.Errorf("after a save, Open still recovers: %+v", rec)
			}
			wantBlocked(t, re)
			if got := re.Get("db").Heal.Consecutive; got != 2 {
				t.Errorf("after a save and reopen db consecutive = %d, want 2", got)
			}
			if got := readFile(t, state.PrevPath(path)); got != good {
				t.Errorf("previous generation after the save = %q, want the generation it replaced %q", got, good)
			}
		})
	}
}

// TestOpenBothDamaged: neither generation can be read: paused, and both
// damaged files are kept aside and left in place.
func TestOpenBothDamaged(t *testing.T) {
	tests := []struct{ name, main, prev string }{
		{"empty and truncated", "", good[:20]},
		{"garbage and empty", "garbage", ""},
		{"missing and garbage", "-", "garbage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			want := []string{tt.prev}
			if tt.main != "-" {
				write(t, path, tt.main)
				want = append(want, tt.main)
			}
			write(t, state.PrevPath(path), tt.prev)
			s := open(t, path)
			if _, paused := s.Paused(); !paused {
				t.Fatal("Open with both generations damaged is not paused")
			}
			if rec := s.Recovery(); rec.PrevDamaged == nil || rec.FromPrevious {
				t.Errorf("Recovery() = %+v, want the previous generation damaged too", rec)
			}
			slices.Sort(want)
			got := append(asideCopies(t, path), asideCopies(t, state.PrevPath(path))...)
			slices.Sort(got)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("damaged copies = %q, want %q", got, want)
			}
			if got := readFile(t, state.PrevPath(path)); got != tt.prev {
				t.Errorf("paused store changed the previous generation to %q", got)
			}
		})
	}
}

// TestOpenUnreadable: a state path that cannot be read (here a directory) is
// not taken as an empty state either.
func TestOpenUnreadable(t *testing.T) {
	path := t.TempDir()
	s := open(t, path)
	reason, paused := s.Paused()
	if !paused || !strings.Contains(reason, "is a directory") {
		t.Errorf("Open(directory).Paused() = %q, %v; want paused naming the read error", reason, paused)
	}
	if s.Recovery().SetAsideErr == nil {
		t.Error("Recovery().SetAsideErr = nil, want the copy of an unreadable file to fail")
	}
}

// TestLeftoverTempsRemoved: temp files of an interrupted write are removed
// at start; other files in the directory are not touched.
func TestLeftoverTempsRemoved(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	write(t, path, good)
	temps := []string{".state.json.123.tmp", ".state.json.prev.456.tmp", ".state-789.tmp"}
	keep := []string{".other.json.1.tmp", "notes.txt", "state.json"}
	for _, n := range append(slices.Clone(temps), keep[:2]...) {
		write(t, filepath.Join(dir, n), "{")
	}
	s := open(t, path)
	wantBlocked(t, s)
	var removed []string
	for _, r := range s.Recovery().TempRemoved {
		removed = append(removed, filepath.Base(r))
	}
	slices.Sort(removed)
	slices.Sort(temps)
	if !reflect.DeepEqual(removed, temps) {
		t.Errorf("TempRemoved = %q, want %q", removed, temps)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(keep)
	if !reflect.DeepEqual(names, keep) {
		t.Errorf("directory holds %q, want %q", names, keep)
	}
}

// TestPreviousGeneration: each save keeps the generation it replaces.
func TestPreviousGeneration(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	s := open(t, path)
	var gens []string
	for i := range 4 {
		if err := s.Update("web", func(svc *state.Service) { svc.Heal.Consecutive = i + 1 }); err != nil {
			t.Fatal(err)
		}
		gens = append(gens, readFile(t, path))
		if i == 0 {
			if _, err := os.Stat(state.PrevPath(path)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("first save wrote a previous generation (stat: %v), want none: there was nothing before", err)
			}
			continue
		}
		if got := readFile(t, state.PrevPath(path)); got != gens[i-1] {
			t.Errorf("after save %d previous generation = %q, want %q", i+1, got, gens[i-1])
		}
	}
	// The previous generation is what the store last wrote, also when the
	// file was changed behind its back.
	write(t, path, "edited behind dockward's back")
	if err := s.Update("web", func(svc *state.Service) { svc.Heal.Consecutive = 9 }); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, state.PrevPath(path)); got != gens[len(gens)-1] {
		t.Errorf("previous generation after an outside edit = %q, want the last written %q", got, gens[len(gens)-1])
	}
	st, err := os.Stat(state.PrevPath(path))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("previous generation mode = %v, want 0600", st.Mode().Perm())
	}
}

// TestReload: a paused store resumes when the file is fixed; a store that
// is not paused does not re-read the file.
func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	write(t, path, "garbage")
	s := open(t, path)
	if resumed, err := s.Reload(); resumed || err == nil || !strings.Contains(err.Error(), "deploys paused") {
		t.Errorf("Reload of a still damaged file = %v, %v; want false and the pause reason", resumed, err)
	}
	write(t, path, good)
	if resumed, err := s.Reload(); !resumed || err != nil {
		t.Fatalf("Reload after the file was fixed = %v, %v; want true, nil", resumed, err)
	}
	if _, paused := s.Paused(); paused {
		t.Error("still paused after a successful Reload")
	}
	wantBlocked(t, s)
	write(t, path, "garbage again")
	if resumed, err := s.Reload(); resumed || err != nil {
		t.Errorf("Reload of a store that is not paused = %v, %v; want false, nil", resumed, err)
	}
	wantBlocked(t, s)
	// Its next save writes the truth over the damage.
	if err := s.Update("db", func(svc *state.Service) { svc.Heal.GaveUp = true }); err != nil {
		t.Fatal(err)
	}
	wantBlocked(t, open(t, path))
}

func TestReset(t *testing.T) {
	t.Run("paused", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.json")
		write(t, path, good[:30])
		write(t, state.PrevPath(path), "")
		reset, rec, err := state.Reset(path)
		if err != nil || !reset || !rec.Paused() {
			t.Fatalf("Reset = %v, %+v, %v; want reset of a paused state", reset, rec, err)
		}
		s := open(t, path)
		if _, paused := s.Paused(); paused || len(s.All()) != 0 {
			t.Errorf("after Reset: paused %v, services %+v; want an empty state that is not paused", paused, s.All())
		}
		if _, err := os.Stat(state.PrevPath(path)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Reset the damaged previous generation is still there (stat: %v)", err)
		}
		want := []string{"", good[:30]}
		got := append(asideCopies(t, path), asideCopies(t, state.PrevPath(path))...)
		slices.Sort(got)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("copies kept = %q, want %q", got, want)
		}
	})
	t.Run("readable state is left alone", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.json")
		write(t, path, good)
		reset, _, err := state.Reset(path)
		if err != nil || reset {
			t.Fatalf("Reset of a readable state = %v, %v; want false, nil", reset, err)
		}
		if got := readFile(t, path); got != good {
			t.Errorf("Reset changed a readable state to %q", got)
		}
	})
	t.Run("refused while locked", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.json")
		write(t, path, "garbage")
		lock, err := state.Acquire(path)
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Release()
		_, _, err = state.Reset(path)
		if !errors.Is(err, state.ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
			t.Errorf("Reset while locked = %v, want ErrLocked naming pid %d", err, os.Getpid())
		}
		if got := readFile(t, path); got != "garbage" {
			t.Errorf("refused Reset changed the file to %q", got)
		}
	})
}

func TestAcquire(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.json")
	first, err := state.Acquire(path)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if _, err := state.Acquire(path); !errors.Is(err, state.ErrLocked) {
		t.Errorf("second Acquire while held = %v, want ErrLocked", err)
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	again, err := state.Acquire(path)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	again.Release()
}
