// Package storage is fleetgate's durable log on Badger: group-committed appends of events
// with a queue entry per chosen function (made durable by the store's own write-ahead log,
// one fdatasync per group), dead letters, retention, and a small KV.
package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/skl"

	"github.com/fleetgate/fleetgate/event"
)

// Target is one function chosen for an event by a rule.
type Target struct {
	Function string
	Rule     string
	Data     []byte // the rule's select output; nil means the event's own data
	// RuleVersion is the rule set version that chose the function (0: not known); it is kept
	// in the queue entry and shown in the event's fate (see Store.Fate).
	RuleVersion int
}

// Entry is one event to append with the functions it must be delivered to.
type Entry struct {
	Event          *event.Event
	Targets        []Target
	IdempotencyKey string // optional: if an entry with this key was stored within IdempotencyTTL, nothing is stored

	// Seq is set by Append: the commit sequence number, unique and ascending in commit order.
	Seq uint64
	// Duplicate is set by Append when IdempotencyKey was seen before: nothing was stored and
	// Event.ID is set to the id of the event stored the first time.
	Duplicate bool

	// seqID is set by Append when the event came without an id and got one made of its commit
	// time and Seq (event.NewSeqID): its fate needs no index.
	seqID bool
	// idSet is set when Append wrote Event.ID over an empty one (seqID, or a duplicate's id), so
	// that a group applied again can undo it.
	idSet bool
}

// Options configures a Store. Zero values take the defaults documented on each field.
type Options struct {
	Dir      string // data directory (required unless InMemory)
	InMemory bool   // for tests only: nothing survives Close

	MaxPendingBytes int64         // appends waiting for a commit, beyond which Append fails with ErrBusy (default 16 MiB: see PlanMemory)
	MaxGroupBytes   int           // bytes per commit group before it stops collecting (default 2 MiB)
	CommitDelay     time.Duration // the least time from one commit's start to the next one's (default 0: the next starts as soon as the previous is written); appends arriving meanwhile share it, fewer commits for more latency
	AutoCommitDelay time.Duration // if set (and CommitDelay is 0), the commit delay tried while commits are frequent and kept while the senders lose nothing by it (see autodelay.go)
	MaxBytes        int64         // refuse appends with ErrFull while the log holds this many bytes of events (default 0: no limit)
	MinFreeBytes    int64         // refuse appends with ErrFull while the disk has less free space (default 4 × MemTableBytes; <0: no check)
	MaxAge          time.Duration // delete events older than this even if undelivered, loudly (default 0: never)
	IdempotencyTTL  time.Duration // how long idempotency keys are remembered (default 24h)
	FateTTL         time.Duration // how long an event's fate can be looked up after it arrived and after each delivery or dead letter (default 24h; <0: no fate records)
	SweepInterval   time.Duration // how often delivered events are deleted (default DefaultSweepInterval, 250 ms; less often while sweeps are slow)
	GCInterval      time.Duration // how often the value log is garbage collected (default 1m)
	MemTableBytes   int64         // Badger memtable size (default 16 MiB: see PlanMemory); one commit may use 15% of it
	BlockCacheBytes int64         // Badger block cache (default 4 MiB: see PlanMemory; the log is read back only to catch up)

	// Gate, when set, can hold commits (tests only: see Gate).
	Gate *Gate

	Metrics *metrics.Set
	Logger  *slog.Logger
}

