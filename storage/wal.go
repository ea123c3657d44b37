package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"golang.org/x/sys/unix"
)

// The store's own write-ahead log, in front of Badger. Every commit group is appended to a
// segment file as one record with write(2) and made durable with one fdatasync; only then is
// the group handed to Badger (whose own sync is off) and its callers acknowledged. Badger
// would otherwise msync its memory-mapped memtable log once per commit, and fault its pages
// back in after every sync: that was a third of the process's CPU under single-event load.
//
// A record holds the group's writes as they went to Badger (sets with their absolute expiry,
// deletes), not the operations that produced them, so replaying a record is a blind write:
// replaying every record after the last checkpoint, in order, over whatever Badger recovered
// leaves each key as the last record wrote it. Badger (patched, third_party/badger) keeps no
// log of its own for its memtables: a group is durable in Badger only once the memtable that
// holds it is flushed to a table, which Badger reports with the highest version (commit
// timestamp) flushed. A checkpoint takes the full segments whose last group is flushed, syncs
// Badger's value logs (values over 1 MiB, which tables point into), records in its own file
// the last group of those segments and deletes them. At open, records above the checkpoint
// are replayed and flushed to a table; a torn record at a segment's end (a write that was
// never acknowledged) ends that segment.
//
// Layout in <data dir>/wal/: NNNNNNNNNNNNNNNN.log segments (hex number, ascending) and the
// file checkpoint. Record: 4 bytes payload length, 4 bytes CRC-32C of the payload (little
// endian), the payload: 8 bytes group number and 4 bytes count of writes (big endian), then
// each write: kind (0 set, 1 delete), uvarint key length, key, and for a set a uvarint value
// length, the value and a uvarint expiry (Unix seconds, 0: none).

const (
	walDirName        = "wal"
	walSuffix         = ".log"
	walCheckpointName = "checkpoint"
	walRecordHeader   = 8
	walPayloadHeader  = 12 // group number and count of writes
	// walMaxRecordBytes bounds a record read back: a length above it is damage, not a group
	// (a group is at most a Badger transaction: 15% of the largest memtable's bytes).
	walMaxRecordBytes = 256 << 20
	walSet, walDelete = 0, 1
)

var walCRC = crc32.MakeTable(crc32.Castagnoli)

// errWALTorn means a record is cut short or fails its checksum: the end of what was written.
var errWALTorn = errors.New("torn or damaged write-ahead log record")

// walWrite is one write of a record.
type walWrite struct {
	del        bool
	key, value []byte
	expiresAt  uint64
}

// walTxn is a Badger transaction that also encodes, for the write-ahead log, every write made
// through it. The committer's code writes through it only. rec is the record being built: its
// headers are filled in by the log when it is written.
type walTxn struct {
	*badger.Txn
	n   int
	rec []byte // nil: no log (a store in memory)
}

// newWALTxn starts a transaction whose record is built in buf's space, or none if !logged.
func newWALTxn(txn *badger.Txn, buf []byte, logged bool) *walTxn {
	t := &walTxn{Txn: txn}
	if logged {
		t.rec = append(buf[:0], make([]byte, walRecordHeader+walPayloadHeader)...)
	}
	return t
}

func (t *walTxn) SetEntry(e *badger.Entry) error {
	if err := t.Txn.SetEntry(e); err != nil || t.rec == nil {
		return err
	}
	t.n++
	t.rec = appendWALWrite(t.rec, walWrite{key: e.Key, value: e.Value, expiresAt: e.ExpiresAt})
	return nil
}

// LogOnly writes key and value to the record only, not to Badger: a write that must be durable
// before the acknowledgement but that nothing reads afterwards (an event no function needs,
// which the sweep would delete soon after). A replay applies it as any set, and the sweep then
// deletes it. Without a log (a store in memory) it is a plain set. The caller may reuse key and
// value once it returns (the record holds copies): no Badger entry is made for it.
func (t *walTxn) LogOnly(key, value []byte) error {
	if t.rec == nil {
		// Badger keeps both until the commit.
		return t.Txn.SetEntry(badger.NewEntry(append([]byte(nil), key...), append([]byte(nil), value...)))
	}
	t.n++
	t.rec = appendWALWrite(t.rec, walWrite{key: key, value: value})
	return nil
}

