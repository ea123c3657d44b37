package functions

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// Memory bounds of one function.
const (
	minPending    = 1024   // items held in memory (fresh, waiting for retry, in flight), at least
	maxPendingCap = 100000 // and at most
	readChunk     = 1000   // items read from storage at once when catching up
)

// function is one configured function: its hot-tail intake (filled by the committer), and the
// state owned by its loop goroutine.
type function struct {
	d      *Dispatcher
	def    Definition
	name   string
	inv    Invoker
	logger *slog.Logger

	maxPending int

	// Intake, guarded by mu. hot holds committed items in Seq order; when it would overflow
	// lost is set and the loop catches up from storage instead.
	mu       sync.Mutex
	hot      []storage.Item
	lost     bool
	injected []storage.Item // replayed dead letters
	offered  atomic.Bool    // set by offer, cleared by onCommit when it signals
	wake     chan struct{}
	done     chan *unit

	// Loop state.
	readSeq    uint64 // everything in storage up to here is in memory or finished
	catchingUp bool
	fresh      []*pitem // never attempted, Seq order (replayed items merged in: addReplayed)
	freshHead  int
	retries    []*unit // waiting for their retry, by first Seq
	running    map[*unit]struct{}
	inflight   map[string]int // items per subject in running units
	retrying   map[string]int // items per subject in retries
	pending    int            // items in memory
	batcher    *Batcher
	rescan     bool      // something changed: try to form a batch
	dueAt      time.Time // when the partial batch found by the last scan is due
	circuit    circuit
	circuitV   circuitView // the circuit as the admin API reads it
	flying     flyingSet   // the running units, readable outside the loop (an event's fate)

	// Stats.
	successes, failures, retriesN atomic.Int64
	inFlight                      atomic.Int64
	oldest                        atomic.Int64 // unix nanos of the oldest unfinished event in memory, 0 when none
	lastErr                       atomic.Pointer[string]
	failing                       atomic.Bool
	catchingUpA                   atomic.Bool

	m fnMetrics
}

type fnMetrics struct {
	ok, partial, failed         *metrics.Counter
	refused                     *metrics.Counter // reply outputs refused
	retries, deadLetters        *metrics.Counter
	published, reingested, drop *metrics.Counter
	outputRetries               *metrics.Counter
	errSent, errDropped         *metrics.Counter // copies of dead letters for error functions
	circuitOpen                 atomic.Bool
	toOpen, toHalfOpen, toClose *metrics.Counter
	batchSize                   *metrics.PrometheusHistogram
	duration                    *metrics.PrometheusHistogram
}

// pitem is an item held in memory.
type pitem struct {
	storage.Item
	arrived  time.Time
	size     int
	attempts int // attempts charged: the event failed alone or was named as failed
}

// unit is a batch in flight or waiting for a retry, with its retry state.
type unit struct {
	items    []*pitem
	tries    int       // failed invocations of this unit and the units it was split from (the backoff)
	first    time.Time // first attempt of its items (they were all first tried together)
	nextAt   time.Time
	lastErr  error
	endpoint bool // waiting after an endpoint failure: retried at once when the circuit closes
	probe    bool // the probe of an open circuit

	// Filled by the worker.
	next       []*unit // to retry
	finished   int     // items acknowledged or dead-lettered
	health     health
	retryAfter time.Duration
	err        error
}

