package rules

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fleetgate/fleetgate/event"
)

func TestEngineSeedsVersionOneAndSurvivesRestart(t *testing.T) {
	kv := newMemKV()
	seed := []Rule{{ID: "all", Topic: "#", Functions: []string{"log"}}}
	e, err := NewEngine(EngineOptions{KV: kv, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	if _, v := e.Live(); v != 1 {
		t.Fatalf("seeded version %d, want 1", v)
	}
	v, err := e.Apply([]Rule{{ID: "tele", Topic: "devices/+/telemetry", When: `claims.tier == "gold"`, Functions: []string{"gold"}}})
	if err != nil || v != 2 {
		t.Fatalf("Apply = %d, %v", v, err)
	}

	// A restart with a different seed loads version 2: the config only seeds the first version.
	e2, err := NewEngine(EngineOptions{KV: kv, Seed: []Rule{{ID: "other", Topic: "#", Functions: []string{"x"}}}})
	if err != nil {
		t.Fatal(err)
	}
	set, v := e2.Live()
	if v != 2 || set.Len() != 1 || set.Rules()[0].ID != "tele" {
		t.Fatalf("after restart: version %d rules %+v", v, set.Rules())
	}
	ev := &event.Event{Topic: "devices/d/telemetry", Claims: map[string]any{"tier": "gold"}}
	if got := functions(e2.Match(ev, nil)); !slices.Equal(got, []string{"gold"}) {
		t.Fatalf("restored set chose %v", got)
	}
	if v, err := e2.Apply(seed); err != nil || v != 3 {
		t.Fatalf("Apply after restart = %d, %v", v, err)
	}
}

func TestEngineKeepsLastVersions(t *testing.T) {
	kv := newMemKV()
	e, err := NewEngine(EngineOptions{KV: kv, Keep: 3, Seed: []Rule{{ID: "r", Topic: "#", Functions: []string{"f"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if _, err := e.Apply([]Rule{{ID: fmt.Sprintf("r%d", i), Topic: "#", Functions: []string{"f"}}}); err != nil {
			t.Fatal(err)
		}
	}
	vs, err := e.Versions()
	if err != nil || !slices.Equal(vs, []int{4, 5, 6}) {
		t.Fatalf("stored versions %v, %v; want [4 5 6]", vs, err)
	}
	if _, ok, _ := kv.Get(versionKey(6)); !ok {
		t.Fatalf("latest version not under %s", versionKey(6))
	}
	if versionKey(6) != "rules/v/00000000000000000006" {
		t.Fatalf("key format %s", versionKey(6))
	}
}

func TestEngineBadSetChangesNothing(t *testing.T) {
	kv := newMemKV()
	e, err := NewEngine(EngineOptions{KV: kv, Seed: []Rule{{ID: "a", Topic: "#", Functions: []string{"f"}}},
		Compile: CompileOptions{KnownFunction: known("f", "g")}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.Apply([]Rule{
		{ID: "good", Topic: "x", Functions: []string{"g"}},
		{ID: "bad", Topic: "x/#/y", Functions: []string{"nope"}},
	})
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 2 {
		t.Fatalf("want 2 problems, got %v", err)
	}
	set, v := e.Live()
	if v != 1 || set.Rules()[0].ID != "a" {
		t.Fatalf("live set changed: v%d %+v", v, set.Rules())
	}
	if vs, _ := e.Versions(); !slices.Equal(vs, []int{1}) {
		t.Fatalf("versions %v after a refused apply", vs)
	}

	// A storage failure also leaves everything as it was.
	kv.FailPut = errDiskFull
	if _, err := e.Apply([]Rule{{ID: "good", Topic: "x", Functions: []string{"g"}}}); !errors.Is(err, errDiskFull) {
		t.Fatalf("Apply with a failing KV = %v", err)
	}
	if _, v := e.Live(); v != 1 {
		t.Fatalf("version %d after a failed store", v)
	}
	kv.FailPut = nil
	if v, err := e.Apply([]Rule{{ID: "good", Topic: "x", Functions: []string{"g"}}}); err != nil || v != 2 {
		t.Fatalf("Apply after recovery = %d, %v", v, err)
	}
}

func TestEngineDelete(t *testing.T) {
	e, _ := newTestEngine(t,
		Rule{ID: "a", Topic: "#", Functions: []string{"f"}},
		Rule{ID: "b", Topic: "#", Functions: []string{"g"}},
	)
	if _, err := e.Delete("zzz"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Delete(missing) = %v", err)
	}
	v, err := e.Delete("a")
	if err != nil || v != 2 {
		t.Fatalf("Delete = %d, %v", v, err)
	}
	if got := functions(e.Match(&event.Event{Topic: "x"}, nil)); !slices.Equal(got, []string{"g"}) {
		t.Fatalf("after delete: %v", got)
	}
}

func TestEngineStoredSetInvalidUnderNewConfig(t *testing.T) {
	kv := newMemKV()
	if _, err := NewEngine(EngineOptions{KV: kv, Seed: []Rule{{ID: "a", Topic: "#", Functions: []string{"gone"}}}}); err != nil {
		t.Fatal(err)
	}
	_, err := NewEngine(EngineOptions{KV: kv, Compile: CompileOptions{KnownFunction: known("log")}})
	if !errors.Is(err, ErrInvalidRules) || !strings.Contains(err.Error(), `unknown function "gone"`) || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("got %v", err)
	}
	if err := kv.Put(versionKey(2), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := NewEngine(EngineOptions{KV: kv}); !errors.Is(err, ErrCorruptVersion) {
		t.Fatalf("corrupt version: %v", err)
	}
	if _, err := NewEngine(EngineOptions{}); !errors.Is(err, ErrNoKV) {
		t.Fatalf("no KV: %v", err)
	}
	if _, err := NewEngine(EngineOptions{KV: newMemKV(), Seed: []Rule{{ID: "", Topic: "#"}}}); !errors.Is(err, ErrInvalidRules) {
		t.Fatalf("bad seed: %v", err)
	}
}

// TestApplyIsAtomicUnderConcurrentMatch: while sets are swapped, every Match sees one whole
// set: all functions of version A or all of version B, never a mix.
func TestApplyIsAtomicUnderConcurrentMatch(t *testing.T) {
	setA := []Rule{
		{ID: "a1", Topic: "devices/+/telemetry", Functions: []string{"a1"}},
		{ID: "a2", Topic: "devices/#", When: "payload.temp > 0", Functions: []string{"a2"}},
	}
	setB := []Rule{
		{ID: "b1", Topic: "devices/#", Functions: []string{"b1"}},
		{ID: "b2", Topic: "+/+/telemetry", When: `source == "mqtt"`, Functions: []string{"b2"}},
		{ID: "b3", Topic: "#", Functions: []string{"b3"}},
	}
	e, _ := newTestEngine(t, setA...)
	var stop atomic.Bool
	var sawA, sawB atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var dst []Target
			for !stop.Load() {
				dst = e.Match(telemetry(`{"temp": 3}`), dst[:0])
				got := strings.Join(functions(dst), ",")
				switch got {
				case "a1,a2":
					sawA.Add(1)
				case "b1,b2,b3":
					sawB.Add(1)
				default:
					errs <- got
					return
				}
			}
		}()
	}
	for i := 0; i < 200; i++ {
		rules := setA
		if i%2 == 0 {
			rules = setB
		}
		if _, err := e.Apply(rules); err != nil {
			t.Fatal(err)
		}
		if i == 100 {
			waitFor(t, "matches of both sets", func() bool { return sawA.Load() > 0 && sawB.Load() > 0 })
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for got := range errs {
		t.Fatalf("a Match saw a mixed set: %s", got)
	}
}

func TestEngineTestExplains(t *testing.T) {
	e, _ := newTestEngine(t,
		Rule{ID: "telemetry", Topic: "devices/+/telemetry", When: "payload.temp > -50", Functions: []string{"archive"},
			Routes: []Route{{When: `claims.tier == "gold"`, Functions: []string{"threshold"}}, {Functions: []string{"echo-down"}}}},
		Rule{ID: "apps", Topic: "apps/#", Functions: []string{"apps"}},
		Rule{ID: "cold", Topic: "devices/#", When: "payload.temp < 0", Functions: []string{"cold"}},
		Rule{ID: "broken", Topic: "devices/#", When: "levels[9] == 'x'", Functions: []string{"x"}},
		Rule{ID: "off", Topic: "#", Functions: []string{"off"}, Enabled: new(false)},
		Rule{ID: "sel", Topic: "devices/#", Functions: []string{"archive", "slim"}, Select: map[string]string{"t": "payload.temp"}},
	)
	res := e.Test(TestRequest{Topic: "devices/d1/telemetry", Source: "mqtt", Claims: map[string]any{"tier": "gold"}, Payload: []byte(`{"temp": 20}`)})
	if res.Version != 1 {
		t.Fatalf("version %d", res.Version)
	}
	if want := []string{"archive", "threshold", "slim"}; !slices.Equal(res.Functions, want) {
		t.Fatalf("functions %v, want %v", res.Functions, want)
	}
	reasons := map[string]RuleResult{}
	for _, r := range append(res.Matched, res.NotMatched...) {
		reasons[r.Rule] = r
	}
	f := func(id, want string) {
		t.Helper()
		if !strings.Contains(reasons[id].Reason, want) {
			t.Errorf("rule %s: reason %q, want it to contain %q", id, reasons[id].Reason, want)
		}
	}
	f("telemetry", "when held (payload.temp > -50); route 0 taken (when claims.tier == \"gold\")")
	f("apps", `topic did not match filter "apps/#"`)
	f("cold", "when evaluated false (payload.temp < 0)")
	f("broken", "when error: ")
	f("off", "disabled")
	if r := reasons["telemetry"]; r.Route != 0 || !slices.Equal(r.Functions, []string{"archive", "threshold"}) {
		t.Errorf("telemetry result %+v", r)
	}
	if r := reasons["sel"]; string(r.Data) != `{"t":20}` || !slices.Equal(r.Functions, []string{"archive", "slim"}) {
		t.Errorf("sel result %+v", r)
	}
	if len(res.Matched) != 2 || len(res.NotMatched) != 4 {
		t.Errorf("matched %d, not matched %d", len(res.Matched), len(res.NotMatched))
	}

	res = e.Test(TestRequest{Topic: "devices/d1/telemetry", Claims: map[string]any{"tier": "silver"}, RawPayload: "not json"})
	for _, r := range append(res.Matched, res.NotMatched...) {
		reasons[r.Rule] = r
	}
	f("telemetry", "when evaluated false: payload is not JSON")
	f("sel", "select error: select.t: payload is not JSON")

	res = e.Test(TestRequest{Topic: "devices/d1/telemetry", Claims: map[string]any{"tier": "silver"}, Payload: []byte(`{"temp": 1}`)})
	for _, r := range res.Matched {
		reasons[r.Rule] = r
	}
	f("telemetry", "default route (routes[1])")

	// A dry run counts nothing.
	set, _ := e.Live()
	if st, _ := set.Stats("telemetry"); st != (RuleStats{}) {
		t.Fatalf("Test changed counters: %+v", st)
	}
}

// TestDryRunTakesSubjectFromClaims: `rules test --claims '{"sub":"dev1"}'` sees the subject and
// tenant a real sender with that token would have, unless they are given explicitly.
func TestDryRunTakesSubjectFromClaims(t *testing.T) {
	e, _ := newTestEngine(t, Rule{ID: "own", Topic: "#", When: `subject == "dev1" && tenant == "acme"`, Functions: []string{"f"}})
	res := e.Test(TestRequest{Topic: "devices/dev1/t", Claims: map[string]any{"sub": "dev1", "tenant": "acme"}, RawPayload: "x"})
	if len(res.Matched) != 1 {
		t.Fatalf("subject and tenant not taken from the claims: %+v", res)
	}
	res = e.Test(TestRequest{Topic: "devices/dev1/t", Subject: "other", Claims: map[string]any{"sub": "dev1", "tenant": "acme"}, RawPayload: "x"})
	if len(res.Matched) != 0 {
		t.Fatalf("an explicit subject was overridden by the claims: %+v", res)
	}
}
