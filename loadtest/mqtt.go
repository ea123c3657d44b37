package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// MQTTConfig is one MQTT load run: Clients connections, each publishing Messages messages
// of Size bytes at QoS with at most Inflight unacknowledged at a time.
type MQTTConfig struct {
	Broker   string // tcp://host:port
	Clients  int
	Messages int // per client
	QoS      byte
	Size     int // payload bytes (at least the tag, about 40 bytes)
	Inflight int // per connection window of unacknowledged QoS 1/2 publishes; QoS 0 ignores it
	// Topic is the topic template; {client} is replaced by the client id.
	Topic string
	// ClientPrefix starts each client id; client i is ClientPrefix + i (zero padded).
	ClientPrefix string
	// JWTSecret, when set, makes each client connect with an HS256 device token for its
	// client id as password (JWTKid names the key). Without it clients send no password.
	JWTSecret string
	JWTKid    string
	// Duration bounds the publishing phase; it ends earlier when every message is sent.
	Duration time.Duration
	// Rate, when > 0, is the open-loop target of messages per second over all clients;
	// latency is then measured from each message's scheduled send time.
	Rate float64
	// RampUp spreads the connection attempts evenly over this time; publishing starts
	// once every client is connected.
	RampUp         time.Duration
	ConnectTimeout time.Duration
	// DrainTimeout is how long to wait for outstanding acks after publishing stops.
	DrainTimeout time.Duration
	// SinkAddr, when set, runs an end-to-end sink (HTTP function endpoint) on this address.
	SinkAddr string
	// E2EWait is how long to wait after the last ack for all acked messages to reach the sink.
	E2EWait time.Duration
	// Progress receives a progress line every ProgressEvery (nil or 0: none).
	Progress      io.Writer
	ProgressEvery time.Duration
	// Ready, when set, is called with the sink's URL before any client connects.
	Ready func(sinkURL string)
}

// DefaultMQTTConfig returns the defaults the command line starts from.
func DefaultMQTTConfig() MQTTConfig {
	return MQTTConfig{
		Broker:         "tcp://127.0.0.1:1883",
		Clients:        10,
		Messages:       10000,
		QoS:            1,
		Size:           128,
		Inflight:       64,
		Topic:          "devices/{client}/telemetry",
		ClientPrefix:   "lt-",
		Duration:       60 * time.Second,
		ConnectTimeout: 10 * time.Second,
		DrainTimeout:   10 * time.Second,
		E2EWait:        10 * time.Second,
		ProgressEvery:  time.Second,
	}
}

// Validate reports every problem of c at once.
func (c *MQTTConfig) Validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if u, err := url.Parse(c.Broker); err != nil || u.Host == "" || (u.Scheme != "tcp" && u.Scheme != "mqtt") {
		add("broker: %q is not tcp://host:port", c.Broker)
	}
	if c.Clients < 1 || c.Clients > 100000 {
		add("clients: %d is not in 1..100000", c.Clients)
	}
	if c.Messages < 1 || c.Messages > 100_000_000 {
		add("messages: %d is not in 1..100000000", c.Messages)
	}
	if c.Clients > 0 && c.Messages > 0 && int64(c.Clients)*int64(c.Messages) > 100_000_000 {
		add("messages: clients x messages = %d is more than 100000000", int64(c.Clients)*int64(c.Messages))
	}
	if c.QoS > 2 {
		add("qos: %d is not 0, 1 or 2", c.QoS)
	}
	if c.Size < 0 || c.Size > 16<<20 {
		add("size: %d is not in 0..16777216", c.Size)
	}
	if c.QoS > 0 && (c.Inflight < 1 || c.Inflight > 65535) {
		add("inflight: %d is not in 1..65535", c.Inflight)
	}
	if c.Topic == "" || strings.ContainsAny(c.Topic, "+#") {
		add("topic: %q must be a non-empty topic name without wildcards", c.Topic)
	}
	if c.Duration <= 0 {
		add("duration: must be > 0 (every run is bounded)")
	}
	if c.Rate < 0 {
		add("rate: %v must be >= 0", c.Rate)
	}
	if c.RampUp < 0 {
		add("ramp_up: must be >= 0")
	}
	if c.ConnectTimeout <= 0 {
		add("connect_timeout: must be > 0")
	}
	if c.DrainTimeout < 0 || c.E2EWait < 0 {
		add("drain_timeout, e2e_wait: must be >= 0")
	}
	if c.SinkAddr != "" && c.QoS == 0 {
		add("sink_addr: end-to-end mode needs qos 1 or 2 (QoS 0 has no ack to measure from)")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(errs, "; "))
	}
	return nil
}

