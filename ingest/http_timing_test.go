package ingest

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// benchPost posts body b.N times over keep-alive connections from parallel goroutines
// (b.SetParallelism(128) × GOMAXPROCS) and reports events/s.
func benchPost(b *testing.B, addr, token, body string, eventsPerRequest int) {
	c := &fasthttp.HostClient{Addr: addr, MaxConns: 512, ReadTimeout: 30 * time.Second}
	b.ReportAllocs()
	b.SetParallelism(128)
	start := time.Now()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + addr + "/v1/events/apps/bench/click")
		req.Header.SetMethod(fasthttp.MethodPost)
		req.Header.SetContentType("application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		req.SetBodyString(body)
		for pb.Next() {
			if err := c.Do(req, resp); err != nil {
				b.Error(err)
				return
			}
			if resp.StatusCode() != 202 {
				b.Errorf("status %d: %s", resp.StatusCode(), resp.Body())
				return
			}
		}
	})
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(b.N)/el, "req/s")
	b.ReportMetric(float64(b.N*eventsPerRequest)/el, "events/s")
}

func eventBody(n int) string {
	ev := `{"temp":21.5,"humidity":40,"battery":97,"fw":"1.2.3","note":"` + strings.Repeat("x", 180) + `"}`
	if n == 1 {
		return ev
	}
	return "[" + strings.TrimSuffix(strings.Repeat(ev+",", n), ",") + "]"
}

// BenchmarkHTTPIngest measures durable ingest over HTTP: each 202 waited for the fsync.
func BenchmarkHTTPIngest(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(map[int]string{1: "events=1", 100: "events=100"}[n], func(b *testing.B) {
			ts := startServer(b)
			benchPost(b, strings.TrimPrefix(ts.url, "http://"), ts.token(b, "bench", "app"), eventBody(n), n)
		})
	}
}

// BenchmarkBareFasthttp is the peer: a fasthttp handler that answers 202 without reading the
// body, measured with the same client and load.
func BenchmarkBareFasthttp(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetStatusCode(202)
		ctx.SetBodyString(`{"accepted":1,"ids":["x"]}`)
	}}
	go srv.Serve(ln)
	defer srv.Shutdown()
	benchPost(b, ln.Addr().String(), "x", eventBody(1), 1)
}
