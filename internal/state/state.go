// Package state keeps what Dockward must not forget across restarts: blocked
// digests, heal cooldowns and deploys that were in flight.
//
// The file is small and rewritten whole on every change: write a temp file,
// fsync it, rename it over the old one, fsync the directory. A crash leaves
// either the old or the new file, never a torn one. Each save first keeps the
// previous good generation beside the file (state.json.prev: a hard link to
// the file it replaces, or written out the same way), so a file damaged
// anyway (a disk or filesystem that lies about fsync, an operator's editor)
// is not the end of what Dockward knew.
//
// Open never refuses to start over a damaged file: it falls back to the
// previous generation, and when neither can be read it returns a paused
// store. A paused store knows nothing, so it must not deploy (a blocked
// digest would be deployed again); it writes nothing either, so the damaged
// files stay for the operator and a restart is paused again until the
// operator fixes the file (and Reload is called) or runs Reset. Damaged
// files are copied aside under a timestamped name that is never overwritten.
//
// What Dockward knows is never dropped because the disk refused it: a change
// is applied in memory first and kept there even when the file cannot be
// written (disk full, an I/O error). The store is then dirty, and the next
// successful write (any Update, or Flush) persists everything it holds.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// formatVersion is bumped when the file layout changes incompatibly.
const formatVersion = 1

// File is the on-disk document.
type File struct {
	Version  int                 `json:"version"`
	Services map[string]*Service `json:"services"`
}

// Service is what is remembered about one service.
type Service struct {
	Blocked *Block `json:"blocked,omitempty"`
	// Heal is the service-wide heal state that files written before heal
	// state was kept per container hold. It is only read: the healer moves
	// it to each of the service's containers and clears it.
	Heal Heal `json:"heal,omitzero"`
	// Containers is the heal state of each container of the service, keyed
	// by what survives the container being recreated: its compose service
	// and number ("web-1"), or its name without compose labels.
	Containers map[string]Heal `json:"containers,omitempty"`
	Deploy     *Deploy         `json:"deploy,omitempty"`
	// LastDeploy is the verdict of the last deploy, kept for GET /status.
	LastDeploy *DeployResult `json:"last_deploy,omitempty"`
	// Promotion is a canary promotion waiting for the end of its soak.
	Promotion *Promotion `json:"promotion,omitempty"`
}

// Promotion is a verified digest that is copied to Tag in the registry
// once it has stayed healthy until NotBefore. It is kept across restarts
// and dropped when it is done or cancelled.
type Promotion struct {
	Digest    string    `json:"digest"`
	Tag       string    `json:"tag"`
	Verified  time.Time `json:"verified"`   // the deploy's verdict; the soak starts
	NotBefore time.Time `json:"not_before"` // the end of the soak
}

// Block records a digest that failed verification and must not be deployed again.
type Block struct {
	Digest string    `json:"digest"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"`
}

// Heal tracks one container's auto-heal restarts so cooldowns and the
// give-up cap survive a restart.
type Heal struct {
	LastRestart time.Time `json:"last_restart,omitzero"`
	Consecutive int       `json:"consecutive,omitempty"`
	GaveUp      bool      `json:"gave_up,omitempty"`
}

// Deploy is a deploy in flight. It is written before anything is changed and
// cleared when the deploy is proven healthy or rolled back, so a start that
// finds one knows the previous run stopped half way.
type Deploy struct {
	Digest        string    `json:"digest"`
	RollbackImage string    `json:"rollback_image,omitempty"`
	Started       time.Time `json:"started"`
	// Phase is the step the deploy is in, written before the step starts,
	// so that a start after a crash resumes that step. Empty in records
	// written before phases were recorded.
	Phase string `json:"phase,omitempty"`
	// Project is the compose project the deploy acts on.
	Project string `json:"project,omitempty"`
	// Services are the compose services the deploy pulls, recreates and
	// rolls back; empty means the whole project.
	Services []string `json:"services,omitempty"`
	// Previous is the registry digest that ran before, for messages.
	Previous string `json:"previous,omitempty"`
	// Reason is why the deploy is being rolled back, once it is.
	Reason string `json:"reason,omitempty"`
}

