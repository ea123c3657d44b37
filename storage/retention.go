package storage

import (
	"encoding/binary"
	"errors"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// DefaultSweepInterval is how often the store deletes delivered events by default. Often: an
// event deleted before its memtable is flushed reaches the tables as its deletion alone (patched
// Badger's Options.FlushDropsShadowed), not as its value, which compactions would then rewrite
// until they met the deletion. A memtable fills in about a second under load.
const DefaultSweepInterval = 250 * time.Millisecond

// sweepCostFactor bounds the time a sweep spends looking for what it may delete: after a sweep
// the loop waits at least this many times as long as its watermark took, so that the looking
// takes at most a twentieth of a core. It is usually short, but the watermark reads the
// deletions at the head of every function's queue until compactions drop them (after a
// function drained a long backlog: many). The deleting is not counted: it is work every
// event needs once, at any interval.
const sweepCostFactor = 20

// maxAgeInterval is how often the sweep loop applies storage.max_age (expire reads every
// pending entry; an event a little older than max_age meanwhile does no harm).
const maxAgeInterval = 5 * time.Second

// sweepLoop deletes events no queue needs any more, applies the max-age safety valve and
// checks the size limit: every SweepInterval, or later after a slow watermark.
func (s *Store) sweepLoop() {
	defer s.done.Done()
	t := time.NewTimer(s.opts.SweepInterval)
	defer t.Stop()
	var expired time.Time
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
			start := time.Now()
			expire := start.Sub(expired) >= maxAgeInterval
			if expire {
				expired = start
			}
			s.sweep(expire)
			t.Reset(max(s.opts.SweepInterval, sweepCostFactor*time.Duration(s.watermarkNanos.Load())))
		}
	}
}

// Sweep runs one retention pass now: expiry by MaxAge, deletion of delivered events, a look at
// the free disk space, and a log line when storage.max_bytes is reached or left (appends check
// both limits themselves, at every call and every commit). It is safe to call at any time;
// the store's own sweeps run every SweepInterval and apply MaxAge every 5 s.
func (s *Store) Sweep() { s.sweep(true) }

func (s *Store) sweep(expire bool) {
	if s.closed.Load() {
		return
	}
	if expire && s.opts.MaxAge > 0 {
		s.expire(time.Now().Add(-s.opts.MaxAge))
	}
	s.deleteDelivered()
	s.checkDisk(0)
	if s.opts.MaxBytes > 0 {
		held := s.logical.Load()
		was := s.maxReached.Swap(held >= s.opts.MaxBytes)
		if !was && held >= s.opts.MaxBytes {
			s.log.Error("storage.max_bytes reached: refusing new events until functions drain their queues", "logical_bytes", held, "storage.max_bytes", s.opts.MaxBytes)
		} else if was && held < s.opts.MaxBytes {
			s.log.Warn("storage below storage.max_bytes again: accepting events", "logical_bytes", held)
		}
	}
}

