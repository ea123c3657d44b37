// Package functions delivers stored events to functions: invokers (http, wasm, republish, log)
// behind one Invoker interface, batching policies, and a Dispatcher that feeds each function its
// queue in batches, at least once, in order per subject, with retries and dead letters.
package functions

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// Options configures a Dispatcher.
type Options struct {
	Store       storage.Backend // required
	Definitions []Definition    // validated by NewDispatcher; the built-in log function is added when absent
	Registry    *Registry       // nil: DefaultRegistry()
	Publisher   Publisher       // where publish outputs and republish functions send (nil: outputs are dropped and logged)
	// Reingest, when set, takes the publish outputs of functions with reingest: true as new events.
	Reingest  func(ctx context.Context, events []*event.Event) error
	DataDir   string    // wasm compilation cache under DataDir/wasm-cache ("" = no cache)
	LogWriter io.Writer // the log function's output (default os.Stdout)
	Metrics   *metrics.Set
	Logger    *slog.Logger

	// ErrorFunction, when set, returns the error function the rule with this id names ("" for
	// none): it receives a copy of each event that one of the rule's functions dead-letters.
	ErrorFunction func(rule string) string
}

// Dispatcher feeds every configured function its queue. Guarantees: every event in a function's
// queue is invoked at least once (across restarts too: storage keeps it until acknowledged),
// acknowledged only after the function succeeded, or moved to the function's dead letters with
// the attempts and the last error; events of one subject are never in two batches in flight at
// once, and are handed over in commit order. One function's failures never block another's.
type Dispatcher struct {
	opts    Options
	store   storage.Backend
	logger  *slog.Logger
	metrics *metrics.Set
	fns     map[string]*function
	order   []*function

	startOnce sync.Once
	stopOnce  sync.Once
	started   atomic.Bool
	stopping  atomic.Bool
	stopCh    chan struct{}
	baseCtx   context.Context
	cancel    context.CancelFunc
	loops     sync.WaitGroup
}

