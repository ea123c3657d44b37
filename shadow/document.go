package shadow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Document is a device's shadow: what the device last reported, what apps and operators
// desire, and the delta between them (the desired fields whose value differs from the
// reported one, recursively in objects), with a version that grows by one on every accepted
// update and, in Metadata, the time (Unix seconds) each leaf field was last set.
type Document struct {
	State     State    `json:"state"`
	Metadata  Metadata `json:"metadata"`
	Version   int64    `json:"version"`
	Timestamp int64    `json:"timestamp"` // Unix seconds of the last accepted update
}

// State holds the three sections of a shadow. Values are JSON (numbers kept as their text).
type State struct {
	Reported map[string]any `json:"reported"`
	Desired  map[string]any `json:"desired"`
	Delta    map[string]any `json:"delta"`
}

// Metadata mirrors Reported and Desired: each leaf (a value that is not an object) becomes
// {"timestamp": unix seconds of when it was last set}.
type Metadata struct {
	Reported map[string]any `json:"reported"`
	Desired  map[string]any `json:"desired"`
}

// Update is a parsed shadow update: {"state":{"reported":{...},"desired":{...}},"version":N}.
// Each section is a JSON merge patch (RFC 7386): objects merge, null deletes a field, anything
// else replaces it; a section that is null itself clears the whole section. Version 0 means
// "whatever the current version is"; any other value must equal it.
type Update struct {
	Reported, Desired           map[string]any
	HasReported, HasDesired     bool
	ClearReported, ClearDesired bool
	Version                     int64
}

// maxDepth bounds the nesting of objects and arrays in an update.
const maxDepth = 16

// ParseUpdate decodes and checks an update body. It refuses anything but an object with
// "state" (an object with "reported" and/or "desired", each an object or null) and an
// optional positive integer "version", and nesting deeper than 16 levels.
func ParseUpdate(body []byte) (*Update, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var top map[string]json.RawMessage
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if top == nil {
		return nil, fmt.Errorf("%w: the body must be a JSON object", ErrInvalid)
	}
	u := &Update{}
	for k, raw := range top {
		switch k {
		case "state":
		case "version":
			var n json.Number
			if err := decodeStrict(raw, &n); err != nil || len(raw) == 0 || raw[0] == '"' {
				return nil, fmt.Errorf("%w: version: must be a positive integer", ErrInvalid)
			}
			v, err := n.Int64()
			if err != nil || v <= 0 {
				return nil, fmt.Errorf("%w: version: must be a positive integer, got %s", ErrInvalid, n)
			}
			u.Version = v
		default:
			return nil, fmt.Errorf("%w: unknown field %q (use state and version)", ErrInvalid, k)
		}
	}
	raw, ok := top["state"]
	if !ok {
		return nil, fmt.Errorf("%w: state: required", ErrInvalid)
	}
	var state map[string]json.RawMessage
	if err := decodeStrict(raw, &state); err != nil || state == nil {
		return nil, fmt.Errorf("%w: state: must be an object with reported and/or desired", ErrInvalid)
	}
	for k, raw := range state {
		var sec map[string]any
		if err := decodeStrict(raw, &sec); err != nil {
			return nil, fmt.Errorf("%w: state.%s: must be an object or null", ErrInvalid, k)
		}
		if depth(sec, 1) > maxDepth {
			return nil, fmt.Errorf("%w: state.%s: nested deeper than %d levels", ErrInvalid, k, maxDepth)
		}
		switch k {
		case "reported":
			u.Reported, u.HasReported, u.ClearReported = sec, true, sec == nil
		case "desired":
			u.Desired, u.HasDesired, u.ClearDesired = sec, true, sec == nil
		case "delta":
			return nil, fmt.Errorf("%w: state.delta: computed by the gateway, not set", ErrInvalid)
		default:
			return nil, fmt.Errorf("%w: state: unknown section %q (use reported and desired)", ErrInvalid, k)
		}
	}
	if !u.HasReported && !u.HasDesired {
		return nil, fmt.Errorf("%w: state: needs reported or desired", ErrInvalid)
	}
	return u, nil
}

