package storage

import "sync"

// Gate holds commits, so that a test can prove that no acknowledgement leaves before the
// durable write: while the gate is held, the committer waits before it hands the next group
// to Badger, and every Append (and everything acknowledged on top of it) waits with it.
//
//	g := storage.NewGate()
//	st, _ := storage.Open(storage.Options{Dir: dir, Gate: g})
//	g.Hold()
//	// send a publish or a post ...
//	// wait until g.Waiting() > 0: the event is at the committer, not yet durable
//	// assert that no PUBACK / 202 has arrived, then:
//	g.Release()
//
// A nil *Gate never holds. Production code leaves Options.Gate nil.
type Gate struct {
	mu      sync.Mutex
	open    chan struct{} // closed while the gate is open
	waiting int
}

// NewGate returns an open gate.
func NewGate() *Gate {
	g := &Gate{open: make(chan struct{})}
	close(g.open)
	return g
}

// Hold makes the committer wait before its next commit until Release.
func (g *Gate) Hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
		g.open = make(chan struct{})
	default: // held already
	}
}

// Release lets the waiting commit, and those after it, go on.
func (g *Gate) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.open:
	default:
		close(g.open)
	}
}

// Waiting reports how many commits wait at the gate (0 or 1: there is one committer).
func (g *Gate) Waiting() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// pass blocks while the gate is held, or until closing is closed (Close still commits).
func (g *Gate) pass(closing <-chan struct{}) {
	if g == nil {
		return
	}
	g.mu.Lock()
	open := g.open
	g.waiting++
	g.mu.Unlock()
	select {
	case <-open:
	case <-closing:
	}
	g.mu.Lock()
	g.waiting--
	g.mu.Unlock()
}
