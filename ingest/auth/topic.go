package auth

import (
	"strings"

	"github.com/fleetgate/fleetgate/internal/topic"
)

// validTopic reports whether t is a topic a sender may publish to.
func validTopic(t string) bool { return topic.CheckName(t) == nil }

// validFilter reports whether f is a well-formed MQTT topic filter.
func validFilter(f string) bool { return topic.CheckFilter(f) == nil }

// matchTopic reports whether topic matches the filter split into levels (no allocation).
func matchTopic(filter []string, t string) bool { return topic.MatchLevels(filter, t) }

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
