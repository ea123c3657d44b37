// Package procs runs the gateway on one processor (GOMAXPROCS=1) while that saves CPU and
// holds no sender back, and on all of them otherwise (the config's procs: auto, opt-in).
//
// Why: at moderate loads every message is a handful of goroutine wake-ups (its read, the
// commit, its acknowledgement), and with more than one processor each wake-up may start an idle
// one, which spins looking for work and goes back to sleep. Measured on 2 cores (BENCHMARKS.md,
// issue 17's sixth and eighth rounds): at 3 000 and 10 000 MQTT messages/s a gateway on one
// processor used 15–30 % less CPU for the same work.
//
// The controller samples the process's CPU use every Interval:
//   - On all processors, a moderate load (LowerFrom to LowerAt cores) for LowerAfter moves it
//     to one. Idle or busy, it stays: idle, there is nothing to save, and a burst after a quiet
//     spell gets every processor at once.
//   - On one, CPU use above RaiseAt over RaiseOver, or one sample above BurstAt, gives it all
//     of them at once, and so does an idle spell (under IdleAt for LowerAfter).
//   - CPU use alone cannot tell whether one processor holds the senders back before it is
//     busy: senders that wait for each answer before the next request (HTTP, one event per
//     request) get a longer turn per request on one processor and send less, while the
//     process uses 0.65 cores. So on one processor from ProbeAt, the controller tries: it
//     counts the work done (events taken in, from Options.Work) on one processor, then on all
//     of them, and keeps all of them if they do more (the senders were waiting), one if not
//     (the senders set the pace). It tries again when the work rate moves or after
//     RecheckAfter.
//
// What it does not see is latency: one processor spends much of its time handed to a thread
// blocked in a system call (the log's fdatasync, a socket write), so on 2 cores it used about
// 0.6 of a core routing 10 000, 15 000 and 22 000 MQTT messages/s alike, while the
// acknowledgement → invocation p99 went from about 6 to 13, 14 and 18 ms. Hence opt-in.
package procs

import (
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Options tune the controller. The zero value of a field picks its default.
type Options struct {
	// Max is the processors the gateway gets when it is busy: runtime.GOMAXPROCS(0) at Start
	// (the machine's or the container's CPUs) by default.
	Max int
	// Interval is how often the process's CPU use is sampled (default 100 ms).
	Interval time.Duration
	// RaiseAt and BurstAt: on one processor, CPU use above RaiseAt cores over the last
	// RaiseOver (all of it on one processor), or one sample above BurstAt, gives the runtime
	// Max processors (defaults 0.8, 1 s and 0.95): one processor that busy queues its
	// goroutines. A sample alone is not enough below BurstAt: a memtable's flush or a
	// collection makes a few samples of 0.7–0.9 at 10 000 MQTT messages/s, where one
	// processor uses 0.55–0.65 on average.
	RaiseAt   float64
	RaiseOver time.Duration
	BurstAt   float64
	// IdleAt: on one processor, CPU use under this many cores for LowerAfter gives the runtime
	// Max processors again (default 0.1), so that the next burst has them from its start.
	IdleAt float64
	// LowerFrom, LowerAt and LowerAfter: on Max processors, CPU use from LowerFrom to under
	// LowerAt cores for LowerAfter goes to one processor (defaults 0.4, 1.0 and 2 s). The
	// same work costs more CPU on several processors than on one (the wake-ups: 0.9 cores on
	// two for 0.6 on one, routed at 10k msgs/s), hence LowerAt above RaiseAt.
	LowerFrom  float64
	LowerAt    float64
	LowerAfter time.Duration

	// Work, if set, counts the work done so far (events taken in, requests, connections): the
	// probe compares its rate on one processor and on Max. Without it there is no probe, and
	// one processor is kept up to RaiseAt.
	Work func() uint64
	// ProbeAt: on one processor, from this many cores used (default 0.25), the controller
	// tries Max processors for ProbeSamples samples (default 2), after as many on one (each
	// time after the first sample, which straddles the change).
	ProbeAt      float64
	ProbeSamples int
	// ProbeGain: Max processors are kept when they do this much more work than one did in the
	// better of its samples (default 0.15: 15 %). Work that moves less than that is the
	// senders' pace.
	ProbeGain float64
	// ProbeDrift and RecheckAfter: an outcome holds while the work rate stays within
	// ProbeDrift times the rate it was found at, both ways (default 1.25), and for at most
	// RecheckAfter (default 10 s).
	ProbeDrift   float64
	RecheckAfter time.Duration
	// BusyHold: after one processor was busy at a work rate, all of them are kept while the
	// rate stays above that rate ÷ ProbeDrift, for at most BusyHold (default 60 s): a load at
	// the edge of one processor's capacity does not go back and forth (each time on one
	// processor, its queues grow for a sample).
	BusyHold time.Duration

	// OnChange, if set, is called after each change, with the new count and why.
	OnChange func(procs int, reason string)

	cpu func() time.Duration // the process's CPU time so far (tests replace it)
	set func(int)            // runtime.GOMAXPROCS (tests replace it)
}

func (o *Options) setDefaults() {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.RaiseAt, 0.8)
	def(&o.BurstAt, 0.95)
	def(&o.IdleAt, 0.1)
	def(&o.LowerFrom, 0.4)
	def(&o.LowerAt, 1.0)
	def(&o.ProbeAt, 0.25)
	def(&o.ProbeGain, 0.15)
	def(&o.ProbeDrift, 1.25)
	if o.Max == 0 {
		o.Max = runtime.GOMAXPROCS(0)
	}
	if o.Interval == 0 {
		o.Interval = 100 * time.Millisecond
	}
	if o.LowerAfter == 0 {
		o.LowerAfter = 2 * time.Second
	}
	if o.RaiseOver == 0 {
		o.RaiseOver = time.Second
	}
	if o.ProbeSamples == 0 {
		o.ProbeSamples = 2
	}
	if o.RecheckAfter == 0 {
		o.RecheckAfter = 10 * time.Second
	}
	if o.BusyHold == 0 {
		o.BusyHold = time.Minute
	}
	if o.cpu == nil {
		o.cpu = func() time.Duration { d, _ := processCPU(); return d }
	}
	if o.set == nil {
		o.set = func(n int) { runtime.GOMAXPROCS(n) }
	}
}

