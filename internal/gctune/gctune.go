// Package gctune sets the garbage collector's GOGC from the rate the gateway allocates at, so
// that the heap holds about as much garbage as a few collections a second need, and no more.
//
// Why: the gateway's live heap is small (a few MiB: Badger's big buffers live outside the Go
// heap), and under GOGC=100 alone a busy gateway collected dozens of times a second. A fixed
// ballast (a block of heap that is never touched, counted as live) spaced the collections out,
// but at the price of its own size again in touched heap, whatever the load: 21 MiB of garbage
// room for a gateway that allocates 20 MB/s as for one that allocates 300. Here the room
// follows the allocation rate: at most Rate collections a second, never less room than
// GOGC=100 gives, never more than MaxHeadroom.
package gctune

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// Options tune the tuner. The zero value of a field picks its default.
type Options struct {
	// Rate is the collections per second aimed under (default 8): the room for garbage is
	// the allocation rate divided by it.
	Rate float64
	// MaxHeadroom is the most room for garbage (bytes) it gives the heap above the live heap
	// (default 32 MiB). Past it, the collector runs more often than Rate.
	MaxHeadroom int64
	// Interval is how often the allocation rate is sampled (default 100 ms).
	Interval time.Duration
	// OnChange, if set, is called after each change of GOGC, with the new value.
	OnChange func(percent int)

	read func() (allocated, live uint64) // the runtime's counters (tests replace it)
	set  func(percent int)               // debug.SetGCPercent (tests replace it)
}

func (o *Options) setDefaults() {
	if o.Rate == 0 {
		o.Rate = 8
	}
	if o.MaxHeadroom == 0 {
		o.MaxHeadroom = 32 << 20
	}
	if o.Interval == 0 {
		o.Interval = 100 * time.Millisecond
	}
	if o.read == nil {
		o.read = readRuntime
	}
	if o.set == nil {
		o.set = func(p int) { debug.SetGCPercent(p) }
	}
}

// Tuner adapts GOGC until Stop.
type Tuner struct {
	opts      Options
	percent   int
	rate      float64 // bytes allocated per second, smoothed
	lastAt    time.Time
	lastAlloc uint64
	stop      chan struct{}
	done      sync.WaitGroup
}

// minPercent is GOGC's default, the least room the tuner gives.
const minPercent = 100

// Start sets GOGC to 100 and then samples the allocation rate every Interval.
func Start(opts Options) *Tuner {
	opts.setDefaults()
	t := newTuner(opts, time.Now())
	t.done.Add(1)
	go func() {
		defer t.done.Done()
		tick := time.NewTicker(opts.Interval)
		defer tick.Stop()
		for {
			select {
			case now := <-tick.C:
				allocated, live := t.opts.read()
				t.step(now, allocated, live)
			case <-t.stop:
				return
			}
		}
	}()
	return t
}

func newTuner(opts Options, now time.Time) *Tuner {
	allocated, _ := opts.read()
	t := &Tuner{opts: opts, stop: make(chan struct{}), lastAt: now, lastAlloc: allocated, percent: minPercent}
	opts.set(minPercent)
	return t
}

// Stop ends the sampling and leaves GOGC at 100.
func (t *Tuner) Stop() {
	if t == nil {
		return
	}
	close(t.stop)
	t.done.Wait()
	if t.percent != minPercent {
		t.change(minPercent)
	}
}

// step takes one sample: allocated is the bytes allocated so far, live the live heap marked by
// the last collection, at now.
func (t *Tuner) step(now time.Time, allocated, live uint64) {
	wall := now.Sub(t.lastAt).Seconds()
	if wall <= 0 || allocated < t.lastAlloc {
		return
	}
	rate := float64(allocated-t.lastAlloc) / wall
	t.lastAt, t.lastAlloc = now, allocated
	// Up at once, down slowly: a burst gets its room within one sample, and a lull between
	// bursts does not take it away.
	if rate > t.rate {
		t.rate = rate
	} else {
		t.rate = 0.8*t.rate + 0.2*rate
	}
	if p := t.percentFor(live); p != t.percent && math.Abs(float64(p-t.percent)) >= 0.1*float64(t.percent) {
		t.change(p)
	}
}

// percentFor is the GOGC that gives a heap of live bytes room for rate/Rate bytes of garbage,
// within [100, MaxHeadroom].
func (t *Tuner) percentFor(live uint64) int {
	if live == 0 {
		return minPercent
	}
	room := min(t.rate/t.opts.Rate, float64(t.opts.MaxHeadroom))
	p := int(math.Ceil(100 * room / float64(live)))
	return max(minPercent, p)
}

func (t *Tuner) change(p int) {
	t.percent = p
	t.opts.set(p)
	if t.opts.OnChange != nil {
		t.opts.OnChange(p)
	}
}

// readRuntime reads the bytes allocated so far and the live heap (runtime/metrics).
func readRuntime() (allocated, live uint64) {
	samples := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(samples)
	if samples[0].Value.Kind() == metrics.KindUint64 {
		allocated = samples[0].Value.Uint64()
	}
	if samples[1].Value.Kind() == metrics.KindUint64 {
		live = samples[1].Value.Uint64()
	}
	return allocated, live
}
