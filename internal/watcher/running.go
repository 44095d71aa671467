package watcher

import (
	"math/rand/v2"
	"sync"
	"time"
)

// runningMaxAge bounds how long a check trusts what it read before: a
// safety net for an event the engine dropped (it drops them for a reader
// that falls behind). Each entry lives between half of it and all of it, so
// that the services of a large config are not all read again in one poll:
// 300 services polled every 2 s cost about one engine request a poll.
const runningMaxAge = 30 * time.Minute

// verifyMinLook is the least time between two looks at the containers that
// events cause during a verification: a burst of events is one look.
const verifyMinLook = 50 * time.Millisecond

// runningCache remembers what each service runs, as a check last read it, while
// the engine's event stream is open. Every change to a project's containers
// then arrives as an event and drops the project's entries, so a poll that
// finds the registry's digest already running asks the engine nothing.
//
// It also wakes verifications: an event of the project being verified
// (healthy, unhealthy, died, started) is looked at at once instead of at the
// next health poll.
type runningCache struct {
	now func() time.Time

	mu        sync.Mutex
	open      bool              // the event stream is open
	epoch     uint64            // moves when the stream opens or breaks
	gens      map[string]uint64 // by project: moves with every event
	entries   map[string]runningEntry
	listeners map[string]map[chan struct{}]struct{} // by project
}

type runningEntry struct {
	project    string
	epoch, gen uint64
	cur        current
	expires    time.Time
}

// readToken is taken before reading what runs; put stores the result only
// if nothing happened to the project since.
type readToken struct {
	trusted    bool
	epoch, gen uint64
}

func newRunning(now func() time.Time) *runningCache {
	return &runningCache{
		now:       now,
		gens:      map[string]uint64{},
		entries:   map[string]runningEntry{},
		listeners: map[string]map[chan struct{}]struct{}{},
	}
}

// get returns what service runs in project as last read, if no event of the
// project came since and the stream has stayed open.
func (r *runningCache) get(service, project string) (current, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[service]
	if !ok || !r.open || e.project != project || e.epoch != r.epoch || e.gen != r.gens[project] || !r.now().Before(e.expires) {
		return current{}, false
	}
	return e.cur, true
}

// token is taken before a read of what runs in project.
func (r *runningCache) token(project string) readToken {
	r.mu.Lock()
	defer r.mu.Unlock()
	return readToken{trusted: r.open, epoch: r.epoch, gen: r.gens[project]}
}

// put keeps what a read that started with tok found.
func (r *runningCache) put(service, project string, tok readToken, cur current) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !tok.trusted || !r.open || tok.epoch != r.epoch || tok.gen != r.gens[project] {
		return
	}
	age := runningMaxAge/2 + rand.N(runningMaxAge/2)
	r.entries[service] = runningEntry{project: project, epoch: r.epoch, gen: tok.gen, cur: cur, expires: r.now().Add(age)}
}

// forget drops what is known of service, after a deploy or a rollback.
func (r *runningCache) forget(service string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.entries, service)
}

// changed records an event of one of project's containers.
func (r *runningCache) changed(project string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gens[project]++
	for c := range r.listeners[project] {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// stream records that the event stream opened or broke. While it is
// broken nothing is trusted, and verifications look for themselves.
func (r *runningCache) stream(open bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.open = open
	r.epoch++
	clear(r.entries)
	if open {
		return
	}
	for _, ls := range r.listeners {
		for c := range ls {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}

// listen returns a channel that receives when an event of project arrives,
// and a function that stops it.
func (r *runningCache) listen(project string) (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listeners[project] == nil {
		r.listeners[project] = map[chan struct{}]struct{}{}
	}
	r.listeners[project][c] = struct{}{}
	return c, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.listeners[project], c)
		if len(r.listeners[project]) == 0 {
			delete(r.listeners, project)
		}
	}
}

// ContainerEvent tells the updater that a container of project changed:
// what it knew of the project is read again, and a verification of it
// looks now. The healer, which follows the event stream, calls it.
func (u *Updater) ContainerEvent(project string) { u.running.changed(project) }

// EventStream tells the updater whether the engine's event stream is open.
func (u *Updater) EventStream(open bool) { u.running.stream(open) }