func (o *Options) setDefaults() {
	def, _ := PlanMemory(DefaultMemoryLimit)
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = def.MaxPendingBytes
	}
	if o.MaxGroupBytes <= 0 {
		o.MaxGroupBytes = 2 << 20
	}
	if o.IdempotencyTTL <= 0 {
		o.IdempotencyTTL = 24 * time.Hour
	}
	if o.FateTTL == 0 {
		o.FateTTL = DefaultFateTTL
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = DefaultSweepInterval
	}
	if o.GCInterval <= 0 {
		o.GCInterval = time.Minute
	}
	if o.MemTableBytes <= 0 {
		o.MemTableBytes = def.MemTableBytes
	}
	if o.BlockCacheBytes <= 0 {
		o.BlockCacheBytes = def.BlockCacheBytes
	}
	if o.MinFreeBytes == 0 {
		o.MinFreeBytes = DefaultMinFreeBytes(o.MemTableBytes)
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// MinMemTableBytes is the smallest memtable the store accepts (Badger's 1 MiB value threshold
// must stay under a transaction's limit, 15% of the memtable).
const MinMemTableBytes = 8 << 20

// txnLimits bounds requests and groups so that every group fits in one Badger transaction,
// which Badger caps at 15% of the memtable in bytes and that divided by its skiplist node size
// in entries (9.6 MiB and about 100k entries with the default 64 MiB memtable). The store's own
// size estimates leave out Badger's per-entry overhead, hence the margins.
type txnLimits struct {
	requestBytes, groupBytes     int64 // hard limits: a request over requestBytes is refused
	requestEntries, groupEntries int   // likewise in Badger entries
	softEntries                  int   // a group stops collecting at this many entries
}

func newTxnLimits(memtable int64) txnLimits {
	maxBytes := memtable * 15 / 100
	maxEntries := int(maxBytes / int64(skl.MaxNodeSize))
	return txnLimits{
		requestBytes:   min(4<<20, maxBytes/2),
		groupBytes:     maxBytes * 8 / 10,
		requestEntries: maxEntries * 6 / 10,
		groupEntries:   maxEntries * 9 / 10,
		softEntries:    maxEntries * 4 / 10,
	}
}

// Store is the durable log. All methods are safe for concurrent use.
type Store struct {
	opts   Options
	limits txnLimits
	db     *badger.DB
	log    *slog.Logger
	slab   groupSlab // the committer's: room for a group's keys and values (see groupSlab)

	reqs    chan *writeReq
	pending atomic.Int64 // bytes in reqs
	closing chan struct{}
	closed  atomic.Bool
	closeMu sync.RWMutex // held for reading while sending to reqs; for writing by Close
	done    sync.WaitGroup
	logical atomic.Int64 // bytes of events, queue entries and dead letters the log holds (keys + values)
	disk    diskState
	// maxReached is what the sweeper last logged about MaxBytes (appends check it themselves).
	maxReached atomic.Bool
	onCommit   atomic.Pointer[func([]*Entry)]

	lastSeq      uint64 // highest seq assigned; committer goroutine only
	committedSeq atomic.Uint64
	// lastCommitNanos is the duration of the last commit, for the committer's linger.
	sweptTo          atomic.Uint64 // every stand-alone event below this seq has been deleted
	watermarkNanos   atomic.Int64  // how long the last sweep's watermark took (see sweepCostFactor)
	lastCommitNanos  atomic.Int64
	lastWatermark    atomic.Uint64 // the last watermark computed (see watermark)
	commitDelay      atomic.Int64  // the committer's delay (CommitDelay, or the tuner's: autodelay.go)
	flushing         atomic.Bool   // a flush asked for by flushIfLogGrows is running
	totalCommitNanos atomic.Int64

	depthMu sync.Mutex
	depth   map[string]*depthCounter
	known   map[string]struct{} // the functions the committer made sure are in depth (knowFunction)

	wal      *wal   // nil in memory
	walGroup uint64 // the last group number written to the write-ahead log; committer only

	slowLogged time.Time // the last slow-commit warning; committer only

	m storeMetrics
}

type depthCounter struct{ queue, dead atomic.Int64 }

type storeMetrics struct {
	appended, duplicates, commits, commitErrors, busy *metrics.Counter
	expired, deleted                                  *metrics.Counter
	commitSeconds                                     *metrics.PrometheusHistogram
	groupEvents                                       *metrics.Histogram
	logSync                                           *metrics.Histogram // write + fdatasync of a group's record
	slowCommits                                       *metrics.Counter   // groups over slowCommit, in the committer
}

// slowCommit is how long a group may take in the committer (its record written and
// fdatasynced, the log's segment turned if it was full, Badger's memtable written) before it is
// counted in fleetgate_storage_slow_commits_total and logged: every acknowledgement of the group
// and of the groups behind it waits that long. Normal groups take a fraction of a millisecond
// to a few.
const slowCommit = 50 * time.Millisecond

// slowCommitLogEvery spaces the warnings about slow commits (the counter counts them all).
const slowCommitLogEvery = 10 * time.Second

// writeReq is one unit of the group commit: appends and raw operations, committed atomically.
type writeReq struct {
	entries []*Entry
	ops     []*op
	size    int64
	logical int64 // bytes of events and queue entries the entries add (set while applied)
	count   int   // Badger entries the request writes
	done    func(error)
	after   func() // runs on the committer after a successful commit, before done
}

// op is one raw write of a request, applied on the committer goroutine.
type op struct {
	key, value []byte
	delete     bool          // delete key (only if it exists, when counted)
	ttl        time.Duration // set with a TTL
	moveTo     []byte        // move key's value to moveTo (through wrap); skipped if key is missing
	wrap       func(old []byte) []byte
	fn         string // the function whose depths change when the op takes effect
	dq, dd     int64  // queue and dead-letter depth deltas
	applied    bool   // set by the committer: the op took effect
	logical    int64  // change of the log's logical bytes when the op takes effect (set by whoever knows)
}

// Open opens (or creates) the store in opts.Dir and starts its committer, sweeper and value-log GC.
func Open(opts Options) (*Store, error) {
	opts.setDefaults()
	if opts.MemTableBytes < MinMemTableBytes {
		return nil, fmt.Errorf("opening storage: %w: memtable of %d bytes, at least %d", ErrInvalid, opts.MemTableBytes, MinMemTableBytes)
	}
	if opts.Dir == "" && !opts.InMemory {
		return nil, fmt.Errorf("opening storage: %w: no data directory", ErrInvalid)
	}
	if !opts.InMemory && opts.MinFreeBytes > 0 {
		// Badger replays its write-ahead logs at open and flushes them to tables: with no room
		// for that it dies of SIGBUS in its mmapped files, at every restart.
		if free, err := freeBytes(opts.Dir); err == nil && free < opts.MinFreeBytes/2 {
			return nil, fmt.Errorf("opening storage in %q: %w: %d bytes free on its disk, at least %d needed to open the log safely (half of storage.min_free_bytes): free space on the disk, or move data_dir to a larger one",
				opts.Dir, ErrFull, free, opts.MinFreeBytes/2)
		}
	}
	bo := badger.DefaultOptions(opts.Dir).
		WithInMemory(opts.InMemory).
		WithSyncWrites(syncWrites).
		WithDetectConflicts(false).
		WithLogger(badgerLogger{opts.Logger}).
		WithNumVersionsToKeep(1).
		WithMemTableSize(opts.MemTableBytes).
		WithBlockCacheSize(opts.BlockCacheBytes).
		WithNumMemtables(numMemtables).
		WithMetricsEnabled(false).
		WithValueLogFileSize(valueLogFileBytes).
		WithNumCompactors(2) // Badger's minimum; each builds tables in memory (default 4)
	// Level-0 tables (memtable flushes) are compacted soon: built without compression, they
	// take half the memory to build and no CPU to compress (patched Badger).
	bo.FlushUncompressed = true
	// A flush leaves out the versions a newer one in the same memtable shadows (patched
	// Badger): an event delivered, acknowledged and deleted before its memtable is flushed
	// reaches the tables as its deletion alone, and compactions do not rewrite its value.
	bo.FlushDropsShadowed = flushDropsShadowed
	// Compact level 0 into level 1 at 2 tables, not 5: a compaction reads its tables through
	// Badger's memory maps, so every level-0 table waiting for one is resident memory then.
	bo.NumLevelZeroTables = levelZeroTables
	if opts.InMemory {
		bo.Dir, bo.ValueDir = "", ""
	}

	// Commits are made durable by the store's write-ahead log (wal.go), written with write(2)
	// and one fdatasync per group: Badger's own sync (an msync of its mapped memtable log per
	// commit) would only repeat it, at a higher cost. With that log Badger's memtables need
	// none of their own (patched Badger, third_party/badger/PATCHES.md): a segment of ours is
	// deleted once the memtables holding its groups are flushed to tables.
	bo.SyncWrites = false
	flushed := new(atomic.Uint64) // the highest Badger version flushed to a table
	if !opts.InMemory {
		bo = bo.WithExternalWAL(!badgerOwnLog, func(v uint64) {
			for old := flushed.Load(); v > old && !flushed.CompareAndSwap(old, v); old = flushed.Load() {
			}
		})
	}

	if err := checkBeforeOpen(&opts); err != nil { // refuse a damaged dir: Badger would drop data or panic
		return nil, err
	}
	if err := flushLargerLogs(bo); err != nil {
		return nil, err
	}
	db, err := badger.Open(bo)
	if err != nil {
		return nil, fmt.Errorf("opening storage in %q: %w", opts.Dir, err)
	}
	var w *wal
	var nextGroup uint64
	if !opts.InMemory {
		if w, nextGroup, err = openWAL(opts.Dir, db, flushed, opts.Logger); err != nil {
			db.Close()
			return nil, fmt.Errorf("opening storage in %q: %w", opts.Dir, err)
		}
	}
	s := &Store{
		opts:    opts,
		limits:  newTxnLimits(opts.MemTableBytes),
		db:      db,
		log:     opts.Logger,
		reqs:    make(chan *writeReq, 1<<14),
		closing: make(chan struct{}),
		depth:   map[string]*depthCounter{},
		known:   map[string]struct{}{},
		wal:     w,
	}
	if w != nil {
		s.walGroup = nextGroup - 1
	}
	start := time.Now()
	if err := s.load(); err != nil {
		if w != nil {
			w.f.Close()
		}
		db.Close()
		return nil, err
	}
	var pending, dead int64
	for _, c := range s.depth {
		pending += c.queue.Load()
		dead += c.dead.Load()
	}
	s.log.Info("storage opened", "dir", opts.Dir, "last_seq", s.lastSeq, "pending", pending,
		"dead_letters", dead, "functions", len(s.depth), "took", time.Since(start).Round(time.Millisecond))
	ms := opts.Metrics
	s.m = storeMetrics{
		appended:      ms.NewCounter("fleetgate_storage_events_appended_total"),
		duplicates:    ms.NewCounter("fleetgate_storage_duplicates_total"),
		commits:       ms.NewCounter("fleetgate_storage_commits_total"),
		commitErrors:  ms.NewCounter("fleetgate_storage_commit_errors_total"),
		busy:          ms.NewCounter("fleetgate_storage_busy_total"),
		expired:       ms.NewCounter("fleetgate_storage_expired_events_total"),
		deleted:       ms.NewCounter("fleetgate_storage_events_deleted_total"),
		commitSeconds: ms.NewPrometheusHistogram("fleetgate_storage_commit_seconds"),
		groupEvents:   ms.NewHistogram("fleetgate_storage_commit_group_events"),
		logSync:       ms.NewHistogram("fleetgate_storage_log_sync_seconds"),
		slowCommits:   ms.NewCounter("fleetgate_storage_slow_commits_total"),
	}
	ms.NewGauge("fleetgate_storage_pending_bytes", func() float64 { return float64(s.pending.Load()) })
	ms.NewGauge("fleetgate_storage_disk_bytes", func() float64 { return float64(s.Size()) })
	ms.NewGauge("fleetgate_storage_logical_bytes", func() float64 { return float64(s.logical.Load()) })
	ms.NewGauge("fleetgate_storage_disk_free_bytes", func() float64 { return float64(s.disk.free.Load()) })
	ms.NewGauge("fleetgate_storage_compaction_backlog_bytes", func() float64 { return float64(s.disk.backlog.Load()) })
	// The limits, so that a dashboard (the console's overview) can show use against them.
	ms.NewGauge("fleetgate_storage_max_bytes", func() float64 { return float64(max(s.opts.MaxBytes, 0)) })
	ms.NewGauge("fleetgate_storage_min_free_bytes", func() float64 { return float64(max(s.opts.MinFreeBytes, 0)) })
	ms.NewGauge("fleetgate_storage_full", func() float64 {
		if s.Refusing() != nil {
			return 1
		}
		return 0
	})
	s.commitDelay.Store(int64(opts.CommitDelay))
	ms.NewGauge("fleetgate_storage_commit_delay_seconds", func() float64 { return time.Duration(s.commitDelay.Load()).Seconds() })
	s.checkDisk(0)
	if opts.AutoCommitDelay > 0 && opts.CommitDelay == 0 {
		s.done.Add(1)
		go s.autoDelayLoop()
	}
	s.done.Add(3)
	go s.commitLoop()
	go s.sweepLoop()
	go s.gcLoop()
	if s.wal != nil {
		s.done.Add(1)
		go s.checkpointLoop()
	}
	return s, nil
}

// load restores the last sequence number and the queue depths.
func (s *Store) load() error {
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(nsMetaSeq))
		switch {
		case err == nil:
			v, err := item.ValueCopy(nil)
			if err != nil || len(v) != 8 {
				return fmt.Errorf("reading sequence number: corrupt value (%v)", err)
			}
			s.lastSeq = binary.BigEndian.Uint64(v)
			s.committedSeq.Store(s.lastSeq)
		case !errors.Is(err, badger.ErrKeyNotFound):
			return fmt.Errorf("reading sequence number: %w", err)
		}
		var logical int64
		defer func() { s.logical.Store(logical) }()
		for _, ns := range []byte{nsEvent, nsQueue, nsDead} {
			// One iterator per namespace, bounded by it (an unbounded one would read the
			// tombstones of the namespace after an empty one: see watermark).
			it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false, Prefix: []byte{ns}})
			defer it.Close()
			for it.Seek([]byte{ns}); it.ValidForPrefix([]byte{ns}); it.Next() {
				if ns == nsEvent {
					logical += entryBytes(it.Item())
					continue
				}
				logical += entryBytes(it.Item())
				fn, _, ok := parseFnKey(it.Item().Key())
				if !ok {
					continue
				}
				c := s.counter(fn)
				if ns == nsQueue {
					c.queue.Add(1)
				} else {
					c.dead.Add(1)
				}
			}
		}
		return nil
	})
}