// DeployResult is how a finished deploy ended.
type DeployResult struct {
	Digest   string    `json:"digest"`
	Previous string    `json:"previous,omitempty"`
	Outcome  string    `json:"outcome"` // deployed, rolled_back, rollback_failed
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Reason   string    `json:"reason,omitempty"`
}

// Store is the state file and its in-memory copy. It is safe for concurrent use.
//
// The in-memory copy is the truth; the file is its durable copy. When a write
// fails the two differ until a later write succeeds, and Dirty reports it.
type Store struct {
	path string
	now  func() time.Time

	mu    sync.Mutex
	data  File
	dirty bool // data holds changes the file does not have yet
	// lastGood is the file content last read or written successfully: the
	// generation the next save keeps as the previous one. nil when there
	// is none (a first start, or a paused store).
	lastGood []byte
	// paused says why the state could not be loaded; empty when it was.
	paused   string
	recovery Recovery
}

// Recovery says what Open (or Reload) had to do to get a state it can use.
// The zero value means the file was read as it is (or did not exist yet).
type Recovery struct {
	// Damaged is why the state file could not be used; nil if it could.
	Damaged error
	// FromPrevious is set when the state was loaded from the previous
	// generation instead: changes of the last save may be missing.
	FromPrevious bool
	// PrevDamaged is why the previous generation could not be used either,
	// when it was needed. Damaged and PrevDamaged together pause the store.
	PrevDamaged error
	// SetAside lists copies of damaged files kept for the operator.
	SetAside []string
	// SetAsideErr is why a damaged file could not be copied aside.
	SetAsideErr error
	// TempRemoved lists leftover temp files of an interrupted write.
	TempRemoved []string
}

// Paused reports whether neither the file nor its previous generation could be read.
func (r Recovery) Paused() bool { return r.Damaged != nil && !r.FromPrevious }

// PrevPath is where the previous generation of the state file at path is kept.
func PrevPath(path string) string { return path + ".prev" }

// Open loads the state file at path. A missing file (and no previous
// generation) is an empty state. A file that cannot be read or parsed is
// never taken as empty, because that would forget blocked digests and
// deploy them again: Open falls back to the previous generation, and when
// that cannot be read either it returns a paused store (see Paused). What it
// had to do is in Recovery. Leftover temp files of an interrupted write are
// removed first.
//
// The error is for a path that cannot hold a state file at all.
func Open(path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open state file: no path")
	}
	s := &Store{path: path, now: time.Now}
	s.load()
	return s, nil
}

// load reads the file (or its previous generation) into s; s.mu is held or
// s is not shared yet.
func (s *Store) load() {
	rec := Recovery{TempRemoved: removeTemps(s.path)}
	data, raw, err := read(s.path)
	switch {
	case err == nil:
		s.use(data, raw, rec)
		return
	case errors.Is(err, fs.ErrNotExist):
		// No file: a first start, unless a previous generation says the
		// file was there (an earlier start set a damaged file aside).
		pdata, praw, perr := read(PrevPath(s.path))
		if errors.Is(perr, fs.ErrNotExist) {
			s.use(File{Version: formatVersion, Services: map[string]*Service{}}, nil, rec)
			return
		}
		rec.Damaged = fmt.Errorf("state file %s is missing but its previous generation exists", s.path)
		if perr == nil {
			rec.FromPrevious = true
			s.use(pdata, praw, rec)
			return
		}
		rec.PrevDamaged = perr
		s.pause(rec)
		return
	}
	rec.Damaged = err
	pdata, praw, perr := read(PrevPath(s.path))
	if perr == nil {
		// The damaged file would be overwritten by the next save: move it
		// aside for the operator. The previous generation is the state.
		rec.FromPrevious = true
		s.setAside(&rec, s.path, true)
		s.use(pdata, praw, rec)
		return
	}
	if errors.Is(perr, fs.ErrNotExist) {
		perr = fmt.Errorf("no previous generation %s", PrevPath(s.path))
	}
	rec.PrevDamaged = perr
	s.pause(rec)
}

