package functions

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/testutil"
)

// The breaker's decisions, with the time passed in.
func TestCircuitTransitions(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c := newCircuit(CircuitPolicy{Failures: 3, ProbeInitial: time.Second, ProbeMax: 4 * time.Second}, t0)
	step := func(h health, probe bool, retryAfter time.Duration, now time.Time, want string) {
		t.Helper()
		if got := c.record(h, probe, retryAfter, "boom", now); got != want {
			t.Fatalf("record(%v, probe=%v) at %v moved to %q, want %q (state %s)", h, probe, now.Sub(t0), got, want, c.state)
		}
	}
	step(healthDown, false, 0, at(0), "")
	step(healthDown, false, 0, at(0), "")
	step(healthUp, false, 0, at(0), "") // a success in between: the count starts again
	step(healthDown, false, 0, at(0), "")
	step(healthDown, false, 0, at(0), "")
	if !c.allows(at(0)) {
		t.Fatal("closed circuit refuses batches")
	}
	step(healthDown, false, 0, at(0), CircuitOpen)
	if c.allows(at(time.Hour)) || c.probeDue(at(999*time.Millisecond)) || !c.probeDue(at(time.Second)) {
		t.Fatalf("open circuit: allows %v, probe due early %v, due on time %v", c.allows(at(time.Hour)), c.probeDue(at(999*time.Millisecond)), c.probeDue(at(time.Second)))
	}
	if d := c.until(at(250 * time.Millisecond)); d != 750*time.Millisecond {
		t.Fatalf("until = %v, want 750ms", d)
	}
	// Probes that fail double the interval up to probe_max.
	for i, want := range []time.Duration{2 * time.Second, 4 * time.Second, 4 * time.Second} {
		now := at(time.Duration(10*(i+1)) * time.Second)
		c.probing(now)
		if c.state != CircuitHalfOpen || c.probeDue(now) {
			t.Fatalf("probing: state %s", c.state)
		}
		step(healthDown, true, 0, now, CircuitOpen)
		if got := c.nextProbe.Sub(now); got != want {
			t.Fatalf("probe %d failed: next probe in %v, want %v", i, got, want)
		}
	}
	// A batch that was in flight when the circuit opened and fails changes nothing.
	step(healthDown, false, 0, at(time.Minute), "")
	// Retry-After is the least wait before the next probe.
	c.probing(at(time.Minute))
	step(healthDown, true, 20*time.Second, at(time.Minute), CircuitOpen)
	if got := c.nextProbe.Sub(at(time.Minute)); got != 20*time.Second {
		t.Fatalf("next probe in %v, want the Retry-After of 20s", got)
	}
	c.probing(at(2 * time.Minute))
	step(healthUp, true, 0, at(2*time.Minute), CircuitClosed)
	if !c.allows(at(2*time.Minute)) || c.failures != 0 {
		t.Fatalf("closed again: allows %v failures %d", c.allows(at(2*time.Minute)), c.failures)
	}
	// Retry-After holds back a closed circuit too.
	step(healthDown, false, 3*time.Second, at(3*time.Minute), "")
	if c.allows(at(3*time.Minute+2*time.Second)) || !c.allows(at(3*time.Minute+3*time.Second)) {
		t.Fatal("Retry-After not honoured by a closed circuit")
	}
	// failures < 0: never opens.
	n := newCircuit(CircuitPolicy{Failures: -1, ProbeInitial: time.Second, ProbeMax: time.Second}, t0)
	for range 100 {
		if n.record(healthDown, false, 0, "x", t0) != "" {
			t.Fatal("a circuit with failures < 0 opened")
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	f := func(v string, want time.Duration) {
		t.Helper()
		if got := parseRetryAfter([]byte(v), now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", v, got, want)
		}
	}
	f("", 0)
	f("0", 0)
	f("-3", 0)
	f("7", 7*time.Second)
	f(" 120 ", 2*time.Minute)
	f("99999999", maxRetryAfter)
	f("soon", 0)
	f(now.Add(90*time.Second).Format(http.TimeFormat), 90*time.Second)
	f(now.Add(-time.Minute).Format(http.TimeFormat), 0)
	f(now.Add(30*time.Second).Format(time.RFC850), 30*time.Second)
	f(now.Add(45*time.Second).Format(time.ANSIC), 45*time.Second)
}

// The function's endpoint is down (503) for many times its old retry budget: no event is dead-
// lettered, the circuit shows open while it is down, and everything arrives after recovery.
func TestOutageLongerThanRetryBudgetDeadLettersNothing(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var downCalls atomic.Int64
	srv := newFnServer(t, func(_ int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
		if down.Load() {
			downCalls.Add(1)
			ctx.SetStatusCode(503)
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	set := metrics.NewSet()
	def := httpDef("flaky", srv.URL)
	def.Retry = fastRetry(3) // the old budget: 3 attempts a few milliseconds apart
	def.Circuit = fastCircuit(3)
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}, Metrics: set})
	ids := appendEvents(t, st, "flaky", 0, 40, 8)

	h := d.AdminHandler()
	waitFor(t, 10*time.Second, "the circuit open in /admin/v1/functions", func() bool {
		var fns []FunctionStats
		adminCall(t, h, "GET", "/admin/v1/functions", "", &fns)
		for _, s := range fns {
			if s.Name == "flaky" && s.Circuit != nil && s.Circuit.State == CircuitOpen {
				return s.State == "paused" && s.Circuit.NextProbe != nil && strings.Contains(s.Circuit.LastError, "503")
			}
		}
		return false
	})
	if v := testutil.MetricValue(t, set, `fleetgate_function_circuit_open{function="flaky"}`); v != 1 {
		t.Fatalf("fleetgate_function_circuit_open = %v while down", v)
	}
	// Keep it down for ten times the calls the old retry budget allowed per event.
	waitFor(t, 20*time.Second, "probes while down", func() bool { return downCalls.Load() >= 10*3 })
	if n := st.DeadLetterDepth("flaky"); n != 0 {
		t.Fatalf("%d dead letters during the outage", n)
	}
	down.Store(false)
	waitFor(t, 10*time.Second, "every event delivered after recovery", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("flaky") == 0 })
	if n := st.DeadLetterDepth("flaky"); n != 0 {
		t.Fatalf("%d dead letters after the outage", n)
	}
	s := statsOf(t, d, "flaky")
	if s.Circuit.State != CircuitClosed || s.State == "paused" {
		t.Fatalf("after recovery: %+v %+v", s, s.Circuit)
	}
	if v := testutil.MetricValue(t, set, `fleetgate_function_circuit_open{function="flaky"}`); v != 0 {
		t.Fatalf("fleetgate_function_circuit_open = %v after recovery", v)
	}
	if v := testutil.MetricValue(t, set, `fleetgate_function_circuit_transitions_total{function="flaky",to="open"}`); v < 1 {
		t.Fatalf("no transition to open counted")
	}
	if v := testutil.MetricValue(t, set, `fleetgate_function_circuit_transitions_total{function="flaky",to="closed"}`); v < 1 {
		t.Fatalf("no transition to closed counted")
	}
}

// 10 events, one poison, max_events 16, max_attempts 3: only the poison is dead-lettered, with
// its 3 attempts, all made alone; every other event is delivered.
func TestBisectionDeadLettersOnlyThePoison(t *testing.T) {
	f := func(t *testing.T, status int) {
		var mu sync.Mutex
		poison := ""
		alone := 0
		srv := newFnServer(t, func(_ int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
			mu.Lock()
			defer mu.Unlock()
			for _, e := range evs {
				if e.ID == poison {
					if len(evs) == 1 {
						alone++
					}
					ctx.SetStatusCode(status)
					ctx.SetBodyString("cannot handle " + e.ID)
					return
				}
			}
		})
		st := openStore(t, t.TempDir())
		defer st.Close()
		def := httpDef("strict", srv.URL)
		def.Retry = fastRetry(3)
		def.Batch = BatchPolicy{MaxEvents: 16, MaxWait: 20 * time.Millisecond}
		startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
		mu.Lock()
		ids := appendEvents(t, st, "strict", 0, 10, 10) // one commit, ten subjects: one batch
		poison = ids[0]
		mu.Unlock()
		waitFor(t, 10*time.Second, "the innocent events delivered", func() bool { return srv.delivered(ids[1:]) })
		waitFor(t, 10*time.Second, "the poison dead-lettered", func() bool { return st.DeadLetterDepth("strict") == 1 })
		waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("strict") == 0 })
		letters, err := st.DeadLetters("strict", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(letters) != 1 || letters[0].Item.Event.ID != poison || letters[0].Attempts != 3 || !strings.Contains(letters[0].Reason, strconv.Itoa(status)) {
			t.Fatalf("dead letters = %+v, want only the poison %s with 3 attempts", letters, poison)
		}
		mu.Lock()
		defer mu.Unlock()
		if alone != 3 {
			t.Fatalf("the poison was tried alone %d times, want 3", alone)
		}
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if len(srv.batches[0]) != 10 {
			t.Fatalf("first batch held %d events, want all 10", len(srv.batches[0]))
		}
	}
	t.Run("500", func(t *testing.T) { f(t, 500) })
	t.Run("422", func(t *testing.T) { f(t, 422) })
}

