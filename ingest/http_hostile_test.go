package ingest

// Tests of the HTTP endpoint against a hostile network: bodies are not read before the
// token is checked, limits hold before a byte of body is buffered, and error answers quote
// nothing of the request.

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// rawAnswer is an HTTP answer read off a raw connection.
type rawAnswer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string // the body as sent
	close  bool   // the answer says Connection: close
}

// readRawAnswer reads one answer from br before deadline.
func readRawAnswer(t testing.TB, c net.Conn, br *bufio.Reader, deadline time.Time) rawAnswer {
	t.Helper()
	_ = c.SetReadDeadline(deadline)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	a := rawAnswer{status: resp.StatusCode, header: resp.Header, raw: string(raw), close: resp.Close}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	return a
}

// serverCloses fails unless the server closes c (EOF or reset) before deadline, with no
// more bytes sent.
func serverCloses(t testing.TB, c net.Conn, br *bufio.Reader, deadline time.Time) {
	t.Helper()
	_ = c.SetReadDeadline(deadline)
	b, err := br.ReadByte()
	switch {
	case err == nil:
		t.Fatalf("server sent %q after its answer instead of closing", b)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		t.Fatalf("server did not close the connection: %v", err)
	}
}

// headWithBody is a request head promising a body of size bytes.
func headWithBody(path, token, ctype string, size int, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: fleetgate\r\nContent-Type: %s\r\nContent-Length: %d\r\n", path, ctype, size)
	if token != "" {
		fmt.Fprintf(&b, "Authorization: Bearer %s\r\n", token)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return b.String()
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC() // the second one drops what sync.Pools held over the first
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// Many connections promise a 1 MiB body and send one byte of it without a token: each is
// answered 401 at once, without the server waiting for (or buffering) the body, and the
// heap stays small while they are open. A second group sends only the head and is held
// by the server until http.read_timeout: that costs little heap too.
func TestUnauthenticatedBodyIsNotBuffered(t *testing.T) {
	const heapBound = 64 << 20
	conns := 2000
	var lim syscall.Rlimit // each connection takes a descriptor here and one in the server
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(2*conns+256) {
		conns = (int(lim.Cur) - 256) / 2
		t.Logf("RLIMIT_NOFILE is %d: %d connections", lim.Cur, conns)
		if conns < 100 {
			t.Skipf("RLIMIT_NOFILE %d is too low for this test", lim.Cur)
		}
	}
	ts := startServer(t, func(c *HTTPConfig) { c.MaxConnsPerIP = 0 })
	addr := ts.srv.Addr().String()
	head := headWithBody("/v1/events/apps/x", "", "application/json", 1<<20)
	if a := ts.post(t, "/v1/events/apps/x", ts.token(t, "app-1", "app"), "application/json", `1`); a.status != 202 {
		t.Fatalf("warm-up post: %d %v", a.status, a.body)
	}
	base := heapInUse()

	dial := func(req string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		return c, bufio.NewReader(c)
	}

	// One body byte each: a 401 comes back at once and the server closes.
	start := time.Now()
	type conn struct {
		c  net.Conn
		br *bufio.Reader
	}
	answered := make([]conn, conns)
	for i := range answered {
		c, br := dial(head + "[")
		answered[i] = conn{c, br}
	}
	deadline := time.Now().Add(20 * time.Second) // far below http.read_timeout (30s)
	for _, k := range answered {
		a := readRawAnswer(t, k.c, k.br, deadline)
		if a.status != 401 || a.body["code"] != "unauthenticated" || a.header.Get("WWW-Authenticate") == "" || !a.close {
			t.Fatalf("answer = %d %v %v, want 401 unauthenticated with Connection: close", a.status, a.header, a.body)
		}
		serverCloses(t, k.c, k.br, deadline)
	}
	grown := int64(heapInUse()) - int64(base)
	t.Logf("%d unauthenticated 1 MiB posts answered 401 in %v; heap growth with them open: %.1f MiB",
		conns, time.Since(start).Round(time.Millisecond), float64(grown)/(1<<20))
	if grown > heapBound {
		t.Fatalf("heap grew %d MiB for %d refused connections, bound %d MiB", grown>>20, conns, heapBound>>20)
	}

	// Only the head: the server waits (until http.read_timeout) for the first body byte, and
	// holds these connections; what it holds must be small.
	base = heapInUse()
	held := make([]net.Conn, conns)
	for i := range held {
		held[i], _ = dial(head)
	}
	checkWithin(t, 20*time.Second, func() error {
		if n := ts.srv.srv.GetOpenConnectionsCount(); n < int32(conns) {
			return fmt.Errorf("server has %d of %d connections open", n, conns)
		}
		return nil
	})
	grown = int64(heapInUse()) - int64(base)
	t.Logf("%d connections held open after a 1 MiB head: heap growth %.1f MiB (%.1f KiB each)",
		conns, float64(grown)/(1<<20), float64(grown)/float64(conns)/1024)
	if grown > heapBound {
		t.Fatalf("heap grew %d MiB for %d held connections, bound %d MiB", grown>>20, conns, heapBound>>20)
	}
	for _, c := range held {
		c.Close()
	}
	if n := len(ts.queued(t)); n != 1 {
		t.Fatalf("%d events stored, want 1 (the warm-up)", n)
	}
}

// checkWithin polls cond until it returns nil, failing with its last error after d.
func checkWithin(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", d, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// refusedRaw sends req on a new connection and returns the answer, failing unless the
// server then closes the connection.
func refusedRaw(t testing.TB, ts *testServer, req string) rawAnswer {
	t.Helper()
	conn, err := net.Dial("tcp", ts.srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	deadline := time.Now().Add(10 * time.Second)
	a := readRawAnswer(t, conn, br, deadline)
	if !a.close {
		t.Fatalf("answer %d %v without Connection: close", a.status, a.body)
	}
	serverCloses(t, conn, br, deadline)
	return a
}

// chunkedOver is a chunked POST whose chunks carry limit+1 bytes, without the last chunk
// (the server must answer before the body ends).
func chunkedOver(path, token string, limit int) string {
	var b strings.Builder
	b.WriteString("POST " + path + " HTTP/1.1\r\nHost: fleetgate\r\nContent-Type: application/json\r\n" +
		"Authorization: Bearer " + token + "\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n[\r\n")
	for left := limit; left > 0; {
		n := min(left, 16<<10)
		fmt.Fprintf(&b, "%x\r\n%s\r\n", n, strings.Repeat(" ", n))
		left -= n
	}
	return b.String()
}

// Refusals answer from the head alone and close the connection: the body is never read.
func TestRefusalsDoNotReadTheBody(t *testing.T) {
	ts := startServer(t)
	app := ts.token(t, "app-1", "app")
	cases := []struct {
		name, head string
		status     int
		code       string
	}{
		{"no token", headWithBody("/v1/events/apps/x", "", "application/json", 1<<20), 401, "unauthenticated"},
		{"bad token", headWithBody("/v1/events/apps/x", "abc", "application/json", 1<<20), 401, "unauthenticated"},
		{"no token, multipart", headWithBody("/v1/events/apps/x", "", "multipart/form-data; boundary=xyz", 1<<20), 401, "unauthenticated"},
		{"no token, 100-continue", headWithBody("/v1/events/apps/x", "", "application/json", 1<<20, "Expect: 100-continue"), 401, "unauthenticated"},
		{"no token, admin", headWithBody("/admin/v1/rules", "", "application/json", 1<<20), 401, "unauthenticated"},
		{"app token, admin", headWithBody("/admin/v1/rules", app, "application/json", 1<<20), 403, "forbidden"},
		{"outside policy", headWithBody("/v1/events/devices/d/t", app, "application/json", 1<<20), 403, "forbidden"},
		{"over the limit", headWithBody("/v1/events/apps/x", app, "application/json", 1<<20+1), 413, "too_large"},
		{"far over the limit", headWithBody("/v1/events/apps/x", app, "application/json", 1<<40), 413, "too_large"},
		{"unknown path", headWithBody("/v2/x", app, "application/json", 1<<20), 404, "not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ts.srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, c.head+"["); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			deadline := time.Now().Add(10 * time.Second)
			if strings.Contains(c.head, "100-continue") {
				// The interim answer comes first; the body is still not read after the final one.
				_ = conn.SetReadDeadline(deadline)
				line, err := br.ReadString('\n')
				if err != nil || !strings.Contains(line, " 100 ") {
					t.Fatalf("interim answer %q, %v", line, err)
				}
				if _, err := br.ReadString('\n'); err != nil {
					t.Fatal(err)
				}
			}
			a := readRawAnswer(t, conn, br, deadline)
			if a.status != c.status || a.body["code"] != c.code || !a.close {
				t.Fatalf("answer = %d %v %v, want %d %s with Connection: close", a.status, a.header, a.body, c.status, c.code)
			}
			serverCloses(t, conn, br, deadline)
		})
	}
	// A chunked body is cut off once it passes the limit.
	t.Run("chunked over the limit", func(t *testing.T) {
		ts := startServer(t, func(c *HTTPConfig) { c.MaxBodyBytes = 64 << 10 })
		a := refusedRaw(t, ts, chunkedOver("/v1/events/apps/x", ts.token(t, "app-1", "app"), 64<<10))
		if a.status != 413 || a.body["code"] != "too_large" {
			t.Fatalf("answer = %d %v %v", a.status, a.header, a.body)
		}
		if n := len(ts.queued(t)); n != 0 {
			t.Fatalf("%d events stored", n)
		}
	})
	if n := len(ts.queued(t)); n != 0 {
		t.Fatalf("refused requests stored %d events", n)
	}
}

// A request fasthttp cannot parse is answered in the JSON error format with nothing of the
// request in it: not the bearer token, not any header.
func TestMalformedRequestAnswerQuotesNothing(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	auth := "Authorization: Bearer " + tok + "\r\n"
	oversized := "POST /v1/events/apps/x HTTP/1.1\r\nHost: fleetgate\r\n" + auth + "X-Pad: "
	oversized += strings.Repeat("p", readBufferSize-len(oversized)) // fills the read buffer, no end of head
	cases := []struct{ name, req string }{
		{"head over the read buffer", oversized},
		{"header line without colon", "POST /v1/events/apps/x HTTP/1.1\r\nHost: fleetgate\r\n" + auth + "no colon here\r\n\r\n"},
		{"bad request line", "POST  /v1/events/apps/x HTTP/1.1 junk\r\n" + auth + "\r\n"},
		{"bad content length", "POST /v1/events/apps/x HTTP/1.1\r\nHost: fleetgate\r\n" + auth + "Content-Length: 12x\r\n\r\n"},
		{"broken chunked body", "POST /v1/events/apps/x HTTP/1.1\r\nHost: fleetgate\r\n" + auth +
			"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n1\r\n\r\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ts.srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, c.req); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			raw, err := io.ReadAll(conn)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("reading the answer: %v (got %q)", err, raw)
			}
			resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(raw))), nil)
			if err != nil {
				t.Fatalf("answer %q: %v", raw, err)
			}
			body, _ := io.ReadAll(resp.Body)
			var e struct{ Error, Code string }
			if resp.StatusCode != 400 || json.Unmarshal(body, &e) != nil || e.Code != "bad_request" || e.Error == "" {
				t.Fatalf("answer = %q, want 400 {\"error\":...,\"code\":\"bad_request\"}", raw)
			}
			for _, secret := range []string{tok, tok[len(tok)-16:], "Bearer", "Authorization", "ppppp", "no colon", "junk"} {
				if strings.Contains(string(raw), secret) {
					t.Fatalf("answer quotes the request (%q): %q", secret, raw)
				}
			}
		})
	}
}

