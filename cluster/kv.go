package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetgate/fleetgate/storage"
)

// The gateway's small KV (storage.KV) is one JetStream key-value bucket. Its keys are any
// strings; JetStream's are dot-separated tokens of [-_=a-zA-Z0-9/]. A key is mapped token by
// token: each '/'-separated segment becomes one token, its bytes outside [-_a-zA-Z0-9] written
// "=XX" (hex), an empty segment "=". So a prefix scan ("mqtt/cl/") lists only the keys under its
// whole segments ("mqtt.cl.>") and filters the last, partial one in memory.

// kvToken escapes one segment.
func kvToken(seg string) string {
	if seg == "" {
		return "="
	}
	var b strings.Builder
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if c == '-' || c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "=%02X", c)
	}
	return b.String()
}

// kvEncode maps a storage key to a bucket key.
func kvEncode(key string) string {
	segs := strings.Split(key, "/")
	for i, s := range segs {
		segs[i] = kvToken(s)
	}
	return strings.Join(segs, ".")
}

// kvDecode maps a bucket key back; ok is false for keys this package did not write.
func kvDecode(k string) (string, bool) {
	toks := strings.Split(k, ".")
	for i, t := range toks {
		if t == "=" {
			toks[i] = ""
			continue
		}
		var b strings.Builder
		for j := 0; j < len(t); j++ {
			if t[j] != '=' {
				b.WriteByte(t[j])
				continue
			}
			if j+2 >= len(t) {
				return "", false
			}
			c, err := strconv.ParseUint(t[j+1:j+3], 16, 8)
			if err != nil {
				return "", false
			}
			b.WriteByte(byte(c))
			j += 2
		}
		toks[i] = b.String()
	}
	return strings.Join(toks, "/"), true
}

// kvFilter is the bucket filter that lists every key with the prefix (and some more).
func kvFilter(prefix string) string {
	segs := strings.Split(prefix, "/")
	whole := segs[:len(segs)-1] // the last segment is partial (or empty after a trailing '/')
	if len(whole) == 0 {
		return ">"
	}
	for i, s := range whole {
		whole[i] = kvToken(s)
	}
	return strings.Join(whole, ".") + ".>"
}

const kvTimeout = 10 * time.Second

func (l *Log) kvCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(l.ctx, kvTimeout)
}

// kvTry runs one bucket operation, again while no server answers it: after a node's loss the
// bucket elects a new leader, which takes a second or two, and meanwhile a request has no
// responder (so it was not carried out, and trying again is safe even for a create or a
// compare-and-set). It gives up when ctx ends.
func kvTry[T any](ctx context.Context, op func(ctx context.Context) (T, error)) (T, error) {
	for {
		v, err := op(ctx)
		if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Get implements storage.KV.
func (l *Log) Get(key string) ([]byte, bool, error) {
	ctx, cancel := l.kvCtx()
	defer cancel()
	e, err := kvTry(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return l.kv.Get(ctx, kvEncode(key)) })
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, l.wrap("reading "+key, err)
	}
	return e.Value(), true, nil
}

// Put implements storage.KV: stored on a quorum of replicas when it returns.
func (l *Log) Put(key string, value []byte) error {
	if err := l.writable(); err != nil {
		return err
	}
	ctx, cancel := l.kvCtx()
	defer cancel()
	if _, err := kvTry(ctx, func(ctx context.Context) (uint64, error) { return l.kv.Put(ctx, kvEncode(key), value) }); err != nil {
		return l.wrap("writing "+key, err)
	}
	return nil
}

// Create stores value under key only if the key holds nothing: storage.ErrExists otherwise.
// Rule-set versions use it so that two nodes applying at once never share a version number.
func (l *Log) Create(key string, value []byte) error {
	if err := l.writable(); err != nil {
		return err
	}
	ctx, cancel := l.kvCtx()
	defer cancel()
	if _, err := kvTry(ctx, func(ctx context.Context) (uint64, error) { return l.kv.Create(ctx, kvEncode(key), value) }); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("creating %s: %w", key, storage.ErrExists)
		}
		return l.wrap("creating "+key, err)
	}
	return nil
}

