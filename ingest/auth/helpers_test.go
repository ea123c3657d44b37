package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// testKey is a real generated key pair for one algorithm.
type testKey struct {
	alg  string
	priv any // []byte for HS*
	pub  any
}

var (
	keyOnce  sync.Once
	testKeys map[string]*testKey
)

// keys returns one key per algorithm, generated once per test binary (RSA generation is slow).
func keys(t testing.TB) map[string]*testKey {
	t.Helper()
	keyOnce.Do(func() {
		testKeys = map[string]*testKey{}
		for alg, n := range map[string]int{"HS256": 32, "HS384": 48, "HS512": 64} {
			b := make([]byte, n)
			rand.Read(b)
			testKeys[alg] = &testKey{alg: alg, priv: b}
		}
		rk, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		for _, alg := range []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} {
			testKeys[alg] = &testKey{alg: alg, priv: rk, pub: &rk.PublicKey}
		}
		for alg, c := range map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()} {
			ek, err := ecdsa.GenerateKey(c, rand.Reader)
			if err != nil {
				panic(err)
			}
			testKeys[alg] = &testKey{alg: alg, priv: ek, pub: &ek.PublicKey}
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			panic(err)
		}
		testKeys["EdDSA"] = &testKey{alg: "EdDSA", priv: priv, pub: pub}
	})
	return testKeys
}

// signWith signs claims with k under its alg, with kid in the header when non-empty.
func signWith(t testing.TB, k *testKey, kid string, claims map[string]any) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.GetSigningMethod(k.alg), jwt.MapClaims(claims))
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatalf("sign %s: %v", k.alg, err)
	}
	return s
}

// rawToken builds a token from a header and claims with an arbitrary signature segment.
func rawToken(header, claims map[string]any, sig []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "." + enc.EncodeToString(sig)
}

// hmacToken signs header+claims with an HMAC secret under alg (any header contents).
func hmacToken(t testing.TB, alg string, header, claims map[string]any, secret []byte) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	sig, err := jwt.GetSigningMethod(alg).Sign(signing, secret)
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + enc.EncodeToString(sig)
}

// writePEM writes pub as a PKIX "PUBLIC KEY" PEM file and returns its path.
func writePEM(t testing.TB, dir, name string, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// writeCertPEM writes a self-signed certificate for k as a "CERTIFICATE" PEM file.
func writeCertPEM(t testing.TB, dir, name string, k *testKey) string {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.pub, k.priv.(crypto.Signer))
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// jwk renders a public key as a JWK map.
func jwk(t testing.TB, kid, alg string, pub any) map[string]any {
	t.Helper()
	enc := base64.RawURLEncoding
	m := map[string]any{"kid": kid, "use": "sig"}
	if alg != "" {
		m["alg"] = alg
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = enc.EncodeToString(k.N.Bytes())
		m["e"] = enc.EncodeToString(big.NewInt(int64(k.E)).Bytes())
	case *ecdsa.PublicKey:
		m["kty"] = "EC"
		m["crv"] = k.Curve.Params().Name
		raw, err := k.Bytes() // 0x04 || X || Y
		if err != nil {
			t.Fatal(err)
		}
		size := (len(raw) - 1) / 2
		m["x"] = enc.EncodeToString(raw[1 : 1+size])
		m["y"] = enc.EncodeToString(raw[1+size:])
	case ed25519.PublicKey:
		m["kty"] = "OKP"
		m["crv"] = "Ed25519"
		m["x"] = enc.EncodeToString(k)
	default:
		t.Fatalf("jwk: unsupported %T", pub)
	}
	return m
}

func writeJWKS(t testing.TB, dir string, keys ...map[string]any) string {
	t.Helper()
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, "jwks.json", b)
}

// clock is a settable time source for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// claims returns valid device claims for subject at now, expiring in an hour.
func deviceClaims(sub string, now time.Time) map[string]any {
	return MintClaims(sub, "", "device", nil, time.Hour, now)
}

func mustNew(t testing.TB, cfg Config, opts Options) *Verifier {
	t.Helper()
	v, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return v
}

var randReader = rand.Reader

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func decodeHeader(t testing.TB, tok string) string {
	t.Helper()
	h, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.DiscardHandler)) // keep "generated a key" lines out of test output
	os.Exit(m.Run())
}

// hsTokHeader signs claims with an HS256 secret under an arbitrary header.
func hsTokHeader(t testing.TB, secret []byte, header, claims map[string]any) string {
	return hmacToken(t, "HS256", header, claims, secret)
}
