//go:build linux

package skl

// fleetgate patch: see arena_offheap.go.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// dropPages gives b's pages back to the kernel; b, part of a private anonymous mapping, reads
// as zeros afterwards. Where madvise fails, b is cleared instead (its pages stay resident).
func dropPages(b []byte) {
	if len(b) == 0 {
		return
	}
	if err := unix.Madvise(b, unix.MADV_DONTNEED); err != nil {
		clear(b)
	}
}

// SpareArenaForTest reports the size of the spare arena (0 when there is none) and how many of
// its bytes are resident (mincore), for fleetgate's tests.
func SpareArenaForTest() (size, resident int, err error) {
	spare.Lock()
	defer spare.Unlock()
	if spare.buf == nil {
		return 0, 0, nil
	}
	page := unix.Getpagesize()
	vec := make([]byte, (len(spare.buf)+page-1)/page)
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&spare.buf[0])), uintptr(len(spare.buf)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return len(spare.buf), 0, e
	}
	for _, v := range vec {
		if v&1 != 0 {
			resident += page
		}
	}
	return len(spare.buf), resident, nil
}