// knowFunction makes sure fn has a depth counter before its first queue entry is written:
// the watermark reads the queues of the functions in s.depth (see watermark). Committer
// goroutine only.
func (s *Store) knowFunction(fn string) {
	if _, ok := s.known[fn]; !ok {
		s.counter(fn)
		s.known[fn] = struct{}{}
	}
}

func (s *Store) counter(fn string) *depthCounter {
	s.depthMu.Lock()
	defer s.depthMu.Unlock()
	c := s.depth[fn]
	if c == nil {
		c = &depthCounter{}
		s.depth[fn] = c
	}
	return c
}

// SetOnCommit sets the hot-tail hook: after each durable commit, fn is called on the committer
// goroutine with that commit's new (non-duplicate) entries in Seq order. fn must not block and
// must not retain the slice (the entries themselves may be kept).
func (s *Store) SetOnCommit(fn func(committed []*Entry)) {
	if fn == nil {
		s.onCommit.Store(nil)
		return
	}
	s.onCommit.Store(&fn)
}

// Append stores entries durably: it returns nil only after they (and their queue entries) are
// fsynced, sharing the commit with concurrent callers. Either all entries are stored or none.
// If ctx ends first, the append may still complete.
func (s *Store) Append(ctx context.Context, entries []*Entry) error {
	ch := make(chan error, 1)
	s.AppendAsync(entries, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AppendAsync is Append that calls done exactly once, after the fsync or on failure, instead of
// blocking. done runs on the committer goroutine and must not block.
func (s *Store) AppendAsync(entries []*Entry, done func(error)) {
	var size int64
	count := 0
	for _, e := range entries {
		count += 2 + len(e.Targets)
		if e.Event == nil {
			done(fmt.Errorf("appending: %w: entry without event", ErrInvalid))
			return
		}
		if s.fateOn() && e.Event.ID != "" {
			count++ // the fate index of an id the sender chose (ids the log makes need none)
			size += fateIndexBytes
		}
		for _, t := range e.Targets {
			if !validFunction(t.Function) {
				done(fmt.Errorf("appending: %w: function name %q", ErrInvalid, t.Function))
				return
			}
			size += int64(len(t.Function) + len(t.Data) + 24)
		}
		size += int64(e.Event.Size())
	}
	if err := s.refusal(size); err != nil {
		done(fmt.Errorf("appending: %w", err))
		return
	}
	s.submit(&writeReq{entries: entries, size: size, count: count, done: done})
}

// submit hands r to the committer or fails it.
func (s *Store) submit(r *writeReq) {
	r.count += len(r.ops)
	if lim := s.limits; r.size > lim.requestBytes || r.count > lim.requestEntries {
		r.done(fmt.Errorf("writing: %w: %d bytes, %d entries (limits %d bytes, %d entries)", ErrTooLarge, r.size, r.count, lim.requestBytes, lim.requestEntries))
		return
	}
	if s.pending.Add(r.size) > s.opts.MaxPendingBytes {
		s.pending.Add(-r.size)
		s.m.busy.Inc()
		r.done(fmt.Errorf("writing: %w (%d bytes pending)", ErrBusy, s.opts.MaxPendingBytes))
		return
	}
	s.closeMu.RLock()
	if s.closed.Load() {
		s.closeMu.RUnlock()
		s.pending.Add(-r.size)
		r.done(ErrClosed)
		return
	}
	select {
	case s.reqs <- r:
		s.closeMu.RUnlock()
	default:
		s.closeMu.RUnlock()
		s.pending.Add(-r.size)
		s.m.busy.Inc()
		r.done(fmt.Errorf("writing: %w (commit queue full)", ErrBusy))
	}
}

// write runs ops through the group commit and waits for them to be durable.
func (s *Store) write(ops []*op, after func()) error {
	var size int64
	for _, o := range ops {
		size += o.size()
	}
	ch := make(chan error, 1)
	s.submit(&writeReq{ops: ops, size: size, after: after, done: func(err error) { ch <- err }})
	return <-ch
}

// size is what o counts in a request's bytes.
func (o *op) size() int64 { return int64(len(o.key) + len(o.value) + 16) }

// writeGroups runs groups of ops through the group commit: in one request, as write, when they
// fit one commit's limits, else in requests of whole groups that do, one after another (a group
// too large alone fails with ErrTooLarge). For a batch that need not be one atomic commit but
// would fail whole over the limits; a group's ops stay together. It stops at the first error.
func (s *Store) writeGroups(groups [][]*op) error {
	var req []*op
	var size int64
	for _, g := range groups {
		var sz int64
		for _, o := range g {
			sz += o.size()
		}
		if len(req) > 0 && (len(req)+len(g) > s.limits.requestEntries || size+sz > s.limits.requestBytes) {
			if err := s.write(req, nil); err != nil {
				return err
			}
			req, size = nil, 0
		}
		req = append(req, g...)
		size += sz
	}
	if len(req) == 0 {
		return nil
	}
	return s.write(req, nil)
}

// writeChunks is writeGroups for ops each of which stands alone (bulk deletions).
func (s *Store) writeChunks(ops []*op) error {
	if len(ops) <= s.limits.requestEntries {
		var size int64
		for _, o := range ops {
			size += o.size()
		}
		if size <= s.limits.requestBytes {
			return s.write(ops, nil) // the usual case: one commit
		}
	}
	groups := make([][]*op, len(ops))
	for i := range ops {
		groups[i] = ops[i : i+1]
	}
	return s.writeGroups(groups)
}

// maxInflightCommits bounds the groups written and not yet completed (their callers not yet
// told): the completion goroutine answers one group's callers while the next is being written.
const maxInflightCommits = 4

// valueLogFileBytes is the size of Badger's value log files, which hold only values over 1 MiB
// (few events are that large). Badger maps twice this size, and the patched ristretto in
// third_party allocates every mapped file's blocks up front (no SIGBUS on a full disk), so the
// default of 1 GiB would take 2 GiB of disk at open.
const valueLogFileBytes = 16 << 20

// numMemtables is how many full memtables Badger queues for its flush: with the one being
// written and the one being flushed, at most numMemtables+2 are in memory, each an arena of
// about 1.3 × MemTableBytes on the Go heap (3 used to mean up to 5 arenas of 83 MiB).
var numMemtables = 1

// flushDropsShadowed turns Options.FlushDropsShadowed of patched Badger on (a variable for the
// tests that compare with it off).
var flushDropsShadowed = true

// levelZeroTables is how many level-0 tables start a compaction into level 1 (Badger's default
// is 5). Tests that damage tables one by one raise it, to keep their tables apart.
var levelZeroTables = 2

// badgerOwnLog gives Badger's memtables their own logs (.mem files) again, as before Badger
// was patched: tests set it to write a store as older versions left it.
var badgerOwnLog = false

// lingerEnabled switches the committer's linger (see commitLoop); benchmarks compare both.
var lingerEnabled = true

// syncWrites makes every commit fsync (fdatasync its write-ahead log record) before it is
// acknowledged. Only tests change it: the power-loss tests turn it off once to prove they
// notice.
var syncWrites = true

// group is one transaction's worth of requests on its way through Badger.
type group struct {
	reqs    []*writeReq
	start   time.Time
	seq     uint64 // highest seq assigned in the group
	wal     uint64 // the group's number in the write-ahead log (0: none)
	nEvents int
	err     chan error
}

func (s *Store) commitLoop() {
	defer s.done.Done()
	inflight := make(chan *group, maxInflightCommits)
	completed := make(chan struct{})
	go func() {
		defer close(completed)
		for g := range inflight {
			s.complete(g, <-g.err)
		}
	}()
	defer func() {
		close(inflight)
		<-completed
	}()
	var carry *writeReq // a request that did not fit in the previous group
	prevReqs := 0       // requests in recent groups (decaying maximum)
	var lastBegin time.Time
	delay := time.NewTimer(time.Hour)
	defer delay.Stop()
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-s.reqs:
			case <-s.closing:
				// Commit what was submitted before Close took the lock.
				for {
					select {
					case r := <-s.reqs:
						if g := s.begin(nil, []*writeReq{r}); g != nil {
							inflight <- g
						}
					default:
						return
					}
				}
			}
		}
		// CommitDelay: a group starts no sooner than that after the previous one did, and the
		// requests arriving meanwhile join it (one fdatasync and one wake-up of each stage for
		// all of them). Close does not wait for it.
		if d := time.Duration(s.commitDelay.Load()) - time.Since(lastBegin); d > 0 && !lastBegin.IsZero() {
			delay.Reset(d)
			select {
			case <-delay.C:
			case <-s.closing:
			}
		}
		lastBegin = time.Now()
		// The previous group is in Badger already (begin applies it on this goroutine); the
		// transaction waits for other writers' commits only if it reads (newTxn).
		txn := s.newTxn()
		reqs := []*writeReq{first}
		bytes, count := first.size, first.count
		// The writers released by the previous commit are about to come back: when the last
		// groups had many requests, linger a little (a fraction of a commit) for them, so the
		// groups do not alternate between the two halves of the writers.
		var linger <-chan time.Time
		var lingerTimer *time.Timer
		if lingerEnabled && prevReqs > 4 {
			lingerTimer = time.NewTimer(min(time.Duration(s.lastCommitNanos.Load())/4, 2*time.Millisecond))
			linger = lingerTimer.C
		}
	drain:
		for bytes < int64(s.opts.MaxGroupBytes) && count < s.limits.softEntries {
			var r *writeReq
			select {
			case r = <-s.reqs:
			default:
				if linger == nil || len(reqs) >= prevReqs {
					break drain
				}
				select {
				case r = <-s.reqs:
				case <-linger:
					break drain
				}
			}
			if bytes+r.size > s.limits.groupBytes || count+r.count > s.limits.groupEntries {
				carry = r // Badger's transaction limits: it starts the next group
				break drain
			}
			reqs = append(reqs, r)
			bytes += r.size
			count += r.count
		}
		if lingerTimer != nil {
			lingerTimer.Stop()
		}
		prevReqs = max(prevReqs*3/4, len(reqs))
		if reqs = s.admit(reqs, bytes); len(reqs) == 0 {
			txn.Discard()
			continue
		}
		s.opts.Gate.pass(s.closing)
		if g := s.begin(txn, reqs); g != nil {
			inflight <- g
		}
	}
}

