package functions

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// goModule is examples/functions/threshold built for wasip1 once per test binary run.
type goModule struct {
	once sync.Once
	path string
	err  error
}

var (
	thresholdReactor, thresholdCommand goModule
	wasmDirOnce                        sync.Once
	wasmDir                            string
	wasmDirErr                         error
)

// thresholdModule builds examples/functions/threshold as a reactor, as the Makefile does:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o threshold.wasm ./examples/functions/threshold
//
// Its compilation cache (sharedDataDir()/wasm-cache) is shared by the tests, so wazero compiles
// it once per run.
func thresholdModule(t testing.TB) string {
	return buildThreshold(t, &thresholdReactor, "threshold.wasm", "-buildmode=c-shared")
}

// thresholdCommandModule builds the same example as a WASI command (no -buildmode).
func thresholdCommandModule(t testing.TB) string {
	return buildThreshold(t, &thresholdCommand, "threshold-command.wasm")
}

func buildThreshold(t testing.TB, m *goModule, file string, flags ...string) string {
	t.Helper()
	if raceEnabled {
		t.Skip("compiling a Go-built wasm module under -race takes too long; run without -race")
	}
	dir := sharedDataDir()
	if wasmDirErr != nil {
		t.Fatal(wasmDirErr)
	}
	m.once.Do(func() {
		m.path = filepath.Join(dir, file)
		args := append([]string{"build"}, flags...)
		args = append(args, "-o", m.path, "../examples/functions/threshold")
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
		if out, err := cmd.CombinedOutput(); err != nil {
			m.err = errors.New(string(out))
		}
	})
	if m.err != nil {
		t.Fatalf("building the threshold example: %v", m.err)
	}
	return m.path
}

// sharedDataDir is a data dir shared by the tests of one run (modules and compilation cache).
func sharedDataDir() string {
	wasmDirOnce.Do(func() { wasmDir, wasmDirErr = os.MkdirTemp("", "fleetgate-wasm-") })
	return wasmDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if wasmDir != "" {
		os.RemoveAll(wasmDir)
	}
	os.Exit(code)
}

// Hand-assembled WASI-less command modules: memory + _start doing `unreachable` or `loop br 0`.
var (
	trapModule = []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		1, 4, 1, 0x60, 0, 0, // type () -> ()
		3, 2, 1, 0, // one function of type 0
		5, 3, 1, 0, 1, // one memory, min 1 page
		7, 19, 2, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0, 6, '_', 's', 't', 'a', 'r', 't', 0, 0,
		10, 5, 1, 3, 0, 0x00, 0x0b} // unreachable
	loopModule = []byte{0, 'a', 's', 'm', 1, 0, 0, 0,
		1, 4, 1, 0x60, 0, 0,
		3, 2, 1, 0,
		5, 3, 1, 0, 1,
		7, 19, 2, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0, 6, '_', 's', 't', 'a', 'r', 't', 0, 0,
		10, 9, 1, 7, 0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b} // loop br 0 end
)

// A tiny wasm assembler for reactor test modules.

const (
	wI32 = 0x7f
	wI64 = 0x7e
)

// wasm instructions used below.
var (
	opUnreachable = []byte{0x00}
	opLoopForever = []byte{0x03, 0x40, 0x0c, 0x00, 0x0b} // loop br 0 end
	opDrop        = []byte{0x1a}
)

func opI32(v int32) []byte      { return append([]byte{0x41}, sleb(int64(v))...) }
func opI64(v int64) []byte      { return append([]byte{0x42}, sleb(v)...) }
func opLocalGet(i byte) []byte  { return []byte{0x20, i} }
func opGlobalGet(i byte) []byte { return []byte{0x23, i} }
func opGlobalSet(i byte) []byte { return []byte{0x24, i} }
func opCall(i byte) []byte      { return []byte{0x10, i} }

