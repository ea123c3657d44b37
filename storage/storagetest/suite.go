// Package storagetest is the conformance suite of storage.Backend: every implementation (the
// Badger Store, cluster mode's JetStream Log) must pass it, so that ingest, rules, the broker
// and the functions behave the same on either.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// Open returns a fresh, empty backend whose queues include the functions "f" and "g"; the
// suite closes it. Reopen, when not nil, closes b and opens the same data again (a restart).
type Open func(t *testing.T) (b storage.Backend, reopen func(storage.Backend) storage.Backend)

// wait is how long the suite waits for something to arrive (a JetStream delivery is
// asynchronous; Badger's are immediate).
const wait = 20 * time.Second

// Options say where a backend may differ, as documented.
type Options struct {
	// PackRedelivery: events appended together may be stored as one message, acknowledged once
	// all of them are delivered; after a restart (or a node's death) the ones delivered before
	// come again with the others (at least once). Cluster mode's JetStream log does this.
	PackRedelivery bool
}

// Run runs the suite.
func Run(t *testing.T, open Open, opts ...Options) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	t.Run("AppendReadDeliver", func(t *testing.T) { testAppendReadDeliver(t, open) })
	t.Run("Idempotency", func(t *testing.T) { testIdempotency(t, open) })
	t.Run("OnCommit", func(t *testing.T) { testOnCommit(t, open) })
	t.Run("OnCommitSeqOrderManySenders", func(t *testing.T) { testOnCommitOrder(t, open) })
	t.Run("DeadLettersReplayPurge", func(t *testing.T) { testDeadLetters(t, open) })
	t.Run("KV", func(t *testing.T) { testKV(t, open) })
	t.Run("Restart", func(t *testing.T) { testRestart(t, open, o) })
}

func ev(subject string, i int) *event.Event {
	return &event.Event{Topic: "devices/" + subject + "/t", Subject: subject, Tenant: "t1", Protocol: "mqtt",
		ContentType: "application/json", Data: []byte(fmt.Sprintf(`{"n":%d}`, i)), Time: time.Unix(1700000000, 0).UTC()}
}

func entry(subject string, i int, fns ...string) *storage.Entry {
	e := &storage.Entry{Event: ev(subject, i)}
	for _, fn := range fns {
		e.Targets = append(e.Targets, storage.Target{Function: fn, Rule: "r-" + fn, RuleVersion: 2})
	}
	return e
}

