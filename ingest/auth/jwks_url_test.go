package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// idp is a real HTTPS JWKS endpoint whose key set and health the test controls.
type idp struct {
	srv     *httptest.Server
	mu      sync.Mutex
	doc     []byte
	status  int
	fetches atomic.Int64
	caFile  string
}

func startIDP(t *testing.T) *idp {
	t.Helper()
	d := &idp{status: 200}
	d.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.fetches.Add(1)
		d.mu.Lock()
		status, doc := d.status, d.doc
		d.mu.Unlock()
		w.WriteHeader(status)
		w.Write(doc)
	}))
	t.Cleanup(d.srv.Close)
	d.caFile = writeFile(t, t.TempDir(), "idp-ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d.srv.Certificate().Raw}))
	return d
}

func (d *idp) setKeys(t *testing.T, jwks ...map[string]any) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": jwks})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.doc, d.status = b, 200
	d.mu.Unlock()
}

func (d *idp) fail(status int, body string) {
	d.mu.Lock()
	d.doc, d.status = []byte(body), status
	d.mu.Unlock()
}

func (d *idp) config() Config {
	cfg := DefaultConfig()
	cfg.JWKSURL = d.srv.URL + "/.well-known/jwks.json"
	cfg.JWKSCAFile = d.caFile
	return cfg
}

func newECKey(t *testing.T) *testKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testKey{alg: "ES256", priv: k, pub: &k.PublicKey}
}

// The identity provider rotates keys: tokens of the new key are accepted once it is fetched
// (on the unknown kid, rate-limited), and tokens of the removed key are refused, cached or not.
func TestJWKSURLRotation(t *testing.T) {
	d := startIDP(t)
	k1, k2 := newECKey(t), newECKey(t)
	d.setKeys(t, jwk(t, "k1", "ES256", k1.pub))
	clk := &clock{t: time.Now()}
	ms := metrics.NewSet()
	v := mustNew(t, d.config(), Options{Now: clk.Now, Metrics: ms})
	defer v.Close()
	if n := d.fetches.Load(); n != 1 {
		t.Fatalf("fetches at start = %d, want 1", n)
	}
	old := signWith(t, k1, "k1", deviceClaims("d1", clk.Now()))
	if _, err := v.Verify(old); err != nil {
		t.Fatalf("k1 token: %v", err)
	}

	d.setKeys(t, jwk(t, "k2", "ES256", k2.pub)) // k1 removed, k2 added
	fresh := signWith(t, k2, "k2", deviceClaims("d2", clk.Now()))
	// Within JWKSMinRefetch of the last fetch, an unknown kid does not fetch again.
	if _, err := v.Verify(fresh); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("k2 token before refetch allowed: %v", err)
	}
	if n := d.fetches.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1 (rate-limited)", n)
	}
	clk.Add(JWKSMinRefetch)
	if _, err := v.Verify(fresh); err != nil {
		t.Fatalf("k2 token after refetch: %v", err)
	}
	if n := d.fetches.Load(); n != 2 {
		t.Fatalf("fetches = %d, want 2", n)
	}
	// k1 is gone: its token, although cached, is refused.
	if _, err := v.Verify(old); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("removed key's cached token: %v", err)
	}
	// Many unknown kids in a burst cause no more fetches.
	for i := range 50 {
		_, _ = v.Verify(signWith(t, k1, "nope-"+string(rune('a'+i%26)), deviceClaims("x", clk.Now())))
	}
	if n := d.fetches.Load(); n != 2 {
		t.Fatalf("fetches after a burst of unknown kids = %d, want 2", n)
	}
	if !strings.Contains(metricsText(ms), `fleetgate_auth_jwks_fetches_total{result="ok"} 2`) {
		t.Fatalf("metrics:\n%s", metricsText(ms))
	}
}

// A failed fetch (error answer, garbage, too large, unreachable) keeps the last good set and
// is counted.
func TestJWKSURLFetchFailureKeepsKeys(t *testing.T) {
	d := startIDP(t)
	k1 := newECKey(t)
	d.setKeys(t, jwk(t, "k1", "ES256", k1.pub))
	ms := metrics.NewSet()
	v := mustNew(t, d.config(), Options{Metrics: ms})
	defer v.Close()
	tok := signWith(t, k1, "k1", deviceClaims("d1", time.Now()))
	failures := []func(){
		func() { d.fail(500, "oops") },
		func() { d.fail(200, "not json") },
		func() { d.fail(200, `{"keys":[]}`) },
		func() { d.fail(200, `{"keys":[`+strings.Repeat(" ", MaxJWKSBytes)+`]}`) },
	}
	for i, f := range failures {
		f()
		if err := v.Reload(); err == nil || !strings.Contains(err.Error(), "auth.jwks_url") {
			t.Fatalf("failure %d: Reload = %v", i, err)
		}
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("failure %d: the last good key was dropped: %v", i, err)
		}
	}
	d.srv.Close()
	if err := v.Reload(); err == nil {
		t.Fatal("Reload with the endpoint down succeeded")
	}
	if _, err := v.Verify(signWith(t, k1, "k1", deviceClaims("d2", time.Now()))); err != nil {
		t.Fatalf("endpoint down: the last good key was dropped: %v", err)
	}
	if !strings.Contains(metricsText(ms), `fleetgate_auth_jwks_fetches_total{result="error"} 5`) {
		t.Fatalf("metrics:\n%s", metricsText(ms))
	}
}

// The certificate must chain to jwks_ca_file (or the system roots): a server with another
// certificate is refused at start.
func TestJWKSURLChecksCertificate(t *testing.T) {
	d := startIDP(t)
	d.setKeys(t, jwk(t, "k1", "ES256", newECKey(t).pub))
	cfg := d.config()
	cfg.JWKSCAFile = ""
	_, err := New(cfg, Options{})
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "auth.jwks_url") {
		t.Fatalf("New with an untrusted certificate = %v", err)
	}
	// Offline (signing only) does not fetch.
	if _, err := New(cfg, Options{Offline: true}); err != nil {
		t.Fatalf("offline New: %v", err)
	}
}

// Start refreshes the URL every jwks_refresh.
func TestJWKSURLPeriodicRefresh(t *testing.T) {
	d := startIDP(t)
	k1, k2 := newECKey(t), newECKey(t)
	d.setKeys(t, jwk(t, "k1", "ES256", k1.pub))
	cfg := d.config()
	cfg.JWKSRefresh = MinJWKSRefresh
	clk := &clock{t: time.Now()} // frozen: no unknown-kid refetch after the first fetch
	v := mustNew(t, cfg, Options{Now: clk.Now})
	v.Start()
	defer v.Close()
	d.setKeys(t, jwk(t, "k2", "ES256", k2.pub))
	tok := signWith(t, k2, "k2", deviceClaims("d1", clk.Now()))
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := v.Verify(tok)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new key not picked up by the periodic refresh: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metricsText(s *metrics.Set) string {
	var b strings.Builder
	s.WritePrometheus(&b)
	return b.String()
}