// opIf runs then when the i32 on the stack is not zero.
func opIf(then ...[]byte) []byte {
	b := []byte{0x04, 0x40}
	for _, t := range then {
		b = append(b, t...)
	}
	return append(b, 0x0b)
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			c |= 0x80
		}
		b = append(b, c)
		if v == 0 {
			return b
		}
	}
}

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		done := (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0)
		if !done {
			c |= 0x80
		}
		b = append(b, c)
		if done {
			return b
		}
	}
}

func wname(s string) []byte { return append(uleb(uint64(len(s))), s...) }

func vec(n int, items ...[]byte) []byte { return cat(append([][]byte{uleb(uint64(n))}, items...)...) }

type asmFunc struct {
	export          string // "" = not exported
	params, results []byte
	body            []byte // without the final end
}

type asmData struct {
	offset int32
	bytes  []byte
}

type asmModule struct {
	fdWrite  bool   // import wasi_snapshot_preview1.fd_write as function 0
	memPages uint32 // one exported memory "memory" (if > 0)
	globals  int    // mutable i32 globals, zero
	funcs    []asmFunc
	data     []asmData
}

func (m asmModule) bytes() []byte {
	section := func(id byte, body []byte) []byte { return cat([]byte{id}, uleb(uint64(len(body))), body) }
	out := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	var types [][]byte
	imported := 0
	if m.fdWrite {
		types = append(types, cat([]byte{0x60}, vec(4, []byte{wI32, wI32, wI32, wI32}), vec(1, []byte{wI32})))
		imported = 1
	}
	for _, f := range m.funcs {
		types = append(types, cat([]byte{0x60}, vec(len(f.params), f.params), vec(len(f.results), f.results)))
	}
	out = append(out, section(1, vec(len(types), types...))...)
	if m.fdWrite {
		out = append(out, section(2, vec(1, wname("wasi_snapshot_preview1"), wname("fd_write"), []byte{0x00, 0}))...)
	}
	var fidx [][]byte
	for i := range m.funcs {
		fidx = append(fidx, uleb(uint64(i+imported)))
	}
	out = append(out, section(3, vec(len(fidx), fidx...))...)
	if m.memPages > 0 {
		out = append(out, section(5, vec(1, []byte{0x00}, uleb(uint64(m.memPages))))...)
	}
	if m.globals > 0 {
		var gs [][]byte
		for range m.globals {
			gs = append(gs, cat([]byte{wI32, 0x01}, opI32(0), []byte{0x0b}))
		}
		out = append(out, section(6, vec(len(gs), gs...))...)
	}
	var exports [][]byte
	if m.memPages > 0 {
		exports = append(exports, cat(wname("memory"), []byte{0x02, 0}))
	}
	for i, f := range m.funcs {
		if f.export != "" {
			exports = append(exports, cat(wname(f.export), []byte{0x00}, uleb(uint64(i+imported))))
		}
	}
	out = append(out, section(7, vec(len(exports), exports...))...)
	var bodies [][]byte
	for _, f := range m.funcs {
		body := cat(vec(0), f.body, []byte{0x0b})
		bodies = append(bodies, cat(uleb(uint64(len(body))), body))
	}
	out = append(out, section(10, vec(len(bodies), bodies...))...)
	if len(m.data) > 0 {
		var ds [][]byte
		for _, d := range m.data {
			ds = append(ds, cat([]byte{0x00}, opI32(d.offset), []byte{0x0b}, vec(len(d.bytes), d.bytes)))
		}
		out = append(out, section(11, vec(len(ds), ds...))...)
	}
	return out
}

// Layout of the reactor test modules' memory.
const (
	answerAt  = 1024 // `{"failed":["0"]}`
	answerLen = 16
	digitAt   = answerAt + 12 // the 0
	batchAt   = 2048          // where fleetgate_alloc puts every batch
	iovecAt   = 512           // fd_write's iovec
	helloAt   = 600           // "hello from wasm\n"
)

// bigBatch is the size (bytes of encoded batch) above which a reactor test module misbehaves.
const bigBatch = 2000