func (t *walTxn) Delete(key []byte) error {
	if err := t.Txn.Delete(key); err != nil || t.rec == nil {
		return err
	}
	t.n++
	t.rec = appendWALWrite(t.rec, walWrite{del: true, key: key})
	return nil
}

// appendWALWrite appends the encoding of one write of a record to rec.
func appendWALWrite(rec []byte, w walWrite) []byte {
	if w.del {
		rec = append(rec, walDelete)
		rec = binary.AppendUvarint(rec, uint64(len(w.key)))
		return append(rec, w.key...)
	}
	rec = append(rec, walSet)
	rec = binary.AppendUvarint(rec, uint64(len(w.key)))
	rec = append(rec, w.key...)
	rec = binary.AppendUvarint(rec, uint64(len(w.value)))
	rec = append(rec, w.value...)
	return binary.AppendUvarint(rec, w.expiresAt)
}

// walRecord returns the record of group with writes (tests and the fuzz target).
func walRecord(group uint64, writes []walWrite) []byte {
	rec := make([]byte, walRecordHeader+walPayloadHeader)
	for _, w := range writes {
		rec = appendWALWrite(rec, w)
	}
	sealWALRecord(rec, group, len(writes))
	return rec
}

// sealWALRecord fills in the headers of rec, a record of group with n writes encoded after
// its headers.
func sealWALRecord(rec []byte, group uint64, n int) {
	binary.BigEndian.PutUint64(rec[walRecordHeader:], group)
	binary.BigEndian.PutUint32(rec[walRecordHeader+8:], uint32(n))
	payload := rec[walRecordHeader:]
	binary.LittleEndian.PutUint32(rec, uint32(len(payload)))
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(payload, walCRC))
}

// decodeWALRecord decodes the record at the start of b: its group, its writes (aliasing b) and
// its length in bytes. It fails with errWALTorn when b does not start with a whole, intact
// record.
func decodeWALRecord(b []byte) (group uint64, writes []walWrite, n int, err error) {
	if len(b) < walRecordHeader {
		return 0, nil, 0, errWALTorn
	}
	size := binary.LittleEndian.Uint32(b)
	if size < walPayloadHeader || size > walMaxRecordBytes || int64(size) > int64(len(b)-walRecordHeader) {
		return 0, nil, 0, errWALTorn
	}
	p := b[walRecordHeader : walRecordHeader+int(size)]
	if crc32.Checksum(p, walCRC) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, nil, 0, errWALTorn
	}
	group = binary.BigEndian.Uint64(p)
	count := binary.BigEndian.Uint32(p[8:])
	p = p[walPayloadHeader:]
	if int64(count) > int64(len(p)/2) { // every write takes at least 2 bytes
		return 0, nil, 0, fmt.Errorf("%w: write count", errWALTorn)
	}
	bytesOf := func() ([]byte, bool) {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return nil, false
		}
		v := p[k : k+int(l) : k+int(l)]
		p = p[k+int(l):]
		return v, true
	}
	writes = make([]walWrite, 0, count)
	for range count {
		if len(p) == 0 {
			return 0, nil, 0, fmt.Errorf("%w: %d writes announced, %d found", errWALTorn, count, len(writes))
		}
		var w walWrite
		kind := p[0]
		p = p[1:]
		var ok bool
		if w.key, ok = bytesOf(); !ok {
			return 0, nil, 0, fmt.Errorf("%w: key", errWALTorn)
		}
		switch kind {
		case walDelete:
			w.del = true
		case walSet:
			if w.value, ok = bytesOf(); !ok {
				return 0, nil, 0, fmt.Errorf("%w: value", errWALTorn)
			}
			e, k := binary.Uvarint(p)
			if k <= 0 {
				return 0, nil, 0, fmt.Errorf("%w: expiry", errWALTorn)
			}
			w.expiresAt, p = e, p[k:]
		default:
			return 0, nil, 0, fmt.Errorf("%w: write kind %d", errWALTorn, kind)
		}
		writes = append(writes, w)
	}
	if len(p) != 0 {
		return 0, nil, 0, fmt.Errorf("%w: %d bytes after the writes", errWALTorn, len(p))
	}
	return group, writes, walRecordHeader + int(size), nil
}

