package storage

import (
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4/y"
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
