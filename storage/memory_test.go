package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlanMemory(t *testing.T) {
	f := func(limit, memtable, cache, pending int64) {
		t.Helper()
		p, err := PlanMemory(limit)
		if err != nil {
			t.Fatalf("PlanMemory(%d): %v", limit, err)
		}
		if p.MemTableBytes != memtable || p.BlockCacheBytes != cache || p.MaxPendingBytes != pending {
			t.Fatalf("PlanMemory(%d) = %s, want memtable %d, block cache %d, pending %d", limit, p, memtable, cache, pending)
		}
		// Two memtables and a flush take less than half of the limit, unless at the minimum.
		if badger := int64(2*1.3*float64(p.MemTableBytes)) + p.MemTableBytes; badger > p.Limit/2 && p.MemTableBytes > MinMemTableBytes {
			t.Fatalf("PlanMemory(%d): memtables and a flush take %d bytes", limit, badger)
		}
	}
	f(0, 16<<20, 4<<20, 16<<20) // the default, 128 MiB
	f(64<<20, 8<<20, 2<<20, 8<<20)
	f(32<<20, 8<<20, 1<<20, 4<<20)
	f(128<<20, 16<<20, 4<<20, 16<<20)
	f(1<<30, 64<<20, 32<<20, 64<<20)
	f(8<<30, 64<<20, 64<<20, 64<<20)
	if _, err := PlanMemory(16 << 20); !errors.Is(err, ErrInvalid) {
		t.Fatalf("PlanMemory(16 MiB) = %v, want ErrInvalid", err)
	}
}

// TestOpenWithSmallerMemtable: a store left by a crash after a run with a larger memtable
// (the default was 64 MiB) opens with a smaller one, with every event, instead of overflowing
// Badger's arena or its transaction limit at the replay. Two cases: Badger's own memtable logs
// (.mem files, as versions before Badger was patched wrote them), and the store's write-ahead
// log with groups larger than the smaller memtable takes in one transaction.
func TestOpenWithSmallerMemtable(t *testing.T) {
	t.Run("badger-logs", func(t *testing.T) {
		defer func() { badgerOwnLog = false }()
		badgerOwnLog = true
		testOpenWithSmallerMemtable(t, 100, ".mem")
	})
	t.Run("write-ahead-log", func(t *testing.T) {
		// 400 events of 4 KiB: 1.6 MB, more than an 8 MiB memtable's transaction limit.
		testOpenWithSmallerMemtable(t, 400, walSuffix)
	})
}

func testOpenWithSmallerMemtable(t *testing.T, batchLen int, logSuffix string) {
	dir := t.TempDir()
	s := openTest(t, dir, func(o *Options) { o.MemTableBytes = 32 << 20 })
	data := strings.Repeat("d", 4096)
	const n = 4000 // 16 MB: more than an 8 MiB memtable's arena, less than a 32 MiB memtable
	for i := 0; i < n; i += batchLen {
		batch := make([]*Entry, batchLen)
		for j := range batch {
			batch[j] = newEntry(fmt.Sprintf("e%05d", i+j), data, "f")
		}
		if err := s.Append(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	// The crash: a copy of the directory as it is on disk while the store is open (every
	// commit above was synced). Closing the store would flush its memtable.
	crashed := filepath.Join(t.TempDir(), "log")
	crashCopy(t, dir, crashed)
	s.Close()
	var logs int
	ents, _ := os.ReadDir(crashed)
	wents, _ := os.ReadDir(filepath.Join(crashed, walDirName))
	for _, e := range append(ents, wents...) {
		if st, _ := e.Info(); strings.HasSuffix(e.Name(), logSuffix) && st != nil && st.Size() > 0 {
			logs++
		}
	}
	if logs == 0 {
		t.Fatalf("the copy holds no %s log: the test shows nothing", logSuffix)
	}

	s2 := openTest(t, crashed, func(o *Options) { o.MemTableBytes = MinMemTableBytes })
	var after uint64
	found := 0
	for {
		items, err := s2.ReadQueue("f", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		found += len(items)
		after = items[len(items)-1].Seq
	}
	if found != n {
		t.Fatalf("%d events found after reopening with the smaller memtable, want %d", found, n)
	}
	s2.Close()
	// The next open needs no flush: the logs are of the small memtable now.
	ents, _ = os.ReadDir(crashed)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".mem") && fi.Size() > 2*MinMemTableBytes {
			t.Fatalf("%s is still %d bytes", e.Name(), fi.Size())
		}
	}
}
