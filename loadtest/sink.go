package loadtest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// Sink is the HTTP function endpoint of an end-to-end run: the gateway invokes it with
// CloudEvents batches and it notes, for every tagged message of the run, when it first
// arrived and how many times it arrived again.
type Sink struct {
	run     string
	ln      net.Listener
	srv     *fasthttp.Server
	served  chan struct{}
	first   [][]atomic.Int64 // [stream][seq] unix nanos of the first arrival, 0 = not yet
	unique  atomic.Int64     // tagged messages seen at least once
	dups    atomic.Int64     // arrivals beyond the first
	foreign atomic.Int64     // tags of this run outside the expected range
	batches atomic.Int64     // requests that carried at least one tag
	bad     atomic.Int64     // requests that were not a batch of this run at all
}

// E2E is the end-to-end part of a run's result: how many acknowledged messages reached
// the function endpoint, how late, and how often more than once.
type E2E struct {
	SinkURL string `json:"sink_url"`
	// Expected is the number of acknowledged messages, each of which should arrive.
	Expected int64 `json:"expected"`
	// Received is how many acknowledged messages arrived at least once.
	Received int64 `json:"received"`
	// Lost is Expected-Received after waiting up to the run's e2e wait.
	Lost int64 `json:"lost"`
	// Duplicates counts arrivals beyond the first of any message.
	Duplicates int64 `json:"duplicates"`
	// UnackedDelivered counts messages that arrived although the sender saw no ack
	// (the ack was lost or came after the drain timeout): allowed, but worth knowing.
	UnackedDelivered int64 `json:"unacked_delivered"`
	// BeforeAck counts messages that arrived before the sender saw their ack;
	// their latency is recorded as 0.
	BeforeAck int64 `json:"before_ack"`
	Foreign   int64 `json:"foreign"`
	Batches   int64 `json:"batches"`
	// MeanBatch is the mean number of tagged events per invocation.
	MeanBatch   float64 `json:"mean_batch"`
	WaitSeconds float64 `json:"wait_seconds"`
	// Latency is from the sender seeing the ack to the function receiving the event.
	Latency Latency `json:"latency_ms"`
}

// newSink listens on addr (host:port; port 0 picks one) and serves until Close.
// streams x perStream is the tag space of the run.
func newSink(addr, run string, streams, perStream int) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sink: listen %s: %w", addr, err)
	}
	s := &Sink{run: run, ln: ln, served: make(chan struct{})}
	s.first = make([][]atomic.Int64, streams)
	for i := range s.first {
		s.first[i] = make([]atomic.Int64, perStream)
	}
	s.srv = &fasthttp.Server{
		Handler:            s.handle,
		Name:               "fleetgate-loadtest-sink",
		MaxRequestBodySize: 64 << 20,
		ReadTimeout:        30 * time.Second,
		IdleTimeout:        30 * time.Second,
	}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// URL is the address functions should POST to.
func (s *Sink) URL() string { return "http://" + s.ln.Addr().String() + "/" }

// Close stops the endpoint and waits for it to stop serving.
func (s *Sink) Close() error {
	err := s.srv.Shutdown()
	<-s.served
	return err
}

func (s *Sink) handle(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		return
	}
	now := time.Now().UnixNano()
	if n := s.ingest(ctx.PostBody(), now); n == 0 {
		s.bad.Add(1)
	} else {
		s.batches.Add(1)
	}
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/json")
	ctx.SetBodyString("{}")
}

// ingest notes every tag in a batch body received at now and returns how many it found.
// Tags are found in the raw body (data carried as JSON) and in data_base64 fields.
func (s *Sink) ingest(body []byte, now int64) int {
	n := ScanTags(body, s.run, func(stream, seq int) { s.note(stream, seq, now) })
	if bytes.Contains(body, []byte(`"data_base64"`)) {
		var evs []struct {
			DataBase64 string `json:"data_base64"`
		}
		if json.Unmarshal(body, &evs) == nil {
			for _, ev := range evs {
				if ev.DataBase64 == "" {
					continue
				}
				data, err := base64.StdEncoding.DecodeString(ev.DataBase64)
				if err != nil {
					continue
				}
				n += ScanTags(data, s.run, func(stream, seq int) { s.note(stream, seq, now) })
			}
		}
	}
	return n
}

func (s *Sink) note(stream, seq int, now int64) {
	if stream >= len(s.first) || seq >= len(s.first[stream]) {
		s.foreign.Add(1)
		return
	}
	if s.first[stream][seq].CompareAndSwap(0, now) {
		s.unique.Add(1)
		return
	}
	s.dups.Add(1)
}

// report waits until every acknowledged message (acks[stream][seq] != 0) has arrived or
// wait has passed, then compares arrivals with acknowledgements.
func (s *Sink) report(acks [][]int64, expected int64, wait time.Duration) E2E {
	start := time.Now()
	deadline := start.Add(wait)
	for s.unique.Load() < expected && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a counter; bounded by deadline
	}
	// A last look at what is there now, acked or not.
	h := newHist()
	r := E2E{SinkURL: s.URL(), Expected: expected, WaitSeconds: time.Since(start).Seconds()}
	for i, row := range s.first {
		for j := range row {
			got := row[j].Load()
			var ack int64
			if i < len(acks) && j < len(acks[i]) {
				ack = acks[i][j]
			}
			switch {
			case ack != 0 && got != 0:
				r.Received++
				d := got - ack
				if d < 0 {
					r.BeforeAck++
					d = 0
				}
				recordDur(h, time.Duration(d))
			case ack == 0 && got != 0:
				r.UnackedDelivered++
			}
		}
	}
	r.Lost = expected - r.Received
	r.Duplicates = s.dups.Load()
	r.Foreign = s.foreign.Load()
	r.Batches = s.batches.Load()
	if r.Batches > 0 {
		r.MeanBatch = float64(s.unique.Load()+r.Duplicates) / float64(r.Batches)
	}
	r.Latency = latencyOf(h)
	return r
}
