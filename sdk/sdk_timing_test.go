package sdk

import (
	"encoding/json"
	"testing"
)

func BenchmarkDecodeBatch100(b *testing.B) {
	in := gatewayBatch(100)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeBatch(in); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeBatch100EncodingJSON is the peer: what the sdk did before.
func BenchmarkDecodeBatch100EncodingJSON(b *testing.B) {
	in := gatewayBatch(100)
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		var events []Event
		if err := json.Unmarshal(in, &events); err != nil {
			b.Fatal(err)
		}
	}
}
