package storage

import (
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

// Get returns the value stored under key in the small KV, and whether it exists.
func (s *Store) Get(key string) ([]byte, bool, error) {
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	var v []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(kvKey(key))
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("reading %q: %w", key, err)
	}
	return v, true, nil
}

// Put stores value under key, durably.
func (s *Store) Put(key string, value []byte) error {
	if err := s.write([]*op{{key: kvKey(key), value: append([]byte(nil), value...)}}, nil); err != nil {
		return fmt.Errorf("storing %q: %w", key, err)
	}
	return nil
}

// PutMany stores several keys in one durable commit: all or none.
func (s *Store) PutMany(kvs map[string][]byte) error {
	ops := make([]*op, 0, len(kvs))
	for k, v := range kvs {
		ops = append(ops, &op{key: kvKey(k), value: append([]byte(nil), v...)})
	}
	if err := s.write(ops, nil); err != nil {
		return fmt.Errorf("storing %d keys: %w", len(kvs), err)
	}
	return nil
}

// Delete removes key, durably. Deleting a missing key is not an error.
func (s *Store) Delete(key string) error {
	if err := s.write([]*op{{key: kvKey(key), delete: true}}, nil); err != nil {
		return fmt.Errorf("deleting %q: %w", key, err)
	}
	return nil
}

// Scan calls fn for every key with prefix, in ascending key order. fn must not retain value.
func (s *Store) Scan(prefix string, fn func(key string, value []byte) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	p := kvKey(prefix)
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 100, Prefix: p})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(p); it.Next() {
			item := it.Item()
			if err := item.Value(func(v []byte) error { return fn(string(item.Key()[1:]), v) }); err != nil {
				return err
			}
		}
		return nil
	})
}

func kvKey(key string) []byte { return append([]byte{nsKV}, key...) }
