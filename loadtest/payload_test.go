package loadtest

import (
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func TestMakePayload(t *testing.T) {
	f := func(size, wantLen int) {
		t.Helper()
		p := MakePayload("abc", 3, 41, size)
		if wantLen >= 0 && len(p) != wantLen {
			t.Errorf("size %d: len %d, want %d: %s", size, len(p), wantLen, p)
		}
		var v struct{ LT, Pad string }
		if err := json.Unmarshal(p, &v); err != nil || v.LT != "LTabc.3.41." {
			t.Errorf("size %d: %s: %v %+v", size, p, err, v)
		}
		var got [][2]int
		ScanTags(p, "abc", func(s, q int) { got = append(got, [2]int{s, q}) })
		if len(got) != 1 || got[0] != [2]int{3, 41} {
			t.Errorf("size %d: scanned %v", size, got)
		}
	}
	f(128, 128)
	f(1024, 1024)
	f(31, 31) // exactly the tag plus an empty pad
	f(0, -1)  // smaller than the tag: the tag alone
	f(10, -1)
}

func TestScanTags(t *testing.T) {
	f := func(body string, want ...[2]int) {
		t.Helper()
		var got [][2]int
		n := ScanTags([]byte(body), "r1", func(s, q int) { got = append(got, [2]int{s, q}) })
		if n != len(want) || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("ScanTags(%q) = %d %v, want %v", body, n, got, want)
		}
	}
	f(``)
	f(`LTr1.0.0.`, [2]int{0, 0})
	f(`[{"data":{"lt":"LTr1.2.9."}},{"data":"{\"lt\":\"LTr1.3.10.\"}"}]`, [2]int{2, 9}, [2]int{3, 10})
	f(`LTr2.0.0. LTr1.a.0. LTr1.1.x. LTr1.1.2 LTr1..2. LTr1.1.`)
	f(`LTr1.1234567890.1. LTr1.1.1234567890.`) // numbers too large
	f(`LTr1.LTr1.5.6.`, [2]int{5, 6})
}

func TestSinkIngestCountsDuplicatesAndForeign(t *testing.T) {
	s := &Sink{run: "r"}
	s.first = atomicGrid(2, 3)
	now := time.Now().UnixNano()
	body := []byte(`[{"data":{"lt":"LTr.0.0."}},{"data":{"lt":"LTr.0.0."}},{"data":{"lt":"LTr.1.2."}},{"data":{"lt":"LTr.2.0."}},{"data":{"lt":"LTr.0.3."}}]`)
	if n := s.ingest(body, now); n != 5 {
		t.Fatalf("ingest found %d tags, want 5", n)
	}
	if s.unique.Load() != 2 || s.dups.Load() != 1 || s.foreign.Load() != 2 {
		t.Fatalf("unique %d dups %d foreign %d", s.unique.Load(), s.dups.Load(), s.foreign.Load())
	}
}

func FuzzScanTags(f *testing.F) {
	f.Add([]byte(`LTr1.0.0.`))
	f.Add([]byte(`[{"data":{"lt":"LTr1.2.9.","pad":"xx"}}]`))
	f.Add([]byte(`LTr1.999999999.999999999.LTr1.`))
	f.Fuzz(func(t *testing.T, body []byte) {
		n := ScanTags(body, "r1", func(s, q int) {
			if s < 0 || q < 0 || s > 999999999 || q > 999999999 {
				t.Fatalf("out of range tag %d.%d", s, q)
			}
		})
		if n > len(body)/9 {
			t.Fatalf("%d tags in %d bytes", n, len(body))
		}
		// Feeding the body in two pieces never finds more tags than feeding it whole.
		if len(body) > 1 {
			h := len(body) / 2
			if a, b := ScanTags(body[:h], "r1", nil), ScanTags(body[h:], "r1", nil); a+b > n {
				t.Fatalf("halves found %d+%d tags, whole %d", a, b, n)
			}
		}
	})
}

// FuzzSinkIngest feeds the function endpoint's parser arbitrary batch bodies.
func FuzzSinkIngest(f *testing.F) {
	f.Add([]byte(`[{"id":"1","data":{"lt":"LTr.0.1."}}]`))
	f.Add([]byte(`[{"id":"1","data_base64":"TFRyLjAuMS4="}]`))
	f.Add([]byte(`[{"data_base64":1},{"data_base64":"!!"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		s := &Sink{run: "r"}
		s.first = atomicGrid(2, 4)
		n := s.ingest(body, 1)
		if got := s.unique.Load() + s.dups.Load() + s.foreign.Load(); got != int64(n) {
			t.Fatalf("ingest reported %d tags but noted %d", n, got)
		}
	})
}

func atomicGrid(streams, perStream int) [][]atomic.Int64 {
	g := make([][]atomic.Int64, streams)
	for i := range g {
		g[i] = make([]atomic.Int64, perStream)
	}
	return g
}
