package functions

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
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
	benchHotTail(b, st, benchEntries(b.N, 1000))
}

func benchHotTail(b *testing.B, st *storage.Store, entries []*storage.Entry) {
	var count atomic.Int64
	d, err := NewDispatcher(Options{Store: st, Registry: noopRegistry(&count), LogWriter: io.Discard, Logger: quietLogger(),
		Definitions: []Definition{{Name: "noop", Type: "noop", Batch: BatchPolicy{MaxEvents: 100, MaxWait: time.Millisecond}}}})
	if err != nil {
		b.Fatal(err)
	}
	d.Start()
	defer d.Stop(context.Background())
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU()
	for i := 0; i < b.N; i += 100 {
		if err := st.Append(context.Background(), entries[i:min(i+100, b.N)]); err != nil {
			b.Fatal(err)
		}
	}
	for count.Load() < int64(b.N) || st.QueueDepth("noop") > 0 {
		time.Sleep(100 * time.Microsecond)
	}
	b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/event")
}

// BenchmarkDispatcherHotTailFate is BenchmarkDispatcherHotTail with fate records off
// (storage.fate_ttl 0) and on, in one run, for events that get their ids from the log (as most
// do: no fate index) and events that carry their own (one index entry each).
func BenchmarkDispatcherHotTailFate(b *testing.B) {
	for _, senderIDs := range []bool{false, true} {
		for _, fate := range []bool{false, true} {
			ids := map[bool]string{false: "log", true: "sender"}[senderIDs]
			b.Run(fmt.Sprintf("ids=%s/fate=%v", ids, fate), func(b *testing.B) {
				ttl := time.Duration(-1)
				if fate {
					ttl = 24 * time.Hour
				}
				st, err := storage.Open(storage.Options{InMemory: true, Logger: quietLogger(), FateTTL: ttl})
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				entries := benchEntries(b.N, 1000)
				if !senderIDs {
					for _, e := range entries {
						e.Event.ID = ""
					}
				}
				benchHotTail(b, st, entries)
			})
		}
	}
}

// BenchmarkDispatcherPeerStoreOnly is the peer of BenchmarkDispatcherHotTail: the same appends
// of 100 events and one ack per 100, done directly on the store with no dispatcher. The
// difference between the two is the dispatcher's own cost per event.
func BenchmarkDispatcherPeerStoreOnly(b *testing.B) {
	st := openStore(b, "")
	defer st.Close()
	entries := benchEntries(b.N, 1000)
	seqs := make([]uint64, 0, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		batch := entries[i:min(i+100, b.N)]
		if err := st.Append(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		seqs = seqs[:0]
		for _, e := range batch {
			seqs = append(seqs, e.Seq)
		}
		if err := st.Ack("noop", seqs...); err != nil {
			b.Fatal(err)
		}
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

// BenchmarkAppendCloudEventsMQTT100: a batch of 100 events as the broker stores an MQTT
// publish (protocol, QoS, retain flag, the client id in the metadata).
func BenchmarkAppendCloudEventsMQTT100(b *testing.B) {
	items := thresholdItems(100, func(i int) int { return i })
	for i := range items {
		e := items[i].Event
		e.Protocol, e.QoS = event.ProtocolMQTT, 1
		e.Meta = map[string]string{metaClientID: "dev" + strconv.Itoa(i)}
	}
	batch := &Batch{Function: "f", Items: items}
	buf := AppendCloudEvents(nil, batch)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendCloudEvents(buf[:0], batch)
	}
}

// WASM benchmarks: reactor (pooled instances, the default build) against command (one
// instance per batch) as the peer. Per op = one batch; ns/event divides by the batch size.

func benchWASMInvoke(b *testing.B, mod string, n int) {
	def := Definition{Name: "threshold", Type: TypeWASM, Module: mod, Env: map[string]string{"THRESHOLD": "50"}, Concurrency: 1}
	w := newTestWASM(b, def, nil)
	batch := &Batch{Function: "threshold", Items: thresholdItems(n, func(i int) int { return i })}
	if _, err := w.Invoke(context.Background(), batch); err != nil { // warm: started, first batch served
		b.Fatal(err)
	}
	b.SetBytes(int64(len(AppendCloudEvents(nil, batch))))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := w.Invoke(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*max(n, 1)), "ns/event")
}

// benchWASMStart is the time to start one pooled instance: instantiate, plus _initialize for a
// reactor (the Go runtime and package init); a command instance starts its runtime per batch.
func benchWASMStart(b *testing.B, mod string) {
	w := newTestWASM(b, Definition{Name: "threshold", Type: TypeWASM, Module: mod, Concurrency: 1}, nil)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if w.abi == abiReactor {
			inst, err := w.startReactor(ctx)
			if err != nil {
				b.Fatal(err)
			}
			inst.mod.Close(ctx)
			continue
		}
		inst, err := w.instantiate(ctx)
		if err != nil {
			b.Fatal(err)
		}
		inst.mod.Close(ctx)
	}
}

// trivialReactor answers every batch with success (no JSON decoding in the guest): the host's
// own overhead per call (encode the batch, alloc, copy, handle, read the answer).
var trivialReactor = asmModule{memPages: 1, funcs: []asmFunc{
	{export: exportAlloc, params: []byte{wI32}, results: []byte{wI32}, body: opI32(batchAt)},
	{export: exportHandle, params: []byte{wI32, wI32}, results: []byte{wI64}, body: opI64(0)},
}}

func writeBenchModule(b *testing.B, code []byte) string {
	p := filepath.Join(b.TempDir(), "m.wasm")
	if err := os.WriteFile(p, code, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkWASMReactorTrivial1: call overhead per batch of one event, host side only.
func BenchmarkWASMReactorTrivial1(b *testing.B) {
	benchWASMInvoke(b, writeBenchModule(b, trivialReactor.bytes()), 1)
}

// BenchmarkWASMReactorThreshold1: call overhead per batch of one, with the Go sdk decoding it.
func BenchmarkWASMReactorThreshold1(b *testing.B) { benchWASMInvoke(b, thresholdModule(b), 1) }

// BenchmarkWASMReactorThreshold100: cost per event of the threshold example at batches of 100
// (half of them alerts).
func BenchmarkWASMReactorThreshold100(b *testing.B) { benchWASMInvoke(b, thresholdModule(b), 100) }

// BenchmarkWASMReactorStart: time to start one pooled reactor instance.
func BenchmarkWASMReactorStart(b *testing.B) { benchWASMStart(b, thresholdModule(b)) }

// BenchmarkWASMCommandThreshold1 is the peer of ReactorThreshold1: a command module, one
// instance (one Go runtime start) per batch.
func BenchmarkWASMCommandThreshold1(b *testing.B) { benchWASMInvoke(b, thresholdCommandModule(b), 1) }

// BenchmarkWASMCommandThreshold100 is the peer of ReactorThreshold100.
func BenchmarkWASMCommandThreshold100(b *testing.B) {
	benchWASMInvoke(b, thresholdCommandModule(b), 100)
}

// BenchmarkWASMCommandStart is the peer of ReactorStart: instantiate a command (not run it).
func BenchmarkWASMCommandStart(b *testing.B) { benchWASMStart(b, thresholdCommandModule(b)) }

// processCPU is the CPU time the whole test process used so far (user + system): less
// disturbed by other load on the machine than ns/op.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
