package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptSink is an HTTP function on loopback that names events as failed while failing is
// set, holds a batch holding an event with "hold" in its data until release is closed, and
// records the ids it accepted, in order.
type scriptSink struct {
	ln      net.Listener
	mu      sync.Mutex
	failing bool
	held    map[string]bool
	got     []string
	release chan struct{}
}

func startScriptSink(t *testing.T) *scriptSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptSink{ln: ln, held: map[string]bool{}, release: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(s.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() {
		s.mu.Lock()
		select {
		case <-s.release:
		default:
			close(s.release)
		}
		s.mu.Unlock()
		srv.Close()
	})
	return s
}

func (s *scriptSink) url() string { return "http://" + s.ln.Addr().String() + "/" }

func (s *scriptSink) serve(w http.ResponseWriter, r *http.Request) {
	var batch []struct {
		ID   string          `json:"id"`
		Data json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	for _, ev := range batch {
		if strings.Contains(string(ev.Data), "hold") {
			s.mu.Lock()
			s.held[ev.ID] = true
			s.mu.Unlock()
			select {
			case <-s.release:
			case <-time.After(60 * time.Second):
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var failed []string
	for _, ev := range batch {
		if s.failing {
			failed = append(failed, ev.ID)
		} else {
			s.got = append(s.got, ev.ID)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"failed": failed})
}

func (s *scriptSink) setFailing(on bool) {
	s.mu.Lock()
	s.failing = on
	s.mu.Unlock()
}

func (s *scriptSink) isHeld(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[id]
}

func (s *scriptSink) accepted() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// fateJSON is `fleetgate events get -o json`'s answer, as the test reads it.
type fateJSON struct {
	ID          string   `json:"id"`
	Topic       string   `json:"topic"`
	Subject     string   `json:"subject"`
	Protocol    string   `json:"protocol"`
	PayloadSize int      `json:"payload_size"`
	ContentType string   `json:"content_type"`
	Time        string   `json:"time"`
	RuleVersion int      `json:"rule_version"`
	Rules       []string `json:"rules"`
	Functions   []struct {
		Function       string `json:"function"`
		Rule           string `json:"rule"`
		State          string `json:"state"`
		DeliveredAt    string `json:"delivered_at"`
		Attempts       int    `json:"attempts"`
		LastError      string `json:"last_error"`
		DeadLetteredAt string `json:"dead_lettered_at"`
	} `json:"functions"`
}

// TestEventFateDLQPurgeAndReplayOrder drives one event through every state with `fleetgate
// events get` (queued while the function fails, dead-lettered with its attempts, replayed,
// delivered), shows that a replayed dead letter goes before its sender's newer events still
// waiting, and purges dead letters with `fleetgate dlq purge`.
func TestEventFateDLQPurgeAndReplayOrder(t *testing.T) {
	dir := t.TempDir()
	s := startScriptSink(t)
	s.setFailing(true)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
storage: {fate_ttl: 1h}
functions:
  - name: sink
    type: http
    url: %s
    timeout: 60s
    batch: {max_events: 10, max_wait: 5ms}
    retry: {max_attempts: 3, initial_backoff: 1s, max_backoff: 2s}
rules:
  - {id: all, topic: "#", functions: [sink]}
`, s.url()))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	app := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	post := func(body string) string {
		t.Helper()
		code, ans, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, app, "apps/app-1/x", body)
		if err != nil || code != 202 {
			t.Fatalf("post: %d %v %v", code, ans, err)
		}
		return ans["ids"].([]any)[0].(string)
	}
	get := func(id string) (fateJSON, string) {
		t.Helper()
		code, out, errOut := runCLI(t, p, op, "events", "get", id, "-o", "json")
		var f fateJSON
		if code != 0 || json.Unmarshal([]byte(out), &f) != nil || len(f.Functions) != 1 {
			t.Fatalf("events get %s = %d %s %s", id, code, out, errOut)
		}
		return f, f.Functions[0].State
	}
	waitState := func(id string, states ...string) fateJSON {
		t.Helper()
		var f fateJSON
		waitFor(t, 30*time.Second, id+" in state "+strings.Join(states, " or "), func() bool {
			var st string
			f, st = get(id)
			return slices.Contains(states, st)
		})
		return f
	}

	// Queued (or in flight) while the function fails.
	e1 := post(`{"n":1}`)
	f := waitState(e1, "queued", "in_flight")
	if f.ID != e1 || f.Topic != "apps/app-1/x" || f.Subject != "app-1" || f.Protocol != "http" || f.PayloadSize != len(`{"n":1}`) ||
		f.ContentType != "application/json" || f.Time == "" || f.RuleVersion != 1 || !slices.Equal(f.Rules, []string{"all"}) || f.Functions[0].Rule != "all" {
		t.Fatalf("fate of a queued event = %+v", f)
	}
	// Dead-lettered after its attempts, with the last error.
	f = waitState(e1, "dead_lettered")
	if fn := f.Functions[0]; fn.Attempts != 3 || fn.LastError == "" || fn.DeadLetteredAt == "" {
		t.Fatalf("fate of a dead letter = %+v", fn)
	}
	if code, out, _ := runCLI(t, p, op, "events", "get", e1); code != 0 || !strings.Contains(out, "dead_lettered") || !strings.Contains(out, "after 3 attempts") {
		t.Fatalf("events get (text) = %d %s", code, out)
	}

	// Replay order: e2 is in flight (held by the function), e3 waits behind it; the replayed
	// e1 (older) goes before e3.
	s.setFailing(false)
	e2 := post(`{"n":2,"hold":true}`)
	waitFor(t, 30*time.Second, "e2 held by the function", func() bool { return s.isHeld(e2) })
	e3 := post(`{"n":3}`)
	if _, st := get(e2); st != "in_flight" {
		t.Fatalf("e2 state = %s, want in_flight", st)
	}
	if _, st := get(e3); st != "queued" {
		t.Fatalf("e3 state = %s, want queued", st)
	}
	code, out, errOut := runCLI(t, p, op, "dlq", "replay", "--function", "sink")
	if code != 0 || !strings.Contains(out, "replayed 1 dead letters") || !strings.Contains(out, "before its sender's newer events still waiting") {
		t.Fatalf("dlq replay = %d %s %s", code, out, errOut)
	}
	if _, st := get(e1); st != "queued" {
		t.Fatalf("replayed e1 state = %s, want queued", st)
	}
	close(s.release)
	waitFor(t, 30*time.Second, "e1, e2, e3 accepted", func() bool { return len(s.accepted()) == 3 })
	if got, want := s.accepted(), []string{e2, e1, e3}; !slices.Equal(got, want) {
		t.Fatalf("the function accepted %v, want %v (in flight e2, replayed e1, then e3)", got, want)
	}
	// Delivered, with its earlier dead-lettering still shown.
	f = waitState(e1, "delivered")
	if fn := f.Functions[0]; fn.DeliveredAt == "" || fn.Attempts != 3 || fn.DeadLetteredAt == "" {
		t.Fatalf("fate of the replayed, delivered event = %+v", fn)
	}

	// Purge: without --yes it only shows; with it, the dead letter is gone for good.
	s.setFailing(true)
	e4 := post(`{"n":4}`)
	waitState(e4, "dead_lettered")
	code, out, errOut = runCLI(t, p, op, "dlq", "purge", "--function", "sink")
	if code != 0 || !strings.Contains(out, "would purge 1 dead letters") || !strings.Contains(out, e4) {
		t.Fatalf("dlq purge (dry run) = %d %s %s", code, out, errOut)
	}
	if _, st := get(e4); st != "dead_lettered" {
		t.Fatalf("a dry run purged: e4 state = %s", st)
	}
	if code, out, errOut := runCLI(t, p, op, "dlq", "purge", "--function", "sink", "--before", "1h", "--yes"); code != 0 || !strings.Contains(out, "purged 0 dead letters") {
		t.Fatalf("dlq purge --before 1h = %d %s %s", code, out, errOut)
	}
	if code, out, errOut := runCLI(t, p, op, "dlq", "purge", "--function", "sink", "--yes"); code != 0 || !strings.Contains(out, "purged 1 dead letters of sink") {
		t.Fatalf("dlq purge --yes = %d %s %s", code, out, errOut)
	}
	if _, st := get(e4); st != "purged" {
		t.Fatalf("e4 state after purge = %s, want purged", st)
	}
	var page []json.RawMessage
	if code, out, _ := runCLI(t, p, op, "dlq", "list", "--function", "sink", "-o", "json"); code != 0 || json.Unmarshal([]byte(out), &page) != nil || len(page) != 0 {
		t.Fatalf("dead letters left after purge: %s", out)
	}
	// An unknown id: 404.
	if code, _, errOut := runCLI(t, p, op, "events", "get", "01NOSUCHEVENT0000000000000"); code != 3 || !strings.Contains(errOut, "404") {
		t.Fatalf("events get of an unknown id = %d %s", code, errOut)
	}
}
