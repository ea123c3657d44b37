package loadtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func quickMQTT(broker string) MQTTConfig {
	cfg := DefaultMQTTConfig()
	cfg.Broker = broker
	cfg.Clients = 4
	cfg.Messages = 500
	cfg.Inflight = 16
	cfg.Duration = 20 * time.Second
	cfg.DrainTimeout = 5 * time.Second
	cfg.ProgressEvery = 0
	cfg.ClientPrefix = "t" + newRunID()[:6] + "-"
	return cfg
}

func TestRunMQTTEveryQoS(t *testing.T) {
	broker, kind := startBroker(t)
	t.Logf("broker: %s %s", kind, broker)
	for _, qos := range []byte{0, 1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			cfg := quickMQTT(broker)
			cfg.QoS = qos
			res, err := RunMQTT(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			want := int64(cfg.Clients * cfg.Messages)
			if res.Sent != want || res.Acked != want || res.Errors != 0 {
				t.Fatalf("sent %d acked %d errors %d, want %d/%d/0 (first error %q)", res.Sent, res.Acked, res.Errors, want, want, res.FirstError)
			}
			if res.AckLatency.Count != want || res.AckLatency.P50 <= 0 || res.AckLatency.P50 > res.AckLatency.P99 || res.AckLatency.P99 > res.AckLatency.Max {
				t.Errorf("ack latency is not a distribution of %d values: %+v", want, res.AckLatency)
			}
			if res.Seconds <= 0 || res.MsgsPerSec <= 0 {
				t.Errorf("seconds %v, msgs/s %v", res.Seconds, res.MsgsPerSec)
			}
			if res.SendLag != nil {
				t.Errorf("send lag in a closed-loop run (no schedule to lag behind): %+v", res.SendLag)
			}
		})
	}
}

// The window bounds the unacknowledged publishes of a connection: with one message
// in flight, a single client still gets everything through, one after another.
func TestRunMQTTWindowOfOne(t *testing.T) {
	broker, _ := startBroker(t)
	cfg := quickMQTT(broker)
	cfg.Clients, cfg.Messages, cfg.Inflight = 1, 200, 1
	res, err := RunMQTT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Acked != 200 {
		t.Fatalf("acked %d of 200", res.Acked)
	}
}

// An open-loop rate paces the publishes: 400 messages at 2000/s take about 0.2 s.
func TestRunMQTTRateAndDuration(t *testing.T) {
	broker, _ := startBroker(t)
	cfg := quickMQTT(broker)
	cfg.Clients, cfg.Messages, cfg.Rate = 2, 200, 2000
	start := time.Now()
	res, err := RunMQTT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("400 messages at 2000/s took only %v", el)
	}
	if res.Acked != 400 {
		t.Errorf("acked %d of 400", res.Acked)
	}
	// Open loop: how late each message went out after its scheduled time, one value each.
	if res.SendLag == nil || res.SendLag.Count != res.Sent || res.SendLag.P50 > res.SendLag.Max {
		t.Errorf("send lag of an open-loop run of %d messages: %+v", res.Sent, res.SendLag)
	}

	// --duration stops a run that would take far longer.
	cfg.Messages, cfg.Rate, cfg.Duration = 1_000_000, 1000, 300*time.Millisecond
	start = time.Now()
	res, err = RunMQTT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("a 300 ms run took %v", el)
	}
	if res.Sent == 0 || res.Sent > 600 || res.Acked != res.Sent {
		t.Errorf("sent %d acked %d in a 300 ms run at 1000/s", res.Sent, res.Acked)
	}
}

// End to end: a stand-in gateway (a subscriber that forwards every message to the
// function endpoint as a CloudEvents batch) delivers all messages; the sink finds each one.
func TestRunMQTTEndToEnd(t *testing.T) {
	broker, _ := startBroker(t)
	fw := &forwarder{t: t}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); fw.run(stop) }()
	defer func() { close(stop); <-done }()

	cfg := quickMQTT(broker)
	cfg.Topic = "e2e/{client}"
	subscribe(t, broker, "e2e/#", func(p []byte) { fw.add(p, 1) })
	cfg.SinkAddr = "127.0.0.1:0"
	cfg.E2EWait = 10 * time.Second
	cfg.Rate = 5000 // a subscriber is slower than publishers; keep broker queues short
	cfg.Ready = fw.setURL
	res, err := RunMQTT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	e := res.E2E
	if e == nil {
		t.Fatal("no end-to-end result")
	}
	if e.Expected != res.Acked || e.Received != res.Acked || e.Lost != 0 || e.Duplicates != 0 {
		t.Fatalf("e2e %+v for %d acked", *e, res.Acked)
	}
	if e.Latency.Count != e.Received || e.Batches == 0 || !strings.HasPrefix(e.SinkURL, "http://127.0.0.1:") {
		t.Errorf("e2e %+v", *e)
	}
}

func TestRunMQTTConnectFailure(t *testing.T) {
	cfg := quickMQTT(fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)))
	cfg.ConnectTimeout = 2 * time.Second
	_, err := RunMQTT(context.Background(), cfg)
	if !errors.Is(err, ErrConnect) {
		t.Fatalf("err = %v, want ErrConnect", err)
	}
}

func TestMQTTConfigValidateReportsEverything(t *testing.T) {
	cfg := MQTTConfig{Broker: "http://x", QoS: 3, Topic: "a/#", Size: -1}
	err := cfg.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v", err)
	}
	mustContain(t, err.Error(), "broker:", "clients:", "messages:", "qos:", "size:", "topic:", "duration:", "connect_timeout:")
	ok := DefaultMQTTConfig()
	if err := ok.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

// Ramp-up spreads the connection attempts: 4 clients over 200 ms take at least 150 ms
// (the last one starts at 3/4 of the ramp), and publishing waits for all of them.
func TestRunMQTTRampUp(t *testing.T) {
	broker, _ := startBroker(t)
	cfg := quickMQTT(broker)
	cfg.Messages, cfg.RampUp = 10, 200*time.Millisecond
	res, err := RunMQTT(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.ConnectSeconds < 0.15 || res.Acked != 40 {
		t.Fatalf("connect took %.3fs, acked %d", res.ConnectSeconds, res.Acked)
	}
}
