package storage

// The damage check. Badger trusts its MANIFEST: a table file the MANIFEST does not reference is
// deleted at open, a missing or truncated MANIFEST starts an empty database over the old files,
// a table whose index fails its checksum is skipped, and a truncated table panics in a goroutine
// Badger starts. Open therefore inspects the data dir first and refuses to start on damage, with
// ErrDamaged; Check does the same and verifies every block; Repair (repair.go) salvages.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
	"github.com/dgraph-io/ristretto/v2/z"
	"google.golang.org/protobuf/proto"
)

// Badger's on-disk names and the MANIFEST header (badger/v4 manifest.go).
const (
	manifestName         = "MANIFEST"
	manifestMagicVersion = 8
	tableSuffix          = ".sst"
	damagedDirPrefix     = "damaged-"
)

var manifestMagic = []byte("Bdgr")

// defaultCompression is the compression Badger's default options give new tables (compaction
// outputs); memtable flushes write theirs uncompressed (FlushUncompressed). A table the
// MANIFEST does not describe is read with the one, then the other.
const defaultCompression = options.Snappy

// errInUse means another process (or another Store of this one) has the directory open.
var errInUse = errors.New("in use by another process (Badger holds its lock): stop the gateway first, or check a copy")

// CheckReport is what Check (or the start-up check) found in a data dir.
type CheckReport struct {
	Dir      string
	Manifest string        // one line on the MANIFEST: records, live tables, how it ends
	Tables   []TableReport // every table file present or referenced, by id
	Logs     int           // write-ahead (.mem) and value log (.vlog) files present
	Bytes    int64         // table bytes read
	Full     bool          // every block of every table was verified against its checksum
	Problems []string      // damage: each names the file and says why
	Notes    []string      // normal states worth knowing (crash leftovers Badger cleans up)
	Took     time.Duration

	manifest *manifestState
}

// TableReport is one table file as the check saw it.
type TableReport struct {
	ID         uint64
	File       string // name in the data dir
	Size       int64  // bytes on disk; -1 when the file is missing
	Level      int    // level in the MANIFEST; -1 when it does not reference the table
	MaxVersion uint64 // newest version the table holds (from its index)
	Keys       uint32 // entries, from its index
	Err        error  // why it cannot be read; nil when readable
	Fate       TableFate

	compression options.CompressionType // how its blocks are stored (see readTables)
}

// TableFate says how a table stands against the MANIFEST.
type TableFate int

const (
	TableLive       TableFate = iota // referenced and readable
	TableBroken                      // referenced but unreadable: damage
	TableMissing                     // referenced but not on disk: damage
	TableLost                        // not referenced although it must be: the MANIFEST lost records (damage)
	TableCrashLeft                   // not referenced: written just before a crash, or a compaction's output not yet recorded (normal)
	TableSuperseded                  // not referenced: the MANIFEST recorded its deletion, the crash came before the unlink (normal)
	TableGarbage                     // not referenced and unreadable: a table being written at a crash (normal)
)

// Damaged reports whether the check found damage.
func (r *CheckReport) Damaged() bool { return len(r.Problems) > 0 }

// Err is nil for a healthy dir, else an error wrapping ErrDamaged that names the first problems
// and says what to do.
func (r *CheckReport) Err() error {
	if !r.Damaged() {
		return nil
	}
	const show = 3
	msg := strings.Join(r.Problems[:min(show, len(r.Problems))], "; ")
	if n := len(r.Problems) - show; n > 0 {
		msg += fmt.Sprintf("; and %d more", n)
	}
	return fmt.Errorf("%w: %s. Nothing was changed: starting would make Badger drop data. "+
		"Restore the data dir from a backup, or run `fleetgate storage check` to list every problem and "+
		"`fleetgate storage repair` to keep what is readable (it moves what it drops into %s<time>/, deleting nothing)",
		ErrDamaged, msg, damagedDirPrefix)
}