func (s *Store) use(data File, raw []byte, rec Recovery) {
	s.data, s.lastGood, s.recovery, s.paused, s.dirty = data, raw, rec, "", false
}

// pause leaves the damaged files where they are (a restart must find them
// and pause again) and keeps copies of them aside.
func (s *Store) pause(rec Recovery) {
	s.setAside(&rec, s.path, false)
	s.setAside(&rec, PrevPath(s.path), false)
	reason := fmt.Sprintf("deploys paused: the state file cannot be read (%v) nor its previous generation (%v), so blocked digests are unknown", rec.Damaged, rec.PrevDamaged)
	if len(rec.SetAside) > 0 {
		reason += "; damaged copies kept as " + strings.Join(rec.SetAside, ", ")
	}
	s.data = File{Version: formatVersion, Services: map[string]*Service{}}
	s.lastGood, s.recovery, s.paused, s.dirty = nil, rec, reason, false
}

// read reads and parses one generation. A missing file is fs.ErrNotExist;
// any other failure says which file and why.
func read(path string) (File, []byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return File{}, nil, err
	}
	if err != nil {
		return File{}, nil, err // names the path
	}
	data, err := parse(b)
	if err != nil {
		return File{}, nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, b, nil
}

func parse(b []byte) (File, error) {
	var data File
	if len(bytes.TrimSpace(b)) == 0 {
		return File{}, fmt.Errorf("empty (%d bytes)", len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&data); err != nil {
		return File{}, fmt.Errorf("parse: %w", err)
	}
	if dec.More() {
		return File{}, errors.New("parse: data after the JSON document")
	}
	if data.Version != formatVersion {
		return File{}, fmt.Errorf("format version %d, this dockward reads %d", data.Version, formatVersion)
	}
	if data.Services == nil {
		data.Services = map[string]*Service{}
	}
	return data, nil
}

// setAside keeps a copy of a damaged file under a timestamped name that
// nothing overwrites, once per distinct content; move removes the original.
func (s *Store) setAside(rec *Recovery, path string, move bool) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err != nil {
		// Unreadable: it cannot be copied. Renaming keeps it, if needed.
		if move {
			err = renameAside(path, s.now())
		}
		if err != nil {
			rec.SetAsideErr = errors.Join(rec.SetAsideErr, fmt.Errorf("keep damaged %s aside: %w", path, err))
		}
		return
	}
	kept, err := keepCopy(path, b, s.now())
	if err != nil {
		rec.SetAsideErr = errors.Join(rec.SetAsideErr, fmt.Errorf("keep damaged %s aside: %w", path, err))
		return
	}
	rec.SetAside = append(rec.SetAside, kept)
	if move {
		if err := os.Remove(path); err != nil {
			rec.SetAsideErr = errors.Join(rec.SetAsideErr, fmt.Errorf("remove damaged %s (a copy is %s): %w", path, kept, err))
		}
	}
}

// damagedPrefix is how copies of a damaged file at path are named:
// state.json.damaged-20260102T150405Z.
func damagedPrefix(path string) string { return path + ".damaged-" }

// keepCopy writes b to a new damaged-copy name beside path, or returns an
// existing copy with the same content.
func keepCopy(path string, b []byte, now time.Time) (string, error) {
	prefix := damagedPrefix(path)
	if existing, _ := filepath.Glob(globEscape(prefix) + "*"); len(existing) > 0 {
		for _, e := range existing {
			if c, err := os.ReadFile(e); err == nil && bytes.Equal(c, b) {
				return e, nil
			}
		}
	}
	stamp := now.UTC().Format("20060102T150405Z")
	for i := 0; ; i++ {
		name := prefix + stamp
		if i > 0 {
			name += fmt.Sprintf("-%d", i)
		}
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			return "", err
		}
		_, err = f.Write(b)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = syncDir(filepath.Dir(name))
		}
		if err != nil {
			os.Remove(name)
			return "", err
		}
		return name, nil
	}
}

