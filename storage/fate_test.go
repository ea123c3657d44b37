package storage

import (
	"context"
	"errors"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/fleetgate/fleetgate/event"
)

// fateOf returns the fate of id and its entry for function fn (failing when absent).
func fateOf(t *testing.T, s *Store, id, fn string) (Fate, FunctionFate) {
	t.Helper()
	f, err := s.Fate(id)
	if err != nil {
		t.Fatalf("Fate(%q): %v", id, err)
	}
	for _, ff := range f.Functions {
		if ff.Function == fn {
			return f, ff
		}
	}
	t.Fatalf("Fate(%q) has no entry for %s: %+v", id, fn, f)
	return f, FunctionFate{}
}

func TestFateThroughEveryState(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, fatesOn)
	e := newEntry("ev-1", `{"t":1}`, "f1", "f2")
	e.Event.Tenant, e.Event.ContentType = "acme", "application/json"
	for i := range e.Targets {
		e.Targets[i].RuleVersion = 7
	}
	other := newEntry("ev-2", `{}`, "f1")
	if err := s.Append(context.Background(), []*Entry{e, other}); err != nil {
		t.Fatal(err)
	}
	f, ff := fateOf(t, s, "ev-1", "f1")
	if f.Seq != e.Seq || f.RuleVersion != 7 || f.Event.Topic != "devices/dev1/telemetry" || f.Event.Subject != "dev1" ||
		f.Event.Tenant != "acme" || f.Event.Protocol != "mqtt" || f.Event.PayloadSize != 7 || f.Event.ContentType != "application/json" {
		t.Fatalf("fate = %+v", f)
	}
	if len(f.Functions) != 2 || ff.State != FateQueued || ff.Rule != "r1" {
		t.Fatalf("fate functions = %+v", f.Functions)
	}

	// f1 delivers it, f2 gives up on it.
	items, err := s.ReadQueue("f1", 0, 10)
	if err != nil || len(items) != 2 {
		t.Fatalf("ReadQueue = %v, %v", items, err)
	}
	if err := s.Delivered("f1", items[:1]); err != nil {
		t.Fatal(err)
	}
	if d := s.QueueDepth("f1"); d != 1 {
		t.Fatalf("f1 queue depth after Delivered = %d, want 1", d)
	}
	items2, _ := s.ReadQueue("f2", 0, 10)
	at := time.Now().Add(-time.Minute).UTC()
	if err := s.DeadLetter("f2", []DeadLetter{{Seq: e.Seq, Attempts: 3, Reason: "HTTP 500: boom", At: at, Item: items2[0]}}); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		_, f1 := fateOf(t, s, "ev-1", "f1")
		if f1.State != FateDelivered || f1.DeliveredAt.IsZero() || f1.Rule != "r1" {
			t.Fatalf("%s: f1 = %+v", when, f1)
		}
		_, f2 := fateOf(t, s, "ev-1", "f2")
		if f2.State != FateDeadLettered || f2.Attempts != 3 || f2.LastError != "HTTP 500: boom" || !f2.DeadLetteredAt.Equal(at) {
			t.Fatalf("%s: f2 = %+v", when, f2)
		}
	}
	check("before reopen")
	s.Close()
	s = openTest(t, dir, fatesOn)
	check("after reopen")

	// Replayed: queued again, the dead-lettering still shown; then delivered.
	replayed, err := s.Replay("f2", nil)
	if err != nil || len(replayed) != 1 {
		t.Fatalf("Replay = %v, %v", replayed, err)
	}
	if _, f2 := fateOf(t, s, "ev-1", "f2"); f2.State != FateQueued || f2.Attempts != 3 || f2.DeadLetteredAt.IsZero() {
		t.Fatalf("replayed f2 = %+v", f2)
	}
	if err := s.Delivered("f2", replayed); err != nil {
		t.Fatal(err)
	}
	s.Sweep() // the event itself is deleted now: the outcome records still describe it
	if _, err := s.eventAt(e.Seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("event still stored after both deliveries: %v", err)
	}
	f, f2 := fateOf(t, s, "ev-1", "f2")
	if f2.State != FateDelivered || f2.Attempts != 3 || f.Event.Topic != "devices/dev1/telemetry" || f.Event.PayloadSize != 7 || f.RuleVersion != 7 {
		t.Fatalf("delivered after replay: fate = %+v, f2 = %+v", f, f2)
	}
	if _, err := s.Fate("no-such-event"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fate(unknown) = %v, want ErrNotFound", err)
	}
}

