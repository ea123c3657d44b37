//go:build !linux

// fleetgate patch: see PATCHES.md at the root of this module.

package z

// dropPages is Linux only (see droppages_linux.go).
func dropPages([]byte) {}
