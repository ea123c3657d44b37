//go:build unix && !linux

package skl

// fleetgate patch: see arena_offheap.go.

// dropPages clears b (madvise(MADV_DONTNEED) does not promise zeros outside Linux).
func dropPages(b []byte) { clear(b) }

// adviseHuge does nothing outside Linux.
func adviseHuge([]byte) {}
