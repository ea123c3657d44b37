package storage

import (
	"fmt"
	"testing"
)

// BenchmarkAppendFate compares appends with an event's fate index (storage.fate_ttl, the
// default) and without it (fate_ttl 0), in one run: one writer with one event per call
// (latency: one fsync per event) and 64 writers with 100 events per call (the per-event CPU
// cost shows).
func BenchmarkAppendFate(b *testing.B) {
	for _, c := range []struct{ writers, per int }{{1, 1}, {64, 100}} {
		for _, fate := range []bool{false, true} {
			b.Run(fmt.Sprintf("writers=%d/events_per_call=%d/fate=%v", c.writers, c.per, fate), func(b *testing.B) {
				benchAppendN(b, c.writers, c.per, func(o *Options) {
					if !fate {
						o.FateTTL = -1
					}
				})
			})
		}
	}
}
