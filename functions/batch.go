package functions

import "time"

// Batcher applies a BatchPolicy to a batch being formed. It has no goroutine and no timer of
// its own: Add says whether the batch must be flushed now, UntilNext says when the owner's
// timer should fire. A zero Batcher is not usable; make one with BatchPolicy.NewBatcher.
type Batcher struct {
	maxEvents, maxBytes int
	maxWait             time.Duration
	count, bytes        int
	first               time.Time
}

// NewBatcher returns a Batcher for p with defaults applied (zero fields take the defaults,
// negative ones are disabled). A policy with every trigger disabled still flushes at
// MaxBatchEvents, but ValidateDefinitions rejects it before it gets here.
func (p BatchPolicy) NewBatcher() *Batcher {
	b := &Batcher{maxEvents: p.MaxEvents, maxBytes: p.MaxBytes, maxWait: p.MaxWait}
	if b.maxEvents == 0 {
		b.maxEvents = DefaultMaxEvents
	}
	if b.maxEvents < 0 || b.maxEvents > MaxBatchEvents {
		b.maxEvents = MaxBatchEvents
	}
	if b.maxBytes == 0 {
		b.maxBytes = DefaultMaxBytes
	}
	if b.maxBytes < 0 || b.maxBytes > MaxBatchBytes {
		b.maxBytes = MaxBatchBytes
	}
	if b.maxWait == 0 {
		b.maxWait = DefaultMaxWait
	}
	return b
}

// Fits reports whether an event of size bytes can join the batch without going over
// MaxBytes. An empty batch takes any event, so an oversized event travels alone.
func (b *Batcher) Fits(size int) bool {
	return b.count == 0 || b.bytes+size <= b.maxBytes
}

// Add counts an event of size bytes that arrived at arrived and reports whether the batch is
// now full and must be flushed.
func (b *Batcher) Add(size int, arrived time.Time) bool {
	if b.count == 0 || arrived.Before(b.first) {
		b.first = arrived
	}
	b.count++
	b.bytes += size
	return b.Full()
}

// Full reports whether the batch has reached MaxEvents or MaxBytes.
func (b *Batcher) Full() bool {
	return b.count >= b.maxEvents || b.bytes >= b.maxBytes
}

// UntilNext returns how long after now the batch should be flushed: 0 when it is due (full,
// or its oldest event has waited MaxWait), -1 when it is empty or has no time trigger.
func (b *Batcher) UntilNext(now time.Time) time.Duration {
	if b.count == 0 {
		return -1
	}
	if b.Full() {
		return 0
	}
	if b.maxWait < 0 {
		return -1
	}
	d := b.first.Add(b.maxWait).Sub(now)
	if d < 0 {
		d = 0
	}
	return d
}

// Count returns the number of events added since the last Reset.
func (b *Batcher) Count() int { return b.count }

// Bytes returns the bytes added since the last Reset.
func (b *Batcher) Bytes() int { return b.bytes }

// MaxEvents returns the effective event limit.
func (b *Batcher) MaxEvents() int { return b.maxEvents }

// Reset empties the batch, keeping the policy.
func (b *Batcher) Reset() { b.count, b.bytes, b.first = 0, 0, time.Time{} }
