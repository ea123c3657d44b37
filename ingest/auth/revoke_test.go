package auth

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/storage"
)

func openStore(t *testing.T, dir string) *storage.Store {
	t.Helper()
	st, err := storage.Open(storage.Options{Dir: dir, SweepInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestRevokeSubjectAndJTI(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, filepath.Join(dir, "log"))
	defer st.Close()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	rl, err := LoadRevocations(st, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	v := mustNew(t, DefaultConfig(), Options{DataDir: dir, Now: clk.Now, Revocations: rl})
	mint := func(sub, tenant string, extra map[string]any) string {
		tok, err := v.Sign(MintClaims(sub, tenant, "device", extra, time.Hour, clk.Now()))
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	before := mint("d1", "acme", nil)
	otherTenant := mint("d1", "globex", nil)
	withJTI := mint("d2", "acme", map[string]any{"jti": "tok-42"})
	for _, tok := range []string{before, otherTenant, withJTI} {
		if _, err := v.Verify(tok); err != nil { // now cached
			t.Fatal(err)
		}
	}
	clk.Add(500 * time.Millisecond) // same second as before's iat
	if _, err := rl.Add(Revocation{Subject: "d1", Tenant: "acme"}); err != nil {
		t.Fatal(err)
	}
	if _, err := rl.Add(Revocation{JTI: "tok-42"}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(before); !errors.Is(err, ErrRevoked) {
		t.Fatalf("cached token of a revoked subject: %v", err)
	}
	if _, err := v.Verify(withJTI); !errors.Is(err, ErrRevoked) {
		t.Fatalf("cached revoked jti: %v", err)
	}
	if _, err := v.Verify(otherTenant); err != nil {
		t.Fatalf("same subject in another tenant: %v", err)
	}
	// A token issued in the revocation's second is refused too; one from the next second works.
	if _, err := v.Verify(mint("d1", "acme", nil)); !errors.Is(err, ErrRevoked) {
		t.Fatalf("token minted in the revocation's second: %v", err)
	}
	clk.Add(time.Second)
	if _, err := v.Verify(mint("d1", "acme", nil)); err != nil {
		t.Fatalf("token issued after the revocation: %v", err)
	}
	// Certificate principals have no iat: a subject revocation covers them.
	if _, err := v.PrincipalFor("d1", "acme", "device", time.Time{}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("PrincipalFor revoked subject: %v", err)
	}
	if Reason(ErrRevoked) != "revoked" {
		t.Fatal(Reason(ErrRevoked))
	}

	// Kept durably: a new list on a reopened store sees the same entries.
	list := rl.List()
	if len(list) != 2 || list[0].Subject != "d1" || list[0].Tenant != "acme" || list[1].JTI != "tok-42" {
		t.Fatalf("List = %+v", list)
	}
	st.Close()
	st2 := openStore(t, filepath.Join(dir, "log"))
	defer st2.Close()
	rl2, err := LoadRevocations(st2, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if got := rl2.List(); len(got) != 2 || !got[0].RevokedAt.Equal(list[0].RevokedAt) {
		t.Fatalf("reloaded List = %+v, want %+v", got, list)
	}
	v2 := mustNew(t, DefaultConfig(), Options{DataDir: dir, Now: clk.Now, Revocations: rl2})
	if _, err := v2.Verify(before); !errors.Is(err, ErrRevoked) {
		t.Fatalf("after restart: %v", err)
	}
	// Deleting the entry lets the token through again.
	if ok, err := rl2.Remove(Revocation{Subject: "d1", Tenant: "acme"}); !ok || err != nil {
		t.Fatalf("Remove = %v %v", ok, err)
	}
	if ok, _ := rl2.Remove(Revocation{Subject: "d1", Tenant: "acme"}); ok {
		t.Fatal("second Remove found the entry")
	}
	if _, err := v2.Verify(before); err != nil {
		t.Fatalf("after Remove: %v", err)
	}
}

func TestRevocationChecks(t *testing.T) {
	rl, err := LoadRevocations(openStore(t, t.TempDir()), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Revocation{{}, {Tenant: "acme"}, {JTI: "x", Subject: "y"}, {Subject: strings.Repeat("x", maxRevocationField+1)}} {
		if _, err := rl.Add(bad); !errors.Is(err, ErrInvalidRevocation) {
			t.Errorf("Add(%+v) = %v", bad, err)
		}
	}
	if rl.Len() != 0 {
		t.Fatal("a refused revocation was kept")
	}
	var nilList *Revocations
	if nilList.Revoked(&Principal{Subject: "x"}) != "" || nilList.Len() != 0 || nilList.List() != nil {
		t.Fatal("a nil list revokes something")
	}
}

// Reload swaps a rotated key file in: tokens of the new key are accepted, those of the old one
// (cached or not) refused. A reload that fails keeps the last good keys.
func TestReloadKeyFiles(t *testing.T) {
	dir := t.TempDir()
	oldSecret, newSecret := []byte(strings.Repeat("o", 32)), []byte(strings.Repeat("n", 32))
	secretFile := writeFile(t, dir, "hs256.key", oldSecret)
	cfg := DefaultConfig()
	cfg.Keys = []KeyConfig{{ID: "main", Alg: "HS256", SecretFile: secretFile}}
	v := mustNew(t, cfg, Options{})
	now := time.Now()
	oldTok := hsTokHeader(t, oldSecret, map[string]any{"alg": "HS256", "kid": "main"}, deviceClaims("d1", now))
	newTok := hsTokHeader(t, newSecret, map[string]any{"alg": "HS256", "kid": "main"}, deviceClaims("d1", now))
	if _, err := v.Verify(oldTok); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "hs256.key", newSecret)
	if err := v.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("new key after reload: %v", err)
	}
	if _, err := v.Verify(oldTok); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("old key's cached token after reload: %v", err)
	}
	if err := os.Remove(secretFile); err != nil {
		t.Fatal(err)
	}
	if err := v.Reload(); err == nil || !strings.Contains(err.Error(), "auth.keys[0].secret_file") {
		t.Fatalf("Reload with the file gone = %v", err)
	}
	if _, err := v.Verify(newTok); err != nil {
		t.Fatalf("a failed reload dropped the key: %v", err)
	}
}
