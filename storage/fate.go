package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/fleetgate/fleetgate/event"
)

// An event's fate: what became of an event, looked up by its id. Its records have the TTL
// Options.FateTTL and are written in commits that happen anyway:
//
//	f <event id>                         → <seq:8> <rule set version uvarint>
//	    with the event (Append), only for an id a sender chose
//	a <function> 0x00 <max seq:8> <min seq:8> <nonce:4>
//	    → <delivered-at varint> <rules: count uvarint, (len uvarint, name, rule set version uvarint)…>
//	      <items: count uvarint, (<seq − previous seq varint> <id tail:8> <rule index uvarint>)…>
//	    one per Delivered call, whatever its size (the previous seq of the first item is max seq)
//	o <event id> 0x00 <function> 0x00 <kind> → <outcome>
//	    with a dead letter (DeadLetter); versions before the delivery records also wrote kind D
//	    with each delivery, and they are still read
//
// An event that came without an id gets one from the log (event.NewSeqID) that carries its
// sequence number, so it needs no index: Fate reads the number back from the id and checks it
// against what is stored for that number (the queue and dead-letter entries, the stand-alone
// event, or the delivery record, which keeps the part of each id its seq does not give).
// A delivery record is found by seeking to the event's seq in the function's records (ordered by
// the highest seq of their batch) and reading at most maxDeliveryScan of them: an event whose
// ack came more than that many acks of later events after it is reported without its delivery.
// Everything else (queued, dead-lettered, the event itself while it is stored) is read from the
// queue and dead-letter entries, which exist anyway; the rule set version is kept in the queue
// entry (and so in the dead letter) and in the delivery record.
const (
	nsFate      = 'f'
	nsOutcome   = 'o'
	nsDelivered = 'a'

	maxDeliveryScan = 10000 // delivery records Fate reads, at most, to find one event's (see above)

	outcomeDelivered = 'D'
	outcomeDead      = 'X'

	maxFateReason  = 512 // bytes of a dead letter's reason kept in its outcome record
	fateIndexBytes = 48  // estimated size of one fate index record, for the commit's accounting
)

// DefaultFateTTL is Options.FateTTL when it is not set.
const DefaultFateTTL = 24 * time.Hour

// States of an event for one function, as Fate reports them.
const (
	FateQueued       = "queued"        // in the function's queue (pending, in flight or waiting for a retry)
	FateDelivered    = "delivered"     // acknowledged by the function
	FateDeadLettered = "dead_lettered" // in the function's dead letters
	FatePurged       = "purged"        // was dead-lettered; the dead letter is gone (purged, or storage.max_age)
)

// Fate is what became of one event.
type Fate struct {
	ID          string
	Seq         uint64
	RuleVersion int       // the rule set version that routed the event (0: not known)
	Event       EventInfo // zero when the event is no longer described anywhere
	Functions   []FunctionFate
}

// EventInfo describes an event without its payload.
type EventInfo struct {
	Topic, Subject, Tenant, Protocol, ContentType string
	Time                                          time.Time
	PayloadSize                                   int
}

// FunctionFate is an event's state for one function its rules chose.
type FunctionFate struct {
	Function string
	Rule     string
	State    string // FateQueued, FateDelivered, FateDeadLettered or FatePurged
	// DeliveredAt is set once the function acknowledged the event.
	DeliveredAt time.Time
	// Attempts, LastError and DeadLetteredAt describe the last time the event was
	// dead-lettered, if it was (also after a replay).
	Attempts       int
	LastError      string
	DeadLetteredAt time.Time
}

// fateOn reports whether fate records are written.
func (s *Store) fateOn() bool { return s.opts.FateTTL > 0 }

// fateID reports whether id can key fate records (ids are ULIDs unless a sender chose them).
func fateID(id string) bool { return id != "" && len(id) <= 255 && !strings.ContainsRune(id, 0) }