func newFunction(d *Dispatcher, def Definition, inv Invoker) *function {
	f := &function{
		d: d, def: def, name: def.Name, inv: inv,
		logger:   d.logger.With("function", def.Name),
		wake:     make(chan struct{}, 1),
		done:     make(chan *unit, def.Concurrency),
		running:  make(map[*unit]struct{}),
		inflight: make(map[string]int),
		retrying: make(map[string]int),
		batcher:  def.Batch.NewBatcher(),
		circuit:  newCircuit(def.Circuit, time.Now()),
	}
	f.circuitV.set(f.circuit)
	f.maxPending = min(max(4*f.batcher.MaxEvents()*def.Concurrency, minPending), maxPendingCap)
	s, l := d.metrics, `{function="`+def.Name+`"}`
	res := func(r string) *metrics.Counter {
		return s.GetOrCreateCounter(`fleetgate_function_invocations_total{function="` + def.Name + `",result="` + r + `"}`)
	}
	out := func(r string) *metrics.Counter {
		return s.GetOrCreateCounter(`fleetgate_function_outputs_total{function="` + def.Name + `",result="` + r + `"}`)
	}
	f.m = fnMetrics{
		ok: res("success"), partial: res("partial"), failed: res("failure"),
		retries:     s.GetOrCreateCounter(`fleetgate_function_retries_total` + l),
		deadLetters: s.GetOrCreateCounter(`fleetgate_function_dead_letters_total` + l),
		published:   out("published"), reingested: out("reingested"), drop: out("dropped"), refused: out("refused"),
		outputRetries: s.GetOrCreateCounter(`fleetgate_function_output_retries_total` + l),
		errSent:       s.GetOrCreateCounter(`fleetgate_function_error_events_total{function="` + def.Name + `",result="sent"}`),
		errDropped:    s.GetOrCreateCounter(`fleetgate_function_error_events_total{function="` + def.Name + `",result="dropped"}`),
		toOpen:        s.GetOrCreateCounter(`fleetgate_function_circuit_transitions_total{function="` + def.Name + `",to="open"}`),
		toHalfOpen:    s.GetOrCreateCounter(`fleetgate_function_circuit_transitions_total{function="` + def.Name + `",to="half_open"}`),
		toClose:       s.GetOrCreateCounter(`fleetgate_function_circuit_transitions_total{function="` + def.Name + `",to="closed"}`),
		batchSize: s.GetOrCreatePrometheusHistogramExt(`fleetgate_function_batch_size`+l,
			[]float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}),
		duration: s.GetOrCreatePrometheusHistogram(`fleetgate_function_duration_seconds` + l),
	}
	s.GetOrCreateGauge(`fleetgate_function_queue_depth`+l, func() float64 { return float64(d.store.QueueDepth(def.Name)) })
	s.GetOrCreateGauge(`fleetgate_function_dead_letter_depth`+l, func() float64 { return float64(d.store.DeadLetterDepth(def.Name)) })
	s.GetOrCreateGauge(`fleetgate_function_lag_seconds`+l, func() float64 { return f.lag().Seconds() })
	s.GetOrCreateGauge(`fleetgate_function_in_flight`+l, func() float64 { return float64(f.inFlight.Load()) })
	s.GetOrCreateGauge(`fleetgate_function_circuit_open`+l, func() float64 {
		if f.m.circuitOpen.Load() {
			return 1
		}
		return 0
	})
	return f
}

// offer takes a committed item (committer goroutine; never blocks).
func (f *function) offer(it storage.Item) {
	f.mu.Lock()
	if len(f.hot) >= f.maxPending {
		f.lost = true
	} else if !f.lost {
		f.hot = append(f.hot, it)
	}
	f.mu.Unlock()
	f.offered.Store(true)
}

func (f *function) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *function) lag() time.Duration {
	o := f.oldest.Load()
	if o == 0 {
		return 0
	}
	return time.Since(time.Unix(0, o))
}