// why the controller is on the processors it is on
const (
	one     = iota // one processor
	all            // Max processors: idle, or busy, or a moderate load not yet LowerAfter long
	probing        // Max processors, tried against one
	waiting        // Max processors: the probe found senders waiting; kept while their rate holds
)

// Controller adapts GOMAXPROCS to the load until Stop.
type Controller struct {
	opts     Options
	procs    int
	why      int           // one, all, probing or waiting
	spell    time.Duration // how long the condition for the next change has held
	lastAt   time.Time
	lastCPU  time.Duration
	lastWork uint64

	// The last ProbeSamples samples since the last change (the first one, which straddles
	// it, is left out): work and wall time, a ring.
	samples int // since the last change, the first one included
	ring    []sample
	used    []float64 // CPU use of the last RaiseOver's samples since the last change, a ring

	oneRate   float64   // probing: the work rate on one processor before it
	foundRate float64   // the last probe's work rate, on the processors it chose
	foundAt   time.Time // when (zero: no outcome holds)
	busyRate  float64   // the work rate at which one processor was last busy
	busyAt    time.Time // when

	stop chan struct{}
	done sync.WaitGroup
}

type sample struct {
	work float64
	wall time.Duration
}

// Start samples the CPU use every Interval, from Max processors. With Max below 2, or where
// the process's CPU time cannot be read, it changes nothing and returns nil.
func Start(opts Options) *Controller {
	opts.setDefaults()
	if _, ok := processCPU(); opts.Max < 2 || !ok {
		return nil
	}
	c := newController(opts, time.Now())
	c.done.Add(1)
	go func() {
		defer c.done.Done()
		t := time.NewTicker(opts.Interval)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				c.step(now, c.opts.cpu())
			case <-c.stop:
				return
			}
		}
	}()
	return c
}

func newController(opts Options, now time.Time) *Controller {
	c := &Controller{opts: opts, stop: make(chan struct{}), lastAt: now, lastCPU: opts.cpu(),
		procs: opts.Max, why: all, ring: make([]sample, opts.ProbeSamples),
		used: make([]float64, max(1, int(opts.RaiseOver/opts.Interval)))}
	if opts.Work != nil {
		c.lastWork = opts.Work()
	}
	opts.set(opts.Max)
	return c
}

// Stop ends the sampling and gives the runtime Max processors again.
func (c *Controller) Stop() {
	if c == nil {
		return
	}
	close(c.stop)
	c.done.Wait()
	if c.procs != c.opts.Max {
		c.change(c.opts.Max, all, "stop")
	}
}