// newTxn opens the update transaction of a commit group. It does not wait for earlier commits
// to be written unless it reads (patched Badger's NewWriteTransaction): the committer's own
// are, since each is applied before the next group starts.
func (s *Store) newTxn() *walTxn {
	if s.wal == nil {
		return newWALTxn(s.db.NewWriteTransaction(), nil, false)
	}
	return newWALTxn(s.db.NewWriteTransaction(), s.wal.buf, true)
}

// begin writes a group's requests into one transaction, appends its record to the write-ahead
// log (one fdatasync for the whole group) and then applies it to Badger; g.err holds the
// outcome. Requests that cannot be applied are failed and left out. It returns nil if no
// request is left. txn, if not nil, is a fresh update transaction to use.
func (s *Store) begin(txn *walTxn, reqs []*writeReq) *group {
	for {
		// The keys and values of the last group (or of this one, dropped) are in Badger.
		s.slab.reset()
		g := &group{reqs: reqs, start: time.Now(), err: make(chan error, 1)}
		if txn == nil {
			txn = s.newTxn()
		}
		seq := s.lastSeq
		var buf []byte
		var groupKeys map[string]*Entry // idempotency keys seen earlier in this group
		bad := -1
		var badErr error
		now := time.Now() // the group's commit time, in the ids of its events
		for i, r := range reqs {
			if err := s.applyReq(txn, r, now, &seq, &buf, &groupKeys); err != nil {
				bad, badErr = i, err
				break
			}
			g.nEvents += len(r.entries)
		}
		if bad >= 0 {
			txn.Discard()
			txn = nil
			r := reqs[bad]
			s.pending.Add(-r.size)
			r.done(badErr)
			reqs = append(reqs[:bad:bad], reqs[bad+1:]...)
			for _, r := range reqs {
				for _, e := range r.entries {
					if e.idSet {
						e.Event.ID = ""
					}
					e.Seq, e.Duplicate, e.seqID, e.idSet = 0, false, false, false
				}
			}
			if len(reqs) == 0 {
				return nil
			}
			continue
		}
		var seqBuf [8]byte
		binary.BigEndian.PutUint64(seqBuf[:], seq)
		if err := txn.SetEntry(badger.NewEntry([]byte(nsMetaSeq), seqBuf[:])); err != nil {
			txn.Discard()
			g.err <- err
			return g
		}
		walStart := time.Now()
		var walTook time.Duration
		rotated := false
		if s.wal != nil {
			// The durable write: the group's record, fdatasynced, before Badger applies it
			// and before anyone is acknowledged.
			segment := s.wal.seg
			if err := s.wal.append(s.walGroup+1, txn); err != nil {
				txn.Discard()
				g.err <- err
				return g
			}
			walTook, rotated = time.Since(walStart), s.wal.seg != segment
			s.m.logSync.Update(walTook.Seconds())
			s.walGroup++
			g.wal = s.walGroup
		}
		s.lastSeq, g.seq = seq, seq
		// Badger applies the group on this goroutine (patched CommitInline): no hand-off to
		// its write goroutine and back before the group can be acknowledged.
		applyStart := time.Now()
		g.err <- txn.CommitInline()
		if s.wal != nil {
			s.wal.committed(g.wal, txn.CommittedTs())
		}
		if took := time.Since(g.start); took > slowCommit {
			s.slowCommitted(g, took, walStart.Sub(g.start), walTook, rotated, time.Since(applyStart))
		}
		return g
	}
}

