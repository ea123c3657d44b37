package functions

import (
	"bufio"
	"context"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestHTTPInvokerBodyAllocatesOnce: batches are encoded into a buffer the invoker keeps, not a
// fresh one of the batch's size each time (SetBodyRaw bypasses the request's own buffer). The
// function is a plain TCP server on loopback that reads each request with fixed buffers, so
// that the bytes counted are the invoker's.
func TestHTTPInvokerBodyAllocatesOnce(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own: make test runs this test without it too")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveDiscard(c)
		}
	}()
	inv, err := newHTTPInvoker(httpDef("f", "http://"+ln.Addr().String()+"/"), Env{})
	if err != nil {
		t.Fatal(err)
	}
	batch := &Batch{Function: "f", Items: thresholdItems(500, func(i int) int { return i })}
	size := len(AppendCloudEvents(nil, batch))
	invoke := func() {
		t.Helper()
		if _, err := inv.Invoke(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		invoke()
	}
	const n = 20
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		invoke()
	}
	runtime.ReadMemStats(&after)
	per := (after.TotalAlloc - before.TotalAlloc) / n
	t.Logf("batch of %d bytes: %d bytes allocated per call", size, per)
	// A collection may empty the pool once (one fresh buffer over n calls).
	if per > uint64(size)/4 {
		t.Fatalf("%d bytes allocated per call of a %d-byte batch: want the encoding buffer reused", per, size)
	}
}

// serveDiscard answers every HTTP/1.1 request on c with 200 and no body, reading the request
// into fixed buffers.
func serveDiscard(c net.Conn) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		length := 0
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return
			}
			if len(line) <= 2 {
				break
			}
			if k, v, ok := strings.Cut(string(line), ":"); ok && strings.EqualFold(k, "content-length") {
				length, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if _, err := r.Discard(length); err != nil {
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"); err != nil {
			return
		}
	}
}
