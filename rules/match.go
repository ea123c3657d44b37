package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/expr-lang/expr/vm"
	"github.com/fleetgate/fleetgate/event"
)

// errNoPayload: an expression reads payload but the event's data is not JSON. A gate that
// needs the payload is then simply false; it is not an evaluation error.
var errNoPayload = errors.New("payload is not JSON")

// Boxed once so setting source in the environment does not allocate.
var (
	boxedMQTT any = event.ProtocolMQTT
	boxedHTTP any = event.ProtocolHTTP
)

const (
	payloadUnparsed = iota
	payloadOK
	payloadInvalid
)

// matchState is the per-call scratch of Match: pooled, so matching allocates nothing itself.
type matchState struct {
	ev      *event.Event
	inst    *instruments
	cands   []int32
	levels  []string
	env     evalEnv
	filled  varMask
	payload uint8
	machine vm.VM
}

var statePool = sync.Pool{New: func() any {
	st := &matchState{cands: make([]int32, 0, 16), levels: make([]string, 0, 8)}
	st.machine.MemoryBudget = vmMemoryBudget
	return st
}}

func getState(ev *event.Event, inst *instruments) *matchState {
	st := statePool.Get().(*matchState)
	st.ev, st.inst = ev, inst
	return st
}

func putState(st *matchState) {
	st.ev, st.inst = nil, nil
	st.env = evalEnv{}
	st.filled, st.payload = 0, payloadUnparsed
	clear(st.levels)
	st.levels = st.levels[:0]
	st.cands = st.cands[:0]
	statePool.Put(st)
}

// prepare sets the environment variables in need that are not set yet. It parses the
// payload at most once per event, and returns errNoPayload if it is needed but not JSON.
func (st *matchState) prepare(need varMask) error {
	missing := need &^ st.filled
	if missing == 0 {
		if need&varPayload != 0 && st.payload == payloadInvalid {
			return errNoPayload
		}
		return nil
	}
	ev := st.ev
	if missing&varTopic != 0 {
		st.env.Topic = ev.Topic
	}
	if missing&varLevels != 0 {
		rest := ev.Topic
		for {
			l, r, more := strings.Cut(rest, "/")
			st.levels = append(st.levels, l)
			if !more {
				break
			}
			rest = r
		}
		st.env.Levels = st.levels
	}
	if missing&varSubject != 0 {
		st.env.Subject = ev.Subject
	}
	if missing&varTenant != 0 {
		st.env.Tenant = ev.Tenant
	}
	if missing&varClaims != 0 {
		st.env.Claims = ev.ClaimsMap() // a typed (possibly nil) map: claims.x is then nil, not an error
	}
	if missing&varSource != 0 {
		switch ev.Protocol {
		case event.ProtocolMQTT:
			st.env.Source = boxedMQTT
		case event.ProtocolHTTP:
			st.env.Source = boxedHTTP
		default:
			st.env.Source = ev.Protocol
		}
	}
	if missing&varMeta != 0 {
		// As map[string]any, so that a missing key is nil (and `??` applies), not "".
		m := make(map[string]any, len(ev.Meta))
		for k, v := range ev.Meta {
			m[k] = v
		}
		st.env.Meta = m
	}
	if missing&varNow != 0 {
		st.env.Now = time.Now()
	}
	if missing&varPayload != 0 {
		if v, err := parsePayload(ev.Data); err == nil {
			st.env.Payload, st.payload = v, payloadOK
		} else {
			st.payload = payloadInvalid
		}
		st.inst.parsed(st.payload == payloadOK)
	}
	st.filled |= missing
	if need&varPayload != 0 && st.payload == payloadInvalid {
		return errNoPayload
	}
	return nil
}

// eval runs a boolean program. A non-boolean result is an error (the compiler prevents it).
func (st *matchState) eval(p *program) (bool, error) {
	if err := st.prepare(p.vars); err != nil {
		return false, err
	}
	out, err := st.machine.Run(p.prog, &st.env)
	if err != nil {
		return false, oneLine(err)
	}
	b, ok := out.(bool)
	if !ok {
		return false, fmt.Errorf("result is %T, not a boolean", out)
	}
	return b, nil
}

