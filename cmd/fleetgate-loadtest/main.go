// Command fleetgate-loadtest drives a fleetgate gateway, or any MQTT broker or HTTP
// endpoint, with a bounded load and reports throughput and latency.
//
//	fleetgate-loadtest mqtt --broker tcp://127.0.0.1:1883 --clients 10 --messages 10000 --qos 1 --size 128 --inflight 64 [--json]
//	fleetgate-loadtest http --url http://127.0.0.1:8080/v1/events/apps/x --token T --concurrency 16 --events 100000 --batch 1 [--json]
//	fleetgate-loadtest conns --broker tcp://127.0.0.1:1883 --clients 10000 --hold 5s [--server-pid PID] [--metrics-url URL] [--json]
//	fleetgate-loadtest bare-http --addr 127.0.0.1:9000
//	fleetgate-loadtest bare-mqtt --addr 127.0.0.1:1883 --mode goroutine|epoll
//
// With --sink-addr the generator also serves an HTTP function endpoint there and reports
// acknowledgement→invocation latency, loss and duplicates. Progress goes to stderr; the
// summary goes to stdout, as exactly one JSON object with --json.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fleetgate/fleetgate/loadtest"
	"github.com/valyala/fasthttp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: fleetgate-loadtest <command> [flags]

commands:
  mqtt       publish over MQTT (paho) and measure acks
  http       POST events over HTTP (fasthttp, keep-alive) and measure 202s
  conns      hold many idle MQTT connections and measure what each costs the server
  bare-http  serve a bare fasthttp handler that answers 202 without storing (a baseline peer)
  bare-mqtt  serve a bare MQTT answerer (CONNACK, PUBACK) without storing: a goroutine per
             connection or one epoll loop (the baseline peers of the MQTT cases)
  fsync      measure this disk's durable append (write + fdatasync), the floor of a durable ack

