package procs

import (
	"runtime"
	"testing"
	"time"
)

// fakeProcs drives a controller with a clock and a CPU time of its own: one step per call.
type fakeProcs struct {
	t       *testing.T
	c       *Controller
	now     time.Time
	cpu     time.Duration
	set     []int
	changes []int
	reasons []string
	work    uint64
}

func newFake(t *testing.T) *fakeProcs { return newFakeWith(t, false) }

// newFakeWith makes a fake that counts work (for the probe) if withWork.
func newFakeWith(t *testing.T, withWork bool) *fakeProcs {
	f := &fakeProcs{t: t, now: time.Unix(1000, 0)}
	opts := Options{Max: 4, OnChange: func(n int, reason string) {
		f.changes = append(f.changes, n)
		f.reasons = append(f.reasons, reason)
	}}
	if withWork {
		opts.Work = func() uint64 { return f.work }
	}
	opts.cpu = func() time.Duration { return f.cpu }
	opts.set = func(n int) { f.set = append(f.set, n) }
	opts.setDefaults()
	f.c = newController(opts, f.now)
	return f
}

// run spends cores of CPU for d, in steps of the controller's interval.
func (f *fakeProcs) run(cores float64, d time.Duration) { f.load(cores, cores, d) }

// load is work that costs on1 cores on one processor and onMax on all of them (the wake-ups of
// several processors cost CPU of their own), for d.
func (f *fakeProcs) load(on1, onMax float64, d time.Duration) { f.serve(on1, onMax, 0, 0, d) }

// serve is load that also does work: rate1 units a second on one processor, rateMax on all.
// Senders that set their own pace do as much work either way; senders that wait for each
// answer do more on all processors.
func (f *fakeProcs) serve(on1, onMax, rate1, rateMax float64, d time.Duration) {
	iv := f.c.opts.Interval
	for left := d; left > 0; left -= iv {
		cores, rate := onMax, rateMax
		if f.c.procs == 1 {
			cores, rate = on1, rate1
		}
		f.now = f.now.Add(iv)
		f.cpu += time.Duration(cores * float64(iv))
		f.work += uint64(rate * iv.Seconds())
		f.c.step(f.now, f.cpu)
	}
}

func (f *fakeProcs) want(procs int, what string) {
	f.t.Helper()
	if f.c.procs != procs || f.set[len(f.set)-1] != procs {
		f.t.Fatalf("%s: %d processors (GOMAXPROCS set to %v), want %d", what, f.c.procs, f.set, procs)
	}
}

func TestProcsFollowTheLoad(t *testing.T) {
	f := newFake(t)
	f.want(4, "at the start")
	f.run(0.02, 5*time.Second)
	f.want(4, "idle: nothing to save")
	f.run(1.5, 5*time.Second)
	f.want(4, "busy")
	// Work that costs 0.6 cores on one processor and 0.9 on all: one, after LowerAfter.
	f.load(0.6, 0.9, f.c.opts.LowerAfter-f.c.opts.Interval)
	f.want(4, "a moderate load for less than LowerAfter")
	f.load(0.6, 0.9, f.c.opts.Interval)
	f.want(1, "a moderate load for LowerAfter")
	f.load(0.6, 0.9, 10*time.Second)
	f.want(1, "a moderate load (no Work: no probe)")
	f.run(0.97, f.c.opts.Interval)
	f.want(4, "one interval with one processor nearly full")
	// Dips shorter than LowerAfter do not bring it down.
	for range 5 {
		f.run(0.6, f.c.opts.LowerAfter-f.c.opts.Interval)
		f.run(2.0, f.c.opts.Interval)
	}
	f.want(4, "short dips between busy spells")
	f.load(0.6, 0.9, 3*time.Second)
	f.want(1, "a moderate load again")
	// Idle on one processor: all of them after LowerAfter, for the next burst.
	f.run(0.02, f.c.opts.LowerAfter-f.c.opts.Interval)
	f.want(1, "idle for less than LowerAfter")
	f.run(0.02, f.c.opts.Interval)
	f.want(4, "idle for LowerAfter")
	want := []string{"moderate load", "busy", "moderate load", "idle"}
	if len(f.reasons) != len(want) {
		t.Fatalf("changes %v %v, want %v", f.changes, f.reasons, want)
	}
	for i := range want {
		if f.reasons[i] != want[i] {
			t.Fatalf("changes %v %v, want %v", f.changes, f.reasons, want)
		}
	}
}

