package auth

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMatchTopic(t *testing.T) {
	f := func(filter, topic string, want bool) {
		t.Helper()
		if got := matchTopic(splitLevels(filter), topic); got != want {
			t.Errorf("matchTopic(%q, %q) = %v, want %v", filter, topic, got, want)
		}
	}
	f("a/b", "a/b", true)
	f("a/b", "a/b/c", false)
	f("a/b", "a", false)
	f("a/+", "a/b", true)
	f("a/+", "a/", true) // empty level
	f("a/+", "a", false)
	f("a/+", "a/b/c", false)
	f("a/#", "a", true) // parent level
	f("a/#", "a/b/c", true)
	f("a/#", "ab", false)
	f("#", "a/b", true)
	f("#", "$SYS/x", false)
	f("+/x", "$SYS/x", false)
	f("$SYS/#", "$SYS/x", true)
	f("+/+", "a/b", true)
	f("+/+", "a/b/c", false)
	f("devices/d1/#", "devices/d10/x", false)
	f("/a", "/a", true)
	f("+/a", "/a", true)
}

func TestCovers(t *testing.T) {
	f := func(allowed, requested string, want bool) {
		t.Helper()
		if got := covers(splitLevels(allowed), splitLevels(requested)); got != want {
			t.Errorf("covers(%q, %q) = %v, want %v", allowed, requested, got, want)
		}
	}
	f("devices/a/#", "devices/a/#", true)
	f("devices/a/#", "devices/a/+/x", true)
	f("devices/a/#", "devices/a", true)
	f("devices/a/#", "devices/a/x/y/z", true)
	f("devices/a/#", "devices/+/x", false)
	f("devices/a/#", "devices/#", false)
	f("devices/a/#", "#", false)
	f("devices/a/#", "devices/ab/x", false)
	f("devices/+/x", "devices/a/x", true)
	f("devices/+/x", "devices/+/x", true)
	f("devices/+/x", "devices/a/#", false) // # also matches devices/a and devices/a/y
	f("devices/+/x", "devices/a/x/y", false)
	f("a/+/#", "a/#", false) // a/# matches "a", which a/+/# does not
	f("a/+/#", "a/b/#", true)
	f("a/+/#", "a/+", true)
	f("a/b", "a/b", true)
	f("a/b", "a/+", false)
	f("a/+", "a/b", true)
	f("#", "a/#", true)
	f("#", "#", true)
	f("+", "+", true)
	f("+", "#", false)
	f("#", "$SYS/#", false)
	f("+/#", "$SYS/x", false)
	f("$SYS/#", "$SYS/broker/+", true)
}

func verifierWithPolicies(t *testing.T, pols map[string]Policy) *Verifier {
	t.Helper()
	cfg := DefaultConfig()
	for k, p := range pols {
		cfg.Policies[k] = p
	}
	return mustNew(t, cfg, Options{DataDir: t.TempDir()})
}

