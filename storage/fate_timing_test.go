package storage

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
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

// BenchmarkDeliveredFate: one event per op, appended in calls of 100 with ids from the log
// and acknowledged with Delivered in batches of 100 (as the dispatcher does), fate records
// off and on, in one run. Unlike the dispatcher's hot-tail benchmark, the batch size does not
// depend on timing.
func BenchmarkDeliveredFate(b *testing.B) {
	for _, fate := range []bool{false, true} {
		b.Run(fmt.Sprintf("fate=%v", fate), func(b *testing.B) {
			s := openTest(b, "", func(o *Options) {
				o.InMemory = true
				o.FateTTL = -1
				if fate {
					o.FateTTL = 24 * time.Hour
				}
			})
			payload := []byte(strings.Repeat("x", 256))
			items := make([]Item, 0, 100)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			for n := 0; n < b.N; n += 100 {
				entries := make([]*Entry, min(100, b.N-n))
				for i := range entries {
					entries[i] = &Entry{Event: &event.Event{Subject: "dev", Topic: "devices/dev/t", Protocol: "mqtt", Data: payload},
						Targets: []Target{{Function: "log", Rule: "default", RuleVersion: 3}}}
				}
				if err := s.Append(context.Background(), entries); err != nil {
					b.Fatal(err)
				}
				items = items[:0]
				for _, e := range entries {
					items = append(items, ItemFromEntry(e, e.Targets[0]))
				}
				if err := s.Delivered("log", items); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/event")
		})
	}
}
