package ingest

import "errors"

var (
	// ErrBusy means the gateway cannot take more events right now (too many appends pending);
	// nothing was stored and the sender should retry (HTTP 503 + Retry-After, MQTT 5 quota exceeded).
	ErrBusy = errors.New("ingest: busy, retry later")
	// ErrUnavailable means storage refused the events: closed, disk full or storage.max_bytes
	// reached. Nothing was stored.
	ErrUnavailable = errors.New("ingest: storage unavailable")
	// ErrTooManyHops means an event re-ingested from a function output exceeded the hop limit.
	ErrTooManyHops = errors.New("ingest: too many hops")
	// ErrTooLarge means one call holds more than a single commit may (split it); nothing was stored.
	ErrTooLarge = errors.New("ingest: too many events or bytes for one commit")
	// ErrInvalid means an event is malformed (no topic, bad id); nothing was stored.
	ErrInvalid = errors.New("ingest: invalid event")
)
