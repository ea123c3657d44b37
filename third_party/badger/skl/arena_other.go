//go:build !unix

package skl

// fleetgate patch: see arena_offheap.go; elsewhere arenas stay on the Go heap.

func arenaBuffer(n int64) []byte { return make([]byte, n) }

func (s *Arena) release() { s.buf = nil }
