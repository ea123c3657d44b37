package rules

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/event"
)

func TestMatchFilter(t *testing.T) {
	f := func(filter, topic string, want bool) {
		t.Helper()
		if got := MatchFilter(filter, topic); got != want {
			t.Errorf("MatchFilter(%q, %q) = %v, want %v", filter, topic, got, want)
		}
		// The trie must agree with the reference matcher.
		s, err := Compile([]Rule{{ID: "r", Topic: filter, Functions: []string{"f"}}}, CompileOptions{})
		if err != nil {
			t.Fatalf("compile %q: %v", filter, err)
		}
		got := len(s.Match(&event.Event{Topic: topic}, nil)) == 1
		if got != want {
			t.Errorf("trie: filter %q topic %q matched = %v, want %v", filter, topic, got, want)
		}
	}
	f("a/b/c", "a/b/c", true)
	f("a/b/c", "a/b", false)
	f("a/b", "a/b/c", false)
	f("a/+/c", "a/b/c", true)
	f("a/+/c", "a/b/d", false)
	f("a/+", "a/", true) // an empty level is a level
	f("a/+", "a", false)
	f("+/+", "/x", true)
	f("+", "a", true)
	f("+", "a/b", false)
	f("a/#", "a", true) // '#' also matches the parent level
	f("a/#", "a/b/c/d", true)
	f("a/#", "b/c", false)
	f("#", "a/b/c", true)
	f("#", "$SYS/x", false) // wildcards at the first level never match '$' topics
	f("+/x", "$SYS/x", false)
	f("+/#", "$SYS/x", false)
	f("$SYS/#", "$SYS/x", true)
	f("$SYS/+", "$SYS/x", true)
	f("$SYS/#", "$SYS", true)
	f("#", "$events/presence/connected/d1", false) // presence events are routed only by name
	f("+/presence/#", "$events/presence/connected/d1", false)
	f("$events/#", "$events/presence/connected/d1", true)
	f("$events/presence/+/d1", "$events/presence/disconnected/d1", true)
	f("$shadow/+/update/accepted", "$shadow/d1/update/accepted", true)
	f("a/+/#", "a/b", true)
	f("a/+/#", "a", false)
	f("devices/+/telemetry", "devices/d1/telemetry", true)
	f("devices/+/telemetry", "devices/d1/telemetry/extra", false)
	f("a//b", "a//b", true)
	f("a/+/b", "a//b", true)
}

func TestTrieFindsEveryMatchingRuleInOrder(t *testing.T) {
	filters := []string{"#", "a/#", "a/+/c", "a/b/c", "+/b/#", "a/b/c/#", "x/y", "+/+/+", "a/+/+/d", "$SYS/#", "+/b"}
	var rules []Rule
	for i, f := range filters {
		rules = append(rules, Rule{ID: fmt.Sprintf("r%d", i), Topic: f, Functions: []string{fmt.Sprintf("f%d", i)}})
	}
	s, err := Compile(rules, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"a/b/c", "a/b", "a", "x/y", "a/b/c/d", "$SYS/broker", "q/b/z", "", "/"} {
		var want []string
		for i, f := range filters {
			if MatchFilter(f, topic) {
				want = append(want, fmt.Sprintf("r%d", i))
			}
		}
		var got []string
		for _, tg := range s.Match(&event.Event{Topic: topic}, nil) {
			got = append(got, tg.Rule)
		}
		if !slices.Equal(got, want) {
			t.Errorf("topic %q: rules %v, want %v", topic, got, want)
		}
	}
}

func TestValidateFilterLength(t *testing.T) {
	if err := ValidateFilter(strings.Repeat("a", MaxTopicFilterLen+1)); err == nil {
		t.Fatal("an over-long filter was accepted")
	}
	if err := ValidateFilter(strings.Repeat("a/", 100) + "#"); err != nil {
		t.Fatalf("a deep filter was refused: %v", err)
	}
}

// FuzzTopicTrie checks that the trie and the reference matcher agree on any filter and topic.
func FuzzTopicTrie(f *testing.F) {
	f.Add("a/+/c", "a/b/c")
	f.Add("#", "$x")
	f.Add("a/#", "a")
	f.Add("+/+", "/")
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if ValidateFilter(filter) != nil {
			return
		}
		s, err := Compile([]Rule{{ID: "r", Topic: filter, Functions: []string{"f"}}}, CompileOptions{})
		if err != nil {
			t.Fatalf("valid filter %q does not compile: %v", filter, err)
		}
		want := MatchFilter(filter, topic)
		got := len(s.Match(&event.Event{Topic: topic}, nil)) == 1
		if got != want {
			t.Fatalf("filter %q topic %q: trie %v, reference %v", filter, topic, got, want)
		}
	})
}
