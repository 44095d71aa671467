// Package state keeps what Dockward must not forget across restarts: blocked
// digests, heal cooldowns and deploys that were in flight.
//
// The file is small and rewritten whole on every change: write a temp file,
// fsync it, rename it over the old one, fsync the directory. A crash leaves
// either the old or the new file, never a torn one.
//
// What Dockward knows is never dropped because the disk refused it: a change
// is applied in memory first and kept there even when the file cannot be
// written (disk full, an I/O error). The store is then dirty, and the next
// successful write (any Update, or Flush) persists everything it holds.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
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

	mu    sync.Mutex
	data  File
	dirty bool // data holds changes the file does not have yet
}

// Open loads the state file at path. A missing file is an empty state; a file
// that cannot be parsed is an error, because starting without it would forget
// blocked digests and redeploy them.
func Open(path string) (*Store, error) {
	s := &Store{path: path, data: File{Version: formatVersion, Services: map[string]*Service{}}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state file: %w", err)
	}
	if err := json.Unmarshal(b, &s.data); err != nil {
		return nil, fmt.Errorf("parse state file %s (fix or remove it; it holds blocked digests): %w", path, err)
	}
	if s.data.Version != formatVersion {
		return nil, fmt.Errorf("state file %s has format version %d, this dockward reads %d", path, s.data.Version, formatVersion)
	}
	if s.data.Services == nil {
		s.data.Services = map[string]*Service{}
	}
	return s, nil
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

// save writes the whole in-memory state to the file and tracks whether the
// file is behind: dirty after a failure, clean after a success. s.mu is held.
func (s *Store) save() error {
	b, err := json.MarshalIndent(s.data, "", "  ")
	if err == nil {
		err = writeAtomic(s.path, append(b, '\n'))
	} else {
		err = fmt.Errorf("encode state: %w", err)
	}
	s.dirty = err != nil
	return err
}

func writeAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	f, err := os.CreateTemp(dir, ".state-*.tmp")
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
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state directory: %w", err)
	}
	return nil
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
	return c
}

func (s Service) isZero() bool {
	return s.Blocked == nil && s.Deploy == nil && s.LastDeploy == nil && s.Heal == Heal{} && len(s.Containers) == 0
}