func TestFateRecordsExpire(t *testing.T) {
	// Badger's TTLs are whole seconds (an entry expires at a second boundary): with a 1 s TTL a
	// record written late in a second could expire before the first look. 3 s leaves at least 2.
	s := openTest(t, t.TempDir(), func(o *Options) { o.FateTTL = 3 * time.Second })
	e := newEntry("ev-ttl", `{}`, "f1")
	if err := s.Append(context.Background(), []*Entry{e}); err != nil {
		t.Fatal(err)
	}
	items, _ := s.ReadQueue("f1", 0, 10)
	if err := s.Delivered("f1", items); err != nil {
		t.Fatal(err)
	}
	if _, ff := fateOf(t, s, "ev-ttl", "f1"); ff.State != FateDelivered {
		t.Fatalf("f1 = %+v", ff)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Fate("ev-ttl")
		if errors.Is(err, ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fate still there 10s after a 3s TTL: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFateOff(t *testing.T) {
	s := openTest(t, t.TempDir(), func(o *Options) { o.FateTTL = -1 })
	e := newEntry("ev-off", `{}`, "f1")
	if err := s.Append(context.Background(), []*Entry{e}); err != nil {
		t.Fatal(err)
	}
	items, _ := s.ReadQueue("f1", 0, 10)
	if err := s.Delivered("f1", items); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fate("ev-off"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fate with fate records off = %v, want ErrNotFound", err)
	}
	n := 0
	_ = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if k := it.Item().Key(); k[0] == nsFate || k[0] == nsOutcome || k[0] == nsDelivered {
				n++
			}
		}
		return nil
	})
	if n != 0 {
		t.Fatalf("%d fate records written with fate records off", n)
	}
}

func TestPurgeDeadLetters(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, fatesOn)
	var entries []*Entry
	for _, id := range []string{"p0", "p1", "p2", "p3", "p4"} {
		entries = append(entries, newEntry(id, `{}`, "f1", "f2"))
	}
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	items, _ := s.ReadQueue("f1", 0, 10)
	base := time.Now().Add(-time.Hour).UTC()
	var letters []DeadLetter
	for i, it := range items {
		letters = append(letters, DeadLetter{Seq: it.Seq, Attempts: 1, Reason: "no", At: base.Add(time.Duration(i) * time.Minute), Item: it})
	}
	if err := s.DeadLetter("f1", letters); err != nil {
		t.Fatal(err)
	}
	if d := s.DeadLetterDepth("f1"); d != 5 {
		t.Fatalf("dead letter depth = %d, want 5", d)
	}
	purge := func(before time.Time, seqs []uint64, want int) {
		t.Helper()
		n, err := s.PurgeDeadLetters("f1", before, seqs)
		if err != nil || n != want {
			t.Fatalf("PurgeDeadLetters(%v, %v) = %d, %v; want %d", before, seqs, n, err, want)
		}
	}
	purge(base.Add(2*time.Minute), nil, 2)                           // p0, p1
	purge(time.Time{}, []uint64{items[4].Seq, items[0].Seq, 999}, 1) // p4 (p0 is gone, 999 never was)
	purge(base.Add(3*time.Minute), []uint64{items[2].Seq, items[3].Seq}, 1)
	if d := s.DeadLetterDepth("f1"); d != 1 {
		t.Fatalf("dead letter depth = %d, want 1", d)
	}
	// The queue of f2 is untouched; the purged events show as purged.
	if d := s.QueueDepth("f2"); d != 5 {
		t.Fatalf("f2 queue depth = %d, want 5", d)
	}
	if _, ff := fateOf(t, s, "p0", "f1"); ff.State != FatePurged || ff.Attempts != 1 {
		t.Fatalf("p0 for f1 = %+v", ff)
	}
	s.Close()
	s = openTest(t, dir, fatesOn)
	if d := s.DeadLetterDepth("f1"); d != 1 {
		t.Fatalf("dead letter depth after reopen = %d, want 1", d)
	}
	left, err := s.DeadLetters("f1", 0, 0)
	if err != nil || len(left) != 1 || left[0].Seq != items[3].Seq {
		t.Fatalf("dead letters after reopen = %+v, %v", left, err)
	}
	if n, err := s.PurgeDeadLetters("f1", time.Time{}, nil); err != nil || n != 1 {
		t.Fatalf("purge all = %d, %v", n, err)
	}
	if d := s.DeadLetterDepth("f1"); d != 0 {
		t.Fatalf("dead letter depth = %d, want 0", d)
	}
	if _, err := s.PurgeDeadLetters("bad\x00name", time.Time{}, nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("purge of an invalid name = %v", err)
	}
}

