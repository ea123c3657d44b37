package rules

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/fleetgate/fleetgate/event"
)

// TestRequest is a dry-run event: what a sender would publish and who it is.
type TestRequest struct {
	Topic   string            `json:"topic"`
	Source  string            `json:"source,omitempty"` // "mqtt" (default) or "http"
	Subject string            `json:"subject,omitempty"`
	Tenant  string            `json:"tenant,omitempty"`
	Claims  map[string]any    `json:"claims,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	Payload json.RawMessage   `json:"payload,omitempty"`
	// RawPayload is used as the event's data when Payload is empty (to try non-JSON payloads).
	RawPayload string `json:"raw_payload,omitempty"`
}

// RuleResult explains what one rule did with a dry-run event.
type RuleResult struct {
	Rule      string          `json:"rule"`
	Reason    string          `json:"reason"`
	Route     int             `json:"route"`               // index of the route taken, -1 if none
	Functions []string        `json:"functions,omitempty"` // the functions this rule chose
	Data      json.RawMessage `json:"data,omitempty"`      // its select output, if any
}

// TestResult is the outcome of a dry run against the live set.
type TestResult struct {
	Version    int          `json:"version"`
	Matched    []RuleResult `json:"matched"`
	NotMatched []RuleResult `json:"not_matched"`
	Functions  []string     `json:"functions"` // every function that would be invoked, in order
}

// Test runs req against the live rule set without touching any counter and explains, rule
// by rule, why it matched (and which route it took) or why not.
func (e *Engine) Test(req TestRequest) TestResult {
	set, version := e.Live()
	res := set.Test(req)
	res.Version = version
	return res
}

// Test is Engine.Test for a set on its own (Version is zero).
func (s *Set) Test(req TestRequest) TestResult {
	ev := &event.Event{
		ID: event.NewID(), Time: time.Now().UTC(), Subject: req.Subject, Tenant: req.Tenant,
		Protocol: req.Source, Topic: req.Topic, Claims: req.Claims, Meta: req.Meta,
		Data: []byte(req.Payload), ContentType: "application/json",
	}
	if ev.Protocol == "" {
		ev.Protocol = event.ProtocolMQTT
	}
	if len(req.Payload) == 0 {
		ev.Data, ev.ContentType = []byte(req.RawPayload), ""
	}
	if ev.Claims == nil {
		ev.Claims = map[string]any{}
	}
	// As for a real sender, whose subject and tenant are its token's sub and tenant claims.
	if sub, ok := ev.Claims["sub"].(string); ok && ev.Subject == "" {
		ev.Subject = sub
	}
	if tenant, ok := ev.Claims["tenant"].(string); ok && ev.Tenant == "" {
		ev.Tenant = tenant
	}
	res := TestResult{Matched: []RuleResult{}, NotMatched: []RuleResult{}, Functions: []string{}}
	st := getState(ev, nil)
	defer putState(st)
	var targets []Target
	for _, cr := range s.compiled {
		rr := RuleResult{Rule: cr.id, Route: -1}
		switch {
		case !cr.enabled:
			rr.Reason = "disabled"
		case !MatchFilter(cr.filter, ev.Topic):
			rr.Reason = fmt.Sprintf("topic did not match filter %q", cr.filter)
		default:
			targets = st.apply(cr, targets, 0, &rr)
		}
		if rr.Functions != nil {
			res.Matched = append(res.Matched, rr)
		} else {
			res.NotMatched = append(res.NotMatched, rr)
		}
	}
	for _, t := range targets {
		res.Functions = append(res.Functions, t.Function)
	}
	return res
}
