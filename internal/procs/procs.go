// Package procs runs the gateway on one processor (GOMAXPROCS=1) while it uses well under one
// core, and on all of them as soon as it needs more (the config's procs: auto).
//
// Why: at moderate loads every message is a handful of goroutine wake-ups (its read, the
// commit, its acknowledgement), and with more than one processor each wake-up may start an idle
// one, which spins looking for work and goes back to sleep. Measured on 2 cores (BENCHMARKS.md,
// issue 17's sixth round): at 3 000 and 10 000 MQTT messages/s a gateway on one processor used
// 17–35 % less CPU for the same work. Past about one core's worth of work, one processor is the
// limit, and the controller gives the runtime all of them again within one interval.
//
// What it cannot see: senders that wait for each answer before the next request (HTTP, one
// event per request) are held back by one processor before it is busy: each request's turn
// gets longer, and fewer requests arrive. There it cost a third of the throughput while the
// process used 0.65 cores, under the threshold. Hence opt-in.
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
	// RaiseAt: on one processor, a sample above this many cores used gives the runtime Max
	// processors (default 0.8: one processor that busy starts to queue its goroutines).
	RaiseAt float64
	// LowerAt and LowerAfter: on Max processors, CPU use below LowerAt cores for LowerAfter
	// goes back to one processor (defaults 1.0 and 2 s). The same work costs more CPU on
	// several processors than on one (the wake-ups: 0.9 cores on two for 0.6 on one, routed
	// at 10k msgs/s), hence a threshold above RaiseAt.
	LowerAt    float64
	LowerAfter time.Duration
	// OnChange, if set, is called after each change after the start's, with the new count.
	OnChange func(procs int)

	cpu func() time.Duration // the process's CPU time so far (tests replace it)
	set func(int)            // runtime.GOMAXPROCS (tests replace it)
}

func (o *Options) setDefaults() {
	if o.Max == 0 {
		o.Max = runtime.GOMAXPROCS(0)
	}
	if o.Interval == 0 {
		o.Interval = 100 * time.Millisecond
	}
	if o.RaiseAt == 0 {
		o.RaiseAt = 0.8
	}
	if o.LowerAt == 0 {
		o.LowerAt = 1.0
	}
	if o.LowerAfter == 0 {
		o.LowerAfter = 2 * time.Second
	}
	if o.cpu == nil {
		o.cpu = func() time.Duration { d, _ := processCPU(); return d }
	}
	if o.set == nil {
		o.set = func(n int) { runtime.GOMAXPROCS(n) }
	}
}

// Controller adapts GOMAXPROCS to the load until Stop.
type Controller struct {
	opts     Options
	procs    int
	quietFor time.Duration // time on Max processors below LowerAt
	lastAt   time.Time
	lastCPU  time.Duration
	stop     chan struct{}
	done     sync.WaitGroup
}

// Start starts on one processor and samples the CPU use every Interval. With Max below 2, or
// where the process's CPU time cannot be read, it changes nothing and returns nil.
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
	c := &Controller{opts: opts, stop: make(chan struct{}), lastAt: now, lastCPU: opts.cpu(), procs: 1}
	opts.set(1)
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
		c.change(c.opts.Max)
	}
}

// step takes one sample: cpu is the process's CPU time so far, at now.
func (c *Controller) step(now time.Time, cpu time.Duration) {
	wall := now.Sub(c.lastAt)
	if wall <= 0 {
		return
	}
	used := float64(cpu-c.lastCPU) / float64(wall) // cores
	c.lastAt, c.lastCPU = now, cpu
	switch {
	case c.procs == 1 && used > c.opts.RaiseAt:
		c.quietFor = 0
		c.change(c.opts.Max)
	case c.procs != 1 && used < c.opts.LowerAt:
		c.quietFor += wall
		if c.quietFor >= c.opts.LowerAfter {
			c.quietFor = 0
			c.change(1)
		}
	default:
		c.quietFor = 0
	}
}

func (c *Controller) change(n int) {
	c.procs = n
	c.opts.set(n)
	if c.opts.OnChange != nil {
		c.opts.OnChange(n)
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