// fatesOn turns fate records on (the default; tests say so where it matters).
func fatesOn(o *Options) { o.FateTTL = 24 * time.Hour }

// TestFateOfLogIDs: events that come without an id get one that carries their seq; their fate
// is found from the id alone (no index), queued, delivered and dead-lettered, after a reopen.
func TestFateOfLogIDs(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir, fatesOn)
	one, two := newEntry("", `{"n":1}`, "f1"), newEntry("", `{"n":22}`, "f1", "f2")
	for _, e := range []*Entry{one, two} {
		for i := range e.Targets {
			e.Targets[i].RuleVersion = 5
		}
	}
	if err := s.Append(context.Background(), []*Entry{one, two}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*Entry{one, two} {
		if seq, ok := event.SeqOfID(e.Event.ID); !ok || seq != e.Seq {
			t.Fatalf("id %q of seq %d carries %d, %v", e.Event.ID, e.Seq, seq, ok)
		}
	}
	if n := countKeys(t, s, nsFate); n != 0 {
		t.Fatalf("%d fate index records for ids the log made", n)
	}
	f, ff := fateOf(t, s, one.Event.ID, "f1")
	if f.Seq != one.Seq || ff.State != FateQueued || ff.Rule != "r1" || f.RuleVersion != 5 || f.Event.PayloadSize != 7 || len(f.Functions) != 1 {
		t.Fatalf("queued: fate = %+v", f)
	}
	items, _ := s.ReadQueue("f1", 0, 10)
	if err := s.Delivered("f1", items); err != nil {
		t.Fatal(err)
	}
	items2, _ := s.ReadQueue("f2", 0, 10)
	if err := s.DeadLetter("f2", []DeadLetter{{Seq: two.Seq, Attempts: 2, Reason: "no", Item: items2[0]}}); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, s, nsDelivered); n != 1 {
		t.Fatalf("%d delivery records for one Delivered call, want 1", n)
	}
	check := func(when string) {
		t.Helper()
		f, ff := fateOf(t, s, one.Event.ID, "f1")
		if f.Seq != one.Seq || ff.State != FateDelivered || ff.DeliveredAt.IsZero() || ff.Rule != "r1" || f.RuleVersion != 5 || len(f.Functions) != 1 {
			t.Fatalf("%s: fate of %q = %+v", when, one.Event.ID, f)
		}
		f, f1 := fateOf(t, s, two.Event.ID, "f1")
		_, f2 := fateOf(t, s, two.Event.ID, "f2")
		if f.Seq != two.Seq || f1.State != FateDelivered || f2.State != FateDeadLettered || f2.Attempts != 2 || f.Event.PayloadSize != 8 || f.RuleVersion != 5 {
			t.Fatalf("%s: fate of %q = %+v", when, two.Event.ID, f)
		}
	}
	check("before reopen")
	s.Close()
	s = openTest(t, dir, fatesOn)
	check("after reopen")
}

