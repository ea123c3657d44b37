package rules

import (
	"testing"

	"github.com/fleetgate/fleetgate/event"
)

// FuzzDecodeAndCompile feeds untrusted rule-set bodies (JSON and YAML) through decoding and
// compilation, then matches an event against whatever compiled: nothing may panic.
func FuzzDecodeAndCompile(f *testing.F) {
	f.Add([]byte(`{"rules":[{"id":"a","topic":"devices/+/telemetry","when":"payload.temp > 3","functions":["f"]}]}`), false)
	f.Add([]byte(`{"rules":[{"id":"a","topic":"#","routes":[{"when":"claims.x == 1","functions":["f"]},{"functions":["g"]}],"select":{"t":"payload.t"}}]}`), false)
	f.Add([]byte("rules:\n  - id: a\n    topic: a/#\n    functions: [f]\n    enabled: false\n"), true)
	f.Add([]byte("rules:\n  - {id: b, topic: '+/x', when: 'topic matches \"^a\"', functions: [f]}\n"), true)
	f.Fuzz(func(t *testing.T, body []byte, isYAML bool) {
		req, err := DecodeApply(body, isYAML)
		if err != nil {
			return
		}
		s, err := Compile(req.Rules, CompileOptions{MaxRules: 50})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty validation error")
			}
			return
		}
		ev := &event.Event{Topic: "devices/d1/telemetry", Protocol: "mqtt", Data: []byte(`{"temp": 5, "t": [1]}`), Claims: map[string]any{"x": 1.0}}
		s.Match(ev, nil)
		s.Test(TestRequest{Topic: "a/x", RawPayload: "raw"})
	})
}

// FuzzExpression compiles arbitrary expressions as a gate and a select, and evaluates what
// compiles against events with JSON and non-JSON payloads: errors are fine, panics are not.
func FuzzExpression(f *testing.F) {
	for _, s := range []string{
		`payload.temp > 50`, `claims.tier == "gold" && source == "mqtt"`, `levels[1] matches "^d[0-9]+$"`,
		`any(payload.list, # > 1)`, `num(payload.s) + 1 > 2`, `str(payload) == ""`, `1..10 | len() > 3`,
		`meta["a"] ?? "x"`, `now.Unix() > 0`, `let x = payload.a; x?.b`, `payload.list | map(# * 2) | sum() > 3`,
	} {
		f.Add(s, []byte(`{"temp": 60, "list": [1,2,3], "s": "4", "a": {"b": true}}`))
	}
	f.Fuzz(func(t *testing.T, src string, payload []byte) {
		if len(src) > DefaultMaxExprLen {
			return
		}
		ev := &event.Event{Topic: "devices/d1/telemetry", Protocol: "http", Subject: "d1", Data: payload,
			Claims: map[string]any{"tier": "gold"}, Meta: map[string]string{"a": "b"}}
		if s, err := Compile([]Rule{{ID: "g", Topic: "#", When: src, Functions: []string{"f"}}}, CompileOptions{}); err == nil {
			s.Match(ev, nil)
		}
		if s, err := Compile([]Rule{{ID: "s", Topic: "#", Functions: []string{"f"}, Select: map[string]string{"v": src}}}, CompileOptions{}); err == nil {
			s.Match(ev, nil)
		}
	})
}
