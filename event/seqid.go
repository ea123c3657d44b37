package event

import (
	"encoding/binary"
	"math/rand/v2"
	"time"

	"github.com/oklog/ulid/v2"
)

// NewSeqID returns the id the log gives an event that arrived without one: a ULID whose 48-bit
// time is t (the commit time, in milliseconds) and whose 80 bits of entropy are the event's
// 64-bit commit sequence number followed by 16 random bits. Such ids sort by commit time, then
// by sequence number, and SeqOfID gets the sequence number back without any index.
func NewSeqID(t time.Time, seq uint64) string {
	var u ulid.ULID
	_ = u.SetTime(ulid.Timestamp(t)) // fails only after the year 10889
	binary.BigEndian.PutUint64(u[6:14], seq)
	binary.BigEndian.PutUint16(u[14:16], uint16(rand.Uint32()))
	var buf [ulid.EncodedSize]byte
	_ = u.MarshalTextTo(buf[:])
	return string(buf[:])
}

// SeqOfID returns the sequence number NewSeqID put into id, and false when id is not a ULID.
// Any ULID decodes to some number, including ones a sender chose: a caller must check that
// the event stored under seq has this id before trusting it.
func SeqOfID(id string) (seq uint64, ok bool) {
	seq, _, ok = ParseSeqID(id)
	return seq, ok
}

// ParseSeqID splits a ULID id into the sequence number NewSeqID put into it and its tail: the
// 8 bytes that the number does not give (time and random bits), from which SeqIDFrom rebuilds
// the id. ok is false when id is not a ULID.
func ParseSeqID(id string) (seq, tail uint64, ok bool) {
	u, ok := parseULID(id)
	if !ok {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(u[6:14]), u.Time()<<16 | uint64(binary.BigEndian.Uint16(u[14:16])), true
}

// SeqIDFrom rebuilds the NewSeqID id of seq from its tail (see ParseSeqID).
func SeqIDFrom(seq, tail uint64) string {
	var u ulid.ULID
	_ = u.SetTime(tail >> 16)
	binary.BigEndian.PutUint64(u[6:14], seq)
	binary.BigEndian.PutUint16(u[14:16], uint16(tail))
	return u.String()
}

func parseULID(id string) (ulid.ULID, bool) {
	if len(id) != ulid.EncodedSize {
		return ulid.ULID{}, false
	}
	u, err := ulid.ParseStrict(id)
	return u, err == nil
}