// counterReactor is a reactor whose fleetgate_handle counts its calls in a global and answers
// {"failed":["N"]} with N the count ('0'+count: 1..9, then ':' for 10 and on): the answer tells which call of which instance it was.
// Batches above bigBatch bytes first run onBig (e.g. a trap); prefix runs on every call.
func counterReactor(onBig, prefix []byte, fdWrite bool) []byte {
	m := asmModule{
		fdWrite:  fdWrite,
		memPages: 1,
		globals:  1,
		funcs: []asmFunc{
			{export: exportAlloc, params: []byte{wI32}, results: []byte{wI32}, body: opI32(batchAt)},
			{export: exportHandle, params: []byte{wI32, wI32}, results: []byte{wI64}, body: cat(
				prefix,
				opLocalGet(1), opI32(bigBatch), []byte{0x4b}, opIf(onBig), // len > bigBatch (i32.gt_u)
				opGlobalGet(0), opI32(1), []byte{0x6a}, opGlobalSet(0), // count++
				opI32(digitAt), opGlobalGet(0), opI32('0'), []byte{0x6a}, []byte{0x3a, 0, 0}, // i32.store8
				opI64(answerAt<<32|answerLen),
			)},
			{export: "_initialize"},
		},
		data: []asmData{{answerAt, []byte(`{"failed":["0"]}`)}},
	}
	if fdWrite {
		iov := binary.LittleEndian.AppendUint32(nil, helloAt)
		iov = binary.LittleEndian.AppendUint32(iov, uint32(len("hello from wasm\n")))
		m.data = append(m.data, asmData{iovecAt, iov}, asmData{helloAt, []byte("hello from wasm\n")})
	}
	return m.bytes()
}

// printHello writes "hello from wasm\n" to stdout (fd_write(1, iovec, 1, nwritten)).
var printHello = cat(opI32(1), opI32(iovecAt), opI32(1), opI32(iovecAt+8), opCall(0), opDrop)

// growMemory grows memory by 64 pages (4 MiB) and traps when it cannot, as a Go runtime out of
// memory does.
var growMemory = cat(opI32(64), []byte{0x40, 0x00}, opI32(-1), []byte{0x46}, opIf(opUnreachable))

func writeModule(t *testing.T, b []byte) string {
	p := filepath.Join(t.TempDir(), "m.wasm")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// itemTime is the time of every test item: fixed, with all nine fraction digits, so that a
// batch of n items always encodes to the same length (RFC 3339 drops trailing zeros).
var itemTime = time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)

func thresholdItems(n int, temp func(i int) int) []storage.Item {
	items := make([]storage.Item, n)
	for i := range items {
		data := []byte(`{"temp":` + strconv.Itoa(temp(i)) + `,"unit":"C"}`)
		items[i] = storage.Item{Seq: uint64(i + 1), Function: "threshold", Rule: "hot", Data: data, Event: &event.Event{
			ID: event.NewID(), Source: "mqtt://dev", Type: "fleetgate.mqtt.publish", Subject: "dev" + strconv.Itoa(i),
			Time: itemTime, ContentType: "application/json", Data: data, Topic: "devices/dev" + strconv.Itoa(i) + "/telemetry",
		}}
	}
	return items
}

func newTestWASM(t testing.TB, def Definition, logger *slog.Logger) *wasmInvoker {
	t.Helper()
	if def.Type == "" {
		def.Type = TypeWASM
	}
	if logger == nil {
		logger = quietLogger()
	}
	inv, err := newWASMInvoker(def.WithDefaults(), Env{Logger: logger, DataDir: sharedDataDir()})
	if err != nil {
		t.Fatal(err)
	}
	w := inv.(*wasmInvoker)
	t.Cleanup(func() { w.Close() })
	return w
}

// invokeN invokes w with a batch of n threshold items.
func invokeN(w *wasmInvoker, n int) (Result, error) {
	return w.Invoke(context.Background(), &Batch{Function: w.name, Items: thresholdItems(n, func(i int) int { return i })})
}