run "fleetgate-loadtest <command> -h" for its flags.
`

// run executes one command and returns the exit code: 0 success, 1 run failed
// (nothing acknowledged, cannot connect), 2 usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "mqtt":
		return runMQTT(ctx, args[1:], stdout, stderr)
	case "http":
		return runHTTP(ctx, args[1:], stdout, stderr)
	case "conns":
		return runConns(ctx, args[1:], stdout, stderr)
	case "bare-http":
		return runBare(ctx, args[1:], stderr)
	case "bare-mqtt":
		return runBareMQTT(ctx, args[1:], stderr)
	case "fsync":
		return runFsync(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "fleetgate-loadtest: unknown command %q\n%s", args[0], usage)
		return 2
	}
}

func runMQTT(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := loadtest.DefaultMQTTConfig()
	fs := flag.NewFlagSet("mqtt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	qos := fs.Uint("qos", uint(cfg.QoS), "QoS of the publishes: 0, 1 or 2")
	asJSON := fs.Bool("json", false, "print exactly one JSON object with the results on stdout")
	fs.StringVar(&cfg.Broker, "broker", cfg.Broker, "broker address tcp://host:port")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "number of connections")
	fs.IntVar(&cfg.Messages, "messages", cfg.Messages, "messages per client")
	fs.IntVar(&cfg.Size, "size", cfg.Size, "payload bytes per message")
	fs.IntVar(&cfg.Inflight, "inflight", cfg.Inflight, "unacknowledged QoS 1/2 publishes allowed per connection")
	fs.StringVar(&cfg.Topic, "topic", cfg.Topic, "topic template; {client} is the client id")
	fs.StringVar(&cfg.ClientPrefix, "client-prefix", cfg.ClientPrefix, "client ids are this prefix plus a number")
	fs.StringVar(&cfg.JWTSecret, "jwt-secret", "", "HS256 secret: connect with a device token per client as password")
	fs.StringVar(&cfg.JWTKid, "jwt-kid", "", "key id (kid) to put in minted tokens")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "stop publishing after this long")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open-loop target messages per second over all clients (0: as fast as acks allow)")
	fs.DurationVar(&cfg.RampUp, "ramp-up", 0, "spread the connection attempts over this time")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", cfg.ConnectTimeout, "per connection attempt")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "wait this long for outstanding acks after publishing stops")
	fs.StringVar(&cfg.SinkAddr, "sink-addr", "", "end-to-end mode: serve the function endpoint on host:port")
	fs.DurationVar(&cfg.E2EWait, "e2e-wait", cfg.E2EWait, "end-to-end mode: wait this long for acked messages to reach the sink")
	fs.DurationVar(&cfg.ProgressEvery, "progress", cfg.ProgressEvery, "progress line interval on stderr (0: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mqtt: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if *qos > 2 {
		fmt.Fprintf(stderr, "mqtt: --qos %d is not 0, 1 or 2\n", *qos)
		return 2
	}
	cfg.QoS = byte(*qos)
	cfg.Progress = stderr
	cfg.Ready = func(u string) {
		if u != "" {
			fmt.Fprintf(stderr, "mqtt: sink listening on %s\n", u)
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "mqtt: %v\n", err)
		return 2
	}
	res, err := loadtest.RunMQTT(ctx, cfg)
	return finish(res, err, *asJSON, stdout, stderr)
}

func runHTTP(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := loadtest.DefaultHTTPConfig()
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print exactly one JSON object with the results on stdout")
	fs.StringVar(&cfg.URL, "url", cfg.URL, "URL to POST events to")
	fs.StringVar(&cfg.Token, "token", "", "bearer token")
	fs.StringVar(&cfg.JWTSecret, "jwt-secret", "", "HS256 secret: mint an app token when --token is not given")
	fs.StringVar(&cfg.JWTKid, "jwt-kid", "", "key id (kid) to put in a minted token")
	fs.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "parallel keep-alive connections")
	fs.IntVar(&cfg.Events, "events", cfg.Events, "events in total")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "events per request (1: a JSON object, more: a JSON array)")
	fs.IntVar(&cfg.Size, "size", cfg.Size, "bytes per event")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "stop after this long")
	fs.Float64Var(&cfg.Rate, "rate", 0, "open-loop target requests per second (0: as fast as answers allow)")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "per request")
	fs.StringVar(&cfg.SinkAddr, "sink-addr", "", "end-to-end mode: serve the function endpoint on host:port")
	fs.DurationVar(&cfg.E2EWait, "e2e-wait", cfg.E2EWait, "end-to-end mode: wait this long for acked events to reach the sink")
	fs.DurationVar(&cfg.ProgressEvery, "progress", cfg.ProgressEvery, "progress line interval on stderr (0: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "http: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg.Progress = stderr
	cfg.Ready = func(u string) {
		if u != "" {
			fmt.Fprintf(stderr, "http: sink listening on %s\n", u)
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "http: %v\n", err)
		return 2
	}
	res, err := loadtest.RunHTTP(ctx, cfg)
	return finish(res, err, *asJSON, stdout, stderr)
}

func runConns(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := loadtest.DefaultConnsConfig()
	fs := flag.NewFlagSet("conns", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print exactly one JSON object with the results on stdout")
	fs.StringVar(&cfg.Broker, "broker", cfg.Broker, "broker address tcp://host:port")
	fs.IntVar(&cfg.Clients, "clients", cfg.Clients, "number of connections")
	fs.StringVar(&cfg.ClientPrefix, "client-prefix", cfg.ClientPrefix, "client ids are this prefix plus a number")
	fs.StringVar(&cfg.JWTSecret, "jwt-secret", "", "HS256 secret: connect with a device token per client as password")
	fs.StringVar(&cfg.JWTKid, "jwt-kid", "", "key id (kid) to put in minted tokens")
	fs.IntVar(&cfg.Dialers, "dialers", cfg.Dialers, "connections being opened at once")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", cfg.ConnectTimeout, "per connection attempt")
	fs.DurationVar(&cfg.Hold, "hold", cfg.Hold, "keep every connection idle this long once all are open, then measure")
	fs.IntVar(&cfg.ServerPID, "server-pid", 0, "the server's process id on this machine: measure its resident memory (VmRSS)")
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "", "the server's Prometheus endpoint: read its Go memory figures")
	fs.StringVar(&cfg.GCURL, "gc-url", "", "fetched before each measurement, to make the server collect garbage (fleetgate: .../admin/v1/debug/pprof/heap?gc=1)")
	fs.StringVar(&cfg.Token, "token", "", "bearer token for --metrics-url and --gc-url")
	fs.DurationVar(&cfg.ProgressEvery, "progress", cfg.ProgressEvery, "progress line interval on stderr (0: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "conns: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg.Progress = stderr
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "conns: %v\n", err)
		return 2
	}
	res, err := loadtest.RunConns(ctx, cfg)
	return finish(res, err, *asJSON, stdout, stderr)
}

func runFsync(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fsync", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print exactly one JSON object with the results on stdout")
	dir := fs.String("dir", ".", "directory on the disk to measure (a temporary file is written there and removed)")
	count := fs.Int("count", 500, "appends, each made durable with fdatasync")
	size := fs.Int("size", 256, "bytes per append")
	busy := fs.Int("busy", 0, "then measure again with this many cores kept busy (spinning threads): the floor under load")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fsync: unexpected arguments %q\n", fs.Args())
		return 2
	}
	res, err := loadtest.MeasureFsync(*dir, *count, *size, *busy)
	if err != nil {
		fmt.Fprintf(stderr, "fleetgate-loadtest: %v\n", err)
		return 1
	}
	return finish(res, nil, *asJSON, stdout, stderr)
}

// finish prints the result (JSON on stdout, or a summary) and picks the exit code.
func finish(res any, err error, asJSON bool, stdout, stderr io.Writer) int {
	if isNil(res) {
		fmt.Fprintf(stderr, "fleetgate-loadtest: %v\n", err)
		return 1
	}
	if asJSON {
		b, jerr := json.Marshal(res)
		if jerr != nil {
			fmt.Fprintf(stderr, "fleetgate-loadtest: encoding result: %v\n", jerr)
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		fmt.Fprint(stdout, loadtest.Summary(res))
	}
	if err != nil {
		fmt.Fprintf(stderr, "fleetgate-loadtest: %v\n", err)
		return 1
	}
	return 0
}

func isNil(res any) bool {
	switch r := res.(type) {
	case *loadtest.MQTTResult:
		return r == nil
	case *loadtest.HTTPResult:
		return r == nil
	case *loadtest.ConnsResult:
		return r == nil
	case *loadtest.FsyncResult:
		return r == nil
	}
	return res == nil
}

func runBare(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bare-http", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:9000", "listen address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "bare-http: %v\n", err)
		return 1
	}
	srv := &fasthttp.Server{Handler: loadtest.BareHandler, Name: "bare", IdleTimeout: time.Minute}
	fmt.Fprintf(stderr, "bare-http: ready on %s\n", ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		_ = srv.Shutdown()
		<-done
		return 0
	case err := <-done:
		if err != nil && !errors.Is(err, net.ErrClosed) {
			fmt.Fprintf(stderr, "bare-http: %v\n", err)
			return 1
		}
		return 0
	}
}

func runBareMQTT(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bare-mqtt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:1883", "listen address")
	mode := fs.String("mode", loadtest.BareGoroutines, "how connections are read: goroutine (one per connection, as Go servers do) or epoll (one loop for all, as mosquitto does)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *mode != loadtest.BareGoroutines && *mode != loadtest.BareEpoll {
		fmt.Fprintf(stderr, "bare-mqtt: --mode %q: want %s or %s\n", *mode, loadtest.BareGoroutines, loadtest.BareEpoll)
		return 2
	}
	b, err := loadtest.ListenBareMQTT(*addr, *mode)
	if err != nil {
		fmt.Fprintf(stderr, "bare-mqtt: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "bare-mqtt: ready on %s (%s)\n", b.Addr(), *mode)
	if err := b.Serve(ctx); err != nil {
		fmt.Fprintf(stderr, "bare-mqtt: %v\n", err)
		return 1
	}
	return 0
}
