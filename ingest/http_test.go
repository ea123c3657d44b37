package ingest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/storage"
)

// testServer is a real gateway: Badger in a temp dir, the real verifier, fasthttp on loopback.
type testServer struct {
	url   string
	store *storage.Store
	v     *auth.Verifier
	srv   *Server
}

func startServer(t testing.TB, mod ...func(*HTTPConfig)) *testServer {
	t.Helper()
	return startServerStore(t, nil, mod...)
}

// startServerStore is startServer with storeMod applied to the store's options.
func startServerStore(t testing.TB, storeMod func(*storage.Options), mod ...func(*HTTPConfig)) *testServer {
	t.Helper()
	dir := t.TempDir()
	ms := metrics.NewSet()
	so := storage.Options{Dir: dir + "/log", SweepInterval: time.Hour, Metrics: ms}
	if storeMod != nil {
		storeMod(&so)
	}
	st, err := storage.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.New(auth.DefaultConfig(), auth.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Store: st, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultHTTPConfig()
	cfg.Addr = "127.0.0.1:0"
	for _, m := range mod {
		m(&cfg)
	}
	srv, err := NewServer(ServerOptions{Config: cfg, Gateway: g, Auth: v, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Shutdown(t.Context())
		_ = st.Close()
	})
	return &testServer{url: "http://" + srv.Addr().String(), store: st, v: v, srv: srv}
}

func (ts *testServer) token(t testing.TB, sub, role string) string {
	t.Helper()
	tok, err := ts.v.Sign(auth.MintClaims(sub, "acme", role, nil, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

type answer struct {
	status int
	header http.Header
	body   map[string]any
}

func (ts *testServer) post(t testing.TB, path, token, ctype, body string, headers ...string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, ts.url+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("answer to %s is not JSON: %q", path, raw)
	}
	return a
}

func (ts *testServer) queued(t testing.TB) []storage.Item {
	t.Helper()
	items, err := ts.store.ReadQueue("log", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return items
}

func TestPostEventsAcceptedAfterCommit(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	a := ts.post(t, "/v1/events/apps/app-1/click", tok, "application/json", `[{"n":1},{"n":2}]`,
		"User-Agent", "shop/2.0", "X-App-Version", "2.0.1", "X-Locale", "de-DE", "X-Meta-Screen", "cart")
	if a.status != 202 || a.body["accepted"] != 2.0 {
		t.Fatalf("answer = %d %v", a.status, a.body)
	}
	ids := a.body["ids"].([]any)
	items := ts.queued(t)
	if len(items) != 2 {
		t.Fatalf("202 given but %d events stored", len(items))
	}
	// Ids are made by the log at the commit and carry the event's seq (its fate needs no index).
	for i, it := range items {
		if seq, ok := event.SeqOfID(ids[i].(string)); !ok || seq != it.Seq {
			t.Fatalf("id %v of event %d (seq %d) carries seq %d, %v", ids[i], i, it.Seq, seq, ok)
		}
	}
	ev := items[1].Event
	if ev.ID != ids[1] || string(ev.Data) != `{"n":2}` || ev.Topic != "apps/app-1/click" || ev.Subject != "app-1" ||
		ev.Tenant != "acme" || ev.Protocol != event.ProtocolHTTP {
		t.Fatalf("stored event = %+v", ev)
	}
	for k, want := range map[string]string{"user_agent": "shop/2.0", "app_version": "2.0.1", "locale": "de-DE", "screen": "cart"} {
		if ev.Meta[k] != want {
			t.Fatalf("meta[%s] = %q, want %q (meta %v)", k, ev.Meta[k], want, ev.Meta)
		}
	}
	if m := ev.ClaimsMap(); m["role"] != "app" {
		t.Fatalf("claims not stored: %v", m)
	}
}

func TestPostEventsNDJSONAndCloudEvents(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	if a := ts.post(t, "/v1/events/apps/x", tok, "application/x-ndjson", "{\"a\":1}\n{\"a\":2}\n"); a.status != 202 || a.body["accepted"] != 2.0 {
		t.Fatalf("ndjson: %d %v", a.status, a.body)
	}
	ce := `{"specversion":"1.0","id":"order-17","type":"shop.order","source":"app://shop","subject":"cart","data":{"total":3}}`
	a := ts.post(t, "/v1/events/apps/x", tok, "application/cloudevents+json", ce)
	if a.status != 202 || a.body["ids"].([]any)[0] != "order-17" {
		t.Fatalf("cloudevent: %d %v", a.status, a.body)
	}
	// The same event id again is acknowledged but not stored twice.
	a = ts.post(t, "/v1/events/apps/x", tok, "application/cloudevents+json", ce)
	if a.status != 202 || a.body["ids"].([]any)[0] != "order-17" {
		t.Fatalf("repeat: %d %v", a.status, a.body)
	}
	items := ts.queued(t)
	if len(items) != 3 {
		t.Fatalf("%d events stored, want 3", len(items))
	}
	last := items[2].Event
	if last.Type != "shop.order" || last.Source != "http://app-1" || last.Meta["$ce_source"] != "app://shop" ||
		last.Subject != "app-1" || last.Meta["ce_subject"] != "cart" {
		t.Fatalf("cloudevent stored as %+v", last)
	}
}

func TestIdempotencyKeyHeader(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	a1 := ts.post(t, "/v1/events/apps/x", tok, "application/json", `[1,2]`, "Idempotency-Key", "req-1")
	a2 := ts.post(t, "/v1/events/apps/x", tok, "application/json", `[1,2]`, "Idempotency-Key", "req-1")
	if a1.status != 202 || a2.status != 202 || fmt.Sprint(a1.body["ids"]) != fmt.Sprint(a2.body["ids"]) {
		t.Fatalf("repeat answered %v then %v", a1.body, a2.body)
	}
	// Another subject with the same key is a different request.
	a3 := ts.post(t, "/v1/events/apps/x", ts.token(t, "app-2", "app"), "application/json", `[1,2]`, "Idempotency-Key", "req-1")
	if fmt.Sprint(a3.body["ids"]) == fmt.Sprint(a1.body["ids"]) {
		t.Fatal("idempotency key shared across subjects")
	}
	items := ts.queued(t)
	if n := len(items); n != 4 {
		t.Fatalf("%d events stored, want 4", n)
	}
	for i, id := range a1.body["ids"].([]any) {
		if seq, ok := event.SeqOfID(id.(string)); !ok || seq != items[i].Seq || items[i].Event.ID != id {
			t.Fatalf("id %v answered for event %d (seq %d, stored as %q)", id, i, items[i].Seq, items[i].Event.ID)
		}
	}
}

func TestPostEventsRefusals(t *testing.T) {
	ts := startServer(t, func(c *HTTPConfig) { c.MaxBodyBytes = 4096 })
	app := ts.token(t, "app-1", "app")
	device := ts.token(t, "dev-1", "device")
	expired, _ := ts.v.Sign(auth.MintClaims("app-1", "", "app", nil, time.Hour, time.Now().Add(-3*time.Hour)))
	none := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhcHAtMSIsInJvbGUiOiJhcHAifQ."
	cases := []struct {
		name, path, token, ctype, body string
		status                         int
		code                           string
	}{
		{"no token", "/v1/events/apps/x", "", "application/json", `1`, 401, "unauthenticated"},
		{"garbage token", "/v1/events/apps/x", "abc", "application/json", `1`, 401, "unauthenticated"},
		{"alg none", "/v1/events/apps/x", none, "application/json", `1`, 401, "unauthenticated"},
		{"expired", "/v1/events/apps/x", expired, "application/json", `1`, 401, "unauthenticated"},
		{"outside policy", "/v1/events/devices/dev-2/t", app, "application/json", `1`, 403, "forbidden"},
		{"other device", "/v1/events/devices/dev-2/t", device, "application/json", `1`, 403, "forbidden"},
		{"wildcard topic", "/v1/events/apps/%2B/x", app, "application/json", `1`, 400, "bad_topic"},
		{"hash topic", "/v1/events/apps/%23", app, "application/json", `1`, 400, "bad_topic"},
		{"empty topic", "/v1/events/", app, "application/json", `1`, 400, "bad_topic"},
		{"dollar topic", "/v1/events/$SYS/x", app, "application/json", `1`, 400, "bad_topic"},
		{"bad json element", "/v1/events/apps/x", app, "application/json", `[1,{]`, 400, "malformed"},
		{"unsupported type", "/v1/events/apps/x", app, "text/plain", `1`, 415, "unsupported_media_type"},
		{"too large", "/v1/events/apps/x", app, "application/json", `"` + strings.Repeat("x", 5000) + `"`, 413, "too_large"},
		{"unknown path", "/v2/x", app, "application/json", `1`, 404, "not_found"},
		{"admin with app token", "/admin/v1/rules", app, "application/json", `1`, 403, "forbidden"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := ts.post(t, c.path, c.token, c.ctype, c.body)
			if a.status != c.status || a.body["code"] != c.code || a.body["error"] == "" {
				t.Fatalf("answer = %d %v, want %d %s", a.status, a.body, c.status, c.code)
			}
		})
	}
	if n := len(ts.queued(t)); n != 0 {
		t.Fatalf("refused requests stored %d events", n)
	}
	// GET is 405 with Allow.
	resp, err := http.Get(ts.url + "/v1/events/apps/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET = %d allow=%q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestStorageClosedGives503AndHealth(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	get := func(path string) (int, string) {
		resp, err := http.Get(ts.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz = %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("readyz = %d", code)
	}
	ts.post(t, "/v1/events/apps/x", tok, "application/json", `1`)
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "fleetgate_ingest_events_accepted_total 1") ||
		!strings.Contains(body, `fleetgate_http_responses_total{code="202"} 1`) ||
		!strings.Contains(body, "fleetgate_storage_commit_seconds_bucket") {
		t.Fatalf("metrics missing figures:\n%s", body)
	}
	ts.store.Close()
	a := ts.post(t, "/v1/events/apps/x", tok, "application/json", `1`)
	if a.status != 503 || a.header.Get("Retry-After") == "" || a.body["code"] != "unavailable" {
		t.Fatalf("closed store: %d %v %v", a.status, a.header, a.body)
	}
}

func TestSlowClientIsCutOff(t *testing.T) {
	ts := startServer(t, func(c *HTTPConfig) { c.ReadTimeout = 300 * time.Millisecond })
	// A client that sends headers promising a body and then nothing must not hold the server.
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest(http.MethodPost, ts.url+"/v1/events/apps/x", pr)
	req.ContentLength = 100
	req.Header.Set("Content-Type", "application/json")
	done := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	_, _ = pw.Write([]byte("[1,"))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server kept a stalled request open past its read timeout")
	}
}

func TestHTTPSWithConfiguredCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	ts := startServer(t, func(c *HTTPConfig) { c.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile} })
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, "https://"+ts.srv.Addr().String()+"/v1/events/apps/x", strings.NewReader(`{"a":1}`))
	req.Header.Set("Authorization", "Bearer "+ts.token(t, "app-1", "app"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 202 || resp.TLS == nil {
		t.Fatalf("https post = %d (tls %v)", resp.StatusCode, resp.TLS != nil)
	}
	// Plain HTTP on the TLS port is refused.
	if r, err := http.Get("http://" + ts.srv.Addr().String() + "/healthz"); err == nil && r.StatusCode == 200 {
		t.Fatal("plain HTTP served on the TLS listener")
	}
}

func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = dir+"/cert.pem", dir+"/key.pem"
	_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestRateLimitPerSender(t *testing.T) {
	ts := startServer(t, func(c *HTTPConfig) { c.RateLimit, c.RateBurst = 0.5, 4 })
	a, b := ts.token(t, "app-1", "app"), ts.token(t, "app-2", "app")
	if r := ts.post(t, "/v1/events/apps/x", a, "application/json", `[1,2,3]`); r.status != 202 {
		t.Fatalf("within burst: %d %v", r.status, r.body)
	}
	r := ts.post(t, "/v1/events/apps/x", a, "application/json", `[4,5]`)
	if r.status != 429 || r.body["code"] != "rate_limited" || r.header.Get("Retry-After") == "" {
		t.Fatalf("over the rate: %d %v %v", r.status, r.header, r.body)
	}
	if r := ts.post(t, "/v1/events/apps/x", a, "application/json", `4`); r.status != 202 {
		t.Fatalf("the last token of the burst: %d %v", r.status, r.body)
	}
	if r := ts.post(t, "/v1/events/apps/x", b, "application/json", `[1,2,3,4]`); r.status != 202 {
		t.Fatalf("another sender is limited by the first: %d %v", r.status, r.body)
	}
	r = ts.post(t, "/v1/events/apps/x", b, "application/json", `[1,2,3,4,5]`)
	if r.status != 429 || !strings.Contains(r.body["error"].(string), "split it") {
		t.Fatalf("request over the burst: %d %v", r.status, r.body)
	}
	if n := len(ts.queued(t)); n != 8 {
		t.Fatalf("%d events stored, want 8 (refused requests store nothing)", n)
	}
}

func TestSenderLimitsStayBounded(t *testing.T) {
	l := newSenderLimits(1, 1)
	now := time.Now()
	for i := range 64*maxSendersPerShard + 5000 {
		l.allow(fmt.Sprint("sender-", i), 1, now)
	}
	total := 0
	for i := range l.shards {
		total += len(l.shards[i].senders)
	}
	if total > 64*maxSendersPerShard {
		t.Fatalf("%d senders tracked, bound is %d", total, 64*maxSendersPerShard)
	}
}

func TestRequestOverOneCommitIs413(t *testing.T) {
	ts := startServer(t, func(c *HTTPConfig) { c.MaxBodyBytes = 8 << 20 })
	ts.srv.opts.Gateway.router = (RouterFunc(func(_ *event.Event, dst []storage.Target) []storage.Target {
		for _, f := range []string{"a", "b", "c", "d", "e"} {
			dst = append(dst, storage.Target{Function: f, Rule: "r"})
		}
		return dst
	}))
	body := "[" + strings.TrimSuffix(strings.Repeat("1,", 10000), ",") + "]"
	a := ts.post(t, "/v1/events/apps/x", ts.token(t, "app-1", "app"), "application/json", body)
	if a.status != 413 || a.body["code"] != "too_large" {
		t.Fatalf("10000 events × 5 functions: %d %v", a.status, a.body)
	}
	if n, _ := ts.store.ReadQueue("a", 0, 0); len(n) != 0 {
		t.Fatalf("a refused request stored %d events", len(n))
	}
}
