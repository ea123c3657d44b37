package functions

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openStore(t testing.TB, dir string) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Dir: dir, InMemory: dir == "", Logger: quietLogger(), FateTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// appendEvents stores n events for fn, subject i%subjects, with data {"n":i,"temp":...}.
func appendEvents(t testing.TB, st *storage.Store, fn string, from, n, subjects int) []string {
	t.Helper()
	var ids []string
	entries := make([]*storage.Entry, 0, n)
	for i := from; i < from+n; i++ {
		sub := fmt.Sprintf("dev%d", i%subjects)
		e := &event.Event{
			ID: event.NewID(), Source: "mqtt://" + sub, Type: "fleetgate.mqtt.publish", Subject: sub,
			Time: time.Now(), ContentType: "application/json", Data: []byte(fmt.Sprintf(`{"n":%d,"temp":%d}`, i, i%100)),
			Protocol: event.ProtocolMQTT, Topic: "devices/" + sub + "/telemetry", Tenant: "acme",
		}
		ids = append(ids, e.ID)
		entries = append(entries, &storage.Entry{Event: e, Targets: []storage.Target{{Function: fn, Rule: "r1"}}})
	}
	if err := st.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	return ids
}

// ceEvent is the part of a received CloudEvent the tests look at.
type ceEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Subject     string          `json:"subject"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Time        time.Time       `json:"time"`
	ContentType string          `json:"datacontenttype"`
	Data        json.RawMessage `json:"data"`
	DataBase64  []byte          `json:"data_base64"`
	Topic       string          `json:"topic"`
	Tenant      string          `json:"tenant"`
	Rule        string          `json:"rule"`
}

// fnServer is a real HTTP function on loopback whose behaviour the test sets.
type fnServer struct {
	URL string

	mu       sync.Mutex
	handler  func(call int, events []ceEvent, ctx *fasthttp.RequestCtx)
	calls    int
	batches  [][]ceEvent
	ok       map[string]int // id → successful deliveries
	headers  []string
	inflight map[string]bool // subjects in a running call
	overlap  bool            // a subject was in two calls at once
}

func newFnServer(t *testing.T, h func(call int, events []ceEvent, ctx *fasthttp.RequestCtx)) *fnServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &fnServer{URL: "http://" + ln.Addr().String() + "/fn", handler: h, ok: map[string]int{}, inflight: map[string]bool{}}
	srv := &fasthttp.Server{Handler: s.serve, Logger: nopLogger{}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return s
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}

func (s *fnServer) serve(ctx *fasthttp.RequestCtx) {
	var evs []ceEvent
	if string(ctx.Request.Header.ContentType()) != ContentTypeBatch {
		ctx.SetStatusCode(415)
		return
	}
	if err := json.Unmarshal(ctx.PostBody(), &evs); err != nil {
		ctx.SetStatusCode(400)
		ctx.SetBodyString(err.Error())
		return
	}
	s.mu.Lock()
	s.calls++
	call := s.calls
	s.batches = append(s.batches, evs)
	s.headers = append(s.headers, string(ctx.Request.Header.Peek("Authorization")))
	subs := map[string]bool{}
	for _, e := range evs {
		subs[e.Subject] = true
	}
	for sub := range subs {
		if s.inflight[sub] {
			s.overlap = true
		}
		s.inflight[sub] = true
	}
	h := s.handler
	s.mu.Unlock()
	ctx.SetStatusCode(200)
	if h != nil {
		h(call, evs, ctx)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range subs {
		delete(s.inflight, sub)
	}
	if ctx.Response.StatusCode()/100 != 2 {
		return
	}
	var res Result
	_ = json.Unmarshal(ctx.Response.Body(), &res)
	failed := map[string]bool{}
	for _, id := range res.Failed {
		failed[id] = true
	}
	for _, e := range evs {
		if !failed[e.ID] {
			s.ok[e.ID]++
		}
	}
}

func (s *fnServer) delivered(ids []string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.ok[id] == 0 {
			return false
		}
	}
	return true
}

func (s *fnServer) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// startDispatcher starts a dispatcher over st with defs and stops it at cleanup.
func startDispatcher(t *testing.T, opts Options) *Dispatcher {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	if opts.LogWriter == nil {
		opts.LogWriter = io.Discard
	}
	d, err := NewDispatcher(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		d.Stop(ctx)
	})
	return d
}

func fastRetry(max int) RetryPolicy {
	return RetryPolicy{MaxAttempts: max, InitialBackoff: 2 * time.Millisecond, MaxBackoff: 10 * time.Millisecond, MaxAge: time.Hour}
}

// fastCircuit opens after failures endpoint failures in a row and probes every few milliseconds.
func fastCircuit(failures int) CircuitPolicy {
	return CircuitPolicy{Failures: failures, ProbeInitial: 2 * time.Millisecond, ProbeMax: 10 * time.Millisecond}
}

func httpDef(name, url string) Definition {
	return Definition{Name: name, Type: TypeHTTP, URL: url, Timeout: 2 * time.Second, Retry: fastRetry(5),
		Circuit: fastCircuit(5), Batch: BatchPolicy{MaxEvents: 10, MaxWait: 5 * time.Millisecond}}
}

// capturePublisher records publishes.
type capturePublisher struct {
	mu   sync.Mutex
	msgs []published
}

type published struct {
	Topic   string
	Payload []byte
	QoS     byte
}

func (p *capturePublisher) Publish(topic string, payload []byte, qos byte, retain bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, published{topic, bytes.Clone(payload), qos})
	return nil
}

func (p *capturePublisher) all() []published {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]published(nil), p.msgs...)
}
