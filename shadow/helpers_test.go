package shadow

import (
	"context"
	"sort"
	"strings"
	"sync"

	"github.com/fleetgate/fleetgate/event"
)

// memKV is a KV in memory, as a cluster implementation would be another one.
type memKV struct {
	mu sync.Mutex
	m  map[string][]byte
}

func newMemKV() *memKV { return &memKV{m: map[string][]byte{}} }

func (k *memKV) Get(key string) ([]byte, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.m[key]
	return append([]byte(nil), v...), ok, nil
}

func (k *memKV) Put(key string, value []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.m[key] = append([]byte(nil), value...)
	return nil
}

func (k *memKV) Delete(key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.m, key)
	return nil
}

func (k *memKV) Scan(prefix string, fn func(string, []byte) error) error {
	k.mu.Lock()
	var keys []string
	for key := range k.m {
		if strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	k.mu.Unlock()
	sort.Strings(keys)
	for _, key := range keys {
		v, _, _ := k.Get(key)
		if err := fn(key, v); err != nil {
			return err
		}
	}
	return nil
}

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
