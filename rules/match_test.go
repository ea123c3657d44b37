package rules

import (
	"slices"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fleetgate/fleetgate/event"
)

// newTestEngine starts an engine on a fresh in-memory KV with rules as version 1.
func newTestEngine(t *testing.T, rules ...Rule) (*Engine, *metrics.Set) {
	t.Helper()
	ms := metrics.NewSet()
	e, err := NewEngine(EngineOptions{KV: newMemKV(), Seed: rules, Metrics: ms})
	if err != nil {
		t.Fatal(err)
	}
	return e, ms
}

func functions(ts []Target) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Function
	}
	return out
}

func counter(ms *metrics.Set, name string) uint64 { return ms.GetOrCreateCounter(name).Get() }

func telemetry(data string) *event.Event {
	return &event.Event{Topic: "devices/d1/telemetry", Protocol: event.ProtocolMQTT, Subject: "d1", Data: []byte(data)}
}

func TestPayloadParsedOnceAndOnlyWhenNeeded(t *testing.T) {
	e, ms := newTestEngine(t,
		Rule{ID: "hot", Topic: "devices/+/telemetry", When: "payload.temp > 50", Functions: []string{"alert"}},
		Rule{ID: "any", Topic: "devices/#", When: "has(payload.temp)", Functions: []string{"archive"}},
		Rule{ID: "sel", Topic: "devices/+/+", Functions: []string{"slim"}, Select: map[string]string{"t": "payload.temp"}},
		Rule{ID: "apps", Topic: "apps/#", When: "payload.x == 1", Functions: []string{"apps"}},
		Rule{ID: "plain", Topic: "status/#", When: `source == "mqtt"`, Functions: []string{"status"}},
	)
	parsed := func() uint64 { return counter(ms, "fleetgate_rules_payload_parsed_total") }

	got := e.Match(telemetry(`{"temp": 60}`), nil)
	if want := []string{"alert", "archive", "slim"}; !slices.Equal(functions(got), want) {
		t.Fatalf("functions %v, want %v", functions(got), want)
	}
	if parsed() != 1 {
		t.Fatalf("payload parsed %d times for one event, want 1", parsed())
	}
	if string(got[2].Data) != `{"t":60}` || got[0].Data != nil {
		t.Fatalf("select output %q / %q", got[2].Data, got[0].Data)
	}

	// No candidate rule needs the payload: it is not parsed at all.
	got = e.Match(&event.Event{Topic: "status/d1", Protocol: event.ProtocolMQTT, Data: []byte(`{"big": true}`)}, nil)
	if !slices.Equal(functions(got), []string{"status"}) || parsed() != 1 {
		t.Fatalf("functions %v, parses %d (want [status], 1)", functions(got), parsed())
	}
	// No rule matches the topic: not parsed either.
	if got = e.Match(&event.Event{Topic: "other/x", Data: []byte(`{}`)}, nil); len(got) != 0 || parsed() != 1 {
		t.Fatalf("functions %v, parses %d", functions(got), parsed())
	}
}

func TestNonJSONPayloadMakesPayloadConditionsFalse(t *testing.T) {
	e, ms := newTestEngine(t,
		Rule{ID: "hot", Topic: "devices/+/telemetry", When: "payload.temp > 50", Functions: []string{"alert"}},
		Rule{ID: "all", Topic: "devices/#", Functions: []string{"archive"}},
		Rule{ID: "notpayload", Topic: "devices/#", When: `subject == "d1"`, Functions: []string{"bysubject"}},
	)
	for _, data := range []string{"not json", "", "{", "\x00\xff"} {
		got := e.Match(telemetry(data), nil)
		if want := []string{"archive", "bysubject"}; !slices.Equal(functions(got), want) {
			t.Fatalf("payload %q: functions %v, want %v", data, functions(got), want)
		}
	}
	if n := counter(ms, `fleetgate_rule_eval_errors_total{rule="hot"}`); n != 0 {
		t.Fatalf("a non-JSON payload counted %d evaluation errors, want 0", n)
	}
	if n := counter(ms, "fleetgate_rules_payload_invalid_total"); n != 4 {
		t.Fatalf("invalid payloads counted %d, want 4", n)
	}
}