// putFateIndex writes the id → seq record of a newly appended event into txn.
func (s *Store) putFateIndex(txn *walTxn, e *Entry) error {
	if !fateID(e.Event.ID) {
		return nil
	}
	var version uint64
	if len(e.Targets) > 0 && e.Targets[0].RuleVersion > 0 {
		version = uint64(e.Targets[0].RuleVersion)
	}
	kv := make([]byte, 0, 1+len(e.Event.ID)+8+binary.MaxVarintLen64)
	kv = append(kv, nsFate)
	kv = append(kv, e.Event.ID...)
	k := kv[:len(kv):len(kv)]
	kv = binary.BigEndian.AppendUint64(kv, e.Seq)
	kv = binary.AppendUvarint(kv, version)
	if err := txn.SetEntry(badger.NewEntry(k, kv[len(k):]).WithTTL(s.opts.FateTTL)); err != nil {
		return fmt.Errorf("storing fate index: %w", err)
	}
	return nil
}

func fateKey(id string) []byte { return append([]byte{nsFate}, id...) }

func outcomePrefix(id string) []byte {
	k := make([]byte, 0, 2+len(id))
	k = append(k, nsOutcome)
	k = append(k, id...)
	return append(k, 0)
}

// outcomeOp is the op that records an outcome of it for function, or nil when fate records
// are off or the item does not carry its event.
func (s *Store) outcomeOp(function string, kind byte, it *Item, at time.Time, attempts int, reason string) *op {
	if !s.fateOn() || it.Event == nil || !fateID(it.Event.ID) {
		return nil
	}
	ev := it.Event
	k := outcomePrefix(ev.ID)
	k = append(k, function...)
	k = append(k, 0, kind)
	if len(reason) > maxFateReason {
		reason = reason[:maxFateReason]
	}
	v := make([]byte, 0, 48+len(it.Rule)+len(reason)+len(ev.Topic)+len(ev.Subject)+len(ev.Tenant)+len(ev.Protocol)+len(ev.ContentType))
	v = binary.AppendUvarint(v, it.Seq)
	v = binary.AppendVarint(v, at.UnixNano())
	v = binary.AppendUvarint(v, uint64(max(attempts, 0)))
	for _, str := range []string{it.Rule, reason, ev.Topic, ev.Subject, ev.Tenant, ev.Protocol, ev.ContentType} {
		v = binary.AppendUvarint(v, uint64(len(str)))
		v = append(v, str...)
	}
	v = binary.AppendVarint(v, ev.Time.UnixNano())
	v = binary.AppendUvarint(v, uint64(len(ev.Data)))
	return &op{key: k, value: v, ttl: s.opts.FateTTL}
}

// outcome is a decoded outcome record.
type outcome struct {
	seq      uint64
	at       time.Time
	attempts int
	rule     string
	reason   string
	info     EventInfo
}

func decodeOutcome(v []byte) (o outcome, ok bool) {
	uv := func() uint64 {
		x, n := binary.Uvarint(v)
		if n <= 0 {
			ok = false
			return 0
		}
		v = v[n:]
		return x
	}
	sv := func() int64 {
		x, n := binary.Varint(v)
		if n <= 0 {
			ok = false
			return 0
		}
		v = v[n:]
		return x
	}
	str := func() string {
		l := uv()
		if !ok || uint64(len(v)) < l {
			ok = false
			return ""
		}
		s := string(v[:l])
		v = v[l:]
		return s
	}
	ok = true
	o.seq = uv()
	o.at = time.Unix(0, sv()).UTC()
	o.attempts = int(uv())
	o.rule, o.reason = str(), str()
	o.info.Topic, o.info.Subject, o.info.Tenant, o.info.Protocol, o.info.ContentType = str(), str(), str(), str(), str()
	o.info.Time = time.Unix(0, sv()).UTC()
	o.info.PayloadSize = int(uv())
	return o, ok
}

func infoOf(ev *event.Event) EventInfo {
	return EventInfo{Topic: ev.Topic, Subject: ev.Subject, Tenant: ev.Tenant, Protocol: ev.Protocol,
		ContentType: ev.ContentType, Time: ev.Time, PayloadSize: len(ev.Data)}
}

