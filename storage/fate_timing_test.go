package storage

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkAppendFate compares appends with fate records (storage.fate_ttl, the default) and
// without them (fate_ttl 0), in one run: one writer with one event per call (latency: one
// fsync per event) and 64 writers with 100 events per call (the per-event CPU cost shows),
// for events that get their id from the log (ids=log: no index) and events that carry their
// own (ids=sender: one index entry each).
func BenchmarkAppendFate(b *testing.B) {
	for _, c := range []struct{ writers, per int }{{1, 1}, {64, 100}} {
		for _, senderIDs := range []bool{false, true} {
			ids := map[bool]string{false: "log", true: "sender"}[senderIDs]
			for _, fate := range []bool{false, true} {
				b.Run(fmt.Sprintf("writers=%d/events_per_call=%d/ids=%s/fate=%v", c.writers, c.per, ids, fate), func(b *testing.B) {
					benchAppendIDs(b, c.writers, c.per, senderIDs, func(o *Options) {
						if fate {
							o.FateTTL = 24 * time.Hour
						} else {
							o.FateTTL = -1
						}
					})
				})
			}
		}
	}
}
