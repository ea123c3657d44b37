package functions

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// The wasm ABI (see also package sdk, which implements the module side):
//
// A function is a WASI preview 1 command module (GOOS=wasip1 GOARCH=wasm go build). For each
// batch the gateway runs the module's _start with:
//   - stdin: the batch, exactly the JSON an http function receives (a CloudEvents 1.0 array);
//   - stdout: the answer, exactly the JSON an http function answers with:
//     {"failed":["id",...],"publish":[{"topic":"...","payload":...,"qos":1}]} (empty = success);
//   - stderr: free text, logged line by line under the function's name;
//   - environment: the definition's env; arguments: the function's name.
//
// Exit status 0 is success; any other exit status, a trap, running past the timeout or
// past memory_limit_mb fails the whole batch (it is retried, then bisected, then dead-lettered).
// Instances are single-use (a command runs once), so a pool keeps up to `concurrency`
// instances instantiated ahead of need, off the batch's critical path.

type wasmInvoker struct {
	name     string
	timeout  time.Duration
	logger   *slog.Logger
	rt       wazero.Runtime
	cache    wazero.CompilationCache
	compiled wazero.CompiledModule
	env      [][2]string

	pool    chan *wasmInstance
	mu      sync.Mutex
	closed  bool
	filling sync.WaitGroup
}

var _ Invoker = (*wasmInvoker)(nil)

// wasmInstance is an instantiated, not yet started module with its own stdio.
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
		return fail(fmt.Errorf("compiling %s: %w", def.Module, err))
	}
	if compiled.ExportedFunctions()["_start"] == nil {
		return fail(fmt.Errorf("module %s exports no _start: build it as a WASI command (GOOS=wasip1 GOARCH=wasm go build)", def.Module))
	}
	w := &wasmInvoker{
		name:     def.Name,
		timeout:  def.Timeout,
		logger:   logger.With("function", def.Name),
		rt:       rt,
		cache:    cache,
		compiled: compiled,
		pool:     make(chan *wasmInstance, def.Concurrency),
	}
	keys := make([]string, 0, len(def.Env))
	for k := range def.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w.env = append(w.env, [2]string{k, def.Env[k]})
	}
	// Instantiate one now so that a module that cannot even be instantiated fails at load.
	inst, err := w.instantiate(ctx)
	if err != nil {
		return fail(err)
	}
	w.pool <- inst
	for i := 1; i < def.Concurrency; i++ {
		w.refill()
	}
	return w, nil
}

func (w *wasmInvoker) instantiate(ctx context.Context) (*wasmInstance, error) {
	inst := &wasmInstance{stderr: &lineLogger{logger: w.logger, stream: "stderr"}}
	inst.stdout.max = maxResponseBytes
	cfg := wazero.NewModuleConfig().
		WithName("").
		WithStartFunctions(). // started per batch
		WithArgs(w.name).
		WithStdin(&inst.stdin).
		WithStdout(&inst.stdout).
		WithStderr(inst.stderr).
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().
		WithRandSource(cryptoRand{})
	for _, kv := range w.env {
		cfg = cfg.WithEnv(kv[0], kv[1])
	}
	mod, err := w.rt.InstantiateModule(ctx, w.compiled, cfg)
	if err != nil {
		return nil, fmt.Errorf("instantiating module: %w", err)
	}
	inst.mod = mod
	return inst, nil
}

// refill instantiates one instance into the pool in the background, unless it is full or closed.
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

// take returns a ready instance: from the pool, or a fresh one when the pool is empty.
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

func (w *wasmInvoker) Invoke(ctx context.Context, b *Batch) (Result, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	inst, err := w.take(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrRetryable, err)
	}
	defer inst.mod.Close(context.Background())
	defer inst.stderr.Flush()
	inst.stdin.Reset(AppendCloudEvents(nil, b))
	_, err = inst.mod.ExportedFunction("_start").Call(ctx)
	var exit *sys.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() == 0:
	case errors.As(err, &exit) && (exit.ExitCode() == sys.ExitCodeDeadlineExceeded || exit.ExitCode() == sys.ExitCodeContextCanceled):
		return Result{}, fmt.Errorf("%w: wasm function %s: %v (timeout %v)", ErrRetryable, w.name, err, w.timeout)
	case errors.As(err, &exit):
		return Result{}, fmt.Errorf("%w: wasm function %s exited with status %d: %s", ErrRetryable, w.name, exit.ExitCode(), inst.stderr.Tail())
	default:
		return Result{}, fmt.Errorf("%w: wasm function %s trapped: %v", ErrRetryable, w.name, err)
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

// Close releases the runtime, its instances and the compilation cache.
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

// lineLogger logs what a module writes, one record per line, and keeps the last lines for
// error messages.
type lineLogger struct {
	logger *slog.Logger
	stream string
	mu     sync.Mutex
	buf    []byte
	tail   []string
}

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
	l.tail = append(l.tail, line)
	if len(l.tail) > 5 {
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

// Tail returns the last lines written, joined, for an error message.
func (l *lineLogger) Tail() string {
	l.Flush()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := ""
	for i, t := range l.tail {
		if i > 0 {
			s += " | "
		}
		s += t
	}
	if len(s) > 1024 {
		s = s[len(s)-1024:]
	}
	return s
}
