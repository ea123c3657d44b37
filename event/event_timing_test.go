package event

import "testing"

func BenchmarkAppendBinary(b *testing.B) {
	e := sample()
	e.Data = make([]byte, 256)
	buf := make([]byte, 0, 1024)
	b.SetBytes(int64(len(e.Data)))
	b.ReportAllocs()
	for b.Loop() {
		buf = e.AppendBinary(buf[:0])
	}
}

func BenchmarkDecode(b *testing.B) {
	e := sample()
	e.Data = make([]byte, 256)
	enc := e.AppendBinary(nil)
	b.SetBytes(int64(len(e.Data)))
	b.ReportAllocs()
	var out Event
	for b.Loop() {
		if err := Decode(enc, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = NewID()
	}
}
