package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/valyala/fasthttp"
)

func quickHTTP(url string) HTTPConfig {
	cfg := DefaultHTTPConfig()
	cfg.URL = url
	cfg.Concurrency = 4
	cfg.Events = 2000
	cfg.Duration = 20 * time.Second
	cfg.ProgressEvery = 0
	return cfg
}

func TestRunHTTPBatches(t *testing.T) {
	var events, requests atomic.Int64
	var authz atomic.Value
	base := serveHTTP(t, func(ctx *fasthttp.RequestCtx) {
		requests.Add(1)
		authz.Store(string(ctx.Request.Header.Peek("Authorization")))
		BareHandler(ctx)
		var a struct{ Accepted int64 }
		_ = json.Unmarshal(ctx.Response.Body(), &a)
		events.Add(a.Accepted)
	})
	for _, batch := range []int{1, 7, 100} {
		events.Store(0)
		requests.Store(0)
		cfg := quickHTTP(base + "/v1/events/apps/x")
		cfg.Batch = batch
		cfg.JWTSecret = "s3cret"
		res, err := RunHTTP(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		wantReqs := int64((2000 + batch - 1) / batch)
		if res.Acked != 2000 || res.Sent != 2000 || res.Errors != 0 || res.Requests != wantReqs || events.Load() != 2000 || requests.Load() != wantReqs {
			t.Fatalf("batch %d: %+v; server saw %d events in %d requests", batch, res, events.Load(), requests.Load())
		}
		if res.AckLatency.Count != wantReqs || res.EventsPerSec <= 0 || res.Statuses["202"] != wantReqs {
			t.Errorf("batch %d: %+v", batch, res)
		}
	}
	// The minted token is an app token the gateway can verify with the shared secret.
	h, _ := authz.Load().(string)
	tok, err := jwt.Parse(strings.TrimPrefix(h, "Bearer "), func(*jwt.Token) (any, error) { return []byte("s3cret"), nil })
	if err != nil || tok.Claims.(jwt.MapClaims)["role"] != "app" {
		t.Errorf("authorization %q: %v", h, err)
	}
}

// Refusals and short "accepted" counts are errors, not acks.
func TestRunHTTPCountsRefusals(t *testing.T) {
	var n atomic.Int64
	base := serveHTTP(t, func(ctx *fasthttp.RequestCtx) {
		switch n.Add(1) % 3 {
		case 0:
			ctx.SetStatusCode(503)
			ctx.SetBodyString(`{"error":"full","code":"unavailable"}`)
		case 1:
			ctx.SetStatusCode(202)
			ctx.SetBodyString(`{"accepted":1}`) // of 10
		default:
			BareHandler(ctx)
		}
	})
	cfg := quickHTTP(base + "/")
	cfg.Concurrency, cfg.Events, cfg.Batch = 1, 300, 10
	res, err := RunHTTP(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 30 || res.Acked != 100 || res.Errors != 200 || res.RequestErrors != 20 || res.Statuses["503"] != 10 {
		t.Fatalf("%+v", res)
	}
	if !strings.Contains(res.FirstError, "accepted 1 of 10") && !strings.Contains(res.FirstError, "HTTP 503") {
		t.Errorf("first error %q", res.FirstError)
	}

	// Nothing acknowledged at all is a failed run.
	base = serveHTTP(t, func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(401) })
	cfg = quickHTTP(base + "/")
	cfg.Events = 10
	if _, err := RunHTTP(context.Background(), cfg); !errors.Is(err, ErrNoAcks) {
		t.Fatalf("err = %v, want ErrNoAcks", err)
	}
}

// End to end over HTTP with a stand-in gateway that loses some events and duplicates
// others: the sink's report must say exactly how many.
func TestRunHTTPEndToEndLossAndDuplicates(t *testing.T) {
	for _, binary := range []bool{false, true} {
		fw := &forwarder{t: t, binary: binary}
		stop, done := make(chan struct{}), make(chan struct{})
		go func() { defer close(done); fw.run(stop) }()
		var seen atomic.Int64
		var lost, dups atomic.Int64
		base := serveHTTP(t, func(ctx *fasthttp.RequestCtx) {
			var evs []json.RawMessage
			if err := json.Unmarshal(ctx.PostBody(), &evs); err != nil {
				ctx.SetStatusCode(400)
				return
			}
			for _, ev := range evs {
				switch k := seen.Add(1); {
				case k%50 == 0:
					lost.Add(1) // acknowledged, never delivered
				case k%20 == 0:
					dups.Add(1)
					fw.add(ev, 2)
				default:
					fw.add(ev, 1)
				}
			}
			BareHandler(ctx)
		})
		cfg := quickHTTP(base + "/v1/events/apps/e2e")
		cfg.Batch, cfg.Events = 10, 1000
		cfg.SinkAddr = "127.0.0.1:0"
		cfg.E2EWait = 300 * time.Millisecond // some are lost on purpose: keep the wait short
		cfg.Ready = fw.setURL
		res, err := RunHTTP(context.Background(), cfg)
		close(stop)
		<-done
		if err != nil {
			t.Fatal(err)
		}
		e := res.E2E
		if e.Expected != 1000 || e.Lost != lost.Load() || e.Duplicates != dups.Load() || e.Received != 1000-lost.Load() {
			t.Fatalf("binary=%v: e2e %+v; the stand-in lost %d and duplicated %d", binary, *e, lost.Load(), dups.Load())
		}
		if e.Latency.Count != e.Received {
			t.Errorf("latency count %d for %d received", e.Latency.Count, e.Received)
		}
	}
}

func TestHTTPConfigValidateReportsEverything(t *testing.T) {
	cfg := HTTPConfig{URL: "ftp://x"}
	err := cfg.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v", err)
	}
	mustContain(t, err.Error(), "url:", "concurrency:", "events:", "batch:", "duration:", "timeout:")
}
