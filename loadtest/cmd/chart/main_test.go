package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const fixture = `{"peer":"fleetgate","case":"mqtt-qos1-10conn","version":"fleetgate abc","exit":0,"cpu_seconds":2.0,"peak_rss_kb":51200,"result":{"mode":"mqtt","clients":10,"qos":1,"inflight":64,"size":128,"sent":100000,"acked":100000,"errors":0,"seconds":5,"msgs_per_sec":20000,"ack_latency_ms":{"p50":3,"p90":5,"p99":9,"max":20}}}
{"peer":"fleetgate","case":"mqtt-qos1-10conn","version":"fleetgate abc","exit":0,"cpu_seconds":2.0,"peak_rss_kb":51200,"result":{"mode":"mqtt","clients":10,"qos":1,"inflight":64,"size":128,"sent":100000,"acked":100000,"errors":0,"seconds":4,"msgs_per_sec":25000,"ack_latency_ms":{"p50":2,"p90":4,"p99":8,"max":20}}}
{"peer":"fleetgate","case":"mqtt-qos1-10conn","version":"fleetgate abc","exit":0,"cpu_seconds":2.0,"peak_rss_kb":51200,"result":{"mode":"mqtt","clients":10,"qos":1,"inflight":64,"size":128,"sent":100000,"acked":100000,"errors":0,"seconds":10,"msgs_per_sec":10000,"ack_latency_ms":{"p50":6,"p90":9,"p99":19,"max":40}}}
{"peer":"mosquitto","case":"mqtt-qos1-10conn","version":"mosquitto 2","exit":0,"cpu_seconds":0.5,"peak_rss_kb":8192,"result":{"mode":"mqtt","clients":10,"qos":1,"inflight":64,"size":128,"sent":100000,"acked":100000,"errors":0,"seconds":2,"msgs_per_sec":50000,"ack_latency_ms":{"p50":1,"p90":2,"p99":4,"max":9}}}
{"peer":"bare","case":"http-batch1","version":"bare","exit":0,"cpu_seconds":1,"peak_rss_kb":4096,"result":{"mode":"http","concurrency":16,"batch":1,"size":128,"sent":30000,"acked":30000,"errors":0,"seconds":1,"events_per_sec":30000,"ack_latency_ms":{"p50":0.5,"p90":1,"p99":2,"max":3}}}
{"peer":"fleetgate","case":"e2e-qos1-10conn","version":"fleetgate abc","exit":0,"cpu_seconds":1,"peak_rss_kb":4096,"result":{"mode":"mqtt","clients":10,"qos":1,"rate":10000,"size":128,"sent":50000,"acked":50000,"errors":0,"seconds":5,"msgs_per_sec":10000,"ack_latency_ms":{"p50":2,"p90":3,"p99":5,"max":9},"e2e":{"expected":50000,"received":49999,"lost":1,"duplicates":2,"batches":100,"mean_batch":500,"latency_ms":{"p50":7,"p90":8,"p99":12,"max":30}}}}
`

func TestReportAndChart(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "results.jsonl")
	notes := filepath.Join(dir, "NOTES.md")
	md, pngPath := filepath.Join(dir, "RESULTS.md"), filepath.Join(dir, "results.png")
	if err := os.WriteFile(in, []byte(fixture), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(notes, []byte("fleetgate loses here because of fsync.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.json")
	if err := os.WriteFile(disk, []byte(`{"dir":"/x","size":256,"seconds":0.1,"fdatasync_latency_ms":{"count":500,"p50":0.25,"p99":1.5},"busy_cores":1,"busy_fdatasync_latency_ms":{"count":500,"p50":0.41,"p99":2.5}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(in, md, pngPath, notes, disk); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)
	for _, want := range []string{
		// the median of 10000, 20000, 25000 with its range; CPU 2 s per 100k
		"| MQTT QoS1, 10 conns | 10 connections, QoS 1, 64 in flight per connection, 128 B | fleetgate | 20000 | 3.00 | 9.00 | 2.00 | 50.0 | 100000 | 0 | 3: 10000–25000 |",
		"| mosquitto | 50000 |",
		"| HTTP, batch 1 |",
		"| fleetgate | 10 connections, QoS 1, open loop at 10000 msgs/s, 128 B | 50000 | 49999 | 1 | 2 | 7.00 |",
		"![chart](results.png)",
		"fleetgate loses here because of fsync.",
		"**Disk:** an append of 256 bytes made durable with `fdatasync`",
		"while 1 core(s) spin (`fsync --busy 1`), as when a server and its load share the machine: p50 0.41 ms",
		"p50 0.25 ms, p99 1.50 ms (500 appends)",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q\n%s", want, report)
		}
	}
	f, err := os.Open(pngPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() < 800 || b.Dy() < 600 {
		t.Errorf("chart is only %v", b)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "r.jsonl")
	if err := os.WriteFile(in, []byte("{\"peer\":\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run(in, filepath.Join(dir, "R.md"), filepath.Join(dir, "r.png"), "", ""); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("err = %v", err)
	}
	if err := run(filepath.Join(dir, "missing"), filepath.Join(dir, "R.md"), filepath.Join(dir, "r.png"), "", ""); err == nil {
		t.Error("no error for a missing input")
	}
}
