package storage

import "time"

// The adaptive commit delay (Options.AutoCommitDelay). Where many senders each send now and
// then, commits are small and their fixed costs (an fdatasync, about 75 µs of kernel CPU on a
// virtual disk, and the wake-ups of each stage) dominate: routing 10 000 MQTT messages/s to a
// function on 2 cores, a 2 ms commit delay cut the gateway's CPU by about a fifth at the same
// p99 latency (BENCHMARKS.md, issue 17's eighth round). But senders that wait for each
// acknowledgement before the next request (HTTP, one event per request) send less when it
// comes later: a 1 ms delay cost them a third of their rate. So the tuner tries the delay
// when commits are frequent, and keeps it only if the events taken in per second hold:
//
//   - off (no delay): at autoDelayCommits commits/s or more (the mean of its last samples, at
//     a steady event rate), it sets the delay and compares the event rate over
//     autoDelaySamples samples with the rate before. Within autoDelayLoss of it, the delay
//     stays (the senders set the pace); lower, it goes (the senders wait), and that holds for
//     autoDelayWaitFor unless the rate falls below the rate before by autoDelayDrift.
//   - on: when the event rate moves out of autoDelayDrift of what it was found at, or after
//     autoDelayRecheck, it takes the delay off for autoDelaySamples samples and compares
//     again: more than autoDelayLoss more events without it, and it stays off.
//
// Each switch's first sample straddles it and is left out.
const (
	autoDelayInterval = 100 * time.Millisecond
	autoDelaySamples  = 3
	autoDelayCommits  = 1000.0 // commits/s from which the delay is worth trying
	autoDelayLoss     = 0.1
	autoDelayDrift    = 1.25
	autoDelayRecheck  = 10 * time.Second // an outcome of "the senders set the pace"
	autoDelayWaitFor  = 30 * time.Second // an outcome of "the senders wait"
)

const (
	delayOff      = iota // no delay
	delayTrying          // the delay set, to compare
	delayOn              // the delay kept
	delayChecking        // the delay taken off, to compare
)

// delayTuner is the adaptive commit delay's state: step takes one sample.
type delayTuner struct {
	delay time.Duration // the delay it sets when on
	state int

	lastAt              time.Time
	lastCommits, lastEv uint64
	samples             int // since the last switch, the first one included
	rates, commitRates  [autoDelaySamples]float64

	before    float64   // trying, checking: the event rate before the switch
	foundRate float64   // the event rate the last outcome was found at
	foundAt   time.Time // when (zero: none holds)
}

func newDelayTuner(delay time.Duration, now time.Time, commits, events uint64) *delayTuner {
	return &delayTuner{delay: delay, lastAt: now, lastCommits: commits, lastEv: events}
}

// step takes a sample of the counters at now. It returns the delay to use from now on and, if
// that changed, why (else "").
func (t *delayTuner) step(now time.Time, commits, events uint64) (time.Duration, string) {
	wall := now.Sub(t.lastAt).Seconds()
	if wall <= 0 {
		return t.current(), ""
	}
	rate := float64(events-t.lastEv) / wall
	commitRate := float64(commits-t.lastCommits) / wall
	t.lastAt, t.lastCommits, t.lastEv = now, commits, events
	if t.samples++; t.samples > 1 {
		i := (t.samples - 2) % autoDelaySamples
		t.rates[i], t.commitRates[i] = rate, commitRate
	}
	full := t.samples > autoDelaySamples
	mean := func(xs *[autoDelaySamples]float64) float64 {
		var sum float64
		for _, x := range xs {
			sum += x
		}
		return sum / autoDelaySamples
	}
	switch t.state {
	case delayOff:
		// An outcome of "the senders wait" holds for autoDelayWaitFor unless the rate falls
		// (a faster rate is more of those senders, or the same ones getting more done).
		r := mean(&t.rates)
		if !full || mean(&t.commitRates) < autoDelayCommits || !steady(&t.rates) ||
			(!t.foundAt.IsZero() && now.Sub(t.foundAt) < autoDelayWaitFor && r >= t.foundRate/autoDelayDrift) {
			return 0, ""
		}
		t.before = r
		return t.switchTo(delayTrying, "frequent commits: trying the delay")
	case delayTrying:
		if !full {
			return t.delay, ""
		}
		if after := mean(&t.rates); after >= t.before*(1-autoDelayLoss) {
			t.foundRate, t.foundAt = after, now
			return t.switchTo(delayOn, "the senders set the pace")
		}
		t.foundRate, t.foundAt = t.before, now
		return t.switchTo(delayOff, "the senders wait for their acknowledgements")
	case delayOn:
		if (full && !t.holds(now, mean(&t.rates))) || now.Sub(t.foundAt) >= autoDelayRecheck {
			t.before = t.foundRate
			if full {
				t.before = mean(&t.rates)
			}
			return t.switchTo(delayChecking, "recheck")
		}
		return t.delay, ""
	default: // delayChecking
		if !full {
			return 0, ""
		}
		if without := mean(&t.rates); without > t.before*(1+autoDelayLoss) {
			// Off, keeping the samples: they were taken without the delay.
			t.foundRate, t.foundAt = without, now
			t.state = delayOff
			return 0, "the senders wait for their acknowledgements"
		}
		t.foundRate, t.foundAt = t.before, now
		return t.switchTo(delayOn, "the senders set the pace")
	}
}

// steady says whether the samples' rates are within autoDelayLoss of each other: a rate that
// is still moving would be taken for the delay's effect.
func steady(rates *[autoDelaySamples]float64) bool {
	lo, hi := rates[0], rates[0]
	for _, r := range rates {
		lo, hi = min(lo, r), max(hi, r)
	}
	return hi <= lo*(1+autoDelayLoss)
}

func (t *delayTuner) current() time.Duration {
	if t.state == delayTrying || t.state == delayOn {
		return t.delay
	}
	return 0
}

// holds says whether the last outcome (the senders set the pace) still holds at this event
// rate.
func (t *delayTuner) holds(now time.Time, rate float64) bool {
	return !t.foundAt.IsZero() && now.Sub(t.foundAt) < autoDelayRecheck &&
		rate <= t.foundRate*autoDelayDrift && rate >= t.foundRate/autoDelayDrift
}

func (t *delayTuner) switchTo(state int, reason string) (time.Duration, string) {
	t.state, t.samples = state, 0
	return t.current(), reason
}

// autoDelayLoop runs the tuner until Close: every autoDelayInterval it samples the commits and
// the events appended, and sets the committer's delay.
func (s *Store) autoDelayLoop() {
	defer s.done.Done()
	tick := time.NewTicker(autoDelayInterval)
	defer tick.Stop()
	t := newDelayTuner(s.opts.AutoCommitDelay, time.Now(), s.m.commits.Get(), s.m.appended.Get())
	for {
		select {
		case now := <-tick.C:
			d, why := t.step(now, s.m.commits.Get(), s.m.appended.Get())
			if why != "" {
				s.commitDelay.Store(int64(d))
				s.log.Debug("storage: commit delay", "delay", d, "reason", why)
			}
		case <-s.closing:
			return
		}
	}
}