// slowCommitted counts a group that took longer than slowCommit in the committer and, at most
// once per slowCommitLogEvery, says where the time went: building the group's transaction
// (before), the log's write and fdatasync (turning to a new segment if rotated), Badger's
// memtable (waiting for room there when a full memtable is still being flushed).
func (s *Store) slowCommitted(g *group, took, before, walTook time.Duration, rotated bool, apply time.Duration) {
	s.m.slowCommits.Inc()
	if !s.slowLogged.IsZero() && time.Since(s.slowLogged) < slowCommitLogEvery {
		return
	}
	s.slowLogged = time.Now()
	s.log.Warn("storage: slow commit: acknowledgements waited for it",
		"took", took.Round(time.Microsecond), "events", g.nEvents, "requests", len(g.reqs),
		"prepare", before.Round(time.Microsecond), "log_write_and_sync", walTook.Round(time.Microsecond),
		"log_segment_turned", rotated, "memtable", apply.Round(time.Microsecond))
}

// complete finishes a group after Badger answered: counters, the hot-tail hook, then the
// callers. Groups complete in the order they began.
func (s *Store) complete(g *group, err error) {
	s.m.commitSeconds.UpdateDuration(g.start)
	d := int64(time.Since(g.start))
	s.lastCommitNanos.Store(d)
	s.totalCommitNanos.Add(d)
	for _, r := range g.reqs {
		s.pending.Add(-r.size)
	}
	if g.wal > 0 {
		// Applied to Badger (or failed there: then it was never acknowledged, and the
		// checkpoint may forget it).
		s.wal.applied.Store(g.wal)
	}
	if err != nil {
		s.m.commitErrors.Inc()
		err = s.classify(err)
		s.log.Error("storage commit failed", "err", err, "requests", len(g.reqs))
		for _, r := range g.reqs {
			r.done(err)
		}
		return
	}
	s.committedSeq.Store(g.seq)
	s.m.commits.Inc()
	s.m.groupEvents.Update(float64(g.nEvents))
	var committed []*Entry
	for _, r := range g.reqs {
		s.logical.Add(r.logical)
		for _, e := range r.entries {
			if e.Duplicate {
				s.m.duplicates.Inc()
				continue
			}
			s.m.appended.Inc()
			committed = append(committed, e)
			for _, t := range e.Targets {
				s.counter(t.Function).queue.Add(1)
			}
		}
		for _, o := range r.ops {
			if o.applied {
				s.logical.Add(o.logical)
			}
			if o.applied && o.fn != "" {
				c := s.counter(o.fn)
				c.queue.Add(o.dq)
				c.dead.Add(o.dd)
			}
		}
		if r.after != nil {
			r.after()
		}
	}
	if fn := s.onCommit.Load(); fn != nil && len(committed) > 0 {
		(*fn)(committed)
	}
	for _, r := range g.reqs {
		r.done(nil)
	}
}