// watermark is the lowest seq any queue or DLQ still refers to: events below it can go.
//
// It reads each known function's queue and DLQ from the previous watermark on, not from their
// start: an acknowledged entry leaves a tombstone that iterators walk over until a compaction
// drops it, and the entries below the last watermark are all such tombstones (routed at 10 000
// msgs/s, that walk was 7 % of the gateway's CPU). This rests on two facts:
//   - No queue or DLQ entry with a seq below a watermark can appear after it was computed. A
//     new entry is for a new event, whose seq is above the committed seq the watermark was
//     capped by; an entry that moves (to the DLQ, back by Replay) keeps its seq, and was in
//     the snapshot, so the watermark is at or below it.
//   - Every function with an entry in the snapshot is in s.depth: applyReq creates a
//     function's depth counter before its first entry is written, and load counts those of
//     the entries found at Open.
func (s *Store) watermark() (uint64, error) {
	// Read the committed seq before the snapshot: everything at or below it is in the snapshot.
	low := s.committedSeq.Load() + 1
	from := s.lastWatermark.Load()
	s.depthMu.Lock()
	fns := make([]string, 0, len(s.depth))
	for fn := range s.depth {
		fns = append(fns, fn)
	}
	s.depthMu.Unlock()
	err := s.db.View(func(txn *badger.Txn) error {
		var key []byte
		for _, ns := range []byte{nsQueue, nsDead} {
			// One iterator per namespace, bounded by it: an iterator without a prefix skips
			// deleted keys until it finds a live one, and an empty namespace would have it
			// read every tombstone of the next (the deleted events sort right after the
			// dead letters): 117 ms a sweep after 200k deleted events, and growing.
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{ns}})
			for _, fn := range fns {
				prefix := appendFnPrefix(key[:0], ns, fn)
				key = binary.BigEndian.AppendUint64(prefix, from)
				if it.Seek(key); it.ValidForPrefix(key[:len(key)-seqKeySize]) {
					if _, seq, ok := parseFnKey(it.Item().Key()); ok {
						low = min(low, seq)
					}
				}
			}
			it.Close()
		}
		return nil
	})
	if err == nil {
		s.lastWatermark.Store(low)
	}
	return low, err
}

// deleteDelivered deletes the events below the watermark.
func (s *Store) deleteDelivered() {
	start := time.Now()
	low, err := s.watermark()
	s.watermarkNanos.Store(int64(time.Since(start)))
	if err != nil {
		s.log.Error("storage retention: computing watermark", "err", err)
		return
	}
	n, err := s.deleteEvents(func(seq uint64) bool { return seq < low })
	if err != nil {
		s.log.Error("storage retention: deleting delivered events", "err", err)
	}
	s.m.deleted.Add(n)
}

// deleteEvents deletes stand-alone events from the oldest on while del(seq) is true. It starts
// where the previous call stopped (everything below is gone already) and reads keys only.
func (s *Store) deleteEvents(del func(seq uint64) bool) (int, error) {
	// One commit's worth at a time: a batch over the request limits of a small memtable failed
	// with ErrTooLarge at every sweep, and nothing was deleted any more.
	maxBatch := min(10000, s.limits.requestEntries)
	total := 0
	for {
		var batch []*op
		var stop uint64
		err := s.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{nsEvent}})
			defer it.Close()
			for it.Seek(eventKey(s.sweptTo.Load())); it.ValidForPrefix([]byte{nsEvent}) && len(batch) < maxBatch; it.Next() {
				k := it.Item().KeyCopy(nil)
				seq := binary.BigEndian.Uint64(k[1:])
				if !del(seq) {
					stop = seq
					break
				}
				batch = append(batch, &op{key: k, delete: true, logical: -entryBytes(it.Item())})
				stop = seq + 1
			}
			return nil
		})
		if err != nil || len(batch) == 0 {
			return total, err
		}
		if err := s.write(batch, nil); err != nil {
			return total, err
		}
		// Every stand-alone event below stop is deleted now.
		if stop > s.sweptTo.Load() {
			s.sweptTo.Store(stop)
		}
		total += len(batch)
		if len(batch) < maxBatch {
			return total, nil
		}
	}
}

