package storage

import (
	"context"
	"time"
)

// Backend is the durable log behind the gateway: events appended with the functions they go to,
// each function's queue with its acknowledgements and dead letters, and a small key-value
// store. Ingest, rules, the broker and the functions talk to this interface only.
//
// Two implementations exist: *Store (Badger, one node: the embedded default) and cluster.Log
// (NATS JetStream, replicated over several nodes). The conformance suite in
// storage/storagetest runs against both.
type Backend interface {
	// Append stores entries durably (on a quorum of replicas in a cluster) and returns once they
	// are; it sets each entry's Seq, or Duplicate when its IdempotencyKey was seen before.
	Append(ctx context.Context, entries []*Entry) error
	// AppendAsync is Append without waiting: done is called once, from another goroutine.
	AppendAsync(entries []*Entry, done func(error))
	// Refusing reports why new events are refused right now (disk or log full, no quorum), or nil.
	Refusing() error

	// SetOnCommit sets the hook that hands newly queued items to the dispatcher (nil: none).
	// The backend calls it with entries whose Targets name the functions concerned; Seq orders
	// a function's items (Badger: the commit sequence; JetStream: this node's delivery order).
	SetOnCommit(fn func(committed []*Entry))
	// ReadQueue returns up to max pending items of function with Seq > afterSeq, in Seq order.
	ReadQueue(function string, afterSeq uint64, max int) ([]Item, error)
	// Delivered acknowledges items: they leave function's queue.
	Delivered(function string, items []Item) error
	// DeadLetter moves items out of function's queue into its dead letters, with why.
	DeadLetter(function string, letters []DeadLetter) error
	// DeadLetters returns up to max dead letters of function with Seq > afterSeq, in Seq order.
	DeadLetters(function string, afterSeq uint64, max int) ([]DeadLetter, error)
	// Replay moves dead letters back to function's queue (all when seqs is nil), durably. The
	// items returned with a Seq must be handed to the function by the caller; items with Seq 0
	// were put back on the shared queue and arrive through it (cluster mode).
	Replay(function string, seqs []uint64) ([]Item, error)
	// PurgeDeadLetters deletes dead letters of function (by seq, or dead-lettered before a time).
	PurgeDeadLetters(function string, before time.Time, seqs []uint64) (int, error)
	// DropQueue deletes everything queued for function and its dead letters.
	DropQueue(function string) (queued, dead int, err error)
	// QueueDepth and DeadLetterDepth count what waits for function (cheap: for gauges).
	QueueDepth(function string) int64
	DeadLetterDepth(function string) int64
	// Functions lists the functions that have a queue or dead letters.
	Functions() []string
	// Fate tells what happened to an event (ErrUnsupported where the backend keeps no fates).
	Fate(id string) (Fate, error)

	KV

	Close() error
}

// KV is the small durable key-value store (rules, sessions, retained messages, revocations,
// device state). Keys are any bytes but NUL-free strings are advised; Scan visits keys with the
// prefix in ascending order.
type KV interface {
	Get(key string) (value []byte, found bool, err error)
	Put(key string, value []byte) error
	PutMany(kvs map[string][]byte) error
	Delete(key string) error
	Scan(prefix string, fn func(key string, value []byte) error) error
}

var _ Backend = (*Store)(nil)
