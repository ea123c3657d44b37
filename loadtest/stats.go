package loadtest

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Histogram bounds: values are microseconds from 1 µs to 5 minutes, 3 significant digits.
const (
	histMinMicros = 1
	histMaxMicros = 5 * 60 * 1_000_000
	histSigFigs   = 3
	histShards    = 16
)

// Latency is a latency distribution in milliseconds, taken from an HDR histogram
// (3 significant digits; values above 5 minutes are clamped to 5 minutes).
type Latency struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histMinMicros, histMaxMicros, histSigFigs)
}

func recordDur(h *hdrhistogram.Histogram, d time.Duration) {
	us := d.Microseconds()
	if us < histMinMicros {
		us = histMinMicros
	}
	if us > histMaxMicros {
		us = histMaxMicros
	}
	_ = h.RecordValue(us) // in range by construction
}

func latencyOf(h *hdrhistogram.Histogram) Latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	if h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1000,
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}

// shardedHist is a latency histogram many goroutines record into; shards keep lock
// contention low without a full histogram per connection.
type shardedHist struct {
	shards [histShards]struct {
		mu sync.Mutex
		h  *hdrhistogram.Histogram
	}
}

func newShardedHist() *shardedHist {
	s := &shardedHist{}
	for i := range s.shards {
		s.shards[i].h = newHist()
	}
	return s
}

func (s *shardedHist) record(shard int, d time.Duration) {
	sh := &s.shards[shard%histShards]
	sh.mu.Lock()
	recordDur(sh.h, d)
	sh.mu.Unlock()
}

func (s *shardedHist) merged() *hdrhistogram.Histogram {
	out := newHist()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		out.Merge(sh.h)
		sh.mu.Unlock()
	}
	return out
}

// counters are the live totals a run updates and the progress line prints.
type counters struct {
	sent   atomic.Int64
	acked  atomic.Int64
	errors atomic.Int64
}

// progress prints one line to w every interval until stop is closed:
// elapsed time, the rate of acknowledgements over the last interval, and the totals.
func progress(w io.Writer, every time.Duration, label string, c *counters, start time.Time, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if w == nil || every <= 0 {
		<-stop
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last, lastAt := int64(0), start
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			acked := c.acked.Load()
			rate := float64(acked-last) / now.Sub(lastAt).Seconds()
			last, lastAt = acked, now
			fmt.Fprintf(w, "%s %6.1fs  rate=%.0f/s  sent=%d  acked=%d  errors=%d\n",
				label, now.Sub(start).Seconds(), rate, c.sent.Load(), acked, c.errors.Load())
		}
	}
}
