package functions

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// noopRegistry has a type "noop" that counts events and succeeds.
func noopRegistry(count *atomic.Int64) *Registry {
	reg := DefaultRegistry()
	reg.Register("noop", func(Definition, Env) (Invoker, error) {
		return InvokerFunc(func(_ context.Context, b *Batch) (Result, error) {
			count.Add(int64(len(b.Items)))
			return Result{}, nil
		}), nil
	})
	return reg
}

func benchEntries(n, subjects int) []*storage.Entry {
	entries := make([]*storage.Entry, n)
	for i := range entries {
		sub := fmt.Sprintf("dev%d", i%subjects)
		entries[i] = &storage.Entry{Event: &event.Event{ID: event.NewID(), Subject: sub, Time: time.Now(),
			ContentType: "application/json", Data: []byte(`{"temp":21.5}`), Topic: "devices/" + sub + "/t"},
			Targets: []storage.Target{{Function: "noop", Rule: "r"}}}
	}
	return entries
}

// BenchmarkDispatcherHotTail: events appended (in-memory Badger, commits of 100) go through the
// hot tail to a no-op invoker at batches of 100 and are acknowledged. Per op = one event,
// including storage append and ack.
func BenchmarkDispatcherHotTail(b *testing.B) {
	st := openStore(b, "")
	defer st.Close()
	var count atomic.Int64
	d, err := NewDispatcher(Options{Store: st, Registry: noopRegistry(&count), LogWriter: io.Discard, Logger: quietLogger(),
		Definitions: []Definition{{Name: "noop", Type: "noop", Batch: BatchPolicy{MaxEvents: 100, MaxWait: time.Millisecond}}}})
	if err != nil {
		b.Fatal(err)
	}
	d.Start()
	defer d.Stop(context.Background())
	entries := benchEntries(b.N, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		if err := st.Append(context.Background(), entries[i:min(i+100, b.N)]); err != nil {
			b.Fatal(err)
		}
	}
	for count.Load() < int64(b.N) || st.QueueDepth("noop") > 0 {
		time.Sleep(100 * time.Microsecond)
	}
}

// BenchmarkDispatcherCatchUp: b.N events are already stored; the dispatcher reads them back,
// batches them by 100, invokes a no-op and acknowledges. Per op = one event; this is the
// dispatcher's own overhead (storage reads and acks included, no appends).
func BenchmarkDispatcherCatchUp(b *testing.B) {
	st := openStore(b, "")
	defer st.Close()
	entries := benchEntries(b.N, 1000)
	for i := 0; i < b.N; i += 1000 {
		if err := st.Append(context.Background(), entries[i:min(i+1000, b.N)]); err != nil {
			b.Fatal(err)
		}
	}
	var count atomic.Int64
	d, err := NewDispatcher(Options{Store: st, Registry: noopRegistry(&count), LogWriter: io.Discard, Logger: quietLogger(),
		Definitions: []Definition{{Name: "noop", Type: "noop", Batch: BatchPolicy{MaxEvents: 100, MaxWait: time.Millisecond}}}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	d.Start()
	for count.Load() < int64(b.N) || st.QueueDepth("noop") > 0 {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	d.Stop(context.Background())
}

func BenchmarkAppendCloudEvents100(b *testing.B) {
	items := thresholdItems(100, func(i int) int { return i })
	batch := &Batch{Function: "f", Items: items}
	buf := AppendCloudEvents(nil, batch)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendCloudEvents(buf[:0], batch)
	}
}

func benchWASM(b *testing.B, n int) {
	mod := thresholdModule(b)
	def := Definition{Name: "threshold", Type: TypeWASM, Module: mod, Env: map[string]string{"THRESHOLD": "50"}}.WithDefaults()
	inv, err := newWASMInvoker(def, Env{Logger: quietLogger(), DataDir: sharedDataDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer inv.(*wasmInvoker).Close()
	batch := &Batch{Function: "threshold", Items: thresholdItems(n, func(i int) int { return i })}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := inv.Invoke(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
}

// BenchmarkWASMThreshold1 is the call overhead of one batch (of one event).
func BenchmarkWASMThreshold1(b *testing.B) { benchWASM(b, 1) }

// BenchmarkWASMThreshold100 gives the cost per event at batches of 100 (half are alerts).
func BenchmarkWASMThreshold100(b *testing.B) { benchWASM(b, 100) }

// BenchmarkWASMInstantiate is the time to start one pooled instance (instantiate, not run).
func BenchmarkWASMInstantiate(b *testing.B) {
	mod := thresholdModule(b)
	def := Definition{Name: "threshold", Type: TypeWASM, Module: mod, Concurrency: 1}.WithDefaults()
	inv, err := newWASMInvoker(def, Env{Logger: quietLogger(), DataDir: sharedDataDir()})
	if err != nil {
		b.Fatal(err)
	}
	w := inv.(*wasmInvoker)
	defer w.Close()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		inst, err := w.instantiate(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		inst.mod.Close(context.Background())
	}
}
