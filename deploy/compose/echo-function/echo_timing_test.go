package main

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkHandleBatch decodes a 100-event CloudEvents batch, the example function's whole job.
func BenchmarkHandleBatch(b *testing.B) {
	var sb strings.Builder
	sb.WriteByte('[')
	for i := range 100 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"specversion":"1.0","id":"01J%023d","source":"mqtt","type":"fleetgate.event","subject":"sensor-%d","topic":"devices/sensor-%d/telemetry","rule":"telemetry","data":{"temp":%d.5,"fail":false}}`, i, i, i, i)
	}
	sb.WriteByte(']')
	body := []byte(sb.String())
	log := quiet()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := handleBatch(body, log); err != nil {
			b.Fatal(err)
		}
	}
}
