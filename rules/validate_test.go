package rules

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func known(names ...string) func(string) bool {
	return func(n string) bool {
		for _, k := range names {
			if k == n {
				return true
			}
		}
		return false
	}
}

func TestCompileListsEveryProblem(t *testing.T) {
	rules := []Rule{
		{ID: "ok", Topic: "devices/+/telemetry", Functions: []string{"archive"}},
		{ID: "", Topic: "a/b", Functions: []string{"archive"}},                              // empty id
		{ID: "ok", Topic: "a/b", Functions: []string{"archive"}},                            // duplicate id
		{ID: "badtopic", Topic: "a/#/b", Functions: []string{"archive"}},                    // bad filter
		{ID: "badexpr", Topic: "a", When: "payload.temp >", Functions: []string{"archive"}}, // does not compile
		{ID: "notbool", Topic: "a", When: "topic", Functions: []string{"archive"}},          // not boolean
		{ID: "unknownfn", Topic: "a", Functions: []string{"nope"}},                          // unknown function
		{ID: "routes", Topic: "a", Routes: []Route{
			{Functions: []string{"archive"}},
			{When: "true", Functions: []string{"archive"}}, // after the default
		}},
		{ID: "nothing", Topic: "a"}, // neither functions nor routes
		{ID: "long", Topic: "a", When: "topic == '" + strings.Repeat("x", 100) + "'", Functions: []string{"archive"}},
		{ID: "sel", Topic: "a", Functions: []string{"archive"}, Select: map[string]string{"t": "payload.", "ok": "payload.temp"}},
	}
	_, err := Compile(rules, CompileOptions{KnownFunction: known("archive"), MaxExprLen: 50})
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %v", err)
	}
	if !errors.Is(err, ErrInvalidRules) {
		t.Fatalf("error does not wrap ErrInvalidRules")
	}
	want := []struct {
		index               int
		rule, field, reason string
	}{
		{1, "", "id", "missing"},
		{2, "ok", "id", "duplicate id: rules[0]"},
		{3, "badtopic", "topic", "'#' must be a whole level and the last one"},
		{4, "badexpr", "when", "unexpected token"},
		{5, "notbool", "when", "must be a boolean condition"},
		{6, "unknownfn", "functions[0]", `unknown function "nope"`},
		{7, "routes", "routes[1]", "comes after the default route routes[0]"},
		{8, "nothing", "functions", "needs functions, routes, or both"},
		{9, "long", "when", "expression too long: 111 characters, at most 50"},
		{10, "sel", "select.t", ""},
	}
	if len(ve.Problems) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(ve.Problems), len(want), err)
	}
	for i, w := range want {
		p := ve.Problems[i]
		if p.Index != w.index || p.Rule != w.rule || p.Field != w.field || !strings.Contains(p.Reason, w.reason) {
			t.Errorf("problem %d = %+v, want index %d rule %q field %q reason containing %q", i, p, w.index, w.rule, w.field, w.reason)
		}
	}
	lines := strings.Split(err.Error(), "\n")
	if len(lines) != len(want) {
		t.Fatalf("Error() has %d lines, want one per problem:\n%s", len(lines), err)
	}
	if got, wantLine := lines[4], `rules[5] (id "notbool").when: must be a boolean condition`; !strings.HasPrefix(got, wantLine) {
		t.Errorf("line 5 = %q, want prefix %q", got, wantLine)
	}
}