// A poison event that makes the function answer 500 when nothing else is queued opens the
// circuit; it is still dead-lettered within max_attempts (its probes are attempts of it alone).
func TestLonePoisonIsDeadLetteredWhileTheCircuitIsOpen(t *testing.T) {
	srv := newFnServer(t, func(_ int, _ []ceEvent, ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(500) })
	st := openStore(t, t.TempDir())
	defer st.Close()
	set := metrics.NewSet()
	def := httpDef("crashy", srv.URL)
	def.Retry = fastRetry(4)
	def.Circuit = fastCircuit(2)
	startDispatcher(t, Options{Store: st, Definitions: []Definition{def}, Metrics: set})
	appendEvents(t, st, "crashy", 0, 1, 1)
	waitFor(t, 10*time.Second, "dead-lettered", func() bool { return st.DeadLetterDepth("crashy") == 1 })
	letters, _ := st.DeadLetters("crashy", 0, 10)
	if len(letters) != 1 || letters[0].Attempts != 4 {
		t.Fatalf("dead letters = %+v, want one with 4 attempts", letters)
	}
	if srv.callCount() != 4 {
		t.Fatalf("%d calls, want 4", srv.callCount())
	}
	if v := testutil.MetricValue(t, set, `fleetgate_function_circuit_transitions_total{function="crashy",to="open"}`); v < 1 {
		t.Fatal("the circuit never opened")
	}
}

