package functions

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/tetratelabs/wazero/api"
)

// reactorInstance is a started reactor module, used by one batch at a time.
type reactorInstance struct {
	mod            api.Module
	mem            api.Memory
	alloc, handle  api.Function
	stack          [2]uint64 // CallWithStack: params in, results out
	buf            []byte    // the encoded batch, reused
	bufAddr        uint32    // the guest buffer from the last fleetgate_alloc call
	bufSize        uint32    // the size asked for then (0: none yet)
	stdout, stderr *lineLogger
}

// startReactor instantiates the module and runs its _initialize (Go: the runtime and package
// init, where sdk.Register is called), within the function's timeout. The caller holds a slot.
func (w *wasmInvoker) startReactor(ctx context.Context) (*reactorInstance, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	inst := &reactorInstance{
		stdout: &lineLogger{logger: w.logger, stream: "stdout"},
		stderr: &lineLogger{logger: w.logger, stream: "stderr"},
	}
	cfg := w.moduleConfig().
		WithStartFunctions("_initialize"). // skipped when not exported
		WithStdout(inst.stdout).
		WithStderr(inst.stderr)
	mod, err := w.rt.InstantiateModule(ctx, w.compiled, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("starting instance: _initialize interrupted (timeout %v): %w", w.timeout, err)
		}
		return nil, fmt.Errorf("starting instance: %w (stderr: %s)", err, inst.stderr.Tail())
	}
	inst.mod = mod
	inst.mem = mod.ExportedMemory(exportMemory)
	inst.alloc = mod.ExportedFunction(exportAlloc)
	inst.handle = mod.ExportedFunction(exportHandle)
	return inst, nil
}

// warm starts one reactor instance in the background if a slot is free and the invoker open.
func (w *wasmInvoker) warm() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	select {
	case w.slots <- struct{}{}:
	default:
		w.mu.Unlock()
		return
	}
	w.filling.Add(1)
	w.mu.Unlock()
	go func() {
		defer w.filling.Done()
		inst, err := w.startReactor(context.Background())
		if err != nil {
			<-w.slots
			w.logger.Warn("starting a wasm instance", "err", err)
			return
		}
		w.idle <- inst // never blocks: one slot per instance, as many slots as idle places
	}()
}

// takeReactor returns an idle instance, or starts one when fewer than concurrency are live, or
// waits for one to come back.
func (w *wasmInvoker) takeReactor(ctx context.Context) (*reactorInstance, error) {
	for {
		var inst *reactorInstance
		select {
		case inst = <-w.idle:
		default:
			select {
			case inst = <-w.idle:
			case w.slots <- struct{}{}:
				inst, err := w.startReactor(ctx)
				if err != nil {
					<-w.slots
					return nil, err
				}
				return inst, nil
			case <-ctx.Done():
				return nil, fmt.Errorf("waiting for an idle instance: %w", ctx.Err())
			}
		}
		if !inst.mod.IsClosed() {
			return inst, nil
		}
		w.discard(inst) // closed by a late timeout; take another
	}
}

// discard closes a broken instance, frees its slot and starts a replacement in the background.
func (w *wasmInvoker) discard(inst *reactorInstance) {
	inst.mod.Close(context.Background())
	<-w.slots
	w.warm()
}

// invokeReactor runs one batch on a pooled instance. A failed call discards the instance.
func (w *wasmInvoker) invokeReactor(ctx context.Context, b *Batch) (Result, error) {
	inst, err := w.takeReactor(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("%w: wasm function %s: %v", ErrRetryable, w.name, err)
	}
	answer, err := w.callReactor(ctx, inst, b)
	if err != nil {
		w.discard(inst)
		return Result{}, err
	}
	r, err := parseReactorAnswer(answer)
	if cap(inst.buf) > maxKeptBatchBuffer {
		inst.buf = nil
	}
	w.idle <- inst // answer was copied by parseReactorAnswer
	if err != nil {
		return Result{}, fmt.Errorf("wasm function %s: %w", w.name, err)
	}
	return r, nil
}

// callReactor writes the batch into the instance and calls fleetgate_handle. The answer is a
// view of the instance's memory, valid until its next call. An error means the instance is
// broken (it trapped, exited, was interrupted, or does not follow the ABI).
func (w *wasmInvoker) callReactor(ctx context.Context, inst *reactorInstance, b *Batch) ([]byte, error) {
	inst.stdout.Forget()
	inst.stderr.Forget()
	defer inst.stdout.Flush()
	defer inst.stderr.Flush()
	inst.buf = AppendCloudEvents(inst.buf[:0], b)
	n := uint32(len(inst.buf))
	if n > inst.bufSize || inst.bufSize == 0 {
		// The guest's buffer stays valid until the next fleetgate_alloc: ask only when it is
		// too small (one call per batch instead of two in the steady state).
		inst.stack[0] = uint64(max(n, 1))
		if err := inst.alloc.CallWithStack(ctx, inst.stack[:]); err != nil {
			return nil, w.callError(err, exportAlloc, inst.stderr)
		}
		inst.bufAddr, inst.bufSize = uint32(inst.stack[0]), max(n, 1)
	}
	ptr := inst.bufAddr
	if !inst.mem.Write(ptr, inst.buf) {
		return nil, fmt.Errorf("%w: wasm function %s: %s(%d) returned %d, outside its %d bytes of memory", ErrBadResponse, w.name, exportAlloc, n, ptr, inst.mem.Size())
	}
	inst.stack[0], inst.stack[1] = uint64(ptr), uint64(n)
	if err := inst.handle.CallWithStack(ctx, inst.stack[:]); err != nil {
		return nil, w.callError(err, exportHandle, inst.stderr)
	}
	if inst.mod.IsClosed() { // the timeout struck as the call returned
		return nil, fmt.Errorf("%w: wasm function %s: %s interrupted (timeout %v)", ErrRetryable, w.name, exportHandle, w.timeout)
	}
	ret := inst.stack[0]
	addr, size := uint32(ret>>32), uint32(ret)
	if size == 0 {
		return nil, nil
	}
	if size > maxResponseBytes {
		return nil, fmt.Errorf("wasm function %s: %w: answer of %d bytes is above the limit of %d", w.name, ErrBadResponse, size, maxResponseBytes)
	}
	answer, ok := inst.mem.Read(addr, size)
	if !ok {
		return nil, fmt.Errorf("wasm function %s: %w: %s answered %d bytes at %d, outside its %d bytes of memory", w.name, ErrBadResponse, exportHandle, size, addr, inst.mem.Size())
	}
	return answer, nil
}

var errorMember = []byte(`"error"`)

// parseReactorAnswer decodes a reactor's answer: a result, or {"error":"..."} failing the
// whole batch. The result holds no reference to answer.
func parseReactorAnswer(answer []byte) (Result, error) {
	if bytes.Contains(answer, errorMember) {
		var e struct {
			Error *string `json:"error"`
		}
		if json.Unmarshal(answer, &e) == nil && e.Error != nil {
			msg := *e.Error
			if len(msg) > 2048 {
				msg = msg[:2048] + "..."
			}
			return Result{}, fmt.Errorf("%w: the function failed the batch: %s", ErrRetryable, msg)
		}
	}
	return ParseResult(answer)
}
