package loadtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// HTTPConfig is one HTTP load run: Concurrency keep-alive connections POSTing Events
// events in total, Batch per request (one JSON value at Batch 1, else a JSON array).
type HTTPConfig struct {
	URL string // e.g. http://127.0.0.1:8080/v1/events/apps/bench
	// Token is the bearer token; empty with JWTSecret set mints an app token (subject
	// "loadtest"); both empty sends no Authorization header.
	Token       string
	JWTSecret   string
	JWTKid      string
	Concurrency int
	Events      int // in total
	Batch       int // events per request
	Size        int // bytes per event
	// Duration bounds the run; it ends earlier when every event is sent.
	Duration time.Duration
	// Rate, when > 0, is the open-loop target of requests per second over all workers.
	Rate float64
	// Timeout bounds each request.
	Timeout time.Duration
	// SinkAddr, when set, runs an end-to-end sink (HTTP function endpoint) on this address.
	SinkAddr      string
	E2EWait       time.Duration
	Progress      io.Writer
	ProgressEvery time.Duration
	Ready         func(sinkURL string)
}

// DefaultHTTPConfig returns the defaults the command line starts from.
func DefaultHTTPConfig() HTTPConfig {
	return HTTPConfig{
		URL:           "http://127.0.0.1:8080/v1/events/apps/loadtest",
		Concurrency:   16,
		Events:        100000,
		Batch:         1,
		Size:          128,
		Duration:      60 * time.Second,
		Timeout:       10 * time.Second,
		E2EWait:       10 * time.Second,
		ProgressEvery: time.Second,
	}
}

// Validate reports every problem of c at once.
func (c *HTTPConfig) Validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if u, err := url.Parse(c.URL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		add("url: %q is not an http(s) URL", c.URL)
	}
	if c.Concurrency < 1 || c.Concurrency > 10000 {
		add("concurrency: %d is not in 1..10000", c.Concurrency)
	}
	if c.Events < 1 || c.Events > 100_000_000 {
		add("events: %d is not in 1..100000000", c.Events)
	}
	if c.Batch < 1 || c.Batch > 100000 {
		add("batch: %d is not in 1..100000", c.Batch)
	}
	if c.Size < 0 || c.Size > 16<<20 {
		add("size: %d is not in 0..16777216", c.Size)
	}
	if c.Duration <= 0 {
		add("duration: must be > 0 (every run is bounded)")
	}
	if c.Rate < 0 {
		add("rate: %v must be >= 0", c.Rate)
	}
	if c.Timeout <= 0 {
		add("timeout: must be > 0")
	}
	if c.E2EWait < 0 {
		add("e2e_wait: must be >= 0")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(errs, "; "))
	}
	return nil
}

// HTTPResult is what an HTTP run measured. Acked counts events in 2xx answers whose
// "accepted" count (when present) matched; ack latency is per request.
type HTTPResult struct {
	Mode          string  `json:"mode"`
	URL           string  `json:"url"`
	Concurrency   int     `json:"concurrency"`
	Batch         int     `json:"batch"`
	Size          int     `json:"size"`
	Rate          float64 `json:"rate,omitempty"`
	Sent          int64   `json:"sent"`
	Acked         int64   `json:"acked"`
	Errors        int64   `json:"errors"`
	Requests      int64   `json:"requests"`
	RequestErrors int64   `json:"request_errors"`
	Seconds       float64 `json:"seconds"`
	EventsPerSec  float64 `json:"events_per_sec"`
	// Statuses counts answers by HTTP status ("0" is a transport error).
	Statuses   map[string]int64 `json:"statuses"`
	FirstError string           `json:"first_error,omitempty"`
	AckLatency Latency          `json:"ack_latency_ms"`
	E2E        *E2E             `json:"e2e,omitempty"`
}

