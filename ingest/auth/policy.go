package auth

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

type varKind uint8

const (
	varNone varKind = iota
	varSub
	varTenant
	varClaim
)

type patternPart struct {
	lit   string
	kind  varKind
	claim string // for varClaim
}

// pattern is a policy topic filter with ${...} variables, parsed once at New.
type pattern struct {
	raw   string
	parts []patternPart
}

// compilePattern parses a policy filter and checks that it is a valid MQTT filter
// once its variables are replaced.
func compilePattern(s string) (*pattern, error) {
	if s == "" {
		return nil, errors.New("empty topic filter")
	}
	p := &pattern{raw: s}
	var shape strings.Builder
	rest := s
	for rest != "" {
		i := strings.Index(rest, "${")
		if i < 0 {
			p.parts = append(p.parts, patternPart{lit: rest})
			shape.WriteString(rest)
			break
		}
		if i > 0 {
			p.parts = append(p.parts, patternPart{lit: rest[:i]})
			shape.WriteString(rest[:i])
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return nil, fmt.Errorf("unterminated %q in %q", "${", s)
		}
		name := rest[i+2 : i+j]
		switch {
		case name == "sub":
			p.parts = append(p.parts, patternPart{kind: varSub})
		case name == "tenant":
			p.parts = append(p.parts, patternPart{kind: varTenant})
		case strings.HasPrefix(name, "claims.") && len(name) > len("claims."):
			p.parts = append(p.parts, patternPart{kind: varClaim, claim: name[len("claims."):]})
		default:
			return nil, fmt.Errorf("unknown variable %q in %q (use ${sub}, ${tenant} or ${claims.NAME})", "${"+name+"}", s)
		}
		shape.WriteString("x")
		rest = rest[i+j+1:]
	}
	if !validFilter(shape.String()) {
		return nil, fmt.Errorf("%q is not a valid MQTT topic filter ('+' and '#' must be whole levels, '#' only last)", s)
	}
	return p, nil
}

// safeValue reports whether a variable value may be put into a topic filter without widening
// it: non-empty, valid UTF-8, no level separator or wildcard or NUL, no leading '$'.
func safeValue(v string) bool {
	return v != "" && v[0] != '$' && !strings.ContainsAny(v, "/+#\x00") && utf8.ValidString(v)
}

// claimString renders a claim for expansion: strings as they are, integral numbers in decimal.
func claimString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return strconv.FormatInt(int64(x), 10), true
		}
	}
	return "", false
}

// expand replaces the variables; ok is false when a value is missing or unsafe, in which case
// the pattern must grant nothing.
func (p *pattern) expand(sub, tenant string, claims map[string]any) (string, bool) {
	if len(p.parts) == 1 && p.parts[0].kind == varNone {
		return p.raw, true
	}
	var b strings.Builder
	for _, part := range p.parts {
		var v string
		switch part.kind {
		case varNone:
			b.WriteString(part.lit)
			continue
		case varSub:
			v = sub
		case varTenant:
			v = tenant
		case varClaim:
			s, ok := claimString(claims[part.claim])
			if !ok {
				return "", false
			}
			v = s
		}
		if !safeValue(v) {
			return "", false
		}
		b.WriteString(v)
	}
	return b.String(), true
}

// policyTemplate is a configured Policy with its patterns parsed.
type policyTemplate struct {
	publish, subscribe, shadow []*pattern
	admin, anyClientID         bool
}

func compilePolicy(pol Policy) (*policyTemplate, error) {
	pt := &policyTemplate{admin: pol.Admin, anyClientID: pol.AnyClientID}
	for _, f := range pol.Publish {
		p, err := compilePattern(f)
		if err != nil {
			return nil, err
		}
		pt.publish = append(pt.publish, p)
	}
	for _, f := range pol.Subscribe {
		p, err := compilePattern(f)
		if err != nil {
			return nil, err
		}
		pt.subscribe = append(pt.subscribe, p)
	}
	for _, f := range pol.Shadow {
		p, err := compileShadowPattern(f)
		if err != nil {
			return nil, err
		}
		pt.shadow = append(pt.shadow, p)
	}
	return pt, nil
}

// compileShadowPattern parses a policy's shadow entry: one topic level (a device id, a
// template such as ${sub}, or "+" for every device).
func compileShadowPattern(s string) (*pattern, error) {
	if strings.Contains(s, "/") || s == "#" {
		return nil, fmt.Errorf("%q is not one level: a shadow entry names one device (\"${sub}\", an id, or \"+\" for all)", s)
	}
	return compilePattern(s)
}

