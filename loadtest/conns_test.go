package loadtest

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestConnsHoldsIdleConnectionsAndMeasures(t *testing.T) {
	addr := startMochi(t)
	metrics := serveHTTP(t, func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Request.Header.Peek("Authorization")) != "Bearer T" {
			ctx.SetStatusCode(fasthttp.StatusForbidden)
			return
		}
		if string(ctx.Path()) == "/gc" {
			return
		}
		ctx.SetBodyString("# HELP go_goroutines x\ngo_goroutines 12\ngo_memstats_heap_alloc_bytes 1.5e+06\ngo_memstats_stack_inuse_bytes 65536\n")
	})
	cfg := DefaultConnsConfig()
	cfg.Broker, cfg.Clients, cfg.Hold, cfg.Dialers = addr, 20, 10*time.Millisecond, 4
	cfg.ServerPID = os.Getpid() // any process will do: this one
	cfg.MetricsURL, cfg.GCURL, cfg.Token = metrics+"/metrics", metrics+"/gc", "T"
	res, err := RunConns(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Connected != 20 || res.Errors != 0 {
		t.Fatalf("connected %d, errors %d (%s)", res.Connected, res.Errors, res.FirstError)
	}
	if res.Before == nil || res.After == nil || res.After.RSSBytes <= 0 || res.After.Goroutines != 12 ||
		res.After.HeapAllocBytes != 1500000 || res.After.StackInuseBytes != 65536 {
		t.Fatalf("samples: before %+v, after %+v", res.Before, res.After)
	}
	if !strings.Contains(Summary(res), "per connection: RSS") {
		t.Fatalf("summary:\n%s", Summary(res))
	}
}

func TestConnsReportsRefusals(t *testing.T) {
	cfg := DefaultConnsConfig()
	cfg.Broker, cfg.Clients, cfg.Hold, cfg.ConnectTimeout = "tcp://127.0.0.1:1", 3, 0, time.Second
	res, err := RunConns(context.Background(), cfg)
	if !errors.Is(err, ErrConnect) || res == nil || res.Connected != 0 || res.Errors != 3 {
		t.Fatalf("RunConns against a closed port = %+v, %v", res, err)
	}
	bad := DefaultConnsConfig()
	bad.Broker, bad.Clients = "http://x", 0
	if err := bad.Validate(); !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--clients") || !strings.Contains(err.Error(), "--broker") {
		t.Fatalf("Validate = %v", err)
	}
}

func TestConnectPacket(t *testing.T) {
	got := connectPacket("c1", "pw", 60)
	want := []byte{0x10, 22, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xC2, 0, 60, 0, 2, 'c', '1', 0, 2, 'c', '1', 0, 2, 'p', 'w'}
	if string(got) != string(want) {
		t.Fatalf("connectPacket = % x\nwant           % x", got, want)
	}
}
