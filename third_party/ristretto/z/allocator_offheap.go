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

// Freed buffers are kept, up to spareMax bytes of address space, for the next allocator asking
// for the same size: Badger builds every table in a fresh allocator's buffers (or a pooled one
// trimmed to poolKeepBytes), and faulting in their pages again, one by one, for each table was
// a quarter of the page faults of the gateway under load (costly on virtual machines). Not
// cleared: an Allocator's memory is never assumed to be zero (a pooled one is reused as is).
// Only the pages a table touched are resident, so the spares cost at most what the largest
// tables built lately did.
const spareMax = 64 << 20

var spares struct {
	sync.Mutex
	bufs  [][]byte
	bytes int
}

func allocBuffer(n int, tag string) []byte {
	if n >= offHeapMin {
		spares.Lock()
		for i, b := range spares.bufs {
			if len(b) == n {
				spares.bufs = append(spares.bufs[:i], spares.bufs[i+1:]...)
				spares.bytes -= n
				spares.Unlock()
				return b
			}
		}
		spares.Unlock()
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
		if n, ok := offHeap.Load(unsafe.SliceData(b)); ok {
			full := unsafe.Slice(unsafe.SliceData(b), n.(int))
			spares.Lock()
			if spares.bytes+len(full) <= spareMax {
				spares.bufs = append(spares.bufs, full)
				spares.bytes += len(full)
				spares.Unlock()
				return
			}
			spares.Unlock()
			offHeap.Delete(unsafe.SliceData(b))
			_ = syscall.Munmap(full)
			return
		}
	}
	Free(b)
}
