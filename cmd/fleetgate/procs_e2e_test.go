package main

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// procsMetric reads fleetgate_runtime_procs from a running gateway.
func procsMetric(t *testing.T, p *proc) int {
	t.Helper()
	n := metricOf(t, p, "fleetgate_runtime_procs")
	if n < 0 {
		t.Fatal("no fleetgate_runtime_procs in /metrics")
	}
	return int(n)
}

// procs: auto runs the processor controller, which leaves an idle gateway on all processors
// (internal/procs tests how it follows the load); the default (all) runs none; anything else
// is refused.
func TestProcsSetting(t *testing.T) {
	dir := t.TempDir()
	env := os.Getenv("GOMAXPROCS")
	auto := startProc(t, dir+"/auto", writeTestFile(t, dir, "auto.yaml", "procs: auto\n"))
	switch got := procsMetric(t, auto); {
	case env != "":
		if !bytes.Contains([]byte(auto.logs()), []byte("GOMAXPROCS is set")) {
			t.Fatalf("GOMAXPROCS=%s in the environment, and the log does not say it wins:\n%s", env, auto.logs())
		}
	case runtime.GOMAXPROCS(0) == 1:
		if got != 1 {
			t.Fatalf("one CPU, %d processors", got)
		}
	default:
		if got != runtime.GOMAXPROCS(0) {
			t.Fatalf("procs: auto, idle: %d processors, want all %d\n%s", got, runtime.GOMAXPROCS(0), auto.logs())
		}
		if !bytes.Contains([]byte(auto.logs()), []byte(procsAutoLog)) {
			t.Fatalf("the log does not say what procs: auto does:\n%s", auto.logs())
		}
	}
	all := startProc(t, dir+"/all", "")
	if got := procsMetric(t, all); env == "" && got != runtime.GOMAXPROCS(0) {
		t.Fatalf("default: %d processors, want all %d", got, runtime.GOMAXPROCS(0))
	}
	if bytes.Contains([]byte(all.logs()), []byte(procsAutoLog)) {
		t.Fatalf("default (procs: all), and the processor controller runs:\n%s", all.logs())
	}
	out, err := exec.Command(binPath, "serve", "--data-dir", dir+"/bad", "--config", writeTestFile(t, dir, "bad.yaml", "procs: 1\n")).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte(`procs: "all" (the default) or "auto", got "1"`)) {
		t.Fatalf("procs: 1 accepted or not explained (%v):\n%s", err, out)
	}
}

// The GC tuner (internal/gctune, which tests how it follows the allocation rate) runs unless
// GOGC is set, and fleetgate_runtime_gc_percent says the collector's setting either way.
func TestGCTuning(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("GOGC", "")
	tuned := startProc(t, dir+"/tuned", "")
	if got := metricOf(t, tuned, "fleetgate_runtime_gc_percent"); got < 100 {
		t.Fatalf("tuned: fleetgate_runtime_gc_percent %v, want at least 100\n%s", got, tuned.logs())
	}
	t.Setenv("GOGC", "50")
	fixed := startProc(t, dir+"/fixed", "")
	if got := metricOf(t, fixed, "fleetgate_runtime_gc_percent"); got != 50 {
		t.Fatalf("GOGC=50: fleetgate_runtime_gc_percent %v, want 50\n%s", got, fixed.logs())
	}
	if !bytes.Contains([]byte(fixed.logs()), []byte("GOGC is set")) {
		t.Fatalf("GOGC=50 in the environment, and the log does not say it wins:\n%s", fixed.logs())
	}
}

// storage.auto_commit_delay is on by default and starts with no delay (storage tests how it
// follows the senders); a fixed storage.commit_delay replaces it; out-of-range values are
// refused.
func TestCommitDelaySettings(t *testing.T) {
	dir := t.TempDir()
	auto := startProc(t, dir+"/auto", "")
	if got := metricOf(t, auto, "fleetgate_storage_commit_delay_seconds"); got != 0 {
		t.Fatalf("default, idle: commit delay %v s, want 0 (and the metric)", got)
	}
	fixed := startProc(t, dir+"/fixed", writeTestFile(t, dir, "fixed.yaml", "storage: {commit_delay: 40ms}\n"))
	if got := metricOf(t, fixed, "fleetgate_storage_commit_delay_seconds"); got != 0.04 {
		t.Fatalf("storage.commit_delay: 40ms: commit delay %v s, want 0.04", got)
	}
	out, err := exec.Command(binPath, "serve", "--data-dir", dir+"/bad", "--config", writeTestFile(t, dir, "bad.yaml", "storage: {auto_commit_delay: 1s}\n")).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("storage.auto_commit_delay: 0 to 100ms")) {
		t.Fatalf("storage.auto_commit_delay: 1s accepted or not explained (%v):\n%s", err, out)
	}
}

// The processor controller's probe counts the work done through metrics registered by the
// ingest gateway, the HTTP server and the broker: every one of them must exist under the name
// serve looks up, or the probe would count nothing and never keep all processors.
func TestWorkCountersAreRegistered(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.MQTT.Addr, cfg.HTTP.Addr = "127.0.0.1:0", "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	g, err := startGateway(cfg, false, slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer g.shutdown(10 * time.Second)
	registered := map[string]bool{}
	for _, n := range g.metrics.ListMetricNames() {
		registered[n] = true
	}
	for _, n := range workCounters {
		if !registered[n] {
			t.Errorf("work counter %s is not registered by any component", n)
		}
	}
	// An HTTP request is work: the counter moves.
	before := g.work()()
	if code, err := docsGet("http://" + g.http.Addr().String() + "/healthz"); err != nil || code != 200 {
		t.Fatalf("GET /healthz: %d %v", code, err)
	}
	if after := g.work()(); after <= before {
		t.Fatalf("work counted %d before a request and %d after", before, after)
	}
}