// Senders that set their own pace (devices publishing at their rate): the probe finds that
// all processors do no more work, and the gateway stays on one, trying again every
// RecheckAfter or as soon as the rate moves.
func TestProbeKeepsOneForSendersAtTheirOwnPace(t *testing.T) {
	f := newFakeWith(t, true)
	// 10 000 events/s, 0.6 cores on one processor and 0.9 on all: after LowerAfter on all of
	// them, one; probed at once, no gain, one.
	f.serve(0.6, 0.9, 10000, 10000, f.c.opts.LowerAfter+time.Second)
	f.want(1, "a moderate load at its own pace")
	f.wantReasons("moderate load", "probe", "probe: the senders set the pace")
	f.serve(0.6, 0.9, 10000, 10000, f.c.opts.RecheckAfter-2*time.Second)
	f.wantReasons("moderate load", "probe", "probe: the senders set the pace")
	f.serve(0.6, 0.9, 10000, 10000, 3*time.Second)
	f.want(1, "after a second probe")
	f.wantReasons("moderate load", "probe", "probe: the senders set the pace", "probe", "probe: the senders set the pace")
	// The rate moves by more than ProbeDrift: it tries again at once.
	f.serve(0.75, 1.1, 14000, 14000, time.Second)
	f.want(1, "a faster pace, tried")
	if len(f.changes) != 7 {
		t.Fatalf("changes %v %v, want a third probe when the rate moved", f.changes, f.reasons)
	}
	// A light load is not probed.
	f.serve(0.15, 0.2, 1000, 1000, 30*time.Second)
	f.want(1, "0.15 cores")
	if len(f.changes) != 7 {
		t.Fatalf("a light load was probed: %v %v", f.changes, f.reasons)
	}
}

// Senders that wait for each answer (HTTP, one event per request) do more work on all
// processors while one is not yet busy: the probe keeps all of them while that work rate
// holds, and tries one again when it falls or after RecheckAfter.
func TestProbeKeepsMaxWhileSendersWait(t *testing.T) {
	f := newFakeWith(t, true)
	f.serve(0.6, 0.9, 9000, 13000, f.c.opts.LowerAfter+time.Second)
	f.want(4, "senders held back by one processor")
	f.wantReasons("moderate load", "probe")
	f.serve(0.6, 0.9, 9000, 13000, f.c.opts.RecheckAfter-2*time.Second)
	f.want(4, "0.9 cores, under LowerAt, while the senders keep their rate")
	f.wantReasons("moderate load", "probe")
	f.serve(0.6, 0.9, 9000, 13000, 3*time.Second)
	f.want(4, "after RecheckAfter: one processor tried, all kept")
	f.wantReasons("moderate load", "probe", "recheck", "probe")
	// The senders stop: one after LowerAfter, then all of them again when idle.
	f.serve(0.02, 0.03, 0, 0, f.c.opts.LowerAfter+f.c.opts.Interval)
	f.want(1, "the senders stopped")
	f.wantReasons("moderate load", "probe", "recheck", "probe", "fewer requests")
	f.serve(0.02, 0.03, 0, 0, f.c.opts.LowerAfter)
	f.want(4, "idle")
	// A small gain (under ProbeGain) is noise: one processor.
	f.serve(0.6, 0.9, 10000, 10800, f.c.opts.LowerAfter+time.Second)
	f.want(1, "8 % more work on all processors")
	// Busy on one processor: all of them at once, whatever the probe.
	f.serve(0.97, 1.4, 20000, 20000, f.c.opts.Interval)
	f.want(4, "one processor nearly full")
}

