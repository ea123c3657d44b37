package storage

import (
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/dgraph-io/badger/v4/y"

	"github.com/fleetgate/fleetgate/event"
)

// FuzzParseManifest: the start-up check reads a MANIFEST that may be damaged in any way. It
// never panics, and whatever it says is consistent with the bytes. Half the inputs are wrapped
// as one record with a valid header, length and checksum, so that the change-set decoding is
// reached too (random bytes almost never carry a valid CRC).
func FuzzParseManifest(f *testing.F) {
	f.Add([]byte{}, false)
	f.Add([]byte("Bdgr\x00\x00\x00\x08"), false)
	f.Add([]byte{0x0a, 0x06, 0x08, 0x01, 0x10, 0x00, 0x18, 0x00}, true) // one CREATE change
	f.Add([]byte{0x0a, 0x04, 0x08, 0x01, 0x10, 0x01}, true)             // one DELETE change
	f.Fuzz(func(t *testing.T, data []byte, wrap bool) {
		if wrap {
			rec := make([]byte, 8, 8+len(data))
			binary.BigEndian.PutUint32(rec, uint32(len(data)))
			binary.BigEndian.PutUint32(rec[4:], crc32.Checksum(data, y.CastagnoliCrcTable))
			head := append([]byte(nil), manifestMagic...)
			head = binary.BigEndian.AppendUint16(head, 0)
			head = binary.BigEndian.AppendUint16(head, manifestMagicVersion)
			data = append(append(head, rec...), data...)
		}
		m := parseManifest(data)
		if m.size != int64(len(data)) || m.valid > m.size || m.tail > m.size {
			t.Fatalf("inconsistent: size %d valid %d tail %d of %d bytes", m.size, m.valid, m.tail, len(data))
		}
		_ = m.summary()
	})
}

// FuzzDecodeEntry: the wire form of entries, packs and dead letters (cluster mode's messages) never
// panics, and what decodes encodes back to bytes that decode the same.
func FuzzDecodeEntry(f *testing.F) {
	ev := &event.Event{ID: "e1", Topic: "devices/d1/t", Subject: "d1", Data: []byte(`{"t":1}`)}
	e := &Entry{Event: ev, Targets: []Target{{Function: "f", Rule: "r", RuleVersion: 3, Data: []byte(`{"x":1}`)}, {Function: "g"}}}
	f.Add(AppendEntry(nil, e))
	f.Add(AppendDeadLetter(nil, DeadLetter{Attempts: 2, Reason: "boom", Item: ItemFromEntry(e, e.Targets[0])}))
	f.Add([]byte{1, 0})
	f.Add([]byte{2, 0, 0, 0})
	f.Add(AppendPack(nil, []*Entry{e, e}))
	f.Add([]byte{3, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if es, err := DecodeEntries(b); err == nil {
			again, err := DecodeEntries(AppendPack(nil, es))
			if err != nil || len(again) != len(es) {
				t.Fatalf("pack does not round-trip: %v", err)
			}
		}
		if e, err := DecodeEntry(b); err == nil {
			again, err := DecodeEntry(AppendEntry(nil, e))
			if err != nil || len(again.Targets) != len(e.Targets) || again.Event.ID != e.Event.ID {
				t.Fatalf("entry does not round-trip: %v", err)
			}
		}
		if l, err := DecodeDeadLetter(b); err == nil {
			again, err := DecodeDeadLetter(AppendDeadLetter(nil, l))
			if err != nil || again.Reason != l.Reason || again.Item.Function != l.Item.Function {
				t.Fatalf("dead letter does not round-trip: %v", err)
			}
		}
	})
}
