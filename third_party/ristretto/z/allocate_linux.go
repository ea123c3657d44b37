/*
 * SPDX-FileCopyrightText: © Hypermode Inc. <hello@hypermode.com>
 * SPDX-License-Identifier: Apache-2.0
 */

// fleetgate patch: see PATCHES.md at the root of this module.

package z

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// allocate reserves disk blocks for bytes [from, to) of fd. A file that is only truncated to
// its size is sparse: a write through its mmap then finds no block on a full disk and the
// kernel kills the process with SIGBUS. Allocated up front, a full disk is an ENOSPC error
// here instead. File systems that cannot allocate (EOPNOTSUPP) keep the sparse file.
func allocate(fd *os.File, from, to int64) error {
	if to <= from {
		return nil
	}
	for {
		err := unix.Fallocate(int(fd.Fd()), 0, from, to-from)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOSYS):
			return nil
		default:
			return &os.PathError{Op: "fallocate", Path: fd.Name(), Err: err}
		}
	}
}
