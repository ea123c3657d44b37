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
}

func newFake(t *testing.T) *fakeProcs {
	f := &fakeProcs{t: t, now: time.Unix(1000, 0)}
	opts := Options{Max: 4, OnChange: func(n int) { f.changes = append(f.changes, n) }}
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
func (f *fakeProcs) load(on1, onMax float64, d time.Duration) {
	iv := f.c.opts.Interval
	for left := d; left > 0; left -= iv {
		cores := onMax
		if f.c.procs == 1 {
			cores = on1
		}
		f.now = f.now.Add(iv)
		f.cpu += time.Duration(cores * float64(iv))
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
	f.want(1, "at the start")
	if len(f.changes) != 0 {
		t.Fatalf("the start counted as a change: %v", f.changes)
	}
	f.run(0.5, 5*time.Second)
	f.want(1, "half a core of work")
	f.run(0.95, f.c.opts.Interval)
	f.want(4, "one interval with one processor nearly full")
	f.run(0.95, f.c.opts.LowerAfter-f.c.opts.Interval)
	f.want(4, "under one core on all processors for less than LowerAfter")
	f.run(0.95, f.c.opts.Interval)
	f.want(1, "under one core on all processors for LowerAfter")
	// Work that costs 0.6 cores on one processor and 0.9 on all: it stays on one.
	f.load(0.6, 0.9, 10*time.Second)
	f.want(1, "moderate work")
	f.run(3.0, 5*time.Second)
	f.want(4, "three cores of work")
	// Dips shorter than LowerAfter do not bring it down.
	for range 5 {
		f.run(0.4, f.c.opts.LowerAfter-f.c.opts.Interval)
		f.run(2.0, f.c.opts.Interval)
	}
	f.want(4, "short dips between busy spells")
	if want := []int{4, 1, 4}; len(f.changes) != len(want) || f.changes[0] != 4 || f.changes[1] != 1 || f.changes[2] != 4 {
		t.Fatalf("changes %v, want %v", f.changes, want)
	}
}

// A real controller changes the runtime's GOMAXPROCS and gives all processors back on Stop.
func TestStartAndStop(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("one CPU: the controller has nothing to do (Start returns nil, tested below)")
	}
	was := runtime.GOMAXPROCS(0)
	c := Start(Options{Max: was, Interval: time.Hour})
	if c == nil {
		t.Fatal("Start returned nil with more than one CPU")
	}
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS %d after Start, want 1", got)
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