// renameAside renames path to a damaged-copy name, never over an existing file.
func renameAside(path string, now time.Time) error {
	stamp := now.UTC().Format("20060102T150405Z")
	for i := range 100 {
		name := damagedPrefix(path) + stamp
		if i > 0 {
			name += fmt.Sprintf("-%d", i)
		}
		if _, err := os.Lstat(name); err == nil {
			continue
		}
		return os.Rename(path, name)
	}
	return errors.New("no free name")
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(s)
}

// tempPattern names the temp files of writes to path (os.CreateTemp pattern).
func tempPattern(path string) string { return "." + filepath.Base(path) + ".*.tmp" }

// removeTemps removes temp files that an interrupted write left beside the
// state file: ".state.json.123.tmp", ".state.json.prev.123.tmp", and
// ".state-123.tmp" of older versions.
func removeTemps(path string) []string {
	dir, base := filepath.Dir(path), filepath.Base(path)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range entries {
		n := e.Name()
		ours := strings.HasPrefix(n, "."+base+".") || strings.HasPrefix(n, ".state-")
		if !ours || !strings.HasSuffix(n, ".tmp") || !e.Type().IsRegular() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, n)); err == nil {
			removed = append(removed, filepath.Join(dir, n))
		}
	}
	return removed
}

// Recovery reports what the last Open or Reload had to do.
func (s *Store) Recovery() Recovery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recovery
}

// Paused reports whether the store is paused, and why: neither the state
// file nor its previous generation could be read, so what was blocked is
// unknown and nothing may be deployed. A paused store keeps changes in
// memory and writes nothing, so that the damaged files stay as they are.
func (s *Store) Paused() (reason string, paused bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused, s.paused != ""
}

// Reload reads the state again if the store is paused, for an operator who
// fixed the file (or its previous generation). It reports whether the store
// was paused and is no longer; the error says why it still is. On a store
// that is not paused it does nothing: memory is the truth then, and reading
// the file could only lose changes.
func (s *Store) Reload() (resumed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.paused == "" {
		return false, nil
	}
	s.load()
	if s.paused != "" {
		return false, errors.New(s.paused)
	}
	return true, nil
}

// Path is where the state is stored.
func (s *Store) Path() string { return s.path }

// Get returns a copy of what is stored for a service (the zero value if nothing).
func (s *Store) Get(name string) Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.data.Services[name].clone()
}

// All returns a copy of every service's state.
func (s *Store) All() map[string]Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Service, len(s.data.Services))
	for name, svc := range s.data.Services {
		out[name] = svc.clone()
	}
	return out
}

// Update changes one service's state in memory and writes the whole state to
// the file before returning.
//
// The change is applied in memory always, also when the write fails: a
// blocked digest that could not be saved must still stop the next deploy of
// that digest. On failure the store is marked dirty and the error says the
// change is kept in memory only; it reaches the file with the next successful
// write, because every Update (and Flush) writes the whole state. A
// successful Update therefore also persists any changes earlier failures left
// behind, and leaves the store clean.
//
// change gets a copy of the service's state (the zero value if nothing is
// stored); setting it to the zero value removes the service.
func (s *Store) Update(name string, change func(*Service)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.data.Services[name].clone()
	change(&next)
	if next.isZero() {
		delete(s.data.Services, name)
	} else {
		s.data.Services[name] = &next
	}
	if err := s.save(); err != nil {
		return fmt.Errorf("state change for %s kept in memory, will be written on the next successful save: %w", name, err)
	}
	return nil
}

// Flush writes the state file if, and only if, the store is dirty: some
// earlier Update kept its change in memory because the write failed. On a
// clean store it does nothing and returns nil. If the write fails again the
// store stays dirty and the error is returned; nothing in memory is lost.
func (s *Store) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dirty {
		return nil
	}
	if err := s.save(); err != nil {
		return fmt.Errorf("state still kept in memory only, will be written on the next successful save: %w", err)
	}
	return nil
}

// Dirty reports whether the store holds changes that are not in the state file
// yet because writing it failed. A successful Update or Flush clears it.
func (s *Store) Dirty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dirty
}

