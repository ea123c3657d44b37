package auth

import (
	"errors"
	"testing"
	"time"
)

func TestPrincipalFromClaims(t *testing.T) {
	v := verifierWithPolicies(t, map[string]Policy{
		"sensor": {Subscribe: []string{"t/${tenant}/s/${sub}/#", "site/${claims.site}/#"}},
	})
	p := principal(t, v, MintClaims("s1", "acme", "sensor", map[string]any{"site": "berlin"}, time.Hour, time.Now()))
	q, err := v.PrincipalFromClaims(p.ClaimsJSON)
	if err != nil {
		t.Fatal(err)
	}
	if q.Subject != "s1" || q.Tenant != "acme" || q.Role != "sensor" {
		t.Fatalf("principal %+v", q)
	}
	for _, f := range []string{"t/acme/s/s1/responses", "site/berlin/x"} {
		if !q.CanSubscribe(f) {
			t.Errorf("CanSubscribe(%q) = false", f)
		}
	}
	if q.CanSubscribe("t/acme/s/s2/responses") || q.CanSubscribe("site/paris/x") {
		t.Error("rebuilt policy too wide")
	}
	for _, bad := range []string{`{"role":"sensor"}`, `{"sub":"s1","role":"nope"}`, `{"sub":"s1"}`, `not json`} {
		if _, err := v.PrincipalFromClaims([]byte(bad)); err == nil {
			t.Errorf("PrincipalFromClaims(%s) succeeded", bad)
		}
	}
	if _, err := v.PrincipalFromClaims([]byte(`{"role":"sensor"}`)); !errors.Is(err, ErrNoSubject) {
		t.Errorf("no sub: %v", err)
	}
}
