//go:build unix

package z

// fleetgate patch: see PATCHES.md at the root of this module.
//
// An Allocator's large buffers (Badger builds every table in one) are anonymous memory maps,
// outside the Go heap, unmapped when the allocator trims or releases them. On the Go heap they
// counted as live memory while a table was built, and the collector lets the heap grow to
// twice the live memory: a memtable flush's buffers alone doubled the gateway's peak.

import (
	"sync"
	"syscall"
	"unsafe"
)

// offHeapMin is the smallest buffer mapped outside the Go heap.
const offHeapMin = 1 << 20

var offHeap sync.Map // *byte (a mapped buffer's first byte) → its length

func allocBuffer(n int, tag string) []byte {
	if n >= offHeapMin {
		b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err == nil {
			offHeap.Store(unsafe.SliceData(b), n)
			return b
		}
	}
	return Calloc(n, tag)
}

func freeBuffer(b []byte) {
	if cap(b) >= offHeapMin {
		if n, ok := offHeap.LoadAndDelete(unsafe.SliceData(b)); ok {
			_ = syscall.Munmap(unsafe.Slice(unsafe.SliceData(b), n.(int)))
			return
		}
	}
	Free(b)
}