// RunHTTP runs one HTTP load and returns what it measured. It stops at cfg.Duration or
// ctx's end (requests in flight finish or time out after cfg.Timeout).
func RunHTTP(ctx context.Context, cfg HTTPConfig) (*HTTPResult, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	token := cfg.Token
	if token == "" && cfg.JWTSecret != "" {
		t, err := MintToken(cfg.JWTSecret, cfg.JWTKid, "loadtest", "app", time.Hour)
		if err != nil {
			return nil, err
		}
		token = t
	}
	run := newRunID()
	var sink *Sink
	var acks [][]int64
	if cfg.SinkAddr != "" {
		s, err := newSink(cfg.SinkAddr, run, 1, cfg.Events)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		sink = s
		acks = [][]int64{make([]int64, cfg.Events)}
	}
	if cfg.Ready != nil {
		u := ""
		if sink != nil {
			u = sink.URL()
		}
		cfg.Ready(u)
	}
	client := &fasthttp.Client{
		Name:                "fleetgate-loadtest",
		MaxConnsPerHost:     cfg.Concurrency,
		MaxIdleConnDuration: time.Minute,
		ReadTimeout:         cfg.Timeout,
		WriteTimeout:        cfg.Timeout,
		Dial: func(addr string) (net.Conn, error) {
			return fasthttp.DialTimeout(addr, cfg.Timeout)
		},
	}
	defer client.CloseIdleConnections()

	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var (
		c        counters
		hist     = newShardedHist()
		cursor   atomic.Int64
		reqs     atomic.Int64
		reqErrs  atomic.Int64
		firstErr firstError
		stMu     sync.Mutex
		statuses = map[string]int64{}
	)
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	start := time.Now()
	var lastMu sync.Mutex
	last := start
	stopProgress, progressDone := make(chan struct{}), make(chan struct{})
	go progress(cfg.Progress, cfg.ProgressEvery, "http", &c, start, stopProgress, progressDone)

	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			var body []byte
			for runCtx.Err() == nil {
				first := cursor.Add(int64(cfg.Batch)) - int64(cfg.Batch)
				if first >= int64(cfg.Events) {
					return
				}
				n := int(min(int64(cfg.Batch), int64(cfg.Events)-first))
				var t0 time.Time
				if interval > 0 {
					// Request k is due at start + k*interval, k counted in batches.
					t0 = start.Add(interval * time.Duration(first/int64(cfg.Batch)))
					if sleepUntil(runCtx, t0) != nil {
						return
					}
				}
				body = body[:0]
				if cfg.Batch > 1 {
					body = append(body, '[')
				}
				for k := range n {
					if k > 0 {
						body = append(body, ',')
					}
					body = appendPayload(body, run, 0, int(first)+k, cfg.Size)
				}
				if cfg.Batch > 1 {
					body = append(body, ']')
				}
				req.Reset()
				req.SetRequestURI(cfg.URL)
				req.Header.SetMethod(fasthttp.MethodPost)
				req.Header.SetContentType("application/json")
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				req.SetBody(body)
				resp.Reset()
				if interval == 0 {
					t0 = time.Now()
				}
				c.sent.Add(int64(n))
				err := client.DoTimeout(req, resp, cfg.Timeout)
				now := time.Now()
				reqs.Add(1)
				status := 0
				if err == nil {
					status = resp.StatusCode()
				}
				stMu.Lock()
				statuses[fmt.Sprint(status)]++
				stMu.Unlock()
				if err == nil && status/100 == 2 {
					err = checkAccepted(resp.Body(), n)
				} else if err == nil {
					err = fmt.Errorf("HTTP %d: %.200s", status, resp.Body())
				}
				if err != nil {
					reqErrs.Add(1)
					c.errors.Add(int64(n))
					firstErr.set(fmt.Errorf("request for events %d..%d: %w", first, int(first)+n-1, err))
					continue
				}
				c.acked.Add(int64(n))
				hist.record(w, now.Sub(t0))
				lastMu.Lock()
				if now.After(last) {
					last = now
				}
				lastMu.Unlock()
				if acks != nil {
					for k := range n {
						acks[0][int(first)+k] = now.UnixNano()
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stopProgress)
	<-progressDone

	res := &HTTPResult{
		Mode: "http", URL: cfg.URL, Concurrency: cfg.Concurrency, Batch: cfg.Batch, Size: cfg.Size,
		Rate: cfg.Rate, Sent: c.sent.Load(), Acked: c.acked.Load(), Errors: c.errors.Load(),
		Requests: reqs.Load(), RequestErrors: reqErrs.Load(), Statuses: statuses,
		FirstError: firstErr.String(), AckLatency: latencyOf(hist.merged()),
	}
	res.Seconds = last.Sub(start).Seconds()
	if res.Seconds > 0 {
		res.EventsPerSec = float64(res.Acked) / res.Seconds
	}
	if sink != nil {
		e2e := sink.report(acks, res.Acked, cfg.E2EWait)
		res.E2E = &e2e
	}
	if res.Acked == 0 {
		return res, fmt.Errorf("http run against %s: %w (first error: %s)", cfg.URL, ErrNoAcks, res.FirstError)
	}
	return res, nil
}

// checkAccepted checks a 2xx body: when it is a JSON object with "accepted", the count must
// be n. Any other body (empty, not JSON) is taken as accepting the whole request.
func checkAccepted(body []byte, n int) error {
	var a struct {
		Accepted *int `json:"accepted"`
	}
	if len(body) == 0 || json.Unmarshal(body, &a) != nil || a.Accepted == nil {
		return nil
	}
	if *a.Accepted != n {
		return fmt.Errorf("accepted %d of %d events", *a.Accepted, n)
	}
	return nil
}

// BareHandler is the baseline peer for HTTP runs: a fasthttp handler that answers every
// POST with 202 {"accepted":N} (N = 1 for a JSON object, the element count for an array)
// without storing anything. It shows what the HTTP stack alone costs.
func BareHandler(ctx *fasthttp.RequestCtx) {
	if !ctx.IsPost() {
		ctx.SetStatusCode(fasthttp.StatusMethodNotAllowed)
		return
	}
	n := 1
	body := ctx.PostBody()
	if len(body) > 0 && body[0] == '[' {
		var arr []json.RawMessage
		if err := json.Unmarshal(body, &arr); err != nil {
			ctx.SetStatusCode(fasthttp.StatusBadRequest)
			return
		}
		n = len(arr)
	}
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	ctx.SetContentType("application/json")
	ctx.SetBodyString(fmt.Sprintf(`{"accepted":%d}`, n))
}
