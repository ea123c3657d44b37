package auth

import (
	"strings"
	"unicode/utf8"
)

// validTopic reports whether t is a topic a sender may publish to: non-empty, valid UTF-8,
// no wildcard, no NUL, and not a '$' (broker-reserved) topic.
func validTopic(t string) bool {
	if t == "" || t[0] == '$' || strings.ContainsAny(t, "+#\x00") {
		return false
	}
	return utf8.ValidString(t)
}

// validFilter reports whether f is a well-formed MQTT topic filter: non-empty, valid UTF-8,
// no NUL, '+' only as a whole level, '#' only as the whole last level.
func validFilter(f string) bool {
	if f == "" || strings.IndexByte(f, 0) >= 0 || !utf8.ValidString(f) {
		return false
	}
	for rest := f; ; {
		lvl, tail, more := strings.Cut(rest, "/")
		if len(lvl) > 1 && strings.ContainsAny(lvl, "+#") {
			return false
		}
		if lvl == "#" && more {
			return false
		}
		if !more {
			return true
		}
		rest = tail
	}
}

// matchTopic reports whether topic matches the filter split into levels, with MQTT semantics:
// '+' matches exactly one level (possibly empty), a trailing '#' matches the rest including the
// parent level ("a/#" matches "a"), and filters starting with a wildcard never match '$' topics.
// It does not allocate.
func matchTopic(filter []string, topic string) bool {
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

// splitLevels splits a filter into its levels.
func splitLevels(f string) []string { return strings.Split(f, "/") }

// covers reports whether the allowed filter matches every topic the requested filter can match.
// Both are split into levels and must be valid filters.
func covers(allowed, requested []string) bool {
	if len(allowed) == 0 || len(requested) == 0 {
		return false
	}
	// Filters starting with a wildcard never match '$' topics; a requested filter that starts
	// with a literal '$' level can only be covered by an allowed filter that names it.
	if strings.HasPrefix(requested[0], "$") && (allowed[0] == "+" || allowed[0] == "#") {
		return false
	}
	for i, r := range requested {
		if i >= len(allowed) {
			return false
		}
		a := allowed[i]
		switch {
		case a == "#":
			return true
		case r == "#":
			return false // only '#' covers '#'
		case r == "+":
			if a != "+" {
				return false
			}
		default:
			if a != "+" && a != r {
				return false
			}
		}
	}
	// requested exhausted: it matches topics of exactly len(requested) levels
	switch len(allowed) - len(requested) {
	case 0:
		return true
	case 1:
		return allowed[len(requested)] == "#" // "x/#" covers "x"
	default:
		return false
	}
}
