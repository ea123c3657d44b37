package topic

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	f := func(filter, topic string, want bool) {
		t.Helper()
		if got := Match(filter, topic); got != want {
			t.Errorf("Match(%q, %q) = %v, want %v", filter, topic, got, want)
		}
		if got := MatchLevels(strings.Split(filter, "/"), topic); got != want {
			t.Errorf("MatchLevels(%q, %q) = %v, want %v", filter, topic, got, want)
		}
	}
	f("#", "a/b", true)
	f("#", "$SYS/x", false)
	f("a/#", "a", true)
	f("a/#", "a/b/c", true)
	f("a/+", "a/b", true)
	f("a/+", "a/b/c", false)
	f("a/+", "a", false)
	f("a/+/c", "a//c", true)
	f("+/b", "$x/b", false)
	f("$SYS/#", "$SYS/x", true)
	f("a/b", "a/b", true)
	f("a/b", "a/bc", false)
	f("a/b/c", "a/b", false)
}

func TestCheck(t *testing.T) {
	for _, ok := range []string{"#", "a/#", "+/b/+", "a//b", "é/+"} {
		if err := CheckFilter(ok); err != nil {
			t.Errorf("CheckFilter(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/#/b", "a#", "a/b+", "a\x00", "\xff", strings.Repeat("a", MaxLen+1)} {
		if CheckFilter(bad) == nil {
			t.Errorf("CheckFilter(%q) accepted", bad)
		}
	}
	for _, ok := range []string{"a", "a/b", "a//b", "devices/d1/telemetry"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/+", "a/#", "$SYS/x", "a\x00", "\xff", strings.Repeat("a", MaxLen+1)} {
		if CheckName(bad) == nil {
			t.Errorf("CheckName(%q) accepted", bad)
		}
	}
}

// FuzzMatch checks that the two matchers agree on every valid filter and topic.
func FuzzMatch(f *testing.F) {
	f.Add("a/+/#", "a/b/c")
	f.Add("#", "$x")
	f.Add("+/+", "a/")
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if CheckFilter(filter) != nil {
			return
		}
		if a, b := Match(filter, topic), MatchLevels(strings.Split(filter, "/"), topic); a != b {
			t.Fatalf("Match(%q, %q) = %v but MatchLevels = %v", filter, topic, a, b)
		}
	})
}
