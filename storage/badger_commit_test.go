package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/dgraph-io/badger/v4"

	"github.com/fleetgate/fleetgate/internal/testutil"
)

func openBadgerInMemory(t *testing.T) *badger.DB {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// The committer's transactions (patched Badger's NewWriteTransaction) do not wait for earlier
// commits when they start, but their first read does: an idempotency key committed by an
// earlier group must be seen, even while that group's write is still on its way.
func TestWriteTransactionReadsEarlierCommits(t *testing.T) {
	db := openBadgerInMemory(t)
	release := db.HoldWritesForTest()
	released := false
	defer func() {
		if !released {
			release()
		}
	}()
	a := db.NewTransaction(true)
	if err := a.Set([]byte("idem/k"), []byte("first")); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	a.CommitWith(func(err error) { aDone <- err }) // has its timestamp; its write is held

	opened := make(chan *badger.Txn, 1)
	go func() { opened <- db.NewWriteTransaction() }()
	var b *badger.Txn
	select {
	case b = <-opened:
	case <-time.After(10 * time.Second):
		t.Fatal("NewWriteTransaction waited for an earlier commit's write before reading anything")
	}
	defer b.Discard()
	type result struct {
		v   []byte
		err error
	}
	read := make(chan result, 1)
	go func() {
		item, err := b.Get([]byte("idem/k"))
		if err != nil {
			read <- result{err: err}
			return
		}
		v, err := item.ValueCopy(nil)
		read <- result{v, err}
	}()
	select {
	case r := <-read:
		t.Fatalf("the read returned (%q, %v) before the earlier commit was written: it must wait for it", r.v, r.err)
	case <-time.After(100 * time.Millisecond): // the read is waiting, as it should
	}
	release()
	released = true
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	if r := <-read; r.err != nil || string(r.v) != "first" {
		t.Fatalf("read (%q, %v), want the earlier commit's \"first\"", r.v, r.err)
	}
}

// CommitInline writes on the caller's goroutine while Badger's write goroutine writes other
// commits: every commit lands whole, each readable as soon as its commit returned.
func TestCommitInlineAlongsideTheWriteGoroutine(t *testing.T) {
	db := openBadgerInMemory(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				txn := db.NewTransaction(true)
				if err := txn.Set(fmt.Appendf(nil, "async/%d/%03d", w, i), []byte("a")); err != nil {
					errs <- err
					return
				}
				if err := txn.Commit(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range 600 {
		txn := db.NewWriteTransaction()
		for j := range 3 {
			if err := txn.Set(fmt.Appendf(nil, "inline/%03d/%d", i, j), []byte("b")); err != nil {
				t.Fatal(err)
			}
		}
		if err := txn.CommitInline(); err != nil {
			t.Fatal(err)
		}
		check := db.NewWriteTransaction() // reads at once what the committer wrote last
		if _, err := check.Get(fmt.Appendf(nil, "inline/%03d/2", i)); err != nil {
			t.Fatalf("commit %d not readable right after CommitInline returned: %v", i, err)
		}
		check.Discard()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := 0
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	if err != nil || n != 4*300+600*3 {
		t.Fatalf("%d keys (%v), want %d", n, err, 4*300+600*3)
	}
}

// A conflict reaches CommitInline's caller, and later transactions are not held back by it.
func TestCommitInlineConflict(t *testing.T) {
	db := openBadgerInMemory(t)
	reader := db.NewWriteTransaction()
	defer reader.Discard()
	if _, err := reader.Get([]byte("k")); !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatal(err)
	}
	writer := db.NewWriteTransaction()
	if err := writer.Set([]byte("k"), []byte("w")); err != nil {
		t.Fatal(err)
	}
	if err := writer.CommitInline(); err != nil {
		t.Fatal(err)
	}
	if err := reader.Set([]byte("k"), []byte("r")); err != nil {
		t.Fatal(err)
	}
	if err := reader.CommitInline(); !errors.Is(err, badger.ErrConflict) {
		t.Fatalf("committing over a key changed since it was read: %v, want ErrConflict", err)
	}
	after := db.NewTransaction(true) // waits for every earlier commit's write: must not hang
	defer after.Discard()
	item, err := after.Get([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := item.ValueCopy(nil); string(v) != "w" {
		t.Fatalf("k = %q, want the first commit's \"w\"", v)
	}
}

// Every commit group's write + fdatasync is timed in fleetgate_storage_log_sync_seconds.
func TestLogSyncIsMeasured(t *testing.T) {
	set := metrics.NewSet()
	s := openTest(t, filepath.Join(t.TempDir(), "log"), func(o *Options) { o.Metrics = set })
	for i := range 3 {
		if err := s.Append(context.Background(), []*Entry{newEntry(fmt.Sprintf("e%d", i), `"x"`, "f")}); err != nil {
			t.Fatal(err)
		}
	}
	count := testutil.MetricValue(t, set, "fleetgate_storage_log_sync_seconds_count")
	sum := testutil.MetricValue(t, set, "fleetgate_storage_log_sync_seconds_sum")
	if count < 1 || count > 3 || sum <= 0 {
		t.Fatalf("fleetgate_storage_log_sync_seconds: count %v, sum %v after 3 appends; want 1 to 3 syncs timed", count, sum)
	}
}

// TestCommitKeysInOneBuffer: patched Badger gives a transaction's versioned keys one buffer
// (commitEntries), not an allocation each. Transactions of keys of every length, overwritten
// by later ones, committed inline and through the write goroutine, read back as written, each
// key at its own version, in a memtable and after a flush to a table.
func TestCommitKeysInOneBuffer(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	want := map[string]string{}
	versions := map[string]uint64{}
	for round := range 6 {
		txn := db.NewWriteTransaction()
		for i := range 50 + round {
			k := strings.Repeat("k", 1+(i*7+round)%40) + "/" + strconv.Itoa(i%30)
			v := fmt.Sprintf("round %d key %d", round, i)
			if err := txn.Set([]byte(k), []byte(v)); err != nil {
				t.Fatal(err)
			}
			want[k] = v
		}
		if round%2 == 0 {
			err = txn.CommitInline()
		} else {
			err = txn.Commit()
		}
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range want {
			if strings.HasPrefix(v, fmt.Sprintf("round %d ", round)) {
				versions[k] = txn.CommittedTs()
			}
		}
	}
	check := func(where string) {
		t.Helper()
		err := db.View(func(txn *badger.Txn) error {
			for k, v := range want {
				item, err := txn.Get([]byte(k))
				if err != nil {
					return fmt.Errorf("%s: %w", k, err)
				}
				got, err := item.ValueCopy(nil)
				if err != nil {
					return err
				}
				if string(got) != v || item.Version() != versions[k] {
					return fmt.Errorf("%s: %q at version %d, want %q at %d", k, got, item.Version(), v, versions[k])
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
	}
	check("memtable")
	if err := db.FlushMemTable(); err != nil {
		t.Fatal(err)
	}
	check("table")
}

// TestSlowCommitIsReported: a commit group that takes over slowCommit in the committer (here
// Badger's memtable write held for longer than that) is counted in
// fleetgate_storage_slow_commits_total and logged with where its time went, at most once per
// slowCommitLogEvery; its events are still committed.
func TestSlowCommitIsReported(t *testing.T) {
	set := metrics.NewSet()
	var logs testutil.SyncBuffer
	s := openTest(t, filepath.Join(t.TempDir(), "log"), func(o *Options) {
		o.Metrics = set
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	metric := func(name string) float64 { return testutil.MetricValue(t, set, name) }
	// A first group, so that the log's sync histogram has a count to wait on. It may itself be
	// slow on a busy machine: the counts below are taken from here.
	if err := s.Append(context.Background(), []*Entry{newEntry("first", `"x"`, "f")}); err != nil {
		t.Fatal(err)
	}
	slowBefore := metric("fleetgate_storage_slow_commits_total")
	for i := range 2 {
		release := s.db.HoldWritesForTest()
		syncs := metric("fleetgate_storage_log_sync_seconds_count")
		done := make(chan error, 1)
		go func() {
			done <- s.Append(context.Background(), []*Entry{newEntry(fmt.Sprintf("slow%d", i), `"x"`, "f")})
		}()
		// Its record is in the log once the sync is counted: the committer is then in Badger,
		// held. Holding it longer than slowCommit makes the group slow.
		deadline := time.Now().Add(10 * time.Second)
		for metric("fleetgate_storage_log_sync_seconds_count") == syncs {
			if time.Now().After(deadline) {
				release()
				t.Fatal("the group's record was not written within 10 s")
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(slowCommit + 10*time.Millisecond)
		release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := metric("fleetgate_storage_slow_commits_total") - slowBefore; n != float64(i+1) {
			t.Fatalf("fleetgate_storage_slow_commits_total grew by %v after %d slow groups", n, i+1)
		}
	}
	out := logs.String()
	if n := strings.Count(out, "slow commit"); n != 1 {
		t.Fatalf("%d slow-commit warnings for two slow groups within %v, want 1:\n%s", n, slowCommitLogEvery, out)
	}
	for _, want := range []string{"events=1", "log_segment_turned=false", "memtable="} {
		if !strings.Contains(out, want) {
			t.Errorf("slow-commit warning without %q:\n%s", want, out)
		}
	}
	if n := metric("fleetgate_storage_events_appended_total"); n != 3 {
		t.Fatalf("%v events appended, want the first and both slow groups' events", n)
	}
}
