package functions

import (
	"sync"
	"time"
)

// Circuit states, as the admin API shows them.
const (
	CircuitClosed   = "closed"    // batches flow
	CircuitOpen     = "open"      // the endpoint looks down: nothing is sent until the next probe
	CircuitHalfOpen = "half_open" // one probe batch is in flight
)

// health is what a finished batch says about the function's endpoint.
type health uint8

const (
	healthNone health = iota // nothing learned (shutting down)
	healthUp                 // the endpoint answered (success, partial failure, a refusal)
	healthDown               // it failed the way an unavailable endpoint fails (ErrRetryable)
)

// circuit is a function's breaker. It has no goroutine and no timer: the function's loop
// feeds it results and asks it what may start, with the time passed in, so its decisions can
// be tested without a clock.
type circuit struct {
	p         CircuitPolicy
	state     string
	since     time.Time
	failures  int           // consecutive endpoint failures
	interval  time.Duration // wait before the next probe
	nextProbe time.Time
	holdUntil time.Time // Retry-After: nothing starts before
	lastErr   string
}

func newCircuit(p CircuitPolicy, now time.Time) circuit {
	return circuit{p: p, state: CircuitClosed, since: now}
}

// allows reports whether ordinary batches may start at now.
func (c *circuit) allows(now time.Time) bool {
	return c.state == CircuitClosed && !now.Before(c.holdUntil)
}

// probeDue reports whether a probe may start at now.
func (c *circuit) probeDue(now time.Time) bool {
	return c.state == CircuitOpen && !now.Before(c.nextProbe) && !now.Before(c.holdUntil)
}

// until returns how long after now the circuit lets something start again (-1: not waiting on
// the circuit).
func (c *circuit) until(now time.Time) time.Duration {
	var at time.Time
	switch {
	case c.state == CircuitOpen:
		at = c.nextProbe
		if c.holdUntil.After(at) {
			at = c.holdUntil
		}
	case c.state == CircuitClosed && now.Before(c.holdUntil):
		at = c.holdUntil
	default:
		return -1
	}
	return max(at.Sub(now), 0)
}

// probing marks the start of a probe.
func (c *circuit) probing(now time.Time) {
	c.state, c.since = CircuitHalfOpen, now
}

// record takes the result of a finished batch and returns the state it moved to, or "" when it
// did not move.
func (c *circuit) record(h health, probe bool, retryAfter time.Duration, errText string, now time.Time) string {
	if retryAfter > 0 && now.Add(retryAfter).After(c.holdUntil) {
		c.holdUntil = now.Add(retryAfter)
	}
	switch h {
	case healthNone:
		if probe && c.state == CircuitHalfOpen {
			c.state = CircuitOpen
		}
		return ""
	case healthUp:
		c.failures = 0
		if c.state == CircuitClosed {
			return ""
		}
		c.state, c.since, c.interval, c.nextProbe = CircuitClosed, now, 0, time.Time{}
		return CircuitClosed
	}
	c.failures++
	c.lastErr = errText
	switch {
	case probe && c.state == CircuitHalfOpen:
		c.interval = min(c.interval*2, c.p.ProbeMax)
	case c.state == CircuitClosed && c.p.Failures > 0 && c.failures >= c.p.Failures:
		c.interval = c.p.ProbeInitial
	default:
		return ""
	}
	c.state, c.since = CircuitOpen, now
	c.nextProbe = now.Add(max(c.interval, retryAfter))
	return CircuitOpen
}

// CircuitStats is a function's circuit as the admin API shows it.
type CircuitStats struct {
	State          string     `json:"state"` // closed | open | half_open
	Since          time.Time  `json:"since"`
	SecondsInState float64    `json:"seconds_in_state"`
	Failures       int        `json:"consecutive_failures"`  // endpoint failures in a row
	NextProbe      *time.Time `json:"next_probe,omitempty"`  // while open
	RetryAfter     *time.Time `json:"retry_after,omitempty"` // a Retry-After still holding batches back
	LastError      string     `json:"last_error,omitempty"`  // of the last endpoint failure
}

// circuitView is the loop's circuit copied for readers on other goroutines.
type circuitView struct {
	mu sync.Mutex
	c  circuit
}

func (v *circuitView) set(c circuit) {
	v.mu.Lock()
	v.c = c
	v.mu.Unlock()
}

func (v *circuitView) stats(now time.Time) CircuitStats {
	v.mu.Lock()
	c := v.c
	v.mu.Unlock()
	st := CircuitStats{State: c.state, Since: c.since, SecondsInState: now.Sub(c.since).Seconds(), Failures: c.failures, LastError: c.lastErr}
	if c.state == CircuitOpen {
		t := c.nextProbe
		st.NextProbe = &t
	}
	if now.Before(c.holdUntil) {
		t := c.holdUntil
		st.RetryAfter = &t
	}
	return st
}