// MQTTResult is what an MQTT run measured. Acked counts PUBACKs (QoS 1), PUBCOMPs (QoS 2)
// or, at QoS 0, publishes written to the socket.
type MQTTResult struct {
	Mode           string  `json:"mode"`
	Broker         string  `json:"broker"`
	Clients        int     `json:"clients"`
	QoS            byte    `json:"qos"`
	Size           int     `json:"size"`
	Inflight       int     `json:"inflight"`
	Rate           float64 `json:"rate,omitempty"`
	Sent           int64   `json:"sent"`
	Acked          int64   `json:"acked"`
	Errors         int64   `json:"errors"`
	Seconds        float64 `json:"seconds"`
	MsgsPerSec     float64 `json:"msgs_per_sec"`
	ConnectSeconds float64 `json:"connect_seconds"`
	FirstError     string  `json:"first_error,omitempty"`
	AckLatency     Latency `json:"ack_latency_ms"`
	// SendLag (open loop only) is how late the generator handed each message to its client,
	// after the time it was scheduled for. Ack latency counts from the scheduled time, so a
	// generator that falls behind (its goroutines not run on a busy machine) shows in both:
	// an ack latency tail that SendLag has too is the generator's, not the server's.
	SendLag *Latency `json:"send_lag_ms,omitempty"`
	E2E     *E2E     `json:"e2e,omitempty"`
}

// RunMQTT runs one MQTT load and returns what it measured. It stops publishing at
// cfg.Duration or ctx's end, waits at most cfg.DrainTimeout for outstanding acks (and
// cfg.E2EWait for the sink), and disconnects every client before returning.
func RunMQTT(ctx context.Context, cfg MQTTConfig) (*MQTTResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &mqttRun{cfg: cfg, run: newRunID(), hist: newShardedHist(), lag: newShardedHist(), drained: make(chan struct{})}
	if cfg.SinkAddr != "" {
		sink, err := newSink(cfg.SinkAddr, r.run, cfg.Clients, cfg.Messages)
		if err != nil {
			return nil, err
		}
		defer sink.Close()
		r.sink = sink
		r.acks = make([][]int64, cfg.Clients)
		for i := range r.acks {
			r.acks[i] = make([]int64, cfg.Messages)
		}
	}
	if cfg.Ready != nil {
		sinkURL := ""
		if r.sink != nil {
			sinkURL = r.sink.URL()
		}
		cfg.Ready(sinkURL)
	}
	connStart := time.Now()
	clients, err := r.connectAll(ctx)
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Disconnect(100)
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	res := &MQTTResult{
		Mode: "mqtt", Broker: cfg.Broker, Clients: cfg.Clients, QoS: cfg.QoS, Size: cfg.Size,
		Inflight: cfg.Inflight, Rate: cfg.Rate, ConnectSeconds: time.Since(connStart).Seconds(),
	}

	pubCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	r.start = time.Now()
	stopProgress, progressDone := make(chan struct{}), make(chan struct{})
	go progress(cfg.Progress, cfg.ProgressEvery, "mqtt", &r.c, r.start, stopProgress, progressDone)

	var wg sync.WaitGroup
	var pubWG sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		pubWG.Add(1)
		go func() {
			defer wg.Done()
			r.publish(pubCtx, i, c, pubWG.Done)
		}()
	}
	pubWG.Wait() // every client has stopped publishing
	drain := time.AfterFunc(cfg.DrainTimeout, func() { close(r.drained) })
	wg.Wait() // every outstanding ack has arrived, failed or been given up on
	drain.Stop()
	end := r.lastAck()
	if end.IsZero() || end.Before(r.start) {
		end = time.Now()
	}
	close(stopProgress)
	<-progressDone

	res.Sent, res.Acked, res.Errors = r.c.sent.Load(), r.c.acked.Load(), r.c.errors.Load()
	res.Seconds = end.Sub(r.start).Seconds()
	if res.Seconds > 0 {
		res.MsgsPerSec = float64(res.Acked) / res.Seconds
	}
	res.AckLatency = latencyOf(r.hist.merged())
	if cfg.Rate > 0 {
		lag := latencyOf(r.lag.merged())
		res.SendLag = &lag
	}
	res.FirstError = r.firstErr.String()
	if r.sink != nil {
		e2e := r.sink.report(r.acks, res.Acked, cfg.E2EWait)
		res.E2E = &e2e
	}
	if res.Acked == 0 {
		return res, fmt.Errorf("mqtt run against %s: %w (first error: %s)", cfg.Broker, ErrNoAcks, res.FirstError)
	}
	return res, nil
}

type mqttRun struct {
	cfg      MQTTConfig
	run      string
	c        counters
	hist     *shardedHist
	lag      *shardedHist // open loop: send time − scheduled time
	sink     *Sink
	acks     [][]int64 // [client][seq] unix nanos of the ack; only with a sink
	start    time.Time
	drained  chan struct{} // closed when the drain timeout after publishing has passed
	firstErr firstError
	mu       sync.Mutex
	last     time.Time
}

func (r *mqttRun) clientID(i int) string {
	return fmt.Sprintf("%s%04d", r.cfg.ClientPrefix, i)
}

func (r *mqttRun) noteErr(err error) {
	r.c.errors.Add(1)
	r.firstErr.set(err)
}

func (r *mqttRun) noteAck(t time.Time) {
	r.mu.Lock()
	if t.After(r.last) {
		r.last = t
	}
	r.mu.Unlock()
}

