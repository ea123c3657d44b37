package rules

import (
	"errors"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/internal/testutil"
)

// memKV is the in-memory KV shared by the tests (internal/testutil).
type memKV = testutil.MemKV

func newMemKV() *memKV { return testutil.NewMemKV() }

var _ KV = (*memKV)(nil)

var errDiskFull = errors.New("disk full")

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