// Retry-After (503) is the least wait before the next attempt.
func TestRetryAfterIsHonoured(t *testing.T) {
	var mu sync.Mutex
	var answered, second time.Time
	srv := newFnServer(t, func(call int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		mu.Lock()
		defer mu.Unlock()
		switch call {
		case 1:
			ctx.SetStatusCode(503)
			ctx.Response.Header.Set("Retry-After", "1")
			answered = time.Now()
		case 2:
			second = time.Now()
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("polite", srv.URL) // backoff alone would retry within 10ms
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	ids := appendEvents(t, st, "polite", 0, 3, 1)
	waitFor(t, 2*time.Second, "the Retry-After shown", func() bool {
		c := statsOf(t, d, "polite").Circuit
		return c != nil && c.RetryAfter != nil
	})
	waitFor(t, 10*time.Second, "delivered", func() bool { return srv.delivered(ids) })
	mu.Lock()
	defer mu.Unlock()
	if gap := second.Sub(answered); gap < time.Second {
		t.Fatalf("retried %v after a Retry-After of 1s", gap)
	}
}

// emitRegistry has a type "emit" that outputs one publish per event.
func emitRegistry() *Registry {
	reg := DefaultRegistry()
	reg.Register("emit", func(Definition, Env) (Invoker, error) {
		return InvokerFunc(func(_ context.Context, b *Batch) (Result, error) {
			var r Result
			for _, it := range b.Items {
				r.Publish = append(r.Publish, Output{Topic: "out/" + it.Event.ID, Payload: json.RawMessage(`{"ok":true}`), QoS: 1})
			}
			return r, nil
		}), nil
	})
	return reg
}

// flakyPublisher refuses the first fails publishes, then records them.
type flakyPublisher struct {
	capturePublisher
	fails atomic.Int64
	tries atomic.Int64
}

func (p *flakyPublisher) Publish(topic string, payload []byte, qos byte, retain bool) error {
	p.tries.Add(1)
	if p.fails.Add(-1) >= 0 {
		return errors.New("downlink queue full")
	}
	return p.capturePublisher.Publish(topic, payload, qos, retain)
}

// A publish output that fails is retried with backoff and delivered; one that keeps failing is
// dropped after max_attempts tries, counted, and logged as an error with the event id.
func TestOutputPublishIsRetried(t *testing.T) {
	t.Run("delivered after failures", func(t *testing.T) {
		st := openStore(t, "")
		defer st.Close()
		pub := &flakyPublisher{}
		pub.fails.Store(2)
		set := metrics.NewSet()
		def := Definition{Name: "emitter", Type: "emit", Retry: fastRetry(5), Batch: BatchPolicy{MaxWait: time.Millisecond}}
		startDispatcher(t, Options{Store: st, Registry: emitRegistry(), Publisher: pub, Metrics: set, Definitions: []Definition{def}})
		ids := appendEvents(t, st, "emitter", 0, 1, 1)
		waitFor(t, 5*time.Second, "output published", func() bool { return len(pub.all()) == 1 })
		waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("emitter") == 0 })
		if m := pub.all()[0]; m.Topic != "out/"+ids[0] {
			t.Fatalf("published %+v", m)
		}
		if n := pub.tries.Load(); n != 3 {
			t.Fatalf("%d publish tries, want 3", n)
		}
		if v := testutil.MetricValue(t, set, `fleetgate_function_outputs_total{function="emitter",result="dropped"}`); v != 0 {
			t.Fatalf("%v outputs dropped", v)
		}
		if v := testutil.MetricValue(t, set, `fleetgate_function_output_retries_total{function="emitter"}`); v != 2 {
			t.Fatalf("%v output retries, want 2", v)
		}
	})
	t.Run("dropped after max_attempts", func(t *testing.T) {
		st := openStore(t, "")
		defer st.Close()
		pub := &flakyPublisher{}
		pub.fails.Store(1 << 30)
		set := metrics.NewSet()
		var logs syncBuffer
		def := Definition{Name: "emitter", Type: "emit", Retry: fastRetry(3), Batch: BatchPolicy{MaxWait: time.Millisecond}}
		startDispatcher(t, Options{Store: st, Registry: emitRegistry(), Publisher: pub, Metrics: set, Definitions: []Definition{def},
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		ids := appendEvents(t, st, "emitter", 0, 1, 1)
		waitFor(t, 5*time.Second, "the event acknowledged", func() bool { return st.QueueDepth("emitter") == 0 })
		if n := pub.tries.Load(); n != 3 {
			t.Fatalf("%d publish tries, want 3", n)
		}
		if v := testutil.MetricValue(t, set, `fleetgate_function_outputs_total{function="emitter",result="dropped"}`); v != 1 {
			t.Fatalf("%v outputs dropped, want 1", v)
		}
		if l := logs.String(); !strings.Contains(l, "level=ERROR") || !strings.Contains(l, ids[0]) || !strings.Contains(l, "downlink queue full") {
			t.Fatalf("no error logged with the event id:\n%s", l)
		}
		if n := st.DeadLetterDepth("emitter"); n != 0 {
			t.Fatalf("%d dead letters", n)
		}
	})
}

// redrive_on_recovery: dead letters are replayed when the circuit closes.
func TestRedriveOnRecovery(t *testing.T) {
	var mu sync.Mutex
	phase := "reject" // reject: 422 for every event; down: 503; up: accept
	srv := newFnServer(t, func(_ int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		mu.Lock()
		defer mu.Unlock()
		switch phase {
		case "reject":
			ctx.SetStatusCode(422)
		case "down":
			ctx.SetStatusCode(503)
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("redrive", srv.URL)
	def.Retry = fastRetry(1)
	def.Circuit = fastCircuit(2)
	def.RedriveOnRecovery = true
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	rejected := appendEvents(t, st, "redrive", 0, 3, 3)
	waitFor(t, 5*time.Second, "dead letters", func() bool { return st.DeadLetterDepth("redrive") == 3 })
	mu.Lock()
	phase = "down"
	mu.Unlock()
	later := appendEvents(t, st, "redrive", 3, 3, 3)
	waitFor(t, 5*time.Second, "the circuit open", func() bool { return statsOf(t, d, "redrive").Circuit.State != CircuitClosed })
	mu.Lock()
	phase = "up"
	mu.Unlock()
	waitFor(t, 10*time.Second, "everything delivered, dead letters included", func() bool {
		return srv.delivered(later) && srv.delivered(rejected)
	})
	waitFor(t, 5*time.Second, "queues empty", func() bool {
		return st.QueueDepth("redrive") == 0 && st.DeadLetterDepth("redrive") == 0
	})
}

// Events of one subject keep their commit order and are never in two calls at once across an
// outage: the circuit opens, probes one event at a time, and closes.
func TestPerSubjectOrderAcrossAnOutage(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	var downCalls atomic.Int64
	var mu sync.Mutex
	lastN := map[string]int{}
	var violations []string
	srv := newFnServer(t, func(call int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
		if down.Load() || call%5 == 0 {
			downCalls.Add(1)
			ctx.SetStatusCode(503)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range evs {
			var p struct{ N int }
			json.Unmarshal(e.Data, &p)
			if last, ok := lastN[e.Subject]; ok && p.N <= last {
				violations = append(violations, e.Subject+": "+strconv.Itoa(p.N)+" after "+strconv.Itoa(last))
			}
			lastN[e.Subject] = p.N
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("ordered", srv.URL)
	def.Retry = fastRetry(3)
	def.Circuit = fastCircuit(2)
	startDispatcher(t, Options{Store: st, Definitions: []Definition{def}})
	var ids []string
	for i := 0; i < 10; i++ {
		ids = append(ids, appendEvents(t, st, "ordered", i*20, 20, 6)...)
	}
	waitFor(t, 10*time.Second, "probes while down", func() bool { return downCalls.Load() >= 20 })
	down.Store(false)
	waitFor(t, 20*time.Second, "all delivered", func() bool { return srv.delivered(ids) })
	if n := st.DeadLetterDepth("ordered"); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
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

// Many events of one subject while the endpoint answers 500 to everything: batches are
// bisected until the oldest event is alone, the circuit opens, and it keeps probing (one event
// at a time, the wait doubling up to probe_max) for as long as the endpoint fails. Once it
// answers 200 again the next probe closes the circuit and every event is delivered, none
// dead-lettered. (TestDiskFullEndToEnd's function in miniature.)
func TestCircuitKeepsProbingOneSubject(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	var probes atomic.Int64 // calls of one event while failing
	srv := newFnServer(t, func(_ int, evs []ceEvent, ctx *fasthttp.RequestCtx) {
		if failing.Load() {
			if len(evs) == 1 {
				probes.Add(1)
			}
			ctx.SetStatusCode(500)
			ctx.SetBodyString("failing on purpose")
		}
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	set := metrics.NewSet()
	def := httpDef("onesubject", srv.URL)
	def.Batch = BatchPolicy{MaxEvents: 50, MaxWait: 5 * time.Millisecond}
	def.Retry = RetryPolicy{MaxAttempts: 1000, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxAge: time.Hour}
	def.Circuit = CircuitPolicy{Failures: 5, ProbeInitial: 50 * time.Millisecond, ProbeMax: 200 * time.Millisecond}
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}, Metrics: set})
	var ids []string
	for i := 0; i < 20; i++ { // they keep arriving while it fails, all from one subject
		ids = append(ids, appendEvents(t, st, "onesubject", i*17, 17, 1)...)
	}
	halfOpen := func() float64 {
		return testutil.MetricValue(t, set, `fleetgate_function_circuit_transitions_total{function="onesubject",to="half_open"}`)
	}
	waitFor(t, 10*time.Second, "the circuit open", func() bool { return statsOf(t, d, "onesubject").Circuit.State != CircuitClosed })
	// Probes go on while it fails (at 50, 100, 200, 200, 200ms...), and events keep arriving.
	waitFor(t, 10*time.Second, "3 probes while the endpoint fails", func() bool { return halfOpen() >= 3 })
	ids = append(ids, appendEvents(t, st, "onesubject", 340, 20, 1)...)
	waitFor(t, 10*time.Second, "6 probes while the endpoint fails", func() bool { return halfOpen() >= 6 })
	waitFor(t, 5*time.Second, "the probes answered 500", func() bool { return probes.Load() >= 6 })
	if n := st.DeadLetterDepth("onesubject"); n != 0 {
		t.Fatalf("%d dead letters during the outage", n)
	}
	failing.Store(false)
	waitFor(t, 10*time.Second, "every event delivered after recovery", func() bool { return srv.delivered(ids) })
	waitFor(t, 5*time.Second, "queue drained", func() bool { return st.QueueDepth("onesubject") == 0 })
	if c := statsOf(t, d, "onesubject").Circuit; c.State != CircuitClosed {
		t.Fatalf("circuit %s after recovery", c.State)
	}
	if n := st.DeadLetterDepth("onesubject"); n != 0 {
		t.Fatalf("%d dead letters", n)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.overlap {
		t.Error("the subject was in two calls at once")
	}
}