// selectData evaluates a rule's select fields into a JSON object.
func (st *matchState) selectData(cr *compiledRule) ([]byte, error) {
	obj := make(map[string]any, len(cr.selects))
	for _, f := range cr.selects {
		if err := st.prepare(f.prog.vars); err != nil {
			return nil, fmt.Errorf("select.%s: %w", f.name, err)
		}
		v, err := st.machine.Run(f.prog.prog, &st.env)
		if err != nil {
			return nil, fmt.Errorf("select.%s: %w", f.name, oneLine(err))
		}
		obj[f.name] = v
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("select: encoding the output: %w", err)
	}
	return b, nil
}

func oneLine(err error) error {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return errors.New(strings.TrimSpace(s[:i]))
	}
	return err
}

// addTargets appends one target per function not already chosen since start.
func addTargets(dst []Target, start int, fns []string, rule string, data []byte) []Target {
next:
	for _, fn := range fns {
		for i := start; i < len(dst); i++ {
			if dst[i].Function == fn {
				continue next
			}
		}
		dst = append(dst, Target{Function: fn, Rule: rule, Data: data})
	}
	return dst
}

// Match appends to dst one Target per function the set's rules choose for e, in rule order;
// a function chosen by two rules appears once (the first rule wins). The payload is parsed at
// most once, and only if a rule whose topic filter matched needs it. Evaluation errors count
// as no match (and in the rule's error counter).
func (s *Set) Match(e *event.Event, dst []Target) []Target {
	st := getState(e, s.inst)
	st.cands = s.candidates(e.Topic, st.cands)
	start := len(dst)
	for _, ci := range st.cands {
		dst = st.apply(s.compiled[ci], dst, start, nil)
	}
	putState(st)
	return dst
}

// apply evaluates one rule whose topic filter matched and appends its targets. With ex set
// (a dry run) it explains the outcome there and counts nothing.
func (st *matchState) apply(cr *compiledRule, dst []Target, start int, ex *RuleResult) []Target {
	stats := cr.stats
	if ex != nil {
		stats = nil
	}
	stats.incMatched()
	var why []string
	if cr.when != nil {
		ok, err := st.eval(cr.when)
		switch {
		case err == errNoPayload:
			if ex != nil {
				ex.Reason = fmt.Sprintf("when evaluated false: payload is not JSON (%s)", cr.when.src)
			}
			return dst
		case err != nil:
			stats.incErrors()
			if ex != nil {
				ex.Reason = fmt.Sprintf("when error: %v (%s)", err, cr.when.src)
			}
			return dst
		case !ok:
			if ex != nil {
				ex.Reason = fmt.Sprintf("when evaluated false (%s)", cr.when.src)
			}
			return dst
		}
		if ex != nil {
			why = append(why, fmt.Sprintf("when held (%s)", cr.when.src))
		}
	} else if ex != nil {
		why = append(why, "topic matched, no when")
	}
	var data []byte
	if len(cr.selects) > 0 {
		var err error
		if data, err = st.selectData(cr); err != nil {
			stats.incErrors()
			if ex != nil {
				ex.Reason = "select error: " + err.Error()
			}
			return dst
		}
	}
	stats.incPassed()
	dst = addTargets(dst, start, cr.functions, cr.id, data)
	if len(cr.routes) > 0 {
		taken := false
		for j, rt := range cr.routes {
			if rt.when != nil {
				ok, err := st.eval(rt.when)
				if err != nil && err != errNoPayload {
					stats.incErrors()
					if ex != nil {
						why = append(why, fmt.Sprintf("routes[%d].when error: %v", j, err))
					}
				}
				if err != nil || !ok {
					continue
				}
				if ex != nil {
					why = append(why, fmt.Sprintf("route %d taken (when %s)", j, rt.when.src))
				}
			} else if ex != nil {
				why = append(why, fmt.Sprintf("default route (routes[%d])", j))
			}
			dst = addTargets(dst, start, rt.functions, cr.id, data)
			if ex != nil {
				ex.Route = j
			}
			taken = true
			break
		}
		if !taken && ex != nil {
			why = append(why, "no route taken")
		}
	}
	if ex != nil {
		ex.Reason = strings.Join(why, "; ")
		ex.Functions = append(ex.Functions, cr.functions...)
		if ex.Route >= 0 {
			for _, fn := range cr.routes[ex.Route].functions {
				if !contains(ex.Functions, fn) {
					ex.Functions = append(ex.Functions, fn)
				}
			}
		}
		ex.Data = data
	}
	return dst
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
