package functions

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// The wasm ABIs (functions/README.md and package sdk document them for function authors).
//
// A module is compiled once per invoker (with a compilation cache under DataDir/wasm-cache) in
// a runtime whose memory limit is memory_limit_mb. Its ABI is told by its exports:
//
//   - Reactor (exports memory, fleetgate_alloc(i32) i32 and fleetgate_handle(i32, i32) i64, and
//     no _start; GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared): up to `concurrency`
//     live instances, each started once (_initialize) and then serving one batch at a time:
//     fleetgate_alloc(size) gives the address of a buffer for batches of up to size bytes
//     (valid until the next fleetgate_alloc; asked again only for a bigger batch),
//     fleetgate_handle(addr, len) returns answerAddr<<32 | answerLen. See invoker_wasm_reactor.go.
//   - Command (exports _start; plain GOOS=wasip1 GOARCH=wasm go build): one instance per batch,
//     the batch on stdin, the answer on stdout, exit status 0 for success.
//
// Either way the batch is exactly the JSON an http function receives (a CloudEvents 1.0 array)
// and the answer the JSON an http function answers with:
// {"failed":["id",...],"publish":[{"topic":"...","payload":...,"qos":1}]} (empty = success).
// The environment is the definition's env, the only argument the function's name, stdout and
// stderr (a command's stderr only) are logged line by line under the function's name. A trap,
// an exit, running past the timeout or past memory_limit_mb fails the whole batch (it is
// retried, then bisected, then dead-lettered) and the instance is discarded, never reused.

// wasmABI is how the gateway talks to a module.
type wasmABI int

const (
	abiCommand wasmABI = iota + 1
	abiReactor
)

func (a wasmABI) String() string {
	if a == abiReactor {
		return "reactor"
	}
	return "command"
}

// Reactor ABI export names.
const (
	exportAlloc  = "fleetgate_alloc"
	exportHandle = "fleetgate_handle"
	exportMemory = "memory"
)

// maxKeptBatchBuffer is the largest encoded-batch buffer a reactor instance keeps between batches.
const maxKeptBatchBuffer = 4 << 20

type wasmInvoker struct {
	name     string
	abi      wasmABI
	timeout  time.Duration
	logger   *slog.Logger
	rt       wazero.Runtime
	cache    wazero.CompilationCache
	compiled wazero.CompiledModule
	env      [][2]string

	mu      sync.Mutex
	closed  bool
	filling sync.WaitGroup

	// command: instantiated, not yet started instances.
	pool chan *wasmInstance

	// reactor: idle started instances; slots holds one token per live or starting instance.
	idle  chan *reactorInstance
	slots chan struct{}
}

var _ Invoker = (*wasmInvoker)(nil)

// wasmInstance is an instantiated, not yet started command module with its own stdio.
type wasmInstance struct {
	mod    api.Module
	stdin  bytes.Reader
	stdout limitedBuffer
	stderr *lineLogger
}

func newWASMInvoker(def Definition, env Env) (Invoker, error) {
	code, err := os.ReadFile(def.Module)
	if err != nil {
		return nil, fmt.Errorf("reading module: %w", err)
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.Default()
	}
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(uint32(def.MemoryLimitMB) * 16) // 64 KiB pages
	var cache wazero.CompilationCache
	if env.DataDir != "" {
		cache, err = wazero.NewCompilationCacheWithDir(filepath.Join(env.DataDir, "wasm-cache"))
		if err != nil {
			return nil, fmt.Errorf("opening compilation cache: %w", err)
		}
		cfg = cfg.WithCompilationCache(cache)
	}
	rt := wazero.NewRuntimeWithConfig(ctx, cfg)
	fail := func(err error) (Invoker, error) {
		rt.Close(ctx)
		if cache != nil {
			cache.Close(ctx)
		}
		return nil, err
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		return fail(fmt.Errorf("instantiating WASI: %w", err))
	}
	compiled, err := rt.CompileModule(ctx, code)
	if err != nil {
		return fail(fmt.Errorf("compiling %s (memory_limit_mb %d): %w", def.Module, def.MemoryLimitMB, err))
	}
	abi, err := detectABI(compiled)
	if err != nil {
		return fail(fmt.Errorf("module %s: %w", def.Module, err))
	}
	w := &wasmInvoker{
		name:     def.Name,
		abi:      abi,
		timeout:  def.Timeout,
		logger:   logger.With("function", def.Name),
		rt:       rt,
		cache:    cache,
		compiled: compiled,
	}
	keys := make([]string, 0, len(def.Env))
	for k := range def.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w.env = append(w.env, [2]string{k, def.Env[k]})
	}
	// Start one instance now so that a module that cannot even start fails at load; warm the
	// rest of the pool in the background.
	switch abi {
	case abiReactor:
		w.idle = make(chan *reactorInstance, def.Concurrency)
		w.slots = make(chan struct{}, def.Concurrency)
		w.slots <- struct{}{}
		inst, err := w.startReactor(ctx)
		if err != nil {
			return fail(err)
		}
		w.idle <- inst
		for i := 1; i < def.Concurrency; i++ {
			w.warm()
		}
	default:
		w.pool = make(chan *wasmInstance, def.Concurrency)
		inst, err := w.instantiate(ctx)
		if err != nil {
			return fail(err)
		}
		w.pool <- inst
		for i := 1; i < def.Concurrency; i++ {
			w.refill()
		}
	}
	return w, nil
}

