package functions

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/fleetgate/fleetgate/storage"
)

// States of an event for one function, as EventFate reports them.
const (
	StateQueued       = storage.FateQueued       // stored for the function, not in flight (new, or waiting for a retry)
	StateInFlight     = "in_flight"              // in a batch being invoked now
	StateDelivered    = storage.FateDelivered    // acknowledged by the function
	StateDeadLettered = storage.FateDeadLettered // in the function's dead letters
	StatePurged       = storage.FatePurged       // was dead-lettered; the dead letter was purged since
)

// EventFate is what became of one event: GET /admin/v1/events/{id}.
type EventFate struct {
	ID          string         `json:"id"`
	Seq         uint64         `json:"seq"`
	Topic       string         `json:"topic,omitempty"`
	Subject     string         `json:"subject,omitempty"`
	Tenant      string         `json:"tenant,omitempty"`
	Protocol    string         `json:"protocol,omitempty"`
	Time        *time.Time     `json:"time,omitempty"`
	PayloadSize int            `json:"payload_size"`
	ContentType string         `json:"content_type,omitempty"`
	RuleVersion int            `json:"rule_version,omitempty"` // the rule set version that routed it (absent: not known)
	Rules       []string       `json:"rules"`                  // the rules that chose its functions
	Functions   []FunctionFate `json:"functions"`              // one per chosen function, by name
}

// FunctionFate is an event's state for one function.
type FunctionFate struct {
	Function    string     `json:"function"`
	Rule        string     `json:"rule,omitempty"`
	State       string     `json:"state"` // queued | in_flight | delivered | dead_lettered | purged
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	// The last dead-lettering, if any (also kept after a replay).
	Attempts       int        `json:"attempts,omitempty"`
	LastError      string     `json:"last_error,omitempty"`
	DeadLetteredAt *time.Time `json:"dead_lettered_at,omitempty"`
}

// Fate returns what became of the event with this id (storage.ErrNotFound when it is unknown
// or its fate expired: storage.fate_ttl).
func (d *Dispatcher) Fate(id string) (EventFate, error) {
	sf, err := d.store.Fate(id)
	if err != nil {
		return EventFate{}, err
	}
	out := EventFate{
		ID: sf.ID, Seq: sf.Seq, RuleVersion: sf.RuleVersion,
		Topic: sf.Event.Topic, Subject: sf.Event.Subject, Tenant: sf.Event.Tenant, Protocol: sf.Event.Protocol,
		PayloadSize: sf.Event.PayloadSize, ContentType: sf.Event.ContentType,
		Rules: []string{}, Functions: make([]FunctionFate, 0, len(sf.Functions)),
	}
	out.Time = timePtr(sf.Event.Time)
	for _, ff := range sf.Functions {
		v := FunctionFate{
			Function: ff.Function, Rule: ff.Rule, State: ff.State,
			DeliveredAt: timePtr(ff.DeliveredAt), Attempts: ff.Attempts, LastError: ff.LastError,
			DeadLetteredAt: timePtr(ff.DeadLetteredAt),
		}
		if v.State == StateQueued {
			if f := d.fns[ff.Function]; f != nil && f.flying.has(sf.Seq) {
				v.State = StateInFlight
			}
		}
		if v.Rule != "" && !slices.Contains(out.Rules, v.Rule) {
			out.Rules = append(out.Rules, v.Rule)
		}
		out.Functions = append(out.Functions, v)
	}
	sort.Strings(out.Rules)
	return out, nil
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// PurgeDeadLetters deletes dead letters of function for good: those dead-lettered before
// before (any time when zero) and, when seqs is not nil, only those. It returns how many.
func (d *Dispatcher) PurgeDeadLetters(function string, before time.Time, seqs []uint64) (int, error) {
	if !d.Known(function) {
		return 0, fmt.Errorf("purging dead letters of %q: %w", function, ErrUnknownFunction)
	}
	n, err := d.store.PurgeDeadLetters(function, before, seqs)
	if err != nil {
		return n, err
	}
	if n > 0 {
		d.logger.Warn("dead letters purged", "function", function, "purged", n)
	}
	return n, nil
}

// flyingSet is the set of a function's batches in flight, readable outside its loop (for an
// event's fate): the loop adds a batch when it starts it and removes it when it finishes.
type flyingSet struct {
	mu    sync.Mutex
	units map[*unit]struct{}
}

func (s *flyingSet) add(u *unit) {
	s.mu.Lock()
	if s.units == nil {
		s.units = make(map[*unit]struct{})
	}
	s.units[u] = struct{}{}
	s.mu.Unlock()
}

func (s *flyingSet) remove(u *unit) {
	s.mu.Lock()
	delete(s.units, u)
	s.mu.Unlock()
}

// has reports whether the event seq is in a batch in flight.
func (s *flyingSet) has(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for u := range s.units {
		for _, it := range u.items {
			if it.Seq == seq {
				return true
			}
		}
	}
	return false
}

// addReplayed puts replayed dead letters among the fresh items in Seq order, so a sender's
// events still waiting are delivered in commit order, replayed ones included: a replayed event
// goes before its sender's newer events that have not started yet (they are held until it is
// done), and after those already in flight or waiting for a retry. Items with a Seq beyond
// readSeq are left to the catch-up read, which reads in Seq order too.
func (f *function) addReplayed(items []storage.Item, now time.Time) {
	add := make([]*pitem, 0, len(items))
	for _, it := range items {
		if it.Seq <= f.readSeq {
			add = append(add, &pitem{Item: it, arrived: now, size: it.Event.Size()})
		}
	}
	if len(add) == 0 {
		return
	}
	sort.Slice(add, func(i, j int) bool { return add[i].Seq < add[j].Seq })
	tail := f.fresh[f.freshHead:]
	merged := make([]*pitem, 0, len(tail)+len(add))
	i, j := 0, 0
	for i < len(tail) || j < len(add) {
		if j == len(add) || (i < len(tail) && tail[i].Seq < add[j].Seq) {
			merged = append(merged, tail[i])
			i++
		} else {
			merged = append(merged, add[j])
			j++
		}
	}
	clear(f.fresh[:f.freshHead])
	f.fresh, f.freshHead = merged, 0
	f.pending += len(add)
	f.rescan = true
}
