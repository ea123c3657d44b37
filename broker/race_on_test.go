//go:build race

package broker

// idleStackLimit is the stack an idle connection may keep (TestIdleConnectionFootprint): the
// race detector's instrumented frames do not fit in 4 KiB.
const idleStackLimit = 8<<10 + 256