// loop owns the function's state: intake, catch-up reads, batch formation, timers and results.
func (f *function) loop() {
	defer f.d.loops.Done()
	f.catchingUp = true
	f.catchingUpA.Store(true)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var readErrAt time.Time
	stopping := false
	for {
		if !stopping {
			f.intake()
			if f.catchingUp && f.pending < f.maxPending && time.Since(readErrAt) > time.Second {
				if err := f.catchUp(); err != nil {
					readErrAt = time.Now()
					if !errors.Is(err, storage.ErrClosed) {
						f.logger.Error("reading queue", "err", err)
					}
					f.setLastErr(err)
				}
			}
		}
		var wait time.Duration = -1
		if !stopping {
			wait = f.schedule(time.Now())
		}
		f.updateOldest()
		if stopping && len(f.running) == 0 {
			return
		}
		if f.catchingUp && f.pending < f.maxPending && !stopping {
			if time.Since(readErrAt) > time.Second {
				continue // keep reading
			}
			if wait < 0 || wait > time.Second {
				wait = time.Second
			}
		}
		if wait >= 0 {
			timer.Reset(wait)
		} else {
			timer.Reset(time.Hour)
		}
		select {
		case <-f.wake:
		case u := <-f.done:
			f.finish(u)
		case <-timer.C:
			f.rescan = true
		case <-f.d.stopCh:
			if !stopping {
				stopping = true
			} else {
				// stopCh stays closed: wait only for results from here on.
				u := <-f.done
				f.finish(u)
			}
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// intake moves hot and replayed items into memory.
func (f *function) intake() {
	f.mu.Lock()
	if f.lost {
		// Items were dropped: forget the hot buffer and read storage instead.
		f.lost = false
		f.hot = f.hot[:0]
		f.catchingUp = true
		f.catchingUpA.Store(true)
	}
	var hot []storage.Item
	if !f.catchingUp && len(f.hot) > 0 && f.pending < f.maxPending {
		n := min(len(f.hot), f.maxPending-f.pending)
		hot = slices.Clone(f.hot[:n])
		f.hot = append(f.hot[:0], f.hot[n:]...)
	}
	injected := f.injected
	f.injected = nil
	f.mu.Unlock()
	now := time.Now()
	for _, it := range hot {
		if it.Seq <= f.readSeq {
			continue // already read from storage
		}
		f.readSeq = it.Seq
		f.addFresh(it, now)
	}
	f.addReplayed(injected, now)
}

func (f *function) addFresh(it storage.Item, now time.Time) {
	f.fresh = append(f.fresh, &pitem{Item: it, arrived: now, size: it.Event.Size()})
	f.pending++
	f.rescan = true
}

// catchUp reads the next chunk of the queue from storage; reading less than asked means
// storage has nothing newer, and the hot tail takes over.
func (f *function) catchUp() error {
	n := min(readChunk, f.maxPending-f.pending)
	items, err := f.d.store.ReadQueue(f.name, f.readSeq, n)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, it := range items {
		f.readSeq = it.Seq
		f.addFresh(it, now)
	}
	if len(items) < n {
		f.catchingUp = false
		f.catchingUpA.Store(false)
	}
	return nil
}

// schedule starts what may start now: due retries first, then fresh batches, up to
// concurrency in flight. It returns how long until it should run again (-1: no timer needed).
func (f *function) schedule(now time.Time) time.Duration {
	wait := time.Duration(-1)
	setWait := func(d time.Duration) {
		if d >= 0 && (wait < 0 || d < wait) {
			wait = d
		}
	}
	if !f.circuit.allows(now) {
		// The endpoint looks down, or asked to be left alone: at most one probe.
		if f.circuit.probeDue(now) && len(f.running) < f.def.Concurrency {
			if u := f.probeUnit(); u != nil {
				f.circuit.probing(now)
				f.circuitChanged(CircuitHalfOpen)
				f.start(u)
			}
		}
		setWait(f.circuit.until(now))
		if f.circuit.state == CircuitOpen && wait == 0 {
			if len(f.retries) == 0 && f.freshHead >= len(f.fresh) {
				return -1 // nothing to probe with: the next event wakes the loop
			}
			wait = 10 * time.Millisecond // a probe is due but its subject is busy
		}
		return wait
	}
	if len(f.retries) > 0 {
		var blocked map[string]bool
		kept := f.retries[:0]
		for _, u := range f.retries {
			eligible := len(f.running) < f.def.Concurrency && !u.nextAt.After(now)
			if eligible {
				for _, it := range u.items {
					if f.inflight[it.Event.Subject] > 0 || blocked[it.Event.Subject] {
						eligible = false
						break
					}
				}
			}
			if eligible {
				for _, it := range u.items {
					f.retrying[it.Event.Subject]--
					if f.retrying[it.Event.Subject] == 0 {
						delete(f.retrying, it.Event.Subject)
					}
				}
				f.m.retries.Inc()
				f.retriesN.Add(1)
				f.start(u)
				continue
			}
			if u.nextAt.After(now) {
				setWait(u.nextAt.Sub(now))
			}
			if blocked == nil {
				blocked = make(map[string]bool)
			}
			for _, it := range u.items {
				blocked[it.Event.Subject] = true
			}
			kept = append(kept, u)
		}
		clear(f.retries[len(kept):])
		f.retries = kept
	}
	if !f.rescan && !f.dueAt.IsZero() {
		setWait(max(f.dueAt.Sub(now), 0))
	}
	for f.rescan && len(f.running) < f.def.Concurrency && f.freshHead < len(f.fresh) {
		u, until := f.formBatch(now)
		if u == nil {
			setWait(until)
			break
		}
		f.start(u)
	}
	if f.freshHead >= len(f.fresh) {
		f.fresh, f.freshHead = f.fresh[:0], 0
	}
	return wait
}

// formBatch picks the next batch of fresh items allowed to go: in Seq order, skipping subjects
// that have an earlier item in flight, waiting for a retry, or skipped in this scan. It returns
// nil and the time until the batch is due when it is not yet full nor old enough.
func (f *function) formBatch(now time.Time) (*unit, time.Duration) {
	b := f.batcher
	b.Reset()
	var skipped map[string]bool
	var chosen []int
	end := f.freshHead
	full := false
	for ; end < len(f.fresh) && !full; end++ {
		it := f.fresh[end]
		s := it.Event.Subject
		if f.inflight[s] > 0 || f.retrying[s] > 0 || skipped[s] {
			if skipped == nil {
				skipped = make(map[string]bool)
			}
			skipped[s] = true
			continue
		}
		if !b.Fits(it.size) {
			full = true
			break
		}
		chosen = append(chosen, end)
		full = b.Add(it.size, it.arrived)
	}
	f.rescan = false
	f.dueAt = time.Time{}
	if len(chosen) == 0 {
		return nil, -1
	}
	if !full {
		if until := b.UntilNext(now); until != 0 {
			if until > 0 {
				f.dueAt = now.Add(until)
			}
			return nil, until
		}
	}
	f.rescan = true // there may be more to send
	u := &unit{items: make([]*pitem, len(chosen))}
	for i, idx := range chosen {
		u.items[i] = f.fresh[idx]
	}
	// Remove the chosen items, keeping the skipped ones in order at the end of the scanned range.
	if len(chosen) == end-f.freshHead {
		clear(f.fresh[f.freshHead:end])
		f.freshHead = end
	} else {
		w := end
		ci := len(chosen) - 1
		for r := end - 1; r >= f.freshHead; r-- {
			if ci >= 0 && chosen[ci] == r {
				ci--
				continue
			}
			w--
			f.fresh[w] = f.fresh[r]
		}
		clear(f.fresh[f.freshHead:w])
		f.freshHead = w
	}
	return u, 0
}

// probeUnit takes one item, the oldest waiting for a retry or else the oldest fresh one, as
// the probe of the open circuit; nil when none may go now (its subject is in flight).
func (f *function) probeUnit() *unit {
	if len(f.retries) > 0 {
		u := f.retries[0]
		it := u.items[0]
		if f.inflight[it.Event.Subject] > 0 {
			return nil
		}
		f.retrying[it.Event.Subject]--
		if f.retrying[it.Event.Subject] == 0 {
			delete(f.retrying, it.Event.Subject)
		}
		f.retries = slices.Delete(f.retries, 0, 1)
		if len(u.items) > 1 {
			// The rest waits on, at its place in Seq order.
			u.items = u.items[1:]
			i, _ := slices.BinarySearchFunc(f.retries, u.items[0].Seq, func(x *unit, seq uint64) int {
				return cmp.Compare(x.items[0].Seq, seq)
			})
			f.retries = slices.Insert(f.retries, i, u)
		}
		f.m.retries.Inc()
		f.retriesN.Add(1)
		return &unit{items: []*pitem{it}, tries: u.tries, first: u.first, lastErr: u.lastErr, probe: true}
	}
	for f.freshHead < len(f.fresh) {
		it := f.fresh[f.freshHead]
		s := it.Event.Subject
		if f.inflight[s] > 0 || f.retrying[s] > 0 {
			return nil
		}
		f.fresh[f.freshHead] = nil
		f.freshHead++
		return &unit{items: []*pitem{it}, probe: true}
	}
	return nil
}

// circuitChanged publishes a transition of the circuit to state.
func (f *function) circuitChanged(state string) {
	f.circuitV.set(f.circuit)
	f.m.circuitOpen.Store(state != CircuitClosed)
	switch state {
	case CircuitOpen:
		f.m.toOpen.Inc()
		f.logger.Warn("function circuit open: its endpoint looks down; one probe event at a time until it answers, the other events wait",
			"consecutive_failures", f.circuit.failures, "next_probe_in", f.circuit.nextProbe.Sub(time.Now()).Round(time.Millisecond), "err", f.circuit.lastErr)
	case CircuitHalfOpen:
		f.m.toHalfOpen.Inc()
	case CircuitClosed:
		f.m.toClose.Inc()
		f.logger.Info("function circuit closed: delivering again")
		now := time.Now()
		for _, u := range f.retries {
			if u.endpoint && u.nextAt.After(now) {
				u.nextAt = now // waited for the endpoint, which is back
			}
		}
		f.rescan = true
		if f.def.RedriveOnRecovery {
			f.d.loops.Add(1) // Stop waits for it: the loop holds a count of its own
			go func() {
				defer f.d.loops.Done()
				f.redrive()
			}()
		}
	}
}

// redrive replays the function's dead letters after its circuit closed (redrive_on_recovery).
func (f *function) redrive() {
	if f.d.stopping.Load() || f.d.store.DeadLetterDepth(f.name) == 0 {
		return
	}
	n, err := f.d.replay(f.name, nil)
	if err != nil {
		if !errors.Is(err, storage.ErrClosed) {
			f.logger.Error("redriving dead letters after recovery", "err", err)
		}
		return
	}
	f.logger.Info("dead letters redriven after recovery", "events", n)
}

// start runs u on its own goroutine.
func (f *function) start(u *unit) {
	f.running[u] = struct{}{}
	f.flying.add(u)
	for _, it := range u.items {
		f.inflight[it.Event.Subject]++
	}
	f.inFlight.Add(1)
	go f.run(u)
}

// finish takes a worker's result back into the loop's state.
func (f *function) finish(u *unit) {
	prev := f.circuit.failures
	if to := f.circuit.record(u.health, u.probe, u.retryAfter, errString(u.err), time.Now()); to != "" {
		f.circuitChanged(to)
	} else if u.health == healthDown || u.retryAfter > 0 || prev != f.circuit.failures {
		f.circuitV.set(f.circuit)
	}
	delete(f.running, u)
	f.flying.remove(u)
	f.inFlight.Add(-1)
	for _, it := range u.items {
		s := it.Event.Subject
		f.inflight[s]--
		if f.inflight[s] == 0 {
			delete(f.inflight, s)
		}
	}
	f.pending -= u.finished
	for _, r := range u.next {
		for _, it := range r.items {
			f.retrying[it.Event.Subject]++
		}
		i, _ := slices.BinarySearchFunc(f.retries, r.items[0].Seq, func(x *unit, seq uint64) int {
			return cmp.Compare(x.items[0].Seq, seq)
		})
		f.retries = slices.Insert(f.retries, i, r)
	}
	f.rescan = true
}

// updateOldest publishes the age of the oldest unfinished item in memory for lag reporting.
func (f *function) updateOldest() {
	var oldest time.Time
	consider := func(it *pitem) {
		if t := it.Event.Time; !t.IsZero() && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	if f.freshHead < len(f.fresh) {
		consider(f.fresh[f.freshHead])
	}
	if len(f.retries) > 0 {
		consider(f.retries[0].items[0])
	}
	for u := range f.running {
		consider(u.items[0])
	}
	if oldest.IsZero() {
		f.oldest.Store(0)
	} else {
		f.oldest.Store(oldest.UnixNano())
	}
}

func (f *function) setLastErr(err error) {
	s := errString(err)
	f.lastErr.Store(&s)
}

// run invokes u, then acknowledges, schedules retries or dead-letters, and reports to the loop.
// It never blocks the loop: the loop always receives from done.
//
// Attempts are charged to an event only when it is shown to fail: it failed alone, or the
// function named it as failed. A batch that failed as a whole is split in halves (nobody is
// charged) until the failing events are alone; a failure of an unavailable endpoint
// (ErrUnavailable) is charged to nobody and the batch waits whole for the endpoint.
func (f *function) run(u *unit) {
	defer func() { f.done <- u }()
	batch := &Batch{Function: f.name, Items: make([]storage.Item, len(u.items))}
	for i, it := range u.items {
		batch.Items[i] = it.Item
	}
	start := time.Now()
	if u.first.IsZero() {
		u.first = start
	}
	ctx, cancel := context.WithTimeout(f.d.baseCtx, f.def.Timeout)
	res, err := f.invoke(ctx, batch)
	cancel()
	f.m.duration.UpdateDuration(start)
	f.m.batchSize.Update(float64(len(u.items)))
	if err == nil {
		err = f.outputs(u, res.Publish)
	}
	if err != nil && f.d.baseCtx.Err() != nil {
		// Shutting down: leave everything queued in storage for the next start.
		u.finished = len(u.items)
		return
	}
	u.health, u.err = healthUp, err
	if err != nil {
		u.retryAfter = retryAfterOf(err)
		if errors.Is(err, ErrRetryable) {
			u.health = healthDown
		}
	}
	var ok, failed []*pitem
	if err != nil {
		failed = u.items
	} else if len(res.Failed) == 0 {
		ok = u.items
	} else {
		ids := make(map[string]bool, len(res.Failed))
		for _, id := range res.Failed {
			ids[id] = true
		}
		for _, it := range u.items {
			if ids[it.Event.ID] {
				failed = append(failed, it)
			} else {
				ok = append(ok, it)
			}
		}
	}
	switch {
	case len(failed) == 0:
		f.m.ok.Inc()
		f.successes.Add(1)
		f.failing.Store(false)
	case len(ok) > 0:
		f.m.partial.Inc()
		f.failures.Add(1)
		f.failing.Store(true)
		f.setLastErr(fmt.Errorf("%d of %d events failed", len(failed), len(u.items)))
	default:
		f.m.failed.Inc()
		f.failures.Add(1)
		f.failing.Store(true)
		if err == nil {
			err = errNotAcked
		}
		f.setLastErr(err)
		f.logger.Warn("function failed", "events", len(u.items), "probe", u.probe, "err", err)
	}
	if len(ok) > 0 {
		f.ack(ok)
		u.finished += len(ok)
	}
	if len(failed) == 0 {
		return
	}
	var retry []*unit
	switch {
	case err == nil || err == errNotAcked:
		// The function named these events: each is shown to fail.
		for _, it := range failed {
			it.attempts++
		}
		retry = []*unit{{items: failed, tries: u.tries + 1, first: u.first, lastErr: errNotAcked}}
	case errors.Is(err, ErrUnavailable):
		// The endpoint did not take the batch: nobody is charged; the batch waits whole.
		retry = []*unit{{items: failed, tries: u.tries + 1, first: u.first, lastErr: err, endpoint: true}}
	case len(failed) == 1:
		failed[0].attempts++
		retry = []*unit{{items: failed, tries: u.tries + 1, first: u.first, lastErr: err, endpoint: u.health == healthDown}}
	default:
		// The whole batch failed: bisect it, so a poison event ends up alone.
		h := len(failed) / 2
		retry = []*unit{
			{items: failed[:h:h], tries: u.tries + 1, first: u.first, lastErr: err},
			{items: failed[h:], tries: u.tries + 1, first: u.first, lastErr: err},
		}
	}
	now := time.Now()
	for _, r := range retry {
		var give, keep []*pitem
		for _, it := range r.items {
			if it.attempts >= f.def.Retry.MaxAttempts || now.Sub(r.first) >= f.def.Retry.MaxAge {
				give = append(give, it)
			} else {
				keep = append(keep, it)
			}
		}
		if len(give) > 0 {
			if f.deadLetter(give, r.lastErr, now) == nil {
				u.finished += len(give)
			} else {
				keep = r.items // keep them all, in order, and try again later
			}
		}
		if len(keep) == 0 {
			continue
		}
		r.items = keep
		r.nextAt = now.Add(max(f.backoff(r.tries), u.retryAfter))
		u.next = append(u.next, r)
	}
}

// invoke calls the invoker, turning a panic into a failed batch.
func (f *function) invoke(ctx context.Context, b *Batch) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: function %s panicked: %v", ErrRetryable, f.name, p)
		}
	}()
	return f.inv.Invoke(ctx, b)
}

func (f *function) backoff(attempts int) time.Duration {
	r := f.def.Retry
	d := r.InitialBackoff
	for i := 1; i < attempts && d < r.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.MaxBackoff)
	// Equal jitter: half fixed, half random.
	return d/2 + rand.N(d/2+1)
}