func (s *Store) applyReq(txn *walTxn, r *writeReq, now time.Time, seq *uint64, buf *[]byte, groupKeys *map[string]*Entry) error {
	r.logical = 0
	for _, e := range r.entries {
		if e.IdempotencyKey != "" {
			if prev := (*groupKeys)[e.IdempotencyKey]; prev != nil {
				e.idSet = e.idSet || e.Event.ID == ""
				e.Duplicate, e.Event.ID = true, prev.Event.ID
				continue
			}
			item, err := txn.Get(append([]byte{nsIdem}, e.IdempotencyKey...))
			if err == nil {
				v, err := item.ValueCopy(nil)
				if err == nil && len(v) >= 8 {
					e.idSet = e.idSet || e.Event.ID == ""
					e.Duplicate, e.Event.ID = true, string(v[8:])
					continue
				}
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				return fmt.Errorf("checking idempotency key: %w", err)
			}
		}
		*seq++
		e.Seq = *seq
		e.seqID = e.Event.ID == ""
		if e.seqID {
			e.idSet = true
			e.Event.ID = event.NewSeqID(now, e.Seq)
		}
		*buf = binary.BigEndian.AppendUint64((*buf)[:0], uint64(now.UnixNano()))
		*buf = e.Event.AppendBinary(*buf)
		if len(e.Targets) == 1 {
			// One function: the event lives in its queue entry alone (one Badger entry, not two).
			t := e.Targets[0]
			s.knowFunction(t.Function)
			k := appendFnKey(s.slab.take(fnKeySize(t.Function)), nsQueue, t.Function, e.Seq)
			v := encodeTarget(s.slab.take(targetSize(t.Rule, t.Data, *buf)), t.Rule, t.RuleVersion, t.Data, *buf)
			if err := txn.SetEntry(badger.NewEntry(k, v)); err != nil {
				return fmt.Errorf("storing queue entry: %w", err)
			}
			r.logical += int64(len(k) + len(v))
		} else if len(e.Targets) == 0 {
			// No function: the event is durable in the write-ahead log before it is
			// acknowledged, and Badger does not get it (nothing would read it before the
			// sweep deleted it: that insertion, the sweep's reading and its deletion were a
			// quarter of the CPU of store-only ingest).
			var key [1 + seqKeySize]byte
			if err := txn.LogOnly(appendEventKey(key[:0], e.Seq), *buf); err != nil {
				return fmt.Errorf("storing event: %w", err)
			}
		} else {
			k, v := appendEventKey(s.slab.take(1+seqKeySize), e.Seq), append(s.slab.take(len(*buf)), *buf...)
			if err := txn.SetEntry(badger.NewEntry(k, v)); err != nil {
				return fmt.Errorf("storing event: %w", err)
			}
			r.logical += int64(len(k) + len(v))
			for _, t := range e.Targets {
				s.knowFunction(t.Function)
				k := appendFnKey(s.slab.take(fnKeySize(t.Function)), nsQueue, t.Function, e.Seq)
				v := encodeTarget(s.slab.take(targetSize(t.Rule, t.Data, nil)), t.Rule, t.RuleVersion, t.Data, nil)
				if err := txn.SetEntry(badger.NewEntry(k, v)); err != nil {
					return fmt.Errorf("storing queue entry: %w", err)
				}
				r.logical += int64(len(k) + len(v))
			}
		}
		if e.IdempotencyKey != "" {
			v := binary.BigEndian.AppendUint64(nil, e.Seq)
			v = append(v, e.Event.ID...)
			if err := txn.SetEntry(badger.NewEntry(append([]byte{nsIdem}, e.IdempotencyKey...), v).WithTTL(s.opts.IdempotencyTTL)); err != nil {
				return fmt.Errorf("storing idempotency key: %w", err)
			}
			if *groupKeys == nil {
				*groupKeys = map[string]*Entry{}
			}
			(*groupKeys)[e.IdempotencyKey] = e
		}
		if s.fateOn() && !e.seqID {
			if err := s.putFateIndex(txn, e); err != nil {
				return err
			}
		}
	}
	for _, o := range r.ops {
		if err := applyOp(txn, o); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
	}
	return nil
}