func TestCompileProblemsOneByOne(t *testing.T) {
	f := func(name string, r Rule, field, reason string) {
		t.Helper()
		t.Run(name, func(t *testing.T) {
			_, err := Compile([]Rule{r}, CompileOptions{KnownFunction: known("f", "g")})
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a validation error, got %v", err)
			}
			for _, p := range ve.Problems {
				if p.Field == field && strings.Contains(p.Reason, reason) {
					return
				}
			}
			t.Fatalf("no problem with field %q and reason %q in:\n%v", field, reason, err)
		})
	}
	fn := []string{"f"}
	f("empty topic", Rule{ID: "x", Functions: fn}, "topic", "empty topic filter")
	f("plus inside level", Rule{ID: "x", Topic: "a/b+/c", Functions: fn}, "topic", "'+' must be a whole level")
	f("hash not last", Rule{ID: "x", Topic: "#/a", Functions: fn}, "topic", "'#' must be a whole level")
	f("hash inside level", Rule{ID: "x", Topic: "a/b#", Functions: fn}, "topic", "'#' must be a whole level")
	f("NUL in topic", Rule{ID: "x", Topic: "a/\x00", Functions: fn}, "topic", "NUL")
	f("id charset", Rule{ID: "a b", Topic: "a", Functions: fn}, "id", "letters, digits")
	f("id too long", Rule{ID: strings.Repeat("a", MaxIDLen+1), Topic: "a", Functions: fn}, "id", "1 to 128")
	f("unknown variable", Rule{ID: "x", Topic: "a", When: "temperature > 3", Functions: fn}, "when", "unknown name temperature")
	f("number result", Rule{ID: "x", Topic: "a", When: "1 + 2", Functions: fn}, "when", "must be a boolean")
	f("route when not bool", Rule{ID: "x", Topic: "a", Routes: []Route{{When: "'x'", Functions: fn}}}, "routes[0].when", "must be a boolean")
	f("route unknown function", Rule{ID: "x", Topic: "a", Routes: []Route{{Functions: []string{"zzz"}}}}, "routes[0].functions[0]", `unknown function "zzz"`)
	f("route without functions", Rule{ID: "x", Topic: "a", Routes: []Route{{When: "true"}}}, "routes[0].functions", "at least one function")
	f("empty function name", Rule{ID: "x", Topic: "a", Functions: []string{""}}, "functions[0]", "empty function name")
	f("select empty expression", Rule{ID: "x", Topic: "a", Functions: fn, Select: map[string]string{"a": ""}}, "select.a", "empty expression")
	f("disabled builtin repeat", Rule{ID: "x", Topic: "a", When: `repeat("x", 1000000000) == ""`, Functions: fn}, "when", "repeat")
	f("disabled builtin toJSON", Rule{ID: "x", Topic: "a", When: `toJSON(payload) == ""`, Functions: fn}, "when", "toJSON")
	f("disabled builtin reduce", Rule{ID: "x", Topic: "a", When: `reduce(levels, #acc + #, "") == ""`, Functions: fn}, "when", "reduce")
	f("huge range", Rule{ID: "x", Topic: "a", When: `len(1..1000000000) > 0`, Functions: fn}, "when", "too large")
	f("variable range", Rule{ID: "x", Topic: "a", When: `len(1..len(topic)) > 0`, Functions: fn}, "when", "integer constants")
	f("regex not constant", Rule{ID: "x", Topic: "a", When: `topic matches subject`, Functions: fn}, "when", "constant string")
	f("bad regex", Rule{ID: "x", Topic: "a", When: `topic matches "("`, Functions: fn}, "when", "missing closing")
	f("disabled rule still validated", Rule{ID: "x", Topic: "a/#/b", Functions: fn, Enabled: new(false)}, "topic", "'#'")
	f("unknown error function", Rule{ID: "x", Topic: "a", Functions: fn, ErrorFunction: "zzz"}, "error_function", `unknown function "zzz"`)
}

func TestErrorFunctionOfRule(t *testing.T) {
	s, err := Compile([]Rule{
		{ID: "with", Topic: "a", Functions: []string{"f"}, ErrorFunction: "g"},
		{ID: "without", Topic: "b", Functions: []string{"f"}},
	}, CompileOptions{KnownFunction: known("f", "g")})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.ErrorFunction("with"); got != "g" {
		t.Errorf("ErrorFunction(with) = %q, want g", got)
	}
	if got := s.ErrorFunction("without") + s.ErrorFunction("gone"); got != "" {
		t.Errorf("ErrorFunction of a rule without one = %q", got)
	}
	if r, _ := s.Rule("with"); r.ErrorFunction != "g" {
		t.Errorf("Rule(with).ErrorFunction = %q", r.ErrorFunction)
	}
}

func TestCompileTooManyRules(t *testing.T) {
	rules := make([]Rule, 4)
	for i := range rules {
		rules[i] = Rule{ID: fmt.Sprintf("r%d", i), Topic: "a", Functions: []string{"f"}}
	}
	_, err := Compile(rules, CompileOptions{MaxRules: 3})
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Index != -1 || !strings.Contains(ve.Problems[0].Reason, "too many rules: 4, at most 3") {
		t.Fatalf("got %v", err)
	}
	if got := ve.Problems[0].Error(); !strings.HasPrefix(got, "rules: too many rules") {
		t.Fatalf("Error() = %q", got)
	}
	if _, err := Compile(rules[:3], CompileOptions{MaxRules: 3}); err != nil {
		t.Fatalf("3 rules at a limit of 3: %v", err)
	}
}

func TestCompileAcceptsHelpers(t *testing.T) {
	good := []string{
		`has(payload.temp) && isNumber(payload.temp) && num(payload.temp) > 1`,
		`num("12.5") == 12.5 && str(payload.n) == "3" && isString(subject) && !isBool(topic)`,
		`topic matches "^devices/[^/]+/telemetry$"`,
		`topic startsWith "devices/" && topic endsWith "/telemetry" && topic contains "/d1/"`,
		`len(levels) == 3 && levels[0] == "devices"`,
		`claims.tier in ["gold", "silver"] && meta["app-version"] >= "2.0"`,
		`source == "mqtt" || tenant == "acme"`,
		`now.Year() > 2000`,
		`(payload?.a?.b ?? 0) > 3`,
		`payload.temp in 1..100`,
		`any(payload.items, # > 3)`,
		`lower(subject) == "dev-1" and upper(tenant) != "X"`,
	}
	for _, src := range good {
		if _, err := Compile([]Rule{{ID: "x", Topic: "#", When: src, Functions: []string{"f"}}}, CompileOptions{}); err != nil {
			t.Errorf("%s: %v", src, err)
		}
	}
}
