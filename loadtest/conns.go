package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ConnsConfig configures RunConns: open many MQTT connections, keep them idle, and measure
// what each one costs the server.
type ConnsConfig struct {
	Broker       string // tcp://host:port
	Clients      int
	ClientPrefix string
	// JWTSecret, when set, makes each client connect with an HS256 device token for its
	// client id as password (JWTKid names the key).
	JWTSecret string
	JWTKid    string
	// Dialers is how many connections are being opened at once.
	Dialers        int
	ConnectTimeout time.Duration
	// Hold is how long every connection stays open and idle once all are connected; the
	// server is measured at its end.
	Hold time.Duration
	// ServerPID, when > 0, is the server's process on this machine: its resident memory
	// (VmRSS) is read before the first connection and at the end of Hold.
	ServerPID int
	// MetricsURL, when set, is the server's Prometheus endpoint: its Go memory figures
	// (go_memstats_*, go_goroutines) are read at the same two moments. GCURL, when set, is
	// fetched three times first each time (fleetgate: /admin/v1/debug/pprof/heap?gc=1 runs a
	// collection, so that the heap figures are live bytes and grown stacks have shrunk).
	// Token is sent to both as a bearer token.
	MetricsURL string
	GCURL      string
	Token      string
	// Progress receives a progress line every ProgressEvery (nil or 0: none).
	Progress      io.Writer
	ProgressEvery time.Duration
}

// DefaultConnsConfig returns the defaults the command line starts from.
func DefaultConnsConfig() ConnsConfig {
	return ConnsConfig{
		Broker:         "tcp://127.0.0.1:1883",
		Clients:        10000,
		ClientPrefix:   "idle-",
		Dialers:        32,
		ConnectTimeout: 10 * time.Second,
		Hold:           5 * time.Second,
		ProgressEvery:  time.Second,
	}
}

// Validate reports every problem of c at once.
func (c *ConnsConfig) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if _, err := brokerAddr(c.Broker); err != nil {
		add("--broker: %v", err)
	}
	if c.Clients < 1 || c.Clients > 1000000 {
		add("--clients: must be in [1, 1000000], got %d", c.Clients)
	}
	if c.Dialers < 1 {
		add("--dialers: must be at least 1, got %d", c.Dialers)
	}
	if c.ConnectTimeout <= 0 {
		add("--connect-timeout: must be positive")
	}
	if c.Hold < 0 || c.Hold > time.Hour {
		add("--hold: must be in [0, 1h], got %s", c.Hold)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(errs...))
	}
	return nil
}

// ServerMemory is what the server's process and Go runtime held at one moment.
type ServerMemory struct {
	RSSBytes        int64 `json:"rss_bytes,omitempty"`         // VmRSS
	HeapAllocBytes  int64 `json:"heap_alloc_bytes,omitempty"`  // go_memstats_heap_alloc_bytes
	HeapInuseBytes  int64 `json:"heap_inuse_bytes,omitempty"`  // go_memstats_heap_inuse_bytes
	StackInuseBytes int64 `json:"stack_inuse_bytes,omitempty"` // go_memstats_stack_inuse_bytes
	Goroutines      int64 `json:"goroutines,omitempty"`
}

// ConnsResult is what RunConns measured. The per-connection figures divide the difference
// between the two samples by the connections open at the second.
type ConnsResult struct {
	Broker         string  `json:"broker"`
	Clients        int     `json:"clients"`
	Connected      int     `json:"connected"`
	Errors         int64   `json:"errors"`
	ConnectSeconds float64 `json:"connect_seconds"`
	HoldSeconds    float64 `json:"hold_seconds"`
	FirstError     string  `json:"first_error,omitempty"`

	Before *ServerMemory `json:"before,omitempty"`
	After  *ServerMemory `json:"after,omitempty"`

	RSSPerConn        float64 `json:"rss_per_conn_bytes,omitempty"`
	HeapPerConn       float64 `json:"heap_per_conn_bytes,omitempty"` // heap_alloc difference
	StackPerConn      float64 `json:"stack_per_conn_bytes,omitempty"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn,omitempty"`
}

