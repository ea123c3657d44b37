package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/fleetgate/fleetgate/event"
)

// Item is one pending delivery of an event to a function.
type Item struct {
	Seq      uint64
	Function string
	Rule     string
	// RuleVersion is the version of the rule set that chose the function (0: not known).
	RuleVersion int
	Event       *event.Event
	Data        []byte // the rule's select output, or Event.Data
}

// ItemFromEntry builds the Item a committed entry makes for target t, without reading storage
// (the hot tail of the dispatcher).
func ItemFromEntry(e *Entry, t Target) Item {
	data := t.Data
	if data == nil {
		data = e.Event.Data
	}
	return Item{Seq: e.Seq, Function: t.Function, Rule: t.Rule, RuleVersion: t.RuleVersion, Event: e.Event, Data: data}
}

// DeadLetter is an event a function gave up on, with why.
type DeadLetter struct {
	Seq      uint64
	Attempts int
	Reason   string
	At       time.Time
	Item     Item // filled by DeadLetters; given to Store.DeadLetter, its event is described in the event's fate
}

// ReadQueue returns up to max pending items of function with Seq > afterSeq, in Seq order.
func (s *Store) ReadQueue(function string, afterSeq uint64, max int) ([]Item, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	if !validFunction(function) {
		return nil, fmt.Errorf("reading queue: %w: function name %q", ErrInvalid, function)
	}
	var items []Item
	err := s.db.View(func(txn *badger.Txn) error {
		return scanFn(txn, nsQueue, function, afterSeq, max, func(seq uint64, v []byte) error {
			it, err := decodeItem(txn, function, seq, v)
			if errors.Is(err, ErrNotFound) || errors.Is(err, event.ErrCorrupt) {
				s.log.Error("storage: unreadable queue entry skipped", "function", function, "seq", seq, "err", err)
				return nil
			}
			if err != nil {
				return err
			}
			items = append(items, it)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("reading queue of %q: %w", function, err)
	}
	return items, nil
}

// scanFn calls fn for the entries of a function's queue or DLQ with seq > after, up to max (≤0: all).
func scanFn(txn *badger.Txn, ns byte, function string, after uint64, max int, fn func(seq uint64, v []byte) error) error {
	prefix := fnPrefix(ns, function)
	it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 100, Prefix: prefix})
	defer it.Close()
	n := 0
	for it.Seek(fnKey(ns, function, after+1)); it.ValidForPrefix(prefix); it.Next() {
		_, seq, ok := parseFnKey(it.Item().Key())
		if !ok {
			continue
		}
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			return err
		}
		if err := fn(seq, v); err != nil {
			return err
		}
		n++
		if max > 0 && n >= max {
			break
		}
	}
	return nil
}

// decodeItem builds the Item of a queue entry value v: the event inline in v, or read from its
// own key.
func decodeItem(txn *badger.Txn, function string, seq uint64, v []byte) (Item, error) {
	rule, version, data, inline, ok := decodeTargetVersion(v)
	if !ok {
		return Item{}, fmt.Errorf("queue entry %d of %q: %w", seq, function, event.ErrCorrupt)
	}
	var ev *event.Event
	if inline != nil {
		ev = &event.Event{}
		if err := event.Decode(inline[8:], ev); err != nil {
			return Item{}, fmt.Errorf("event %d: %w", seq, err)
		}
	} else {
		var err error
		if ev, err = getEvent(txn, seq); err != nil {
			return Item{}, err
		}
	}
	if data == nil {
		data = ev.Data
	} else {
		data = append([]byte(nil), data...)
	}
	return Item{Seq: seq, Function: function, Rule: rule, RuleVersion: version, Event: ev, Data: data}, nil
}

func getEvent(txn *badger.Txn, seq uint64) (*event.Event, error) {
	item, err := txn.Get(eventKey(seq))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	ev := &event.Event{}
	err = item.Value(func(v []byte) error {
		if len(v) < 8 {
			return fmt.Errorf("event %d: %w", seq, event.ErrCorrupt)
		}
		return event.Decode(v[8:], ev)
	})
	return ev, err
}