// detectABI tells the module's ABI from its exports.
func detectABI(m wazero.CompiledModule) (wasmABI, error) {
	fns := m.ExportedFunctions()
	_, start := fns["_start"]
	alloc, hasAlloc := fns[exportAlloc]
	handle, hasHandle := fns[exportHandle]
	if start {
		// A command built with package sdk also exports the reactor functions, but calling
		// them is only valid in a reactor (a command's runtime is gone once _start returns).
		return abiCommand, nil
	}
	if !hasAlloc && !hasHandle {
		return 0, fmt.Errorf("%w: it exports neither _start (a WASI command: GOOS=wasip1 GOARCH=wasm go build) nor %s and %s (a reactor: add -buildmode=c-shared and call sdk.Register)", ErrInvalidConfig, exportHandle, exportAlloc)
	}
	var problems []string
	check := func(name string, ok bool, d api.FunctionDefinition, params, results []api.ValueType) {
		switch {
		case !ok:
			problems = append(problems, "no export "+name)
		case !slices.Equal(d.ParamTypes(), params) || !slices.Equal(d.ResultTypes(), results):
			problems = append(problems, fmt.Sprintf("%s has type %v -> %v, want %v -> %v", name,
				valueTypeNames(d.ParamTypes()), valueTypeNames(d.ResultTypes()), valueTypeNames(params), valueTypeNames(results)))
		}
	}
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	check(exportAlloc, hasAlloc, alloc, []api.ValueType{i32}, []api.ValueType{i32})
	check(exportHandle, hasHandle, handle, []api.ValueType{i32, i32}, []api.ValueType{i64})
	if _, ok := m.ExportedMemories()[exportMemory]; !ok {
		problems = append(problems, "no exported memory named "+exportMemory)
	}
	if len(problems) > 0 {
		return 0, fmt.Errorf("%w: reactor ABI: %s", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	return abiReactor, nil
}

func valueTypeNames(ts []api.ValueType) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = api.ValueTypeName(t)
	}
	return out
}

// moduleConfig is the configuration of every instance: the function's name as its only
// argument, its env, clocks, a cryptographic random source, and the given stdio.
func (w *wasmInvoker) moduleConfig() wazero.ModuleConfig {
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithArgs(w.name).
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().
		WithRandSource(cryptoRand{})
	for _, kv := range w.env {
		cfg = cfg.WithEnv(kv[0], kv[1])
	}
	return cfg
}

func (w *wasmInvoker) instantiate(ctx context.Context) (*wasmInstance, error) {
	inst := &wasmInstance{stderr: &lineLogger{logger: w.logger, stream: "stderr"}}
	inst.stdout.max = maxResponseBytes
	cfg := w.moduleConfig().
		WithStartFunctions(). // started per batch
		WithStdin(&inst.stdin).
		WithStdout(&inst.stdout).
		WithStderr(inst.stderr)
	mod, err := w.rt.InstantiateModule(ctx, w.compiled, cfg)
	if err != nil {
		return nil, fmt.Errorf("instantiating module: %w", err)
	}
	inst.mod = mod
	return inst, nil
}

// refill instantiates one command instance into the pool in the background, unless it is full
// or closed.
func (w *wasmInvoker) refill() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.filling.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.filling.Done()
		inst, err := w.instantiate(context.Background())
		if err != nil {
			w.logger.Warn("pre-instantiating wasm module", "err", err)
			return
		}
		select {
		case w.pool <- inst:
		default:
			inst.mod.Close(context.Background())
		}
	}()
}

// take returns a ready command instance: from the pool, or a fresh one when the pool is empty.
func (w *wasmInvoker) take(ctx context.Context) (*wasmInstance, error) {
	select {
	case inst := <-w.pool:
		w.refill()
		return inst, nil
	default:
	}
	inst, err := w.instantiate(ctx)
	if err == nil {
		w.refill()
	}
	return inst, err
}

