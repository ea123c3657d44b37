package storage

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4/skl"
	"github.com/dgraph-io/badger/v4/y"
	"github.com/dgraph-io/ristretto/v2/z"
)

// TestBadgerThrottleKeepsErrors guards a fix in the patched Badger (third_party/badger,
// PATCHES.md): a compaction builds its tables under a y.Throttle, and a worker that failed
// (a table not written: ENOSPC) passes its error to Done. Do took that error out of the
// throttle and returned it to one caller, which stopped building, so Finish returned nil and
// the compaction went on without the table, deleting the tables it replaced. Finish must
// return the error even when Do saw it first.
func TestBadgerThrottleKeepsErrors(t *testing.T) {
	full := errors.New("no space left on device")
	th := y.NewThrottle(1)
	if err := th.Do(); err != nil {
		t.Fatal(err)
	}
	th.Done(full) // the table's writer failed
	// The next table's Do: it sees the error (the runtime picks it or a free slot at random,
	// so a Do that got a slot finishes and tries again, as the next table would).
	for {
		err := th.Do()
		if err != nil {
			if !errors.Is(err, full) {
				t.Fatalf("Do = %v, want the worker's error", err)
			}
			break
		}
		th.Done(nil)
	}
	if err := th.Finish(); !errors.Is(err, full) {
		t.Fatalf("Finish = %v after a worker failed (Do saw the error first), want the error", err)
	}
}

// TestPooledAllocatorKeepsItsFirstBuffer guards a fix in the patched ristretto
// (third_party/ristretto, PATCHES.md): an allocator that goes back to the pool is trimmed to
// poolKeepBytes, and one whose first buffer was that large or more lost it; Allocate grows an
// allocator by doubling its last buffer, so the next table built with it looped forever
// (Badger's compaction hung, and Close with it).
func TestPooledAllocatorKeepsItsFirstBuffer(t *testing.T) {
	pool := z.NewAllocatorPool(1)
	defer pool.Release()
	a := pool.Get(16<<20, "test") // a first buffer over what the pool keeps
	a.Allocate(100)
	pool.Return(a)
	b := pool.Get(1<<20, "test") // the same allocator, from the pool
	done := make(chan struct{})
	go func() {
		b.Allocate(4096)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second): // microseconds when it works; the bug loops forever
		t.Fatal("Allocate on a pooled allocator did not return: its first buffer was freed")
	}
	pool.Return(b)
}

// TestSkiplistPutAllocatesNothing guards a patch of Badger's memtable (third_party/badger,
// PATCHES.md, "A memtable put allocates nothing"): each of the arena's three allocations (node,
// key, value) passed its sizes to y.AssertTruef whether or not the check failed, boxing them on
// the heap: six allocations per put, three to four puts per routed event (the event, its queue
// entry, the tombstones that delete them).
func TestSkiplistPutAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own: make test runs this test without it too")
	}
	l := skl.NewSkiplist(8 << 20)
	defer l.DecrRef()
	const n = 1000
	keys := make([][]byte, n+1)
	for i := range keys {
		keys[i] = y.KeyWithTs(binary.BigEndian.AppendUint64([]byte("q/f/"), uint64(1<<40+i)), 7)
	}
	val := y.ValueStruct{Value: make([]byte, 300)}
	i := 0
	if a := testing.AllocsPerRun(n, func() { l.Put(keys[i], val); i++ }); a != 0 {
		t.Fatalf("a memtable put: %.1f allocations, want none", a)
	}
}