// CompareAndPut stores value under key only if the key still holds old (found false: holds
// nothing), atomically across the cluster (the bucket's revision); storage.ErrChanged otherwise.
// Device shadows use it: two nodes never both accept an update of the same version.
func (l *Log) CompareAndPut(key string, old []byte, found bool, value []byte) error {
	if err := l.writable(); err != nil {
		return err
	}
	ctx, cancel := l.kvCtx()
	defer cancel()
	k := kvEncode(key)
	if !found {
		if _, err := kvTry(ctx, func(ctx context.Context) (uint64, error) { return l.kv.Create(ctx, k, value) }); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("creating %s: %w", key, storage.ErrChanged)
			}
			return l.wrap("creating "+key, err)
		}
		return nil
	}
	e, err := kvTry(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return l.kv.Get(ctx, k) })
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("updating %s: %w (deleted)", key, storage.ErrChanged)
	}
	if err != nil {
		return l.wrap("reading "+key, err)
	}
	if !bytes.Equal(e.Value(), old) {
		return fmt.Errorf("updating %s: %w", key, storage.ErrChanged)
	}
	if _, err := kvTry(ctx, func(ctx context.Context) (uint64, error) { return l.kv.Update(ctx, k, value, e.Revision()) }); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("updating %s: %w", key, storage.ErrChanged)
		}
		return l.wrap("updating "+key, err)
	}
	return nil
}

// PutMany implements storage.KV. A bucket has no multi-key transaction: the keys are written
// one by one, and a failure part way leaves the earlier ones written (callers write
// independent records with it).
func (l *Log) PutMany(kvs map[string][]byte) error {
	keys := make([]string, 0, len(kvs))
	for k := range kvs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := l.Put(k, kvs[k]); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements storage.KV.
func (l *Log) Delete(key string) error {
	if err := l.writable(); err != nil {
		return err
	}
	ctx, cancel := l.kvCtx()
	defer cancel()
	// Purge, not Delete: no tombstone history is kept for a key that is gone.
	if _, err := kvTry(ctx, func(ctx context.Context) (struct{}, error) { return struct{}{}, l.kv.Purge(ctx, kvEncode(key)) }); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return l.wrap("deleting "+key, err)
	}
	return nil
}

// Scan implements storage.KV: the keys with prefix, in ascending order, with their values. It
// reads them all in one pass (a KV watch delivers every current value, then a marker), not one
// request per key.
func (l *Log) Scan(prefix string, fn func(key string, value []byte) error) error {
	// Right after a node died, the bucket's leader may be in election and a watch asked for
	// then may never answer: try again, in short attempts, within kvTimeout.
	deadline := time.Now().Add(kvTimeout)
	for {
		called, err := l.scan(prefix, fn, min(scanAttempt, time.Until(deadline)))
		if err == nil || called || !errors.Is(err, storage.ErrNoQuorum) || time.Until(deadline) <= 0 || l.closed.Load() {
			return err
		}
	}
}

// scanAttempt bounds one try of Scan.
const scanAttempt = 2 * time.Second

// scan is one try of Scan; called reports whether fn was called (then it is not tried again).
func (l *Log) scan(prefix string, fn func(key string, value []byte) error, limit time.Duration) (called bool, err error) {
	ctx, cancel := context.WithTimeout(l.ctx, limit)
	defer cancel()
	w, err := l.kv.WatchFiltered(ctx, []string{kvFilter(prefix)}, jetstream.IgnoreDeletes())
	if err != nil {
		return false, l.wrap("listing "+prefix, err)
	}
	defer w.Stop()
	type kv struct {
		key   string
		value []byte
	}
	var all []kv
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-w.Updates():
		case <-ctx.Done():
			return false, l.wrap("listing "+prefix, ctx.Err())
		}
		if !ok {
			return false, l.wrap("listing "+prefix, errors.New("watch ended"))
		}
		if e == nil {
			break // every current value was delivered
		}
		if key, ok := kvDecode(e.Key()); ok && strings.HasPrefix(key, prefix) {
			all = append(all, kv{key, e.Value()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].key < all[j].key })
	for _, e := range all {
		if err := fn(e.key, e.value); err != nil {
			return true, err
		}
	}
	return true, nil
}

// Watch calls fn (from another goroutine) after every change of a key with prefix, until stop
// is called. Rules use it to make a set applied on another node live here at once.
func (l *Log) Watch(prefix string, fn func()) (stop func(), err error) {
	w, err := l.kv.WatchFiltered(l.ctx, []string{kvFilter(prefix)}, jetstream.UpdatesOnly())
	if err != nil {
		return nil, l.wrap("watching "+prefix, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			if key, ok := kvDecode(e.Key()); ok && strings.HasPrefix(key, prefix) {
				fn()
			}
		}
	}()
	return func() { _ = w.Stop(); <-done }, nil
}