// Fate returns what became of the event with this id: for each function its rules chose,
// whether it is queued, delivered or dead-lettered. An event can be looked up while it is
// queued or dead-lettered, for FateTTL after each delivery or dead-lettering, and, when its
// sender chose its id, for FateTTL after it was appended; after that, or for an unknown id
// (also a ULID that decodes to the seq of another event), or with fate records off, the error
// is ErrNotFound. It reads a few entries per function, and at most maxDeliveryScan delivery
// records per function.
func (s *Store) Fate(id string) (Fate, error) {
	if s.closed.Load() {
		return Fate{}, ErrClosed
	}
	if !s.fateOn() {
		return Fate{}, fmt.Errorf("event %q: %w: event fates are not recorded (storage.fate_ttl is 0)", id, ErrNotFound)
	}
	if !fateID(id) {
		return Fate{}, fmt.Errorf("event %q: %w", id, ErrNotFound)
	}
	f := Fate{ID: id}
	known := s.Functions()
	err := s.db.View(func(txn *badger.Txn) error {
		// found: a record names id itself (the index of an id a sender chose, or an outcome
		// record), so f.Seq is its seq. Otherwise id may be one the log made (event.NewSeqID):
		// its seq is read from it and trusted only once what is stored for that seq has this id.
		found := false
		item, err := txn.Get(fateKey(id))
		switch {
		case err == nil:
			err = item.Value(func(v []byte) error {
				if len(v) < 8 {
					return fmt.Errorf("fate index of %q: %w", id, event.ErrCorrupt)
				}
				f.Seq = binary.BigEndian.Uint64(v)
				if ver, n := binary.Uvarint(v[8:]); n > 0 {
					f.RuleVersion = int(ver)
				}
				return nil
			})
			if err != nil {
				return err
			}
			found = true
		case !errors.Is(err, badger.ErrKeyNotFound):
			return err
		}
		// Outcome records, by function.
		type pair struct{ delivered, dead *outcome }
		outcomes := map[string]*pair{}
		prefix := outcomePrefix(id)
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 16, Prefix: prefix})
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			rest := it.Item().Key()[len(prefix):]
			if len(rest) < 3 || rest[len(rest)-2] != 0 {
				continue
			}
			fn, kind := string(rest[:len(rest)-2]), rest[len(rest)-1]
			var o outcome
			ok := false
			if err := it.Item().Value(func(v []byte) error { o, ok = decodeOutcome(v); return nil }); err != nil {
				it.Close()
				return err
			}
			if !ok {
				continue
			}
			p := outcomes[fn]
			if p == nil {
				p = &pair{}
				outcomes[fn] = p
			}
			if kind == outcomeDelivered {
				p.delivered = &o
			} else if kind == outcomeDead {
				p.dead = &o
			}
			if !found {
				f.Seq, found = o.seq, true
			}
		}
		it.Close()
		verified := found
		if !found {
			seq, _, ok := event.ParseSeqID(id)
			if !ok {
				return ErrNotFound
			}
			f.Seq = seq
		}
		// other reports whether ev, stored under f.Seq, is another event than id's.
		other := func(ev *event.Event) bool {
			if found || ev == nil {
				return false
			}
			if ev.ID != id {
				return true
			}
			verified = true
			return false
		}
		fns := map[string]bool{}
		for _, fn := range known {
			fns[fn] = true
		}
		for _, fn := range deliveryFunctions(txn) {
			fns[fn] = true // a function whose queue is empty now (and after a reopen, unknown)
		}
		for fn := range outcomes {
			fns[fn] = true
		}
		names := make([]string, 0, len(fns))
		for fn := range fns {
			names = append(names, fn)
		}
		sort.Strings(names)
		haveInfo := false
		for _, fn := range names {
			ff := FunctionFate{Function: fn}
			var qi Item
			stored := false
			if v, err := getValue(txn, fnKey(nsQueue, fn, f.Seq)); err == nil {
				ff.State, stored = FateQueued, true
				qi, err = decodeItem(txn, fn, f.Seq, v)
				if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, event.ErrCorrupt) {
					return err
				}
				if other(qi.Event) {
					return ErrNotFound
				}
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			} else if v, err := getValue(txn, fnKey(nsDead, fn, f.Seq)); err == nil {
				l, target, ok := decodeDead(v)
				if ok {
					ff.State, stored = FateDeadLettered, true
					ff.Attempts, ff.LastError, ff.DeadLetteredAt = l.Attempts, l.Reason, l.At
					qi, err = decodeItem(txn, fn, f.Seq, target)
					if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, event.ErrCorrupt) {
						return err
					}
					if other(qi.Event) {
						return ErrNotFound
					}
				}
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			var deliveredAt time.Time
			if !stored {
				d, ok, err := findDelivery(txn, fn, f.Seq)
				if err != nil {
					return err
				}
				if ok && !found {
					if d.tail == 0 || event.SeqIDFrom(f.Seq, d.tail) != id {
						return ErrNotFound // seq was delivered, as another event
					}
					verified = true
				}
				if ok {
					deliveredAt, ff.Rule = d.at, d.rule
					if f.RuleVersion == 0 {
						f.RuleVersion = d.version
					}
				}
			}
			p := outcomes[fn]
			if !stored && p == nil && deliveredAt.IsZero() {
				continue // not chosen for this function (or long forgotten)
			}
			if stored {
				ff.Rule = qi.Rule
				if f.RuleVersion == 0 {
					f.RuleVersion = qi.RuleVersion
				}
				if qi.Event != nil && !haveInfo {
					f.Event, haveInfo = infoOf(qi.Event), true
				}
			}
			if p != nil {
				for _, o := range []*outcome{p.dead, p.delivered} {
					if o == nil {
						continue
					}
					if ff.Rule == "" {
						ff.Rule = o.rule
					}
					if !haveInfo {
						f.Event, haveInfo = o.info, true
					}
				}
				if p.dead != nil && ff.State != FateDeadLettered {
					ff.Attempts, ff.LastError, ff.DeadLetteredAt = p.dead.attempts, p.dead.reason, p.dead.at
				}
				if !stored && deliveredAt.IsZero() {
					switch {
					case p.delivered != nil:
						ff.State, ff.DeliveredAt = FateDelivered, p.delivered.at
					default:
						ff.State = FatePurged
					}
				}
			}
			if !stored && !deliveredAt.IsZero() {
				ff.State, ff.DeliveredAt = FateDelivered, deliveredAt
			}
			f.Functions = append(f.Functions, ff)
		}
		if !haveInfo {
			// No function holds it (none was chosen, or all are done): the stand-alone event, if
			// retention has not deleted it yet.
			if ev, err := getEvent(txn, f.Seq); err == nil {
				if other(ev) {
					return ErrNotFound
				}
				f.Event = infoOf(ev)
			}
		}
		if !verified {
			return ErrNotFound
		}
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return Fate{}, fmt.Errorf("event %q: %w (unknown, or older than storage.fate_ttl)", id, ErrNotFound)
	}
	if err != nil {
		return Fate{}, fmt.Errorf("reading the fate of event %q: %w", id, err)
	}
	return f, nil
}

