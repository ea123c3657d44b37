package loadtest

import (
	"bytes"
	"testing"
)

// The generator's own per-message work must stay far below a broker's, or the benchmark
// measures the generator.

func BenchmarkMakePayload(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(128)
	for i := 0; b.Loop(); i++ {
		_ = MakePayload("0123456789abcdef", 7, i, 128)
	}
}

func BenchmarkSinkIngestBatch500(b *testing.B) {
	var body bytes.Buffer
	body.WriteByte('[')
	for i := range 500 {
		if i > 0 {
			body.WriteByte(',')
		}
		body.WriteString(`{"specversion":"1.0","id":"01JABCDEFGHJKMNPQRSTVWXYZ0","source":"mqtt://lt-0001","type":"fleetgate.mqtt.publish","datacontenttype":"application/json","topic":"devices/lt-0001/telemetry","data":`)
		body.Write(MakePayload("0123456789abcdef", 0, i, 128))
		body.WriteByte('}')
	}
	body.WriteByte(']')
	s := &Sink{run: "0123456789abcdef", first: atomicGrid(1, 500)}
	b.ReportAllocs()
	b.SetBytes(int64(body.Len()))
	for b.Loop() {
		if s.ingest(body.Bytes(), 1) != 500 {
			b.Fatal("tags missing")
		}
	}
}
