package functions

import (
	"context"
	"fmt"
	"strings"
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
	req.SetBodyRaw(AppendCloudEvents(req.Body()[:0], b))
	deadline := time.Now().Add(h.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := h.client.DoDeadline(req, resp, deadline); err != nil {
		return Result{}, fmt.Errorf("%w: calling %s: %v", ErrRetryable, h.url, err)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("%w: calling %s: %v", ErrRetryable, h.url, err)
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
	case status == fasthttp.StatusTooManyRequests || status >= 500:
		return Result{}, fmt.Errorf("%w: %s answered %d: %s", ErrRetryable, h.url, status, snippet(body))
	default:
		return Result{}, fmt.Errorf("%w: %s answered %d: %s", ErrRejected, h.url, status, snippet(body))
	}
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
