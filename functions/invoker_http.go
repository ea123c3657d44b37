package functions

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"
)

// httpInvoker POSTs each batch as application/cloudevents-batch+json to a URL.
type httpInvoker struct {
	url     string
	headers map[string]string
	timeout time.Duration
	client  *fasthttp.Client
}

var _ Invoker = (*httpInvoker)(nil)

func newHTTPInvoker(def Definition, _ Env) (Invoker, error) {
	h, err := expandHeaders(def.Headers)
	if err != nil {
		return nil, err
	}
	return &httpInvoker{
		url:     def.URL,
		headers: h,
		timeout: def.Timeout,
		client: &fasthttp.Client{
			Name:                     "fleetgate",
			MaxConnsPerHost:          def.Concurrency * 2,
			MaxIdleConnDuration:      time.Minute,
			MaxResponseBodySize:      maxResponseBytes,
			NoDefaultUserAgentHeader: false,
			// Do not retry a POST on our own: the dispatcher owns retries.
			RetryIfErr: func(*fasthttp.Request, int, error) (bool, bool) { return false, false },
		},
	}, nil
}

func (h *httpInvoker) Invoke(ctx context.Context, b *Batch) (Result, error) {
	buf := bodyPool.Get().(*[]byte)
	defer putBody(buf) // last: after the request that holds it is released
	*buf = AppendCloudEvents((*buf)[:0], b)
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(h.url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType(ContentTypeBatch)
	for k, v := range h.headers {
		req.Header.Set(k, v)
	}
	if tp, ts := sharedTrace(b); tp != "" {
		// Every event of the batch is part of one trace: the request is too.
		req.Header.Set("traceparent", tp)
		if ts != "" {
			req.Header.Set("tracestate", ts)
		}
	}
	req.SetBodyRaw(*buf)
	deadline := time.Now().Add(h.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := h.client.DoDeadline(req, resp, deadline); err != nil {
		if unreachable(err) {
			return Result{}, &UnavailableError{Err: fmt.Errorf("calling %s: %w", h.url, err)}
		}
		return Result{}, fmt.Errorf("%w: calling %s: %v", ErrRetryable, h.url, err)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, &UnavailableError{Err: fmt.Errorf("calling %s: %w", h.url, err)}
	}
	status := resp.StatusCode()
	body := resp.Body()
	switch {
	case status >= 200 && status <= 299:
		r, err := ParseResult(body)
		if err != nil {
			return Result{}, fmt.Errorf("answer of %s: %w", h.url, err)
		}
		return r, nil
	case status == fasthttp.StatusTooManyRequests || status == fasthttp.StatusBadGateway ||
		status == fasthttp.StatusServiceUnavailable || status == fasthttp.StatusGatewayTimeout:
		return Result{}, &UnavailableError{
			RetryAfter: parseRetryAfter(resp.Header.Peek(fasthttp.HeaderRetryAfter), time.Now()),
			Err:        fmt.Errorf("%s answered %d: %s", h.url, status, snippet(body)),
		}
	case status >= 500:
		return Result{}, fmt.Errorf("%w: %s answered %d: %s", ErrRetryable, h.url, status, snippet(body))
	default:
		return Result{}, fmt.Errorf("%w: %s answered %d: %s", ErrRejected, h.url, status, snippet(body))
	}
}

// bodyPool holds the buffers batches are encoded into. A request's own body did not serve:
// SetBodyRaw bypasses it, so every batch allocated a fresh buffer of its whole size (at 10k
// events/s to one function, 14 % of the bytes the gateway allocated). DoDeadline returns only
// once the request is written and answered, so the buffer is free again when Invoke returns.
var bodyPool = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBody is the largest buffer bodyPool keeps (a batch of 500 events of 8 KiB); a larger
// one, from a batch of big events, goes to the collector.
const maxPooledBody = 4 << 20

func putBody(b *[]byte) {
	if cap(*b) <= maxPooledBody {
		*b = (*b)[:0]
		bodyPool.Put(b)
	}
}

// unreachable reports whether a transport error means the endpoint could not be reached or did
// not answer in time (as opposed to a connection that broke while it worked on the batch).
func unreachable(err error) bool {
	if errors.Is(err, fasthttp.ErrTimeout) || errors.Is(err, fasthttp.ErrDialTimeout) ||
		errors.Is(err, fasthttp.ErrTLSHandshakeTimeout) || errors.Is(err, fasthttp.ErrNoFreeConns) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return true
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// maxRetryAfter bounds the wait a Retry-After header can impose.
const maxRetryAfter = time.Hour

// parseRetryAfter reads a Retry-After value: delay seconds or an HTTP date (relative to now).
// It returns 0 when v is empty, malformed or in the past, and at most maxRetryAfter.
func parseRetryAfter(v []byte, now time.Time) time.Duration {
	s := strings.TrimSpace(string(v))
	if s == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		d = time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http1Date(s); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// http1Date parses an HTTP date in any of the three formats RFC 9110 allows.
func http1Date(s string) (time.Time, error) {
	var err error
	for _, layout := range []string{time.RFC1123, time.RFC850, time.ANSIC} {
		var t time.Time
		if t, err = time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, err
}

// snippet returns at most 1 KiB of a response body as a one-line reason.
func snippet(b []byte) string {
	const max = 1024
	s := string(b)
	if len(s) > max {
		s = s[:max] + "…"
	}
	return strings.TrimSpace(s)
}