// ack removes delivered items from the queue. A failed ack is logged: the items stay queued
// and are delivered again after a restart (at least once).
func (f *function) ack(items []*pitem) {
	delivered := make([]storage.Item, len(items)) // acked with a record in each event's fate
	for i, it := range items {
		delivered[i] = it.Item
	}
	var err error
	for try := 0; try < 3; try++ {
		if err = f.d.store.Delivered(f.name, delivered); err == nil || errors.Is(err, storage.ErrClosed) {
			break
		}
		time.Sleep(time.Duration(try+1) * 50 * time.Millisecond)
	}
	if err != nil {
		f.logger.Error("acknowledging delivered events; they will be delivered again after a restart", "events", len(delivered), "err", err)
	}
}

// deadLetter moves items to the function's dead letters, each with its charged attempts and
// the last error.
func (f *function) deadLetter(items []*pitem, lastErr error, now time.Time) error {
	reason := errString(lastErr)
	f.toErrorFunctions(items, reason)
	letters := make([]storage.DeadLetter, len(items))
	for i, it := range items {
		letters[i] = storage.DeadLetter{Seq: it.Seq, Attempts: it.attempts, Reason: reason, At: now, Item: it.Item}
	}
	if err := f.d.store.DeadLetter(f.name, letters); err != nil {
		f.logger.Error("dead-lettering events; will retry", "events", len(letters), "err", err)
		return err
	}
	f.m.deadLetters.Add(len(letters))
	f.logger.Warn("events dead-lettered", "events", len(letters), "attempts", items[0].attempts, "reason", reason)
	return nil
}

