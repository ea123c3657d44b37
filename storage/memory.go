package storage

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
)

// DefaultMemoryLimit is the memory a gateway plans for when nothing else is said (see
// PlanMemory): 128 MiB, the least that gives memtables of 16 MiB, whose transactions take a
// request of http.max_body_bytes' default (1 MiB).
const DefaultMemoryLimit = 128 << 20

// MinMemoryLimit is the smallest memory limit PlanMemory accepts: below it the memtables alone
// (up to three of MinMemTableBytes, and the table being flushed) would fill it.
const MinMemoryLimit = 32 << 20

// MemoryPlan is how one memory limit is shared out between the store and the rest of the
// process. Only Go's heap and stacks are under it; the executable's code and the files Badger
// maps (its write-ahead logs and tables) are resident memory on top, which the kernel can
// reclaim.
type MemoryPlan struct {
	// Limit is the Go runtime's soft memory limit (runtime/debug.SetMemoryLimit): past it the
	// garbage collector runs more often rather than let the heap grow.
	Limit int64
	// MemTableBytes is the size of one of Badger's memtables. Each is an arena of about 1.3
	// times that size (its skiplist plus room for one transaction), and Badger builds a table
	// of about that size when it flushes one. One request may carry 7.5 % of it.
	MemTableBytes int64
	// NumMemtables is how many full memtables Badger queues for its flush: with the one being
	// written and the one being flushed, at most NumMemtables+2 are in memory (usually 2).
	NumMemtables int
	// BlockCacheBytes bounds Badger's block cache (blocks read back from tables). Tables are
	// written uncompressed and read in place from their mapped files, so it holds little more
	// than block headers; it holds decompressed blocks only of tables written compressed by
	// earlier versions.
	BlockCacheBytes int64
	// MaxPendingBytes bounds the appends waiting for a commit (Options.MaxPendingBytes).
	MaxPendingBytes int64
}

// PlanMemory shares out limit (bytes; DefaultMemoryLimit when 0): an eighth for each memtable
// (between MinMemTableBytes and 64 MiB), so that Badger's usual two memtables and a flush take
// less than half of it (three and a flush, at the worst, about two thirds); a thirty-second for
// the block cache (1 to 64 MiB); an eighth for appends waiting for a commit (4 to 64 MiB). The
// rest is for connections, requests in flight and the garbage collector's headroom.
func PlanMemory(limit int64) (MemoryPlan, error) {
	if limit == 0 {
		limit = DefaultMemoryLimit
	}
	if limit < MinMemoryLimit {
		return MemoryPlan{}, fmt.Errorf("%w: a memory limit of %d bytes, at least %d (32 MiB)", ErrInvalid, limit, MinMemoryLimit)
	}
	clamp := func(v, lo, hi int64) int64 { return max(lo, min(hi, v)) &^ (1<<20 - 1) }
	return MemoryPlan{
		Limit:           limit,
		MemTableBytes:   clamp(limit/8, MinMemTableBytes, 64<<20),
		NumMemtables:    numMemtables,
		BlockCacheBytes: clamp(limit/32, 1<<20, 64<<20),
		MaxPendingBytes: clamp(limit/8, 4<<20, 64<<20),
	}, nil
}

// String says what each part gets, for the log.
func (p MemoryPlan) String() string {
	mib := func(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
	return fmt.Sprintf("limit %s: memtables %d × %s, block cache %s, pending appends %s",
		mib(p.Limit), p.NumMemtables, mib(p.MemTableBytes), mib(p.BlockCacheBytes), mib(p.MaxPendingBytes))
}

// flushLargerLogs makes a store written with larger memtables than bo's openable: Badger
// replays each write-ahead log (.mem) into a memtable at open, and a log of a larger memtable
// (left by a crash, or by a run with a larger storage.memtable_bytes or memory_limit) would
// overflow the smaller arena (Badger panics). Badger sizes each log at twice its memtable, so
// when one is larger than that, the store is opened once with the memtable it was written
// with and closed, which flushes every log into tables; the caller then opens it as asked.
func flushLargerLogs(bo badger.Options) error {
	if bo.InMemory || bo.Dir == "" {
		return nil
	}
	ents, err := os.ReadDir(bo.Dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("opening storage in %q: reading it: %w", bo.Dir, err)
	}
	var largest int64
	for _, e := range ents {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".mem") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			largest = max(largest, fi.Size())
		}
	}
	if largest <= 2*bo.MemTableSize {
		return nil
	}
	bo.Logger.Infof("write-ahead logs of %d-byte memtables, larger than %d: flushing them to tables before opening with the smaller memtable (%s)",
		largest/2, bo.MemTableSize, filepath.Base(bo.Dir))
	db, err := badger.Open(bo.WithMemTableSize(largest / 2))
	if err != nil {
		return fmt.Errorf("opening storage in %q with its earlier memtable size %d to flush its logs: %w", bo.Dir, largest/2, err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("flushing the logs of storage in %q: %w", bo.Dir, err)
	}
	return nil
}