// save writes the whole in-memory state to the file, after keeping the
// generation it replaces as the previous one, and tracks whether the file is
// behind: dirty after a failure, clean after a success. A paused store does
// not write: the damaged files stay for the operator. s.mu is held.
func (s *Store) save() error {
	if s.paused != "" {
		s.dirty = true
		return nil
	}
	b, err := json.MarshalIndent(s.data, "", "  ")
	if err != nil {
		s.dirty = true
		return fmt.Errorf("encode state: %w", err)
	}
	b = append(b, '\n')
	if s.lastGood != nil && !bytes.Equal(s.lastGood, b) {
		if err := s.keepPrevious(); err != nil {
			s.dirty = true
			return fmt.Errorf("keep the previous generation: %w", err)
		}
	}
	if err := writeAtomic(s.path, b); err != nil {
		s.dirty = true
		return err
	}
	s.lastGood, s.dirty = b, false
	return nil
}

// keepPrevious makes the previous generation hold lastGood, the file's
// content before this save. Usually the file holds it: a hard link to it,
// renamed over the previous generation, keeps it without writing and
// syncing the bytes again (they were synced when the file was written); the
// directory sync after the file's own rename makes both renames durable.
// Otherwise (the previous generation was loaded, a filesystem without hard
// links) lastGood is written out. s.mu is held.
func (s *Store) keepPrevious() error {
	prev := PrevPath(s.path)
	if cur, err := os.ReadFile(prev); err == nil && bytes.Equal(cur, s.lastGood) {
		return nil
	}
	if cur, err := os.ReadFile(s.path); err == nil && bytes.Equal(cur, s.lastGood) {
		link := filepath.Join(filepath.Dir(prev), "."+filepath.Base(prev)+".link.tmp")
		os.Remove(link)
		if err := os.Link(s.path, link); err == nil {
			if err := os.Rename(link, prev); err == nil {
				return nil
			}
			os.Remove(link)
		}
	}
	return writeAtomic(prev, s.lastGood)
}

func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, tempPattern(path))
	if err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write state file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync state file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace state file: %w", err)
	}
	// The rename is durable only once the directory entry is synced.
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (s *Service) clone() Service {
	if s == nil {
		return Service{}
	}
	c := *s
	if s.Blocked != nil {
		b := *s.Blocked
		c.Blocked = &b
	}
	if s.Deploy != nil {
		d := *s.Deploy
		d.Services = append([]string(nil), s.Deploy.Services...)
		c.Deploy = &d
	}
	if s.LastDeploy != nil {
		r := *s.LastDeploy
		c.LastDeploy = &r
	}
	c.Containers = maps.Clone(s.Containers)
	if s.Promotion != nil {
		p := *s.Promotion
		c.Promotion = &p
	}
	return c
}

func (s Service) isZero() bool {
	return s.Blocked == nil && s.Deploy == nil && s.LastDeploy == nil && s.Heal == Heal{} && len(s.Containers) == 0 && s.Promotion == nil
}

// Reset makes the paused state at path usable again, for an operator who
// accepts that what the damaged files held is gone (blocked digests in
// them are not blocked any more: read the copies kept aside). It holds the
// state file's lock meanwhile, so it refuses while a dockward runs against
// the file (ErrLocked).
//
// A state that Open can read, from the file or its previous generation, is
// left as it is: Reset never drops a readable block. It reports whether it
// reset anything, and what reading the state found.
func Reset(path string) (reset bool, rec Recovery, err error) {
	lock, err := Acquire(path)
	if err != nil {
		return false, Recovery{}, err
	}
	defer lock.Release()
	s, err := Open(path)
	if err != nil {
		return false, Recovery{}, err
	}
	rec = s.Recovery()
	if _, paused := s.Paused(); !paused {
		return false, rec, nil
	}
	if rec.SetAsideErr != nil {
		return false, rec, fmt.Errorf("reset state: the damaged files could not be kept aside, so they are left in place: %w", rec.SetAsideErr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = ""
	if err := s.save(); err != nil {
		return false, rec, fmt.Errorf("reset state: write an empty state file: %w", err)
	}
	if err := os.Remove(PrevPath(path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, rec, fmt.Errorf("reset state: remove the damaged previous generation (a copy is kept): %w", err)
	}
	return true, rec, nil
}
