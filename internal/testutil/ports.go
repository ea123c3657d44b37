package testutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"testing"
)

// FreePorts returns n loopback TCP ports that were free a moment ago, for servers that must be
// told their port before they start (a cluster's routes name each other). They are chosen below
// the kernel's ephemeral range (32768–60999 by default), so that no port the kernel hands out
// meanwhile, to a listener on :0 or to an outgoing connection, can be one of them.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	const lo, hi = 20000, 32000
	seen := map[int]bool{}
	var out []int
	for tries := 0; len(out) < n; tries++ {
		if tries > 2000 {
			t.Fatalf("no %d free loopback ports between %d and %d", n, lo, hi)
		}
		p := lo + rand.IntN(hi-lo)
		if seen[p] {
			continue
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		out = append(out, p)
	}
	return out
}