func principal(t *testing.T, v *Verifier, claims map[string]any) *Principal {
	t.Helper()
	tok, err := v.Sign(claims)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDevicePolicy(t *testing.T) {
	v := verifierWithPolicies(t, nil)
	p := principal(t, v, MintClaims("d1", "", "device", nil, time.Hour, time.Now()))
	pub := map[string]bool{
		"devices/d1/telemetry":   true,
		"devices/d1":             true,
		"devices/d1/a/b/c":       true,
		"devices/d2/telemetry":   false,
		"devices/d10/telemetry":  false,
		"devices/d1/+":           false, // wildcards never publishable
		"devices/d1/#":           false,
		"devices/+/telemetry":    false,
		"$SYS/broker":            false,
		"apps/x":                 false,
		"":                       false,
		"devices/d1/\x00":        false,
		"devices/d1/\xff\xfe":    false, // not UTF-8
		"devices/d1/a+b":         false,
		"devices/d1/telemetry/#": false,
	}
	for topic, want := range pub {
		if got := p.CanPublish(topic); got != want {
			t.Errorf("CanPublish(%q) = %v, want %v", topic, got, want)
		}
	}
	sub := map[string]bool{
		"devices/d1/#":                true,
		"devices/d1/commands":         true,
		"devices/d1/+":                true,
		"devices/d1/+/x":              true,
		"$share/g/devices/d1/#":       true,
		"devices/+/commands":          false,
		"devices/#":                   false,
		"#":                           false,
		"devices/d2/#":                false,
		"$share/g/devices/d2/#":       false,
		"$share//devices/d1/#":        false,
		"$share/g+/devices/d1/#":      false,
		"devices/d1/#/x":              false, // invalid filter
		"devices/d1/a#":               false,
		"":                            false,
		"$SYS/#":                      false,
		"$share/g/devices/d1/+/x/+/#": true,
	}
	for filter, want := range sub {
		if got := p.CanSubscribe(filter); got != want {
			t.Errorf("CanSubscribe(%q) = %v, want %v", filter, got, want)
		}
	}
	if p.IsAdmin() {
		t.Error("device is admin")
	}
	if got := p.Policy(); !slices.Equal(got.Publish, []string{"devices/d1/#"}) || !slices.Equal(got.Subscribe, []string{"devices/d1/#"}) {
		t.Errorf("Policy() = %+v", got)
	}
}

func TestPolicyTemplates(t *testing.T) {
	v := verifierWithPolicies(t, map[string]Policy{
		"sensor": {
			Publish:     []string{"t/${tenant}/s/${sub}/#", "site/${claims.site}/+/${sub}", "rack/${claims.rack}/#"},
			Subscribe:   []string{"t/${tenant}/broadcast/#"},
			AnyClientID: true,
		},
	})
	p := principal(t, v, MintClaims("s1", "acme", "sensor", map[string]any{"site": "berlin", "rack": 42}, time.Hour, time.Now()))
	want := []string{"t/acme/s/s1/#", "site/berlin/+/s1", "rack/42/#"}
	if got := p.Policy().Publish; !slices.Equal(got, want) {
		t.Fatalf("Publish = %v, want %v", got, want)
	}
	for _, topic := range []string{"t/acme/s/s1/x", "site/berlin/temp/s1", "rack/42/u1"} {
		if !p.CanPublish(topic) {
			t.Errorf("CanPublish(%q) = false", topic)
		}
	}
	if !p.CanSubscribe("t/acme/broadcast/+") || p.CanSubscribe("t/other/broadcast/#") {
		t.Error("subscribe template wrong")
	}
	if !p.ClientIDAllowed("anything") {
		t.Error("any_client_id not honoured")
	}
	// A principal's policy must not leak into another's (compiled per principal, cached per token).
	q := principal(t, v, MintClaims("s2", "other", "sensor", map[string]any{"site": "paris", "rack": 7}, time.Hour, time.Now()))
	if q.CanPublish("t/acme/s/s1/x") || !q.CanPublish("t/other/s/s2/x") || p.CanPublish("t/other/s/s2/x") {
		t.Error("policies mixed between principals")
	}
}

// Values that could widen a pattern are refused: the pattern holding them grants nothing.
func TestPolicyInjection(t *testing.T) {
	v := verifierWithPolicies(t, map[string]Policy{
		"byclaim":  {Publish: []string{"zone/${claims.zone}/#"}, Subscribe: []string{"zone/${claims.zone}/#"}},
		"bytenant": {Publish: []string{"t/${tenant}/x"}},
	})
	bad := []any{"+", "#", "a/b", "", "$SYS", "x+", "a#", "..\x00", 1.5, true, map[string]any{"a": "b"}, []any{"a"}, nil}
	for _, val := range bad {
		extra := map[string]any{"zone": val}
		p := principal(t, v, MintClaims("dev", "", "byclaim", extra, time.Hour, time.Now()))
		if got := p.Policy(); len(got.Publish) != 0 || len(got.Subscribe) != 0 {
			t.Errorf("zone=%#v expanded to %+v", val, got)
		}
		for _, topic := range []string{"zone/a/x", "zone/+/x", "zone/#", "zone", "zone//x", "zone/a/b/x"} {
			if p.CanPublish(topic) || p.CanSubscribe(topic) {
				t.Errorf("zone=%#v grants %q", val, topic)
			}
		}
	}
	// Subject injection through the default device policy.
	for _, sub := range []string{"+", "#", "a/b", "$SYS", "x/#"} {
		p := principal(t, v, MintClaims(sub, "", "device", nil, time.Hour, time.Now()))
		for _, topic := range []string{"devices/a/x", "devices/x/y", "devices/a/b/x"} {
			if p.CanPublish(topic) {
				t.Errorf("sub=%q may publish to %q", sub, topic)
			}
		}
		if p.CanSubscribe("devices/#") || p.CanSubscribe("devices/+/x") {
			t.Errorf("sub=%q may subscribe widely", sub)
		}
	}
	// Tenant missing: the pattern is dropped.
	p := principal(t, v, MintClaims("dev", "", "bytenant", nil, time.Hour, time.Now()))
	if p.CanPublish("t//x") || len(p.Policy().Publish) != 0 {
		t.Error("empty tenant expanded")
	}
}

func TestPrincipalNil(t *testing.T) {
	var p *Principal
	if p.CanPublish("a") || p.CanSubscribe("a") || p.IsAdmin() || p.ClientIDAllowed("a") {
		t.Fatal("nil principal allowed something")
	}
	if got := p.Policy(); got.Admin || got.Publish != nil {
		t.Fatal("nil principal has a policy")
	}
	zero := &Principal{Subject: "a"}
	if zero.CanPublish("a") || zero.ClientIDAllowed("a") {
		t.Fatal("principal without policy allowed something")
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	cfg.Keys = []KeyConfig{
		{ID: "a", Alg: "HS256", Secret: strings.Repeat("x", 32)},
		{ID: "b", Alg: "none"},
		{ID: "a", Alg: "HS512", Secret: "short"},
		{ID: "c", Alg: "RS256"},
		{ID: "d", Alg: "ES256", Secret: "s", PublicKeyFile: "k.pem"},
		{ID: "e", Alg: "HS256", Secret: strings.Repeat("x", 32), SecretFile: "f"},
		{ID: "f"},
	}
	cfg.Leeway = -time.Second
	cfg.CacheSize = -1
	cfg.Policies["bad"] = Policy{Publish: []string{"a/#/b", "x/${nope}"}, Subscribe: []string{"${sub", "ok/${claims.}"}}
	err := cfg.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("err = %v", err)
	}
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("not a *ConfigError: %T", err)
	}
	wants := []string{
		`auth.keys[1].alg: unsupported "none"`,
		`auth.keys[2].id: "a" already used by auth.keys[0]`,
		`auth.keys[2].secret: 5 bytes, HS512 needs at least 64`,
		`auth.keys[3].public_key_file: missing`,
		`auth.keys[4]: ES256 takes public_key_file, not secret`,
		`auth.keys[5]: give secret or secret_file, not both`,
		`auth.keys[6].alg: missing`,
		`auth.leeway: -1s is negative`,
		`auth.cache_size: -1 is negative`,
		`auth.policies.bad.publish[0]: "a/#/b" is not a valid MQTT topic filter`,
		`auth.policies.bad.publish[1]: unknown variable "${nope}"`,
		`auth.policies.bad.subscribe[0]: unterminated`,
		`auth.policies.bad.subscribe[1]: unknown variable "${claims.}"`,
	}
	for _, w := range wants {
		found := false
		for _, p := range ce.Problems {
			if strings.HasPrefix(p, w) || strings.Contains(p, w) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %q in:\n%s", w, strings.Join(ce.Problems, "\n"))
		}
	}
	if len(ce.Problems) != len(wants) {
		t.Errorf("%d problems, want %d:\n%s", len(ce.Problems), len(wants), strings.Join(ce.Problems, "\n"))
	}
}