// Ack removes delivered items from function's queue, durably. Unknown seqs are ignored.
func (s *Store) Ack(function string, seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	ops := make([]*op, len(seqs))
	for i, seq := range seqs {
		ops[i] = &op{key: fnKey(nsQueue, function, seq), delete: true, fn: function, dq: -1}
	}
	if err := s.writeChunks(ops); err != nil { // one commit unless over one commit's limits
		return fmt.Errorf("acknowledging %d items of %q: %w", len(seqs), function, err)
	}
	return nil
}

// DeadLetter moves items from function's queue to its dead-letter queue with their reasons,
// durably, in one commit (in several, each letter whole, when they are more than one commit
// holds). Seqs not in the queue are ignored. Letters whose Item carries its event are also
// recorded in the event's fate, in the same commit as their move.
func (s *Store) DeadLetter(function string, letters []DeadLetter) error {
	ops := make([]*op, len(letters))
	groups := make([][]*op, len(letters))
	for i, l := range letters {
		at := l.At
		if at.IsZero() {
			at = time.Now()
		}
		head := binary.AppendUvarint(nil, uint64(max(l.Attempts, 0)))
		head = binary.AppendVarint(head, at.UnixNano())
		head = binary.AppendUvarint(head, uint64(len(l.Reason)))
		head = append(head, l.Reason...)
		ops[i] = &op{
			key: fnKey(nsQueue, function, l.Seq), moveTo: fnKey(nsDead, function, l.Seq),
			wrap: func(old []byte) []byte { return append(head, old...) },
			fn:   function, dq: -1, dd: 1,
		}
	}
	for i, l := range letters {
		groups[i] = ops[i : i+1 : i+1]
		it, at := l.Item, l.At
		it.Seq = l.Seq
		if at.IsZero() {
			at = time.Now()
		}
		if o := s.outcomeOp(function, outcomeDead, &it, at, l.Attempts, l.Reason); o != nil {
			groups[i] = append(groups[i], o)
		}
	}
	if err := s.writeGroups(groups); err != nil {
		return fmt.Errorf("dead-lettering %d items of %q: %w", len(letters), function, err)
	}
	return nil
}

// decodeDead splits a dead-letter value into its record and the queue entry it came from.
func decodeDead(v []byte) (l DeadLetter, target []byte, ok bool) {
	attempts, n := binary.Uvarint(v)
	if n <= 0 {
		return l, nil, false
	}
	v = v[n:]
	at, n := binary.Varint(v)
	if n <= 0 {
		return l, nil, false
	}
	v = v[n:]
	rl, n := binary.Uvarint(v)
	if n <= 0 || uint64(len(v)-n) < rl {
		return l, nil, false
	}
	l.Attempts, l.At, l.Reason = int(attempts), time.Unix(0, at).UTC(), string(v[n:n+int(rl)])
	return l, v[n+int(rl):], true
}

