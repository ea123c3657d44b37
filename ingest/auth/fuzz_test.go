package auth

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var allSentinels = []error{ErrMissingToken, ErrMalformed, ErrUnknownKey, ErrBadSignature, ErrAlgorithm,
	ErrExpired, ErrNotYetValid, ErrIssuer, ErrAudience, ErrNoSubject, ErrNoRole}

// FuzzVerify feeds arbitrary strings to Verify: it must never panic, every error must wrap
// exactly one sentinel, and anything accepted must carry a subject and a configured role.
func FuzzVerify(f *testing.F) {
	dir := f.TempDir()
	ks := keys(f)
	cfg := DefaultConfig()
	cfg.CacheSize = 1024
	cfg.Keys = []KeyConfig{
		{ID: "h", Alg: "HS256", Secret: string(ks["HS256"].priv.([]byte))},
		{ID: "e", Alg: "ES256", PublicKeyFile: writePEM(f, dir, "ec.pem", ks["ES256"].pub)},
		{ID: "ed", Alg: "EdDSA", PublicKeyFile: writePEM(f, dir, "ed.pem", ks["EdDSA"].pub)},
	}
	v := mustNew(f, cfg, Options{})
	now := time.Now()
	for _, s := range []string{
		signWith(f, ks["HS256"], "h", deviceClaims("d1", now)),
		signWith(f, ks["ES256"], "e", deviceClaims("d2", now)),
		signWith(f, ks["EdDSA"], "", MintClaims("d3", "t", "app", map[string]any{"x": []any{1, "a"}}, 0, now)),
		rawToken(map[string]any{"alg": "none"}, deviceClaims("d", now), nil),
		rawToken(map[string]any{"alg": "HS256", "kid": 5}, deviceClaims("d", now), []byte("sig")),
		"", ".", "..", "a.b.c", "eyJ.eyJ.", "e30.e30.e30",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tok string) {
		p, err := v.Verify(tok)
		if err != nil {
			if p != nil {
				t.Fatal("principal with error")
			}
			n := 0
			for _, s := range allSentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %q wraps %d sentinels", err, n)
			}
			return
		}
		if p.Subject == "" || p.policy == nil || (p.Role != "device" && p.Role != "app") {
			t.Fatalf("accepted principal %+v", p)
		}
	})
}

// FuzzTopic checks the matcher and the coverage relation against each other: if allowed covers
// requested, every topic requested matches is matched by allowed; a filter covers itself.
func FuzzTopic(f *testing.F) {
	for _, s := range [][3]string{
		{"devices/a/#", "devices/a/+/x", "devices/a/b/x"},
		{"devices/+/x", "devices/a/#", "devices/a"},
		{"a/+/#", "a/#", "a"},
		{"#", "$SYS/#", "$SYS/x"},
		{"+/+", "a/+", "a/"},
		{"/#", "/+", "/"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, allowed, requested, topic string) {
		a, r := splitLevels(allowed), splitLevels(requested)
		ma, mr := matchTopic(a, topic), matchTopic(r, topic) // never panics, on any input
		if !validFilter(allowed) || !validFilter(requested) {
			return
		}
		if !covers(r, r) {
			t.Fatalf("%q does not cover itself", requested)
		}
		if strings.ContainsAny(topic, "+#\x00") || topic == "" {
			return
		}
		if covers(a, r) && mr && !ma {
			t.Fatalf("%q covers %q, which matches %q, but %q does not match it", allowed, requested, topic, allowed)
		}
	})
}

// FuzzExpand checks that a variable value never changes a pattern's shape: an expanded pattern
// has the same levels, and the same wildcards in the same places, as the template.
func FuzzExpand(f *testing.F) {
	f.Add("devices/${sub}/#", "d1")
	f.Add("z/${claims.zone}/+/${tenant}", "a/b")
	f.Add("x${sub}y/+", "#")
	f.Add("${sub}", "$SYS")
	f.Fuzz(func(t *testing.T, tmpl, val string) {
		p, err := compilePattern(tmpl)
		if err != nil {
			return
		}
		got, ok := p.expand(val, val, map[string]any{"zone": val, "x": val})
		if !ok {
			return
		}
		shape, _ := p.expand("v", "v", map[string]any{"zone": "v", "x": "v"})
		if !validFilter(got) {
			t.Fatalf("expanded %q with %q to invalid filter %q", tmpl, val, got)
		}
		gl, sl := splitLevels(got), splitLevels(shape)
		if len(gl) != len(sl) {
			t.Fatalf("%q with %q: %d levels, template has %d", tmpl, val, len(gl), len(sl))
		}
		for i := range gl {
			if (gl[i] == "+" || gl[i] == "#") != (sl[i] == "+" || sl[i] == "#") {
				t.Fatalf("%q with %q: level %d is %q", tmpl, val, i, gl[i])
			}
		}
		if strings.HasPrefix(got, "$") && !strings.HasPrefix(shape, "$") {
			t.Fatalf("%q with %q became a $ filter %q", tmpl, val, got)
		}
	})
}

// FuzzJWKS: the JWKS parser never panics, and every key it returns is usable for its alg.
func FuzzJWKS(f *testing.F) {
	ks := keys(f)
	f.Add(mustJSON(map[string]any{"keys": []any{jwk(f, "a", "", ks["RS256"].pub), jwk(f, "b", "", ks["ES256"].pub), jwk(f, "c", "", ks["EdDSA"].pub)}}))
	f.Add(`{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}`)
	f.Add(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","alg":"HS256"}]}`)
	f.Fuzz(func(t *testing.T, doc string) {
		keys, _, err := parseJWKS([]byte(doc))
		if err != nil {
			return
		}
		for _, k := range keys {
			if _, ok := algFamilies[k.alg]; !ok || algFamilies[k.alg] == "hmac" {
				t.Fatalf("JWKS key with alg %q", k.alg)
			}
			if err := checkKeyForAlg(k.key, k.alg); err != nil {
				t.Fatal(err)
			}
		}
	})
}
