package storage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
)

// BenchmarkWatermarkAfterDeletes measures one retention watermark (what every sweep computes
// first) on a store whose recent past is 200k events appended for no function and deleted:
// their tombstones must not be read, whatever namespace sorts next to the queues'.
//
//	go test -run '^$' -bench WatermarkAfterDeletes ./storage/
func BenchmarkWatermarkAfterDeletes(b *testing.B) {
	s := openTest(b, b.TempDir())
	const total, per = 200_000, 500
	for i := 0; i < total; i += per {
		entries := make([]*Entry, per)
		for j := range entries {
			entries[j] = &Entry{Event: &event.Event{Topic: "t/x", Subject: fmt.Sprintf("d%d", j%50), Tenant: "t",
				Protocol: "mqtt", Data: []byte(`{"v":1}`), Time: time.Unix(1700000000, 0)}}
		}
		if err := s.Append(context.Background(), entries); err != nil {
			b.Fatal(err)
		}
	}
	s.Sweep() // deletes them all: tombstones from here on
	if n := s.m.deleted.Get(); n < total {
		b.Fatalf("the sweep deleted %d of %d events", n, total)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.watermark(); err != nil {
			b.Fatal(err)
		}
	}
}
