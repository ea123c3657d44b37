package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// DefaultMinFreeBytes is the free disk space kept in reserve by default: four memtables. Badger
// writes its write-ahead log (two memtables, preallocated sparse), the tables it flushes and
// the tables of its compactions into mmapped files; a write into such a file with no block left
// on the disk kills the process with SIGBUS, and again at every restart. The reserve is what
// lets those writes, and the deletes of functions that drain their queues, always find room.
func DefaultMinFreeBytes(memtable int64) int64 { return 4 * memtable }

// diskRecheck is how often a store that refuses for lack of disk space looks again, without a
// commit to trigger it.
const diskRecheck = 250 * time.Millisecond

// backlogRecheck is how often the committer asks Badger for the size of level 0 (a look locks
// every level and allocates; a commit's statfs does neither).
const backlogRecheck = 100 * time.Millisecond

// diskLookAgain is the longest the committer goes without a look at the disk (statfs) while
// the last look found more than twice the reserve free, counting twice the bytes committed
// since (see admit). A look per commit was 2 % of the CPU at 2 000 commits/s.
const diskLookAgain = 10 * time.Millisecond

// diskState is what the committer last saw of the disk.
type diskState struct {
	free    atomic.Int64 // bytes available to us on the data dir's file system
	low     atomic.Bool  // free < MinFreeBytes + backlog: new events are refused
	checked atomic.Int64 // unix nanos of the last look
	since   atomic.Int64 // bytes admitted since the last look
	// backlog is what level 0 holds beyond the two memtables the reserve has room to compact
	// (see compactionBacklog); backlogAt is when it was last read (unix nanos).
	backlog, backlogAt atomic.Int64
}

// freeBytes is the space available to an unprivileged writer on the file system holding dir
// (or its nearest existing parent).
func freeBytes(dir string) (int64, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(dir)
		if !errors.Is(err, os.ErrNotExist) || parent == dir {
			return 0, err
		}
		dir = parent
	}
}

// checkDisk looks at the free space, expecting another incoming bytes to be written, and
// updates the low-space state. It reports whether there is room.
func (s *Store) checkDisk(incoming int64) bool {
	if s.opts.InMemory || s.opts.MinFreeBytes < 0 {
		return true
	}
	free, err := freeBytes(s.opts.Dir)
	s.disk.checked.Store(time.Now().UnixNano())
	s.disk.since.Store(incoming)
	if err != nil {
		// Not knowing is no reason to refuse: the commit itself will tell.
		s.log.Warn("storage: reading free disk space", "err", err)
		return true
	}
	s.disk.free.Store(free)
	// A commit writes its bytes to the write-ahead log and later once more to a table.
	low := free-2*incoming < s.opts.MinFreeBytes+s.compactionBacklog()
	if was := s.disk.low.Swap(low); low && !was {
		s.log.Error("storage: disk almost full, refusing new events until space is freed",
			"free_bytes", free, "storage.min_free_bytes", s.opts.MinFreeBytes,
			"compaction_backlog_bytes", s.disk.backlog.Load(), "dir", s.opts.Dir)
	} else if was && !low {
		s.log.Warn("storage: free disk space is back above storage.min_free_bytes: accepting events",
			"free_bytes", free, "compaction_backlog_bytes", s.disk.backlog.Load())
	}
	return !low
}

// compactionBacklog is how much more room than the reserve Badger's next compaction needs: the
// bytes of level 0 beyond two memtables. The reserve (four memtables by default) has room for
// the compaction of two level-0 tables, which Badger starts at two (levelZeroTables). When
// compactions fall behind the flushes, level 0 grows, and its compaction writes all of it
// before it deletes any: were new events accepted down to the bare reserve then, that
// compaction would find no room, level 0 would keep growing, and deleting delivered events
// would free nothing (a delete frees space only once compacted). Counting the backlog keeps
// that room; the events refused meanwhile are asked to come back (503, Retry-After).
func (s *Store) compactionBacklog() int64 {
	now := time.Now().UnixNano()
	if now-s.disk.backlogAt.Load() < int64(backlogRecheck) {
		return s.disk.backlog.Load()
	}
	s.disk.backlogAt.Store(now)
	var l0 int64
	if levels := s.db.Levels(); len(levels) > 0 {
		l0 = levels[0].Size
	}
	backlog := max(0, l0-2*s.opts.MemTableBytes)
	s.disk.backlog.Store(backlog)
	return backlog
}

