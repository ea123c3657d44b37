package ingest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"
)

// Body formats accepted by POST /v1/events/{topic}.
const (
	ctJSON        = "application/json"
	ctNDJSON      = "application/x-ndjson"
	ctCloudEvent  = "application/cloudevents+json"
	ctCloudEvents = "application/cloudevents-batch+json"
)

// errUnsupportedType is returned by parseBody for a content type it does not take.
var errUnsupportedType = errors.New("unsupported content type")

// BodyError says which element of a request body is malformed.
type BodyError struct {
	Index int // the element's index (line for NDJSON), from 0; -1 for the body as a whole
	Err   error
}

func (e *BodyError) Error() string {
	if e.Index < 0 {
		return "malformed body: " + e.Err.Error()
	}
	return fmt.Sprintf("malformed event at index %d: %v", e.Index, e.Err)
}

func (e *BodyError) Unwrap() error { return e.Err }

// bodyEvent is one event parsed from a body: its data, plus the CloudEvents attributes a
// structured-mode body may carry.
type bodyEvent struct {
	Data        []byte
	ID          string
	Type        string
	Source      string
	Subject     string
	ContentType string
	Time        time.Time
}

// parseBody splits a request body into events. JSON: one value, or an array whose elements
// are the events. NDJSON: one JSON value a line (blank lines skipped). CloudEvents (structured
// or batch): each event's data with its own id, type, source, subject and time. maxEvents
// bounds the count. The returned Data slices alias body.
func parseBody(contentType string, body []byte, maxEvents int) ([]bodyEvent, error) {
	mt := ctJSON
	if contentType != "" && contentType != ctJSON {
		t, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return nil, fmt.Errorf("%w: %q", errUnsupportedType, contentType)
		}
		mt = t
	}
	switch mt {
	case ctJSON, "text/json":
		return parseJSON(body, maxEvents)
	case ctNDJSON, "application/jsonl", "application/json-seq":
		return parseNDJSON(body, maxEvents)
	case ctCloudEvent:
		var ce cloudEvent
		if err := strictUnmarshal(body, &ce); err != nil {
			return nil, &BodyError{Index: -1, Err: err}
		}
		ev, err := ce.toBodyEvent()
		if err != nil {
			return nil, &BodyError{Index: 0, Err: err}
		}
		return []bodyEvent{ev}, nil
	case ctCloudEvents:
		var raws []json.RawMessage
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, &BodyError{Index: -1, Err: errors.New("a CloudEvents batch must be a JSON array of events")}
		}
		if len(raws) == 0 {
			return nil, &BodyError{Index: -1, Err: errors.New("empty batch: no events")}
		}
		if len(raws) > maxEvents {
			return nil, tooMany(len(raws), maxEvents)
		}
		out := make([]bodyEvent, len(raws))
		for i, raw := range raws {
			var ce cloudEvent
			if err := strictUnmarshal(raw, &ce); err != nil {
				return nil, &BodyError{Index: i, Err: err}
			}
			ev, err := ce.toBodyEvent()
			if err != nil {
				return nil, &BodyError{Index: i, Err: err}
			}
			out[i] = ev
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: %q (use %s, %s, %s or %s)", errUnsupportedType, mt, ctJSON, ctNDJSON, ctCloudEvent, ctCloudEvents)
}

// errTooMany is wrapped by tooMany.
var errTooMany = errors.New("too many events in one request")

func tooMany(n, max int) error {
	return &BodyError{Index: -1, Err: fmt.Errorf("%w: %d (limit %d)", errTooMany, n, max)}
}

func parseJSON(body []byte, maxEvents int) ([]bodyEvent, error) {
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 {
		return nil, &BodyError{Index: -1, Err: errors.New("empty body")}
	}
	if trimmed[0] != '[' {
		if !json.Valid(body) {
			return nil, &BodyError{Index: -1, Err: jsonError(body)}
		}
		return []bodyEvent{{Data: bytes.TrimSpace(body)}}, nil
	}
	if !json.Valid(body) {
		return nil, arrayError(body)
	}
	raws := splitArray(trimmed, nil)
	if len(raws) == 0 {
		return nil, &BodyError{Index: -1, Err: errors.New("empty array: no events")}
	}
	if len(raws) > maxEvents {
		return nil, tooMany(len(raws), maxEvents)
	}
	out := make([]bodyEvent, len(raws))
	for i, r := range raws {
		out[i].Data = r
	}
	return out, nil
}