// RunConns opens cfg.Clients MQTT 3.1.1 connections (a hand-written CONNECT and CONNACK:
// the generator keeps no goroutine or buffer per connection, so its own cost does not blur
// the server's), keeps them idle for cfg.Hold, measures the server, and closes them.
func RunConns(ctx context.Context, cfg ConnsConfig) (*ConnsResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	addr, _ := brokerAddr(cfg.Broker)
	res := &ConnsResult{Broker: cfg.Broker, Clients: cfg.Clients}
	m := &memSampler{cfg: cfg}
	before, err := m.sample()
	if err != nil {
		return nil, fmt.Errorf("measuring the server before connecting: %w", err)
	}
	res.Before = before

	// The server must not drop an idle connection during the hold: ask for a keepalive well
	// past it (MQTT allows up to 65535 s).
	keepalive := min(65535, int((cfg.Hold+cfg.ConnectTimeout)/time.Second)*2+60)
	conns := make([]net.Conn, cfg.Clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	var (
		next, connected, errs atomic.Int64
		first                 firstError
		wg                    sync.WaitGroup
	)
	start := time.Now()
	stopProgress := progressLoop(cfg.Progress, cfg.ProgressEvery, func() string {
		return fmt.Sprintf("conns: %d connected, %d errors", connected.Load(), errs.Load())
	})
	for range cfg.Dialers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.Clients || ctx.Err() != nil {
					return
				}
				id := fmt.Sprintf("%s%06d", cfg.ClientPrefix, i)
				c, err := dialMQTT(ctx, addr, id, cfg, keepalive)
				if err != nil {
					errs.Add(1)
					first.set(fmt.Errorf("client %s: %w", id, err))
					continue
				}
				conns[i] = c
				connected.Add(1)
			}
		})
	}
	wg.Wait()
	res.ConnectSeconds = time.Since(start).Seconds()
	res.Connected = int(connected.Load())
	holdStart := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(cfg.Hold):
	}
	res.HoldSeconds = time.Since(holdStart).Seconds()
	stopProgress()
	// A connection the server closed during the hold is not idle: read with no wait to see.
	for i, c := range conns {
		if c == nil {
			continue
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Microsecond))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil && !isTimeout(err) {
			errs.Add(1)
			first.set(fmt.Errorf("client %s%06d closed by the server during the hold: %w", cfg.ClientPrefix, i, err))
			_ = c.Close()
			conns[i] = nil
			res.Connected--
		}
	}
	after, err := m.sample()
	if err != nil {
		first.set(fmt.Errorf("measuring the server after the hold: %w", err))
	}
	res.After = after
	res.Errors = errs.Load()
	res.FirstError = first.String()
	if n := float64(res.Connected); n > 0 && before != nil && after != nil {
		per := func(a, b int64) float64 { return float64(b-a) / n }
		res.RSSPerConn = per(before.RSSBytes, after.RSSBytes)
		res.HeapPerConn = per(before.HeapAllocBytes, after.HeapAllocBytes)
		res.StackPerConn = per(before.StackInuseBytes, after.StackInuseBytes)
		res.GoroutinesPerConn = per(before.Goroutines, after.Goroutines)
	}
	if res.Connected == 0 {
		return res, fmt.Errorf("%w: no connection was accepted (%s)", ErrConnect, res.FirstError)
	}
	return res, nil
}