// outputs publishes a batch's outputs, and re-ingests them for functions with reingest. A
// failed re-ingest fails the batch (it is retried, as an unavailable endpoint: nobody is
// charged). A failed publish is retried with the function's backoff, up to
// retry.max_attempts tries; an output still refused then is dropped, counted and logged as an
// error with the batch's event ids.
func (f *function) outputs(u *unit, outs []Output) error {
	if len(outs) == 0 {
		return nil
	}
	topicOuts := 0 // replies are not re-ingested
	for i := range outs {
		if !outs[i].Reply {
			topicOuts++
		}
	}
	if f.def.Reingest && f.d.opts.Reingest != nil && topicOuts > 0 {
		hops := 0
		subject, tenant := u.items[0].Event.Subject, u.items[0].Event.Tenant
		for _, it := range u.items {
			hops = max(hops, int(it.Event.Hops))
			if it.Event.Subject != subject {
				subject = ""
			}
			if it.Event.Tenant != tenant {
				tenant = ""
			}
		}
		hops++
		if hops > f.def.MaxHops {
			f.m.drop.Add(topicOuts)
			f.logger.Warn("outputs not re-ingested", "outputs", topicOuts, "hops", hops, "err", ErrHopLimit)
		} else {
			evs := make([]*event.Event, 0, len(outs))
			now := time.Now()
			for i := range outs {
				o := &outs[i]
				if o.Reply {
					continue // a reply answers a requester: it is not an event
				}
				evs = append(evs, &event.Event{ // no ID: the log gives one at the commit (event.NewSeqID)
					Source: "fleetgate://functions/" + f.name, Type: "fleetgate.function.output",
					Subject: subject, Tenant: tenant, Time: now, ContentType: "application/json",
					Data: o.PayloadBytes(), Topic: o.Topic, QoS: o.QoS, Retain: o.Retain, Hops: uint8(hops),
				})
			}
			ctx, cancel := context.WithTimeout(f.d.baseCtx, f.def.Timeout)
			err := f.d.opts.Reingest(ctx, evs)
			cancel()
			if err != nil {
				return &UnavailableError{Err: fmt.Errorf("re-ingesting %d outputs: %w", len(evs), err)}
			}
			f.m.reingested.Add(len(evs))
		}
	}
	return f.publish(u, outs)
}