// classify maps Badger and OS errors to the package's sentinels.
func (s *Store) classify(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), strings.Contains(err.Error(), syscall.ENOSPC.Error()):
		// Badger wraps some errors as text only: "no space left on device" is matched too.
		return fmt.Errorf("committing: %w: disk full: %v", ErrFull, err)
	case errors.Is(err, badger.ErrTxnTooBig):
		return fmt.Errorf("committing: %w: %v", ErrTooLarge, err)
	case errors.Is(err, badger.ErrDBClosed), errors.Is(err, badger.ErrBlockedWrites):
		return fmt.Errorf("committing: %w: %v", ErrClosed, err)
	}
	return fmt.Errorf("committing: %w", err)
}

// Close stops accepting writes, commits what was already submitted, and closes Badger.
// Calls made after Close fail with ErrClosed.
// closeFlushWait is how long Close waits for the flush of the memtable.
var closeFlushWait = 10 * time.Second

func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed.Swap(true) {
		s.closeMu.Unlock()
		return nil
	}
	close(s.closing)
	s.closeMu.Unlock()
	s.done.Wait()
	if s.wal != nil {
		// What Badger holds only in memory goes to a table first, so that the log's
		// segments can all go and the next open has nothing to replay.
		// Not forever: on a disk that stays full the flush fails again and again (Badger
		// retries every second). The log keeps what is not flushed and the next open replays
		// it; and once Badger is closing, its flusher gives up (patched Badger).
		flushed := make(chan error, 1)
		go func() { flushed <- s.db.FlushMemTable() }()
		select {
		case err := <-flushed:
			if err != nil {
				s.log.Error("storage: flushing the memtable at close (the write-ahead log keeps it; the next open replays it)", "err", err)
			}
		case <-time.After(closeFlushWait):
			s.log.Error("storage: the memtable's flush at close has not finished (is the disk full?); closing without it: the write-ahead log keeps it and the next open replays it",
				"waited", closeFlushWait)
		}
		if err := s.wal.close(); err != nil {
			// The segments stay: the next Open replays them.
			s.log.Error("storage: closing the write-ahead log", "err", err)
		}
	}
	return s.db.Close()
}