// wantCount asserts the answer of counterReactor: the instance's call count.
func wantCount(t *testing.T, res Result, err error, want int) {
	t.Helper()
	if err != nil {
		t.Fatalf("want call %d of an instance, got error %v", want, err)
	}
	if len(res.Failed) != 1 || res.Failed[0] != strconv.Itoa(want) {
		t.Fatalf("want call %d of an instance, got failed=%v", want, res.Failed)
	}
}

func TestThresholdExampleThroughDispatcher(t *testing.T) {
	mod := thresholdModule(t)
	st := openStore(t, t.TempDir())
	defer st.Close()
	pub := &capturePublisher{}
	dataDir := sharedDataDir()
	startDispatcher(t, Options{Store: st, Publisher: pub, DataDir: dataDir, Definitions: []Definition{{
		Name: "threshold", Type: TypeWASM, Module: mod, Env: map[string]string{"THRESHOLD": "50"},
		Batch: BatchPolicy{MaxWait: time.Millisecond},
	}}})
	mk := func(sub string, temp int) *storage.Entry {
		return &storage.Entry{Event: &event.Event{ID: event.NewID(), Subject: sub, Time: time.Now(),
			ContentType: "application/json", Data: []byte(`{"temp":` + strconv.Itoa(temp) + `,"id":"` + sub + `"}`),
			Topic: "devices/" + sub + "/telemetry"}, Targets: []storage.Target{{Function: "threshold", Rule: "t"}}}
	}
	// Two appends: the second batch is served by the pooled instances, not a fresh start.
	for _, entries := range [][]*storage.Entry{{mk("d1", 20), mk("d2", 75), mk("d3", 50)}, {mk("d4", 51), mk("d5", 49)}} {
		if err := st.Append(context.Background(), entries); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "queue drained", func() bool { return st.QueueDepth("threshold") == 0 })
	}
	msgs := pub.all()
	if len(msgs) != 2 || msgs[0].Topic != "devices/d2/alerts" || msgs[0].QoS != 1 || msgs[1].Topic != "devices/d4/alerts" {
		t.Fatalf("published %+v, want alerts to devices/d2/alerts and devices/d4/alerts", msgs)
	}
	var got map[string]any
	if err := json.Unmarshal(msgs[0].Payload, &got); err != nil {
		t.Fatal(err)
	}
	if got["alert"] != "overheat" || got["temp"] != 75.0 || got["id"] != "d2" {
		t.Fatalf("alert payload = %v", got)
	}
	if entries, _ := os.ReadDir(filepath.Join(dataDir, "wasm-cache")); len(entries) == 0 {
		t.Fatal("no compilation cache written under DataDir/wasm-cache")
	}
}

func TestWASMThresholdReactorDirect(t *testing.T) {
	mod := thresholdModule(t)
	bad := newTestWASM(t, Definition{Name: "threshold", Module: mod, Env: map[string]string{"THRESHOLD": "x"}, Concurrency: 1}, nil)
	if bad.abi != abiReactor {
		t.Fatalf("abi = %v, want reactor", bad.abi)
	}
	for range 2 { // the handler's error fails the batch but keeps the instance
		_, err := invokeN(bad, 2)
		if !errors.Is(err, ErrRetryable) || !strings.Contains(err.Error(), `THRESHOLD="x" is not a number`) {
			t.Fatalf("err = %v, want the handler's error", err)
		}
	}
	if len(bad.slots) != 1 || len(bad.idle) != 1 {
		t.Fatalf("live instances %d, idle %d: a handler error must not discard the instance", len(bad.slots), len(bad.idle))
	}
	w := newTestWASM(t, Definition{Name: "threshold", Module: mod, Env: map[string]string{"THRESHOLD": "10"}}, nil)
	for round := range 5 {
		res, err := w.Invoke(context.Background(), &Batch{Function: "threshold", Items: thresholdItems(4, func(i int) int { return i * 10 })})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Publish) != 2 || res.Publish[0].Topic != "devices/dev2/alerts" || res.Publish[1].Topic != "devices/dev3/alerts" {
			t.Fatalf("round %d: publish = %+v", round, res.Publish)
		}
	}
	for _, n := range []int{4, 80, 4, 120} { // the guest buffer is reused, then grown
		res, err := w.Invoke(context.Background(), &Batch{Function: "threshold", Items: thresholdItems(n, func(i int) int { return i % 20 })})
		if want := n/20*9 + max(n%20-11, 0); err != nil || len(res.Publish) != want { // 11..19 of every 20 are above 10
			t.Fatalf("batch of %d: %d outputs (want %d), %v", n, len(res.Publish), want, err)
		}
	}
	res, err := invokeN(w, 0) // an empty batch is valid JSON ([]) and yields nothing
	if err != nil || len(res.Publish)+len(res.Failed) != 0 {
		t.Fatalf("empty batch: %+v, %v", res, err)
	}
}

