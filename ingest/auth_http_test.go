package ingest

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/testutil"
	"github.com/fleetgate/fleetgate/storage"
)

// syncBuffer is a log sink tests can read while the server writes.
type syncBuffer = testutil.SyncBuffer

type authServer struct {
	url  string
	v    *auth.Verifier
	rl   *auth.Revocations
	logs *syncBuffer
}

// startAuthServer runs the HTTP server with cfg, a revocation list on a real store, the
// revocations API mounted, and a DEBUG log the test can read.
func startAuthServer(t *testing.T, cfg auth.Config, d Disconnecter) *authServer {
	t.Helper()
	dir := t.TempDir()
	ms := metrics.NewSet()
	st, err := storage.Open(storage.Options{Dir: dir + "/log", SweepInterval: time.Hour, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := auth.LoadRevocations(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	v, err := auth.New(cfg, auth.Options{DataDir: dir, Revocations: rl, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	g, err := New(Options{Store: st, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	hc := DefaultHTTPConfig()
	hc.Addr = "127.0.0.1:0"
	srv, err := NewServer(ServerOptions{Config: hc, Gateway: g, Auth: v, Metrics: ms, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	srv.Mount(RevocationsPath+"/", RevocationsHandler(rl, d, log))
	srv.Mount("/admin/v1/ping", func(ctx *fasthttp.RequestCtx) { ctx.SetStatusCode(200); ctx.SetBodyString(`{"pong":true}`) })
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Shutdown(t.Context())
		_ = st.Close()
	})
	return &authServer{url: "http://" + srv.Addr().String(), v: v, rl: rl, logs: logs}
}

func doJSON(t *testing.T, method, url, token, body string, headers ...string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: answer is not JSON: %q", method, url, raw)
	}
	return resp.StatusCode, resp.Header, m
}

func hs256(t *testing.T, secret, kid string, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims(claims))
	tok.Header["kid"] = kid
	s, err := tok.SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A refused token gets "invalid token" and a request id; why it was refused (the expected
// issuer, the key ids, the algorithms) is only in the DEBUG log, under the same id.
func TestRefusedTokenAnswerLeaksNothing(t *testing.T) {
	opsSecret := strings.Repeat("o", 32)
	cfg := auth.DefaultConfig()
	cfg.Keys = []auth.KeyConfig{{ID: "ops-key-7", Alg: "HS256", Secret: opsSecret}}
	cfg.AdminKeys = []string{"ops-key-7"}
	cfg.Issuer = "https://secret-issuer.internal/"
	s := startAuthServer(t, cfg, nil)
	now := time.Now()
	wrongIss := auth.MintClaims("app-1", "", "app", nil, time.Hour, now)
	wrongIss["iss"] = "https://evil.example.com/"
	cases := map[string]string{
		"wrong issuer": hs256(t, opsSecret, "ops-key-7", wrongIss),
		"unknown kid":  hs256(t, opsSecret, "guess", auth.MintClaims("app-1", "", "app", nil, time.Hour, now)),
		"bad alg":      "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
	}
	for name, tok := range cases {
		t.Run(name, func(t *testing.T) {
			status, h, body := doJSON(t, "POST", s.url+"/v1/events/apps/x", tok, `1`)
			if status != 401 || body["error"] != "invalid token" || body["code"] != "unauthenticated" {
				t.Fatalf("answer %d %v", status, body)
			}
			id, _ := body["request_id"].(string)
			if id == "" || h.Get("X-Request-Id") != id {
				t.Fatalf("request id: body %q header %q", id, h.Get("X-Request-Id"))
			}
			for _, secret := range []string{"secret-issuer", "ops-key-7", "HS256", "guess"} {
				if strings.Contains(h.Get("Www-Authenticate"), secret) {
					t.Fatalf("header leaks %q", secret)
				}
			}
			logs := s.logs.String()
			if !strings.Contains(logs, "request_id="+id) || !strings.Contains(logs, "token refused") {
				t.Fatalf("log has no line for request %s:\n%s", id, logs)
			}
		})
	}
	// The sender's own X-Request-Id is used when it is plain, replaced when it is not.
	_, _, body := doJSON(t, "POST", s.url+"/v1/events/apps/x", "abc", `1`, "X-Request-Id", "req-123")
	if body["request_id"] != "req-123" {
		t.Fatalf("request id %v", body["request_id"])
	}
	_, _, body = doJSON(t, "POST", s.url+"/v1/events/apps/x", "abc", `1`, "X-Request-Id", "a b\"c")
	if id, _ := body["request_id"].(string); id == "" || strings.ContainsAny(id, " \"") {
		t.Fatalf("request id %q", id)
	}
	if !strings.Contains(s.logs.String(), "wrong issuer") && !strings.Contains(s.logs.String(), "secret-issuer") {
		t.Fatalf("the log lacks the refusal details:\n%s", s.logs.String())
	}
}

// An operator token signed by a key not trusted for admin is refused by the admin API (403,
// clear message); the admin key's is allowed.
func TestAdminAPIRefusesUntrustedSigner(t *testing.T) {
	opsSecret, devSecret := strings.Repeat("o", 32), strings.Repeat("d", 32)
	cfg := auth.DefaultConfig()
	cfg.Keys = []auth.KeyConfig{
		{ID: "ops", Alg: "HS256", Secret: opsSecret},
		{ID: "devices", Alg: "HS256", Secret: devSecret},
	}
	cfg.AdminKeys = []string{"ops"}
	s := startAuthServer(t, cfg, nil)
	op := auth.MintClaims("alice", "", "operator", nil, time.Hour, time.Now())
	status, _, body := doJSON(t, "GET", s.url+"/admin/v1/ping", hs256(t, devSecret, "devices", op), "")
	if status != 403 || body["code"] != "forbidden" || !strings.Contains(body["error"].(string), "not trusted for admin") || body["request_id"] == nil {
		t.Fatalf("untrusted signer: %d %v", status, body)
	}
	if strings.Contains(body["error"].(string), "devices") {
		t.Fatalf("the answer names the key: %v", body)
	}
	status, _, body = doJSON(t, "GET", s.url+"/admin/v1/ping", hs256(t, opsSecret, "ops", op), "")
	if status != 200 || body["pong"] != true {
		t.Fatalf("admin key: %d %v", status, body)
	}
}

type recordingDisconnecter struct {
	mu        sync.Mutex
	connected []*auth.Principal
}

func (r *recordingDisconnecter) DisconnectRevoked(revoked func(*auth.Principal) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	kept := r.connected[:0]
	for _, p := range r.connected {
		if revoked(p) {
			n++
		} else {
			kept = append(kept, p)
		}
	}
	r.connected = kept
	return n
}

func TestRevocationsAPI(t *testing.T) {
	d := &recordingDisconnecter{}
	s := startAuthServer(t, auth.DefaultConfig(), d)
	op, _ := s.v.Sign(auth.MintClaims("alice", "", "operator", nil, time.Hour, time.Now()))
	dev, _ := s.v.Sign(auth.MintClaims("d1", "acme", "device", nil, time.Hour, time.Now().Add(-time.Minute)))
	p, err := s.v.Verify(dev)
	if err != nil {
		t.Fatal(err)
	}
	d.connected = []*auth.Principal{p}
	if status, _, _ := doJSON(t, "POST", s.url+"/v1/events/devices/d1/t", dev, `1`); status != 202 {
		t.Fatalf("device before revocation: %d", status)
	}

	for _, bad := range []string{`{}`, `{"jti":"x","subject":"y"}`, `{"subject":1}`, `{"who":"x"}`, `nope`} {
		if status, _, body := doJSON(t, "POST", s.url+"/admin/v1/revocations", op, bad); status != 400 {
			t.Fatalf("POST %s: %d %v", bad, status, body)
		}
	}
	status, _, body := doJSON(t, "POST", s.url+"/admin/v1/revocations", op, `{"subject":"d1","tenant":"acme"}`)
	if status != 201 || body["disconnected"] != float64(1) {
		t.Fatalf("POST: %d %v", status, body)
	}
	status, _, body = doJSON(t, "POST", s.url+"/v1/events/devices/d1/t", dev, `1`)
	if status != 401 || body["error"] != "invalid token" {
		t.Fatalf("revoked device token: %d %v", status, body)
	}
	if _, _, body := doJSON(t, "POST", s.url+"/admin/v1/revocations", op, `{"jti":"tok-1"}`); body["revocation"] == nil {
		t.Fatalf("POST jti: %v", body)
	}
	status, _, body = doJSON(t, "GET", s.url+"/admin/v1/revocations", op, "")
	list, _ := body["revocations"].([]any)
	if status != 200 || len(list) != 2 {
		t.Fatalf("GET: %d %v", status, body)
	}
	if status, _, _ := doJSON(t, "DELETE", s.url+"/admin/v1/revocations?subject=d1&tenant=acme", op, ""); status != 200 {
		t.Fatalf("DELETE: %d", status)
	}
	if status, _, _ := doJSON(t, "DELETE", s.url+"/admin/v1/revocations?subject=d1&tenant=acme", op, ""); status != 404 {
		t.Fatalf("second DELETE: %d", status)
	}
	if status, _, _ := doJSON(t, "POST", s.url+"/v1/events/devices/d1/t", dev, `1`); status != 202 {
		t.Fatalf("device after the revocation was deleted: %d", status)
	}
	// Operators only.
	if status, _, _ := doJSON(t, "GET", s.url+"/admin/v1/revocations", dev, ""); status != 403 {
		t.Fatalf("device on the revocations API: %d", status)
	}
}
