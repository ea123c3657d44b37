package storage

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/fleetgate/fleetgate/event"
)

// The wire form of an entry, for backends that ship entries as messages (cluster mode's
// JetStream log): <format byte 1><targets uvarint>{<function len uvarint><function>
// <target len uvarint><encodeTarget without inline event>}<event encoding>. A dead letter is
// <format byte 2><attempts uvarint><at varint unix nanos><reason len uvarint><reason><entry>,
// where the entry names the one function it was dead-lettered by.
const (
	wireEntry      = 1
	wireDeadLetter = 2
)

// ErrWire is returned by DecodeEntry and DecodeDeadLetter for bytes they cannot read.
var ErrWire = errors.New("storage: unreadable entry encoding")

// AppendEntry appends the wire form of e (its event and targets; not Seq nor the key).
func AppendEntry(dst []byte, e *Entry) []byte {
	dst = append(dst, wireEntry)
	dst = binary.AppendUvarint(dst, uint64(len(e.Targets)))
	var t []byte
	for _, tg := range e.Targets {
		dst = binary.AppendUvarint(dst, uint64(len(tg.Function)))
		dst = append(dst, tg.Function...)
		t = encodeTarget(t[:0], tg.Rule, tg.RuleVersion, tg.Data, nil)
		dst = binary.AppendUvarint(dst, uint64(len(t)))
		dst = append(dst, t...)
	}
	return e.Event.AppendBinary(dst)
}

// DecodeEntry reads what AppendEntry wrote. The entry's slices may alias b.
func DecodeEntry(b []byte) (*Entry, error) {
	n, b, ok := wireHeader(b, wireEntry)
	if !ok {
		return nil, ErrWire
	}
	e := &Entry{Targets: make([]Target, 0, n)}
	for i := uint64(0); i < n; i++ {
		fn, rest, ok := wireBytes(b)
		if !ok {
			return nil, ErrWire
		}
		tb, rest, ok := wireBytes(rest)
		if !ok {
			return nil, ErrWire
		}
		rule, version, data, inline, ok := decodeTargetVersion(tb)
		if !ok || len(inline) != 0 || !validFunction(string(fn)) {
			return nil, ErrWire
		}
		e.Targets = append(e.Targets, Target{Function: string(fn), Rule: rule, RuleVersion: version, Data: data})
		b = rest
	}
	e.Event = new(event.Event)
	if err := event.Decode(b, e.Event); err != nil {
		return nil, errors.Join(ErrWire, err)
	}
	return e, nil
}

// AppendDeadLetter appends the wire form of l, whose Item is the dead-lettered delivery.
func AppendDeadLetter(dst []byte, l DeadLetter) []byte {
	at := l.At
	if at.IsZero() {
		at = time.Now()
	}
	dst = append(dst, wireDeadLetter)
	dst = binary.AppendUvarint(dst, uint64(max(l.Attempts, 0)))
	dst = binary.AppendVarint(dst, at.UnixNano())
	dst = binary.AppendUvarint(dst, uint64(len(l.Reason)))
	dst = append(dst, l.Reason...)
	it := l.Item
	var data []byte
	if it.Data != nil && (it.Event == nil || !sameBytes(it.Data, it.Event.Data)) {
		data = it.Data // the rule's select output
	}
	ev := it.Event
	if ev == nil {
		ev = &event.Event{}
	}
	return AppendEntry(dst, &Entry{Event: ev, Targets: []Target{{Function: it.Function, Rule: it.Rule, RuleVersion: it.RuleVersion, Data: data}}})
}

// DecodeDeadLetter reads what AppendDeadLetter wrote (Seq is left 0: the caller knows it).
func DecodeDeadLetter(b []byte) (DeadLetter, error) {
	var l DeadLetter
	if len(b) == 0 || b[0] != wireDeadLetter {
		return l, ErrWire
	}
	b = b[1:]
	attempts, w := binary.Uvarint(b)
	if w <= 0 {
		return l, ErrWire
	}
	b = b[w:]
	at, w := binary.Varint(b)
	if w <= 0 {
		return l, ErrWire
	}
	b = b[w:]
	reason, rest, ok := wireBytes(b)
	if !ok {
		return l, ErrWire
	}
	e, err := DecodeEntry(rest)
	if err != nil {
		return l, err
	}
	if len(e.Targets) != 1 {
		return l, ErrWire
	}
	l.Attempts, l.At, l.Reason = int(min(attempts, 1<<31)), time.Unix(0, at).UTC(), string(reason)
	l.Item = ItemFromEntry(e, e.Targets[0])
	return l, nil
}

// wireHeader reads a format byte and a count (of at most one per byte left).
func wireHeader(b []byte, format byte) (n uint64, rest []byte, ok bool) {
	if len(b) == 0 || b[0] != format {
		return 0, nil, false
	}
	n, w := binary.Uvarint(b[1:])
	if w <= 0 || n > uint64(len(b)-1) {
		return 0, nil, false
	}
	return n, b[1+w:], true
}

func wireBytes(b []byte) (v, rest []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return nil, nil, false
	}
	return b[w : w+int(n)], b[w+int(n):], true
}

// sameBytes reports whether a and b are the same slice (not just equal bytes).
func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// wirePack is several entries in one message: <format byte 3><count uvarint>{<len uvarint>
// <entry>}. Cluster mode packs the events of one commit group that go to one partition into
// one JetStream message: one stored message and one replication step for many events.
const wirePack = 3

// AppendPack appends the wire form of entries as one pack.
func AppendPack(dst []byte, entries []*Entry) []byte {
	dst = append(dst, wirePack)
	dst = binary.AppendUvarint(dst, uint64(len(entries)))
	var one []byte
	for _, e := range entries {
		one = AppendEntry(one[:0], e)
		dst = binary.AppendUvarint(dst, uint64(len(one)))
		dst = append(dst, one...)
	}
	return dst
}

// DecodeEntries reads a pack (AppendPack) or a single entry (AppendEntry). The entries' slices
// may alias b.
func DecodeEntries(b []byte) ([]*Entry, error) {
	if len(b) == 0 {
		return nil, ErrWire
	}
	if b[0] == wireEntry {
		e, err := DecodeEntry(b)
		if err != nil {
			return nil, err
		}
		return []*Entry{e}, nil
	}
	n, b, ok := wireHeader(b, wirePack)
	if !ok {
		return nil, ErrWire
	}
	out := make([]*Entry, 0, n)
	for i := uint64(0); i < n; i++ {
		one, rest, ok := wireBytes(b)
		if !ok {
			return nil, ErrWire
		}
		e, err := DecodeEntry(one)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
		b = rest
	}
	if len(b) != 0 {
		return nil, ErrWire
	}
	return out, nil
}
