//go:build unix

package skl

// fleetgate patch: see PATCHES.md at the root of this module.
//
// A memtable's arena (tens of MiB) is an anonymous memory map outside the Go heap, and the
// arena of a skiplist whose last reference went is kept, cleared, for the next one. On the Go
// heap the arenas counted as live memory, which the collector doubles for its heap goal, and
// every new arena's pages were faulted in and zeroed afresh. Nodes hold no Go pointers (only
// offsets), so the memory may live outside the heap. Everything that reads an arena holds a
// reference on its skiplist (DB.get copies what it returns before it lets go: see db.go).

import (
	"sync"
	"syscall"
)

var spare struct {
	sync.Mutex
	buf []byte
}

func arenaBuffer(n int64) []byte {
	spare.Lock()
	buf := spare.buf
	if int64(len(buf)) == n {
		spare.buf = nil
	} else {
		buf = nil
	}
	spare.Unlock()
	if buf != nil {
		return buf
	}
	b, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return make([]byte, n) // on the Go heap; release leaves it to the collector
	}
	adviseHuge(b)
	mapped.Store(&b[0], true)
	return b
}

var mapped sync.Map // *byte → true: arenas this file mapped

// release gives the arena's memory back: its pages go back to the kernel (dropPages) and the
// mapping is kept as the spare, or unmapped when there is one already. A spare that kept its
// pages (cleared, as before) held a whole memtable's worth of resident memory next to the
// memtable being written: 16 of the 33 MiB of arenas in a gateway routing 10k msgs/s. Its
// pages are faulted in again, zeroed by the kernel, as the next memtable fills: in huge pages
// where the kernel gives them (adviseHuge), a fault per 2 MiB rather than per 4 KiB.
func (s *Arena) release() {
	buf := s.buf
	s.buf = nil
	if _, ok := mapped.Load(&buf[0]); !ok {
		return
	}
	// All of it: a huge page faulted in for the last bytes used reaches past them.
	dropPages(buf)
	spare.Lock()
	old := spare.buf
	spare.buf = buf
	spare.Unlock()
	if old != nil {
		mapped.Delete(&old[0])
		_ = syscall.Munmap(old)
	}
}