// Size is the disk space the data directory uses, in bytes (blocks allocated, as du counts).
func (s *Store) Size() int64 {
	if s.opts.InMemory {
		l, v := s.db.Size()
		return l + v
	}
	var total int64
	_ = filepath.WalkDir(s.opts.Dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			} else {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error("badger: " + fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn("badger: " + fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any)    {}
func (b badgerLogger) Debugf(f string, a ...any)   {}

// applyOp applies one raw op inside the group's transaction.
func applyOp(txn *walTxn, o *op) error {
	o.applied = false
	counted := o.fn != ""
	switch {
	case o.moveTo != nil:
		item, err := txn.Get(o.key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		old, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		v := o.wrap(old)
		if err := txn.SetEntry(badger.NewEntry(o.moveTo, v)); err != nil {
			return err
		}
		if err := txn.Delete(o.key); err != nil {
			return err
		}
		o.logical = int64(len(o.moveTo)+len(v)) - int64(len(o.key)+len(old))
		o.applied = true
		return nil
	case counted:
		// Only whether the key is there, and its size: its value is not copied out (an
		// acknowledgement's delete copied its queue entry, event and all).
		size, err := txn.GetValueSize(o.key)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if o.delete {
			o.logical = -(int64(len(o.key)) + size)
		}
	}
	var err error
	switch {
	case o.delete:
		err = txn.Delete(o.key)
	case o.ttl > 0:
		err = txn.SetEntry(badger.NewEntry(o.key, o.value).WithTTL(o.ttl))
	default:
		err = txn.SetEntry(badger.NewEntry(o.key, o.value))
	}
	o.applied = err == nil
	return err
}