// Check inspects the store in dir without changing anything: the MANIFEST against the table
// files present, each table's index, and every block of every table against its checksum.
// A report with problems means Open would refuse the dir. It fails (with no report) when the
// dir cannot be read or another process has the store open.
func Check(dir string) (*CheckReport, error) {
	unlock, err := lockDir(dir, false)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return inspect(dir, true)
}

// checkBeforeOpen is Open's start-up check: cheap (the MANIFEST, and each table's footer, index
// checksum and last block, not every block), and silent on a healthy or new dir.
func checkBeforeOpen(opts *Options) error {
	if opts.InMemory || opts.Dir == "" {
		return nil
	}
	unlock, err := lockDir(opts.Dir, true)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errInUse) {
		return nil // a new store, or Badger reports the lock
	}
	if err != nil {
		return fmt.Errorf("opening storage in %q: checking it: %w", opts.Dir, err)
	}
	defer unlock()
	r, err := inspect(opts.Dir, false)
	if err != nil {
		return fmt.Errorf("opening storage in %q: checking it: %w", opts.Dir, err)
	}
	if len(r.Tables) > 0 {
		opts.Logger.Debug("storage checked", "dir", opts.Dir, "tables", len(r.Tables), "bytes", r.Bytes, "took", r.Took)
	}
	for _, n := range r.Notes {
		opts.Logger.Info("storage: " + n)
	}
	if err := r.Err(); err != nil {
		return fmt.Errorf("opening storage in %q: %w", opts.Dir, err)
	}
	return setAsideEmptyLogs(opts.Dir, opts.Logger)
}

// walHeaderBytes is the header Badger writes at the start of every write-ahead (.mem) and
// value (.vlog) log.
const walHeaderBytes = 20

// setAsideEmptyLogs moves write-ahead and value logs shorter than their header into
// damaged-<time>/. Badger creates these files (at open, and a new .mem at every memtable
// switch) without syncing them, and syncs them with the first commit written to them; a power
// cut in between leaves the file empty, and Badger then refuses to open at all ("Create a new
// file"). Such a file never held an acknowledged event: nothing was acknowledged before its
// first sync. Found by the power-loss test (storage/powerloss_test.go).
func setAsideEmptyLogs(dir string, log *slog.Logger) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("opening storage in %q: %w", dir, err)
	}
	aside := ""
	for _, e := range entries {
		if e.IsDir() || !(strings.HasSuffix(e.Name(), ".mem") || strings.HasSuffix(e.Name(), ".vlog")) {
			continue
		}
		info, err := e.Info()
		if err != nil || info.Size() >= walHeaderBytes {
			continue
		}
		if aside == "" {
			if aside, err = makeAsideDir(dir, time.Now()); err != nil {
				return fmt.Errorf("opening storage in %q: setting aside an empty write-ahead log: %w", dir, err)
			}
		}
		if err := os.Rename(filepath.Join(dir, e.Name()), filepath.Join(aside, e.Name())); err != nil {
			return fmt.Errorf("opening storage in %q: setting aside an empty write-ahead log: %w", dir, err)
		}
		log.Warn("storage: empty log file set aside (a power cut before its first sync: it held nothing acknowledged)",
			"file", e.Name(), "size", info.Size(), "moved_to", filepath.Base(aside))
	}
	return nil
}