// jsonString is a JSON string value of exactly n bytes (n >= 2).
func jsonString(n int) string { return `"` + strings.Repeat("s", n-2) + `"` }

// Authenticated posts of several sizes, with a Content-Length and chunked, are read whole
// from the stream, on kept-alive connections; exactly http.max_body_bytes is allowed, one
// byte more is 413.
func TestStreamedBodiesOfSeveralSizes(t *testing.T) {
	const limit = 1 << 20
	ts := startServer(t, func(c *HTTPConfig) { c.MaxBodyBytes = limit })
	tok := ts.token(t, "app-1", "app")
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	conns := 0 // connections opened: an answer after the whole body is read keeps it alive
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			conns++
		}
	}}
	post := func(body string, chunked bool) (int, map[string]any) {
		t.Helper()
		var r io.Reader = strings.NewReader(body)
		if chunked {
			r = struct{ io.Reader }{r} // length unknown to the client: Transfer-Encoding: chunked
		}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), http.MethodPost, ts.url+"/v1/events/apps/x", r)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		raw, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("answer not JSON: %q", raw)
		}
		return resp.StatusCode, m
	}
	stored := 0
	for _, size := range []int{1, 2, 100, 8 << 10, 8<<10 + 1, 100 << 10, 300 << 10, limit} {
		for _, chunked := range []bool{false, true} {
			body := jsonString(max(size, 2))
			if size == 1 {
				body = "7"
			}
			status, m := post(body, chunked)
			if status != 202 || m["accepted"] != 1.0 {
				t.Fatalf("%d bytes (chunked %v): %d %v", size, chunked, status, m)
			}
			stored++
			items := ts.queued(t)
			if len(items) != stored || string(items[stored-1].Event.Data) != body {
				t.Fatalf("%d bytes (chunked %v): %d events stored, last %d bytes", size, chunked, len(items), len(items[len(items)-1].Event.Data))
			}
		}
	}
	// An empty body keeps its answer.
	if status, m := post("", false); status != 400 || m["code"] != "malformed" {
		t.Fatalf("empty body: %d %v", status, m)
	}
	if conns != 1 {
		t.Fatalf("%d connections for %d requests answered after their whole body: want 1 (keep-alive)", conns, stored+1)
	}
	// One byte over: 413, answered before the rest of the body is read (on a raw connection:
	// a client still writing a body the server will not read may see the reset first).
	for _, req := range []string{
		headWithBody("/v1/events/apps/x", tok, "application/json", limit+1) + "[",
		chunkedOver("/v1/events/apps/x", tok, limit),
	} {
		if a := refusedRaw(t, ts, req); a.status != 413 || a.body["code"] != "too_large" {
			t.Fatalf("limit+1: %d %v", a.status, a.body)
		}
	}
	if n := len(ts.queued(t)); n != stored {
		t.Fatalf("%d events stored, want %d", n, stored)
	}
}