func TestContextConditions(t *testing.T) {
	s, err := Compile([]Rule{
		{ID: "gold", Topic: "#", When: `claims.tier == "gold"`, Functions: []string{"gold"}},
		{ID: "http", Topic: "#", When: `source == "http"`, Functions: []string{"http"}},
		{ID: "mqtt", Topic: "#", When: `source == "mqtt"`, Functions: []string{"mqtt"}},
		{ID: "app2", Topic: "#", When: `meta["app-version"] startsWith "2."`, Functions: []string{"app2"}},
		{ID: "tenant", Topic: "#", When: `tenant == "acme" && subject == "u1"`, Functions: []string{"acme"}},
		{ID: "levels", Topic: "#", When: `len(levels) == 3 && levels[2] == "telemetry"`, Functions: []string{"levels"}},
		{ID: "regex", Topic: "#", When: `topic matches "^apps/[a-z]+/click$"`, Functions: []string{"regex"}},
		{ID: "time", Topic: "#", When: `now.Year() >= 2024`, Functions: []string{"time"}},
		{ID: "locale", Topic: "#", When: `(meta.locale ?? "en-US") == "en-US"`, Functions: []string{"en"}},
	}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := func(ev *event.Event, want ...string) {
		t.Helper()
		if got := functions(s.Match(ev, nil)); !slices.Equal(got, want) {
			t.Errorf("%+v: functions %v, want %v", ev, got, want)
		}
	}
	f(&event.Event{Topic: "devices/d1/telemetry", Protocol: "mqtt", Claims: map[string]any{"tier": "gold"}}, "gold", "mqtt", "levels", "time", "en")
	f(&event.Event{Topic: "apps/shop/click", Protocol: "http", Tenant: "acme", Subject: "u1", Meta: map[string]string{"app-version": "2.3.1"}}, "http", "app2", "acme", "regex", "time", "en")
	f(&event.Event{Topic: "apps/shop/click", Protocol: "http", Tenant: "acme", Subject: "u2", Meta: map[string]string{"app-version": "1.9", "locale": "de-DE"}}, "http", "regex", "time")
	// Claims decoded from ClaimsJSON, as for an event read back from storage.
	f(&event.Event{Topic: "x", Protocol: "mqtt", ClaimsJSON: []byte(`{"tier":"gold"}`)}, "gold", "mqtt", "time", "en")
}

func TestRoutesFirstMatchAndDefault(t *testing.T) {
	s, err := Compile([]Rule{{
		ID: "telemetry", Topic: "devices/+/telemetry", When: "payload.temp > -50", Functions: []string{"archive"},
		Routes: []Route{
			{When: `claims.tier == "gold"`, Functions: []string{"threshold"}},
			{When: `payload.temp > 40`, Functions: []string{"hot", "archive"}},
			{Functions: []string{"echo-down"}},
		},
	}}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f := func(tier string, data string, want ...string) {
		t.Helper()
		ev := telemetry(data)
		ev.Claims = map[string]any{"tier": tier}
		got := s.Match(ev, nil)
		if !slices.Equal(functions(got), want) {
			t.Errorf("tier %s payload %s: %v, want %v", tier, data, functions(got), want)
		}
		for _, tg := range got {
			if tg.Rule != "telemetry" {
				t.Errorf("target %+v has the wrong rule", tg)
			}
		}
	}
	f("gold", `{"temp": 45}`, "archive", "threshold") // first route wins even though the second also holds
	f("silver", `{"temp": 45}`, "archive", "hot")     // archive appears once
	f("silver", `{"temp": 20}`, "archive", "echo-down")
	f("gold", `{"temp": -60}`) // the rule's when fails: nothing
	f("gold", `nope`)
}

func TestFunctionChosenTwiceAppearsOnceFirstRuleWins(t *testing.T) {
	s, err := Compile([]Rule{
		{ID: "first", Topic: "a/+", Functions: []string{"f", "g"}},
		{ID: "second", Topic: "a/#", Functions: []string{"g", "h"}, Select: map[string]string{"x": "topic"}},
	}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pre := []Target{{Function: "g", Rule: "earlier"}}
	got := s.Match(&event.Event{Topic: "a/b"}, pre)
	want := []Target{{Function: "g", Rule: "earlier"}, {Function: "f", Rule: "first"}, {Function: "g", Rule: "first"}, {Function: "h", Rule: "second", Data: []byte(`{"x":"a/b"}`)}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i].Function != want[i].Function || got[i].Rule != want[i].Rule || string(got[i].Data) != string(want[i].Data) {
			t.Fatalf("target %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestSelectOutput(t *testing.T) {
	s, err := Compile([]Rule{{
		ID: "slim", Topic: "devices/+/telemetry", Functions: []string{"f"},
		Select: map[string]string{
			"device": "levels[1]",
			"temp_f": "payload.temp * 9 / 5 + 32",
			"tier":   "claims.tier",
			"src":    "source",
			"hot":    "payload.temp > 30",
		},
	}}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ev := telemetry(`{"temp": 35, "noise": [1,2,3]}`)
	ev.Claims = map[string]any{"tier": "gold"}
	got := s.Match(ev, nil)
	if len(got) != 1 {
		t.Fatalf("got %+v", got)
	}
	if want := `{"device":"d1","hot":true,"src":"mqtt","temp_f":95,"tier":"gold"}`; string(got[0].Data) != want {
		t.Fatalf("select output %s, want %s", got[0].Data, want)
	}
	// A select that needs a payload that is not JSON is an evaluation error: the rule is skipped.
	if got := s.Match(telemetry("garbage"), nil); len(got) != 0 {
		t.Fatalf("non-JSON payload with select: %+v", got)
	}
}

func TestEvaluationErrorsAreNoMatchAndCounted(t *testing.T) {
	e, ms := newTestEngine(t,
		Rule{ID: "idx", Topic: "#", When: `levels[5] == "x"`, Functions: []string{"f"}},
		Rule{ID: "num", Topic: "#", When: `num(payload.v) > 1`, Functions: []string{"g"}},
		Rule{ID: "route", Topic: "#", Routes: []Route{{When: `payload.a.b == 1`, Functions: []string{"r1"}}, {Functions: []string{"r2"}}}},
		Rule{ID: "ok", Topic: "#", Functions: []string{"ok"}},
	)
	got := e.Match(&event.Event{Topic: "a/b", Data: []byte(`{"v": "high"}`)}, nil)
	if want := []string{"r2", "ok"}; !slices.Equal(functions(got), want) {
		t.Fatalf("functions %v, want %v", functions(got), want)
	}
	for id, want := range map[string][3]uint64{"idx": {1, 0, 1}, "num": {1, 0, 1}, "route": {1, 1, 1}, "ok": {1, 1, 0}} {
		set, _ := e.Live()
		st, _ := set.Stats(id)
		if got := [3]uint64{st.Matched, st.Passed, st.Errors}; got != want {
			t.Errorf("rule %s stats %v, want matched/passed/errors %v", id, got, want)
		}
	}
	var b strings.Builder
	ms.WritePrometheus(&b)
	if !strings.Contains(b.String(), `fleetgate_rule_eval_errors_total{rule="idx"} 1`) {
		t.Fatalf("metrics output lacks the per-rule error counter:\n%s", b.String())
	}
}

func TestDisabledRuleIsSkipped(t *testing.T) {
	s, err := Compile([]Rule{
		{ID: "off", Topic: "#", Functions: []string{"f"}, Enabled: new(false)},
		{ID: "on", Topic: "#", Functions: []string{"g"}, Enabled: new(true)},
	}, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := functions(s.Match(&event.Event{Topic: "a"}, nil)); !slices.Equal(got, []string{"g"}) {
		t.Fatalf("functions %v", got)
	}
	if len(s.Rules()) != 2 {
		t.Fatal("a disabled rule must stay in the set")
	}
}

func TestHelpers(t *testing.T) {
	cases := []struct {
		when string
		want bool
	}{
		{`has(payload.temp)`, true},
		{`has(payload.missing)`, false},
		{`isNumber(payload.temp) && !isNumber(payload.name)`, true},
		{`isString(payload.name) && isBool(payload.on)`, true},
		{`num(payload.str) == 12.5`, true},
		{`num(payload.on) == 1`, true},
		{`str(payload.temp) == "21" && str(payload.frac) == "1.5" && str(payload.on) == "true"`, true},
		{`payload.name matches "^sensor-[0-9]+$"`, true},
		{`(payload?.deep?.missing ?? 7) == 7`, true},
		{`payload.temp in 1..100`, true},
		{`any(payload.list, # > 2)`, true},
	}
	ev := &event.Event{Topic: "t", Data: []byte(`{"temp":21,"frac":1.5,"name":"sensor-7","on":true,"str":" 12.5 ","list":[1,2,3]}`)}
	for _, c := range cases {
		s, err := Compile([]Rule{{ID: "h", Topic: "t", When: c.when, Functions: []string{"f"}}}, CompileOptions{})
		if err != nil {
			t.Errorf("%s: %v", c.when, err)
			continue
		}
		res := s.Test(TestRequest{Topic: "t", Payload: ev.Data})
		if got := len(s.Match(ev, nil)) == 1; got != c.want {
			t.Errorf("%s = %v, want %v (%+v)", c.when, got, c.want, res)
		}
	}
}