// publish sends outs through the Publisher, retrying the refused ones.
func (f *function) publish(u *unit, outs []Output) error {
	pub := f.d.opts.Publisher
	if pub == nil {
		f.m.drop.Add(len(outs))
		f.logger.Error("publishing outputs", "outputs", len(outs), "event_ids", eventIDs(u.items), "err", ErrNoPublisher)
		return nil
	}
	pending := make([]int, len(outs))
	for i := range pending {
		pending[i] = i
	}
	var lastErr error
	for try := 1; ; try++ {
		kept := pending[:0]
		for _, i := range pending {
			o := &outs[i]
			var err error
			if o.Reply {
				err = f.reply(u, pub, o)
				if errors.Is(err, ErrReplyRefused) {
					f.m.refused.Inc()
					f.logger.Warn("reply output refused", "id", o.ID, "event_ids", eventIDs(u.items), "err", err)
					continue
				}
			} else {
				err = pub.Publish(o.Topic, o.PayloadBytes(), o.QoS, o.Retain)
			}
			if err != nil {
				lastErr = err
				kept = append(kept, i)
				continue
			}
			f.m.published.Inc()
		}
		pending = kept
		if len(pending) == 0 {
			return nil
		}
		if try >= f.def.Retry.MaxAttempts {
			break
		}
		f.m.outputRetries.Add(len(pending))
		t := time.NewTimer(f.backoff(try))
		select {
		case <-t.C:
		case <-f.d.baseCtx.Done():
			t.Stop()
			// Shutting down: the batch stays queued and is invoked again after the restart.
			return &UnavailableError{Err: fmt.Errorf("publishing %d outputs: %w", len(pending), f.d.baseCtx.Err())}
		}
	}
	f.m.drop.Add(len(pending))
	for _, i := range pending {
		f.logger.Error("publishing output failed; dropped after retry.max_attempts tries", "topic", outs[i].Topic, "reply", outs[i].Reply,
			"tries", f.def.Retry.MaxAttempts, "event_ids", eventIDs(u.items), "err", lastErr)
	}
	return nil
}