// wal is the write-ahead log of an open store. append is called by the committer only;
// checkpoint by one goroutine at a time.
type wal struct {
	dir  string
	log  *slog.Logger
	sync bool // fdatasync every record (syncWrites)

	f      *os.File // the segment being written (committer only)
	seg    uint64   // its number
	size   int64
	buf    []byte
	broken error // a failed write could not be undone: nothing more is written

	mu     sync.Mutex
	closed []walSegment // full segments, oldest first
	lastTs uint64       // the Badger version of the last group handed to Badger (0: none yet)

	prepMu sync.Mutex  // held while the spare segment is prepared or taken
	hurry  atomic.Bool // the committer waits for prepMu: a paced preparation stops pacing
	spare  bool        // walSpareName is prepared (see prepareSegment)

	applied    atomic.Uint64  // every group up to this one has been applied to Badger
	flushed    *atomic.Uint64 // the highest Badger version in a table (set by Badger's flusher)
	checkpoint uint64         // the last checkpoint's group (checkpointer only)
	wake       chan struct{}
}

// walSegment is a full segment: its number, its last group and that group's Badger version
// (0 until Badger has it).
type walSegment struct{ n, lastGroup, ts uint64 }

func walSegmentName(n uint64) string { return fmt.Sprintf("%016x%s", n, walSuffix) }

