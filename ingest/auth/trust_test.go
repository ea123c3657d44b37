package auth

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// Admin rights come from the key that signed the token, not from the role it claims.
func TestAdminRoleNeedsTrustedKey(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	adminSecret := []byte(strings.Repeat("a", 32))
	deviceSecret := []byte(strings.Repeat("d", 32))
	cfg := DefaultConfig()
	cfg.Keys = []KeyConfig{
		{ID: "ops", Alg: "HS256", Secret: string(adminSecret)},
		{ID: "devices", Alg: "HS256", Secret: string(deviceSecret)},
		{ID: "idp", Alg: "ES256", PublicKeyFile: writePEM(t, dir, "es.pem", keys(t)["ES256"].pub)},
	}
	cfg.AdminKeys = []string{"ops"}
	v := mustNew(t, cfg, Options{})
	op := MintClaims("alice", "", "operator", nil, time.Hour, now)

	f := func(name, tok string, wantAdmin bool) {
		t.Helper()
		p, err := v.Verify(tok)
		if err != nil {
			t.Fatalf("%s: Verify: %v", name, err)
		}
		if p.IsAdmin() != wantAdmin || p.AdminUntrusted() == wantAdmin || p.Policy().Admin != wantAdmin {
			t.Fatalf("%s: IsAdmin=%v AdminUntrusted=%v, want admin %v", name, p.IsAdmin(), p.AdminUntrusted(), wantAdmin)
		}
	}
	f("admin key", hsTokHeader(t, adminSecret, map[string]any{"alg": "HS256", "kid": "ops"}, op), true)
	f("admin key without kid", hsTokHeader(t, adminSecret, map[string]any{"alg": "HS256"}, op), true)
	f("device key minting operator", hsTokHeader(t, deviceSecret, map[string]any{"alg": "HS256", "kid": "devices"}, op), false)
	f("device key minting operator without kid", hsTokHeader(t, deviceSecret, map[string]any{"alg": "HS256"}, op), false)
	f("public key minting operator", signWith(t, keys(t)["ES256"], "idp", op), false)

	// The untrusted key still works for what it is meant for.
	p, err := v.Verify(hsTokHeader(t, deviceSecret, map[string]any{"alg": "HS256", "kid": "devices"}, deviceClaims("d1", now)))
	if err != nil || !p.CanPublish("devices/d1/x") || p.AdminUntrusted() {
		t.Fatalf("device token: %v %+v", err, p)
	}
	// A role with topics and admin keeps its topics when the signer is not trusted for admin.
	cfg.Policies["ops-device"] = Policy{Admin: true, Publish: []string{"ops/#"}}
	v2 := mustNew(t, cfg, Options{})
	p, err = v2.Verify(hsTokHeader(t, deviceSecret, map[string]any{"alg": "HS256", "kid": "devices"}, MintClaims("x", "", "ops-device", nil, time.Hour, now)))
	if err != nil || p.IsAdmin() || !p.CanPublish("ops/a") || p.SignerKeyID() != "devices" {
		t.Fatalf("mixed role: %v admin=%v publish=%v signer=%q", err, p.IsAdmin(), p.CanPublish("ops/a"), p.SignerKeyID())
	}
}

// With no keys configured, the generated key is the only key and is trusted for admin, so
// `fleetgate token --role operator` works out of the box.
func TestGeneratedKeyTrustedForAdmin(t *testing.T) {
	v := mustNew(t, DefaultConfig(), Options{DataDir: t.TempDir()})
	tok, err := v.Sign(MintClaims("op", "", "operator", nil, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil || !p.IsAdmin() {
		t.Fatalf("generated-key operator token: %v admin=%v", err, p.IsAdmin())
	}
}

func TestAdminIssuer(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	k := keys(t)["RS256"]
	cfg := DefaultConfig()
	cfg.JWKSFile = writeJWKS(t, dir, jwk(t, "idp-1", "RS256", k.pub))
	cfg.AdminIssuer = "https://id.example.com/"
	v := mustNew(t, cfg, Options{})
	claims := func(iss string) map[string]any {
		c := MintClaims("alice", "", "operator", nil, time.Hour, now)
		c["iss"] = iss
		return c
	}
	p, err := v.Verify(signWith(t, k, "idp-1", claims("https://id.example.com/")))
	if err != nil || !p.IsAdmin() {
		t.Fatalf("admin issuer: %v admin=%v", err, p.IsAdmin())
	}
	p, err = v.Verify(signWith(t, k, "idp-1", claims("https://other.example.com/")))
	if err != nil || p.IsAdmin() || !p.AdminUntrusted() {
		t.Fatalf("other issuer: %v admin=%v", err, p.IsAdmin())
	}
}

func TestAdminTrustConfigProblems(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Keys = []KeyConfig{{ID: "main", Alg: "HS256", Secret: strings.Repeat("s", 32)}}
	cfg.AdminKeys = []string{"main", "nope"}
	cfg.AdminIssuer = "https://id.example.com/"
	cfg.JWKSCAFile = "ca.pem"
	cfg.JWKSRefresh = time.Millisecond
	err := cfg.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Validate = %v", err)
	}
	for _, want := range []string{`auth.admin_keys[1]: no key with id "nope"`, "auth.admin_issuer:", "auth.jwks_ca_file: set without auth.jwks_url", "auth.jwks_refresh:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	cfg = DefaultConfig()
	for _, u := range []string{"http://127.0.0.1/jwks", "ftp://x/jwks", "https://", "https://user:pw@id.example.com/jwks"} {
		cfg.JWKSURL = u
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "auth.jwks_url") {
			t.Errorf("jwks_url %q: Validate = %v", u, err)
		}
	}
}
