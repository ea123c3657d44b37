// Package rules decides which functions receive an event: rules match MQTT topic filters
// through a trie, gate on compiled expressions over the event's context, and swap live atomically.
package rules

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/fleetgate/fleetgate/internal/topic"
)

// Route is one branch of a rule's decision: the first route whose When holds is taken;
// a route without When is the default and must be the last one.
type Route struct {
	When      string   `yaml:"when" json:"when,omitempty"`
	Functions []string `yaml:"functions" json:"functions"`
}

// Rule is the operator-facing definition of one rule, as in the config file and the admin API.
type Rule struct {
	ID          string `yaml:"id" json:"id"`
	Description string `yaml:"description" json:"description,omitempty"`
	// Topic is an MQTT topic filter (+, #); HTTP events use the path after /v1/events/.
	Topic string `yaml:"topic" json:"topic"`
	// When is an optional boolean gate (an expr-lang expression over the event's context).
	When string `yaml:"when" json:"when,omitempty"`
	// Functions are always invoked when the rule matches (and When holds).
	Functions []string `yaml:"functions" json:"functions,omitempty"`
	// Routes: the first route whose When holds is taken; a route without When is the default (last).
	Routes []Route `yaml:"routes" json:"routes,omitempty"`
	// Select maps output field -> expression; when set, the rule's functions receive a JSON
	// object of these fields instead of the event's own data.
	Select map[string]string `yaml:"select" json:"select,omitempty"`
	// Enabled: nil means true.
	Enabled *bool `yaml:"enabled" json:"enabled,omitempty"`
	// ErrorFunction names a function that receives the events the rule's functions
	// dead-letter (with why), besides their dead-letter queues; "" for none.
	ErrorFunction string `yaml:"error_function" json:"error_function,omitempty"`
}

// IsEnabled reports whether the rule takes part in matching (Enabled nil or true).
func (r *Rule) IsEnabled() bool { return r.Enabled == nil || *r.Enabled }

// clone returns a deep copy, so a compiled Set never shares memory with its caller.
func (r Rule) clone() Rule {
	c := r
	c.Functions = append([]string(nil), r.Functions...)
	if r.Routes != nil {
		c.Routes = make([]Route, len(r.Routes))
		for i, rt := range r.Routes {
			c.Routes[i] = Route{When: rt.When, Functions: append([]string(nil), rt.Functions...)}
		}
	}
	if r.Select != nil {
		c.Select = make(map[string]string, len(r.Select))
		for k, v := range r.Select {
			c.Select[k] = v
		}
	}
	if r.Enabled != nil {
		b := *r.Enabled
		c.Enabled = &b
	}
	return c
}

// Target is one function chosen for an event.
type Target struct {
	Function string
	Rule     string // id of the rule that chose the function
	Data     []byte // the rule's select output (JSON), or nil: the event's own data
}

// Problem is one reason a rule set was refused.
type Problem struct {
	Rule   string `json:"rule"`   // the rule's id ("" when the problem is not about one rule)
	Index  int    `json:"index"`  // the rule's position in the set (-1 when not about one rule)
	Field  string `json:"field"`  // e.g. "when", "routes[1].when", "select.temp"
	Reason string `json:"reason"` // what is wrong and what to change
}

// Error formats the problem as `rules[2] (id "x").when: reason`.
func (p Problem) Error() string {
	var b strings.Builder
	b.WriteString("rules")
	if p.Index >= 0 {
		fmt.Fprintf(&b, "[%d]", p.Index)
		if p.Rule != "" {
			fmt.Fprintf(&b, " (id %q)", p.Rule)
		}
	}
	if p.Field != "" {
		b.WriteByte('.')
		b.WriteString(p.Field)
	}
	b.WriteString(": ")
	b.WriteString(p.Reason)
	return b.String()
}

// ValidationError lists every problem found in a rule set. It wraps ErrInvalidRules.
type ValidationError struct {
	Problems []Problem
}

// Error lists every problem, one per line.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns ErrInvalidRules.
func (e *ValidationError) Unwrap() error { return ErrInvalidRules }

