package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/functions"
)

// outageSink is a sink that can go down (its port refuses connections) and come back on the
// same address.
type outageSink struct {
	*sink
	addr string
	mu   sync.Mutex
	srv  *http.Server
}

func startOutageSink(t *testing.T) *outageSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &outageSink{sink: &sink{ln: ln, ids: map[string]int{}}, addr: ln.Addr().String()}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve)}
	go s.srv.Serve(ln)
	t.Cleanup(func() { s.down() })
	return s
}

// down closes the listener and every connection: new connections are refused.
func (s *outageSink) down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ln.Close()
	if s.srv != nil {
		s.srv.Close()
		s.srv = nil
	}
}

// up listens again on the same address.
func (s *outageSink) up(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatalf("listening again on %s: %v", s.addr, err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve)}
	go s.srv.Serve(ln)
}

// metricOf returns the value of one series in the gateway's /metrics, or -1.
func metricOf(t *testing.T, p *proc, series string) float64 {
	t.Helper()
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if name, v, ok := strings.Cut(line, " "); ok && name == series {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestFunctionOutageRiddenOut: the HTTP function goes down (connection refused) for many times
// its retry budget; the gateway opens the function's circuit (visible in /admin/v1/functions
// and /metrics), dead-letters nothing, and delivers every event once the function is back.
func TestFunctionOutageRiddenOut(t *testing.T) {
	dir := t.TempDir()
	s := startOutageSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
functions:
  - name: sink
    type: http
    url: %s
    batch: {max_events: 50, max_wait: 5ms}
    retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 40ms}
    circuit: {failures: 3, probe_initial: 20ms, probe_max: 100ms}
rules:
  - id: all
    topic: "#"
    functions: [sink]
`, s.url()))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	app := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	s.down()

	var ids []string
	for i := range 20 {
		code, ans, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, app, "apps/app-1/x", fmt.Sprintf(`[{"i":%d},{"i":%d}]`, 2*i, 2*i+1))
		if err != nil || code != 202 {
			t.Fatalf("post: %d %v", code, err)
		}
		for _, id := range ans["ids"].([]any) {
			ids = append(ids, id.(string))
		}
	}
	sinkStats := func() functions.FunctionStats {
		req, _ := http.NewRequest(http.MethodGet, p.url("/admin/v1/functions"), nil)
		req.Header.Set("Authorization", "Bearer "+op)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var fns []functions.FunctionStats
		if err := json.NewDecoder(resp.Body).Decode(&fns); err != nil {
			t.Fatal(err)
		}
		for _, f := range fns {
			if f.Name == "sink" {
				return f
			}
		}
		t.Fatalf("no sink in /admin/v1/functions: %+v", fns)
		return functions.FunctionStats{}
	}
	waitFor(t, 30*time.Second, "the circuit open in /admin/v1/functions", func() bool {
		st := sinkStats()
		return st.State == "paused" && st.Circuit != nil && st.Circuit.State == functions.CircuitOpen &&
			st.Circuit.NextProbe != nil && strings.Contains(st.Circuit.LastError, "refused")
	})
	if v := metricOf(t, p, `fleetgate_function_circuit_open{function="sink"}`); v != 1 {
		t.Fatalf("fleetgate_function_circuit_open = %v while the function is down", v)
	}
	// Stay down for ten failed probes: far beyond 3 attempts with backoff up to 40ms.
	waitFor(t, 30*time.Second, "ten probes while down", func() bool {
		return metricOf(t, p, `fleetgate_function_circuit_transitions_total{function="sink",to="half_open"}`) >= 10
	})
	if st := sinkStats(); st.DeadLetters != 0 || st.QueueDepth != int64(len(ids)) {
		t.Fatalf("during the outage: %d dead letters, %d queued (want 0 and %d)", st.DeadLetters, st.QueueDepth, len(ids))
	}
	s.up(t)
	waitFor(t, 30*time.Second, "every event delivered after recovery", func() bool { return s.has(ids) == 0 })
	waitFor(t, 10*time.Second, "queue drained, circuit closed", func() bool {
		st := sinkStats()
		return st.QueueDepth == 0 && st.Circuit.State == functions.CircuitClosed
	})
	if st := sinkStats(); st.DeadLetters != 0 {
		t.Fatalf("%d dead letters after the outage", st.DeadLetters)
	}
}
