package shadow

import (
	"context"
	"sync"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/internal/testutil"
)

// memKV is the in-memory KV shared by the tests (internal/testutil).
type memKV = testutil.MemKV

func newMemKV() *memKV { return testutil.NewMemKV() }

type recorder struct {
	mu     sync.Mutex
	events []*event.Event
	pubs   map[string][]string
}

func (r *recorder) Accept(_ context.Context, evs []*event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, evs...)
	return nil
}

func (r *recorder) Publish(topic string, payload []byte, _ byte, _ bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pubs == nil {
		r.pubs = map[string][]string{}
	}
	r.pubs[topic] = append(r.pubs[topic], string(payload))
	return nil
}
