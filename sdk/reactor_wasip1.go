//go:build wasip1

package sdk

import "unsafe"

// fleetgateAlloc is the reactor ABI's fleetgate_alloc(size u32) u32: the address of the batch
// buffer, grown to at least size bytes.
//
//go:wasmexport fleetgate_alloc
func fleetgateAlloc(size uint32) uint32 {
	return addr(allocBatch(size))
}

// fleetgateHandle is the reactor ABI's fleetgate_handle(ptr u32, len u32) u64: it handles the
// batch at ptr (which must be the address fleetgate_alloc returned) and returns the answer's
// address<<32 | length (0: every event succeeded).
//
//go:wasmexport fleetgate_handle
func fleetgateHandle(ptr, n uint32) uint64 {
	var out []byte
	if cap(inBuf) == 0 || ptr != addr(inBuf) || int(n) > cap(inBuf) {
		out = answerError(ErrBadBuffer)
	} else {
		out = serve(inBuf[:n])
	}
	if len(out) == 0 {
		return 0
	}
	return uint64(addr(out))<<32 | uint64(len(out))
}

// addr is the linear-memory address of b's first byte (wasm32: pointers are 32 bits).
func addr(b []byte) uint32 { return uint32(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