// lockDir takes Badger's directory lock (flock on the directory, as Badger does) so that no
// gateway writes while the dir is inspected or repaired; unlock releases it.
func lockDir(dir string, exclusive bool) (unlock func(), err error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := syscall.Flock(int(d.Fd()), how|syscall.LOCK_NB); err != nil {
		d.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, errInUse
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return func() { d.Close() }, nil
}

// inspect does the check; full also verifies every block.
func inspect(dir string, full bool) (*CheckReport, error) {
	start := time.Now()
	r := &CheckReport{Dir: dir, Full: full}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	files := map[uint64]int64{} // table id → size
	hasManifest := false
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			continue
		}
		switch {
		case name == manifestName:
			hasManifest = true
		case strings.HasSuffix(name, tableSuffix):
			id, err := strconv.ParseUint(strings.TrimSuffix(name, tableSuffix), 10, 64)
			if err != nil {
				continue
			}
			info, err := e.Info()
			if err != nil {
				return nil, err
			}
			files[id] = info.Size()
		case strings.HasSuffix(name, ".mem"), strings.HasSuffix(name, ".vlog"):
			r.Logs++
		}
	}

	m := &manifestState{}
	r.manifest = m
	switch {
	case !hasManifest && len(files) == 0 && r.Logs == 0:
		r.Manifest = "none (a new store)"
		r.Took = time.Since(start)
		return r, nil
	case !hasManifest:
		r.Manifest = "missing"
		r.Problems = append(r.Problems, fmt.Sprintf("%s is missing but %s exist: Badger would start empty and delete the tables",
			manifestName, describeFiles(len(files), r.Logs)))
	default:
		data, err := os.ReadFile(filepath.Join(dir, manifestName))
		if err != nil {
			return nil, err
		}
		*m = parseManifest(data)
		r.Manifest = m.summary()
		if m.problem != "" {
			r.Problems = append(r.Problems, manifestName+" "+m.problem)
		}
		if m.tail > 0 {
			r.Notes = append(r.Notes, fmt.Sprintf("%s ends in a partial record (%d bytes at offset %d): normal after a crash during an append; Badger drops it",
				manifestName, m.tail, m.valid))
		}
	}

	// Every table present or referenced.
	ids := make([]uint64, 0, len(files))
	for id := range files {
		ids = append(ids, id)
	}
	for id := range m.live {
		if _, ok := files[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	r.Tables = make([]TableReport, len(ids))
	for i, id := range ids {
		t := &r.Tables[i]
		t.ID, t.File, t.Level, t.Size = id, tableFileName(id), -1, -1
		if lt, ok := m.live[id]; ok {
			t.Level = int(lt.level)
		}
		if sz, ok := files[id]; ok {
			t.Size = sz
			r.Bytes += sz
		}
	}
	readTables(dir, r.Tables, m, full)
	classify(r, hasManifest)
	if full {
		inspectWAL(dir, r) // at start, openWAL reads the log itself (and refuses damage)
	}
	r.Took = time.Since(start)
	return r, nil
}

// inspectWAL checks the store's own write-ahead log (wal.go): its checkpoint file, and every
// record of every segment against its checksum. A torn end is normal after a crash (a note);
// damage in the middle, or a corrupt checkpoint, is a problem (Open would refuse).
func inspectWAL(dir string, r *CheckReport) {
	w := &wal{dir: filepath.Join(dir, walDirName)}
	if _, err := os.Stat(w.dir); err != nil {
		return // no log (a store written before it, or in memory)
	}
	cp, err := w.readCheckpoint()
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
	}
	segs, err := w.segments()
	if err != nil {
		r.Problems = append(r.Problems, err.Error())
		return
	}
	pending := 0
	for _, n := range segs {
		data, err := os.ReadFile(filepath.Join(w.dir, walSegmentName(n)))
		if err != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("write-ahead log segment %s: %v", walSegmentName(n), err))
			continue
		}
		torn, err := walScan(walSegmentName(n), w.dir, data, func(group uint64, _ []walWrite, _, _ int) error {
			if group > cp {
				pending++
			}
			return nil
		})
		switch {
		case err != nil:
			r.Problems = append(r.Problems, strings.TrimPrefix(err.Error(), ErrDamaged.Error()+": "))
		case torn >= 0:
			r.Notes = append(r.Notes, fmt.Sprintf("write-ahead log segment %s ends in a torn record (%d bytes at offset %d): normal after a crash during a commit (it was never acknowledged); dropped at the next start",
				walSegmentName(n), len(data)-torn, torn))
		}
	}
	if pending > 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("write-ahead log: %d commit groups in %d segments after its checkpoint, replayed into Badger at the next start (normal after a crash)", pending, len(segs)))
	}
}

