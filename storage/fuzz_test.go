package storage

import (
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/dgraph-io/badger/v4/y"
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
