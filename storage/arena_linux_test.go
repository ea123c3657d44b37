//go:build linux

package storage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4/skl"
)

// TestFlushedArenaGivesItsPagesBack: once a memtable is flushed, its arena (kept mapped as the
// spare for the next memtable, patched Badger) holds no resident memory, and the memtable that
// reuses it reads only what it wrote. Arenas are advised for transparent huge pages. A spare that kept its pages held a whole memtable's worth
// of memory next to the one being written.
func TestFlushedArenaGivesItsPagesBack(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "log"))
	value := bytes.Repeat([]byte("v"), 1000)
	put := func(round int) {
		t.Helper()
		for part := range 4 { // about 4 MB of the arena, in commits under the limit
			kvs := map[string][]byte{}
			for i := part * 1000; i < (part+1)*1000; i++ {
				kvs[fmt.Sprintf("k/%d/%05d", round, i)] = value
			}
			if err := s.PutMany(kvs); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill := func(round int) {
		t.Helper()
		put(round)
		if err := s.db.FlushMemTable(); err != nil {
			t.Fatal(err)
		}
	}
	// Each flush releases the memtable written before it; the next memtable reuses that
	// arena, so the spare after three rounds is an arena that was written and flushed.
	for round := range 3 {
		fill(round)
	}
	var size, resident int
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		size, resident, err = skl.SpareArenaForTest()
		if err != nil {
			t.Fatal(err)
		}
		// The flusher lets go of the flushed memtable just after FlushMemTable returns.
		if (size > 0 && resident == 0) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if size == 0 || resident != 0 {
		t.Fatalf("spare arena of %d bytes has %d bytes resident after its memtable was flushed, want a spare with none", size, resident)
	}
	// Arenas ask for huge pages, where the kernel has them at all.
	if _, err := os.Stat("/sys/kernel/mm/transparent_hugepage"); err == nil {
		huge, err := skl.SpareArenaHugeForTest()
		if err != nil || !huge {
			t.Fatalf("spare arena advised for huge pages: %v (%v), want true", huge, err)
		}
	}
	// A memtable on a reused arena, written and read; everything written before reads back
	// whole from the tables.
	put(3)
	for round := range 4 {
		for _, i := range []int{0, 1999, 3999} {
			got, ok, err := s.Get(fmt.Sprintf("k/%d/%05d", round, i))
			if err != nil || !ok || !bytes.Equal(got, value) {
				t.Fatalf("round %d key %d: %.20q (found %v, %v), want %d bytes of v", round, i, got, ok, err, len(value))
			}
		}
	}
}