func describeFiles(tables, logs int) string {
	var parts []string
	if tables > 0 {
		parts = append(parts, fmt.Sprintf("%d table files (.sst)", tables))
	}
	if logs > 0 {
		parts = append(parts, fmt.Sprintf("%d log files (.mem/.vlog)", logs))
	}
	return strings.Join(parts, " and ")
}

func tableFileName(id uint64) string { return fmt.Sprintf("%06d%s", id, tableSuffix) }

// classify decides each table's fate and records the problems.
func classify(r *CheckReport, hasManifest bool) {
	m := r.manifest
	var maxLive uint64
	for i := range r.Tables {
		t := &r.Tables[i]
		if t.Level >= 0 && t.Err == nil && t.Size >= 0 {
			maxLive = max(maxLive, t.MaxVersion)
		}
	}
	// A table the MANIFEST does not reference is normal after a crash when it is a compaction's
	// output (its data is older than the newest referenced table, and still in the tables it
	// was made from) or the one memtable flush that was running (newer data, still in the
	// write-ahead log). Two or more tables newer than everything referenced mean records are
	// missing from the MANIFEST: Badger would delete those tables, and their data with them.
	var newer, garbage []int
	for i := range r.Tables {
		t := &r.Tables[i]
		switch {
		case t.Size < 0:
			t.Fate = TableMissing
			r.Problems = append(r.Problems, fmt.Sprintf("%s references table %s, which is missing", manifestName, t.File))
		case t.Level >= 0 && t.Err != nil:
			t.Fate = TableBroken
			r.Problems = append(r.Problems, fmt.Sprintf("table %s is %v", t.File, t.Err))
		case t.Level >= 0:
			t.Fate = TableLive
		case !hasManifest && t.Err != nil:
			t.Fate = TableBroken
			r.Problems = append(r.Problems, fmt.Sprintf("table %s is %v", t.File, t.Err))
		case !hasManifest:
			t.Fate = TableLost // reported once, as the missing MANIFEST
		case m.deleted[t.ID]:
			t.Fate = TableSuperseded
			r.Notes = append(r.Notes, fmt.Sprintf("table %s was replaced by a compaction and not yet removed (a crash): Badger removes it", t.File))
		case t.Err != nil:
			t.Fate = TableGarbage
			garbage = append(garbage, i)
		case t.MaxVersion > maxLive:
			newer = append(newer, i)
		default:
			t.Fate = TableCrashLeft
			r.Notes = append(r.Notes, fmt.Sprintf("table %s is not referenced by %s and holds only data the referenced tables hold too (a compaction cut short by a crash): Badger removes it",
				t.File, manifestName))
		}
	}
	switch {
	case len(newer) == 1:
		t := &r.Tables[newer[0]]
		t.Fate = TableCrashLeft
		r.Notes = append(r.Notes, fmt.Sprintf("table %s is not referenced by %s (a memtable flush cut short by a crash; its data is still in the write-ahead log): Badger removes it",
			t.File, manifestName))
	case len(newer) > 1:
		var names []string
		for _, i := range newer {
			r.Tables[i].Fate = TableLost
			names = append(names, r.Tables[i].File)
		}
		r.Problems = append(r.Problems, fmt.Sprintf("%s does not reference %d tables holding data newer than every table it references (%s): it lost records (truncated or replaced), and Badger would delete them",
			manifestName, len(newer), strings.Join(names, ", ")))
	}
	// An unreadable table the MANIFEST does not reference is what a crash leaves mid-write,
	// unless the MANIFEST is damaged too: then it may be one of the tables it lost.
	for _, i := range garbage {
		t := &r.Tables[i]
		if m.problem != "" || len(newer) > 1 {
			r.Problems = append(r.Problems, fmt.Sprintf("table %s is %v (and not referenced by the damaged %s)", t.File, t.Err, manifestName))
		} else {
			r.Notes = append(r.Notes, fmt.Sprintf("table %s is not referenced by %s and is %v: a table being written at a crash; Badger removes it",
				t.File, manifestName, t.Err))
		}
	}
}