func TestWASMThresholdCommandStillWorks(t *testing.T) {
	mod := thresholdCommandModule(t)
	bad := newTestWASM(t, Definition{Name: "threshold", Module: mod, Env: map[string]string{"THRESHOLD": "x"}, Concurrency: 1}, nil)
	if bad.abi != abiCommand {
		t.Fatalf("abi = %v, want command", bad.abi)
	}
	_, err := invokeN(bad, 2)
	if err == nil || !strings.Contains(err.Error(), "exited with status 1") || !strings.Contains(err.Error(), "THRESHOLD") {
		t.Fatalf("err = %v, want exit status 1 with the module's stderr", err)
	}
	w := newTestWASM(t, Definition{Name: "threshold", Module: mod, Env: map[string]string{"THRESHOLD": "10"}}, nil)
	for round := range 3 {
		res, err := w.Invoke(context.Background(), &Batch{Function: "threshold", Items: thresholdItems(4, func(i int) int { return i * 10 })})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Publish) != 2 || res.Publish[0].Topic != "devices/dev2/alerts" {
			t.Fatalf("round %d: publish = %+v", round, res.Publish)
		}
	}
}

func TestWASMThresholdMemoryCapRefusedAtLoad(t *testing.T) {
	mod := thresholdModule(t)
	def := Definition{Name: "threshold", Type: TypeWASM, Module: mod, MemoryLimitMB: 1}.WithDefaults()
	_, err := newWASMInvoker(def, Env{Logger: quietLogger(), DataDir: sharedDataDir()})
	if err == nil || !strings.Contains(err.Error(), "memory_limit_mb 1") {
		t.Fatalf("err = %v, want a Go module refused under a 1 MiB memory cap", err)
	}
}

func TestWASMThresholdMemoryCapFailsOnlyItsBatch(t *testing.T) {
	w := newTestWASM(t, Definition{Name: "threshold", Module: thresholdModule(t), MemoryLimitMB: 5, Concurrency: 1}, nil)
	if _, err := invokeN(w, 1); err != nil {
		t.Fatal(err)
	}
	_, err := invokeN(w, 5000) // 1.5 MB of batch: with its copies and outputs, more than 5 MiB
	t.Logf("out of memory: %v", err)
	if !errors.Is(err, ErrRetryable) || !strings.Contains(err.Error(), "fatal error: out of memory") {
		t.Fatalf("err = %v, want the Go runtime's out of memory", err)
	}
	res, err := w.Invoke(context.Background(), &Batch{Function: "threshold", Items: thresholdItems(2, func(i int) int { return 60 + i })})
	if err != nil || len(res.Publish) != 2 {
		t.Fatalf("next batch on a fresh instance: %+v, %v", res, err)
	}
}

func TestWASMReactorReusesInstances(t *testing.T) {
	w := newTestWASM(t, Definition{Name: "count", Module: writeModule(t, counterReactor(nil, nil, false)), Concurrency: 1}, nil)
	if w.abi != abiReactor {
		t.Fatalf("abi = %v, want reactor", w.abi)
	}
	for call := 1; call <= 5; call++ {
		res, err := invokeN(w, 1)
		wantCount(t, res, err, call) // the same instance, its global counting
	}
}

