package storage

import "errors"

var (
	// ErrClosed is returned by every call made after Close has begun.
	ErrClosed = errors.New("storage: closed")
	// ErrBusy means too many appends are waiting for a commit; the caller should retry later
	// (HTTP 503 with Retry-After, MQTT quota exceeded). Nothing was stored.
	ErrBusy = errors.New("storage: too many pending appends")
	// ErrFull means the disk, or the configured storage.max_bytes, is full. Nothing was stored.
	ErrFull = errors.New("storage: full")
	// ErrTooLarge means one append request is larger than a single commit may be.
	ErrTooLarge = errors.New("storage: append too large for one commit")
	// ErrNotFound is returned for a key, queue entry or dead letter that does not exist.
	ErrNotFound = errors.New("storage: not found")
	// ErrInvalid is returned for a malformed argument, such as an empty function name.
	ErrInvalid = errors.New("storage: invalid argument")
	// ErrDamaged means Open found the data dir damaged (a MANIFEST missing, truncated or
	// corrupt, a table file missing, truncated or corrupt) and refused to start rather than let
	// Badger drop data. Nothing in the dir was changed; the message names the files and why.
	// Restore a backup, or salvage with Repair (`fleetgate storage repair`).
	ErrDamaged = errors.New("storage: data dir damaged")
	// ErrNoQuorum means a cluster node cannot reach a quorum of the replicas: nothing was
	// acknowledged as stored (HTTP 503, MQTT 0x97); the sender retries, on another node too.
	ErrNoQuorum = errors.New("storage: no quorum of the cluster's replicas reachable")
	// ErrExists is returned by a KV Create for a key that already holds a value.
	ErrExists = errors.New("storage: key exists")
	// ErrChanged is returned by a KV CompareAndPut when the key no longer holds what the caller
	// read: someone else (another node) wrote it meanwhile; read again and retry.
	ErrChanged = errors.New("storage: key changed meanwhile")
	// ErrUnsupported is returned by a backend for an operation it does not offer.
	ErrUnsupported = errors.New("storage: not supported by this backend")
)