// A load at the edge of one processor's capacity (busy on one over RaiseOver, under LowerAt
// on all): all processors stay while the work rate holds, for BusyHold, instead of going back
// and forth. A burst of other work at the same rate does not hold them.
func TestBusyRateHoldsAllProcessors(t *testing.T) {
	f := newFakeWith(t, true)
	f.serve(0.6, 0.9, 10000, 10000, f.c.opts.LowerAfter+time.Second)
	f.want(1, "a moderate load")
	f.wantReasons("moderate load", "probe", "probe: the senders set the pace")
	// A sample of 0.9 cores (a flush, a collection) is not busy; one of 0.97 is, but a burst
	// holds nothing: one again after LowerAfter.
	f.serve(0.6, 0.9, 10000, 10000, f.c.opts.RaiseOver)
	f.serve(0.9, 0.9, 10000, 10000, f.c.opts.Interval)
	f.want(1, "one sample at 0.9 cores")
	f.serve(0.97, 0.9, 10000, 10000, f.c.opts.Interval)
	f.want(4, "one sample at 0.97 cores")
	f.serve(0.6, 0.9, 10000, 10000, f.c.opts.LowerAfter)
	f.want(1, "LowerAfter after the burst")
	f.wantReasons("moderate load", "probe", "probe: the senders set the pace", "busy", "moderate load")
	// 20 000/s: 0.85 cores on one processor, 0.95 on all. Probed (the rate moved), then busy
	// after RaiseOver.
	f.reasons, f.changes = nil, nil
	f.serve(0.85, 0.95, 20000, 20000, f.c.opts.Interval*6)
	f.wantReasons("probe", "probe: the senders set the pace")
	f.serve(0.85, 0.95, 20000, 20000, f.c.opts.RaiseOver+f.c.opts.Interval)
	f.want(4, "0.85 cores over RaiseOver")
	f.wantReasons("probe", "probe: the senders set the pace", "busy")
	f.serve(0.85, 0.95, 20000, 20000, f.c.opts.BusyHold-2*time.Second)
	f.want(4, "the same load, under LowerAt on all processors, within BusyHold")
	f.wantReasons("probe", "probe: the senders set the pace", "busy")
	// After BusyHold, one processor is tried again (and found busy again).
	f.serve(0.85, 0.95, 20000, 20000, 2*time.Second+f.c.opts.LowerAfter+f.c.opts.RaiseOver+10*f.c.opts.Interval)
	f.want(4, "after BusyHold")
	f.wantReasons("probe", "probe: the senders set the pace", "busy", "moderate load", "probe", "probe: the senders set the pace", "busy")
	// A lighter load lets go of it.
	f.serve(0.6, 0.9, 12000, 12000, f.c.opts.LowerAfter+f.c.opts.Interval)
	f.want(1, "a lighter load")
}

func (f *fakeProcs) wantReasons(want ...string) {
	f.t.Helper()
	ok := len(f.reasons) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = f.reasons[i] == want[i]
	}
	if !ok {
		f.t.Fatalf("changes %v %v, want %q", f.changes, f.reasons, want)
	}
}

// A real controller changes the runtime's GOMAXPROCS and gives all processors back on Stop.
func TestStartAndStop(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("one CPU: the controller has nothing to do (Start returns nil, tested below)")
	}
	was := runtime.GOMAXPROCS(0)
	c := Start(Options{Max: was, Interval: time.Hour}) // no sample: the test changes it
	if c == nil {
		t.Fatal("Start returned nil with more than one CPU")
	}
	if got := runtime.GOMAXPROCS(0); got != was {
		t.Errorf("GOMAXPROCS %d after Start, want %d", got, was)
	}
	c.change(1, one, "test")
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS %d after a change to one, want 1", got)
	}
	c.Stop()
	if got := runtime.GOMAXPROCS(0); got != was {
		t.Fatalf("GOMAXPROCS %d after Stop, want %d", got, was)
	}
	if Start(Options{Max: 1}) != nil {
		t.Fatal("Start with Max 1 returned a controller")
	}
	(*Controller)(nil).Stop() // what serve calls when there is none
}
