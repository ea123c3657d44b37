package storage

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

// TestFlushDropsShadowedVersions: patched Badger's FlushDropsShadowed leaves the values of keys
// written and deleted within one memtable out of its table (the deletion alone is flushed), but
// never a version a reader can still see: a snapshot taken before the deletions reads every
// value after the flush, and a reopened store holds exactly what was not deleted. With the
// option off (as Badger was) the same flush writes every value.
func TestFlushDropsShadowedVersions(t *testing.T) {
	const n = 2000
	value := bytes.Repeat([]byte("v"), 1<<10)
	flushed := map[bool]int64{} // size of the flushed table of keys put and deleted, by option
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("drops=%v", on), func(t *testing.T) {
			defer func(was bool) { flushDropsShadowed = was }(flushDropsShadowed)
			flushDropsShadowed = on
			dir := filepath.Join(t.TempDir(), "log")
			s := openTest(t, dir)
			put := func(prefix string, from, to int) {
				t.Helper()
				kvs := map[string][]byte{}
				for i := from; i < to; i++ {
					kvs[fmt.Sprintf("%s/%05d", prefix, i)] = value
				}
				if err := s.PutMany(kvs); err != nil {
					t.Fatal(err)
				}
			}
			del := func(prefix string, from, to int) {
				t.Helper()
				for i := from; i < to; i++ {
					if err := s.Delete(fmt.Sprintf("%s/%05d", prefix, i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			flush := func() int64 {
				t.Helper()
				if err := s.db.FlushMemTable(); err != nil {
					t.Fatal(err)
				}
				var newest badger.TableInfo
				for _, ti := range s.db.Tables() {
					if ti.Level == 0 && ti.ID > newest.ID {
						newest = ti
					}
				}
				return int64(newest.OnDiskSize)
			}

			// A snapshot older than the deletions keeps the versions it sees.
			for i := 0; i < n; i += 200 {
				put("seen", i, i+200)
			}
			snap := s.db.NewTransaction(false)
			del("seen", 0, n/2)
			flush()
			for i := 0; i < n; i++ {
				item, err := snap.Get(kvKey(fmt.Sprintf("seen/%05d", i)))
				if err != nil {
					t.Fatalf("the snapshot lost seen/%05d in the flush: %v", i, err)
				}
				if v, _ := item.ValueCopy(nil); !bytes.Equal(v, value) {
					t.Fatalf("the snapshot reads seen/%05d as %d bytes", i, len(v))
				}
			}
			snap.Discard()

			// With no reader, keys put and deleted in one memtable.
			for i := 0; i < n; i += 200 {
				put("gone", i, i+200)
			}
			del("gone", 0, n)
			flushed[on] = flush()

			// Keys flushed before their deletion: the deletion is flushed, or they would be back.
			for i := 0; i < n; i += 200 {
				put("older", i, i+200)
			}
			flush()
			del("older", 0, n)
			flush()

			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openTest(t, dir)
			for i := 0; i < n; i++ {
				for _, prefix := range []string{"seen", "gone", "older"} {
					key := fmt.Sprintf("%s/%05d", prefix, i)
					_, ok, err := s.Get(key)
					if want := prefix == "seen" && i >= n/2; ok != want || err != nil {
						t.Fatalf("after reopening, %s found = %v (%v), want %v", key, ok, err, want)
					}
				}
			}
		})
	}
	t.Logf("table of %d keys put and deleted in one memtable: %d bytes as Badger was, %d with the patch", n, flushed[false], flushed[true])
	if flushed[false] < n*int64(len(value)) || flushed[true] > flushed[false]/10 {
		t.Fatalf("flushed tables of %d bytes (option off) and %d (on): want the values written only with it off", flushed[false], flushed[true])
	}
}

// TestReadValueOutlivesItsMemtable: a value read from a memtable stays whole after the memtable
// is flushed and its arena cleared and written again by the next one (patched Badger reuses
// arenas: DB.get copies a memtable's value out, and Txn.Get keeps that copy instead of copying
// it once more).
func TestReadValueOutlivesItsMemtable(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "log"))
	want := bytes.Repeat([]byte("first"), 200)
	if err := s.Put("k/read", want); err != nil {
		t.Fatal(err)
	}
	txn := s.db.NewTransaction(false)
	defer txn.Discard()
	item, err := txn.Get(kvKey("k/read"))
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Repeat([]byte("X"), 1000)
	for round := range 3 { // each flush releases the arena; the next memtable writes over it
		if err := s.db.FlushMemTable(); err != nil {
			t.Fatal(err)
		}
		kvs := map[string][]byte{}
		for i := range 1000 {
			kvs[fmt.Sprintf("k/other/%d/%05d", round, i)] = other
		}
		if err := s.PutMany(kvs); err != nil {
			t.Fatal(err)
		}
	}
	got, err := item.ValueCopy(nil)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the value read before its memtable was flushed and its arena reused: %.40q… (%v), want %.40q…", got, err, want)
	}
}
