//go:build !linux

/*
 * SPDX-FileCopyrightText: © Hypermode Inc. <hello@hypermode.com>
 * SPDX-License-Identifier: Apache-2.0
 */

// fleetgate patch: see PATCHES.md at the root of this module.

package z

import "os"

// allocate is a no-op where fallocate(2) does not exist: files stay sparse.
func allocate(fd *os.File, from, to int64) error { return nil }
