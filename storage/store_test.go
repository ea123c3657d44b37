package storage

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
)

func openTest(t testing.TB, dir string, mod ...func(*Options)) *Store {
	t.Helper()
	o := Options{Dir: dir, SweepInterval: time.Hour, GCInterval: time.Hour}
	for _, m := range mod {
		m(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newEntry(id string, data string, fns ...string) *Entry {
	e := &Entry{Event: &event.Event{ID: id, Subject: "dev1", Topic: "devices/dev1/telemetry", Protocol: "mqtt", Data: []byte(data), Time: time.Now()}}
	for _, f := range fns {
		e.Targets = append(e.Targets, Target{Function: f, Rule: "r1"})
	}
	return e
}

func TestAppendReadAckReopen(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	entries := []*Entry{newEntry("a", `{"n":1}`, "f1", "f2"), newEntry("b", `{"n":2}`, "f1")}
	entries[1].Targets[0].Data = []byte(`{"sel":true}`)
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	if entries[0].Seq == 0 || entries[1].Seq != entries[0].Seq+1 {
		t.Fatalf("seqs not assigned in order: %d %d", entries[0].Seq, entries[1].Seq)
	}
	items, err := s.ReadQueue("f1", 0, 10)
	if err != nil || len(items) != 2 {
		t.Fatalf("ReadQueue f1 = %v, %v", items, err)
	}
	if items[0].Event.ID != "a" || string(items[0].Data) != `{"n":1}` || items[0].Rule != "r1" {
		t.Fatalf("item 0 = %+v", items[0])
	}
	if string(items[1].Data) != `{"sel":true}` {
		t.Fatalf("select data not kept: %q", items[1].Data)
	}
	if d := s.QueueDepth("f1"); d != 2 {
		t.Fatalf("depth f1 = %d", d)
	}
	if err := s.Ack("f1", items[0].Seq, items[0].Seq); err != nil { // double ack counts once
		t.Fatal(err)
	}
	if d := s.QueueDepth("f1"); d != 1 {
		t.Fatalf("depth f1 after ack = %d", d)
	}
	s.Close()
	if err := s.Ack("f1", 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Ack after close = %v, want ErrClosed", err)
	}

	s2 := openTest(t, dir)
	items, err = s2.ReadQueue("f1", 0, 10)
	if err != nil || len(items) != 1 || items[0].Event.ID != "b" {
		t.Fatalf("after reopen f1 = %+v, %v", items, err)
	}
	items, _ = s2.ReadQueue("f2", 0, 10)
	if len(items) != 1 || items[0].Event.ID != "a" {
		t.Fatalf("after reopen f2 = %+v", items)
	}
	if s2.QueueDepth("f1") != 1 || s2.QueueDepth("f2") != 1 {
		t.Fatalf("depths after reopen: %d %d", s2.QueueDepth("f1"), s2.QueueDepth("f2"))
	}
	// Seqs continue after reopen.
	e := newEntry("c", "x", "f1")
	if err := s2.Append(context.Background(), []*Entry{e}); err != nil {
		t.Fatal(err)
	}
	if e.Seq <= entries[1].Seq {
		t.Fatalf("seq went backwards after reopen: %d <= %d", e.Seq, entries[1].Seq)
	}
}

func TestReadQueuePaging(t *testing.T) {
	s := openTest(t, t.TempDir())
	var entries []*Entry
	for i := range 25 {
		entries = append(entries, newEntry(fmt.Sprint(i), "x", "f"))
	}
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	var got []string
	var after uint64
	for {
		items, err := s.ReadQueue("f", after, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			got = append(got, it.Event.ID)
		}
		after = items[len(items)-1].Seq
	}
	if len(got) != 25 || got[0] != "0" || got[24] != "24" {
		t.Fatalf("paged = %v", got)
	}
}

func TestIdempotency(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	e1 := newEntry("first", "x", "f")
	e1.IdempotencyKey = "k1"
	e2 := newEntry("second", "x", "f")
	e2.IdempotencyKey = "k1" // same key in the same request
	if err := s.Append(context.Background(), []*Entry{e1, e2}); err != nil {
		t.Fatal(err)
	}
	if e1.Duplicate || !e2.Duplicate || e2.Event.ID != "first" {
		t.Fatalf("in-request duplicate: e1 dup=%v e2 dup=%v id=%s", e1.Duplicate, e2.Duplicate, e2.Event.ID)
	}
	s.Close()
	s = openTest(t, dir)
	e3 := newEntry("third", "x", "f")
	e3.IdempotencyKey = "k1"
	if err := s.Append(context.Background(), []*Entry{e3}); err != nil {
		t.Fatal(err)
	}
	if !e3.Duplicate || e3.Event.ID != "first" {
		t.Fatalf("after reopen: dup=%v id=%s", e3.Duplicate, e3.Event.ID)
	}
	if d := s.QueueDepth("f"); d != 1 {
		t.Fatalf("duplicates were queued: depth %d", d)
	}
}

func TestDeadLetterAndReplay(t *testing.T) {
	s := openTest(t, t.TempDir())
	entries := []*Entry{newEntry("a", "1", "f"), newEntry("b", "2", "f"), newEntry("c", "3", "f")}
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	err := s.DeadLetter("f", []DeadLetter{
		{Seq: entries[0].Seq, Attempts: 3, Reason: "HTTP 500: boom"},
		{Seq: entries[2].Seq, Attempts: 10, Reason: "timeout"},
		{Seq: 999, Attempts: 1, Reason: "not queued"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.QueueDepth("f") != 1 || s.DeadLetterDepth("f") != 2 {
		t.Fatalf("depths: queue %d dead %d", s.QueueDepth("f"), s.DeadLetterDepth("f"))
	}
	dl, err := s.DeadLetters("f", 0, 0)
	if err != nil || len(dl) != 2 {
		t.Fatalf("DeadLetters = %+v, %v", dl, err)
	}
	if dl[0].Reason != "HTTP 500: boom" || dl[0].Attempts != 3 || dl[0].Item.Event.ID != "a" || dl[0].Item.Rule != "r1" || dl[0].At.IsZero() {
		t.Fatalf("dead letter 0 = %+v", dl[0])
	}
	// The sweeper must keep dead-lettered events.
	if err := s.Ack("f", entries[1].Seq); err != nil {
		t.Fatal(err)
	}
	s.Sweep()
	items, err := s.Replay("f", nil)
	if err != nil || len(items) != 2 || items[0].Event.ID != "a" || items[1].Event.ID != "c" {
		t.Fatalf("Replay = %+v, %v", items, err)
	}
	if s.QueueDepth("f") != 2 || s.DeadLetterDepth("f") != 0 {
		t.Fatalf("depths after replay: queue %d dead %d", s.QueueDepth("f"), s.DeadLetterDepth("f"))
	}
	q, _ := s.ReadQueue("f", 0, 0)
	if len(q) != 2 || q[0].Rule != "r1" {
		t.Fatalf("queue after replay = %+v", q)
	}
}

func countEvents(t *testing.T, s *Store) int {
	t.Helper()
	n := 0
	for seq := uint64(1); seq <= s.LastSeq(); seq++ {
		if _, err := s.eventAt(seq); err == nil {
			n++
		}
	}
	return n
}

func TestRetentionDeletesOnlyDelivered(t *testing.T) {
	s := openTest(t, t.TempDir())
	// a has two functions (stored on its own), b and d one (stored in their queue entry), c none.
	entries := []*Entry{newEntry("a", "1", "f", "g"), newEntry("b", "2", "f"), newEntry("c", "3"), newEntry("d", "4", "g")}
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	s.Sweep()
	if n := countEvents(t, s); n != 1 { // a (c, which no function needs, is in the write-ahead log only)
		t.Fatalf("stand-alone events after the first sweep: %d, want 1", n)
	}
	_ = s.Ack("f", entries[0].Seq, entries[1].Seq)
	s.Sweep()
	if n := countEvents(t, s); n != 1 { // g still needs a (seq 1)
		t.Fatalf("after f acks: %d stand-alone events, want 1", n)
	}
	items, _ := s.ReadQueue("g", 0, 0)
	if len(items) != 2 || items[0].Event.ID != "a" || items[1].Event.ID != "d" {
		t.Fatalf("g queue = %+v", items)
	}
	_ = s.Ack("g", entries[0].Seq)
	s.Sweep()
	if n := countEvents(t, s); n != 0 {
		t.Fatalf("after g ack: %d stand-alone events, want 0", n)
	}
	items, _ = s.ReadQueue("g", 0, 0)
	if len(items) != 1 || items[0].Event.ID != "d" || string(items[0].Data) != "4" {
		t.Fatalf("g queue = %+v", items)
	}
}

func TestMaxAgeExpiresLoudly(t *testing.T) {
	s := openTest(t, t.TempDir(), func(o *Options) { o.MaxAge = time.Hour })
	old := []*Entry{newEntry("inline", "1", "f"), newEntry("shared", "2", "f", "g")}
	if err := s.Append(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	_ = s.DeadLetter("g", []DeadLetter{{Seq: old[1].Seq, Attempts: 1, Reason: "x"}})
	s.expire(time.Now().Add(-time.Minute)) // nothing is that old yet
	if s.QueueDepth("f") != 2 {
		t.Fatalf("young events expired: depth %d", s.QueueDepth("f"))
	}
	s.expire(time.Now().Add(time.Second)) // as if an hour had passed
	if s.QueueDepth("f") != 0 || s.DeadLetterDepth("g") != 0 || countEvents(t, s) != 0 {
		t.Fatalf("expired events still there: depth f %d, dead g %d, events %d", s.QueueDepth("f"), s.DeadLetterDepth("g"), countEvents(t, s))
	}
	if items, _ := s.ReadQueue("f", 0, 0); len(items) != 0 {
		t.Fatalf("expired items still readable: %+v", items)
	}
	if v := s.m.expired.Get(); v != 2 {
		t.Fatalf("expired counter = %d, want 2", v)
	}
}

func TestBadInputAndClosed(t *testing.T) {
	s := openTest(t, t.TempDir())
	if err := s.Append(context.Background(), []*Entry{{Event: &event.Event{}, Targets: []Target{{Function: "a\x00b"}}}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad function name = %v", err)
	}
	if err := s.Append(context.Background(), []*Entry{{}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("nil event = %v", err)
	}
	big := newEntry("big", strings.Repeat("x", int(s.limits.requestBytes)+1), "f")
	if err := s.Append(context.Background(), []*Entry{big}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("huge append = %v", err)
	}
	if s.LastSeq() != 0 {
		t.Fatalf("refused appends stored something: last seq %d", s.LastSeq())
	}
	s.Close()
	if err := s.Append(context.Background(), []*Entry{newEntry("a", "1", "f")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close = %v", err)
	}
	if _, _, err := s.Get("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("get after close = %v", err)
	}
}

func TestKV(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	if _, ok, err := s.Get("rules/v/1"); ok || err != nil {
		t.Fatalf("missing key: ok=%v err=%v", ok, err)
	}
	_ = s.Put("rules/v/1", []byte("one"))
	_ = s.PutMany(map[string][]byte{"rules/v/2": []byte("two"), "other": []byte("x")})
	s.Close()
	s = openTest(t, dir)
	var keys []string
	err := s.Scan("rules/", func(k string, v []byte) error { keys = append(keys, k+"="+string(v)); return nil })
	if err != nil || strings.Join(keys, ",") != "rules/v/1=one,rules/v/2=two" {
		t.Fatalf("Scan = %v, %v", keys, err)
	}
	_ = s.Delete("rules/v/1")
	if _, ok, _ := s.Get("rules/v/1"); ok {
		t.Fatal("deleted key still there")
	}
}

// appendInRows has writers goroutines each append per single events in a row (each waits for
// its commit), to function f.
func appendInRows(t *testing.T, s *Store, writers, per int) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				if err := s.Append(context.Background(), []*Entry{newEntry(fmt.Sprintf("%d-%d", w, i), "x", "f")}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestConcurrentAppendsShareCommits(t *testing.T) {
	s := openTest(t, t.TempDir())
	var got sync.Map
	s.SetOnCommit(func(c []*Entry) {
		for _, e := range c {
			got.Store(e.Seq, e.Event.ID)
		}
	})
	const writers, per = 16, 50
	appendInRows(t, s, writers, per)
	if s.LastSeq() != writers*per {
		t.Fatalf("last seq %d, want %d", s.LastSeq(), writers*per)
	}
	n := 0
	got.Range(func(_, _ any) bool { n++; return true })
	if n != writers*per {
		t.Fatalf("OnCommit saw %d entries, want %d", n, writers*per)
	}
	if c := s.m.commits.Get(); c >= writers*per {
		t.Fatalf("no group commit: %d commits for %d appends", c, writers*per)
	}
}

// TestCommitDelaySpacesCommits: with Options.CommitDelay, commits start at least that far
// apart, so a writer's appends in a row each wait for the next one, and concurrent writers
// share them.
func TestCommitDelaySpacesCommits(t *testing.T) {
	const delay = 40 * time.Millisecond
	s := openTest(t, t.TempDir(), func(o *Options) { o.CommitDelay = delay })
	const writers, per = 8, 4
	before := s.m.commits.Get()
	start := time.Now()
	appendInRows(t, s, writers, per)
	elapsed := time.Since(start)
	commits := s.m.commits.Get() - before
	// Each writer's appends are in a row: the 2nd to the last each wait for a commit that
	// starts at least delay after the one before.
	if elapsed < (per-1)*delay {
		t.Fatalf("%d appends in a row took %v with a commit delay of %v: want at least %v", per, elapsed, delay, (per-1)*delay)
	}
	// Commits start at least delay apart (the sweep's own commits included).
	if most := uint64(elapsed/delay) + 1; commits > most {
		t.Fatalf("%d commits in %v with a commit delay of %v: want at most %d", commits, elapsed, delay, most)
	}
	if s.LastSeq() != writers*per {
		t.Fatalf("last seq %d, want %d", s.LastSeq(), writers*per)
	}
}

// TestKillDuringAppends runs a child process that appends and prints every acknowledged seq,
// kills it with SIGKILL mid-stream, reopens the directory and checks every printed seq is there.
func TestKillDuringAppends(t *testing.T) {
	if os.Getenv("FLEETGATE_STORAGE_CHILD") != "" {
		t.Skip("child mode")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildAppender$", "-test.v")
	cmd.Env = append(os.Environ(), "FLEETGATE_STORAGE_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if id, ok := strings.CutPrefix(line, "ACK "); ok {
			acked[id] = true
			if len(acked) == 2000 {
				_ = cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
	}
	_ = cmd.Wait()
	if len(acked) < 2000 {
		t.Fatalf("child acknowledged only %d appends", len(acked))
	}
	s := openTest(t, dir)
	found := map[string]bool{}
	var after uint64
	for {
		items, err := s.ReadQueue("f", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			found[it.Event.ID] = true
		}
		after = items[len(items)-1].Seq
	}
	for id := range acked {
		if !found[id] {
			t.Fatalf("acknowledged event %s lost after SIGKILL (%d acked, %d found)", id, len(acked), len(found))
		}
	}
	t.Logf("%d acknowledged, %d found after SIGKILL", len(acked), len(found))
}

// TestChildAppender is the child of TestKillDuringAppends; it only runs in child mode.
func TestChildAppender(t *testing.T) {
	dir := os.Getenv("FLEETGATE_STORAGE_CHILD")
	if dir == "" {
		t.Skip("runs only as the child of TestKillDuringAppends")
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if err := s.Append(context.Background(), []*Entry{newEntry(id, strings.Repeat("p", 200), "f")}); err != nil {
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

// TestLargeConcurrentRequestsSplitIntoGroups: requests that together exceed one Badger
// transaction are committed in several groups, none failing; one request over the limit is refused.
func TestLargeConcurrentRequestsSplitIntoGroups(t *testing.T) {
	t.Run("memtable=64MiB", func(t *testing.T) { testLargeRequests(t, 64<<20, []int{4000, 11000, 11000}) })
	// A small memtable shrinks Badger's transaction limits with it (15%: 1.2 MiB).
	t.Run("memtable=8MiB", func(t *testing.T) { testLargeRequests(t, MinMemTableBytes, []int{1000, 1500, 1500, 1200}) })
	if _, err := Open(Options{Dir: t.TempDir(), MemTableBytes: 4 << 20}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("memtable under the minimum: %v", err)
	}
}

func testLargeRequests(t *testing.T, memtable int64, sizes []int) {
	// The sizes are chosen for 5 Badger entries per event (3 queue entries, the event, its
	// idempotency key at most): without the fate index, which would be a sixth.
	s := openTest(t, t.TempDir(), func(o *Options) { o.MemTableBytes = memtable; o.FateTTL = -1 })
	t.Logf("limits: %+v", s.limits)
	var wg sync.WaitGroup
	total := 0
	for r, n := range sizes {
		total += n
		wg.Add(1)
		go func() {
			defer wg.Done()
			entries := make([]*Entry, n)
			for i := range entries {
				entries[i] = newEntry(fmt.Sprintf("%d-%d", r, i), "x", "f", "g", "h")
			}
			if err := s.Append(context.Background(), entries); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if d := s.QueueDepth("g"); d != int64(total) {
		t.Fatalf("queue depth %d, want %d", d, total)
	}
	tooMany := make([]*Entry, s.limits.requestEntries/5+1)
	for i := range tooMany {
		tooMany[i] = newEntry(fmt.Sprint(i), "x", "f", "g", "h")
	}
	if err := s.Append(context.Background(), tooMany); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("append over the request limit = %v, want ErrTooLarge", err)
	}
}

func TestTargetValueRoundTrip(t *testing.T) {
	inline := append(make([]byte, 8), "event"...)
	for _, c := range []struct {
		rule         string
		version      int
		data, inline []byte
	}{{"r", 0, nil, nil}, {"", 3, []byte{}, nil}, {"rule-1", 0, []byte(`{"x":1}`), inline}, {"r", 1 << 20, nil, inline},
		{"rule-2", 7, []byte(`{"y":2}`), inline}} {
		rule, version, data, in, ok := decodeTargetVersion(encodeTarget(nil, c.rule, c.version, c.data, c.inline))
		if !ok || rule != c.rule || version != c.version || (data == nil) != (c.data == nil) || string(data) != string(c.data) || string(in) != string(c.inline) {
			t.Fatalf("round trip of %+v: %q %d %q %q %v", c, rule, version, data, in, ok)
		}
	}
	// Entries written before the version was kept decode as version 0.
	old := append([]byte{6}, "rule-1"...)
	old = append(old, flagData|flagInline, 7)
	old = append(old, `{"x":1}`...)
	old = append(old, inline...)
	if rule, version, data, in, ok := decodeTargetVersion(old); !ok || rule != "rule-1" || version != 0 || string(data) != `{"x":1}` || string(in) != string(inline) {
		t.Fatalf("entry without a version: %q %d %q %q %v", rule, version, data, in, ok)
	}
	for _, bad := range [][]byte{nil, {5, 'a'}, {1, 'r', flagData, 9}, {1, 'r', flagInline, 1, 2}, {1, 'r', 0, 'x'}, {1, 'r', flagVersion}, {1, 'r', flagVersion, 0x80}} {
		if _, _, _, ok := decodeTarget(bad); ok {
			t.Fatalf("decodeTarget(%v) accepted", bad)
		}
	}
}

func TestDropQueueOfRemovedFunction(t *testing.T) {
	s := openTest(t, t.TempDir())
	entries := []*Entry{newEntry("a", "1", "gone"), newEntry("b", "2", "gone", "kept"), newEntry("c", "3", "gone")}
	if err := s.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	_ = s.DeadLetter("gone", []DeadLetter{{Seq: entries[2].Seq, Attempts: 1, Reason: "x"}})
	q, d, err := s.DropQueue("gone")
	if err != nil || q != 2 || d != 1 {
		t.Fatalf("DropQueue = %d queued, %d dead, %v", q, d, err)
	}
	if s.QueueDepth("gone") != 0 || s.DeadLetterDepth("gone") != 0 {
		t.Fatalf("depths after drop: %d %d", s.QueueDepth("gone"), s.DeadLetterDepth("gone"))
	}
	_ = s.Ack("kept", entries[1].Seq)
	s.Sweep()
	if n := countEvents(t, s); n != 0 {
		t.Fatalf("%d events left after the drop and the last ack", n)
	}
}

// TestRetentionWithTheSmallestMemtable: with 8 MiB memtables (memory_limit: 64 MiB) one commit
// takes fewer than 10 000 deletions. The sweep deleted in batches of 10 000 and max_age all it
// found at once: each failed with ErrTooLarge at every sweep once that many were due, and the
// log grew for ever. Both now delete one commit's worth at a time.
func TestRetentionWithTheSmallestMemtable(t *testing.T) {
	s := openTest(t, t.TempDir(), func(o *Options) { o.MemTableBytes = MinMemTableBytes; o.MaxAge = time.Hour })
	n := s.limits.requestEntries + 1000
	if s.limits.requestEntries >= 10000 {
		t.Fatalf("request limit %d: the test needs one under 10 000", s.limits.requestEntries)
	}
	appendN := func(prefix string, fns ...string) {
		t.Helper()
		for i := 0; i < n; i += 1000 {
			var batch []*Entry
			for j := i; j < min(i+1000, n); j++ {
				batch = append(batch, newEntry(fmt.Sprintf("%s-%d", prefix, j), "1", fns...))
			}
			if err := s.Append(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendN("unrouted") // no function: deleted by the next sweep
	s.Sweep()
	if left := countEvents(t, s); left != 0 {
		t.Fatalf("%d of %d events no function needs left after a sweep", left, n)
	}
	appendN("old", "f") // queued for f, never delivered: max_age drops them
	s.expire(time.Now().Add(time.Second))
	if d := s.QueueDepth("f"); d != 0 {
		t.Fatalf("%d of %d queue entries left after max_age", d, n)
	}
	if v := s.m.expired.Get(); v != uint64(n) {
		t.Fatalf("expired counter = %d, want %d", v, n)
	}
}

// TestBatchesLargerThanOneCommit: a function may take batches of up to 10 000 events, and one
// commit of 8 MiB memtables holds at most 7 864 operations (a dead letter with its fate record
// is two). Acknowledging or dead-lettering such a batch failed whole with ErrTooLarge, and the
// batch was delivered again; now it is committed in several commits, each letter whole.
func TestBatchesLargerThanOneCommit(t *testing.T) {
	s := openTest(t, t.TempDir(), func(o *Options) { o.MemTableBytes = MinMemTableBytes; o.FateTTL = time.Hour })
	n := s.limits.requestEntries + 500
	if n > 10000 || 2*(n/2) <= s.limits.requestEntries {
		t.Fatalf("request limit %d: the test needs batches of at most 10 000 over it", s.limits.requestEntries)
	}
	for i := 0; i < 2*n; i += 1000 {
		var batch []*Entry
		for j := i; j < min(i+1000, 2*n); j++ {
			batch = append(batch, newEntry(fmt.Sprintf("e-%d", j), "1", "f"))
		}
		if err := s.Append(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.ReadQueue("f", 0, 2*n)
	if err != nil || len(items) != 2*n {
		t.Fatalf("queue: %d items, %v", len(items), err)
	}
	if err := s.Delivered("f", items[:n]); err != nil {
		t.Fatalf("acknowledging a batch of %d: %v", n, err)
	}
	letters := make([]DeadLetter, n)
	for i, it := range items[n:] {
		letters[i] = DeadLetter{Seq: it.Seq, Attempts: 3, Reason: "refused", Item: it}
	}
	if err := s.DeadLetter("f", letters); err != nil {
		t.Fatalf("dead-lettering a batch of %d: %v", n, err)
	}
	if q, d := s.QueueDepth("f"), s.DeadLetterDepth("f"); q != 0 || d != int64(n) {
		t.Fatalf("queue depth %d, dead letters %d; want 0 and %d", q, d, n)
	}
	for i, want := range map[int]string{0: FateDelivered, n - 1: FateDelivered, n: FateDeadLettered, 2*n - 1: FateDeadLettered} {
		f, err := s.Fate(items[i].Event.ID)
		if err != nil || len(f.Functions) != 1 || f.Functions[0].State != want {
			t.Fatalf("fate of item %d: %+v, %v; want %s", i, f, err, want)
		}
	}
}

// The watermark reads each queue and DLQ from the last watermark on (see watermark): an entry
// that moves to the DLQ and back keeps its event alive, and so does a function that appears
// after some sweeps, or after a reopen.
func TestWatermarkFollowsMovesAndNewFunctions(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	var all []*Entry
	appendTo := func(fns ...string) []*Entry {
		t.Helper()
		var es []*Entry
		for i := range 10 {
			es = append(es, newEntry(fmt.Sprintf("e%d", len(all)+i), "x", fns...))
		}
		if err := s.Append(context.Background(), es); err != nil {
			t.Fatal(err)
		}
		all = append(all, es...)
		return es
	}
	seqs := func(es []*Entry) []uint64 {
		var out []uint64
		for _, e := range es {
			out = append(out, e.Seq)
		}
		return out
	}
	wantQueue := func(fn string, n int) {
		t.Helper()
		items, err := s.ReadQueue(fn, 0, 0)
		if err != nil || len(items) != n {
			t.Fatalf("%s's queue: %d items (%v), want %d", fn, len(items), err, n)
		}
		for _, it := range items {
			if it.Event == nil || string(it.Data) != "x" {
				t.Fatalf("%s's queue: item %d without its event: %+v", fn, it.Seq, it)
			}
		}
	}
	first := appendTo("f", "g") // stand-alone events: the sweep deletes them below the watermark
	s.Sweep()
	_ = s.Ack("f", seqs(first)...)
	_ = s.Ack("g", seqs(first[:5])...)
	s.Sweep() // the watermark is first[5]
	if got := s.lastWatermark.Load(); got != first[5].Seq {
		t.Fatalf("watermark %d, want %d", got, first[5].Seq)
	}
	// g's sixth entry goes to the DLQ, the rest of g is acknowledged: the DLQ holds it.
	_ = s.DeadLetter("g", []DeadLetter{{Seq: first[5].Seq, Attempts: 3, Reason: "x"}})
	_ = s.Ack("g", seqs(first[6:])...)
	second := appendTo("f", "g")
	_ = s.Ack("f", seqs(second)...)
	_ = s.Ack("g", seqs(second)...)
	s.Sweep()
	if got := s.lastWatermark.Load(); got != first[5].Seq {
		t.Fatalf("watermark %d with a dead letter at %d", got, first[5].Seq)
	}
	// Back to the queue: still there after sweeps.
	if _, err := s.Replay("g", []uint64{first[5].Seq}); err != nil {
		t.Fatal(err)
	}
	s.Sweep()
	s.Sweep()
	wantQueue("g", 1)
	// A function that appears now, with the watermark far up: its events stay.
	_ = s.Ack("g", first[5].Seq)
	s.Sweep()
	third := appendTo("h", "k")
	s.Sweep()
	wantQueue("h", 10)
	// And after a reopen (the watermark starts again from 0; the depth counters from the log).
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, dir)
	_ = s.Ack("h", seqs(third[:3])...)
	_ = s.Ack("k", seqs(third[:7])...)
	s.Sweep()
	s.Sweep()
	wantQueue("h", 7)
	wantQueue("k", 3)
	if n := countEvents(t, s); n != 7 {
		t.Fatalf("%d stand-alone events, want the 7 h still needs", n)
	}
}