// TestFateOfIDsNotMadeByTheLog: an id a sender chose is found through its index, also when it
// is a ULID; a ULID that decodes to the seq of another event is not taken for it, whether
// that event is queued, delivered or stored alone.
func TestFateOfIDsNotMadeByTheLog(t *testing.T) {
	s := openTest(t, t.TempDir(), fatesOn)
	senderULID := event.NewID()
	mine, logs, multi := newEntry(senderULID, `{}`, "f1"), newEntry("", `{}`, "f1"), newEntry("", `{}`, "f1", "f2")
	named := newEntry("order-17", `{}`, "f1")
	if err := s.Append(context.Background(), []*Entry{mine, logs, multi, named}); err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, s, nsFate); n != 2 {
		t.Fatalf("%d fate index records, want 2 (the ids the sender chose)", n)
	}
	// forged returns a ULID that decodes to seq but is not the id the log made for it.
	forged := func(e *Entry) string {
		_, tail, _ := event.ParseSeqID(e.Event.ID)
		return event.SeqIDFrom(e.Seq, tail^1)
	}
	// A sender's ULID decodes to some seq: point one at the seq of a stored event.
	pointing := event.SeqIDFrom(logs.Seq, 42<<16)
	notFound := func(when string, ids ...string) {
		t.Helper()
		for _, id := range ids {
			if f, err := s.Fate(id); !errors.Is(err, ErrNotFound) {
				t.Fatalf("%s: Fate(%q) = %+v, %v; want ErrNotFound", when, id, f, err)
			}
		}
	}
	found := func(when string, e *Entry, fn, state string) {
		t.Helper()
		if f, ff := fateOf(t, s, e.Event.ID, fn); f.Seq != e.Seq || ff.State != state {
			t.Fatalf("%s: fate of %q = %+v", when, e.Event.ID, f)
		}
	}
	notFound("queued", forged(logs), forged(multi), pointing, event.NewID(), "no-such-id")
	for _, e := range []*Entry{mine, logs, multi, named} {
		found("queued", e, "f1", FateQueued)
	}
	items, _ := s.ReadQueue("f1", 0, 10)
	if err := s.Delivered("f1", items); err != nil {
		t.Fatal(err)
	}
	// logs is now only in the delivery record; multi is stored alone (f2 still has it queued).
	notFound("delivered", forged(logs), forged(multi), pointing, event.SeqIDFrom(mine.Seq, 7<<16))
	for _, e := range []*Entry{mine, logs, multi, named} {
		found("delivered", e, "f1", FateDelivered)
	}
	items2, _ := s.ReadQueue("f2", 0, 10)
	if err := s.Delivered("f2", items2); err != nil {
		t.Fatal(err)
	}
	notFound("all delivered", forged(multi))
	found("all delivered", multi, "f2", FateDelivered)
}

// TestFateDeliveryRecordsFound: deliveries in many batches, one out of seq order, are each
// found in their batch's record.
func TestFateDeliveryRecordsFound(t *testing.T) {
	s := openTest(t, t.TempDir(), fatesOn)
	var entries []*Entry
	for range 300 {
		entries = append(entries, newEntry("", `{}`, "f1"))
	}
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	items, err := s.ReadQueue("f1", 0, 0)
	if err != nil || len(items) != 300 {
		t.Fatalf("ReadQueue = %d items, %v", len(items), err)
	}
	// The first item waits (a retry) and is delivered with the last batch; the rest by 7.
	late := items[0]
	rest := items[1:]
	for len(rest) > 0 {
		n := min(7, len(rest))
		batch := rest[:n]
		if len(rest) == n {
			batch = append([]Item{late}, batch...)
		}
		if err := s.Delivered("f1", batch); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	for _, e := range entries {
		if _, ff := fateOf(t, s, e.Event.ID, "f1"); ff.State != FateDelivered {
			t.Fatalf("fate of seq %d = %+v", e.Seq, ff)
		}
	}
}

// TestFateOfLogIDsExpires: the delivery record of an event with a log-made id expires after
// storage.fate_ttl, and then the event is not found.
func TestFateOfLogIDsExpires(t *testing.T) {
	s := openTest(t, t.TempDir(), func(o *Options) { o.FateTTL = 3 * time.Second })
	e := newEntry("", `{}`, "f1")
	if err := s.Append(context.Background(), []*Entry{e}); err != nil {
		t.Fatal(err)
	}
	items, _ := s.ReadQueue("f1", 0, 10)
	if err := s.Delivered("f1", items); err != nil {
		t.Fatal(err)
	}
	if _, ff := fateOf(t, s, e.Event.ID, "f1"); ff.State != FateDelivered {
		t.Fatalf("f1 = %+v", ff)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Fate(e.Event.ID)
		if errors.Is(err, ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fate still there 10s after a 3s TTL: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// countKeys counts the keys of namespace ns.
func countKeys(t *testing.T, s *Store, ns byte) int {
	t.Helper()
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{ns}})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