// step takes one sample: cpu is the process's CPU time so far, at now.
func (c *Controller) step(now time.Time, cpu time.Duration) {
	wall := now.Sub(c.lastAt)
	if wall <= 0 {
		return
	}
	used := float64(cpu-c.lastCPU) / float64(wall) // cores
	var work float64
	if c.opts.Work != nil {
		w := c.opts.Work()
		work = float64(w - c.lastWork)
		c.lastWork = w
	}
	c.lastAt, c.lastCPU = now, cpu
	rate := work / wall.Seconds()
	if c.samples++; c.samples > 1 {
		c.ring[(c.samples-2)%len(c.ring)] = sample{work, wall}
		c.used[(c.samples-2)%len(c.used)] = used
	}
	full := c.samples > len(c.ring)
	switch c.why {
	case one:
		switch {
		case used > c.opts.BurstAt || c.meanUsed() > c.opts.RaiseAt:
			// At a work rate that kept one processor busy for a while (not a burst of
			// other work: a flush, a collection), all of them stay while it holds.
			if c.meanUsed() > c.opts.RaiseAt {
				c.busyRate, c.busyAt = rate, now
			}
			c.change(c.opts.Max, all, "busy")
		case used < c.opts.IdleAt:
			if c.lasts(true, wall) {
				c.change(c.opts.Max, all, "idle")
			}
		case c.opts.Work != nil && used >= c.opts.ProbeAt && full && rate > 0 && !c.holds(now, c.ringRate()):
			// Against the best sample on one processor: neither a load that is still
			// growing nor a slow sample must look like a gain.
			c.oneRate = c.topRate()
			c.change(c.opts.Max, probing, "probe")
		default:
			c.spell = 0
		}
	case probing:
		if !full {
			return
		}
		if r := c.ringRate(); r > c.oneRate*(1+c.opts.ProbeGain) {
			c.foundRate, c.foundAt = r, now
			c.why, c.spell = waiting, 0
			return
		}
		c.foundRate, c.foundAt = c.oneRate, now
		c.change(1, one, "probe: the senders set the pace")
	case waiting:
		// Kept while the senders keep the rate the probe found; a slower rate for LowerAfter
		// (they may no longer wait), or RecheckAfter, and it tries one processor again.
		switch {
		case c.lasts(rate < c.foundRate/c.opts.ProbeDrift, wall):
			c.foundAt = time.Time{}
			c.change(1, one, "fewer requests")
		case now.Sub(c.foundAt) >= c.opts.RecheckAfter:
			c.foundAt = time.Time{}
			c.change(1, one, "recheck")
		}
	default: // all
		heavy := c.busyRate > 0 && rate > c.busyRate/c.opts.ProbeDrift && now.Sub(c.busyAt) < c.opts.BusyHold
		if c.lasts(used >= c.opts.LowerFrom && used < c.opts.LowerAt && !heavy, wall) {
			c.change(1, one, "moderate load")
		}
	}
}

// lasts adds wall to the spell while cond holds (and ends it if not), and says whether it has
// lasted LowerAfter.
func (c *Controller) lasts(cond bool, wall time.Duration) bool {
	if !cond {
		c.spell = 0
		return false
	}
	c.spell += wall
	return c.spell >= c.opts.LowerAfter
}

// meanUsed is the mean CPU use over the last RaiseOver since the last change, or 0 while
// less than that has been sampled.
func (c *Controller) meanUsed() float64 {
	if c.samples-1 < len(c.used) {
		return 0
	}
	var sum float64
	for _, u := range c.used {
		sum += u
	}
	return sum / float64(len(c.used))
}

// filled is the part of the ring sampled since the last change.
func (c *Controller) filled() []sample {
	return c.ring[:min(len(c.ring), max(c.samples-1, 0))]
}

// ringRate is the work rate over the ring's samples.
func (c *Controller) ringRate() float64 {
	var w float64
	var d time.Duration
	for _, s := range c.filled() {
		w += s.work
		d += s.wall
	}
	if d <= 0 {
		return 0
	}
	return w / d.Seconds()
}

// topRate is the highest work rate of the ring's samples.
func (c *Controller) topRate() float64 {
	var top float64
	for _, s := range c.filled() {
		top = max(top, s.work/s.wall.Seconds())
	}
	return top
}

// holds says whether the last probe's outcome (one processor) still holds at this work rate.
func (c *Controller) holds(now time.Time, rate float64) bool {
	return !c.foundAt.IsZero() && now.Sub(c.foundAt) < c.opts.RecheckAfter &&
		rate <= c.foundRate*c.opts.ProbeDrift && rate >= c.foundRate/c.opts.ProbeDrift
}

func (c *Controller) change(n, why int, reason string) {
	c.procs, c.why, c.spell, c.samples = n, why, 0, 0
	c.opts.set(n)
	if c.opts.OnChange != nil {
		c.opts.OnChange(n, reason)
	}
}

// processCPU is the user and system CPU time the process has used.
func processCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