// Limits applied when CompileOptions leaves them zero.
const (
	DefaultMaxRules   = 10000
	DefaultMaxExprLen = 4096
	// MaxTopicFilterLen bounds a rule's topic filter (MQTT's own limit on topic names).
	MaxTopicFilterLen = topic.MaxLen
	// MaxIDLen bounds a rule id.
	MaxIDLen = 128
)

// CompileOptions bound and check a rule set.
type CompileOptions struct {
	// KnownFunction reports whether a function name is configured; nil accepts every name.
	KnownFunction func(name string) bool
	// MaxRules is the most rules a set may hold (0: DefaultMaxRules).
	MaxRules int
	// MaxExprLen is the most characters an expression may have (0: DefaultMaxExprLen).
	MaxExprLen int
}

func (o CompileOptions) withDefaults() CompileOptions {
	if o.MaxRules <= 0 {
		o.MaxRules = DefaultMaxRules
	}
	if o.MaxExprLen <= 0 {
		o.MaxExprLen = DefaultMaxExprLen
	}
	return o
}

// Validate reports every problem of a rule set at once as a *ValidationError, or nil.
func Validate(rules []Rule, opts CompileOptions) error {
	_, err := Compile(rules, opts)
	return err
}

// validID reports whether id is usable in URLs and metric labels: 1..MaxIDLen of [A-Za-z0-9_.:-].
func validID(id string) bool {
	if id == "" || len(id) > MaxIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '.', c == ':', c == '-':
		default:
			return false
		}
	}
	return true
}

// compiler collects problems while building a Set.
type compiler struct {
	opts     CompileOptions
	problems []Problem
	cache    map[exprKey]*program // identical expressions compile once per set
}

type exprKey struct {
	src     string
	boolean bool
}

func (c *compiler) add(idx int, id, field, format string, args ...any) {
	c.problems = append(c.problems, Problem{Rule: id, Index: idx, Field: field, Reason: fmt.Sprintf(format, args...)})
}

// Compile validates rules and builds an immutable Set. If anything is wrong it returns a
// *ValidationError listing every problem (each with rule id, field and reason) and no Set.
func Compile(rules []Rule, opts CompileOptions) (*Set, error) {
	c := &compiler{opts: opts.withDefaults(), cache: make(map[exprKey]*program)}
	if len(rules) > c.opts.MaxRules {
		c.add(-1, "", "", "too many rules: %d, at most %d are allowed (raise the max rules limit or merge rules)", len(rules), c.opts.MaxRules)
		return nil, &ValidationError{Problems: c.problems}
	}
	s := &Set{
		rules:    make([]Rule, len(rules)),
		compiled: make([]*compiledRule, len(rules)),
		byID:     make(map[string]int, len(rules)),
		root:     &node{},
	}
	for i, r := range rules {
		s.rules[i] = r.clone()
		if r.ID != "" {
			if prev, dup := s.byID[r.ID]; dup {
				c.add(i, r.ID, "id", "duplicate id: rules[%d] already uses it", prev)
			} else {
				s.byID[r.ID] = i
			}
		}
		s.compiled[i] = c.rule(i, &s.rules[i])
	}
	if len(c.problems) > 0 {
		return nil, &ValidationError{Problems: c.problems}
	}
	for i, cr := range s.compiled {
		if cr.enabled {
			s.root.insert(cr.filter, int32(i))
		}
	}
	return s, nil
}