func TestNewReportsAllFileProblems(t *testing.T) {
	dir := t.TempDir()
	privPEM := writeFile(t, dir, "priv.pem", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	ecPEM := writePEM(t, dir, "ec.pem", keys(t)["ES384"].pub)
	cfg := DefaultConfig()
	cfg.Keys = []KeyConfig{
		{ID: "a", Alg: "RS256", PublicKeyFile: dir + "/missing.pem"},
		{ID: "b", Alg: "RS256", PublicKeyFile: privPEM},
		{ID: "c", Alg: "ES256", PublicKeyFile: ecPEM},
		{ID: "d", Alg: "RS256", PublicKeyFile: ecPEM},
		{ID: "e", Alg: "HS256", SecretFile: writeFile(t, dir, "s", []byte("short\n"))},
	}
	cfg.JWKSFile = writeFile(t, dir, "jwks.json", []byte(`{"keys":[{"kty":"oct","k":"AA"}]}`))
	_, err := New(cfg, Options{})
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	wants := []string{
		"auth.keys[0].public_key_file: open",
		"auth.keys[1].public_key_file: holds a private key",
		"auth.keys[2].public_key_file: EC key on P-384 cannot be used with ES256",
		"auth.keys[3].public_key_file: EC key cannot be used with RS256",
		"auth.keys[4].secret_file: 5 bytes",
		"auth.jwks_file: keys[0]",
	}
	if len(ce.Problems) != len(wants) {
		t.Fatalf("problems:\n%s", strings.Join(ce.Problems, "\n"))
	}
	for i, w := range wants {
		if !strings.HasPrefix(ce.Problems[i], w) {
			t.Errorf("problem %d = %q, want prefix %q", i, ce.Problems[i], w)
		}
	}
}

func TestPrincipalForCertificateSenders(t *testing.T) {
	v, err := New(DefaultConfig(), Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.PrincipalFor("d1", "acme", "device", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.CanPublish("devices/d1/telemetry") || p.CanPublish("devices/d2/telemetry") || !p.ClientIDAllowed("d1") || p.IsAdmin() {
		t.Fatalf("policy of a certificate device: %+v", p.Policy())
	}
	// A subject that would widen the policy grants nothing.
	p, err = v.PrincipalFor("+", "", "device", time.Time{})
	if err != nil || p.CanPublish("devices/x/telemetry") {
		t.Fatalf("wildcard subject widened access: %v", err)
	}
	if _, err := v.PrincipalFor("d1", "", "wizard", time.Time{}); !errors.Is(err, ErrNoRole) {
		t.Fatalf("unknown role: %v", err)
	}
	if _, err := v.PrincipalFor("", "", "device", time.Time{}); !errors.Is(err, ErrNoSubject) {
		t.Fatalf("empty subject: %v", err)
	}
	if !v.HasRole("device") || v.HasRole("wizard") {
		t.Fatal("HasRole")
	}
}

func TestRequireExp(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	lax, err := New(cfg, Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	forever, _ := lax.Sign(MintClaims("d1", "", "device", nil, 0, time.Now()))
	if _, err := lax.Verify(forever); err != nil {
		t.Fatalf("token without exp refused by default: %v", err)
	}
	cfg.RequireExp = true
	strict, err := New(cfg, Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.Verify(forever); !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "require_exp") {
		t.Fatalf("token without exp under require_exp: %v", err)
	}
	hour, _ := strict.Sign(MintClaims("d1", "", "device", nil, time.Hour, time.Now()))
	if _, err := strict.Verify(hour); err != nil {
		t.Fatalf("token with exp under require_exp: %v", err)
	}
}
