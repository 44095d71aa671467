//go:build unix

package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Lock is an exclusive hold on a state file, held by the daemon for as long
// as it runs and by `dockward state reset`: two processes never write one
// state file. It is an flock(2) on path+".lock", which the kernel releases
// when the process ends, however it ends.
type Lock struct {
	f *os.File
}

// ErrLocked is returned by Acquire when another process holds the lock.
var ErrLocked = errors.New("state file in use")

// LockPath is the lock file of the state file at path.
func LockPath(path string) string { return path + ".lock" }

// Acquire takes the lock of the state file at path without waiting, and
// writes this process's id into the lock file so that a refusal can name
// the holder.
func Acquire(path string) (*Lock, error) {
	name := LockPath(path)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("lock state file: %w", err)
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := make([]byte, 32)
		n, _ := f.ReadAt(holder, 0)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(holder[:n]))
			if _, perr := strconv.Atoi(pid); perr != nil {
				pid = "unknown"
			}
			return nil, fmt.Errorf("%w: %s is held by another dockward (pid %s)", ErrLocked, name, pid)
		}
		return nil, fmt.Errorf("lock state file %s: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. The lock file stays: removing it would let two
// processes lock two different files of the same name.
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