func (r *mqttRun) lastAck() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// connectAll connects every client, spreading the attempts over RampUp, at most 64 at once.
func (r *mqttRun) connectAll(ctx context.Context) ([]mqtt.Client, error) {
	n := r.cfg.Clients
	clients := make([]mqtt.Client, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if r.cfg.RampUp > 0 {
			at := start.Add(r.cfg.RampUp * time.Duration(i) / time.Duration(n))
			if err := sleepUntil(ctx, at); err != nil {
				wg.Wait()
				return clients, fmt.Errorf("connecting: %w", err)
			}
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			clients[i], errs[i] = r.connect(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return clients, err
	}
	return clients, nil
}

func (r *mqttRun) connect(i int) (mqtt.Client, error) {
	id := r.clientID(i)
	o := mqtt.NewClientOptions().
		AddBroker(r.cfg.Broker).
		SetClientID(id).
		SetUsername(id).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetKeepAlive(30 * time.Second).
		SetConnectTimeout(r.cfg.ConnectTimeout).
		SetWriteTimeout(r.cfg.ConnectTimeout).
		SetOrderMatters(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			r.firstErr.set(fmt.Errorf("client %s lost its connection: %w", id, err))
		})
	if r.cfg.JWTSecret != "" {
		tok, err := MintToken(r.cfg.JWTSecret, r.cfg.JWTKid, id, "device", time.Hour)
		if err != nil {
			return nil, err
		}
		o.SetPassword(tok)
	}
	c := mqtt.NewClient(o)
	t := c.Connect()
	if !t.WaitTimeout(r.cfg.ConnectTimeout) {
		c.Disconnect(0)
		return nil, fmt.Errorf("client %s: %w %s: timed out after %v", id, ErrConnect, r.cfg.Broker, r.cfg.ConnectTimeout)
	}
	if err := t.Error(); err != nil {
		return nil, fmt.Errorf("client %s: %w %s: %w", id, ErrConnect, r.cfg.Broker, err)
	}
	return c, nil
}

type pending struct {
	tok mqtt.Token
	t0  time.Time
	seq int
}

// publish sends client i's messages with at most Inflight unacknowledged, calling
// stopped once it sends no more, and returns when every ack has been accounted for.
func (r *mqttRun) publish(ctx context.Context, i int, c mqtt.Client, stopped func()) {
	cfg := &r.cfg
	topic := strings.ReplaceAll(cfg.Topic, "{client}", r.clientID(i))
	window := max(cfg.Inflight, 1)
	if cfg.QoS == 0 {
		window = 1024 // writes complete quickly; the window only bounds memory
	}
	slots := make(chan struct{}, window) // one per unacknowledged publish
	queue := make(chan pending, window)  // never blocks: a sender holds a slot
	collected := make(chan struct{})
	go r.collect(i, queue, slots, collected)

	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(cfg.Clients) / cfg.Rate)
	}
	// Stagger clients within one interval so an open-loop load is smooth.
	base := r.start.Add(interval * time.Duration(i) / time.Duration(cfg.Clients))
	for seq := 0; seq < cfg.Messages; seq++ {
		var t0 time.Time
		if interval > 0 {
			t0 = base.Add(interval * time.Duration(seq))
			if sleepUntil(ctx, t0) != nil {
				break
			}
		}
		payload := MakePayload(r.run, i, seq, cfg.Size)
		select {
		case <-ctx.Done():
		case slots <- struct{}{}:
		}
		if ctx.Err() != nil {
			break
		}
		if interval == 0 {
			t0 = time.Now()
		} else {
			r.lag.record(i, time.Since(t0))
		}
		tok := c.Publish(topic, cfg.QoS, false, payload)
		r.c.sent.Add(1)
		queue <- pending{tok: tok, t0: t0, seq: seq}
	}
	stopped()
	close(queue)
	<-collected
}

// collect waits, in publish order, for each of client i's publishes to be acknowledged,
// fail, or be given up on once the drain timeout has passed.
func (r *mqttRun) collect(i int, queue <-chan pending, slots <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for p := range queue {
		select {
		case <-p.tok.Done():
		case <-r.drained:
		}
		now := time.Now()
		select {
		case <-p.tok.Done():
			if err := p.tok.Error(); err != nil {
				r.noteErr(fmt.Errorf("client %d publish %d: %w", i, p.seq, err))
				break
			}
			r.c.acked.Add(1)
			r.hist.record(i, now.Sub(p.t0))
			r.noteAck(now)
			if r.acks != nil {
				r.acks[i][p.seq] = now.UnixNano()
			}
		default:
			r.noteErr(fmt.Errorf("client %d publish %d: no ack within the drain timeout %v", i, p.seq, r.cfg.DrainTimeout))
		}
		<-slots
	}
}

// sleepUntil waits until t or ctx's end, whichever is first.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
}

// firstError keeps the first error of a run, for the report.
type firstError struct{ p atomic.Pointer[error] }

func (v *firstError) set(err error) { v.p.CompareAndSwap(nil, &err) }

func (v *firstError) String() string {
	if p := v.p.Load(); p != nil {
		return (*p).Error()
	}
	return ""
}
