package ingest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// noAnswerWindow is how long a test watches for an answer that must not come while a commit is
// held. A correct gateway never answers in it, however long; an early one answers within
// microseconds of the request.
const noAnswerWindow = 300 * time.Millisecond

// TestNo202BeforeCommit holds the commit at the storage gate and proves that the 202 leaves
// only after it. Checked by breaking it on purpose: with Gateway.AcceptAsync calling done(nil)
// before store.AppendAsync's callback, this test fails ("answered while its commit was held").
func TestNo202BeforeCommit(t *testing.T) {
	gate := storage.NewGate()
	ts := startServerStore(t, func(o *storage.Options) { o.Gate = gate })
	tok := ts.token(t, "app-1", "app")
	gate.Hold()
	released := false
	defer func() {
		if !released {
			gate.Release()
		}
	}()
	answered := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, ts.url+"/v1/events/apps/app-1/click", strings.NewReader(`{"n":1}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- -1
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	waitUntil(t, "the post to wait at the commit gate", func() bool { return gate.Waiting() > 0 })
	select {
	case code := <-answered:
		t.Fatalf("answered %d while its commit was held", code)
	case <-time.After(noAnswerWindow):
	}
	if n := len(ts.queued(t)); n != 0 {
		t.Fatalf("%d events readable before the commit", n)
	}
	gate.Release()
	released = true
	select {
	case code := <-answered:
		if code != 202 {
			t.Fatalf("answer after the commit = %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer after the commit was released")
	}
	if n := len(ts.queued(t)); n != 1 {
		t.Fatalf("202 given but %d events stored", n)
	}
}

// TestRefusalTable: every protocol answers a refused Accept from the one table.
func TestRefusalTable(t *testing.T) {
	f := func(err error, status int, code, retry string, mqtt5 byte) {
		t.Helper()
		r := RefusalFor(err)
		if r.HTTPStatus != status || r.Code != code || r.RetryAfter != retry || r.MQTT5 != mqtt5 {
			t.Errorf("RefusalFor(%v) = %+v", err, r)
		}
	}
	f(classify(storage.ErrFull), 503, "unavailable", "5", 0x97)
	f(classify(storage.ErrBusy), 503, "busy", "1", 0x97)
	f(classify(storage.ErrClosed), 503, "unavailable", "5", 0x80)
	f(classify(storage.ErrTooLarge), 413, "too_large", "", 0x95)
	f(classify(storage.ErrInvalid), 400, "invalid", "", 0x99)
	f(ErrTooManyHops, 400, "too_many_hops", "", 0x83)
	f(errors.New("anything else"), 503, "unavailable", "5", 0x80)
}

// TestFullStorageAnswers503: at storage.max_bytes a post gets 503 with Retry-After and says
// why; nothing is stored.
func TestFullStorageAnswers503(t *testing.T) {
	ts := startServerStore(t, func(o *storage.Options) { o.MaxBytes = 600 })
	tok := ts.token(t, "app-1", "app")
	if a := ts.post(t, "/v1/events/apps/app-1/click", tok, "application/json", `{"n":1}`); a.status != 202 {
		t.Fatalf("first post = %d %v", a.status, a.body)
	}
	a := ts.post(t, "/v1/events/apps/app-1/click", tok, "application/json", `{"pad":"`+strings.Repeat("x", 600)+`"}`)
	if a.status != 503 || a.header.Get("Retry-After") != "5" || !strings.Contains(a.body["error"].(string), "storage.max_bytes") {
		t.Fatalf("post over max_bytes = %d %v %v", a.status, a.header, a.body)
	}
	if n := len(ts.queued(t)); n != 1 {
		t.Fatalf("%d events stored, want 1", n)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUnroutedEventsAreCounted: an event no rule chose a function for is acknowledged and
// counted by protocol in fleetgate_events_unrouted_total, not lost in silence.
func TestUnroutedEventsAreCounted(t *testing.T) {
	dir := t.TempDir()
	ms := metrics.NewSet()
	st, err := storage.Open(storage.Options{Dir: dir, SweepInterval: time.Hour, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	none := RouterFunc(func(_ *event.Event, dst []storage.Target) []storage.Target { return dst })
	g, err := New(Options{Store: st, Router: none, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	evs := []*event.Event{
		{Topic: "a", Protocol: event.ProtocolHTTP, Data: []byte(`1`)},
		{Topic: "b", Protocol: event.ProtocolMQTT, Data: []byte(`2`)},
		{Topic: "c", Protocol: event.ProtocolMQTT, Data: []byte(`3`)},
	}
	if err := g.Accept(context.Background(), evs, AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	ms.WritePrometheus(&b)
	for _, want := range []string{`fleetgate_events_unrouted_total{protocol="http"} 1`, `fleetgate_events_unrouted_total{protocol="mqtt"} 2`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
