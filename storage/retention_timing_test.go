package storage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
)

// BenchmarkWatermarkAfterDeletes measures one retention watermark (what every sweep computes
// first) on a store whose recent past is 200k events delivered to a function: their queue
// entries are tombstones now, and must not be read again at every sweep (see watermark).
//
//	go test -run '^$' -bench WatermarkAfterDeletes ./storage/
func BenchmarkWatermarkAfterDeletes(b *testing.B) {
	s := openTest(b, b.TempDir())
	const total, per = 200_000, 500
	for i := 0; i < total; i += per {
		entries := make([]*Entry, per)
		seqs := make([]uint64, per)
		for j := range entries {
			entries[j] = &Entry{Event: &event.Event{Topic: "t/x", Subject: fmt.Sprintf("d%d", j%50), Tenant: "t",
				Protocol: "mqtt", Data: []byte(`{"v":1}`), Time: time.Unix(1700000000, 0)}, Targets: []Target{{Function: "f", Rule: "r"}}}
		}
		if err := s.Append(context.Background(), entries); err != nil {
			b.Fatal(err)
		}
		for j, e := range entries {
			seqs[j] = e.Seq
		}
		if err := s.Ack("f", seqs...); err != nil {
			b.Fatal(err)
		}
	}
	s.Sweep()
	if d := s.QueueDepth("f"); d != 0 {
		b.Fatalf("f's queue holds %d entries after acknowledging all", d)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.watermark(); err != nil {
			b.Fatal(err)
		}
	}
}
