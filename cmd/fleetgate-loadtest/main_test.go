package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/loadtest"
)

// These tests check the command's contract: flags as documented, progress on stderr and,
// with --json, exactly one JSON object on stdout with the fields scripts read.
// The generator itself is tested against real brokers in package loadtest.

func startMochi(t *testing.T) string {
	t.Helper()
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Close() })
	return "tcp://" + tcp.Address()
}

// oneJSONObject decodes stdout as exactly one JSON object and nothing else.
func oneJSONObject(t *testing.T, out []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(out))
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, out)
	}
	if dec.More() || strings.TrimSpace(string(out[dec.InputOffset():])) != "" {
		t.Fatalf("stdout holds more than one JSON object:\n%s", out)
	}
	return m
}

func hasNumbers(t *testing.T, m map[string]any, keys ...string) {
	t.Helper()
	for _, k := range keys {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("%q is %v (%T), want a number", k, m[k], m[k])
		}
	}
}

func TestMQTTJSONOutput(t *testing.T) {
	broker := startMochi(t)
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"mqtt", "--broker", broker, "--clients", "3", "--messages", "200",
		"--qos", "1", "--size", "64", "--inflight", "8", "--topic", "devices/{client}/telemetry",
		"--jwt-secret", "s", "--duration", "20s", "--progress", "10ms", "--json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstderr: %s", code, stderr.String())
	}
	m := oneJSONObject(t, stdout.Bytes())
	hasNumbers(t, m, "sent", "acked", "errors", "seconds", "msgs_per_sec")
	if m["sent"] != 600.0 || m["acked"] != 600.0 || m["errors"] != 0.0 {
		t.Errorf("sent/acked/errors = %v/%v/%v", m["sent"], m["acked"], m["errors"])
	}
	lat, _ := m["ack_latency_ms"].(map[string]any)
	hasNumbers(t, lat, "p50", "p90", "p99", "max")
}

func TestHTTPJSONOutputAndSummary(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: loadtest.BareHandler}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	url := "http://" + ln.Addr().String() + "/v1/events/apps/x"

	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"http", "--url", url, "--token", "T", "--concurrency", "2",
		"--events", "500", "--batch", "10", "--json"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstderr: %s", code, stderr.String())
	}
	m := oneJSONObject(t, stdout.Bytes())
	hasNumbers(t, m, "sent", "acked", "errors", "seconds", "events_per_sec")
	if m["acked"] != 500.0 {
		t.Errorf("acked = %v", m["acked"])
	}
	lat, _ := m["ack_latency_ms"].(map[string]any)
	hasNumbers(t, lat, "p50", "p90", "p99", "max")

	// Without --json: a human summary on stdout.
	stdout.Reset()
	if code := run(context.Background(), []string{"http", "--url", url, "--events", "20", "--progress", "0"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(stdout.String(), "events/s") || strings.HasPrefix(stdout.String(), "{") {
		t.Errorf("summary: %s", stdout.String())
	}
}

func TestUsageErrors(t *testing.T) {
	f := func(want int, args ...string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != want {
			t.Errorf("%v: exit %d, want %d (stderr %s)", args, code, want, stderr.String())
		}
		if want != 0 && stdout.Len() != 0 {
			t.Errorf("%v: wrote to stdout: %s", args, stdout.String())
		}
	}
	f(2)
	f(2, "nope")
	f(2, "mqtt", "--qos", "3")
	f(2, "mqtt", "--clients", "0", "--duration", "0s")
	f(2, "http", "--batch", "0")
	f(2, "http", "extra")
	f(2, "bare-mqtt", "--mode", "threads")
	f(1, "bare-mqtt", "--addr", "256.0.0.1:0", "--mode", "epoll")
	f(0, "help")
}

// TestBareMQTTCommand: bare-mqtt says where it listens on stderr, answers the generator, and
// returns 0 when it is stopped.
func TestBareMQTTCommand(t *testing.T) {
	for _, mode := range []string{"goroutine", "epoll"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			pr, pw := io.Pipe()
			done := make(chan int, 1)
			go func() {
				code := run(ctx, []string{"bare-mqtt", "--addr", "127.0.0.1:0", "--mode", mode}, io.Discard, pw)
				_ = pw.Close()
				done <- code
			}()
			line, err := bufio.NewReader(pr).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			go func() { _, _ = io.Copy(io.Discard, pr) }()
			_, rest, ok := strings.Cut(line, "ready on ")
			addr, _, _ := strings.Cut(rest, " ")
			if !ok || addr == "" {
				t.Fatalf("stderr %q: no address", line)
			}
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), []string{"mqtt", "--broker", "tcp://" + addr, "--clients", "2",
				"--messages", "100", "--qos", "1", "--progress", "0", "--json"}, &stdout, &stderr); code != 0 {
				t.Fatalf("mqtt against bare-mqtt: exit %d\n%s", code, stderr.String())
			}
			if m := oneJSONObject(t, stdout.Bytes()); m["acked"] != 200.0 {
				t.Errorf("acked %v of 200", m["acked"])
			}
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("bare-mqtt exit %d after its context ended", code)
			}
		})
	}
}
