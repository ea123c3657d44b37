/*
 * SPDX-FileCopyrightText: © Hypermode Inc. <hello@hypermode.com>
 * SPDX-License-Identifier: Apache-2.0
 */

package z

import (
	"os"
)

// Mmap uses the mmap system call to memory-map a file. If writable is true,
// memory protection of the pages is set so that they may be written to as well.
func Mmap(fd *os.File, writable bool, size int64) ([]byte, error) {
	return mmap(fd, writable, size)
}

// Munmap unmaps a previously mapped slice.
func Munmap(b []byte) error {
	return munmap(b)
}

// Madvise uses the madvise system call to give advise about the use of memory
// when using a slice that is memory-mapped to a file. Set the readahead flag to
// false if page references are expected in random order.
func Madvise(b []byte, readahead bool) error {
	return madvise(b, readahead)
}

// Msync would call sync on the mmapped data.
//
// fleetgate patch: see PATCHES.md at the root of this module. Badger calls Msync once, on a
// table it has just written through the mapping; once the table is on disk its pages are
// dropped from the mapping (they stay in the page cache and come back on a read), so that a
// table costs resident memory only for what is read of it. MmapFile.Sync, which Badger calls
// on its write-ahead logs at every commit, calls msync alone.
func Msync(b []byte) error {
	if err := msync(b); err != nil {
		return err
	}
	dropPages(b)
	return nil
}
