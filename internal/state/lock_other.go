//go:build !unix

package state

import "errors"

// Lock is an exclusive hold on a state file; without flock(2) it holds nothing.
type Lock struct{}

// ErrLocked is returned by Acquire when another process holds the lock.
var ErrLocked = errors.New("state file in use")

// LockPath is the lock file of the state file at path.
func LockPath(path string) string { return path + ".lock" }

// Acquire does nothing on systems without flock(2).
func Acquire(path string) (*Lock, error) { return &Lock{}, nil }

// Release does nothing.
func (l *Lock) Release() error { return nil }
