package watcher

import "errors"

// ErrPaused is returned when a check or deploy cannot start because deploys
// are paused: the state file and its previous generation could not be read,
// so which digests are blocked is unknown.
var ErrPaused = errors.New("deploys are paused")

// pausedError carries the store's reason; errors.Is(err, ErrPaused) holds.
type pausedError struct{ reason string }

func (e pausedError) Error() string {
	return e.reason + "; to resume, fix the state file and reload dockward (SIGHUP), or stop dockward and run `dockward state reset`"
}

func (e pausedError) Is(target error) bool { return target == ErrPaused }

// DeploysPaused reports whether deploys are paused, and why. Healing, the
// API and metrics run; no check, deploy or trigger starts.
func (u *Updater) DeploysPaused() (reason string, paused bool) {
	reason, paused = u.store.Paused()
	if paused {
		return pausedError{reason}.Error(), true
	}
	return "", false
}

// errIfPaused is where a guard is taken: paused means no deploy at all.
func (u *Updater) errIfPaused() error {
	if reason, paused := u.store.Paused(); paused {
		return pausedError{reason}
	}
	return nil
}

// StateReloaded refreshes what the updater shows from the store after the
// store was read again (a paused store that resumed).
func (u *Updater) StateReloaded() {
	for _, name := range u.Services() {
		u.metrics.SetBlocked(name, u.store.Get(name).Blocked != nil)
	}
}