// readTables opens every table present in its own goroutine (Badger panics on some damage;
// the panic becomes the table's Err), reading its footer, index and last block, and with full
// every block.
func readTables(dir string, tables []TableReport, m *manifestState, full bool) {
	work := make(chan *TableReport)
	var wg sync.WaitGroup
	for range min(4, runtime.GOMAXPROCS(0), max(1, len(tables))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			debug.SetPanicOnFault(true) // a fault reading the mapped file is an error, not a crash
			for t := range work {
				path := filepath.Join(dir, t.File)
				if lt, ok := m.live[t.ID]; ok {
					t.compression = lt.compression
					t.MaxVersion, t.Keys, t.Err = readTable(path, t.Size, t.compression, full)
					continue
				}
				t.compression = defaultCompression
				t.MaxVersion, t.Keys, t.Err = readTable(path, t.Size, t.compression, full)
				if t.Err != nil {
					if v, k, err := readTable(path, t.Size, options.None, full); err == nil {
						t.compression, t.MaxVersion, t.Keys, t.Err = options.None, v, k, nil
					}
				}
			}
		}()
	}
	for i := range tables {
		if tables[i].Size >= 0 {
			work <- &tables[i]
		}
	}
	close(work)
	wg.Wait()
}

// minTableBytes is less than any table Badger writes (a footer alone is 8 bytes plus a checksum).
const minTableBytes = 16

// readTable reads one table's index (and with full checks every block's checksum).
func readTable(path string, size int64, comp options.CompressionType, full bool) (maxVersion uint64, keys uint32, err error) {
	if size < minTableBytes {
		return 0, 0, fmt.Errorf("truncated (%d bytes)", size)
	}
	var mf *z.MmapFile
	var t *table.Table
	phase := "its footer and index do not fit the file"
	defer func() {
		if p := recover(); p != nil {
			if strings.Contains(fmt.Sprint(p), "initIndex crash") { // Badger's own dump says no more
				err = fmt.Errorf("truncated or corrupt: %s", phase)
			} else {
				err = fmt.Errorf("truncated or corrupt: %s (%s)", phase, panicSummary(p))
			}
		}
		if mf != nil {
			_ = mf.Close(-1) // -1: never truncate; Table.DecrRef would delete the file
		}
	}()
	mf, err = z.OpenMmapFile(path, os.O_RDONLY, 0)
	if err != nil {
		mf = nil
		return 0, 0, fmt.Errorf("unreadable: %w", err)
	}
	t, err = table.OpenTable(mf, tableOptions(comp, options.NoVerification))
	if err != nil {
		return 0, 0, fmt.Errorf("truncated or corrupt: %s", badgerMessage(err, path))
	}
	if od := int64(t.OnDiskSize()); od > size {
		return 0, 0, fmt.Errorf("truncated: its index counts %d bytes, the file has %d", od, size)
	}
	if full {
		phase = "a block does not decode"
		if err := t.VerifyChecksum(); err != nil {
			return 0, 0, fmt.Errorf("corrupt: %s", badgerMessage(err, path))
		}
	}
	return t.MaxVersion(), t.KeyCount(), nil
}

func tableOptions(comp options.CompressionType, chk options.ChecksumVerificationMode) table.Options {
	return table.Options{ReadOnly: true, BlockSize: 4 << 10, BloomFalsePositive: 0.01, Compression: comp, ChkMode: chk}
}

// panicSummary is a panic's message on one line, without Badger's "== ... ==" banners.
func panicSummary(p any) string {
	var parts []string
	for _, l := range strings.Split(fmt.Sprint(p), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "==") {
			parts = append(parts, l)
		}
	}
	s := strings.Join(parts, " ")
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	if s == "" {
		s = "panic"
	}
	return s
}