// reply sends the reply output o through pub: to the response topic of the batch's event with
// id o.ID (or of its only event when o.ID is empty). Errors wrapping ErrReplyRefused are final.
func (f *function) reply(u *unit, pub Publisher, o *Output) error {
	var req *event.Event
	switch {
	case o.ID != "":
		for _, it := range u.items {
			if it.Event.ID == o.ID {
				req = it.Event
				break
			}
		}
		if req == nil {
			return fmt.Errorf("%w: no event %q in the batch", ErrReplyRefused, o.ID)
		}
	case len(u.items) == 1:
		req = u.items[0].Event
	default:
		return fmt.Errorf("%w: a reply in the answer to a batch of %d events must name its event's id", ErrReplyRefused, len(u.items))
	}
	if req.Meta[MetaResponseTopic] == "" {
		return fmt.Errorf("%w: event %s has no response topic", ErrReplyRefused, req.ID)
	}
	r, ok := pub.(Replier)
	if !ok {
		return fmt.Errorf("%w: the publisher cannot reply", ErrReplyRefused)
	}
	return r.PublishReply(req, o.PayloadBytes(), o.QoS)
}

// eventIDs lists the ids of items for a log line (at most 20, then how many more).
func eventIDs(items []*pitem) string {
	var b strings.Builder
	for i, it := range items {
		if i == 20 {
			fmt.Fprintf(&b, " (+%d more)", len(items)-i)
			break
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(it.Event.ID)
	}
	return b.String()
}
