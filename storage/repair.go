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
	"runtime/debug"
	"slices"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
	"github.com/dgraph-io/ristretto/v2/z"
	"google.golang.org/protobuf/proto"
)

// RepairOptions configures Repair. Zero values take the defaults documented on each field.
type RepairOptions struct {
	// Now names the folder dropped files are moved into, damaged-<Now>/ (default time.Now()).
	Now time.Time
	// Confirm is shown what Repair is about to do and says whether to go ahead (default: yes).
	Confirm func(plan []string) bool
	// MemTableBytes is the memtable size the repaired store is opened with to count what it
	// holds; give the gateway's (storage.memtable_bytes). Default: Open's.
	MemTableBytes int64
}

// RepairReport says what Repair found and did.
type RepairReport struct {
	Check   *CheckReport
	Plan    []string // what Repair does, one line each; empty when there was nothing to repair
	Done    bool     // the plan was carried out
	Aside   string   // the folder, in the data dir, that dropped files were moved into
	Moved   []MovedFile
	Missing []string // tables the MANIFEST referenced that were not on disk: their data is gone
	Kept    int      // tables in the rebuilt MANIFEST

	// What the repaired store holds (it was opened to count them).
	Events, QueueEntries, DeadLetters int64
}

// MovedFile is one file Repair took out of the store (moved, never deleted).
type MovedFile struct {
	File   string // name in the data dir (and in the damaged-<time>/ folder)
	Reason string
	Held   string // what it held, as far as it can be read ("" for the MANIFEST)
}