// fullError is the refusal of a new event for lack of disk space.
func (s *Store) fullError(what string) error {
	if b := s.disk.backlog.Load(); b > 0 {
		return fmt.Errorf("%w: disk almost full (%d bytes free, storage.min_free_bytes is %d, plus %d for a compaction Badger has yet to do): free space on the disk%s",
			ErrFull, s.disk.free.Load(), s.opts.MinFreeBytes, b, what)
	}
	return fmt.Errorf("%w: disk almost full (%d bytes free, storage.min_free_bytes is %d): free space on the disk%s",
		ErrFull, s.disk.free.Load(), s.opts.MinFreeBytes, what)
}

// refusal says why an append of size bytes is refused now, or nil. Appends are refused while
// the disk is below its reserve and while the log holds storage.max_bytes.
func (s *Store) refusal(size int64) error {
	if s.disk.low.Load() && time.Now().UnixNano()-s.disk.checked.Load() > int64(diskRecheck) {
		s.checkDisk(0) // nothing may be committing to look again for us
	}
	if s.disk.low.Load() {
		return s.fullError("; queued events are still delivered")
	}
	if max := s.opts.MaxBytes; max > 0 {
		if held := s.logical.Load() + s.pending.Load(); held+size > max {
			return fmt.Errorf("%w: storage.max_bytes (%d bytes) reached, the log holds %d: raise it or let functions drain their queues",
				ErrFull, max, held)
		}
	}
	return nil
}

// Refusing reports why new events are refused right now (disk almost full, or no room left
// under storage.max_bytes for a 1 KiB event), or nil when they are accepted. /readyz answers not
// ready while it is not nil.
func (s *Store) Refusing() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.refusal(1 << 10)
}

// admit runs on the committer before a group is written: with too little disk left it fails
// the group's appends of new events with ErrFull, and keeps everything else (acks, dead
// letters, deletes, small KV writes), which frees space or costs almost none. Below half the
// reserve it fails everything: a write can make Badger switch to a new memtable, whose log it
// must allocate (two memtables), and Badger does not survive failing that (it exits on an
// assertion). Deliveries then wait, and are tried again, until space is back.
func (s *Store) admit(reqs []*writeReq, bytes int64) []*writeReq {
	if s.roomWithoutLooking(bytes) || s.checkDisk(bytes) {
		return reqs
	}
	critical := s.disk.free.Load()-2*bytes < s.opts.MinFreeBytes/2
	kept := reqs[:0]
	for _, r := range reqs {
		if len(r.entries) == 0 && !critical {
			kept = append(kept, r)
			continue
		}
		if len(r.entries) == 0 {
			s.pending.Add(-r.size)
			r.done(fmt.Errorf("writing: %w: disk almost full (%d bytes free, under half of storage.min_free_bytes, %d): free space on the disk; deliveries wait until then",
				ErrFull, s.disk.free.Load(), s.opts.MinFreeBytes))
			continue
		}
		s.pending.Add(-r.size)
		r.done(fmt.Errorf("committing: %w", s.fullError("")))
	}
	return kept
}

// roomWithoutLooking reports, without a statfs, that a commit of incoming bytes certainly has
// room: the last look, under diskLookAgain ago, found the disk above the reserve by more than
// the reserve again plus twice (the log, then a table) what was committed since. Otherwise
// the committer looks (checkDisk).
func (s *Store) roomWithoutLooking(incoming int64) bool {
	if s.opts.InMemory || s.opts.MinFreeBytes < 0 {
		return true
	}
	if s.disk.low.Load() || time.Now().UnixNano()-s.disk.checked.Load() > int64(diskLookAgain) {
		return false
	}
	since := s.disk.since.Add(incoming)
	return s.disk.free.Load()-2*since >= 2*s.opts.MinFreeBytes+s.disk.backlog.Load()
}

// entryBytes is what one stored entry counts in the log's logical size.
func entryBytes(item *badger.Item) int64 {
	return int64(len(item.Key())) + item.ValueSize()
}
