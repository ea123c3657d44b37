package testutil

import (
	"sort"
	"strings"
	"sync"
)

// MemKV is storage.KV in memory, for tests of what keeps its state in the gateway's KV (rules,
// the broker's sessions, shadows) without a store; shared by several brokers it stands for
// cluster mode's KV bucket.
type MemKV struct {
	mu sync.Mutex
	m  map[string][]byte
	// FailPut, when set, is returned by every Put (a full disk, say) and nothing is written.
	FailPut error
}

// NewMemKV returns an empty MemKV.
func NewMemKV() *MemKV { return &MemKV{m: map[string][]byte{}} }

// Get returns a copy of key's value.
func (k *MemKV) Get(key string) ([]byte, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.m[key]
	return append([]byte(nil), v...), ok, nil
}

// Put stores a copy of value.
func (k *MemKV) Put(key string, value []byte) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.FailPut != nil {
		return k.FailPut
	}
	k.m[key] = append([]byte(nil), value...)
	return nil
}

// PutMany stores every pair.
func (k *MemKV) PutMany(kvs map[string][]byte) error {
	for key, v := range kvs {
		if err := k.Put(key, v); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes key.
func (k *MemKV) Delete(key string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.m, key)
	return nil
}

// Scan calls fn for the keys with prefix in ascending order, outside the lock.
func (k *MemKV) Scan(prefix string, fn func(string, []byte) error) error {
	k.mu.Lock()
	var keys []string
	for key := range k.m {
		if strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	vals := make([][]byte, len(keys))
	for i, key := range keys {
		vals[i] = append([]byte(nil), k.m[key]...)
	}
	k.mu.Unlock()
	for i, key := range keys {
		if err := fn(key, vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// Count returns how many keys have prefix.
func (k *MemKV) Count(prefix string) int {
	n := 0
	_ = k.Scan(prefix, func(string, []byte) error { n++; return nil })
	return n
}