func decodeStrict(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

func depth(v any, d int) int {
	m := d
	switch x := v.(type) {
	case map[string]any:
		for _, e := range x {
			m = max(m, depth(e, d+1))
		}
	case []any:
		for _, e := range x {
			m = max(m, depth(e, d+1))
		}
	}
	return m
}

// Apply returns the document after u, at time ts (Unix seconds), with the version
// incremented and the delta recomputed; doc is not modified. It does not check u.Version.
func Apply(doc *Document, u *Update, ts int64) *Document {
	out := doc.clone()
	apply := func(state, meta *map[string]any, patch map[string]any, has, clear bool) {
		if !has {
			return
		}
		if clear {
			*state, *meta = map[string]any{}, map[string]any{}
			return
		}
		mergePatch(*state, *meta, patch, ts)
	}
	apply(&out.State.Reported, &out.Metadata.Reported, u.Reported, u.HasReported, u.ClearReported)
	apply(&out.State.Desired, &out.Metadata.Desired, u.Desired, u.HasDesired, u.ClearDesired)
	out.State.Delta = Delta(out.State.Desired, out.State.Reported)
	out.Version++
	out.Timestamp = ts
	return out
}

// mergePatch applies a JSON merge patch to target, and records ts for every leaf it sets.
func mergePatch(target, meta, patch map[string]any, ts int64) {
	for k, v := range patch {
		if v == nil {
			delete(target, k)
			delete(meta, k)
			continue
		}
		if pv, ok := v.(map[string]any); ok {
			tv, wasObj := target[k].(map[string]any)
			mv, _ := meta[k].(map[string]any)
			if !wasObj || mv == nil {
				tv, mv = map[string]any{}, map[string]any{}
				target[k], meta[k] = tv, mv
			}
			mergePatch(tv, mv, pv, ts)
			continue
		}
		target[k] = v
		meta[k] = map[string]any{"timestamp": ts}
	}
}

// Delta returns the fields of desired whose value differs from reported's (recursing into
// objects present in both); values are compared as JSON text.
func Delta(desired, reported map[string]any) map[string]any {
	out := map[string]any{}
	for k, dv := range desired {
		rv, ok := reported[k]
		dm, dIsObj := dv.(map[string]any)
		rm, rIsObj := rv.(map[string]any)
		switch {
		case ok && dIsObj && rIsObj:
			if sub := Delta(dm, rm); len(sub) > 0 {
				out[k] = sub
			}
		case !ok || !jsonEqual(dv, rv):
			out[k] = dv
		}
	}
	return out
}

func jsonEqual(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// Empty returns the document of a device that has none yet (version 0).
func Empty() *Document {
	return &Document{
		State:    State{Reported: map[string]any{}, Desired: map[string]any{}, Delta: map[string]any{}},
		Metadata: Metadata{Reported: map[string]any{}, Desired: map[string]any{}},
	}
}

// Decode reads a stored document.
func Decode(b []byte) (*Document, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	d := Empty()
	if err := dec.Decode(d); err != nil {
		return nil, fmt.Errorf("decoding stored shadow: %w", err)
	}
	d.fill()
	return d, nil
}

// fill replaces nil maps by empty ones, so that documents always show every section.
func (d *Document) fill() {
	for _, m := range []*map[string]any{&d.State.Reported, &d.State.Desired, &d.State.Delta, &d.Metadata.Reported, &d.Metadata.Desired} {
		if *m == nil {
			*m = map[string]any{}
		}
	}
}

func (d *Document) clone() *Document {
	b, err := json.Marshal(d)
	if err != nil {
		panic("shadow: a document that cannot be encoded: " + err.Error())
	}
	out, err := Decode(b)
	if err != nil {
		panic("shadow: a document that cannot be decoded: " + err.Error())
	}
	return out
}
