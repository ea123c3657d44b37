package storage

import (
	"context"
	"errors"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
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
	s := openTest(t, t.TempDir(), func(o *Options) { o.FateTTL = time.Second })
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
			t.Fatalf("fate still there 10s after a 1s TTL: %v", err)
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

// fatesOn turns fate records on (they are off by default).
func fatesOn(o *Options) { o.FateTTL = 24 * time.Hour }
