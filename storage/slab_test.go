package storage

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
)

func TestGroupSlab(t *testing.T) {
	var a groupSlab
	var got [][]byte
	for i := range 600 { // five chunks
		b := a.take(500)
		if len(b) != 0 || cap(b) != 500 {
			t.Fatalf("take(500) = len %d cap %d", len(b), cap(b))
		}
		got = append(got, append(b, bytes.Repeat([]byte{byte(i)}, 500)...))
	}
	for i, b := range got { // no slice ran into another
		if !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, 500)) {
			t.Fatalf("slice %d was overwritten", i)
		}
	}
	if big := a.take(slabOwn + 1); cap(big) != slabOwn+1 {
		t.Fatalf("take(%d): cap %d", slabOwn+1, cap(big))
	}
	a.reset()
	if len(a.chunks) != slabKeep || a.used != 0 || len(a.chunks[0]) != 0 {
		t.Fatalf("after reset: %d chunks, used %d", len(a.chunks), a.used)
	}
	if b := a.take(10); &b[:1][0] != &a.chunks[0][:1][0] {
		t.Fatal("after reset, take did not reuse the first chunk")
	}
}

// TestQueueEntriesOutliveTheirGroupsSlab: the keys and values of one commit group are written
// over by the next group (groupSlab); what Badger holds of each group stays whole, from its
// memtable and, once flushed, from its tables.
func TestQueueEntriesOutliveTheirGroupsSlab(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "log"))
	const groups, per = 5, 40
	for g := range groups {
		var entries []*Entry
		for i := range per {
			two := []string{"f"}
			if i%2 == 1 {
				two = append(two, "g") // the event stored once, a queue entry for each function
			}
			entries = append(entries, newEntry("", fmt.Sprintf("group %d event %d %s", g, i, bytes.Repeat([]byte{'a' + byte(g)}, 100)), two...))
		}
		if err := s.Append(context.Background(), entries); err != nil {
			t.Fatal(err)
		}
	}
	check := func(where string) {
		t.Helper()
		for _, fn := range []string{"f", "g"} {
			items, err := s.ReadQueue(fn, 0, groups*per)
			if err != nil {
				t.Fatal(err)
			}
			want := groups * per
			if fn == "g" {
				want /= 2
			}
			if len(items) != want {
				t.Fatalf("%s: %d items in %s's queue, want %d", where, len(items), fn, want)
			}
			for n, it := range items {
				i := n
				if fn == "g" {
					i = 2*n + 1
				}
				g, i := i/per, i%per
				w := fmt.Sprintf("group %d event %d %s", g, i, bytes.Repeat([]byte{'a' + byte(g)}, 100))
				if string(it.Event.Data) != w || it.Function != fn || it.Rule != "r1" {
					t.Fatalf("%s: %s item %d: %q (function %q rule %q), want %q", where, fn, n, it.Event.Data, it.Function, it.Rule, w)
				}
			}
		}
	}
	check("memtable")
	if err := s.db.FlushMemTable(); err != nil {
		t.Fatal(err)
	}
	check("tables")
}