func (c *compiler) rule(i int, r *Rule) *compiledRule {
	cr := &compiledRule{id: r.ID, index: i, enabled: r.IsEnabled(), filter: r.Topic}
	switch {
	case r.ID == "":
		c.add(i, "", "id", "missing: every rule needs an id")
	case !validID(r.ID):
		c.add(i, r.ID, "id", "must be 1 to %d characters of letters, digits, '_', '.', ':' or '-'", MaxIDLen)
	}
	if err := ValidateFilter(r.Topic); err != nil {
		c.add(i, r.ID, "topic", "%v", err)
	}
	if r.When != "" {
		cr.when = c.expr(i, r.ID, "when", r.When, true)
	}
	if len(r.Functions) == 0 && len(r.Routes) == 0 {
		c.add(i, r.ID, "functions", "a rule needs functions, routes, or both")
	}
	cr.functions = c.functions(i, r.ID, "functions", r.Functions)
	if r.ErrorFunction != "" {
		if c.opts.KnownFunction != nil && !c.opts.KnownFunction(r.ErrorFunction) {
			c.add(i, r.ID, "error_function", "unknown function %q: configure it under functions: or fix the name", r.ErrorFunction)
		}
		cr.errorFunction = r.ErrorFunction
	}
	defaultAt := -1
	for j, rt := range r.Routes {
		field := fmt.Sprintf("routes[%d]", j)
		if defaultAt >= 0 {
			c.add(i, r.ID, field, "comes after the default route routes[%d] (the one without when), so it can never be taken: move the default last", defaultAt)
		}
		crt := compiledRoute{}
		if rt.When == "" {
			if defaultAt < 0 {
				defaultAt = j
			}
		} else {
			crt.when = c.expr(i, r.ID, field+".when", rt.When, true)
		}
		if len(rt.Functions) == 0 {
			c.add(i, r.ID, field+".functions", "a route needs at least one function")
		}
		crt.functions = c.functions(i, r.ID, field+".functions", rt.Functions)
		cr.routes = append(cr.routes, crt)
	}
	if len(r.Select) > 0 {
		names := make([]string, 0, len(r.Select))
		for k := range r.Select {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			field := "select." + k
			if k == "" {
				c.add(i, r.ID, "select", "empty field name")
				continue
			}
			if r.Select[k] == "" {
				c.add(i, r.ID, field, "empty expression")
				continue
			}
			cr.selects = append(cr.selects, selectField{name: k, prog: c.expr(i, r.ID, field, r.Select[k], false)})
		}
	}
	return cr
}

func (c *compiler) functions(i int, id, field string, names []string) []string {
	seen := make(map[string]bool, len(names))
	out := make([]string, 0, len(names))
	for j, fn := range names {
		f := fmt.Sprintf("%s[%d]", field, j)
		switch {
		case fn == "":
			c.add(i, id, f, "empty function name")
			continue
		case c.opts.KnownFunction != nil && !c.opts.KnownFunction(fn):
			c.add(i, id, f, "unknown function %q: configure it under functions: or fix the name", fn)
			continue
		case seen[fn]:
			continue
		}
		seen[fn] = true
		out = append(out, fn)
	}
	return out
}

func (c *compiler) expr(i int, id, field, src string, boolean bool) *program {
	if n := utf8.RuneCountInString(src); n > c.opts.MaxExprLen {
		c.add(i, id, field, "expression too long: %d characters, at most %d", n, c.opts.MaxExprLen)
		return nil
	}
	if p, ok := c.cache[exprKey{src, boolean}]; ok {
		return p
	}
	p, err := compileExpr(src, boolean)
	if err != nil {
		c.add(i, id, field, "%v", err)
		return nil
	}
	c.cache[exprKey{src, boolean}] = p
	return p
}

// compiledRule is one rule ready to evaluate.
type compiledRule struct {
	id        string
	index     int
	enabled   bool
	filter    string
	when      *program // nil: always
	functions []string
	routes    []compiledRoute
	selects   []selectField // sorted by name
	stats     *ruleStats    // nil unless the set belongs to an Engine

	errorFunction string
}

type compiledRoute struct {
	when      *program // nil: the default route
	functions []string
}

type selectField struct {
	name string
	prog *program
}

// Set is an immutable, compiled rule set. It is safe for concurrent use.
type Set struct {
	rules    []Rule
	compiled []*compiledRule
	byID     map[string]int
	root     *node
	inst     *instruments // nil unless the set belongs to an Engine
}

// Rules returns a copy of the rules the set was compiled from, in order.
func (s *Set) Rules() []Rule {
	out := make([]Rule, len(s.rules))
	for i, r := range s.rules {
		out[i] = r.clone()
	}
	return out
}

// Rule returns a copy of the rule with the given id.
func (s *Set) Rule(id string) (Rule, bool) {
	i, ok := s.byID[id]
	if !ok {
		return Rule{}, false
	}
	return s.rules[i].clone(), true
}

// ErrorFunction returns the error function of the rule with the given id ("" when the rule
// names none or is not in the set).
func (s *Set) ErrorFunction(id string) string {
	if i, ok := s.byID[id]; ok {
		return s.compiled[i].errorFunction
	}
	return ""
}

// Len is the number of rules in the set.
func (s *Set) Len() int { return len(s.rules) }