// The mounted admin APIs get the whole body through ctx.PostBody(), read only after the
// operator check, within http.max_body_bytes.
func TestAdminHandlersGetTheirBodies(t *testing.T) {
	const limit = 256 << 10
	ts := startServer(t, func(c *HTTPConfig) { c.MaxBodyBytes = limit })
	called := 0
	ts.srv.Mount("/admin/v1/echo/", func(ctx *fasthttp.RequestCtx) {
		called++
		sum := sha256.Sum256(ctx.PostBody())
		ctx.SetContentType("application/json")
		ctx.SetBodyString(`{"len":` + strconv.Itoa(len(ctx.PostBody())) + `,"sha":"` + hex.EncodeToString(sum[:]) + `"}`)
	})
	op, app := ts.token(t, "ops", "operator"), ts.token(t, "app-1", "app")
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	post := func(tok, body string, chunked bool) (int, map[string]any) {
		t.Helper()
		var r io.Reader = strings.NewReader(body)
		if chunked {
			r = struct{ io.Reader }{r}
		}
		req, _ := http.NewRequest(http.MethodPost, ts.url+"/admin/v1/echo/x", r)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		raw, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("answer not JSON: %q", raw)
		}
		return resp.StatusCode, m
	}
	for _, size := range []int{0, 1, 9 << 10, 100 << 10, limit} {
		for _, chunked := range []bool{false, true} {
			body := strings.Repeat("r", size)
			sum := sha256.Sum256([]byte(body))
			status, m := post(op, body, chunked)
			if status != 200 || m["len"] != float64(size) || m["sha"] != hex.EncodeToString(sum[:]) {
				t.Fatalf("%d bytes (chunked %v): %d %v", size, chunked, status, m)
			}
		}
	}
	n := called
	for _, req := range []string{
		headWithBody("/admin/v1/echo/x", op, "application/json", limit+1) + "[",
		chunkedOver("/admin/v1/echo/x", op, limit),
	} {
		if a := refusedRaw(t, ts, req); a.status != 413 || a.body["code"] != "too_large" {
			t.Fatalf("limit+1: %d %v", a.status, a.body)
		}
	}
	if status, m := post(app, "{}", false); status != 403 {
		t.Fatalf("app token: %d %v", status, m)
	}
	if called != n {
		t.Fatalf("the admin handler ran for %d refused requests", called-n)
	}
}

