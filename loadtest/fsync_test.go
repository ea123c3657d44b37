package loadtest

import (
	"os"
	"strings"
	"testing"
)

// TestMeasureFsync: a real file in a temporary directory, appended and fdatasynced; every
// append is counted and timed, and the file is gone afterwards.
func TestMeasureFsync(t *testing.T) {
	dir := t.TempDir()
	res, err := MeasureFsync(dir, 20, 128, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Latency.Count != 20 || res.Latency.P50 <= 0 || res.Latency.Max < res.Latency.P50 {
		t.Fatalf("latency %+v, want 20 samples with p50 > 0", res.Latency)
	}
	if res.BusyCores != 1 || res.BusyLatency == nil || res.BusyLatency.Count != 20 || res.BusyLatency.P50 <= 0 {
		t.Fatalf("with a core busy: %d cores, latency %+v, want 20 samples", res.BusyCores, res.BusyLatency)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("left %d files in the directory", len(ents))
	}
	if s := Summary(res); !strings.Contains(s, "fdatasync") || !strings.Contains(s, "n=20") || !strings.Contains(s, "1 core(s) busy") {
		t.Fatalf("summary %q", s)
	}
	if _, err := MeasureFsync(dir, 0, 128, 0); err == nil {
		t.Fatal("count 0 accepted")
	}
	if _, err := MeasureFsync(dir+"/missing", 1, 1, 0); err == nil {
		t.Fatal("a missing directory accepted")
	}
}