// compiledPolicy is a policy expanded for one principal, with filters split into levels.
type compiledPolicy struct {
	expanded  Policy
	publish   [][]string
	subscribe [][]string
	shadow    []string // device ids, or "+" for all
}

func (pt *policyTemplate) instantiate(sub, tenant string, claims map[string]any) *compiledPolicy {
	cp := &compiledPolicy{expanded: Policy{Admin: pt.admin, AnyClientID: pt.anyClientID}}
	for _, p := range pt.publish {
		if f, ok := p.expand(sub, tenant, claims); ok {
			cp.expanded.Publish = append(cp.expanded.Publish, f)
			cp.publish = append(cp.publish, splitLevels(f))
		}
	}
	for _, p := range pt.subscribe {
		if f, ok := p.expand(sub, tenant, claims); ok {
			cp.expanded.Subscribe = append(cp.expanded.Subscribe, f)
			cp.subscribe = append(cp.subscribe, splitLevels(f))
		}
	}
	for _, p := range pt.shadow {
		if f, ok := p.expand(sub, tenant, claims); ok {
			cp.expanded.Shadow = append(cp.expanded.Shadow, f)
			cp.shadow = append(cp.shadow, f)
		}
	}
	return cp
}

// ValidDeviceID reports whether id can name a shadow: one topic level, not empty, no
// wildcard, no NUL, not starting with '$', valid UTF-8, at most 256 bytes.
func ValidDeviceID(id string) bool { return len(id) <= 256 && safeValue(id) }

// CanUseShadow reports whether the principal may read and update the shadow of device: an
// admin (operator) may use every shadow; any other principal the devices its policy's shadow
// entries name ("+" names every device). A nil principal or an invalid device id may do nothing.
func (p *Principal) CanUseShadow(device string) bool {
	if p == nil || p.policy == nil || !ValidDeviceID(device) {
		return false
	}
	if p.IsAdmin() {
		return true
	}
	for _, d := range p.policy.shadow {
		if d == "+" || d == device {
			return true
		}
	}
	return false
}

// CanPublish reports whether the principal may publish (or post) to topic. The topic must be
// a plain topic name: one with '+', '#', NUL or a leading '$' is always refused.
// A nil principal may do nothing.
func (p *Principal) CanPublish(topic string) bool {
	if p == nil || p.policy == nil || !validTopic(topic) {
		return false
	}
	for _, f := range p.policy.publish {
		if matchTopic(f, topic) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether the principal may subscribe to filter (which may hold '+' and
// '#'): only when one allowed filter matches every topic the requested filter could match.
// An MQTT 5 shared subscription "$share/GROUP/FILTER" is judged by its FILTER.
func (p *Principal) CanSubscribe(filter string) bool {
	if p == nil || p.policy == nil {
		return false
	}
	if rest, ok := strings.CutPrefix(filter, "$share/"); ok {
		group, f, found := strings.Cut(rest, "/")
		if !found || group == "" || strings.ContainsAny(group, "+#") {
			return false
		}
		filter = f
	}
	if !validFilter(filter) {
		return false
	}
	req := splitLevels(filter)
	for _, a := range p.policy.subscribe {
		if covers(a, req) {
			return true
		}
	}
	return false
}

// IsAdmin reports whether the principal's policy grants the admin API.
func (p *Principal) IsAdmin() bool {
	return p != nil && p.policy != nil && p.policy.expanded.Admin
}

// ClientIDAllowed reports whether an MQTT client may connect with clientID: it must equal the
// token's subject unless the policy sets any_client_id.
func (p *Principal) ClientIDAllowed(clientID string) bool {
	if p == nil || p.policy == nil {
		return false
	}
	if p.policy.expanded.AnyClientID {
		return true
	}
	return clientID != "" && clientID == p.Subject
}

// Policy returns the principal's policy with its variables expanded; patterns that could not be
// expanded safely are left out. The slices are copies.
func (p *Principal) Policy() Policy {
	if p == nil || p.policy == nil {
		return Policy{}
	}
	e := p.policy.expanded
	e.Publish = slices.Clone(e.Publish)
	e.Subscribe = slices.Clone(e.Subscribe)
	e.Shadow = slices.Clone(e.Shadow)
	return e
}