// http.max_conns_per_ip: connections over it from one address are refused (429) and closed;
// closing one makes room again.
func TestMaxConnsPerIP(t *testing.T) {
	if c := DefaultHTTPConfig(); c.MaxConnsPerIP != 1000 {
		t.Fatalf("default http.max_conns_per_ip = %d", c.MaxConnsPerIP)
	}
	bad := DefaultHTTPConfig()
	bad.MaxConnsPerIP = -1
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "http.max_conns_per_ip") {
		t.Fatalf("negative max_conns_per_ip: %v", err)
	}
	const limit = 3
	ts := startServer(t, func(c *HTTPConfig) { c.MaxConnsPerIP = limit })
	// get opens a connection and, when ask, sends GET /healthz; it returns the status answered
	// (a refused connection is answered without a request, and then not reset by one unread).
	get := func(ask bool) (net.Conn, *bufio.Reader, int) {
		c, err := net.Dial("tcp", ts.srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if ask {
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: fleetgate\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
		}
		br := bufio.NewReader(c)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return c, br, 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return c, br, resp.StatusCode
	}
	var open []net.Conn
	for range limit {
		c, _, status := get(true)
		if status != 200 {
			t.Fatalf("connection within the limit: %d", status)
		}
		open = append(open, c)
	}
	c, br, status := get(false)
	if status != 429 {
		t.Fatalf("connection over the limit: %d, want 429", status)
	}
	serverCloses(t, c, br, time.Now().Add(10*time.Second))
	open[0].Close()
	checkWithin(t, 10*time.Second, func() error {
		if _, _, status := get(true); status != 200 {
			return fmt.Errorf("after closing one connection a new one gets %d", status)
		}
		return nil
	})
}
