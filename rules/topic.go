package rules

import (
	"errors"
	"fmt"
	"strings"
)

// ValidateFilter checks an MQTT topic filter: non-empty, at most MaxTopicFilterLen bytes,
// no NUL, '+' only as a whole level, '#' only as the whole last level.
func ValidateFilter(filter string) error {
	if filter == "" {
		return errors.New("empty topic filter: use \"#\" to match every topic")
	}
	if len(filter) > MaxTopicFilterLen {
		return fmt.Errorf("topic filter too long: %d bytes, at most %d", len(filter), MaxTopicFilterLen)
	}
	if strings.IndexByte(filter, 0) >= 0 {
		return errors.New("topic filter contains a NUL character")
	}
	levels := strings.Split(filter, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return fmt.Errorf("bad topic filter %q: '#' must be a whole level and the last one (like \"a/#\")", filter)
		}
		if strings.Contains(l, "+") && l != "+" {
			return fmt.Errorf("bad topic filter %q: '+' must be a whole level (like \"a/+/b\")", filter)
		}
	}
	return nil
}

// MatchFilter reports whether topic matches the MQTT topic filter (which must be valid).
// '+' and '#' in the first level do not match topics starting with '$'.
func MatchFilter(filter, topic string) bool {
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
			// "a/#" matches "a".
			return frest == "#"
		default:
			return false
		}
	}
}

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