// openWAL replays dir's write-ahead log into db (records above the last checkpoint, in
// order), checkpoints the result and starts a new segment. It returns the log and the next
// group number.
func openWAL(dataDir string, db *badger.DB, flushed *atomic.Uint64, log *slog.Logger) (*wal, uint64, error) {
	w := &wal{dir: filepath.Join(dataDir, walDirName), log: log, sync: syncWrites, flushed: flushed, wake: make(chan struct{}, 1)}
	if err := os.MkdirAll(w.dir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("opening the write-ahead log: %w", err)
	}
	cp, err := w.readCheckpoint()
	if err != nil {
		return nil, 0, err
	}
	for _, n := range []string{walSpareName, walSpareName + ".tmp"} {
		// A spare prepared before a stop or a crash: never written to, prepared again.
		if err := os.Remove(filepath.Join(w.dir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, 0, fmt.Errorf("opening the write-ahead log: %w", err)
		}
	}
	segs, err := w.segments()
	if err != nil {
		return nil, 0, err
	}
	w.checkpoint = cp
	last, replayed := cp, 0
	for _, n := range segs {
		data, err := os.ReadFile(filepath.Join(w.dir, walSegmentName(n)))
		if err != nil {
			return nil, 0, fmt.Errorf("opening the write-ahead log: %w", err)
		}
		torn, err := walScan(walSegmentName(n), w.dir, data, func(group uint64, writes []walWrite, off, size int) error {
			if group <= cp {
				return nil
			}
			if err := replayWALRecord(db, writes); err != nil {
				return fmt.Errorf("opening storage: replaying the write-ahead log (%s at %d): %w", walSegmentName(n), off, err)
			}
			last, replayed = max(last, group), replayed+1
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		if torn >= 0 {
			// The tail of a write that failed or was cut by a crash: never acknowledged.
			log.Warn("storage: write-ahead log ends in a torn record, dropped (it was never acknowledged)",
				"segment", walSegmentName(n), "offset", torn, "bytes", len(data)-torn)
		}
	}
	if replayed > 0 {
		log.Info("storage: write-ahead log replayed", "groups", replayed, "segments", len(segs))
	}
	w.applied.Store(last)
	if len(segs) > 0 {
		// What was replayed is in a memtable only: into a table with it, and the segments go.
		if replayed > 0 {
			if err := db.FlushMemTable(); err != nil {
				return nil, 0, fmt.Errorf("opening storage: flushing the replayed write-ahead log: %w", err)
			}
		}
		w.seg = segs[len(segs)-1]
		for _, n := range segs {
			w.closed = append(w.closed, walSegment{n: n, lastGroup: last})
		}
		if err := w.checkpointAll(); err != nil {
			return nil, 0, err
		}
	}
	if err := w.rotate(); err != nil {
		return nil, 0, err
	}
	return w, last + 1, nil
}

// walScan calls fn for each intact record of segment name (in dir) held in data, in order. It
// returns the offset of a torn end (-1: none), or an error wrapping ErrDamaged when a record in
// the middle is damaged (see walDamagedAt).
func walScan(name, dir string, data []byte, fn func(group uint64, writes []walWrite, off, size int) error) (torn int, err error) {
	for off := 0; off < len(data); {
		group, writes, size, err := decodeWALRecord(data[off:])
		if err != nil {
			if allZero(data[off:]) {
				return -1, nil // the unwritten rest of a preallocated segment
			}
			if walDamagedAt(data[off:]) {
				// A whole record that fails its checksum with more written after it: not the
				// torn end of a write but damage, and records after it may have been
				// acknowledged. Refuse rather than replay around a hole.
				return -1, fmt.Errorf("%w: write-ahead log segment %s is damaged at offset %d (a whole record fails its checksum, and more was written after it), so the records after it cannot be replayed safely. Keep a copy of %s; moving it aside lets the gateway start, but loses the events it holds that Badger had not synced",
					ErrDamaged, name, off, dir)
			}
			return off, nil
		}
		if err := fn(group, writes, off, size); err != nil {
			return -1, err
		}
		off += size
	}
	return -1, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// walDamagedAt reports whether b, which does not start with an intact record, starts with a
// record whose whole length is there and is followed by more than zeros: damage in the middle
// of a segment. A torn write (a crash or a failed write at the end) runs past the end of the
// segment or is followed only by zeros (blocks allocated, never written).
func walDamagedAt(b []byte) bool {
	if len(b) < walRecordHeader {
		return false
	}
	end := walRecordHeader + int64(binary.LittleEndian.Uint32(b))
	if end > int64(len(b)) {
		return false
	}
	return !allZero(b[end:])
}

// replayWALRecord applies a record's writes to db, in order: in one transaction, or in several
// when they do not fit in one (a group written with larger memtables than this open's). A
// crash in the middle replays the record again.
func replayWALRecord(db *badger.DB, writes []walWrite) error {
	txn := db.NewTransaction(true)
	defer func() { txn.Discard() }()
	inTxn := 0 // writes in txn
	for i := 0; i < len(writes); i++ {
		w := writes[i]
		var err error
		if w.del {
			err = txn.Delete(w.key)
		} else {
			e := badger.NewEntry(w.key, w.value)
			e.ExpiresAt = w.expiresAt
			err = txn.SetEntry(e)
		}
		if errors.Is(err, badger.ErrTxnTooBig) && inTxn > 0 {
			if err := txn.Commit(); err != nil {
				return err
			}
			txn, inTxn = db.NewTransaction(true), 0
			i-- // the same write again, in the new transaction
			continue
		}
		if err != nil {
			return err
		}
		inTxn++
	}
	return txn.Commit()
}

func (w *wal) segments() ([]uint64, error) {
	entries, err := os.ReadDir(w.dir)
	if err != nil {
		return nil, fmt.Errorf("opening the write-ahead log: %w", err)
	}
	var segs []uint64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), walSuffix)
		if !ok || e.IsDir() {
			continue
		}
		if n, err := strconv.ParseUint(name, 16, 64); err == nil {
			segs = append(segs, n)
		}
	}
	slices.Sort(segs)
	return segs, nil
}

func (w *wal) readCheckpoint() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(w.dir, walCheckpointName))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("opening the write-ahead log: %w", err)
	}
	if len(b) != 12 || crc32.Checksum(b[:8], walCRC) != binary.LittleEndian.Uint32(b[8:]) {
		// Written to a temporary file, synced and renamed: it is whole or absent.
		return 0, fmt.Errorf("opening storage: %w: the write-ahead log's checkpoint file is corrupt", ErrDamaged)
	}
	return binary.BigEndian.Uint64(b), nil
}

