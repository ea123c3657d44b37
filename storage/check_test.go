package storage

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// damageEvents is how many events makeTables stores, in damageTables table files.
const (
	damageTables = 4
	damageEvents = damageTables * 500
)

// makeTables creates a store in a fresh dir with damageTables table files (Close flushes the
// memtable to a new table: the store is opened, filled and closed that many times) of events
// "e-<i>" queued for function "f", and returns the dir and its tables, oldest first.
func makeTables(t *testing.T) (dir string, tables []string) {
	t.Helper()
	defer func(was int) { levelZeroTables = was }(levelZeroTables)
	levelZeroTables = damageTables + 1 // no compaction: one table per Close
	dir = t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 150)
	for i := range damageTables {
		s, err := Open(Options{Dir: dir, SweepInterval: time.Hour, GCInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		var batch []*Entry
		for j := i * damageEvents / damageTables; j < (i+1)*damageEvents/damageTables; j++ {
			for k := range buf {
				buf[k] = byte(rng.Uint32())
			}
			batch = append(batch, newEntry("e-"+strconv.Itoa(j), hex.EncodeToString(buf), "f"))
		}
		if err := s.Append(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	tables = tableFiles(t, dir)
	if len(tables) != damageTables {
		t.Fatalf("want %d table files, have %v", damageTables, tables)
	}
	return dir, tables
}

// copyStore copies the files of the store in src into a fresh dir.
func copyStore(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func tableFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	slices.Sort(names)
	return names
}

// snapshot is every file in dir (recursively) with its size and content hash.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sum := sha256.Sum256(data)
		out[rel] = fmt.Sprintf("%d:%x", len(data), sum[:8])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func truncateFile(t *testing.T, path string, size func(int64) int64) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size(info.Size())); err != nil {
		t.Fatal(err)
	}
}

// flipBytes inverts n bytes of path starting at off (negative: from the end).
func flipBytes(t *testing.T, path string, off int64, n int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(data))
	}
	for i := off; i < off+int64(n); i++ {
		data[i] ^= 0xff
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// readAllEvents reads every queued event id of function f.
func readAllEvents(t *testing.T, s *Store) map[string]bool {
	t.Helper()
	found := map[string]bool{}
	var after uint64
	for {
		items, err := s.ReadQueue("f", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			return found
		}
		for _, it := range items {
			found[it.Event.ID] = true
		}
		after = items[len(items)-1].Seq
	}
}

// TestOpenRefusesDamagedDir: each kind of damage makes Open fail with ErrDamaged, naming the
// file and why, and telling what to do, and leaves every file as it was; the full Check finds
// it too.
func TestOpenRefusesDamagedDir(t *testing.T) {
	src, tables := makeTables(t)
	f := func(name, want string, damage func(t *testing.T, dir string, tables []string)) {
		t.Run(name, func(t *testing.T) {
			dir := copyStore(t, src)
			damage(t, dir, tables)
			before := snapshot(t, dir)
			s, err := Open(Options{Dir: dir, MemTableBytes: MinMemTableBytes, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a damaged dir")
			}
			if !errors.Is(err, ErrDamaged) {
				t.Fatalf("Open = %v, want ErrDamaged", err)
			}
			msg := err.Error()
			for _, w := range []string{want, "fleetgate storage check", "fleetgate storage repair", "backup"} {
				if !strings.Contains(msg, w) {
					t.Errorf("error does not say %q: %s", w, msg)
				}
			}
			if after := snapshot(t, dir); !mapsEqual(before, after) {
				t.Fatalf("Open changed the dir:\nbefore %v\nafter  %v", before, after)
			}
			r, err := Check(dir)
			if err != nil {
				t.Fatal(err)
			}
			if !r.Damaged() || !errors.Is(r.Err(), ErrDamaged) {
				t.Fatalf("Check found no damage: %+v", r)
			}
			if after := snapshot(t, dir); !mapsEqual(before, after) {
				t.Fatal("Check changed the dir")
			}
			t.Logf("%s", msg)
		})
	}
	manifest := func(dir string) string { return filepath.Join(dir, manifestName) }
	f("manifest deleted", "MANIFEST is missing", func(t *testing.T, dir string, _ []string) {
		if err := os.Remove(manifest(dir)); err != nil {
			t.Fatal(err)
		}
	})
	f("manifest truncated to 5 bytes", "MANIFEST is truncated: 5 bytes", func(t *testing.T, dir string, _ []string) {
		truncateFile(t, manifest(dir), func(int64) int64 { return 5 })
	})
	f("manifest truncated to its header", "MANIFEST does not reference", func(t *testing.T, dir string, _ []string) {
		truncateFile(t, manifest(dir), func(int64) int64 { return 8 })
	})
	f("manifest truncated to half", "MANIFEST", func(t *testing.T, dir string, _ []string) {
		truncateFile(t, manifest(dir), func(n int64) int64 { return n / 2 })
	})
	f("manifest overwritten", "magic", func(t *testing.T, dir string, _ []string) {
		flipBytes(t, manifest(dir), 0, 4)
	})
	f("manifest record corrupt", "fails its checksum", func(t *testing.T, dir string, _ []string) {
		// The MANIFEST starts with an empty record (8 bytes: length 0, checksum 0); this is the
		// checksum of the second.
		flipBytes(t, manifest(dir), 8+8+4, 1)
	})
	f("table truncated to half", "is truncated", func(t *testing.T, dir string, tables []string) {
		truncateFile(t, filepath.Join(dir, tables[1]), func(n int64) int64 { return n / 2 })
	})
	f("table truncated by one byte", "truncated", func(t *testing.T, dir string, tables []string) {
		truncateFile(t, filepath.Join(dir, tables[0]), func(n int64) int64 { return n - 1 })
	})
	f("table index corrupt", "corrupt", func(t *testing.T, dir string, tables []string) {
		flipBytes(t, filepath.Join(dir, tables[0]), -64, 8) // in the index, before the footer
	})
	f("table deleted", "which is missing", func(t *testing.T, dir string, tables []string) {
		if err := os.Remove(filepath.Join(dir, tables[len(tables)-1])); err != nil {
			t.Fatal(err)
		}
	})
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCheckFindsCorruptBlock: a flipped byte inside a data block is beyond the start-up check
// (it reads each table's footer, index and last block) but the full Check finds it.
func TestCheckFindsCorruptBlock(t *testing.T) {
	dir, tables := makeTables(t)
	flipBytes(t, filepath.Join(dir, tables[0]), 1000, 4)
	r, err := Check(dir)
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.Join(r.Problems, "\n"); !r.Damaged() || !strings.Contains(p, tables[0]+" is ") || !strings.Contains(p, "corrupt") {
		t.Fatalf("Check: problems %q", r.Problems)
	}
	s, err := Open(Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	t.Logf("Open: %v", err)
	if err == nil {
		t.Logf("read back: %d of %d events", len(readAllEvents(t, s)), damageEvents)
		s.Close()
	}
}

// TestOpenAcceptsCrashStates: what a crash legitimately leaves opens, with every event: a
// partial last MANIFEST record, and a table not yet recorded in the MANIFEST.
func TestOpenAcceptsCrashStates(t *testing.T) {
	src, tables := makeTables(t)
	f := func(name, note string, crash func(t *testing.T, dir string, tables []string)) {
		t.Run(name, func(t *testing.T) {
			dir := copyStore(t, src)
			crash(t, dir, tables)
			r, err := Check(dir)
			if err != nil {
				t.Fatal(err)
			}
			if r.Damaged() {
				t.Fatalf("Check: %v", r.Problems)
			}
			if !strings.Contains(strings.Join(r.Notes, "\n"), note) {
				t.Fatalf("Check notes %q, want %q", r.Notes, note)
			}
			s := openTest(t, dir, func(o *Options) { o.MemTableBytes = MinMemTableBytes })
			if n := len(readAllEvents(t, s)); n != damageEvents {
				t.Fatalf("%d events after reopening, want %d", n, damageEvents)
			}
		})
	}
	f("partial manifest record", "partial record", func(t *testing.T, dir string, _ []string) {
		mf, err := os.OpenFile(filepath.Join(dir, manifestName), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer mf.Close()
		rec := binary.BigEndian.AppendUint32(nil, 40) // a 40-byte record, cut after 6
		rec = append(rec, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
		if _, err := mf.Write(rec); err != nil {
			t.Fatal(err)
		}
	})
	f("compaction output not recorded", "compaction cut short", func(t *testing.T, dir string, tables []string) {
		// A copy of a recorded table under a new id: the data a compaction writes before it
		// records its output.
		data, err := os.ReadFile(filepath.Join(dir, tables[0]))
		if err != nil {
			t.Fatal(err)
		}
		last, _ := strconv.Atoi(strings.TrimSuffix(tables[len(tables)-1], tableSuffix))
		if err := os.WriteFile(filepath.Join(dir, tableFileName(uint64(last+1))), data, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	f("table being written", "being written at a crash", func(t *testing.T, dir string, tables []string) {
		last, _ := strconv.Atoi(strings.TrimSuffix(tables[len(tables)-1], tableSuffix))
		if err := os.WriteFile(filepath.Join(dir, tableFileName(uint64(last+1))), make([]byte, 4096), 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

// TestOpenAfterKillDuringFlushes: a child appends with the smallest memtable, so that tables are
// flushed and compacted all the time, and is killed; the dir must pass the check and open
// with every acknowledged event, three times over.
func TestOpenAfterKillDuringFlushes(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	dir := t.TempDir()
	acked := map[string]bool{}
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestChildFlushingAppender$", "-test.v")
		cmd.Env = append(os.Environ(), "FLEETGATE_STORAGE_FLUSH_CHILD="+dir, "FLEETGATE_ROUND="+strconv.Itoa(round))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		n := 0
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
				acked[id] = true
				if n++; n == 2500 { // about 10 MiB: past the first flush
					_ = cmd.Process.Signal(syscall.SIGKILL)
					break
				}
			}
		}
		_ = cmd.Wait()
		if n < 2500 {
			t.Fatalf("round %d: child acknowledged only %d appends", round, n)
		}
		r, err := Check(dir)
		if err != nil {
			t.Fatal(err)
		}
		if r.Damaged() {
			t.Fatalf("round %d: a crash state is reported as damage: %v", round, r.Problems)
		}
		s, err := Open(Options{Dir: dir, MemTableBytes: MinMemTableBytes, SweepInterval: time.Hour, GCInterval: time.Hour})
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		found := readAllEvents(t, s)
		s.Close()
		for id := range acked {
			if !found[id] {
				t.Fatalf("round %d: acknowledged event %s lost", round, id)
			}
		}
		t.Logf("round %d: %d tables, %d notes, %d acknowledged, all found", round, len(r.Tables), len(r.Notes), len(acked))
	}
}

// TestChildFlushingAppender is the child of TestOpenAfterKillDuringFlushes.
func TestChildFlushingAppender(t *testing.T) {
	dir := os.Getenv("FLEETGATE_STORAGE_FLUSH_CHILD")
	if dir == "" {
		t.Skip("runs only as the child of TestOpenAfterKillDuringFlushes")
	}
	s, err := Open(Options{Dir: dir, MemTableBytes: MinMemTableBytes})
	if err != nil {
		t.Fatal(err)
	}
	round := os.Getenv("FLEETGATE_ROUND")
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			buf := make([]byte, 2<<10)
			for i := 0; ; i++ {
				for k := range buf {
					buf[k] = byte(rng.Uint32())
				}
				id := round + "-" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if err := s.Append(context.Background(), []*Entry{newEntry(id, hex.EncodeToString(buf), "f")}); err != nil {
					return
				}
				mu.Lock()
				fmt.Println("ACK " + id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestRepair: a repaired dir opens, keeps every event of the tables it could read, and has
// everything it dropped in damaged-<time>/, unchanged.
func TestRepair(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	src, tables := makeTables(t)
	f := func(name string, allSurvive bool, damage func(t *testing.T, dir string, tables []string) (moved []string)) {
		t.Run(name, func(t *testing.T) {
			dir := copyStore(t, src)
			moved := damage(t, dir, tables)
			slices.Sort(moved)
			before := snapshot(t, dir)
			var plan []string
			rep, err := Repair(dir, RepairOptions{Now: now, Confirm: func(p []string) bool { plan = p; return true }})
			if err != nil {
				t.Fatalf("Repair: %v", err)
			}
			if !rep.Done || len(plan) == 0 {
				t.Fatalf("Repair did nothing: %+v", rep)
			}
			aside := filepath.Join(dir, "damaged-20260102T030405Z")
			if rep.Aside != filepath.Base(aside) {
				t.Fatalf("aside = %q", rep.Aside)
			}
			var got []string
			for _, m := range rep.Moved {
				got = append(got, m.File)
				if before[m.File] != snapshot(t, aside)[m.File] {
					t.Errorf("%s was not moved aside unchanged", m.File)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, moved) {
				t.Fatalf("moved %v, want %v", got, moved)
			}
			if rep.QueueEntries == 0 || rep.Events != rep.QueueEntries {
				t.Fatalf("census: %d events, %d queue entries", rep.Events, rep.QueueEntries)
			}
			// A second repair finds nothing to do.
			if rep, err := Repair(dir, RepairOptions{}); err != nil || rep.Done {
				t.Fatalf("second repair: %+v, %v", rep, err)
			}
			s := openTest(t, dir, func(o *Options) { o.MemTableBytes = MinMemTableBytes })
			found := readAllEvents(t, s)
			if int64(len(found)) != rep.QueueEntries {
				t.Fatalf("read %d events, the report says %d", len(found), rep.QueueEntries)
			}
			if allSurvive && len(found) != damageEvents {
				t.Fatalf("%d events survived, want all %d", len(found), damageEvents)
			}
			if len(found) < damageEvents/3 {
				t.Fatalf("only %d events survived", len(found))
			}
			t.Logf("plan %q; %d of %d events survived", plan, len(found), damageEvents)
		})
	}
	f("manifest deleted", true, func(t *testing.T, dir string, _ []string) []string {
		os.Remove(filepath.Join(dir, manifestName))
		return nil
	})
	f("manifest truncated to its header", true, func(t *testing.T, dir string, _ []string) []string {
		truncateFile(t, filepath.Join(dir, manifestName), func(int64) int64 { return 8 })
		return []string{manifestName}
	})
	f("table truncated", false, func(t *testing.T, dir string, tables []string) []string {
		truncateFile(t, filepath.Join(dir, tables[1]), func(n int64) int64 { return n / 2 })
		return []string{manifestName, tables[1]}
	})
	f("corrupt block", false, func(t *testing.T, dir string, tables []string) []string {
		flipBytes(t, filepath.Join(dir, tables[0]), 1000, 4)
		return []string{manifestName, tables[0]}
	})
}

// TestRepairAsksFirst: a refused confirmation changes nothing.
func TestRepairAsksFirst(t *testing.T) {
	dir, _ := makeTables(t)
	truncateFile(t, filepath.Join(dir, manifestName), func(int64) int64 { return 8 })
	before := snapshot(t, dir)
	rep, err := Repair(dir, RepairOptions{Confirm: func([]string) bool { return false }})
	if err != nil || rep.Done {
		t.Fatalf("Repair = %+v, %v", rep, err)
	}
	if !mapsEqual(before, snapshot(t, dir)) {
		t.Fatal("a refused repair changed the dir")
	}
}

// TestCheckRefusesOpenStore: Check and Repair do not read or touch a store a process has open.
func TestCheckRefusesOpenStore(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if err := s.Append(context.Background(), []*Entry{newEntry("a", "x", "f")}); err != nil {
		t.Fatal(err)
	}
	if _, err := Check(dir); !errors.Is(err, errInUse) {
		t.Fatalf("Check on an open store = %v", err)
	}
	if _, err := Repair(dir, RepairOptions{}); !errors.Is(err, errInUse) {
		t.Fatalf("Repair on an open store = %v", err)
	}
	s.Close()
	r, err := Check(dir)
	if err != nil || r.Damaged() {
		t.Fatalf("Check after Close = %+v, %v", r, err)
	}
}

// TestEmptyWriteAheadLogSetAside: a power cut between Badger creating a memtable's log and its
// first sync leaves an empty .mem file, and Badger then refuses to open at all. Such a file held
// nothing acknowledged: the store sets it aside (never deletes it) and opens with every event.
func TestEmptyWriteAheadLogSetAside(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if err := s.Append(context.Background(), []*Entry{newEntry("kept", `{"n":1}`, "f")}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, "99999.mem"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	items, err := s.ReadQueue("f", 0, 0)
	if err != nil || len(items) != 1 || items[0].Event.ID != "kept" {
		t.Fatalf("after setting the empty log aside: %d items, %v", len(items), err)
	}
	aside, _ := filepath.Glob(filepath.Join(dir, "damaged-*", "99999.mem"))
	if len(aside) != 1 {
		t.Fatalf("the empty log was not moved aside: %v", aside)
	}
}

// TestCheckWriteAheadLog: `storage check` reads the store's own write-ahead log too: a torn
// end is a note (normal after a crash), damage in the middle of a segment is a problem.
func TestCheckWriteAheadLog(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if err := s.Append(context.Background(), []*Entry{newEntry("a", "x", "f")}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	set := walWrite{key: []byte("k"), value: []byte("v")}
	seg := filepath.Join(dir, walDirName, walSegmentName(1<<40))
	r1, r2 := walRecord(1<<40, []walWrite{set}), walRecord(1<<40+1, []walWrite{set})
	if err := os.WriteFile(seg, append(slices.Clone(r1), r2[:len(r2)-2]...), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := Check(dir)
	if err != nil || r.Damaged() || !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, "torn record") }) {
		t.Fatalf("a torn end: %+v, %v (want a note, no problem)", r, err)
	}
	r1[len(r1)-1] ^= 0xff
	if err := os.WriteFile(seg, append(r1, r2...), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err = Check(dir)
	if err != nil || !r.Damaged() || !strings.Contains(strings.Join(r.Problems, ";"), "write-ahead log segment") {
		t.Fatalf("damage in the middle: %+v, %v (want a problem naming the segment)", r, err)
	}
	t.Log(r.Problems)
}