func getValue(txn *badger.Txn, key []byte) ([]byte, error) {
	item, err := txn.Get(key)
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}

// Delivered acknowledges items the function received (as Ack does: they leave its queue) and,
// with fate records on, records the delivery in the fates of their events, in the same durable
// commit (one record for the whole call; when the items are more than one commit holds, they
// go in several and the record in the last). Items not in the queue are ignored (their delivery
// is still recorded).
func (s *Store) Delivered(function string, items []Item) error {
	if len(items) == 0 {
		return nil
	}
	backing := make([]op, len(items))
	ops := make([]*op, len(items), len(items)+1)
	for i := range items {
		backing[i] = op{key: fnKey(nsQueue, function, items[i].Seq), delete: true, fn: function, dq: -1}
		ops[i] = &backing[i]
	}
	if o := s.deliveryOp(function, items, time.Now()); o != nil {
		ops = append(ops, o)
	}
	// One commit, unless the batch is more than one commit holds (max_events on a small
	// memtable): then in several, the delivery record in the last.
	if err := s.writeChunks(ops); err != nil {
		return fmt.Errorf("acknowledging %d items of %q: %w", len(items), function, err)
	}
	return nil
}

const deliveryKeyTail = 8 + 8 + 4 // max seq, min seq, nonce

// deliveryOp is the op that records the delivery of items to function at at, or nil when fate
// records are off.
func (s *Store) deliveryOp(function string, items []Item, at time.Time) *op {
	if !s.fateOn() {
		return nil
	}
	lo, hi := items[0].Seq, items[0].Seq
	for i := range items {
		lo, hi = min(lo, items[i].Seq), max(hi, items[i].Seq)
	}
	k := make([]byte, 0, 2+len(function)+deliveryKeyTail)
	k = append(k, nsDelivered)
	k = append(k, function...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, hi)
	k = binary.BigEndian.AppendUint64(k, lo)
	k = binary.BigEndian.AppendUint32(k, rand.Uint32()) // two calls may ack the same seqs (a replay)
	// The rules of the batch with their rule set versions, each once (a batch rarely holds
	// more than a few).
	type ruleAt struct {
		name    string
		version int
	}
	var small [8]ruleAt
	rules := small[:0]
	ruleBytes := 0
	idx := func(it *Item) int {
		for j, r := range rules {
			if r.name == it.Rule && r.version == it.RuleVersion {
				return j
			}
		}
		rules = append(rules, ruleAt{it.Rule, it.RuleVersion})
		ruleBytes += len(it.Rule)
		return len(rules) - 1
	}
	for i := range items {
		idx(&items[i])
	}
	v := make([]byte, 0, 3*binary.MaxVarintLen64+ruleBytes+len(rules)*6+len(items)*(3+8+1))
	v = binary.AppendVarint(v, at.UnixNano())
	v = binary.AppendUvarint(v, uint64(len(rules)))
	for _, r := range rules {
		v = binary.AppendUvarint(v, uint64(len(r.name)))
		v = append(v, r.name...)
		v = binary.AppendUvarint(v, uint64(max(r.version, 0)))
	}
	v = binary.AppendUvarint(v, uint64(len(items)))
	prev := hi
	for i := range items {
		seq := items[i].Seq
		v = binary.AppendVarint(v, int64(seq-prev))
		prev = seq
		var tail uint64 // 0: the event's id is not one the log made for this seq
		if ev := items[i].Event; ev != nil {
			if idSeq, t, ok := event.ParseSeqID(ev.ID); ok && idSeq == seq {
				tail = t
			}
		}
		v = binary.BigEndian.AppendUint64(v, tail)
		v = binary.AppendUvarint(v, uint64(idx(&items[i])))
	}
	return &op{key: k, value: v, ttl: s.opts.FateTTL}
}

