// Package topic holds MQTT topic-name and topic-filter rules, shared by the policies of
// ingest/auth, the rule index of rules/ and the HTTP endpoint, so that all of them agree.
package topic

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxLen is the longest topic name or filter accepted, in bytes: MQTT's own limit.
const MaxLen = 65535

// CheckName says why name cannot be published to, or returns nil: it must be non-empty valid
// UTF-8 of at most MaxLen bytes, without a wildcard (+, #) or NUL, and not start with '$'
// (reserved for the broker).
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty topic")
	case len(name) > MaxLen:
		return fmt.Errorf("topic longer than %d bytes", MaxLen)
	case strings.ContainsAny(name, "+#\x00"):
		return fmt.Errorf("topic %q: wildcards (+, #) and NUL are not allowed in a published topic", name)
	case name[0] == '$':
		return fmt.Errorf("topic %q: topics starting with $ are reserved", name)
	case !utf8.ValidString(name):
		return errors.New("topic is not valid UTF-8")
	}
	return nil
}

// CheckFilter says why filter is not a well-formed MQTT topic filter, or returns nil: non-empty
// valid UTF-8 of at most MaxLen bytes, no NUL, '+' only as a whole level, '#' only as the whole
// last level.
func CheckFilter(filter string) error {
	switch {
	case filter == "":
		return errors.New("empty topic filter: use \"#\" to match every topic")
	case len(filter) > MaxLen:
		return fmt.Errorf("topic filter too long: %d bytes, at most %d", len(filter), MaxLen)
	case strings.IndexByte(filter, 0) >= 0:
		return errors.New("topic filter contains a NUL character")
	case !utf8.ValidString(filter):
		return errors.New("topic filter is not valid UTF-8")
	}
	for rest := filter; ; {
		lvl, tail, more := strings.Cut(rest, "/")
		if strings.Contains(lvl, "#") && (lvl != "#" || more) {
			return fmt.Errorf("bad topic filter %q: '#' must be a whole level and the last one (like \"a/#\")", filter)
		}
		if strings.Contains(lvl, "+") && lvl != "+" {
			return fmt.Errorf("bad topic filter %q: '+' must be a whole level (like \"a/+/b\")", filter)
		}
		if !more {
			return nil
		}
		rest = tail
	}
}

// Match reports whether topic matches filter (which must be valid), with MQTT semantics: '+'
// matches exactly one level (possibly empty), a trailing '#' matches the rest including the
// parent level ("a/#" matches "a"), and a filter starting with a wildcard never matches a
// topic starting with '$'. It does not allocate.
func Match(filter, topic string) bool {
	dollar := strings.HasPrefix(topic, "$")
	first := true
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		if fl == "#" {
			return !(first && dollar)
		}
		tl, trest, tmore := strings.Cut(topic, "/")
		if fl == "+" {
			if first && dollar {
				return false
			}
		} else if fl != tl {
			return false
		}
		first = false
		switch {
		case fmore && tmore:
			filter, topic = frest, trest
		case !fmore && !tmore:
			return true
		case fmore && !tmore:
			return frest == "#" // "a/#" matches "a"
		default:
			return false
		}
	}
}

// MatchLevels is Match with the filter already split into its levels (strings.Split(f, "/")),
// for callers that match one filter against many topics.
func MatchLevels(filter []string, topic string) bool {
	if len(filter) == 0 {
		return false
	}
	if topic != "" && topic[0] == '$' && (filter[0] == "+" || filter[0] == "#") {
		return false
	}
	rest, done := topic, false
	for _, f := range filter {
		if f == "#" {
			return true
		}
		if done {
			return false // the topic has fewer levels than the filter
		}
		lvl, tail, more := strings.Cut(rest, "/")
		if f != "+" && f != lvl {
			return false
		}
		rest, done = tail, !more
	}
	return done
}