// DeadLetters lists up to max dead letters of function with Seq > afterSeq, in Seq order.
func (s *Store) DeadLetters(function string, afterSeq uint64, max int) ([]DeadLetter, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	var out []DeadLetter
	err := s.db.View(func(txn *badger.Txn) error {
		return scanFn(txn, nsDead, function, afterSeq, max, func(seq uint64, v []byte) error {
			l, target, ok := decodeDead(v)
			if !ok {
				s.log.Error("storage: corrupt dead letter skipped", "function", function, "seq", seq)
				return nil
			}
			it, err := decodeItem(txn, function, seq, target)
			if errors.Is(err, event.ErrCorrupt) {
				s.log.Error("storage: corrupt dead letter skipped", "function", function, "seq", seq, "err", err)
				return nil
			}
			if err != nil {
				return err
			}
			l.Seq, l.Item = seq, it
			out = append(out, l)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("listing dead letters of %q: %w", function, err)
	}
	return out, nil
}

// Replay moves dead letters of function back to its queue (all of them when seqs is nil),
// durably, and returns the items moved, in Seq order.
func (s *Store) Replay(function string, seqs []uint64) ([]Item, error) {
	if seqs == nil {
		err := s.db.View(func(txn *badger.Txn) error {
			return scanFn(txn, nsDead, function, 0, 0, func(seq uint64, _ []byte) error {
				seqs = append(seqs, seq)
				return nil
			})
		})
		if err != nil {
			return nil, fmt.Errorf("replaying dead letters of %q: %w", function, err)
		}
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	var moved []uint64
	const chunk = 5000
	for len(seqs) > 0 {
		n := min(chunk, len(seqs))
		ops := make([]*op, n)
		for i, seq := range seqs[:n] {
			ops[i] = &op{
				key: fnKey(nsDead, function, seq), moveTo: fnKey(nsQueue, function, seq),
				wrap: func(old []byte) []byte {
					_, target, ok := decodeDead(old)
					if !ok {
						return encodeTarget(nil, "", 0, nil, nil)
					}
					return target
				},
				fn: function, dq: 1, dd: -1,
			}
		}
		if err := s.write(ops, nil); err != nil {
			return nil, fmt.Errorf("replaying dead letters of %q: %w", function, err)
		}
		for i, o := range ops {
			if o.applied {
				moved = append(moved, seqs[i])
			}
		}
		seqs = seqs[n:]
	}
	items := make([]Item, 0, len(moved))
	err := s.db.View(func(txn *badger.Txn) error {
		for _, seq := range moved {
			item, err := txn.Get(fnKey(nsQueue, function, seq))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue // already delivered and acknowledged
			}
			if err != nil {
				return err
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			it, err := decodeItem(txn, function, seq, v)
			if err != nil {
				return err
			}
			items = append(items, it)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading replayed items of %q: %w", function, err)
	}
	return items, nil
}

// QueueDepth is the number of items pending for function.
func (s *Store) QueueDepth(function string) int64 { return s.counter(function).queue.Load() }

// DeadLetterDepth is the number of dead letters of function.
func (s *Store) DeadLetterDepth(function string) int64 { return s.counter(function).dead.Load() }

// Functions lists the functions that have (or had, since Open) a queue or dead letters.
func (s *Store) Functions() []string {
	s.depthMu.Lock()
	defer s.depthMu.Unlock()
	out := make([]string, 0, len(s.depth))
	for fn := range s.depth {
		out = append(out, fn)
	}
	sort.Strings(out)
	return out
}

// LastSeq is the highest sequence number committed so far.
func (s *Store) LastSeq() uint64 { return s.committedSeq.Load() }

// eventAt reads the event stored under seq (ErrNotFound once retention deleted it).
func (s *Store) eventAt(seq uint64) (*event.Event, error) {
	var ev *event.Event
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		ev, err = getEvent(txn, seq)
		return err
	})
	return ev, err
}

// DropQueue deletes every queue entry and dead letter of function, durably, and returns how
// many of each it deleted. It is for a function that was removed from the configuration: its
// entries would otherwise keep the log from shrinking forever.
func (s *Store) DropQueue(function string) (queued, dead int, err error) {
	if !validFunction(function) {
		return 0, 0, fmt.Errorf("dropping queue: %w: function name %q", ErrInvalid, function)
	}
	for _, ns := range []byte{nsQueue, nsDead} {
		for {
			var ops []*op
			err := s.db.View(func(txn *badger.Txn) error {
				prefix := fnPrefix(ns, function)
				it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: prefix})
				defer it.Close()
				for it.Rewind(); it.ValidForPrefix(prefix) && len(ops) < 5000; it.Next() {
					o := &op{key: it.Item().KeyCopy(nil), delete: true, fn: function}
					if ns == nsQueue {
						o.dq = -1
					} else {
						o.dd = -1
					}
					ops = append(ops, o)
				}
				return nil
			})
			if err == nil && len(ops) > 0 {
				err = s.write(ops, nil)
			}
			if err != nil {
				return queued, dead, fmt.Errorf("dropping the queue of %q: %w", function, err)
			}
			for _, o := range ops {
				if !o.applied {
					continue
				}
				if ns == nsQueue {
					queued++
				} else {
					dead++
				}
			}
			if len(ops) < 5000 {
				break
			}
		}
	}
	s.log.Warn("storage: queue dropped", "function", function, "queued", queued, "dead_letters", dead)
	return queued, dead, nil
}