// append writes one group's record (built by txn) and makes it durable. On failure nothing
// of it remains (the segment is cut back), or, if that fails too, the log refuses every later
// record. The log keeps the record's buffer for the next transaction (see newWALTxn).
func (w *wal) append(group uint64, txn *walTxn) error {
	if w.broken != nil {
		return w.broken
	}
	sealWALRecord(txn.rec, group, txn.n)
	w.buf = txn.rec
	_, err := w.f.Write(w.buf)
	if err == nil && w.sync {
		if err = syscall.Fdatasync(int(w.f.Fd())); err != nil {
			// After a failed fdatasync the kernel may have dropped the dirty pages: what the
			// file holds is no longer known.
			w.broken = fmt.Errorf("write-ahead log: fdatasync failed, nothing more is written: %w", err)
			return fmt.Errorf("writing the write-ahead log: %w", err)
		}
	}
	if err != nil {
		// Whatever part of the record reached the file is zeroed again (the segment was
		// preallocated with zeros: a replay ends at them), and the next record goes there.
		if _, zerr := w.f.WriteAt(make([]byte, len(w.buf)), w.size); zerr != nil {
			w.broken = fmt.Errorf("write-ahead log: a failed write could not be undone (%v): %w", zerr, err)
		} else if _, serr := w.f.Seek(w.size, io.SeekStart); serr != nil {
			w.broken = fmt.Errorf("write-ahead log: a failed write could not be undone (%v): %w", serr, err)
		}
		return fmt.Errorf("writing the write-ahead log: %w", err)
	}
	w.size += int64(len(w.buf))
	if cap(w.buf) > 4<<20 {
		w.buf = nil // a large group's buffer is not kept
	}
	if w.size >= walSegmentBytes {
		w.mu.Lock()
		w.closed = append(w.closed, walSegment{n: w.seg, lastGroup: group}) // ts: see committed
		w.mu.Unlock()
		if err := w.rotate(); err != nil {
			w.broken = err
		}
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// committed records the Badger version that group's writes got (0: none, the commit failed
// before Badger took them). A segment that ends with group gets it.
func (w *wal) committed(group, ts uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastTs = max(w.lastTs, ts)
	if n := len(w.closed); n > 0 && w.closed[n-1].lastGroup == group && w.closed[n-1].ts == 0 {
		w.closed[n-1].ts = w.lastTs
	}
}

// rotate starts the next segment, preallocated (see prepareSegment); the directory is synced so
// that the new name survives.
func (w *wal) rotate() error {
	name := filepath.Join(w.dir, walSegmentName(w.seg+1))
	w.hurry.Store(true) // a paced preparation going on stops waiting for the disk
	w.prepMu.Lock()
	w.hurry.Store(false)
	defer w.prepMu.Unlock()
	if !w.spare {
		if err := w.prepareSegment(false); err != nil {
			return fmt.Errorf("write-ahead log: starting a segment: %w", err)
		}
	}
	w.spare = false
	if _, err := os.Stat(name); err == nil {
		return fmt.Errorf("write-ahead log: starting a segment: %s exists already", name)
	}
	if err := os.Rename(filepath.Join(w.dir, walSpareName), name); err != nil {
		return fmt.Errorf("write-ahead log: starting a segment: %w", err)
	}
	f, err := os.OpenFile(name, os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write-ahead log: starting a segment: %w", err)
	}
	if err := syncDir(w.dir); err != nil {
		f.Close()
		return fmt.Errorf("write-ahead log: starting a segment: %w", err)
	}
	if w.f != nil {
		w.f.Close()
	}
	w.f, w.seg, w.size = f, w.seg+1, 0
	return nil
}

// walSpareName is the next segment, prepared ahead (see prepareSegment); not a segment until
// it is renamed, and removed at open.
const walSpareName = "next.spare"

// walZeros is what prepareSegment writes: never written itself, its pages are the kernel's
// shared zero page when read, so it takes no memory (a buffer made per segment was 5 % of the
// bytes allocated by HTTP ingest).
var walZeros [1 << 20]byte

// prepareSegment writes the spare segment: walSegmentBytes of zeros, fsynced. Records then
// overwrite blocks that are already allocated and written, so that a record's fdatasync has no
// file size or extent to update (on ext4 on this project's machines: about 30 % less time
// and a quarter less system CPU per commit), and a full disk cannot refuse a record. The
// checkpointer prepares it ahead of the committer's need, paced: see walPrefillChunk.
func (w *wal) prepareSegment(paced bool) error {
	tmp := filepath.Join(w.dir, walSpareName+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	zeros := walZeros[:]
	if paced {
		zeros = zeros[:walPrefillChunk]
	}
	for off := int64(0); off < walSegmentBytes; {
		n := min(int64(len(zeros)), walSegmentBytes-off)
		if _, err := f.Write(zeros[:n]); err != nil {
			f.Close()
			os.Remove(tmp)
			return err
		}
		if paced && !w.hurry.Load() {
			// A hint only (the Sync below is what makes the segment durable): its error, on
			// a file system without it, changes nothing.
			_ = unix.SyncFileRange(int(f.Fd()), off, n,
				unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
		}
		off += n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(w.dir, walSpareName))
}

// walPrefillChunk is how much of a spare segment the checkpointer writes before it waits for
// the disk to take it (sync_file_range). Written whole and then fsynced, the 8 MiB of zeros
// went to the disk in one burst that the committer's fdatasyncs queued behind: on this
// project's machines, a loop of 256-byte appends + fdatasync next to a segment prepared every
// half second had a p99.9 of 2.0–3.3 ms and a max of 9–12 ms, against 1.1–1.6 ms and 3.5–5 ms
// when it was written back 128 KiB at a time (`fleetgate-loadtest fsync`, BENCHMARKS.md).
const walPrefillChunk = 128 << 10

// prepareSpare prepares the spare segment if there is none (checkpointer).
func (w *wal) prepareSpare() error {
	w.prepMu.Lock()
	defer w.prepMu.Unlock()
	if w.spare {
		return nil
	}
	if err := w.prepareSegment(true); err != nil {
		return fmt.Errorf("write-ahead log: preparing the next segment: %w", err)
	}
	w.spare = true
	return nil
}

// doCheckpoint deletes the full segments whose groups are all in Badger's tables, after
// recording the last of those groups as the checkpoint.
func (w *wal) doCheckpoint() error {
	w.mu.Lock()
	flushed := w.flushed.Load()
	var segs []walSegment
	for _, s := range w.closed {
		if w.unflushed(s, flushed) {
			break
		}
		segs = append(segs, s)
	}
	w.mu.Unlock()
	return w.checkpointSegments(segs)
}

// unflushed reports whether segment s holds groups not (known to be) in Badger's tables yet,
// given the highest version flushed. w.mu held.
func (w *wal) unflushed(s walSegment, flushed uint64) bool {
	return s.lastGroup > w.checkpoint && (s.ts == 0 || s.ts > flushed)
}

// waiting counts the full segments that wait for a memtable flush before a checkpoint can
// delete them.
func (w *wal) waiting() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	flushed := w.flushed.Load()
	n := 0
	for _, s := range w.closed {
		if w.unflushed(s, flushed) {
			n++
		}
	}
	return n
}

// checkpointAll deletes every full segment: their groups are all in Badger's tables (open
// and close flush first).
func (w *wal) checkpointAll() error {
	w.mu.Lock()
	segs := slices.Clone(w.closed)
	w.mu.Unlock()
	return w.checkpointSegments(segs)
}

// checkpointSegments records the last group of segs, the oldest full segments, as the
// checkpoint, and deletes them.
func (w *wal) checkpointSegments(segs []walSegment) error {
	if len(segs) == 0 {
		return nil
	}
	// A table may point into Badger's value logs (values over 1 MiB), which Badger writes
	// without a sync: they must be durable before the records holding the values go.
	if err := syncBadgerLogs(filepath.Dir(w.dir)); err != nil {
		return fmt.Errorf("write-ahead log checkpoint: %w", err)
	}
	if upTo := segs[len(segs)-1].lastGroup; upTo > w.checkpoint {
		b := binary.BigEndian.AppendUint64(nil, upTo)
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, walCRC))
		tmp := filepath.Join(w.dir, walCheckpointName+".tmp")
		if err := writeFileSync(tmp, b); err != nil {
			return fmt.Errorf("write-ahead log checkpoint: %w", err)
		}
		if err := os.Rename(tmp, filepath.Join(w.dir, walCheckpointName)); err != nil {
			return fmt.Errorf("write-ahead log checkpoint: %w", err)
		}
		if err := syncDir(w.dir); err != nil {
			return fmt.Errorf("write-ahead log checkpoint: %w", err)
		}
		w.checkpoint = upTo
	}
	done := 0
	for _, s := range segs {
		if err := os.Remove(filepath.Join(w.dir, walSegmentName(s.n))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("write-ahead log checkpoint: %w", err)
		}
		done++
	}
	w.mu.Lock()
	w.closed = w.closed[done:]
	w.mu.Unlock()
	return nil
}

// close checkpoints everything (the committer has stopped) and closes the segment.
func (w *wal) close() error {
	if w.f == nil {
		return nil
	}
	w.mu.Lock()
	w.closed = append(w.closed, walSegment{n: w.seg, lastGroup: w.applied.Load(), ts: w.lastTs})
	w.mu.Unlock()
	err := w.f.Close()
	w.f = nil
	if cerr := w.doCheckpoint(); err == nil {
		err = cerr
	}
	w.prepMu.Lock()
	if w.spare {
		_ = os.Remove(filepath.Join(w.dir, walSpareName)) // prepared again at the next open
		w.spare = false
	}
	w.prepMu.Unlock()
	return err
}

// syncBadgerLogs fsyncs every value log (.vlog) in dir, and memtable log (.mem) that a store
// written before Badger was patched may still have. Badger writes them through memory maps;
// fsync on any descriptor of the file writes its dirty pages.
func syncBadgerLogs(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || !(strings.HasSuffix(e.Name(), ".mem") || strings.HasSuffix(e.Name(), ".vlog")) {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // flushed to a table meanwhile
		}
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return syncDir(dir)
}

// writeFileSync writes path (created or truncated) and fsyncs it.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Tests make these small, to exercise segments and checkpoints.
var (
	// walSegmentBytes is the size at which the committer starts a new segment, so that the
	// checkpointer can delete the old one.
	walSegmentBytes int64 = 8 << 20
	// walCheckpointInterval is how often the checkpointer looks for full segments to delete
	// (and sooner when the committer starts a new segment).
	walCheckpointInterval = time.Second
)

// checkpointLoop deletes the write-ahead log's segments once Badger holds them durably.
func (s *Store) checkpointLoop() {
	defer s.done.Done()
	t := time.NewTicker(walCheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		case <-s.wal.wake:
		}
		if err := s.wal.doCheckpoint(); err != nil {
			s.log.Error("storage: write-ahead log checkpoint failed (its segments are kept and replayed at the next start)", "err", err)
		}
		if err := s.wal.prepareSpare(); err != nil {
			// The committer prepares it itself at the next rotation (and fails that commit
			// if it cannot either).
			s.log.Error("storage: write-ahead log", "err", err)
		}
		s.flushIfLogGrows()
	}
}

// flushIfLogGrows has Badger flush its memtable when the log's segments waiting for a flush
// pass two memtables' worth: the log's writes that Badger does not get (walTxn.LogOnly) do not
// fill the memtable, which would then hold the segments (disk, and the replay at the next
// start) for a long time. The flush runs on a goroutine of its own, so that the checkpointer
// goes on preparing segments while it waits (on a full disk a flush fails and Badger retries
// it every second); the segments go at the checkpointer's next turn (within a second). One
// flush at a time.
func (s *Store) flushIfLogGrows() {
	if int64(s.wal.waiting())*walSegmentBytes <= 2*s.opts.MemTableBytes || !s.flushing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.flushing.Store(false)
		if err := s.db.FlushMemTable(); err != nil && !s.closed.Load() {
			s.log.Error("storage: flushing the memtable for the write-ahead log's checkpoint (its segments are kept)", "err", err)
		}
	}()
}
