package auth

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

var allAlgs = []string{"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// configFor builds a config with one key per algorithm: secrets inline for HS*, PEM files for
// the others (the RS256 one as a certificate, the RS384 one as PKCS#1).
func configFor(t testing.TB, dir string) Config {
	t.Helper()
	cfg := DefaultConfig()
	for _, alg := range allAlgs {
		k := keys(t)[alg]
		kc := KeyConfig{ID: "k-" + alg, Alg: alg}
		switch {
		case strings.HasPrefix(alg, "HS"):
			kc.Secret = string(k.priv.([]byte))
		case alg == "RS256":
			kc.PublicKeyFile = writeCertPEM(t, dir, alg+".crt", k)
		case alg == "RS384":
			der := x509.MarshalPKCS1PublicKey(k.pub.(*rsa.PublicKey))
			kc.PublicKeyFile = writeFile(t, dir, alg+".pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: der}))
		default:
			kc.PublicKeyFile = writePEM(t, dir, alg+".pem", k.pub)
		}
		cfg.Keys = append(cfg.Keys, kc)
	}
	return cfg
}

func TestVerifyAllAlgorithms(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	v := mustNew(t, configFor(t, dir), Options{})
	for _, alg := range allAlgs {
		t.Run(alg, func(t *testing.T) {
			k := keys(t)[alg]
			tok := signWith(t, k, "k-"+alg, deviceClaims("dev-"+alg, now))
			p, err := v.Verify(tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if p.Subject != "dev-"+alg || p.Role != "device" || p.Token != tok {
				t.Fatalf("principal = %+v", p)
			}
			if !p.CanPublish("devices/dev-" + alg + "/telemetry") {
				t.Fatal("device cannot publish to its own topic")
			}
			// Without kid the key is chosen by alg. The RSA algorithms share one RSA key pair here,
			// so each RSA alg still has exactly one configured key.
			tok2 := signWith(t, k, "", deviceClaims("nokid-"+alg, now))
			p2, err := v.Verify(tok2)
			if err != nil {
				t.Fatalf("Verify without kid: %v", err)
			}
			if p2.Subject != "nokid-"+alg {
				t.Fatalf("subject = %q", p2.Subject)
			}
		})
	}
}

func TestVerifyJWKS(t *testing.T) {
	dir := t.TempDir()
	ks := keys(t)
	path := writeJWKS(t, dir,
		jwk(t, "rsa1", "", ks["RS256"].pub), // alg inferred: RS256
		jwk(t, "pss", "PS256", ks["PS256"].pub),
		jwk(t, "ec256", "", ks["ES256"].pub),
		jwk(t, "ec384", "ES384", ks["ES384"].pub),
		jwk(t, "ed", "", ks["EdDSA"].pub),
		map[string]any{"kty": "RSA", "use": "enc", "kid": "encryption", "n": "AQAB", "e": "AQAB"}, // skipped
		map[string]any{"kty": "OKP", "crv": "X25519", "kid": "x", "x": "AAAA"},                    // skipped
	)
	cfg := DefaultConfig()
	cfg.JWKSFile = path
	v := mustNew(t, cfg, Options{})
	now := time.Now()
	for kid, alg := range map[string]string{"rsa1": "RS256", "pss": "PS256", "ec256": "ES256", "ec384": "ES384", "ed": "EdDSA"} {
		tok := signWith(t, ks[alg], kid, deviceClaims("d", now))
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("%s/%s: %v", kid, alg, err)
		}
	}
	// The RSA key is bound to RS256 by inference: an RS512 token with its kid is refused.
	tok := signWith(t, ks["RS512"], "rsa1", deviceClaims("d", now))
	if _, err := v.Verify(tok); !errors.Is(err, ErrAlgorithm) {
		t.Fatalf("RS512 with RS256 key: err = %v, want ErrAlgorithm", err)
	}
	// JWKS only: no HMAC key, so no signing.
	if _, err := v.Sign(deviceClaims("d", now)); !errors.Is(err, ErrNoSigningKey) {
		t.Fatalf("Sign: err = %v, want ErrNoSigningKey", err)
	}
}

func TestJWKSProblems(t *testing.T) {
	ks := keys(t)
	good := jwk(t, "ok", "", ks["ES256"].pub)
	offCurve := jwk(t, "bad", "", ks["ES256"].pub)
	offCurve["y"] = offCurve["x"]
	private := jwk(t, "priv", "", ks["EdDSA"].pub)
	private["d"] = "AAAA"
	wrongAlg := jwk(t, "wa", "ES384", ks["ES256"].pub)
	cases := []struct {
		name string
		doc  string
		want string
	}{
		{"not json", `{`, "not a JWKS document"},
		{"no keys", `{}`, `no "keys" array`},
		{"oct", `{"keys":[{"kty":"oct","k":"AAAA"}]}`, "symmetric"},
		{"off curve", mustJSON(map[string]any{"keys": []any{good, offCurve}}), "keys[1]"},
		{"private", mustJSON(map[string]any{"keys": []any{private}}), "private key"},
		{"wrong alg", mustJSON(map[string]any{"keys": []any{wrongAlg}}), "cannot be used with ES384"},
		{"small rsa", `{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}`, "too small"},
		{"no kty", `{"keys":[{"kid":"x"}]}`, `missing "kty"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := parseJWKS([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func mustJSON(v any) string {
	b, err := jsonMarshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestVerifyRefusals(t *testing.T) {
	dir := t.TempDir()
	ks := keys(t)
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	clk := &clock{t: now}
	rsaPEM := writePEM(t, dir, "rsa.pem", ks["RS256"].pub)
	rsaPEMBytes, _ := os.ReadFile(rsaPEM)
	hs := ks["HS256"].priv.([]byte)

	cfg := DefaultConfig()
	cfg.Leeway = 10 * time.Second
	cfg.Issuer = "https://issuer.example"
	cfg.Audience = "fleetgate"
	cfg.Keys = []KeyConfig{
		{ID: "hmac", Alg: "HS256", Secret: string(hs)},
		{ID: "rsa", Alg: "RS256", PublicKeyFile: rsaPEM},
	}
	v := mustNew(t, cfg, Options{Now: clk.Now})

	valid := func(mut func(c map[string]any)) map[string]any {
		c := MintClaims("dev1", "acme", "device", map[string]any{"iss": cfg.Issuer, "aud": "fleetgate"}, time.Hour, now)
		if mut != nil {
			mut(c)
		}
		return c
	}
	hsTok := func(c map[string]any) string { return signWith(t, ks["HS256"], "hmac", c) }
	rsTok := func(c map[string]any) string { return signWith(t, ks["RS256"], "rsa", c) }

	// Sanity: the valid tokens pass.
	for _, tok := range []string{hsTok(valid(nil)), rsTok(valid(nil))} {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("valid token refused: %v", err)
		}
	}

	// Tampered: a valid token's payload replaced by one naming another subject.
	tampered := func() string {
		parts := strings.Split(hsTok(valid(nil)), ".")
		other := strings.Split(rawToken(map[string]any{"alg": "HS256"}, valid(func(c map[string]any) { c["sub"] = "dev2" }), nil), ".")
		return parts[0] + "." + other[1] + "." + parts[2]
	}()

	cases := []struct {
		name  string
		token string
		want  error
		msg   string
	}{
		{"empty", "", ErrMissingToken, "missing token"},
		{"garbage", "not-a-jwt", ErrMalformed, "three dot-separated segments"},
		{"bad base64 header", "%%%.e30.", ErrMalformed, "base64"},
		{"header not json", "bm90anNvbg.e30.", ErrMalformed, "header"},
		{"too long", strings.Repeat("a", MaxTokenBytes+1), ErrMalformed, "longer than"},
		{"alg none", rawToken(map[string]any{"alg": "none"}, valid(nil), nil), ErrAlgorithm, `"none" is never accepted`},
		{"alg None with kid", rawToken(map[string]any{"alg": "None", "kid": "hmac"}, valid(nil), nil), ErrAlgorithm, "never accepted"},
		{"no alg", rawToken(map[string]any{"typ": "JWT"}, valid(nil), nil), ErrAlgorithm, "no alg"},
		{"unknown alg", rawToken(map[string]any{"alg": "XX999"}, valid(nil), []byte("x")), ErrAlgorithm, "accepted: HS256, RS256"},
		// Key confusion: an HS256 token whose HMAC secret is the RSA public key's PEM bytes.
		{"HS256 with RSA key's kid", hmacToken(t, "HS256", map[string]any{"alg": "HS256", "kid": "rsa"}, valid(nil), rsaPEMBytes), ErrAlgorithm, `key "rsa" is RS256`},
		{"HS256 signed with RSA PEM, no kid", hmacToken(t, "HS256", map[string]any{"alg": "HS256"}, valid(nil), rsaPEMBytes), ErrBadSignature, ""},
		// And the other way: an RS256 token presented under the HMAC key's kid.
		{"RS256 with HMAC key's kid", signWith(t, ks["RS256"], "hmac", valid(nil)), ErrAlgorithm, `key "hmac" is HS256`},
		// An "RS256" token whose signature is an HMAC keyed with the RSA public key's PEM bytes.
		{"RS256 header, HMAC signature", hmacToken(t, "HS256", map[string]any{"alg": "RS256", "kid": "rsa"}, valid(nil), rsaPEMBytes), ErrBadSignature, ""},
		{"crit header", hsTokHeader(t, hs, map[string]any{"alg": "HS256", "kid": "hmac", "crit": []string{"exp"}}, valid(nil)), ErrMalformed, "crit"},
		{"ES256 no such key", signWith(t, ks["ES256"], "", valid(nil)), ErrAlgorithm, `alg "ES256"`},
		{"unknown kid", signWith(t, ks["HS256"], "nope", valid(nil)), ErrUnknownKey, `no key with kid "nope"`},
		{"tampered payload", tampered, ErrBadSignature, ""},
		{"wrong secret", hmacToken(t, "HS256", map[string]any{"alg": "HS256", "kid": "hmac"}, valid(nil), []byte(strings.Repeat("w", 32))), ErrBadSignature, ""},
		{"RS256 wrong key", signWith(t, &testKey{alg: "RS256", priv: otherRSA(t)}, "rsa", valid(nil)), ErrBadSignature, ""},
		{"expired", hsTok(valid(func(c map[string]any) { c["exp"] = now.Add(-11 * time.Second).Unix() })), ErrExpired, "token expired at 2030-01-02T03:03:54Z"},
		{"not yet valid", hsTok(valid(func(c map[string]any) { c["nbf"] = now.Add(11 * time.Second).Unix() })), ErrNotYetValid, "not before 2030-01-02T03:04:16Z"},
		{"wrong issuer", hsTok(valid(func(c map[string]any) { c["iss"] = "evil" })), ErrIssuer, `token issuer "evil", want "https://issuer.example"`},
		{"missing issuer", hsTok(valid(func(c map[string]any) { delete(c, "iss") })), ErrIssuer, "want"},
		{"wrong audience", hsTok(valid(func(c map[string]any) { c["aud"] = []string{"a", "b"} })), ErrAudience, `does not include "fleetgate"`},
		{"missing audience", hsTok(valid(func(c map[string]any) { delete(c, "aud") })), ErrAudience, ""},
		{"missing sub", hsTok(valid(func(c map[string]any) { delete(c, "sub") })), ErrNoSubject, ""},
		{"numeric sub", hsTok(valid(func(c map[string]any) { c["sub"] = 42 })), ErrNoSubject, ""},
		{"missing role", hsTok(valid(func(c map[string]any) { delete(c, "role") })), ErrNoRole, `no string "role" claim`},
		{"role without policy", hsTok(valid(func(c map[string]any) { c["role"] = "root" })), ErrNoRole, `no policy for role "root"`},
		{"tenant not string", hsTok(valid(func(c map[string]any) { c["tenant"] = 7 })), ErrMalformed, "tenant"},
		{"exp not a number", hsTok(valid(func(c map[string]any) { c["exp"] = "tomorrow" })), ErrMalformed, "exp"},
	}
	// With only an RSA key configured, an HS256 token signed with its PEM bytes meets no key at all.
	rsaOnly := DefaultConfig()
	rsaOnly.Keys = []KeyConfig{{ID: "rsa", Alg: "RS256", PublicKeyFile: rsaPEM}}
	vr := mustNew(t, rsaOnly, Options{Now: clk.Now})
	confused := hmacToken(t, "HS256", map[string]any{"alg": "HS256"}, valid(nil), rsaPEMBytes)
	if _, err := vr.Verify(confused); !errors.Is(err, ErrAlgorithm) || !strings.Contains(err.Error(), "accepted: RS256") {
		t.Fatalf("RSA-only verifier, HS256 token: err = %v, want ErrAlgorithm", err)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := v.Verify(c.token)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if p != nil {
				t.Fatal("principal returned with error")
			}
			if r := Reason(err); r == "" || r != resultLabel(c.want) {
				t.Fatalf("Reason = %q, want %q", r, resultLabel(c.want))
			}
			if !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("message %q does not contain %q", err, c.msg)
			}
		})
	}
}

var (
	otherRSAOnce sync.Once
	otherRSAKey  *rsa.PrivateKey
)

func otherRSA(t testing.TB) *rsa.PrivateKey {
	otherRSAOnce.Do(func() {
		k, err := rsa.GenerateKey(randReader, 2048)
		if err != nil {
			panic(err)
		}
		otherRSAKey = k
	})
	return otherRSAKey
}

func TestLeewayAndNoExp(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &clock{t: now}
	cfg := DefaultConfig()
	cfg.Leeway = 30 * time.Second
	cfg.Keys = []KeyConfig{{ID: "h", Alg: "HS256", Secret: string(keys(t)["HS256"].priv.([]byte))}}
	v := mustNew(t, cfg, Options{Now: clk.Now})
	k := keys(t)["HS256"]

	// Expired 20s ago but within the 30s leeway: accepted.
	c := deviceClaims("d", now)
	c["exp"] = now.Add(-20 * time.Second).Unix()
	if _, err := v.Verify(signWith(t, k, "h", c)); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
	// nbf 20s ahead, within leeway: accepted.
	c = deviceClaims("d2", now)
	c["nbf"] = now.Add(20 * time.Second).Unix()
	if _, err := v.Verify(signWith(t, k, "h", c)); err != nil {
		t.Fatalf("nbf within leeway: %v", err)
	}
	// No exp at all: accepted (documented), ExpiresAt zero.
	c = MintClaims("forever", "", "app", nil, 0, now)
	p, err := v.Verify(signWith(t, k, "h", c))
	if err != nil {
		t.Fatalf("no exp: %v", err)
	}
	if !p.ExpiresAt.IsZero() {
		t.Fatalf("ExpiresAt = %v, want zero", p.ExpiresAt)
	}
	clk.Add(24 * 365 * time.Hour)
	if _, err := v.Verify(p.Token); err != nil {
		t.Fatalf("no exp, a year later: %v", err)
	}
}

func TestCacheNeverPastExpiry(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &clock{t: now}
	cfg := DefaultConfig()
	cfg.Leeway = 5 * time.Second
	cfg.Keys = []KeyConfig{{ID: "h", Alg: "HS256", Secret: string(keys(t)["HS256"].priv.([]byte))}}
	set := metrics.NewSet()
	v := mustNew(t, cfg, Options{Now: clk.Now, Metrics: set})
	tok := signWith(t, keys(t)["HS256"], "h", MintClaims("d", "", "device", nil, time.Minute, now))

	p1, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p1 != p2 {
		t.Fatal("second Verify did not come from the cache")
	}
	if v.CacheLen() != 1 {
		t.Fatalf("CacheLen = %d", v.CacheLen())
	}
	clk.Add(time.Minute + 4*time.Second) // exp passed, still inside leeway
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("inside leeway: %v", err)
	}
	clk.Add(time.Second) // exactly exp+leeway: the cache must not answer any more
	if _, err := v.Verify(tok); !errors.Is(err, ErrExpired) {
		t.Fatalf("past exp+leeway: err = %v, want ErrExpired", err)
	}
	if v.CacheLen() != 0 {
		t.Fatalf("expired entry still cached: CacheLen = %d", v.CacheLen())
	}

	var sb strings.Builder
	set.WritePrometheus(&sb)
	out := sb.String()
	for _, want := range []string{
		`fleetgate_auth_verifications_total{result="ok"} 1`,
		`fleetgate_auth_verifications_total{result="cached"} 2`,
		`fleetgate_auth_verifications_total{result="expired"} 1`,
		`fleetgate_auth_cache_entries 0`,
		`fleetgate_auth_verify_duration_seconds_count 2`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %q:\n%s", want, out)
		}
	}
}

func TestCacheBounded(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CacheSize = 128
	cfg.Keys = []KeyConfig{{ID: "h", Alg: "HS256", Secret: string(keys(t)["HS256"].priv.([]byte))}}
	v := mustNew(t, cfg, Options{})
	now := time.Now()
	for i := range 2000 {
		tok := signWith(t, keys(t)["HS256"], "h", deviceClaims(fmt.Sprintf("d%d", i), now))
		if _, err := v.Verify(tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := v.CacheLen(); n > 128 || n < 64 {
		t.Fatalf("CacheLen = %d, want between 64 and 128", n)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CacheSize = 64
	cfg.Keys = []KeyConfig{{ID: "h", Alg: "HS256", Secret: string(keys(t)["HS256"].priv.([]byte))}}
	v := mustNew(t, cfg, Options{})
	now := time.Now()
	toks := make([]string, 200)
	for i := range toks {
		toks[i] = signWith(t, keys(t)["HS256"], "h", deviceClaims(fmt.Sprintf("d%d", i), now))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				j := (i*7 + g) % len(toks)
				p, err := v.Verify(toks[j])
				if err != nil {
					errs <- err
					return
				}
				if p.Subject != fmt.Sprintf("d%d", j) {
					errs <- fmt.Errorf("token %d gave subject %q", j, p.Subject)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestGeneratedKeyPersisted(t *testing.T) {
	dir := t.TempDir()
	v1 := mustNew(t, DefaultConfig(), Options{DataDir: dir})
	tok, err := v1.Sign(MintClaims("me", "", "app", nil, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keys", "hs256.key")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if raw, err := hex.DecodeString(strings.TrimSpace(string(b))); err != nil || len(raw) != 32 {
		t.Fatalf("key file is not 32 hex-encoded bytes: %q", b)
	}
	// A second Verifier (as `fleetgate token` and `serve` would be) reuses the same key.
	v2 := mustNew(t, DefaultConfig(), Options{DataDir: dir})
	p, err := v2.Verify(tok)
	if err != nil {
		t.Fatalf("token of the first verifier refused by the second: %v", err)
	}
	if !p.CanPublish("apps/x") || p.CanPublish("devices/me/x") {
		t.Fatal("app policy not applied")
	}
	if strings.Count(tok, ".") != 2 || !strings.Contains(decodeHeader(t, tok), `"kid":"generated"`) {
		t.Fatalf("header lacks kid generated: %s", decodeHeader(t, tok))
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "keys"))
	if len(entries) != 1 {
		t.Fatalf("temp files left in keys dir: %v", entries)
	}
	// A different data dir has a different key.
	v3 := mustNew(t, DefaultConfig(), Options{DataDir: t.TempDir()})
	if _, err := v3.Verify(tok); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("other data dir: err = %v, want ErrBadSignature", err)
	}
}

func TestGeneratedKeyConcurrentCreate(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	vs := make([]*Verifier, 6)
	for i := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := New(DefaultConfig(), Options{DataDir: dir})
			if err != nil {
				t.Error(err)
				return
			}
			vs[i] = v
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	tok, err := vs[0].Sign(MintClaims("me", "", "app", nil, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vs {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("verifier %d uses another key: %v", i, err)
		}
	}
}

func TestGeneratedKeyFiles(t *testing.T) {
	t.Run("raw key accepted", func(t *testing.T) {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "keys"), 0o700)
		raw := []byte(strings.Repeat("r", 40))
		writeFile(t, filepath.Join(dir, "keys"), "hs256.key", raw)
		v := mustNew(t, DefaultConfig(), Options{DataDir: dir})
		tok := hmacToken(t, "HS256", map[string]any{"alg": "HS256", "kid": "generated"}, MintClaims("a", "", "app", nil, time.Hour, time.Now()), raw)
		if _, err := v.Verify(tok); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("short key refused, not replaced", func(t *testing.T) {
		dir := t.TempDir()
		os.MkdirAll(filepath.Join(dir, "keys"), 0o700)
		p := writeFile(t, filepath.Join(dir, "keys"), "hs256.key", []byte("short"))
		_, err := New(DefaultConfig(), Options{DataDir: dir})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "need at least 32") {
			t.Fatalf("err = %v", err)
		}
		if b, _ := os.ReadFile(p); string(b) != "short" {
			t.Fatal("existing key file was replaced")
		}
	})
	t.Run("no data dir", func(t *testing.T) {
		_, err := New(DefaultConfig(), Options{})
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "no data dir") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestSignUsesFirstHMACKey(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	secretFile := writeFile(t, dir, "secret", append([]byte(strings.Repeat("s", 48)), '\n'))
	cfg.Keys = []KeyConfig{
		{ID: "rsa", Alg: "RS256", PublicKeyFile: writePEM(t, dir, "rsa.pem", keys(t)["RS256"].pub)},
		{ID: "h384", Alg: "HS384", SecretFile: secretFile},
		{ID: "h256", Alg: "HS256", Secret: strings.Repeat("x", 32)},
	}
	cfg.AdminKeys = []string{"h384"}
	v := mustNew(t, cfg, Options{})
	tok, err := v.Sign(MintClaims("op", "", "operator", nil, time.Minute, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if h := decodeHeader(t, tok); !strings.Contains(h, `"alg":"HS384"`) || !strings.Contains(h, `"kid":"h384"`) {
		t.Fatalf("header %s", h)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if !p.IsAdmin() || p.CanPublish("apps/x") {
		t.Fatal("operator policy not applied")
	}
}

func TestMintClaims(t *testing.T) {
	now := time.Unix(1000, 0)
	c := MintClaims("s", "t", "device", map[string]any{"sub": "evil", "tier": "gold"}, time.Hour, now)
	want := map[string]any{"sub": "s", "tenant": "t", "role": "device", "tier": "gold", "iat": int64(1000), "exp": int64(4600)}
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Fatalf("claims = %v, want %v", c, want)
	}
	c = MintClaims("s", "", "app", nil, 0, now)
	if _, ok := c["exp"]; ok {
		t.Fatal("exp set with ttl 0")
	}
	if _, ok := c["tenant"]; ok {
		t.Fatal("tenant set when empty")
	}
}

func TestPrincipalFields(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	v := mustNew(t, DefaultConfig(), Options{DataDir: t.TempDir()})
	tok, _ := v.Sign(MintClaims("dev9", "acme", "device", map[string]any{"tier": "gold"}, time.Hour, now))
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Tenant != "acme" || p.Claims["tier"] != "gold" || !p.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("principal %+v", p)
	}
	if !strings.Contains(string(p.ClaimsJSON), `"tier":"gold"`) || !strings.Contains(string(p.ClaimsJSON), `"sub":"dev9"`) {
		t.Fatalf("ClaimsJSON %s", p.ClaimsJSON)
	}
	if !p.ClientIDAllowed("dev9") || p.ClientIDAllowed("dev8") || p.ClientIDAllowed("") {
		t.Fatal("ClientIDAllowed wrong")
	}
}