// expire applies the max-age safety valve: events committed before cutoff are deleted with
// their queue entries and dead letters, and this is logged as an error and counted. It reads
// every pending entry, so it runs only when storage.max_age is set.
func (s *Store) expire(cutoff time.Time) {
	limit := cutoff.UnixNano()
	// The highest seq of a stand-alone event committed before cutoff.
	var last uint64
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{nsEvent}})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix([]byte{nsEvent}); it.Next() {
			if commitNanos(it.Item()) >= limit {
				break
			}
			last = binary.BigEndian.Uint64(it.Item().Key()[1:])
		}
		return nil
	})
	if err != nil {
		return
	}
	// Queue entries and dead letters of those events, and of events stored inline that are as old.
	var ops []*op
	perFn := map[string]int{}
	inline := 0
	err = s.db.View(func(txn *badger.Txn) error {
		for _, ns := range []byte{nsQueue, nsDead} {
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{ns}}) // bounded: see watermark
			defer it.Close()
			for it.Seek([]byte{ns}); it.ValidForPrefix([]byte{ns}); it.Next() {
				fn, seq, ok := parseFnKey(it.Item().Key())
				if !ok {
					continue
				}
				old := false
				err := it.Item().Value(func(v []byte) error {
					if ns == nsDead {
						_, v, _ = decodeDead(v)
					}
					if _, _, in, ok := decodeTarget(v); ok && in != nil {
						// Stored inline: the entry is the event's only copy.
						if int64(binary.BigEndian.Uint64(in)) < limit {
							old = true
							inline++
						}
					} else {
						old = seq <= last
					}
					return nil
				})
				if err != nil {
					return err
				}
				if !old {
					continue
				}
				o := &op{key: it.Item().KeyCopy(nil), delete: true, fn: fn}
				if ns == nsQueue {
					o.dq = -1
				} else {
					o.dd = -1
				}
				ops = append(ops, o)
				perFn[fn]++
			}
		}
		return nil
	})
	if err == nil && len(ops) > 0 {
		err = s.writeChunks(ops)
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		s.log.Error("storage max_age: dropping expired queue entries", "err", err)
		return
	}
	n, err := s.deleteEvents(func(seq uint64) bool { return seq <= last })
	if err != nil {
		s.log.Error("storage max_age: deleting expired events", "err", err)
	}
	if n+inline > 0 || len(ops) > 0 {
		s.m.expired.Add(n + inline)
		s.log.Error("storage.max_age reached: events were deleted before every function received them",
			"events", n+inline, "undelivered_per_function", perFn, "cutoff", cutoff.Format(time.RFC3339))
	}
}

// commitNanos reads the commit time at the head of a stand-alone event's value.
func commitNanos(item *badger.Item) int64 {
	var at int64
	_ = item.Value(func(v []byte) error {
		if len(v) >= 8 {
			at = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return at
}

// gcLoop runs Badger's value-log garbage collection periodically.
func (s *Store) gcLoop() {
	defer s.done.Done()
	t := time.NewTicker(s.opts.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
			s.runValueLogGC()
		}
	}
}

// runValueLogGC runs Badger's value-log GC. It moves the live values of a log into the current
// one, through Badger's write path, and then deletes the old log: with Badger's own sync off
// and its memtables without a log (the store's write-ahead log does that) the moved values
// could be lost to a power cut once the old log is gone. An open iterator defers Badger's
// deletion until the memtable holding the new pointers is flushed and the value logs synced.
func (s *Store) runValueLogGC() {
	var it *badger.Iterator
	if s.wal != nil {
		txn := s.db.NewTransaction(false)
		defer txn.Discard()
		it = txn.NewIterator(badger.IteratorOptions{PrefetchValues: false})
	}
	moved := false // a run may have moved values (one that failed midway too)
	for i := 0; i < 10 && !s.closed.Load(); i++ {
		if err := s.db.RunValueLogGC(0.5); err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				s.log.Warn("storage: value log GC", "err", err)
				moved = true
			}
			break
		}
		moved = true
	}
	if it == nil {
		return
	}
	if !moved {
		// Nothing moved, no log to delete: no flush (it would write a small level-0 table
		// every GC interval under light load).
		it.Close()
		return
	}
	defer it.Close()
	for {
		// The moved values' pointers are in a memtable, which has no log of its own (the
		// store's write-ahead log does not hold GC's writes): into a table with them.
		err := s.db.FlushMemTable()
		if err == nil {
			err = syncBadgerLogs(s.opts.Dir)
		}
		if err == nil {
			return
		}
		// Badger keeps the old logs while the iterator is open; Close syncs them all again.
		s.log.Error("storage: syncing after value log GC (retrying)", "err", err)
		select {
		case <-s.closing:
			return
		case <-time.After(time.Second):
		}
	}
}
