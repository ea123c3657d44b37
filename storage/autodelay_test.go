package storage

import (
	"testing"
	"time"
)

// fakeSenders drives a delayTuner with a clock and counters of its own: one step per interval.
type fakeSenders struct {
	t       *testing.T
	tuner   *delayTuner
	now     time.Time
	commits uint64
	events  uint64
	delay   time.Duration
	reasons []string
}

func newFakeSenders(t *testing.T) *fakeSenders {
	f := &fakeSenders{t: t, now: time.Unix(1000, 0)}
	f.tuner = newDelayTuner(2*time.Millisecond, f.now, 0, 0)
	return f
}

// run is senders that get rate events/s taken in without the delay and rateDelayed with it,
// in commitsPerSec commits/s without it (a fifth as many with it), for d.
func (f *fakeSenders) run(rate, rateDelayed, commitsPerSec float64, d time.Duration) {
	iv := autoDelayInterval
	for left := d; left > 0; left -= iv {
		r, c := rate, commitsPerSec
		if f.delay > 0 {
			r, c = rateDelayed, commitsPerSec/5
		}
		f.now = f.now.Add(iv)
		f.events += uint64(r * iv.Seconds())
		f.commits += uint64(c * iv.Seconds())
		delay, why := f.tuner.step(f.now, f.commits, f.events)
		if why != "" {
			f.reasons = append(f.reasons, why)
		}
		f.delay = delay
	}
}

func (f *fakeSenders) want(delay time.Duration, what string, reasons ...string) {
	f.t.Helper()
	ok := f.delay == delay && len(f.reasons) == len(reasons)
	for i := 0; ok && i < len(reasons); i++ {
		ok = f.reasons[i] == reasons[i]
	}
	if !ok {
		f.t.Fatalf("%s: delay %s after %q, want %s after %q", what, f.delay, f.reasons, delay, reasons)
	}
}

const (
	trying = "frequent commits: trying the delay"
	pace   = "the senders set the pace"
	wait   = "the senders wait for their acknowledgements"
)

// Devices publishing at their own pace: the delay is tried, kept, and kept at each recheck.
func TestAutoDelayKeptForSendersAtTheirOwnPace(t *testing.T) {
	f := newFakeSenders(t)
	f.run(300, 300, 300, 5*time.Second)
	f.want(0, "300 commits/s: not worth a delay")
	f.run(10000, 10000, 2000, time.Second)
	f.want(2*time.Millisecond, "10 000 events/s in 2 000 commits/s, as many with the delay", trying, pace)
	f.run(10000, 10000, 2000, autoDelayRecheck-time.Second)
	f.want(2*time.Millisecond, "before the recheck", trying, pace)
	f.run(10000, 10000, 2000, 2*time.Second)
	f.want(2*time.Millisecond, "after a recheck", trying, pace, "recheck", pace)
	// A slight wobble (within autoDelayLoss) keeps it: 3 % fewer events with the delay.
	f.run(10000, 9700, 2000, autoDelayRecheck+time.Second)
	f.want(2*time.Millisecond, "3 % fewer with the delay", trying, pace, "recheck", pace, "recheck", pace)
}

// Senders that wait for each acknowledgement (HTTP, one event per request) send less with the
// delay: it is tried once and taken off, and not tried again while their rate holds.
func TestAutoDelayOffForSendersThatWait(t *testing.T) {
	f := newFakeSenders(t)
	f.run(13000, 7000, 1800, time.Second)
	f.want(0, "13 000 events/s without the delay, 7 000 with", trying, wait)
	f.run(13000, 7000, 1800, autoDelayWaitFor-4*time.Second)
	f.want(0, "the same senders", trying, wait)
	f.run(16000, 8000, 2200, time.Second)
	f.want(0, "more of the same senders", trying, wait)
	f.run(16000, 8000, 2200, 4*time.Second)
	f.want(0, "after autoDelayWaitFor, tried again", trying, wait, trying, wait)
	// The rate falls by more than autoDelayDrift: tried again at once.
	f.run(9000, 9000, 1500, time.Second)
	f.want(2*time.Millisecond, "other senders, at their own pace", trying, wait, trying, wait, trying, pace)
}

// Senders that set the pace, then ones that wait: the recheck finds more events without the
// delay, and takes it off.
func TestAutoDelayRecheckFindsWaitingSenders(t *testing.T) {
	f := newFakeSenders(t)
	f.run(10000, 10000, 2000, time.Second)
	f.want(2*time.Millisecond, "at their own pace", trying, pace)
	f.run(7000, 7000, 2000, time.Second) // a quarter fewer: the rate moved, recheck
	f.want(2*time.Millisecond, "fewer events, the same either way", trying, pace, "recheck", pace)
	// Senders that wait come while the delay is on: held back by it, they take in what the
	// others did, until the next recheck.
	f.run(13000, 7000, 1800, autoDelayRecheck+time.Second)
	f.want(0, "senders that wait", trying, pace, "recheck", pace, "recheck", wait)
}