// splitArray returns the elements of arr, a JSON array already known to be valid, as slices of
// it. It only tracks nesting and strings: validation was json.Valid's job (one pass each,
// instead of encoding/json's validate-then-decode with a copy per element).
func splitArray(arr []byte, dst [][]byte) [][]byte {
	depth, start := 0, -1
	inString, escaped := false, false
	for i := 0; i < len(arr); i++ {
		c := arr[i]
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '"':
			inString = true
		case '[', '{':
			depth++
			if depth == 1 {
				continue // the array itself
			}
		case ']', '}':
			depth--
			if depth == 0 {
				if start >= 0 {
					dst = append(dst, bytes.TrimRight(arr[start:i], " \t\r\n"))
				}
				return dst
			}
		case ',':
			if depth == 1 {
				dst = append(dst, bytes.TrimRight(arr[start:i], " \t\r\n"))
				start = -1
				continue
			}
		}
		if start < 0 && depth >= 1 {
			start = i
		}
	}
	return dst
}

// arrayError finds the first bad element of a JSON array body, for a precise message.
func arrayError(body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return &BodyError{Index: -1, Err: err}
	}
	for i := 0; ; i++ {
		if !dec.More() {
			if _, err := dec.Token(); err != nil {
				return &BodyError{Index: i, Err: err}
			}
			return &BodyError{Index: -1, Err: errors.New("trailing data after the array")}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return &BodyError{Index: i, Err: err}
		}
	}
}

func jsonError(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	return errors.New("invalid JSON")
}

func parseNDJSON(body []byte, maxEvents int) ([]bodyEvent, error) {
	var out []bodyEvent
	line := 0
	for len(body) > 0 {
		var l []byte
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			l, body = body[:i], body[i+1:]
		} else {
			l, body = body, nil
		}
		l = bytes.TrimSpace(l)
		if len(l) > 0 {
			if !json.Valid(l) {
				return nil, &BodyError{Index: line, Err: jsonError(l)}
			}
			if len(out) == maxEvents {
				return nil, tooMany(len(out)+1, maxEvents)
			}
			out = append(out, bodyEvent{Data: l})
		}
		line++
	}
	if len(out) == 0 {
		return nil, &BodyError{Index: -1, Err: errors.New("empty body: no events")}
	}
	return out, nil
}

// cloudEvent is a structured-mode CloudEvent as posted by an app.
type cloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Type            string          `json:"type"`
	Source          string          `json:"source"`
	Subject         string          `json:"subject"`
	Time            string          `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	DataBase64      string          `json:"data_base64"`
}

// maxIDLength bounds sender-supplied event ids.
const maxIDLength = 256

func (ce *cloudEvent) toBodyEvent() (bodyEvent, error) {
	ev := bodyEvent{ID: ce.ID, Type: ce.Type, Source: ce.Source, Subject: ce.Subject, ContentType: ce.DataContentType}
	if ce.SpecVersion != "" && ce.SpecVersion != "1.0" {
		return ev, fmt.Errorf("specversion %q: only 1.0 is supported", ce.SpecVersion)
	}
	if ce.ID == "" || len(ce.ID) > maxIDLength || strings.ContainsAny(ce.ID, "\x00\n") {
		return ev, fmt.Errorf("id must be 1 to %d characters without NUL or newline", maxIDLength)
	}
	if ce.Time != "" {
		t, err := time.Parse(time.RFC3339Nano, ce.Time)
		if err != nil {
			return ev, fmt.Errorf("time %q is not RFC 3339", ce.Time)
		}
		ev.Time = t
	}
	switch {
	case ce.DataBase64 != "" && len(ce.Data) > 0:
		return ev, errors.New("data and data_base64 are exclusive")
	case ce.DataBase64 != "":
		b, err := base64.StdEncoding.DecodeString(ce.DataBase64)
		if err != nil {
			return ev, fmt.Errorf("data_base64: %v", err)
		}
		ev.Data = b
		if ev.ContentType == "" {
			ev.ContentType = "application/octet-stream"
		}
	default:
		ev.Data = ce.Data
		if ev.ContentType == "" {
			ev.ContentType = ctJSON
		}
	}
	return ev, nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the event")
	}
	return nil
}