// Invoke runs the module on b: a pooled reactor instance, or a fresh command instance.
func (w *wasmInvoker) Invoke(ctx context.Context, b *Batch) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	if w.abi == abiReactor {
		return w.invokeReactor(ctx, b)
	}
	inst, err := w.take(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrRetryable, err)
	}
	defer inst.mod.Close(context.Background())
	defer inst.stderr.Flush()
	inst.stdin.Reset(AppendCloudEvents(nil, b))
	_, err = inst.mod.ExportedFunction("_start").Call(ctx)
	var exit *sys.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 0) {
		return Result{}, w.callError(err, "_start", inst.stderr)
	}
	if inst.stdout.overflow {
		return Result{}, fmt.Errorf("wasm function %s: %w: output above %d bytes", w.name, ErrBadResponse, maxResponseBytes)
	}
	r, err := ParseResult(inst.stdout.Bytes())
	if err != nil {
		return Result{}, fmt.Errorf("wasm function %s: %w", w.name, err)
	}
	return r, nil
}

// callError describes a failed call into a module; every such failure is retryable.
func (w *wasmInvoker) callError(err error, fn string, stderr *lineLogger) error {
	var exit *sys.ExitError
	switch {
	case errors.As(err, &exit) && (exit.ExitCode() == sys.ExitCodeDeadlineExceeded || exit.ExitCode() == sys.ExitCodeContextCanceled):
		return fmt.Errorf("%w: wasm function %s: %s interrupted: %v (timeout %v)", ErrRetryable, w.name, fn, err, w.timeout)
	case errors.As(err, &exit):
		return fmt.Errorf("%w: wasm function %s exited with status %d in %s: %s", ErrRetryable, w.name, exit.ExitCode(), fn, stderr.Tail())
	default:
		// wazero's message, then the wasm stack trace: keep the top frames.
		msg := err.Error()
		if lines := strings.SplitN(msg, "\n", 10); len(lines) == 10 {
			msg = strings.Join(lines[:9], "\n") + "\n\t..."
		}
		if len(msg) > 2048 {
			msg = msg[:2048] + "..."
		}
		if tail := stderr.Tail(); tail != "" {
			msg += " (stderr: " + tail + ")"
		}
		return fmt.Errorf("%w: wasm function %s trapped in %s: %s", ErrRetryable, w.name, fn, msg)
	}
}

// Close releases the runtime, its instances and the compilation cache. It must not be called
// while batches are being invoked.
func (w *wasmInvoker) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.filling.Wait()
	ctx := context.Background()
	err := w.rt.Close(ctx)
	if w.cache != nil {
		w.cache.Close(ctx)
	}
	return err
}

// limitedBuffer keeps up to max bytes and records whether more were written.
type limitedBuffer struct {
	bytes.Buffer
	max      int
	overflow bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.Len()+len(p) > l.max {
		l.overflow = true
		return len(p), nil
	}
	return l.Buffer.Write(p)
}

// lineLogger logs what a module writes, one record per line, and keeps the first and last
// lines (since Forget) for error messages: a Go runtime's "fatal error: ..." comes first, the
// goroutine dump after it.
type lineLogger struct {
	logger *slog.Logger
	stream string
	mu     sync.Mutex
	buf    []byte
	head   []string // the first lines
	tail   []string // the last lines after head
	lines  int      // lines since Forget
}

const (
	keepHead = 2
	keepTail = 3
)

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.emit(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 4096 {
		l.emit(string(l.buf))
		l.buf = l.buf[:0]
	}
	return len(p), nil
}

func (l *lineLogger) emit(line string) {
	l.logger.Info("wasm function output", "stream", l.stream, "line", line)
	l.lines++
	if len(l.head) < keepHead {
		l.head = append(l.head, line)
		return
	}
	l.tail = append(l.tail, line)
	if len(l.tail) > keepTail {
		l.tail = l.tail[1:]
	}
}

// Flush logs a last unterminated line.
func (l *lineLogger) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit(string(l.buf))
		l.buf = l.buf[:0]
	}
}

// Forget drops the kept lines, so that Tail speaks of the next batch only.
func (l *lineLogger) Forget() {
	l.mu.Lock()
	l.head, l.tail, l.lines = l.head[:0], l.tail[:0], 0
	l.mu.Unlock()
}

// Tail returns the first and last lines written, joined, for an error message.
func (l *lineLogger) Tail() string {
	l.Flush()
	l.mu.Lock()
	defer l.mu.Unlock()
	parts := append([]string(nil), l.head...)
	if l.lines > len(l.head)+len(l.tail) {
		parts = append(parts, "…")
	}
	parts = append(parts, l.tail...)
	s := strings.Join(parts, " | ")
	if len(s) > 1024 {
		s = s[:1024] + "…"
	}
	return s
}