func TestWASMReactorAllocOnlyForBiggerBatches(t *testing.T) {
	// fleetgate_alloc counts its calls; fleetgate_handle answers {"failed":["<that count>"]}.
	mod := asmModule{memPages: 1, globals: 1, funcs: []asmFunc{
		{export: exportAlloc, params: []byte{wI32}, results: []byte{wI32}, body: cat(
			opGlobalGet(0), opI32(1), []byte{0x6a}, opGlobalSet(0), opI32(batchAt))},
		{export: exportHandle, params: []byte{wI32, wI32}, results: []byte{wI64}, body: cat(
			opI32(digitAt), opGlobalGet(0), opI32('0'), []byte{0x6a}, []byte{0x3a, 0, 0},
			opI64(answerAt<<32|answerLen))},
	}, data: []asmData{{answerAt, []byte(`{"failed":["0"]}`)}}}
	w := newTestWASM(t, Definition{Name: "allocs", Module: writeModule(t, mod.bytes()), Concurrency: 1}, nil)
	for i, c := range []struct{ events, allocs int }{{1, 1}, {1, 1}, {3, 2}, {2, 2}, {1, 2}, {4, 3}} {
		res, err := invokeN(w, c.events)
		if err != nil || len(res.Failed) != 1 || res.Failed[0] != strconv.Itoa(c.allocs) {
			t.Fatalf("batch %d of %d events: %+v, %v; want %d fleetgate_alloc calls so far", i, c.events, res, err, c.allocs)
		}
	}
}

func TestWASMReactorConcurrentBatchesStayWithinConcurrency(t *testing.T) {
	w := newTestWASM(t, Definition{Name: "count", Module: writeModule(t, counterReactor(nil, nil, false)), Concurrency: 3}, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 3*3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				res, err := invokeN(w, 1)
				if err == nil && len(res.Failed) != 1 {
					err = errors.New("unexpected answer")
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "pool warmed", func() bool { return len(w.idle) == 3 })
	if len(w.slots) != 3 {
		t.Fatalf("%d live instances, want 3 (the concurrency)", len(w.slots))
	}
	// Nine calls over three instances: one more call on each gives counts that sum to 9 + 3.
	sum := 0
	var insts []*reactorInstance
	for range 3 {
		inst, err := w.takeReactor(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, inst)
		res, err := w.callReactor(context.Background(), inst, &Batch{Items: thresholdItems(1, func(int) int { return 0 })})
		if err != nil {
			t.Fatal(err)
		}
		sum += int(res[12] - '0') // one instance may have served all nine: 10 is ':
	}
	for _, inst := range insts {
		w.idle <- inst
	}
	if sum != 12 {
		t.Fatalf("calls counted by the instances = %d, want 12", sum)
	}
}

// TestWASMReactorBrokenInstanceFailsOnlyItsBatch: a trap, a runaway loop and memory beyond the
// cap each fail their batch; the instance is discarded and the next batch runs on a fresh one.
func TestWASMReactorBrokenInstanceFailsOnlyItsBatch(t *testing.T) {
	cases := []struct {
		name    string
		onBig   []byte
		def     Definition
		wantErr string
	}{
		{"trap", opUnreachable, Definition{}, "unreachable"},
		{"runaway", opLoopForever, Definition{Timeout: 100 * time.Millisecond}, "timeout 100ms"},
		{"memory", growMemory, Definition{MemoryLimitMB: 2}, "unreachable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			def := c.def
			def.Name, def.Module, def.Concurrency = c.name, writeModule(t, counterReactor(c.onBig, nil, false)), 1
			w := newTestWASM(t, def, nil)
			for call := 1; call <= 2; call++ {
				res, err := invokeN(w, 1)
				wantCount(t, res, err, call)
			}
			start := time.Now()
			_, err := invokeN(w, 20) // above bigBatch bytes
			if !errors.Is(err, ErrRetryable) || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("big batch: err = %v, want a retryable failure with %q", err, c.wantErr)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("the failure took %v", d)
			}
			res, err := invokeN(w, 1)
			wantCount(t, res, err, 1) // a fresh instance
			res, err = invokeN(w, 1)
			wantCount(t, res, err, 2)
		})
	}
	// Under a cap with room for the growth, the same module serves the big batch.
	w := newTestWASM(t, Definition{Name: "roomy", Module: writeModule(t, counterReactor(growMemory, nil, false)), MemoryLimitMB: 8, Concurrency: 1}, nil)
	res, err := invokeN(w, 20)
	wantCount(t, res, err, 1)
}

