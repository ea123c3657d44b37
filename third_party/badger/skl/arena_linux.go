//go:build linux

package skl

// fleetgate patch: see arena_offheap.go.

import (
	"bufio"
	"fmt"
	"os"
	"strings"
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

// adviseHuge asks for transparent huge pages for an arena (madvise(MADV_HUGEPAGE); a no-op
// where the kernel's transparent_hugepage setting is "never"). A memtable's skiplist is
// walked at random over its whole arena, and each arena's pages are faulted in afresh after a
// flush (release): routing 300 000 MQTT messages at 10k/s to a function (ten memtables) took
// 8 % more CPU with 4 KiB pages faulted in again than with the old spare kept resident, and
// 3 % less with huge pages, which the kernel zeroes 2 MiB per fault (BENCHMARKS.md, issue 17's
// seventh round).
func adviseHuge(b []byte) { _ = unix.Madvise(b, unix.MADV_HUGEPAGE) }

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

// SpareArenaHugeForTest reports whether the spare arena's mapping is advised for transparent
// huge pages (the "hg" flag in /proc/self/smaps), for fleetgate's tests.
func SpareArenaHugeForTest() (bool, error) {
	spare.Lock()
	var addr uintptr
	if spare.buf != nil {
		addr = uintptr(unsafe.Pointer(&spare.buf[0]))
	}
	spare.Unlock()
	if addr == 0 {
		return false, fmt.Errorf("no spare arena")
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in := false
	for sc.Scan() {
		line := sc.Text()
		var lo, hi uintptr
		if n, _ := fmt.Sscanf(line, "%x-%x ", &lo, &hi); n == 2 {
			in = lo <= addr && addr < hi
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.Contains(line+" ", " hg "), nil
		}
	}
	return false, fmt.Errorf("mapping of the spare arena not found in /proc/self/smaps")
}