// deliveryFunctions lists the functions that have delivery records, with one seek each.
func deliveryFunctions(txn *badger.Txn) []string {
	prefix := []byte{nsDelivered}
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	var fns []string
	for it.Rewind(); it.ValidForPrefix(prefix); {
		k := it.Item().Key()
		end := len(k) - deliveryKeyTail - 1
		if end < 1 || k[end] != 0 {
			it.Next()
			continue
		}
		fn := string(k[1:end])
		fns = append(fns, fn)
		next := fnPrefix(nsDelivered, fn)
		next[len(next)-1] = 1 // past every key of fn
		it.Seek(next)
	}
	return fns
}

// delivery is what a delivery record says about one event.
type delivery struct {
	at      time.Time
	tail    uint64 // the event id's tail (event.ParseSeqID), 0 when the log did not make the id
	rule    string
	version int // of the rule set (0: not known)
}

// findDelivery looks for the delivery record of seq to function (see maxDeliveryScan).
func findDelivery(txn *badger.Txn, function string, seq uint64) (d delivery, found bool, err error) {
	prefix := fnPrefix(nsDelivered, function)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	n := 0
	for it.Seek(fnKey(nsDelivered, function, seq)); it.ValidForPrefix(prefix) && n < maxDeliveryScan; it.Next() {
		n++
		k := it.Item().Key()[len(prefix):]
		if len(k) != deliveryKeyTail || binary.BigEndian.Uint64(k[8:16]) > seq {
			continue
		}
		hi := binary.BigEndian.Uint64(k)
		err = it.Item().Value(func(v []byte) error {
			d, found = scanDelivery(v, hi, seq)
			return nil
		})
		if err != nil || found {
			return d, found, err
		}
	}
	return delivery{}, false, nil
}

