package gctune

import (
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

const mib = 1 << 20

// fake is the runtime's counters and GOGC, moved by the test.
type fake struct {
	allocated, live uint64
	percent         int
	sets            int
}

func newFake(t *testing.T, opts Options) (*Tuner, *fake, *time.Time) {
	t.Helper()
	f := &fake{live: 4 * mib}
	opts.read = func() (uint64, uint64) { return f.allocated, f.live }
	opts.set = func(p int) { f.percent = p; f.sets++ }
	opts.setDefaults()
	now := time.Unix(1000, 0)
	tu := newTuner(opts, now)
	return tu, f, &now
}

// TestTunerFollowsTheAllocationRate: GOGC gives room for Rate collections a second at the rate
// the heap is allocated at, at least GOGC=100's room and at most MaxHeadroom; it goes up within
// one sample and down by a fifth of the difference per sample; changes under a tenth are not
// made.
func TestTunerFollowsTheAllocationRate(t *testing.T) {
	tu, f, now := newFake(t, Options{Rate: 8, MaxHeadroom: 32 * mib})
	if f.percent != 100 || f.sets != 1 {
		t.Fatalf("at start: GOGC %d after %d sets, want 100 once", f.percent, f.sets)
	}
	sample := func(perSecond uint64) {
		t.Helper()
		*now = now.Add(100 * time.Millisecond)
		f.allocated += perSecond / 10
		tu.step(*now, f.allocated, f.live)
	}
	// 16 MiB/s over a live heap of 4 MiB: 2 MiB of room for 8 collections a second, less
	// than GOGC=100's 4.
	for range 5 {
		sample(16 * mib)
	}
	if f.percent != 100 || f.sets != 1 {
		t.Fatalf("16 MiB/s: GOGC %d (%d sets), want 100 unchanged", f.percent, f.sets)
	}
	// 64 MiB/s: 8 MiB of room, GOGC 200, from the first sample.
	sample(64 * mib)
	if f.percent != 200 {
		t.Fatalf("64 MiB/s: GOGC %d, want 200", f.percent)
	}
	// 1 GiB/s: room capped at 32 MiB, GOGC 800.
	sample(1024 * mib)
	if f.percent != 800 {
		t.Fatalf("1 GiB/s: GOGC %d, want 800 (32 MiB of room)", f.percent)
	}
	// A larger live heap needs a smaller GOGC for the same room.
	f.live = 16 * mib
	sample(1024 * mib)
	if f.percent != 200 {
		t.Fatalf("1 GiB/s over 16 MiB live: GOGC %d, want 200", f.percent)
	}
	// Idle: the room shrinks a fifth of the way per sample, back to GOGC=100.
	f.live = 4 * mib
	var seen []int
	for range 40 {
		sample(0)
		if len(seen) == 0 || seen[len(seen)-1] != f.percent {
			seen = append(seen, f.percent)
		}
	}
	if f.percent != 100 || len(seen) < 4 {
		t.Fatalf("idle: GOGC went %v, want several steps down to 100", seen)
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] >= seen[i-1] {
			t.Fatalf("idle: GOGC went %v, want it only down", seen)
		}
	}
	// A change under a tenth is not made.
	sets := f.sets
	tu.rate, tu.percent = 0, 500
	f.percent = 500
	sample(8 * 19 * mib) // room 19 MiB over 4 MiB live: 475, 5 % from 500
	if f.sets != sets || f.percent != 500 {
		t.Fatalf("GOGC set to %d for a change of 5 %%, want it left at 500", f.percent)
	}
	tu.Stop()
	if f.percent != 100 {
		t.Fatalf("after Stop: GOGC %d, want 100", f.percent)
	}
}

func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestStartAndStop: the real runtime's GOGC goes above 100 while the test allocates fast, and is
// 100 again after Stop.
func TestStartAndStop(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	changes := make(chan int, 100)
	tu := Start(Options{Interval: 10 * time.Millisecond, OnChange: func(p int) {
		select {
		case changes <- p:
		default:
		}
	}})
	if got := gogc(); got != 100 {
		t.Fatalf("after Start: GOGC %d, want 100", got)
	}
	var sink [][]byte
	deadline := time.Now().Add(20 * time.Second)
	raised := false
	for !raised && time.Now().Before(deadline) {
		for range 1000 { // 64 MiB of garbage
			sink = append(sink[:0], make([]byte, 64<<10))
		}
		select {
		case p := <-changes:
			raised = p > 100
		default:
		}
	}
	if !raised {
		t.Fatal("GOGC never went above 100 while the test allocated 64 MiB at a time")
	}
	_ = sink
	tu.Stop()
	if got := gogc(); got != 100 {
		t.Fatalf("after Stop: GOGC %d, want 100", got)
	}
}
