//go:build linux

// fleetgate patch: see PATCHES.md at the root of this module.

package z

import "golang.org/x/sys/unix"

// dropPages removes b's pages from a shared file mapping after they were synced: the data
// stays in the file and the page cache, and a later read of a page maps it again. Best
// effort: an error leaves the pages mapped, as before.
func dropPages(b []byte) {
	if len(b) > 0 {
		_ = unix.Madvise(b, unix.MADV_DONTNEED)
	}
}
