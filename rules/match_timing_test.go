package rules

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/event"
)

// benchRules builds n rules of which exactly 3 match the topic fleet/s7/d42/telemetry.
// A %d in when is replaced by a number that differs per rule, so that every rule has its
// own compiled program (no sharing between the 3 matching rules).
func benchRules(n int, when string) []Rule {
	w := func(i int) string {
		if strings.Contains(when, "%d") {
			return fmt.Sprintf(when, i)
		}
		return when
	}
	rules := make([]Rule, 0, n)
	rules = append(rules,
		Rule{ID: "all-fleet", Topic: "fleet/#", When: w(-1), Functions: []string{"archive"}},
		Rule{ID: "site-device", Topic: "+/s7/d42/+", When: w(-2), Functions: []string{"alert"}},
	)
	for i := 0; len(rules) < n; i++ {
		rules = append(rules, Rule{ID: fmt.Sprintf("site-%d", i), Topic: fmt.Sprintf("fleet/s%d/+/telemetry", i), When: w(i),
			Functions: []string{fmt.Sprintf("fn-%d", i%50)}})
	}
	return rules
}

func benchMatch(b *testing.B, n int, when string, data string, wantTargets int) {
	s, err := Compile(benchRules(n, when), CompileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ev := &event.Event{Topic: "fleet/s7/d42/telemetry", Protocol: event.ProtocolMQTT, Subject: "d42",
		Data: []byte(data), Claims: map[string]any{"tier": "gold", "sub": "d42"}}
	dst := s.Match(ev, nil)
	if len(dst) != wantTargets {
		b.Fatalf("%d targets, want %d: %+v", len(dst), wantTargets, dst)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst = s.Match(ev, dst[:0])
	}
}

const benchPayload = `{"temp": 61.5, "hum": 40, "bat": 3.7}`

func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("rules=%d/payload", n), func(b *testing.B) { benchMatch(b, n, "payload.temp > 50 - %d", benchPayload, 3) })
		b.Run(fmt.Sprintf("rules=%d/no-when", n), func(b *testing.B) { benchMatch(b, n, "", benchPayload, 3) })
		b.Run(fmt.Sprintf("rules=%d/source-topic", n), func(b *testing.B) {
			benchMatch(b, n, `source == "mqtt" && topic startsWith "fleet/" && %d < 1000000`, benchPayload, 3)
		})
		b.Run(fmt.Sprintf("rules=%d/claims", n), func(b *testing.B) { benchMatch(b, n, `claims.tier == "gold" && %d < 1000000`, benchPayload, 3) })
	}
}

func BenchmarkMatchParallel(b *testing.B) {
	s, err := Compile(benchRules(1000, "payload.temp > 50 - %d"), CompileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ev := &event.Event{Topic: "fleet/s7/d42/telemetry", Protocol: event.ProtocolMQTT, Data: []byte(benchPayload)}
		var dst []Target
		for pb.Next() {
			dst = s.Match(ev, dst[:0])
		}
	})
}

func BenchmarkCompile(b *testing.B) {
	rules := benchRules(1000, "payload.temp > 50 - %d")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(rules, CompileOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}
