package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/internal/testutil"
	"github.com/fleetgate/fleetgate/storage"
)

func binaryEvent() *event.Event {
	return &event.Event{ID: event.NewID(), Source: "http://app", Type: "fleetgate.http.post", Subject: "app1",
		Time: time.Now(), ContentType: "application/octet-stream", Data: []byte{0, 255}, Topic: "apps/x"}
}

func TestHTTPDeliversInBatches(t *testing.T) {
	srv := newFnServer(t, nil)
	st := openStore(t, t.TempDir())
	defer st.Close()
	t.Setenv("FN_TOKEN", "Bearer s3cret")
	def := httpDef("archive", srv.URL)
	def.Headers = map[string]string{"Authorization": "${env:FN_TOKEN}"}
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	ids := appendEvents(t, st, "archive", 0, 35, 7)
	waitFor(t, 5*time.Second, "all events delivered", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("archive") == 0 })

	srv.mu.Lock()
	defer srv.mu.Unlock()
	for _, b := range srv.batches {
		if len(b) > 10 {
			t.Errorf("batch of %d events, max_events is 10", len(b))
		}
	}
	if srv.headers[0] != "Bearer s3cret" {
		t.Errorf("Authorization = %q, want the value of FN_TOKEN", srv.headers[0])
	}
	e := srv.batches[0][0]
	if e.SpecVersion != "1.0" || e.Topic != "devices/dev0/telemetry" || e.Tenant != "acme" || e.Rule != "r1" ||
		e.ContentType != "application/json" || !strings.Contains(string(e.Data), `"n":0`) || e.Time.IsZero() {
		t.Errorf("first event = %+v", e)
	}
	if st := statsOf(t, d, "archive"); st.Successes == 0 || st.Failures != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestHTTPFlakyGetsEverythingAfterRetries(t *testing.T) {
	srv := newFnServer(t, func(call int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		switch {
		case call <= 3:
			ctx.SetStatusCode(503)
		case call <= 5:
			ctx.SetStatusCode(429)
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("flaky", srv.URL)
	def.Retry = fastRetry(20)
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	ids := appendEvents(t, st, "flaky", 0, 50, 5)
	waitFor(t, 10*time.Second, "all events delivered", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("flaky") == 0 })
	if n := st.DeadLetterDepth("flaky"); n != 0 {
		t.Fatalf("%d dead letters, want 0", n)
	}
	s := statsOf(t, d, "flaky")
	if s.Retries == 0 || s.Failures < 5 {
		t.Fatalf("stats = %+v, want retries and 5 failures", s)
	}
}

func TestHTTPPartialFailureRetriesOnlyFailedIDs(t *testing.T) {
	var mu sync.Mutex
	failedOnce := map[string]bool{}
	seen := map[string]int{}
	srv := newFnServer(t, func(call int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
		mu.Lock()
		defer mu.Unlock()
		var res Result
		for i, e := range evs {
			seen[e.ID]++
			if i%3 == 0 && !failedOnce[e.ID] {
				failedOnce[e.ID] = true
				res.Failed = append(res.Failed, e.ID)
			}
		}
		b, _ := json.Marshal(res)
		ctx.SetBody(b)
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	startDispatcher(t, Options{Store: st, Definitions: []Definition{httpDef("partial", srv.URL)}})
	ids := appendEvents(t, st, "partial", 0, 30, 30)
	waitFor(t, 5*time.Second, "all delivered", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("partial") == 0 })
	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		want := 1
		if failedOnce[id] {
			want = 2
		}
		if seen[id] != want {
			t.Errorf("event %s invoked %d times, want %d (failed once: %v)", id, seen[id], want, failedOnce[id])
		}
	}
}

func TestPoisonEventIsIsolatedDeadLetteredListedAndReplayed(t *testing.T) {
	var mu sync.Mutex
	poison := ""
	fixed := false
	srv := newFnServer(t, func(_ int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range evs {
			if e.ID == poison && !fixed {
				ctx.SetStatusCode(422)
				ctx.SetBodyString(`{"error":"cannot parse reading"}`)
				return
			}
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("strict", srv.URL)
	def.Retry = fastRetry(3)
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	mu.Lock()
	ids := appendEvents(t, st, "strict", 0, 40, 40) // distinct subjects: one batch may hold them all
	poison = ids[17]
	mu.Unlock()
	var healthy []string
	for _, id := range ids {
		if id != poison {
			healthy = append(healthy, id)
		}
	}
	waitFor(t, 10*time.Second, "healthy events delivered", func() bool { return srv.delivered(healthy) })
	waitFor(t, 10*time.Second, "poison dead-lettered", func() bool { return st.DeadLetterDepth("strict") == 1 })
	waitFor(t, 5*time.Second, "healthy events acknowledged", func() bool { return st.QueueDepth("strict") == 0 })

	// List through the admin API.
	h := d.AdminHandler()
	var page DeadLetterPage
	if code := adminCall(t, h, "GET", "/admin/v1/dlq/strict?limit=10", "", &page); code != 200 {
		t.Fatalf("list: HTTP %d", code)
	}
	if len(page.DeadLetters) != 1 {
		t.Fatalf("dead letters = %+v", page)
	}
	dl := page.DeadLetters[0]
	var ev ceEvent
	if err := json.Unmarshal(dl.Event, &ev); err != nil || ev.ID != poison {
		t.Fatalf("dead letter event = %s (%v), want id %s", dl.Event, err, poison)
	}
	if dl.Attempts != 3 || !strings.Contains(dl.Reason, "422") || !strings.Contains(dl.Reason, "cannot parse reading") {
		t.Fatalf("dead letter = attempts %d reason %q", dl.Attempts, dl.Reason)
	}
	var fns []FunctionStats
	adminCall(t, h, "GET", "/admin/v1/functions", "", &fns)
	if len(fns) != 2 || fns[1].Name != "strict" || fns[1].DeadLetters != 1 || fns[1].LastError == "" {
		t.Fatalf("functions = %+v", fns)
	}

	// The function recovers; the operator replays.
	mu.Lock()
	fixed = true
	mu.Unlock()
	var rep map[string]int
	if code := adminCall(t, h, "POST", "/admin/v1/dlq/strict/replay", "", &rep); code != 200 || rep["replayed"] != 1 {
		t.Fatalf("replay: HTTP %d %v", code, rep)
	}
	waitFor(t, 5*time.Second, "replayed event delivered", func() bool { return srv.delivered([]string{poison}) })
	waitFor(t, 5*time.Second, "queues empty", func() bool {
		return st.DeadLetterDepth("strict") == 0 && st.QueueDepth("strict") == 0
	})
	if code := adminCall(t, h, "GET", "/admin/v1/dlq/nope", "", nil); code != 404 {
		t.Fatalf("unknown function: HTTP %d, want 404", code)
	}
}

func adminCall(t *testing.T, h fasthttp.RequestHandler, method, uri, body string, out any) int {
	t.Helper()
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI(uri)
	ctx.Request.SetBodyString(body)
	h(&ctx)
	if out != nil && ctx.Response.StatusCode() == 200 {
		if err := json.Unmarshal(ctx.Response.Body(), out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, uri, err, ctx.Response.Body())
		}
	}
	return ctx.Response.StatusCode()
}

func TestSlowFunctionTimesOutAndIsRetried(t *testing.T) {
	srv := newFnServer(t, func(call int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		if call == 1 {
			time.Sleep(300 * time.Millisecond) // the function is slow once: past the timeout
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("slow", srv.URL)
	def.Timeout = 100 * time.Millisecond
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	ids := appendEvents(t, st, "slow", 0, 5, 1)
	waitFor(t, 5*time.Second, "delivered after the timeout", func() bool { return srv.delivered(ids) && srv.callCount() >= 2 })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("slow") == 0 })
	if s := statsOf(t, d, "slow"); s.Failures == 0 || !strings.Contains(s.LastError, "timeout") && !strings.Contains(s.LastError, "deadline") {
		t.Fatalf("stats = %+v, want a timeout failure", s)
	}
}

func TestDeadFunctionFillsDLQWithoutBlockingOthers(t *testing.T) {
	dead := newFnServer(t, func(_ int, _ []ceEvent, ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(500) })
	alive := newFnServer(t, nil)
	st := openStore(t, t.TempDir())
	defer st.Close()
	dd := httpDef("dead", dead.URL)
	dd.Retry = fastRetry(2)
	startDispatcher(t, Options{Store: st, Definitions: []Definition{dd, httpDef("alive", alive.URL)}})
	deadIDs := appendEvents(t, st, "dead", 0, 12, 3)
	aliveIDs := appendEvents(t, st, "alive", 0, 12, 3)
	waitFor(t, 5*time.Second, "alive delivered", func() bool { return alive.delivered(aliveIDs) })
	waitFor(t, 10*time.Second, "dead letters", func() bool { return st.DeadLetterDepth("dead") == int64(len(deadIDs)) })
	letters, err := st.DeadLetters("dead", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range letters {
		if l.Attempts < 2 || !strings.Contains(l.Reason, "500") {
			t.Fatalf("dead letter %+v", l)
		}
	}
}

// Events of one subject are never in two calls at once and arrive in commit order, under
// concurrency and with failures causing retries.
func TestPerSubjectOrderUnderConcurrency(t *testing.T) {
	var mu sync.Mutex
	lastN := map[string]int{}
	var violations []string
	srv := newFnServer(t, func(call int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
		if call%4 == 0 {
			ctx.SetStatusCode(503) // every 4th call fails as a whole
			return
		}
		time.Sleep(time.Millisecond)
		mu.Lock()
		defer mu.Unlock()
		for _, e := range evs {
			var p struct{ N int }
			json.Unmarshal(e.Data, &p)
			if last, ok := lastN[e.Subject]; ok && p.N <= last {
				violations = append(violations, fmt.Sprintf("%s: %d after %d", e.Subject, p.N, last))
			}
			lastN[e.Subject] = p.N
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("ordered", srv.URL)
	def.Concurrency = 4
	def.Retry = fastRetry(50)
	startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	var ids []string
	for i := 0; i < 20; i++ {
		ids = append(ids, appendEvents(t, st, "ordered", i*20, 20, 6)...)
	}
	waitFor(t, 20*time.Second, "all delivered", func() bool { return srv.delivered(ids) })
	mu.Lock()
	defer mu.Unlock()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.overlap {
		t.Error("a subject was in two calls at once")
	}
	if len(violations) > 0 {
		t.Errorf("out of order: %v", violations[:min(5, len(violations))])
	}
}

// Restart mid-delivery with the same Badger directory: everything appended is delivered at
// least once.
func TestRestartMidDeliveryDeliversEverything(t *testing.T) {
	var mu sync.Mutex
	block := true
	srv := newFnServer(t, func(call int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		mu.Lock()
		b := block
		mu.Unlock()
		if b && call > 2 {
			ctx.SetStatusCode(503)
		}
	})
	dir := t.TempDir()
	st := openStore(t, dir)
	def := httpDef("durable", srv.URL)
	def.Retry = fastRetry(1000)
	d, err := NewDispatcher(Options{Store: st, Definitions: []Definition{def}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	d.Start()
	ids := appendEvents(t, st, "durable", 0, 100, 10)
	waitFor(t, 5*time.Second, "some calls", func() bool { return srv.callCount() > 4 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	d.Stop(ctx) // abrupt: in-flight calls are cancelled
	cancel()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	block = false
	mu.Unlock()

	st2 := openStore(t, dir)
	defer st2.Close()
	if st2.QueueDepth("durable") == 0 {
		t.Fatal("nothing left to deliver after the restart: the test did not interrupt delivery")
	}
	startDispatcher(t, Options{Store: st2, Definitions: []Definition{def}})
	waitFor(t, 10*time.Second, "everything delivered after the restart", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st2.QueueDepth("durable") == 0 })
}

// A lagging function (hot buffer overflow) catches up from storage without losing track.
func TestOverflowCatchesUpFromStorage(t *testing.T) {
	var mu sync.Mutex
	gate := make(chan struct{})
	srv := newFnServer(t, func(call int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		mu.Lock()
		g := gate
		mu.Unlock()
		<-g
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("lagging", srv.URL)
	def.Concurrency = 1
	def.Batch.MaxEvents = 100
	def.Timeout = 10 * time.Second
	startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	var ids []string
	for i := 0; i < 30; i++ { // 3000 events > 1024 held in memory
		ids = append(ids, appendEvents(t, st, "lagging", i*100, 100, 50)...)
	}
	close(gate)
	waitFor(t, 20*time.Second, "all delivered", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("lagging") == 0 })
}

func TestLogFunctionAlwaysExists(t *testing.T) {
	st := openStore(t, "")
	defer st.Close()
	var buf syncBuffer
	d := startDispatcher(t, Options{Store: st, LogWriter: &buf})
	if !d.Known("log") || d.Known("nope") {
		t.Fatal("Known: log must exist, nope must not")
	}
	e := appendEvents(t, st, "log", 0, 1, 1)
	entries := []*storage.Entry{{Event: binaryEvent(), Targets: []storage.Target{{Function: "log", Rule: "bin"}}}}
	if err := st.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "two lines", func() bool { return strings.Count(buf.String(), "\n") == 2 })
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var l1, l2 map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &l1); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal([]byte(lines[1]), &l2)
	if l1["id"] != e[0] || l1["topic"] != "devices/dev0/telemetry" || l1["rule"] != "r1" || l1["subject"] != "dev0" ||
		l1["tenant"] != "acme" || l1["source"] != "mqtt://dev0" || l1["data"].(map[string]any)["n"] != 0.0 {
		t.Errorf("line 1 = %v", l1)
	}
	if l2["data_base64"] != "AP8=" || l2["rule"] != "bin" {
		t.Errorf("line 2 = %v", l2)
	}
}

type syncBuffer = testutil.SyncBuffer

func TestRepublishAndOutputsWithReingestHopLimit(t *testing.T) {
	st := openStore(t, "")
	defer st.Close()
	pub := &capturePublisher{}
	reg := DefaultRegistry()
	reg.Register("echo", func(def Definition, env Env) (Invoker, error) {
		return InvokerFunc(func(ctx context.Context, b *Batch) (Result, error) {
			var r Result
			for _, it := range b.Items {
				r.Publish = append(r.Publish, Output{Topic: "out/" + it.Event.Subject, Payload: json.RawMessage(`{"hops":` + fmt.Sprint(it.Event.Hops) + `}`), QoS: 1})
			}
			return r, nil
		}), nil
	})
	var rmu sync.Mutex
	var reingested []uint8
	var d *Dispatcher
	d = startDispatcher(t, Options{
		Store: st, Registry: reg, Publisher: pub,
		Definitions: []Definition{
			{Name: "down", Type: TypeRepublish, Topic: "devices/${subject}/echo/${levels.2}"},
			{Name: "chain", Type: "echo", Reingest: true, MaxHops: 2, Batch: BatchPolicy{MaxWait: time.Millisecond}},
		},
		Reingest: func(ctx context.Context, evs []*event.Event) error {
			rmu.Lock()
			defer rmu.Unlock()
			entries := make([]*storage.Entry, len(evs))
			for i, e := range evs {
				reingested = append(reingested, e.Hops)
				entries[i] = &storage.Entry{Event: e, Targets: []storage.Target{{Function: "chain"}}}
			}
			return st.Append(ctx, entries)
		},
	})
	_ = d
	appendEvents(t, st, "down", 0, 3, 3)
	waitFor(t, 5*time.Second, "republished", func() bool { return len(pub.all()) >= 3 })
	for _, m := range pub.all()[:3] {
		if !strings.HasPrefix(m.Topic, "devices/dev") || !strings.HasSuffix(m.Topic, "/echo/telemetry") || m.QoS != 1 {
			t.Fatalf("republished %+v", m)
		}
	}
	appendEvents(t, st, "chain", 0, 1, 1)
	// hop 0 → output reingested with hops 1 → its output with hops 2 → next would be 3 > max_hops 2.
	waitFor(t, 5*time.Second, "chain stops at max_hops", func() bool {
		rmu.Lock()
		defer rmu.Unlock()
		return len(reingested) == 2 && st.QueueDepth("chain") == 0
	})
	waitFor(t, 5*time.Second, "three outputs published", func() bool { return len(pub.all()) == 6 })
	rmu.Lock()
	defer rmu.Unlock()
	if reingested[0] != 1 || reingested[1] != 2 {
		t.Fatalf("reingested hops = %v", reingested)
	}
}

func TestNewDispatcherRejectsBadDefinitions(t *testing.T) {
	st := openStore(t, "")
	defer st.Close()
	_, err := NewDispatcher(Options{Store: st, Definitions: []Definition{{Name: "x", Type: "nope"}}})
	if err == nil || !strings.Contains(err.Error(), `functions[0] (x).type: unknown type "nope"`) {
		t.Fatalf("err = %v", err)
	}
	_, err = NewDispatcher(Options{Store: st, Definitions: []Definition{{Name: "w", Type: TypeWASM, Module: "/nonexistent.wasm"}}})
	if err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Fatalf("err = %v, want a missing-file error", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		next := u.Unwrap()
		if next == nil {
			return err
		}
		err = next
	}
}

func statsOf(t *testing.T, d *Dispatcher, name string) FunctionStats {
	t.Helper()
	for _, s := range d.Stats() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no stats for %s", name)
	return FunctionStats{}
}