func TestWASMReactorStdoutGoesToTheLog(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	w := newTestWASM(t, Definition{Name: "chatty", Module: writeModule(t, counterReactor(nil, printHello, true)), Concurrency: 1}, logger)
	res, err := invokeN(w, 1)
	wantCount(t, res, err, 1)
	out := logs.String()
	if !strings.Contains(out, "function=chatty") || !strings.Contains(out, "stream=stdout") || !strings.Contains(out, `line="hello from wasm"`) {
		t.Fatalf("log = %q, want the module's stdout line under the function's name", out)
	}
}

func TestWASMReactorBadABIRefusedAtLoad(t *testing.T) {
	alloc := asmFunc{export: exportAlloc, params: []byte{wI32}, results: []byte{wI32}, body: opI32(0)}
	handle := asmFunc{export: exportHandle, params: []byte{wI32, wI32}, results: []byte{wI64}, body: opI64(0)}
	wrongHandle := asmFunc{export: exportHandle, params: []byte{wI32}, results: []byte{wI32}, body: opI32(0)}
	cases := []struct {
		name string
		mod  asmModule
		want string
	}{
		{"nothing", asmModule{memPages: 1}, "exports neither _start"},
		{"no alloc", asmModule{memPages: 1, funcs: []asmFunc{handle}}, "no export fleetgate_alloc"},
		{"wrong type", asmModule{memPages: 1, funcs: []asmFunc{alloc, wrongHandle}}, "fleetgate_handle has type [i32] -> [i32], want [i32 i32] -> [i64]"},
		{"no memory", asmModule{funcs: []asmFunc{alloc, handle}}, "no exported memory"},
	}
	for _, c := range cases {
		def := Definition{Name: "bad", Type: TypeWASM, Module: writeModule(t, c.mod.bytes())}.WithDefaults()
		_, err := newWASMInvoker(def, Env{Logger: quietLogger()})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

func TestWASMReactorBadAnswers(t *testing.T) {
	answer := func(addr, size int64, data string) []byte {
		return asmModule{memPages: 1, funcs: []asmFunc{
			{export: exportAlloc, params: []byte{wI32}, results: []byte{wI32}, body: opI32(batchAt)},
			{export: exportHandle, params: []byte{wI32, wI32}, results: []byte{wI64}, body: opI64(addr<<32 | size)},
		}, data: []asmData{{answerAt, []byte(data)}}}.bytes()
	}
	cases := []struct {
		name string
		mod  []byte
		want string
	}{
		{"outside memory", answer(65000, 1000, ""), "outside its 65536 bytes of memory"},
		{"not json", answer(answerAt, 3, "bad"), "malformed function response"},
		{"error", answer(answerAt, 18, `{"error":"no way"}`), "the function failed the batch: no way"},
		{"bad topic", answer(answerAt, 33, `{"publish":[{"topic":"a/#"}]}    `), "bad topic"},
	}
	for _, c := range cases {
		w := newTestWASM(t, Definition{Name: "bad", Module: writeModule(t, c.mod), Concurrency: 1}, nil)
		_, err := invokeN(w, 1)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	// Alloc pointing outside memory fails the batch without touching memory.
	w := newTestWASM(t, Definition{Name: "bad", Module: writeModule(t, asmModule{memPages: 1, funcs: []asmFunc{
		{export: exportAlloc, params: []byte{wI32}, results: []byte{wI32}, body: opI32(65530)},
		{export: exportHandle, params: []byte{wI32, wI32}, results: []byte{wI64}, body: opI64(0)},
	}}.bytes()), Concurrency: 1}, nil)
	if _, err := invokeN(w, 1); !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "fleetgate_alloc") {
		t.Fatalf("err = %v, want fleetgate_alloc outside memory", err)
	}
}

func TestWASMTrapAndRunawayFailOnlyTheirBatch(t *testing.T) {
	st := openStore(t, t.TempDir())
	defer st.Close()
	alive := newFnServer(t, nil)
	retry := RetryPolicy{MaxAttempts: 2, InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond}
	var reactorTrap, reactorSpin []byte
	reactorTrap = counterReactor(opUnreachable, nil, false)
	reactorSpin = counterReactor(opLoopForever, nil, false)
	big := BatchPolicy{MaxEvents: 20, MaxWait: 50 * time.Millisecond} // batches of 20 are above bigBatch bytes
	d := startDispatcher(t, Options{Store: st, Definitions: []Definition{
		{Name: "trap", Type: TypeWASM, Module: writeModule(t, trapModule), Retry: retry},
		{Name: "spin", Type: TypeWASM, Module: writeModule(t, loopModule), Retry: retry, Timeout: 50 * time.Millisecond},
		{Name: "rtrap", Type: TypeWASM, Module: writeModule(t, reactorTrap), Retry: RetryPolicy{MaxAttempts: 1}, Batch: big},
		{Name: "rspin", Type: TypeWASM, Module: writeModule(t, reactorSpin), Retry: RetryPolicy{MaxAttempts: 1}, Batch: big, Timeout: 50 * time.Millisecond},
		httpDef("alive", alive.URL),
	}})
	appendEvents(t, st, "trap", 0, 2, 2)
	appendEvents(t, st, "spin", 0, 1, 1)
	appendEvents(t, st, "rtrap", 0, 20, 20)
	appendEvents(t, st, "rspin", 0, 20, 20)
	ids := appendEvents(t, st, "alive", 0, 5, 5)
	waitFor(t, 5*time.Second, "alive delivered", func() bool { return alive.delivered(ids) })
	waitFor(t, 10*time.Second, "trap dead-lettered", func() bool { return st.DeadLetterDepth("trap") == 2 })
	waitFor(t, 10*time.Second, "spin dead-lettered", func() bool { return st.DeadLetterDepth("spin") == 1 })
	// A reactor batch that fails is bisected; the halves (small batches) then succeed on fresh instances.
	waitFor(t, 10*time.Second, "reactor queues drained", func() bool {
		return st.QueueDepth("rtrap") == 0 && st.QueueDepth("rspin") == 0
	})
	for _, name := range []string{"rtrap", "rspin"} {
		s := statsOf(t, d, name)
		if s.Failures == 0 || s.Successes < 2 || s.DeadLetters != 0 {
			t.Errorf("%s: %+v, want the big batch failed and its halves delivered", name, s)
		}
	}
	l, _ := st.DeadLetters("trap", 0, 1)
	if !strings.Contains(l[0].Reason, "trapped") && !strings.Contains(l[0].Reason, "unreachable") {
		t.Errorf("trap reason = %q", l[0].Reason)
	}
	l, _ = st.DeadLetters("spin", 0, 1)
	if !strings.Contains(l[0].Reason, "timeout") && !strings.Contains(l[0].Reason, "deadline") {
		t.Errorf("spin reason = %q", l[0].Reason)
	}
}

// FuzzParseReactorAnswer: a reactor's answer is untrusted bytes from the module.
func FuzzParseReactorAnswer(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"error":"x"}`, `{"error":null,"failed":["a"]}`, `{"failed":["a"],"publish":[{"topic":"t","payload":{"a":1},"qos":1}]}`, `{"error":1}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReactorAnswer(b)
		if err != nil {
			if !errors.Is(err, ErrRetryable) && !errors.Is(err, ErrBadResponse) {
				t.Fatalf("error %v wraps neither ErrRetryable nor ErrBadResponse", err)
			}
			return
		}
		for _, o := range r.Publish {
			if o.Topic == "" || o.QoS > 2 {
				t.Fatalf("accepted output %+v", o)
			}
		}
	})
}