func brokerAddr(broker string) (string, error) {
	u, err := url.Parse(broker)
	if err != nil {
		return "", err
	}
	if u.Scheme != "tcp" && u.Scheme != "mqtt" || u.Host == "" {
		return "", fmt.Errorf("%q is not tcp://host:port", broker)
	}
	return u.Host, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// dialMQTT connects and completes an MQTT 3.1.1 CONNECT with a clean session.
func dialMQTT(ctx context.Context, addr, id string, cfg ConnsConfig, keepalive int) (net.Conn, error) {
	var password string
	if cfg.JWTSecret != "" {
		t, err := MintToken(cfg.JWTSecret, cfg.JWTKid, id, "device", time.Hour)
		if err != nil {
			return nil, err
		}
		password = t
	}
	d := net.Dialer{Timeout: cfg.ConnectTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConnect, err)
	}
	_ = c.SetDeadline(time.Now().Add(cfg.ConnectTimeout))
	if _, err := c.Write(connectPacket(id, password, keepalive)); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: writing CONNECT: %w", ErrConnect, err)
	}
	var ack [4]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w: reading CONNACK: %w", ErrConnect, err)
	}
	if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("%w: CONNACK % x (return code %d)", ErrConnect, ack, ack[3])
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// connectPacket encodes an MQTT 3.1.1 CONNECT: clean session, a username equal to the
// client id, and the password when not empty.
func connectPacket(id, password string, keepalive int) []byte {
	str := func(b []byte, s string) []byte { return append(append(b, byte(len(s)>>8), byte(len(s))), s...) }
	flags := byte(0x02 | 0x80) // clean session, username
	if password != "" {
		flags |= 0x40
	}
	body := str(nil, "MQTT")
	body = append(body, 4, flags, byte(keepalive>>8), byte(keepalive))
	body = str(body, id)
	body = str(body, id)
	if password != "" {
		body = str(body, password)
	}
	pk := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pk = append(pk, b)
		if n == 0 {
			break
		}
	}
	return append(pk, body...)
}

// progressLoop writes line() to w every interval until the returned function is called.
func progressLoop(w io.Writer, every time.Duration, line func() string) func() {
	if w == nil || every <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintln(w, line())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

type memSampler struct{ cfg ConnsConfig }

// gcRounds is how many times the sampler fetches GCURL before it measures.
const gcRounds = 3

// sample reads the server's memory; nil (and no error) when nothing is configured to read.
func (m *memSampler) sample() (*ServerMemory, error) {
	if m.cfg.ServerPID <= 0 && m.cfg.MetricsURL == "" {
		return nil, nil
	}
	var s ServerMemory
	// Three collections: the runtime halves a goroutine's stack at most once per collection,
	// and a connection's goroutines grew theirs while it connected.
	for range gcRounds {
		if m.cfg.GCURL == "" {
			break
		}
		if _, err := m.get(m.cfg.GCURL); err != nil {
			return nil, err
		}
	}
	if m.cfg.MetricsURL != "" {
		body, err := m.get(m.cfg.MetricsURL)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(body))
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			name, value, ok := strings.Cut(sc.Text(), " ")
			if !ok {
				continue
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				continue
			}
			switch name {
			case "go_memstats_heap_alloc_bytes":
				s.HeapAllocBytes = int64(f)
			case "go_memstats_heap_inuse_bytes":
				s.HeapInuseBytes = int64(f)
			case "go_memstats_stack_inuse_bytes":
				s.StackInuseBytes = int64(f)
			case "go_goroutines":
				s.Goroutines = int64(f)
			}
		}
	}
	if m.cfg.ServerPID > 0 {
		rss, err := processRSS(m.cfg.ServerPID)
		if err != nil {
			return nil, err
		}
		s.RSSBytes = rss
	}
	return &s, nil
}

func (m *memSampler) get(u string) ([]byte, error) {
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(u)
	if m.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+m.cfg.Token)
	}
	if err := fasthttp.DoTimeout(req, resp, 30*time.Second); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode() != fasthttp.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", u, resp.StatusCode())
	}
	return append([]byte(nil), resp.Body()...), nil
}

// processRSS reads VmRSS of a process on this machine (Linux).
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the server's memory: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("reading the server's memory: VmRSS %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("reading the server's memory: no VmRSS (not Linux?)")
}
