package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/fleetgate/fleetgate/internal/testutil"
)

// walTestDir returns a data dir with a plain Badger open in it (closed at the test's end) and
// its empty write-ahead log dir, for tests that write segments by hand.
func walTestDir(t *testing.T) (dir, wdir string, db *badger.DB) {
	t.Helper()
	dir = t.TempDir()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	wdir = filepath.Join(dir, walDirName)
	if err := os.Mkdir(wdir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir, wdir, db
}

// TestWALReplay: at open, the records after the checkpoint are applied to Badger in order
// (sets with their expiry, deletes), those at or below it are not, a torn record at a
// segment's end is dropped, and the replayed segments are deleted once Badger holds them.
func TestWALReplay(t *testing.T) {
	dir, wdir, db := walTestDir(t)
	set := func(k, v string) walWrite { return walWrite{key: []byte(k), value: []byte(v)} }
	var seg1, seg2 []byte
	seg1 = append(seg1, walRecord(1, []walWrite{set("old", "1")})...) // at the checkpoint: skipped
	seg1 = append(seg1, walRecord(2, []walWrite{set("a", "1"), set("b", "1")})...)
	seg2 = append(seg2, walRecord(3, []walWrite{set("a", "2"), {del: true, key: []byte("b")},
		{key: []byte("gone"), value: []byte("x"), expiresAt: uint64(time.Now().Add(-time.Hour).Unix())}})...)
	torn := walRecord(4, []walWrite{set("torn", "1")})
	seg2 = append(seg2, torn[:len(torn)-1]...) // never acknowledged: cut by the crash
	for n, b := range map[uint64][]byte{1: seg1, 2: seg2} {
		if err := os.WriteFile(filepath.Join(wdir, walSegmentName(n)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cp := binary.BigEndian.AppendUint64(nil, 1)
	cp = binary.LittleEndian.AppendUint32(cp, crc32.Checksum(cp, walCRC))
	if err := os.WriteFile(filepath.Join(wdir, walCheckpointName), cp, 0o600); err != nil {
		t.Fatal(err)
	}

	w, next, err := openWAL(dir, db, new(atomic.Uint64), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if next != 4 {
		t.Errorf("next group %d, want 4", next)
	}
	want := map[string]string{"a": "2", "b": "", "old": "", "gone": "", "torn": ""}
	err = db.View(func(txn *badger.Txn) error {
		for k, v := range want {
			item, err := txn.Get([]byte(k))
			if errors.Is(err, badger.ErrKeyNotFound) {
				if v != "" {
					t.Errorf("%s missing, want %q", k, v)
				}
				continue
			}
			if err != nil {
				return err
			}
			got, _ := item.ValueCopy(nil)
			if string(got) != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := w.readCheckpoint(); err != nil || got != 3 {
		t.Errorf("checkpoint %d (%v), want 3", got, err)
	}
	segs, err := w.segments()
	if err != nil || len(segs) != 1 || segs[0] != 3 {
		t.Errorf("segments after open %v (%v), want only the new one, 3", segs, err)
	}
	if err := w.close(); err != nil {
		t.Fatal(err)
	}
}

// TestWALDamageInTheMiddle: a record that fails its checksum with more records after it is
// damage, not a torn end: the log refuses to open (ErrDamaged) rather than replay the records
// after the hole, which may have been acknowledged. A torn end followed only by zeros is not.
func TestWALDamageInTheMiddle(t *testing.T) {
	set := func(k, v string) walWrite { return walWrite{key: []byte(k), value: []byte(v)} }
	for _, c := range []struct {
		name    string
		seg     func() []byte
		damaged bool
	}{
		{"flipped byte, records after", func() []byte {
			r1 := walRecord(1, []walWrite{set("a", "1")})
			r1[len(r1)-1] ^= 0xff
			return append(r1, walRecord(2, []walWrite{set("b", "1")})...)
		}, true},
		{"torn end, zeros after", func() []byte {
			r1 := walRecord(1, []walWrite{set("a", "1")})
			r2 := walRecord(2, []walWrite{set("b", "1")})
			return append(append(r1, r2[:len(r2)-3]...), make([]byte, 4096)...)
		}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, wdir, db := walTestDir(t)
			if err := os.WriteFile(filepath.Join(wdir, walSegmentName(1)), c.seg(), 0o600); err != nil {
				t.Fatal(err)
			}
			w, _, err := openWAL(dir, db, new(atomic.Uint64), slog.New(slog.NewTextHandler(io.Discard, nil)))
			if c.damaged {
				if !errors.Is(err, ErrDamaged) {
					t.Fatalf("open: %v, want ErrDamaged", err)
				}
				t.Log(err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_ = w.close()
		})
	}
}

// TestStoreWALAcrossReopen: what a store acknowledged before Close is there after Open, and a
// closed store leaves no segment to replay.
func TestStoreWALAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	defer func(was int64) { walSegmentBytes = was }(walSegmentBytes)
	walSegmentBytes = 4 << 10 // many segments, checkpointed while the appends go on
	s := openTest(t, dir)
	for i := range 200 {
		if err := s.Append(t.Context(), []*Entry{newEntry("e"+strconv.Itoa(i), strings.Repeat("p", 100), "f")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	segs, err := (&wal{dir: filepath.Join(dir, walDirName)}).segments()
	if err != nil || len(segs) != 0 {
		t.Fatalf("segments after Close: %v (%v), want none", segs, err)
	}
	s = openTest(t, dir)
	if d := s.QueueDepth("f"); d != 200 {
		t.Fatalf("queue depth after reopening %d, want 200", d)
	}
}

// TestEventNoFunctionNeedsIsLoggedOnly: an event with no function is in the write-ahead log
// once Append returns (durable before the ack), but Badger does not get it; after a crash its
// record is replayed like any other and the sweep deletes it.
func TestEventNoFunctionNeedsIsLoggedOnly(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	none, routed := newEntry("none", "unrouted payload"), newEntry("routed", "p", "f")
	if err := s.Append(t.Context(), []*Entry{none, routed}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.eventAt(none.Seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the event no function needs, read from Badger: %v, want ErrNotFound", err)
	}
	crashed := filepath.Join(t.TempDir(), "log")
	crashCopy(t, dir, crashed)
	s.Close()
	w := &wal{dir: filepath.Join(crashed, walDirName)}
	segs, err := w.segments()
	if err != nil {
		t.Fatal(err)
	}
	logged := false
	for _, n := range segs {
		data, err := os.ReadFile(filepath.Join(w.dir, walSegmentName(n)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = walScan(walSegmentName(n), w.dir, data, func(_ uint64, writes []walWrite, _, _ int) error {
			for _, wr := range writes {
				if !wr.del && bytes.Equal(wr.key, eventKey(none.Seq)) && bytes.Contains(wr.value, []byte("unrouted payload")) {
					logged = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !logged {
		t.Fatalf("event %d (no function) is not in the write-ahead log after Append returned", none.Seq)
	}
	s2 := openTest(t, crashed)
	if d := s2.QueueDepth("f"); d != 1 {
		t.Fatalf("queue depth after the crash %d, want 1", d)
	}
	s2.Sweep()
	if _, err := s2.eventAt(none.Seq); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the replayed event no function needs, after a sweep: %v, want ErrNotFound", err)
	}
}

// TestEventNoFunctionNeedsInMemory: a store without a log (in memory) keeps such events in
// Badger as before, each with its own bytes (the committer reuses its encoding buffer from
// one event to the next).
func TestEventNoFunctionNeedsInMemory(t *testing.T) {
	s := openTest(t, "", func(o *Options) { o.InMemory = true })
	a, b := newEntry("a", `{"n":1}`), newEntry("b", `{"n":2}`)
	if err := s.Append(t.Context(), []*Entry{a, b}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []*Entry{a, b} {
		ev, err := s.eventAt(e.Seq)
		if err != nil || ev.ID != e.Event.ID {
			t.Fatalf("event %d read back: %+v (%v), want id %q", e.Seq, ev, err, e.Event.ID)
		}
	}
}

// TestLogOnlyWritesDoNotHoldTheLog: events no function needs do not fill Badger's memtable,
// so without more the memtable would not be flushed and the log's segments would pile up;
// the checkpointer flushes it once they pass two memtables' worth.
func TestLogOnlyWritesDoNotHoldTheLog(t *testing.T) {
	dir := t.TempDir()
	was := walSegmentBytes
	t.Cleanup(func() { walSegmentBytes = was }) // after the store's own cleanup closes it
	walSegmentBytes = 1 << 20
	s := openTest(t, dir, func(o *Options) { o.MemTableBytes = MinMemTableBytes })
	payload := strings.Repeat("x", 1000)
	for i := range 400 { // about 40 MiB of log, five memtables' worth
		batch := make([]*Entry, 100)
		for j := range batch {
			batch[j] = newEntry("", payload)
		}
		if err := s.Append(t.Context(), batch); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	limit := int(2*MinMemTableBytes/walSegmentBytes) + 2 // the threshold, the segment being written, one more rotation
	deadline := time.Now().Add(20 * time.Second)
	for {
		segs, err := s.wal.segments()
		if err != nil {
			t.Fatal(err)
		}
		if len(segs) <= limit {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d write-ahead log segments of %d bytes after 40 MiB of events no function needs (memtables of %d bytes): want at most %d",
				len(segs), walSegmentBytes, MinMemTableBytes, limit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWALPreallocatedSegments: a segment starts as walSegmentBytes of zeros, records overwrite
// them in place (the file does not grow), and a copy taken while the store runs (a crash)
// replays every record and ends cleanly at the zeros: no torn record reported.
func TestWALPreallocatedSegments(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	seg := filepath.Join(dir, walDirName, walSegmentName(s.wal.seg))
	for i := range 50 {
		if err := s.Append(t.Context(), []*Entry{newEntry("e"+strconv.Itoa(i), "p", "f")}); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := os.Stat(seg); err != nil || st.Size() != walSegmentBytes {
		t.Fatalf("segment %v (%v), want %d bytes, preallocated", st, err, walSegmentBytes)
	}
	crashed := filepath.Join(t.TempDir(), "log")
	crashCopy(t, dir, crashed)
	s.Close()
	var logs testutil.SyncBuffer
	s2 := openTest(t, crashed, func(o *Options) { o.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	if d := s2.QueueDepth("f"); d != 50 {
		t.Fatalf("queue depth after the crash %d, want 50", d)
	}
	if out := logs.String(); strings.Contains(out, "torn") || !strings.Contains(out, "write-ahead log replayed") {
		t.Fatalf("replay logged:\n%s", out)
	}
}

// TestSpareSegmentPrepared: the spare segment is walSegmentBytes of zeros whether the
// checkpointer wrote it paced (walPrefillChunk at a time, each written back before the next)
// or the committer wrote it at once (or it stopped pacing for a committer waiting), a size that
// is not a multiple of the chunk included, and no temporary file is left.
func TestSpareSegmentPrepared(t *testing.T) {
	defer func(was int64) { walSegmentBytes = was }(walSegmentBytes)
	for _, size := range []int64{8 << 20, 3*walPrefillChunk + 100, 100} {
		for _, paced := range []bool{true, false} {
			walSegmentBytes = size
			w := &wal{dir: t.TempDir()}
			w.hurry.Store(paced && size == 100) // the committer waiting: paced, no more waits
			if err := w.prepareSegment(paced); err != nil {
				t.Fatalf("size %d, paced %v: %v", size, paced, err)
			}
			b, err := os.ReadFile(filepath.Join(w.dir, walSpareName))
			if err != nil || int64(len(b)) != size || !allZero(b) {
				t.Fatalf("size %d, paced %v: spare of %d bytes, all zeros %v (%v); want %d bytes of zeros",
					size, paced, len(b), allZero(b), err, size)
			}
			if names, _ := os.ReadDir(w.dir); len(names) != 1 {
				t.Fatalf("size %d, paced %v: %d files in the log's directory, want the spare alone", size, paced, len(names))
			}
		}
	}
}

// FuzzWALRecord: the write-ahead log's records are read back from disk after a crash, cut or
// damaged anywhere. Decoding never panics, and a record that decodes encodes back to one that
// decodes the same. Half the inputs get a valid length and checksum (wrap), so that the
// decoding of the writes is reached too (random bytes almost never carry a valid CRC).
func FuzzWALRecord(f *testing.F) {
	rec := walRecord(7, []walWrite{
		{key: []byte("q\x00f\x00\x00\x00\x01"), value: []byte("event")},
		{key: []byte("i-key"), value: []byte("id"), expiresAt: 1 << 40},
		{del: true, key: []byte("k")},
	})
	f.Add(rec, false)
	f.Add(rec[:len(rec)-3], false)
	f.Add(walRecord(1, nil), false)
	f.Add(append(walRecord(2, []walWrite{{del: true, key: nil}}), rec...), false)
	f.Add(make([]byte, 64), false)
	f.Add(rec[walRecordHeader:], true)
	f.Add(rec[walRecordHeader:len(rec)-1], true)
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x80\x00"), true) // an overlong length
	f.Fuzz(func(t *testing.T, b []byte, wrap bool) {
		if wrap {
			h := binary.LittleEndian.AppendUint32(nil, uint32(len(b)))
			h = binary.LittleEndian.AppendUint32(h, crc32.Checksum(b, walCRC))
			b = append(h, b...)
		}
		group, writes, n, err := decodeWALRecord(b)
		if err != nil {
			if !errors.Is(err, errWALTorn) {
				t.Fatalf("error %v is not errWALTorn", err)
			}
			return
		}
		if n > len(b) {
			t.Fatalf("record of %d bytes in %d", n, len(b))
		}
		again := walRecord(group, writes)
		group2, writes2, n2, err := decodeWALRecord(again)
		if err != nil || group2 != group || n2 != len(again) || len(writes2) != len(writes) {
			t.Fatalf("record does not round-trip: %v", err)
		}
		for i := range writes {
			a, b := writes[i], writes2[i]
			if a.del != b.del || !bytes.Equal(a.key, b.key) || !bytes.Equal(a.value, b.value) || a.expiresAt != b.expiresAt {
				t.Fatalf("write %d does not round-trip: %+v, %+v", i, a, b)
			}
		}
	})
}

// TestValueLogGCWithoutWorkFlushesNothing: the value-log GC flushes the memtable (its moved
// values' pointers have no other log) only when it moved something; a run that found nothing to
// move must not write a small level-0 table every GC interval.
func TestValueLogGCWithoutWorkFlushesNothing(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	for i := range 10 {
		if err := s.Append(t.Context(), []*Entry{newEntry("e"+strconv.Itoa(i), "p", "f")}); err != nil {
			t.Fatal(err)
		}
	}
	s.runValueLogGC()
	if tables := tableFiles(t, dir); len(tables) != 0 {
		t.Fatalf("value-log GC with nothing to move wrote tables %v", tables)
	}
}

// crashCopy copies the data dir of an open store to dst, as a crash would leave it (every
// commit was synced). A file that goes away between the listing and its copy (the spare
// segment the checkpointer prepares as next.spare.tmp, then renames) is left out, as a crash
// at that moment would: the next open removes a spare anyway. os.CopyFS failed on it.
func crashCopy(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o600)
	})
	if err != nil {
		t.Fatalf("copying the data dir: %v", err)
	}
}