// NewDispatcher validates the definitions and builds every function's invoker (compiling wasm
// modules). Nothing is delivered before Start.
func NewDispatcher(opts Options) (*Dispatcher, error) {
	if opts.Store == nil {
		return nil, fmt.Errorf("creating dispatcher: %w: no store", ErrInvalidConfig)
	}
	if opts.Registry == nil {
		opts.Registry = DefaultRegistry()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.LogWriter == nil {
		opts.LogWriter = os.Stdout
	}
	if err := validateDefinitions(opts.Definitions, opts.Registry); err != nil {
		return nil, err
	}
	defs := append([]Definition(nil), opts.Definitions...)
	hasLog := false
	for _, d := range defs {
		hasLog = hasLog || d.Name == LogFunction
	}
	if !hasLog {
		defs = append(defs, Definition{Name: LogFunction, Type: TypeLog})
	}
	d := &Dispatcher{
		opts:    opts,
		store:   opts.Store,
		logger:  opts.Logger,
		metrics: opts.Metrics,
		fns:     make(map[string]*function, len(defs)),
		stopCh:  make(chan struct{}),
	}
	d.baseCtx, d.cancel = context.WithCancel(context.Background())
	env := Env{Publisher: opts.Publisher, DataDir: opts.DataDir, LogWriter: opts.LogWriter, Logger: opts.Logger}
	for _, def := range defs {
		def = def.WithDefaults()
		inv, err := opts.Registry.New(def, env)
		if err != nil {
			d.closeInvokers()
			return nil, err
		}
		f := newFunction(d, def, inv)
		d.fns[def.Name] = f
		d.order = append(d.order, f)
	}
	sort.Slice(d.order, func(i, j int) bool { return d.order[i].name < d.order[j].name })
	return d, nil
}

// Known reports whether a function with this name exists ("log" always does).
func (d *Dispatcher) Known(name string) bool {
	_, ok := d.fns[name]
	return ok
}

// KnownIn returns the Known of a dispatcher built from defs, before it is built (rules are
// compiled against it, and the dispatcher is built after them).
func KnownIn(defs []Definition) func(name string) bool {
	names := map[string]bool{LogFunction: true}
	for _, d := range defs {
		names[d.Name] = true
	}
	return func(name string) bool { return names[name] }
}

// removed lists the functions that still have queued events or dead letters in storage but are
// no longer configured.
func (d *Dispatcher) removed() []FunctionStats {
	var out []FunctionStats
	for _, name := range d.store.Functions() {
		if d.Known(name) {
			continue
		}
		if q, dl := d.store.QueueDepth(name), d.store.DeadLetterDepth(name); q > 0 || dl > 0 {
			out = append(out, FunctionStats{Name: name, State: "removed", QueueDepth: q, DeadLetters: dl})
		}
	}
	return out
}

// Start registers the store's commit hook and starts every function's loop, which first
// catches up with what storage holds for it.
func (d *Dispatcher) Start() error {
	if d.stopping.Load() {
		return ErrStopped
	}
	d.startOnce.Do(func() {
		d.started.Store(true)
		for _, r := range d.removed() {
			d.logger.Warn("events wait for a function that is no longer configured: they keep the log from shrinking; "+
				"add the function back to deliver them, or drop them with DELETE /admin/v1/functions/"+r.Name+"/queue",
				"function", r.Name, "queued", r.QueueDepth, "dead_letters", r.DeadLetters)
		}
		d.store.SetOnCommit(d.onCommit)
		for _, f := range d.order {
			d.loops.Add(1)
			go f.loop()
		}
	})
	return nil
}

// Stop stops taking new batches and waits for in-flight ones to finish, until ctx ends, when
// it cancels them (their events stay queued in storage and are delivered after a restart).
func (d *Dispatcher) Stop(ctx context.Context) error {
	var err error
	d.stopOnce.Do(func() {
		d.stopping.Store(true)
		if d.started.Load() {
			d.store.SetOnCommit(nil)
		}
		close(d.stopCh)
		done := make(chan struct{})
		go func() { d.loops.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			d.cancel()
			<-done
			err = fmt.Errorf("stopping functions: %w", ctx.Err())
		}
		d.cancel()
		d.closeInvokers()
	})
	return err
}

func (d *Dispatcher) closeInvokers() {
	for _, f := range d.fns {
		if c, ok := f.inv.(io.Closer); ok {
			if err := c.Close(); err != nil {
				d.logger.Warn("closing function", "function", f.name, "err", err)
			}
		}
	}
}

// onCommit is the store's hot-tail hook: it hands each function its new items without blocking.
func (d *Dispatcher) onCommit(committed []*storage.Entry) {
	if d.stopping.Load() {
		return
	}
	for _, e := range committed {
		for _, t := range e.Targets {
			if f := d.fns[t.Function]; f != nil {
				f.offer(storage.ItemFromEntry(e, t))
			}
		}
	}
	for _, f := range d.order {
		if f.offered.Swap(false) {
			f.signal()
		}
	}
}

// replay moves dead letters back to the queue and hands them to the function's loop.
func (d *Dispatcher) replay(name string, seqs []uint64) (int, error) {
	f := d.fns[name]
	if f == nil {
		return 0, fmt.Errorf("replaying %q: %w", name, ErrUnknownFunction)
	}
	items, err := d.store.Replay(name, seqs)
	if err != nil {
		return 0, fmt.Errorf("replaying %q: %w", name, err)
	}
	f.mu.Lock()
	for _, it := range items {
		if it.Seq != 0 { // Seq 0: back on the shared queue, it arrives through it (Backend.Replay)
			f.injected = append(f.injected, it)
		}
	}
	f.mu.Unlock()
	f.signal()
	return len(items), nil
}

// errString returns err's text, or "".
func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

var errNotAcked = errors.New("function reported the event as failed")
