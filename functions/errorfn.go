package functions

import (
	"bytes"
	"context"
	"strconv"

	"github.com/fleetgate/fleetgate/storage"
)

// ErrorEventType is the CloudEvents type of the copy of a dead-lettered event that a rule's
// error function receives.
const ErrorEventType = "fleetgate.function.error"

// Meta keys of an event sent to an error function; they are also its CloudEvents extension
// attributes.
const (
	MetaErrorFunction  = "errorfunction"  // the function that dead-lettered the event
	MetaErrorReason    = "errorreason"    // its last error
	MetaErrorAttempts  = "errorattempts"  // attempts charged to the event
	MetaErrorEventID   = "erroreventid"   // the id of the dead-lettered event
	MetaErrorEventType = "erroreventtype" // its type
)

var errorAttributes = [...]string{MetaErrorFunction, MetaErrorReason, MetaErrorAttempts, MetaErrorEventID, MetaErrorEventType}

// toErrorFunctions appends, for each item whose rule names an error function, a copy of its
// event for that function (type ErrorEventType, a new id, one more hop, the reason in its
// metadata). It is called before the items are dead-lettered, so a crash in between sends a
// copy twice rather than never. A copy is not sent to the function that dead-lettered it
// (no loops), nor past the dead-lettering function's max_hops. Failures are logged and
// counted: the events stay in the dead letters either way.
func (f *function) toErrorFunctions(items []*pitem, reason string) {
	lookup := f.d.opts.ErrorFunction
	if lookup == nil {
		return
	}
	var entries []*storage.Entry
	for _, it := range items {
		if it.Rule == "" {
			continue
		}
		ef := lookup(it.Rule)
		if ef == "" || ef == f.name {
			continue
		}
		if !f.d.Known(ef) {
			f.m.errDropped.Inc()
			f.logger.Error("dead-lettered event not sent to the rule's error function: no such function", "rule", it.Rule, "error_function", ef, "event_id", it.Event.ID)
			continue
		}
		hops := int(it.Event.Hops) + 1
		if hops > f.def.MaxHops {
			f.m.errDropped.Inc()
			f.logger.Warn("dead-lettered event not sent to the rule's error function", "rule", it.Rule, "error_function", ef,
				"event_id", it.Event.ID, "hops", hops, "err", ErrHopLimit)
			continue
		}
		ev := *it.Event
		// The log gives it an id carrying its seq (event.NewSeqID): no fate index needed.
		ev.ID, ev.Type, ev.Hops = "", ErrorEventType, uint8(hops)
		ev.Meta = make(map[string]string, len(it.Event.Meta)+len(errorAttributes))
		for k, v := range it.Event.Meta {
			ev.Meta[k] = v
		}
		ev.Meta[MetaErrorFunction] = f.name
		ev.Meta[MetaErrorReason] = reason
		ev.Meta[MetaErrorAttempts] = strconv.Itoa(it.attempts)
		ev.Meta[MetaErrorEventID] = it.Event.ID
		ev.Meta[MetaErrorEventType] = it.Event.Type
		var data []byte // the rule's select output, when it made one
		if !bytes.Equal(it.Data, it.Event.Data) {
			data = it.Data
		}
		entries = append(entries, &storage.Entry{Event: &ev, Targets: []storage.Target{{Function: ef, Rule: it.Rule, Data: data}}})
	}
	if len(entries) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(f.d.baseCtx, f.def.Timeout)
	err := f.d.store.Append(ctx, entries)
	cancel()
	if err != nil {
		f.m.errDropped.Add(len(entries))
		f.logger.Error("sending dead-lettered events to error functions; they stay in the dead letters", "events", len(entries), "err", err)
		return
	}
	f.m.errSent.Add(len(entries))
}

// appendErrorAttributes writes the extension attributes of an event sent to an error function.
func appendErrorAttributes(dst []byte, meta map[string]string) []byte {
	for _, k := range errorAttributes {
		if v, ok := meta[k]; ok {
			dst = append(dst, ',', '"')
			dst = append(dst, k...)
			dst = append(dst, '"', ':')
			dst = appendJSONString(dst, v)
		}
	}
	return dst
}
