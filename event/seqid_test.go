package event

import (
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
)

func TestSeqIDRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 2, 7, 0, 0, 123e6, time.UTC)
	prev := ""
	for _, seq := range []uint64{0, 1, 2, 255, 1 << 32, 1<<64 - 1} {
		id := NewSeqID(at, seq)
		u, err := ulid.ParseStrict(id)
		if err != nil {
			t.Fatalf("NewSeqID(%d) = %q, not a ULID: %v", seq, id, err)
		}
		if got := ulid.Time(u.Time()); !got.Equal(at) {
			t.Fatalf("time of %q = %v, want %v", id, got, at)
		}
		got, ok := SeqOfID(id)
		if !ok || got != seq {
			t.Fatalf("SeqOfID(%q) = %d, %v; want %d", id, got, ok, seq)
		}
		s, tail, ok := ParseSeqID(id)
		if !ok || s != seq || SeqIDFrom(s, tail) != id {
			t.Fatalf("ParseSeqID(%q) = %d, %x, %v; rebuilt %q", id, s, tail, ok, SeqIDFrom(s, tail))
		}
		if id <= prev {
			t.Fatalf("ids of one millisecond do not sort by seq: %q after %q", id, prev)
		}
		prev = id
	}
	for _, bad := range []string{"", "order-17", NewID() + "x", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ"} {
		if _, ok := SeqOfID(bad); ok {
			t.Fatalf("SeqOfID(%q) ok", bad)
		}
	}
}

// FuzzParseSeqID: ids come from clients (the admin API, the CLI); parsing never panics, and
// an id that parses is rebuilt from its seq and tail only when it is in canonical form.
func FuzzParseSeqID(f *testing.F) {
	f.Add(NewSeqID(time.Now(), 42))
	f.Add(NewID())
	f.Add("order-17")
	f.Add("7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
	f.Fuzz(func(t *testing.T, id string) {
		seq, tail, ok := ParseSeqID(id)
		if !ok {
			return
		}
		if again := SeqIDFrom(seq, tail); len(again) != len(id) {
			t.Fatalf("SeqIDFrom(%d, %x) = %q from %q", seq, tail, again, id)
		}
	})
}
