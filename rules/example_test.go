package rules_test

import (
	"fmt"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/rules"
)

func ExampleCompile() {
	set, err := rules.Compile([]rules.Rule{{
		ID:        "telemetry",
		Topic:     "devices/+/telemetry",
		When:      "payload.temp > -50",
		Functions: []string{"archive"},
		Routes: []rules.Route{
			{When: `claims.tier == "gold"`, Functions: []string{"threshold"}},
			{Functions: []string{"echo-down"}},
		},
	}}, rules.CompileOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	ev := &event.Event{Topic: "devices/d1/telemetry", Protocol: event.ProtocolMQTT,
		Data: []byte(`{"temp": 21}`), Claims: map[string]any{"tier": "gold"}}
	for _, t := range set.Match(ev, nil) {
		fmt.Println(t.Rule, "->", t.Function)
	}
	// Output:
	// telemetry -> archive
	// telemetry -> threshold
}

func ExampleValidationError() {
	_, err := rules.Compile([]rules.Rule{
		{ID: "a", Topic: "a/#/b", Functions: []string{"log"}},
		{ID: "b", Topic: "b", When: "subject", Functions: []string{"nope"}},
	}, rules.CompileOptions{KnownFunction: func(n string) bool { return n == "log" }})
	fmt.Println(err)
	// Output:
	// rules[0] (id "a").topic: bad topic filter "a/#/b": '#' must be a whole level and the last one (like "a/#")
	// rules[1] (id "b").when: must be a boolean condition: expected bool, but got string
	// rules[1] (id "b").functions[0]: unknown function "nope": configure it under functions: or fix the name
}
