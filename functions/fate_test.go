package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// scriptFn is an in-process function: events whose data says "poison" are named as failed
// until fixed; events whose data says "hold" block until release is closed. It records the
// ids it acknowledged, in order.
type scriptFn struct {
	mu        sync.Mutex
	fixed     bool
	delivered []string
	holding   map[string]bool
	release   chan struct{}
}

func newScriptFn() *scriptFn {
	return &scriptFn{holding: map[string]bool{}, release: make(chan struct{})}
}

func (s *scriptFn) registry() *Registry {
	reg := DefaultRegistry()
	reg.Register("script", func(Definition, Env) (Invoker, error) { return InvokerFunc(s.invoke), nil })
	return reg
}

func (s *scriptFn) invoke(ctx context.Context, b *Batch) (Result, error) {
	var res Result
	for _, it := range b.Items {
		if strings.Contains(string(it.Data), "hold") {
			s.mu.Lock()
			s.holding[it.Event.ID] = true
			s.mu.Unlock()
			select {
			case <-s.release:
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range b.Items {
		if strings.Contains(string(it.Data), "poison") && !s.fixed {
			res.Failed = append(res.Failed, it.Event.ID)
			continue
		}
		s.delivered = append(s.delivered, it.Event.ID)
	}
	return res, nil
}

func (s *scriptFn) isHolding(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holding[id]
}

func (s *scriptFn) deliveredIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.delivered)
}

// appendOne stores one event of subject sub for fn, routed by rule set version 3.
func appendOne(t *testing.T, st *storage.Store, fn, sub, data string) string {
	t.Helper()
	e := &storage.Entry{
		Event: &event.Event{ID: event.NewID(), Subject: sub, Time: time.Now(), ContentType: "application/json", Data: []byte(data),
			Protocol: event.ProtocolHTTP, Topic: "devices/" + sub + "/telemetry", Tenant: "acme"},
		Targets: []storage.Target{{Function: fn, Rule: "telemetry", RuleVersion: 3}},
	}
	if err := st.Append(context.Background(), []*storage.Entry{e}); err != nil {
		t.Fatal(err)
	}
	return e.Event.ID
}

func fnState(t *testing.T, d *Dispatcher, id, fn string) FunctionFate {
	t.Helper()
	f, err := d.Fate(id)
	if err != nil {
		t.Fatalf("Fate(%s): %v", id, err)
	}
	for _, ff := range f.Functions {
		if ff.Function == fn {
			return ff
		}
	}
	t.Fatalf("Fate(%s) has no %s: %+v", id, fn, f)
	return FunctionFate{}
}

// TestReplayedDeadLetterGoesBeforeItsSendersWaitingEvents: a replayed dead letter is delivered
// before its sender's newer events that are still waiting, which are held until it is done,
// and after the one already in flight.
func TestReplayedDeadLetterGoesBeforeItsSendersWaitingEvents(t *testing.T) {
	sf := newScriptFn()
	st := openStore(t, "")
	defer st.Close()
	def := Definition{Name: "fn", Type: "script", Timeout: 30 * time.Second, Retry: fastRetry(1), Concurrency: 4,
		Batch: BatchPolicy{MaxEvents: 10, MaxWait: time.Millisecond}}
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}, Registry: sf.registry()})

	a1 := appendOne(t, st, "fn", "dev1", `{"poison":true}`)
	waitFor(t, 10*time.Second, "a1 dead-lettered", func() bool { return st.DeadLetterDepth("fn") == 1 })
	if ff := fnState(t, d, a1, "fn"); ff.State != StateDeadLettered || ff.Attempts != 1 || ff.DeadLetteredAt == nil {
		t.Fatalf("a1 = %+v", ff)
	}
	b0 := appendOne(t, st, "fn", "dev1", `{"hold":true}`)
	waitFor(t, 10*time.Second, "b0 in flight", func() bool { return sf.isHolding(b0) })
	b1 := appendOne(t, st, "fn", "dev1", `{"n":1}`)
	b2 := appendOne(t, st, "fn", "dev1", `{"n":2}`)
	other := appendOne(t, st, "fn", "dev2", `{"n":3}`) // another sender is not held
	waitFor(t, 10*time.Second, "dev2 delivered", func() bool { return slices.Contains(sf.deliveredIDs(), other) })
	if ff := fnState(t, d, b0, "fn"); ff.State != StateInFlight {
		t.Fatalf("b0 = %+v, want in_flight", ff)
	}
	if ff := fnState(t, d, b1, "fn"); ff.State != StateQueued {
		t.Fatalf("b1 = %+v, want queued", ff)
	}

	sf.mu.Lock()
	sf.fixed = true
	sf.mu.Unlock()
	if n, err := d.Replay("fn", nil); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if ff := fnState(t, d, a1, "fn"); (ff.State != StateQueued && ff.State != StateInFlight) || ff.Attempts != 1 {
		t.Fatalf("replayed a1 = %+v", ff)
	}
	close(sf.release)
	waitFor(t, 10*time.Second, "everything delivered", func() bool { return len(sf.deliveredIDs()) == 5 })
	var dev1 []string
	for _, id := range sf.deliveredIDs() {
		if id != other {
			dev1 = append(dev1, id)
		}
	}
	if want := []string{b0, a1, b1, b2}; !slices.Equal(dev1, want) {
		t.Fatalf("dev1 delivered in order %v, want %v (b0, the replayed a1, b1, b2)", dev1, want)
	}
	waitFor(t, 5*time.Second, "queue empty", func() bool { return st.QueueDepth("fn") == 0 })
	f, err := d.Fate(a1)
	if err != nil {
		t.Fatal(err)
	}
	if ff := f.Functions[0]; ff.State != StateDelivered || ff.DeliveredAt == nil || ff.Attempts != 1 || ff.DeadLetteredAt == nil {
		t.Fatalf("a1 after delivery = %+v", ff)
	}
	if f.RuleVersion != 3 || !slices.Equal(f.Rules, []string{"telemetry"}) || f.Subject != "dev1" || f.Protocol != "http" ||
		f.Topic != "devices/dev1/telemetry" || f.PayloadSize != len(`{"poison":true}`) || f.ContentType != "application/json" || f.Time == nil {
		t.Fatalf("a1 fate = %+v", f)
	}
}

