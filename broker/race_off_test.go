//go:build !race

package broker

// idleStackLimit is the stack an idle connection may keep (TestIdleConnectionFootprint).
const idleStackLimit = 4<<10 + 256