// readAll waits until function's queue on this node holds n items after afterSeq.
func readAll(t *testing.T, b storage.Backend, fn string, n int) []storage.Item {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		items, err := b.ReadQueue(fn, 0, 0)
		if err != nil {
			t.Fatalf("ReadQueue(%s): %v", fn, err)
		}
		if len(items) >= n {
			if len(items) > n {
				t.Fatalf("ReadQueue(%s) = %d items, want %d", fn, len(items), n)
			}
			return items
		}
		if time.Now().After(deadline) {
			t.Fatalf("ReadQueue(%s): %d items after %v, want %d", fn, len(items), wait, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func payloads(items []storage.Item) []string {
	out := make([]string, len(items))
	for i, it := range items {
		out[i] = it.Event.Subject + string(it.Event.Data)
	}
	return out
}

func testAppendReadDeliver(t *testing.T, open Open) {
	b, _ := open(t)
	defer b.Close()
	ctx := context.Background()
	// One request of several events (all or nothing), then single ones.
	if err := b.Append(ctx, []*storage.Entry{entry("d1", 1, "f"), entry("d1", 2, "f", "g"), entry("d2", 3, "g")}); err != nil {
		t.Fatal(err)
	}
	if err := b.Append(ctx, []*storage.Entry{entry("d1", 4, "f")}); err != nil {
		t.Fatal(err)
	}
	f := readAll(t, b, "f", 3)
	if got, want := payloads(f), []string{`d1{"n":1}`, `d1{"n":2}`, `d1{"n":4}`}; !slices.Equal(got, want) {
		t.Fatalf("f's queue = %v, want %v (one sender's events in order)", got, want)
	}
	for i, it := range f {
		if it.Function != "f" || it.Rule != "r-f" || it.RuleVersion != 2 || it.Event.ID == "" {
			t.Fatalf("item %d = %+v", i, it)
		}
		if i > 0 && it.Seq <= f[i-1].Seq {
			t.Fatalf("Seq not ascending: %d then %d", f[i-1].Seq, it.Seq)
		}
	}
	g := readAll(t, b, "g", 2)
	if err := b.Delivered("f", f[:2]); err != nil {
		t.Fatal(err)
	}
	if left := readAll(t, b, "f", 1); left[0].Seq != f[2].Seq {
		t.Fatalf("after delivering two, f's queue = %v", payloads(left))
	}
	if err := b.Delivered("f", f[2:]); err != nil {
		t.Fatal(err)
	}
	if err := b.Delivered("g", g); err != nil {
		t.Fatal(err)
	}
	readAll(t, b, "f", 0)
	waitDepth(t, b, "f", 0)
	waitDepth(t, b, "g", 0)
}

// waitDepth waits for QueueDepth to reach want (gauges may lag a second).
func waitDepth(t *testing.T, b storage.Backend, fn string, want int64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for b.QueueDepth(fn) != want {
		if time.Now().After(deadline) {
			t.Fatalf("QueueDepth(%s) = %d, want %d", fn, b.QueueDepth(fn), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testIdempotency(t *testing.T, open Open) {
	b, _ := open(t)
	defer b.Close()
	ctx := context.Background()
	first := entry("d1", 1, "f")
	first.IdempotencyKey = "t1/d1/key-1"
	if err := b.Append(ctx, []*storage.Entry{first}); err != nil {
		t.Fatal(err)
	}
	if first.Duplicate {
		t.Fatal("first append marked duplicate")
	}
	again := entry("d1", 1, "f")
	again.IdempotencyKey = "t1/d1/key-1"
	if err := b.Append(ctx, []*storage.Entry{again}); err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Event.ID != first.Event.ID {
		t.Fatalf("repeat: duplicate=%v id=%q, want true and %q", again.Duplicate, again.Event.ID, first.Event.ID)
	}
	// A batch holding a seen key stores the others, once.
	other := entry("d1", 2, "f")
	other.IdempotencyKey = "t1/d1/key-2"
	dup := entry("d1", 1, "f")
	dup.IdempotencyKey = "t1/d1/key-1"
	if err := b.Append(ctx, []*storage.Entry{dup, other}); err != nil {
		t.Fatal(err)
	}
	if !dup.Duplicate || other.Duplicate {
		t.Fatalf("batch: duplicate flags %v %v, want true false", dup.Duplicate, other.Duplicate)
	}
	items := readAll(t, b, "f", 2)
	if got, want := payloads(items), []string{`d1{"n":1}`, `d1{"n":2}`}; !slices.Equal(got, want) {
		t.Fatalf("f's queue = %v, want %v", got, want)
	}
}

func testOnCommit(t *testing.T, open Open) {
	b, _ := open(t)
	defer b.Close()
	var mu sync.Mutex
	var got []string
	var seqs []uint64
	b.SetOnCommit(func(es []*storage.Entry) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			for _, tg := range e.Targets {
				if tg.Function == "f" {
					got = append(got, string(e.Event.Data))
					seqs = append(seqs, e.Seq)
				}
			}
		}
	})
	readAll(t, b, "f", 0) // the dispatcher reads its queue once at start
	for i := 1; i <= 5; i++ {
		if err := b.Append(context.Background(), []*storage.Entry{entry("d1", i, "f")}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("onCommit saw %d of 5 events", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`, `{"n":4}`, `{"n":5}`}
	if !slices.Equal(got, want) || !slices.IsSorted(seqs) {
		t.Fatalf("onCommit saw %v (seqs %v), want %v in ascending Seq", got, seqs, want)
	}
	b.SetOnCommit(nil)
}

// testOnCommitOrder: with many senders appending at once, the hook sees each function's Seqs
// in increasing order, and every item once. The dispatcher relies on it: an item whose Seq is
// not above the last it saw is taken as already read, and would never be delivered. The hook
// here takes a little time before recording, as a real one may: hooks called concurrently
// would record out of order.
func testOnCommitOrder(t *testing.T, open Open) {
	b, _ := open(t)
	defer b.Close()
	const senders, each = 16, 40
	var mu sync.Mutex
	var seqs []uint64
	var calls atomic.Int64
	b.SetOnCommit(func(es []*storage.Entry) {
		if calls.Add(1)%3 == 0 {
			time.Sleep(200 * time.Microsecond)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range es {
			for _, tg := range e.Targets {
				if tg.Function == "f" {
					seqs = append(seqs, e.Seq)
				}
			}
		}
	})
	defer b.SetOnCommit(nil)
	readAll(t, b, "f", 0)
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := b.Append(context.Background(), []*storage.Entry{entry(fmt.Sprintf("s%d", s), i, "f")}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for {
		mu.Lock()
		n := len(seqs)
		mu.Unlock()
		if n >= senders*each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("onCommit saw %d of %d items", n, senders*each)
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("onCommit saw Seq %d after %d (item %d of %d): a dispatcher would skip it as already read, and never deliver it",
				seqs[i], seqs[i-1], i, len(seqs))
		}
	}
}

func testDeadLetters(t *testing.T, open Open) {
	b, _ := open(t)
	defer b.Close()
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if err := b.Append(ctx, []*storage.Entry{entry("d1", i, "f")}); err != nil {
			t.Fatal(err)
		}
	}
	items := readAll(t, b, "f", 3)
	at := time.Now().UTC().Truncate(time.Millisecond)
	var letters []storage.DeadLetter
	for _, it := range items {
		letters = append(letters, storage.DeadLetter{Seq: it.Seq, Attempts: 3, Reason: "HTTP 500", At: at, Item: it})
	}
	if err := b.DeadLetter("f", letters); err != nil {
		t.Fatal(err)
	}
	readAll(t, b, "f", 0)
	dead := waitDead(t, b, "f", 3)
	for i, d := range dead {
		if d.Attempts != 3 || d.Reason != "HTTP 500" || !d.At.Equal(at) || d.Item.Event == nil || string(d.Item.Event.Data) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Fatalf("dead letter %d = %+v", i, d)
		}
	}
	if n := b.DeadLetterDepth("f"); n != 3 {
		t.Fatalf("DeadLetterDepth = %d, want 3", n)
	}
	if !slices.Contains(b.Functions(), "f") {
		t.Fatalf("Functions() = %v, want f in it", b.Functions())
	}
	// Page through them.
	page, err := b.DeadLetters("f", dead[0].Seq, 1)
	if err != nil || len(page) != 1 || page[0].Seq != dead[1].Seq {
		t.Fatalf("DeadLetters(after first, 1) = %+v, %v", page, err)
	}
	// Replay the first: it is queued again (handed back, or redelivered through the queue).
	replayed, err := b.Replay("f", []uint64{dead[0].Seq})
	if err != nil || len(replayed) != 1 {
		t.Fatalf("Replay = %+v, %v", replayed, err)
	}
	if replayed[0].Seq == 0 {
		again := readAll(t, b, "f", 1)
		if string(again[0].Event.Data) != `{"n":1}` || again[0].Rule != "r-f" {
			t.Fatalf("replayed item = %+v", again[0])
		}
	}
	waitDead(t, b, "f", 2)
	// Purge one by seq, then the rest.
	if n, err := b.PurgeDeadLetters("f", time.Time{}, []uint64{dead[1].Seq}); err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters(seq) = %d, %v", n, err)
	}
	if n, err := b.PurgeDeadLetters("f", time.Time{}, nil); err != nil || n != 1 {
		t.Fatalf("PurgeDeadLetters(all) = %d, %v", n, err)
	}
	waitDead(t, b, "f", 0)
}

func waitDead(t *testing.T, b storage.Backend, fn string, n int) []storage.DeadLetter {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		dead, err := b.DeadLetters(fn, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) == n {
			return dead
		}
		if time.Now().After(deadline) {
			t.Fatalf("DeadLetters(%s) = %d, want %d", fn, len(dead), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testKV(t *testing.T, open Open) {
	b, _ := open(t)
	defer b.Close()
	if _, found, err := b.Get("a/missing"); err != nil || found {
		t.Fatalf("Get(missing) = %v, %v", found, err)
	}
	keys := map[string][]byte{
		"mqtt/cl/dev 1":          []byte("1"),
		"mqtt/cl/dev.2":          []byte("2"),
		"mqtt/sub/dev1\x00a/#":   []byte("3"),
		"mqtt/sub/dev1\x00b/+":   []byte("4"),
		"mqtt/sub/dev10\x00c":    []byte("5"),
		"rules/v/00000000000001": []byte(`{"version":1}`),
		"odd//key/":              []byte("6"),
		"ünï/cødé=%*>":           []byte("7"),
	}
	if err := b.PutMany(keys); err != nil {
		t.Fatal(err)
	}
	for k, v := range keys {
		got, found, err := b.Get(k)
		if err != nil || !found || string(got) != string(v) {
			t.Fatalf("Get(%q) = %q, %v, %v", k, got, found, err)
		}
	}
	scan := func(prefix string) []string {
		var out []string
		if err := b.Scan(prefix, func(k string, _ []byte) error { out = append(out, k); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got, want := scan("mqtt/sub/dev1\x00"), []string{"mqtt/sub/dev1\x00a/#", "mqtt/sub/dev1\x00b/+"}; !slices.Equal(got, want) {
		t.Fatalf("Scan(sub/dev1) = %q, want %q", got, want)
	}
	if got := scan("mqtt/cl/"); len(got) != 2 || got[0] != "mqtt/cl/dev 1" {
		t.Fatalf("Scan(mqtt/cl/) = %q", got)
	}
	if got := scan(""); len(got) != len(keys) {
		t.Fatalf("Scan(\"\") = %d keys, want %d", len(got), len(keys))
	}
	if err := b.Put("mqtt/cl/dev 1", []byte("one")); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := b.Get("mqtt/cl/dev 1"); string(v) != "one" {
		t.Fatalf("overwrite: %q", v)
	}
	if err := b.Delete("mqtt/cl/dev 1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Delete("never/there"); err != nil {
		t.Fatalf("Delete(missing) = %v", err)
	}
	if got := scan("mqtt/cl/"); !slices.Equal(got, []string{"mqtt/cl/dev.2"}) {
		t.Fatalf("after delete, Scan(mqtt/cl/) = %q", got)
	}
	stop := errors.New("stop")
	n := 0
	if err := b.Scan("mqtt/", func(string, []byte) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Scan stops at the callback's error: n=%d err=%v", n, err)
	}
	// Create, where offered (rule versions use it in a cluster).
	if c, ok := b.(interface{ Create(string, []byte) error }); ok {
		if err := c.Create("rules/v/00000000000002", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if err := c.Create("rules/v/00000000000002", []byte("y")); !errors.Is(err, storage.ErrExists) {
			t.Fatalf("Create twice = %v, want ErrExists", err)
		}
	}
}

func testRestart(t *testing.T, open Open, o Options) {
	b, reopen := open(t)
	if reopen == nil {
		b.Close()
		t.Skip("this backend is opened in memory: no restart to test")
	}
	ctx := context.Background()
	if err := b.Append(ctx, []*storage.Entry{entry("d1", 1, "f"), entry("d1", 2, "f")}); err != nil {
		t.Fatal(err)
	}
	items := readAll(t, b, "f", 2)
	if err := b.Delivered("f", items[:1]); err != nil {
		t.Fatal(err)
	}
	if err := b.Put("k/v", []byte("kept")); err != nil {
		t.Fatal(err)
	}
	// A third event, appended alone: delivered before the restart, it never comes again.
	if err := b.Append(ctx, []*storage.Entry{entry("d2", 3, "f")}); err != nil {
		t.Fatal(err)
	}
	third := readAll(t, b, "f", 2)
	if err := b.Delivered("f", third[1:]); err != nil {
		t.Fatal(err)
	}
	b = reopen(b)
	defer b.Close()
	if o.PackRedelivery {
		// The first two were appended together: the delivered one may come again with the
		// other, which must come.
		left := readAll(t, b, "f", 2)
		if got := payloads(left); got[0] != `d1{"n":1}` || got[1] != `d1{"n":2}` {
			t.Fatalf("after restart f's queue = %v, want the two events appended together, in order", got)
		}
	} else {
		left := readAll(t, b, "f", 1)
		if string(left[0].Event.Data) != `{"n":2}` {
			t.Fatalf("after restart f's queue = %v, want the undelivered event only", payloads(left))
		}
	}
	if v, found, err := b.Get("k/v"); err != nil || !found || string(v) != "kept" {
		t.Fatalf("after restart Get = %q %v %v", v, found, err)
	}
}
