package auth

import (
	"fmt"
	"testing"
	"time"
)

func benchVerifier(b *testing.B) *Verifier {
	b.Helper()
	cfg := configFor(b, b.TempDir())
	return mustNew(b, cfg, Options{})
}

// BenchmarkVerifyCached is the hot path: a token already verified once.
func BenchmarkVerifyCached(b *testing.B) {
	v := benchVerifier(b)
	tok := signWith(b, keys(b)["ES256"], "k-ES256", deviceClaims("dev-0001", time.Now()))
	if _, err := v.Verify(tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCachedParallel: many connections verifying cached tokens at once.
func BenchmarkVerifyCachedParallel(b *testing.B) {
	v := benchVerifier(b)
	toks := make([]string, 1024)
	for i := range toks {
		toks[i] = signWith(b, keys(b)["HS256"], "k-HS256", deviceClaims(fmt.Sprintf("dev-%04d", i), time.Now()))
		if _, err := v.Verify(toks[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := v.Verify(toks[i&1023]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkVerifyUncached is the full cost of a new token per algorithm (signature, claims,
// policy compilation), bypassing the cache.
func BenchmarkVerifyUncached(b *testing.B) {
	v := benchVerifier(b)
	for _, alg := range allAlgs {
		b.Run(alg, func(b *testing.B) {
			tok := signWith(b, keys(b)[alg], "k-"+alg, deviceClaims("dev-0001", time.Now()))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, _, err := v.verify(tok, v.set.Load()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCanPublish(b *testing.B) {
	v := mustNew(b, DefaultConfig(), Options{DataDir: b.TempDir()})
	tok, _ := v.Sign(deviceClaims("dev-0001", time.Now()))
	p, err := v.Verify(tok)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !p.CanPublish("devices/dev-0001/telemetry") {
			b.Fatal("refused")
		}
	}
}

func BenchmarkCanSubscribe(b *testing.B) {
	v := mustNew(b, DefaultConfig(), Options{DataDir: b.TempDir()})
	tok, _ := v.Sign(deviceClaims("dev-0001", time.Now()))
	p, err := v.Verify(tok)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !p.CanSubscribe("devices/dev-0001/commands/+") {
			b.Fatal("refused")
		}
	}
}
