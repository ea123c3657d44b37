package rules

import (
	"strings"

	"github.com/fleetgate/fleetgate/internal/topic"
)

// ValidateFilter checks an MQTT topic filter: non-empty valid UTF-8, at most
// MaxTopicFilterLen bytes, no NUL, '+' only as a whole level, '#' only as the whole last level.
func ValidateFilter(filter string) error { return topic.CheckFilter(filter) }

// MatchFilter reports whether t matches the MQTT topic filter (which must be valid).
// '+' and '#' in the first level do not match topics starting with '$'.
func MatchFilter(filter, t string) bool { return topic.Match(filter, t) }

// node is one level of the topic-filter trie. Matching walks one path per topic level
// (plus the '+' branches), so its cost grows with topic depth, not with the number of rules.
type node struct {
	children map[string]*node
	plus     *node
	hash     []int32 // rules whose filter ends with "/#" below this node (or is "#" at the root)
	rules    []int32 // rules whose filter ends exactly at this node
}

func (n *node) insert(filter string, rule int32) {
	for {
		level, rest, more := strings.Cut(filter, "/")
		if level == "#" {
			n.hash = append(n.hash, rule)
			return
		}
		var next *node
		if level == "+" {
			if n.plus == nil {
				n.plus = &node{}
			}
			next = n.plus
		} else {
			if n.children == nil {
				n.children = make(map[string]*node)
			}
			next = n.children[level]
			if next == nil {
				next = &node{}
				n.children[level] = next
			}
		}
		n = next
		if !more {
			n.rules = append(n.rules, rule)
			return
		}
		filter = rest
	}
}

// match appends the rules whose filters match topic[pos:] below n. pos > len(topic) means
// every level is consumed. noWild is set at the first level of a '$' topic.
func (n *node) match(topic string, pos int, noWild bool, out []int32) []int32 {
	if pos > len(topic) {
		out = append(out, n.rules...)
		return append(out, n.hash...)
	}
	end := strings.IndexByte(topic[pos:], '/')
	if end < 0 {
		end = len(topic)
	} else {
		end += pos
	}
	if !noWild {
		out = append(out, n.hash...)
	}
	if c := n.children[topic[pos:end]]; c != nil {
		out = c.match(topic, end+1, false, out)
	}
	if n.plus != nil && !noWild {
		out = n.plus.match(topic, end+1, false, out)
	}
	return out
}

// candidates appends the indexes of the enabled rules whose filters match topic, in rule order.
func (s *Set) candidates(topic string, out []int32) []int32 {
	start := len(out)
	out = s.root.match(topic, 0, strings.HasPrefix(topic, "$"), out)
	// Insertion sort: candidates are few and often already in order.
	c := out[start:]
	for i := 1; i < len(c); i++ {
		for j := i; j > 0 && c[j] < c[j-1]; j-- {
			c[j], c[j-1] = c[j-1], c[j]
		}
	}
	return out
}