// badgerMessage is a Badger error on one line, naming the table by its base name.
func badgerMessage(err error, path string) string {
	return firstLine(strings.ReplaceAll(err.Error(), path, filepath.Base(path)))
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// manifestState is what a MANIFEST says, read as far as it is readable.
type manifestState struct {
	live    map[uint64]liveTable // tables referenced at the end of the readable part
	deleted map[uint64]bool      // tables whose deletion was the last word on them
	records int
	size    int64
	valid   int64  // bytes up to the end of the last readable record
	tail    int64  // bytes of a partial last record (a crash mid-append)
	problem string // why the rest is unreadable, "" when it is not damaged
}

type liveTable struct {
	level       uint32
	keyID       uint64
	compression options.CompressionType
}

// parseManifest reads a MANIFEST as Badger's ReplayManifestFile does, keeping what it reads
// before any damage.
func parseManifest(data []byte) manifestState {
	m := manifestState{live: map[uint64]liveTable{}, deleted: map[uint64]bool{}, size: int64(len(data))}
	if len(data) < 8 {
		m.problem = fmt.Sprintf("is truncated: %d bytes, shorter than its 8-byte header", len(data))
		return m
	}
	if !bytes.Equal(data[:4], manifestMagic) {
		m.problem = "does not start with Badger's magic bytes (overwritten, or not a MANIFEST)"
		return m
	}
	if ext, v := binary.BigEndian.Uint16(data[4:6]), binary.BigEndian.Uint16(data[6:8]); v != manifestMagicVersion || ext != 0 {
		m.problem = fmt.Sprintf("has format version %d.%d, this build reads %d.0", v, ext, manifestMagicVersion)
		return m
	}
	off := int64(8)
	m.valid = off
	for off < int64(len(data)) {
		rest := int64(len(data)) - off
		if rest < 8 {
			m.tail = rest
			break
		}
		n := int64(binary.BigEndian.Uint32(data[off:]))
		if n > int64(len(data)) {
			m.problem = fmt.Sprintf("is corrupt: the record at offset %d claims %d bytes, more than the whole file", off, n)
			return m
		}
		if n > rest-8 {
			m.tail = rest
			break
		}
		body := data[off+8 : off+8+n]
		if crc32.Checksum(body, y.CastagnoliCrcTable) != binary.BigEndian.Uint32(data[off+4:]) {
			m.problem = fmt.Sprintf("is corrupt: the record at offset %d fails its checksum", off)
			return m
		}
		var set pb.ManifestChangeSet
		if err := proto.Unmarshal(body, &set); err != nil {
			m.problem = fmt.Sprintf("is corrupt: the record at offset %d does not decode (%v)", off, err)
			return m
		}
		for _, c := range set.Changes {
			switch c.Op {
			case pb.ManifestChange_CREATE:
				if _, ok := m.live[c.Id]; ok {
					m.problem = fmt.Sprintf("is corrupt: the record at offset %d creates table %d twice", off, c.Id)
					return m
				}
				m.live[c.Id] = liveTable{level: c.Level, keyID: c.KeyId, compression: options.CompressionType(c.Compression)}
				delete(m.deleted, c.Id)
			case pb.ManifestChange_DELETE:
				delete(m.live, c.Id)
				m.deleted[c.Id] = true
			default:
				m.problem = fmt.Sprintf("is corrupt: the record at offset %d has an unknown operation", off)
				return m
			}
		}
		m.records++
		off += 8 + n
		m.valid = off
	}
	return m
}

func (m *manifestState) summary() string {
	s := fmt.Sprintf("%d bytes, %d records, %d tables referenced", m.size, m.records, len(m.live))
	switch {
	case m.problem != "":
		s += "; damaged: " + m.problem
	case m.tail > 0:
		s += fmt.Sprintf("; ends in a %d-byte partial record", m.tail)
	}
	return s
}
