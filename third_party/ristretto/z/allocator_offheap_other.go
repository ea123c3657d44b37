//go:build !unix

package z

// fleetgate patch: see allocator_offheap.go; elsewhere the buffers stay on the Go heap.

func allocBuffer(n int, tag string) []byte { return Calloc(n, tag) }

func freeBuffer(b []byte) { Free(b) }