func TestAdminEventFateAndPurge(t *testing.T) {
	sf := newScriptFn()
	st := openStore(t, "")
	defer st.Close()
	def := Definition{Name: "fn", Type: "script", Timeout: 30 * time.Second, Retry: fastRetry(1),
		Batch: BatchPolicy{MaxEvents: 10, MaxWait: time.Millisecond}}
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{def}, Registry: sf.registry()})
	h := d.AdminHandler()
	var ids []string
	for i := range 4 {
		ids = append(ids, appendOne(t, st, "fn", fmt.Sprintf("dev%d", i), `{"poison":true}`))
	}
	waitFor(t, 10*time.Second, "4 dead letters", func() bool { return st.DeadLetterDepth("fn") == 4 })
	var page DeadLetterPage
	adminCall(t, h, "GET", "/admin/v1/dlq/fn", "", &page)
	if len(page.DeadLetters) != 4 {
		t.Fatalf("dead letters = %+v", page)
	}
	var res PurgeResponse
	seq0, seq1 := page.DeadLetters[0].Seq, page.DeadLetters[1].Seq
	if code := adminCall(t, h, "DELETE", fmt.Sprintf("/admin/v1/dlq/fn?seqs=%d", seq0), "", &res); code != 200 || res.Purged != 1 {
		t.Fatalf("purge ?seqs: HTTP %d %+v", code, res)
	}
	if code := adminCall(t, h, "DELETE", "/admin/v1/dlq/fn", fmt.Sprintf(`{"seqs":[%d,%d]}`, seq0, seq1), &res); code != 200 || res.Purged != 1 {
		t.Fatalf("purge body: HTTP %d %+v", code, res)
	}
	if code := adminCall(t, h, "DELETE", "/admin/v1/dlq/fn?before=2000-01-01T00:00:00Z", "", &res); code != 200 || res.Purged != 0 {
		t.Fatalf("purge before 2000: HTTP %d %+v", code, res)
	}
	if st.DeadLetterDepth("fn") != 2 {
		t.Fatalf("dead letter depth = %d, want 2", st.DeadLetterDepth("fn"))
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if code := adminCall(t, h, "DELETE", "/admin/v1/dlq/fn?before="+future, "", &res); code != 200 || res.Purged != 2 {
		t.Fatalf("purge before the future: HTTP %d %+v", code, res)
	}
	if code := adminCall(t, h, "DELETE", "/admin/v1/dlq/fn?before=yesterday", "", nil); code != 400 {
		t.Fatalf("bad before: HTTP %d, want 400", code)
	}
	if code := adminCall(t, h, "DELETE", "/admin/v1/dlq/nope", "", nil); code != 404 {
		t.Fatalf("purge of an unknown function: HTTP %d, want 404", code)
	}
	var f EventFate
	if code := adminCall(t, h, "GET", "/admin/v1/events/"+ids[0], "", &f); code != 200 || len(f.Functions) != 1 || f.Functions[0].State != StatePurged {
		t.Fatalf("fate of a purged event: HTTP %d %+v", code, f)
	}
	var answer map[string]any
	code, body := adminRaw(t, h, "GET", "/admin/v1/events/01NOSUCHEVENT")
	if err := json.Unmarshal(body, &answer); code != 404 || err != nil || answer["code"] != "not_found" {
		t.Fatalf("unknown event: HTTP %d %s", code, body)
	}
}

func adminRaw(t *testing.T, h fasthttp.RequestHandler, method, uri string) (int, []byte) {
	t.Helper()
	var ctx fasthttp.RequestCtx
	ctx.Request.Header.SetMethod(method)
	ctx.Request.SetRequestURI(uri)
	h(&ctx)
	return ctx.Response.StatusCode(), append([]byte(nil), ctx.Response.Body()...)
}