// Repair salvages a damaged store in dir, which no process may have open: it moves every
// unreadable table, every table a compaction had already replaced, and the MANIFEST into a
// damaged-<time>/ folder in dir, writes a MANIFEST that references every readable table left
// (referenced ones at their level, the others at level 0, where versions decide between
// copies of a key), and opens the result to check it and count what it holds. Nothing is
// deleted. Data in a dropped table is lost to the store (the report says how much, when the
// table can still be read), and keys it had deleted may come back: functions may see some
// events again. On a healthy store it does nothing.
func Repair(dir string, opts RepairOptions) (*RepairReport, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	unlock, err := lockDir(dir, true)
	if err != nil {
		return nil, fmt.Errorf("repairing storage in %q: %w", dir, err)
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	r, err := inspect(dir, true)
	if err != nil {
		return nil, fmt.Errorf("repairing storage in %q: %w", dir, err)
	}
	rep := &RepairReport{Check: r}
	if !r.Damaged() {
		return rep, nil
	}

	// The plan.
	keep := map[uint64]liveTable{}
	var move []MovedFile
	for _, t := range r.Tables {
		switch t.Fate {
		case TableLive:
			keep[t.ID] = r.manifest.live[t.ID]
			rep.Plan = append(rep.Plan, fmt.Sprintf("keep %s (level %d)", t.File, t.Level))
		case TableLost, TableCrashLeft:
			keep[t.ID] = liveTable{compression: t.compression}
			rep.Plan = append(rep.Plan, fmt.Sprintf("keep %s: not referenced by the %s, added at level 0", t.File, manifestName))
		case TableBroken, TableGarbage:
			move = append(move, MovedFile{File: t.File, Reason: fmt.Sprint(t.Err)})
		case TableSuperseded:
			move = append(move, MovedFile{File: t.File, Reason: "already replaced by a compaction (the MANIFEST recorded its deletion)"})
		case TableMissing:
			rep.Missing = append(rep.Missing, t.File)
			rep.Plan = append(rep.Plan, fmt.Sprintf("forget %s: referenced by the %s but not on disk; its data is gone unless a backup has it", t.File, manifestName))
		}
	}
	comps := map[string]options.CompressionType{}
	for _, t := range r.Tables {
		comps[t.File] = t.compression
	}
	for i := range move {
		m := &move[i]
		comp := defaultCompression
		if c, ok := comps[m.File]; ok {
			comp = c
		}
		m.Held = tableContents(filepath.Join(dir, m.File), comp)
		rep.Plan = append(rep.Plan, fmt.Sprintf("move %s aside: %s; it held %s", m.File, m.Reason, m.Held))
	}
	hasManifest := r.Manifest != "missing"
	if hasManifest {
		why := "rebuilt without the files moved aside"
		if p := r.manifest.problem; p != "" {
			why = p
		}
		move = append(move, MovedFile{File: manifestName, Reason: why})
		rep.Plan = append(rep.Plan, fmt.Sprintf("move %s aside (%s)", manifestName, why))
	}
	rep.Plan = append(rep.Plan, fmt.Sprintf("write a new %s referencing the %d tables kept", manifestName, len(keep)))
	if opts.Confirm != nil && !opts.Confirm(rep.Plan) {
		return rep, nil
	}

	// Carry it out: a new MANIFEST beside the old, the old one and the dropped tables into the
	// folder, then the new MANIFEST in place (one rename).
	aside, err := makeAsideDir(dir, opts.Now)
	if err != nil {
		return rep, fmt.Errorf("repairing storage in %q: %w", dir, err)
	}
	rep.Aside = filepath.Base(aside)
	tmp := filepath.Join(dir, manifestName+".repair")
	if err := writeManifest(tmp, keep); err != nil {
		return rep, fmt.Errorf("repairing storage in %q: writing the new MANIFEST: %w", dir, err)
	}
	for _, m := range move {
		src, dst := filepath.Join(dir, m.File), filepath.Join(aside, m.File)
		if m.File == manifestName {
			err = os.Link(src, dst) // the old MANIFEST stays in place until the new one replaces it
		} else {
			err = os.Rename(src, dst)
		}
		if err != nil {
			return rep, fmt.Errorf("repairing storage in %q: moving %s aside: %w", dir, m.File, err)
		}
		rep.Moved = append(rep.Moved, m)
	}
	if err := syncDir(aside); err != nil {
		return rep, fmt.Errorf("repairing storage in %q: %w", dir, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, manifestName)); err != nil {
		return rep, fmt.Errorf("repairing storage in %q: installing the new MANIFEST: %w", dir, err)
	}
	if err := syncDir(dir); err != nil {
		return rep, fmt.Errorf("repairing storage in %q: %w", dir, err)
	}
	rep.Kept, rep.Done = len(keep), true
	unlock()
	locked = false

	// Open the result the way the gateway will, and count what it holds.
	s, err := Open(Options{Dir: dir, MemTableBytes: opts.MemTableBytes, SweepInterval: time.Hour, GCInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return rep, fmt.Errorf("repaired storage in %q does not open: %w", dir, err)
	}
	defer s.Close()
	rep.Events, rep.QueueEntries, rep.DeadLetters, err = s.census()
	if err != nil {
		return rep, fmt.Errorf("repaired storage in %q: reading it back: %w", dir, err)
	}
	return rep, s.Close()
}

func tableID(file string) uint64 {
	var id uint64
	fmt.Sscanf(strings.TrimSuffix(file, tableSuffix), "%d", &id)
	return id
}

// makeAsideDir creates dir/damaged-<now>/ (with a suffix if it exists).
func makeAsideDir(dir string, now time.Time) (string, error) {
	base := filepath.Join(dir, damagedDirPrefix+now.UTC().Format("20060102T150405Z"))
	p := base
	for i := 2; ; i++ {
		err := os.Mkdir(p, 0o700)
		if err == nil {
			return p, nil
		}
		if !errors.Is(err, os.ErrExist) || i > 100 {
			return "", err
		}
		p = fmt.Sprintf("%s-%d", base, i)
	}
}

// writeManifest writes a MANIFEST (Badger's format: header, then one change set creating
// every table) to path and fsyncs it.
func writeManifest(path string, tables map[uint64]liveTable) error {
	ids := make([]uint64, 0, len(tables))
	for id := range tables {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var set pb.ManifestChangeSet
	for _, id := range ids {
		t := tables[id]
		set.Changes = append(set.Changes, &pb.ManifestChange{Id: id, Op: pb.ManifestChange_CREATE,
			Level: t.level, KeyId: t.keyID, Compression: uint32(t.compression)})
	}
	body, err := proto.Marshal(&set)
	if err != nil {
		return err
	}
	buf := append([]byte(nil), manifestMagic...)
	buf = binary.BigEndian.AppendUint16(buf, 0)
	buf = binary.BigEndian.AppendUint16(buf, manifestMagicVersion)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(body, y.CastagnoliCrcTable))
	buf = append(buf, body...)
	return writeFileSync(path, buf)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}

// tableContents says what a table holds, reading as much of it as it can: entries by kind
// (events, queue entries, dead letters, other keys). Entries may be older versions of keys
// that other tables hold too, so these are upper bounds of what is lost.
func tableContents(path string, comp options.CompressionType) (held string) {
	var counts [5]int64 // events, queue entries, dead letters, other, deletions
	var total uint32
	readErr := func() (err error) {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		var mf *z.MmapFile
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%s", panicSummary(p))
			}
			if mf != nil {
				_ = mf.Close(-1)
			}
		}()
		mf, err = z.OpenMmapFile(path, os.O_RDONLY, 0)
		if err != nil {
			mf = nil
			return err
		}
		t, err := table.OpenTable(mf, tableOptions(comp, options.OnBlockRead))
		if err != nil {
			return err
		}
		total = t.KeyCount()
		it := t.NewIterator(table.NOCACHE)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := y.ParseKey(it.Key())
			if it.Value().Meta&bitDelete != 0 {
				counts[4]++
				continue
			}
			switch {
			case len(k) == 0:
				counts[3]++
			case k[0] == nsEvent:
				counts[0]++
			case k[0] == nsQueue:
				counts[1]++
			case k[0] == nsDead:
				counts[2]++
			default:
				counts[3]++
			}
		}
		return nil
	}()
	if total == 0 && readErr != nil {
		return "an unknown number of entries (its index is unreadable)"
	}
	read := counts[0] + counts[1] + counts[2] + counts[3] + counts[4]
	held = fmt.Sprintf("%d entries per its index", total)
	if read > 0 {
		held += fmt.Sprintf("; readable: %d queue entries (events waiting for a function), %d events, %d dead letters, %d other keys (rules, sessions, idempotency keys...), %d deletions",
			counts[1], counts[0], counts[2], counts[3], counts[4])
	}
	if readErr != nil || read < int64(total) {
		held += fmt.Sprintf(" (%d entries could not be read)", int64(total)-read)
	}
	return held
}

// bitDelete is Badger's tombstone bit in an entry's meta (badger/v4 structs.go).
const bitDelete = 1 << 0

// census counts the events, queue entries and dead letters the store holds.
func (s *Store) census() (events, queued, dead int64, err error) {
	seqs := map[uint64]struct{}{}
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			switch {
			case len(k) == 1+seqKeySize && k[0] == nsEvent:
				seqs[binary.BigEndian.Uint64(k[1:])] = struct{}{}
			case len(k) > 0 && (k[0] == nsQueue || k[0] == nsDead):
				_, seq, ok := parseFnKey(k)
				if !ok {
					continue
				}
				seqs[seq] = struct{}{}
				if k[0] == nsQueue {
					queued++
				} else {
					dead++
				}
			}
		}
		return nil
	})
	return int64(len(seqs)), queued, dead, err
}