// scanDelivery looks for seq in a delivery record value of a batch whose highest seq is hi.
func scanDelivery(v []byte, hi, seq uint64) (d delivery, found bool) {
	uv := func() (uint64, bool) {
		x, n := binary.Uvarint(v)
		if n <= 0 {
			return 0, false
		}
		v = v[n:]
		return x, true
	}
	nanos, n := binary.Varint(v)
	if n <= 0 {
		return d, false
	}
	v = v[n:]
	nrules, ok := uv()
	if !ok || nrules > uint64(len(v)) {
		return d, false
	}
	rules := make([][]byte, nrules)
	versions := make([]uint64, nrules)
	for i := range rules {
		l, ok := uv()
		if !ok || l > uint64(len(v)) {
			return d, false
		}
		rules[i], v = v[:l], v[l:]
		if versions[i], ok = uv(); !ok || versions[i] > 1<<31 {
			return d, false
		}
	}
	count, ok := uv()
	if !ok {
		return d, false
	}
	prev := hi
	for range count {
		delta, n := binary.Varint(v)
		if n <= 0 || len(v) < n+8 {
			return d, false
		}
		prev += uint64(delta)
		tail := binary.BigEndian.Uint64(v[n:])
		v = v[n+8:]
		ri, ok := uv()
		if !ok || ri >= nrules {
			return d, false
		}
		if prev == seq {
			return delivery{at: time.Unix(0, nanos).UTC(), tail: tail, rule: string(rules[ri]), version: int(versions[ri])}, true
		}
	}
	return d, false
}

// PurgeDeadLetters deletes dead letters of function, durably: those dead-lettered before
// before (any time when zero) and, when seqs is not nil, only those seqs. It returns how many
// it deleted. The dead-letter depth follows.
func (s *Store) PurgeDeadLetters(function string, before time.Time, seqs []uint64) (int, error) {
	if s.closed.Load() {
		return 0, ErrClosed
	}
	if !validFunction(function) {
		return 0, fmt.Errorf("purging dead letters: %w: function name %q", ErrInvalid, function)
	}
	keep := func(v []byte) bool {
		if before.IsZero() {
			return true
		}
		l, _, ok := decodeDead(v)
		return !ok || l.At.Before(before) // an unreadable dead letter is purged too
	}
	const chunk = 5000
	purged := 0
	del := func(ops []*op) error {
		if len(ops) == 0 {
			return nil
		}
		if err := s.write(ops, nil); err != nil {
			return err
		}
		for _, o := range ops {
			if o.applied {
				purged++
			}
		}
		return nil
	}
	delOp := func(seq uint64) *op {
		return &op{key: fnKey(nsDead, function, seq), delete: true, fn: function, dd: -1}
	}
	if seqs != nil {
		seqs = append([]uint64(nil), seqs...)
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		for len(seqs) > 0 {
			n := min(chunk, len(seqs))
			var ops []*op
			err := s.db.View(func(txn *badger.Txn) error {
				for _, seq := range seqs[:n] {
					v, err := getValue(txn, fnKey(nsDead, function, seq))
					if errors.Is(err, badger.ErrKeyNotFound) {
						continue
					}
					if err != nil {
						return err
					}
					if keep(v) {
						ops = append(ops, delOp(seq))
					}
				}
				return nil
			})
			if err == nil {
				err = del(ops)
			}
			if err != nil {
				return purged, fmt.Errorf("purging dead letters of %q: %w", function, err)
			}
			seqs = seqs[n:]
		}
		return purged, nil
	}
	var after uint64
	for {
		var ops []*op
		scanned := 0
		err := s.db.View(func(txn *badger.Txn) error {
			return scanFn(txn, nsDead, function, after, chunk, func(seq uint64, v []byte) error {
				scanned++
				after = seq
				if keep(v) {
					ops = append(ops, delOp(seq))
				}
				return nil
			})
		})
		if err == nil {
			err = del(ops)
		}
		if err != nil {
			return purged, fmt.Errorf("purging dead letters of %q: %w", function, err)
		}
		if scanned < chunk {
			return purged, nil
		}
	}
}
