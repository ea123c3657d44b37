package ingest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/url"
	"slices"
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
// structured-mode body (or a binary-mode request's ce-* headers) may carry.
type bodyEvent struct {
	Data        []byte
	ID          string
	Type        string
	Subject     string
	ContentType string
	Time        time.Time
	// CESource is the sender's own CloudEvents source. It never becomes the event's source
	// (the gateway sets that from the authenticated sender): it is kept as Meta["$ce_source"]
	// and is part of the idempotency identity of ID.
	CESource   string
	DataSchema string
	Ext        []attr // extension attributes, string form, sorted by name
}

// attr is one named string: a CloudEvents extension attribute, or a ce-* header.
type attr struct{ Name, Value string }

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
		ev, err := parseCloudEvent(body, -1)
		if err != nil {
			return nil, err
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
			ev, err := parseCloudEvent(raw, i)
			if err != nil {
				return nil, err
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

// Bounds on the CloudEvents attributes kept as metadata.
const (
	// maxIDLength bounds sender-supplied event ids.
	maxIDLength = 256
	// maxSourceLength bounds a sender's own CloudEvents source (part of the idempotency identity,
	// so it is refused, not cut, when longer).
	maxSourceLength = 512
	// maxExtensions bounds the extension attributes of one event.
	maxExtensions = 32
	// maxExtName bounds an extension attribute's name (the spec asks for at most 20 characters).
	maxExtName = 64
)

// ceAttributes are the context attributes of CloudEvents 1.0 (and data members) that are not
// extensions.
var ceAttributes = map[string]bool{
	"specversion": true, "id": true, "type": true, "source": true, "subject": true, "time": true,
	"datacontenttype": true, "dataschema": true, "data": true, "data_base64": true,
}

// parseCloudEvent parses one structured-mode CloudEvent. index is its index in a batch, or -1
// for a single event (whose JSON errors are about the body as a whole).
func parseCloudEvent(raw []byte, index int) (bodyEvent, error) {
	var m map[string]json.RawMessage
	if err := strictUnmarshal(raw, &m); err != nil {
		return bodyEvent{}, &BodyError{Index: index, Err: err}
	}
	if index < 0 {
		index = 0
	}
	ev, err := cloudEventFromMap(m)
	if err != nil {
		return bodyEvent{}, &BodyError{Index: index, Err: err}
	}
	return ev, nil
}

func cloudEventFromMap(m map[string]json.RawMessage) (bodyEvent, error) {
	var ev bodyEvent
	var specVersion, timeStr, dataBase64 string
	for _, f := range []struct {
		name string
		dst  *string
	}{
		{"specversion", &specVersion}, {"id", &ev.ID}, {"type", &ev.Type}, {"source", &ev.CESource},
		{"subject", &ev.Subject}, {"time", &timeStr}, {"datacontenttype", &ev.ContentType},
		{"dataschema", &ev.DataSchema}, {"data_base64", &dataBase64},
	} {
		if raw, ok := m[f.name]; ok {
			if err := json.Unmarshal(raw, f.dst); err != nil {
				return ev, fmt.Errorf("%s must be a string", f.name)
			}
		}
	}
	for name, raw := range m {
		if ceAttributes[name] || !validExtName(name) {
			continue // other members are ignored, as they always were
		}
		v, ok := extValue(raw)
		if !ok {
			continue
		}
		ev.Ext = append(ev.Ext, attr{name, v})
	}
	if err := ev.check(specVersion, timeStr); err != nil {
		return ev, err
	}
	data, hasData := m["data"]
	switch {
	case dataBase64 != "" && hasData && len(data) > 0:
		return ev, errors.New("data and data_base64 are exclusive")
	case dataBase64 != "":
		b, err := base64.StdEncoding.DecodeString(dataBase64)
		if err != nil {
			return ev, fmt.Errorf("data_base64: %v", err)
		}
		ev.Data = b
		if ev.ContentType == "" {
			ev.ContentType = "application/octet-stream"
		}
	default:
		ev.Data = data
		switch {
		case ev.ContentType == "":
			ev.ContentType = ctJSON
		case !isJSONMedia(ev.ContentType) && len(data) > 0 && data[0] == '"':
			// String data of a non-JSON type (text/plain, application/xml) is the text itself,
			// not a JSON string token. Data of any other JSON kind is kept as its JSON text
			// (a text/plain 42 is the text "42"); the declared type is never rewritten.
			var s string
			if err := json.Unmarshal(data, &s); err != nil {
				return ev, fmt.Errorf("data: %v", err)
			}
			ev.Data = []byte(s)
		}
	}
	return ev, nil
}

// check validates the attributes common to both CloudEvents modes, sorts the extensions and
// sets Time.
func (ev *bodyEvent) check(specVersion, timeStr string) error {
	if specVersion != "" && specVersion != "1.0" {
		return fmt.Errorf("specversion %q: only 1.0 is supported", specVersion)
	}
	if ev.ID == "" || len(ev.ID) > maxIDLength || strings.ContainsAny(ev.ID, "\x00\n") {
		return fmt.Errorf("id must be 1 to %d characters without NUL or newline", maxIDLength)
	}
	if len(ev.CESource) > maxSourceLength || strings.ContainsAny(ev.CESource, "\x00\n") {
		return fmt.Errorf("source must be at most %d characters without NUL or newline", maxSourceLength)
	}
	if timeStr != "" {
		t, err := time.Parse(time.RFC3339Nano, timeStr)
		if err != nil {
			return fmt.Errorf("time %q is not RFC 3339", timeStr)
		}
		ev.Time = t
	}
	if len(ev.Ext) > maxExtensions {
		return fmt.Errorf("%d extension attributes (limit %d)", len(ev.Ext), maxExtensions)
	}
	slices.SortFunc(ev.Ext, func(a, b attr) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

// validExtName reports whether name is a CloudEvents attribute name: lower-case ASCII letters
// and digits.
func validExtName(name string) bool {
	if name == "" || len(name) > maxExtName {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// extValue is the string form of an extension attribute's JSON value: a string as itself, a
// number or boolean as its JSON text. null (an absent attribute), objects and arrays (not
// CloudEvents types) give false.
func extValue(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch raw[0] {
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return "", false
		}
		return s, true
	case '{', '[', 'n':
		return "", false
	}
	return string(raw), true
}

// isJSONMedia reports whether the media type ct is JSON: application/json, text/json or a
// +json suffix.
func isJSONMedia(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.ToLower(strings.TrimSpace(ct))
	return ct == ctJSON || ct == "text/json" || strings.HasSuffix(ct, "+json")
}

// isStructured reports whether ct is a structured-mode CloudEvents media type.
func isStructured(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.ToLower(strings.TrimSpace(ct))
	return strings.HasPrefix(ct, "application/cloudevents")
}

// parseRequest is parseBody for a whole request: with a ce-specversion header (ce holds the
// request's ce-* headers, names lower case without the prefix) and a content type that is not
// structured-mode CloudEvents, the request is one binary-mode CloudEvent.
func parseRequest(contentType string, ce []attr, body []byte, maxEvents int) ([]bodyEvent, error) {
	if len(ce) > 0 && !isStructured(contentType) {
		for _, h := range ce {
			if h.Name == "specversion" {
				ev, err := parseBinary(ce, contentType, body)
				if err != nil {
					return nil, &BodyError{Index: 0, Err: err}
				}
				return []bodyEvent{ev}, nil
			}
		}
	}
	return parseBody(contentType, body, maxEvents)
}

// parseBinary makes a binary-mode CloudEvent: the attributes come from the ce-* headers
// (percent-decoded, as the HTTP binding asks), the data is the body as is, with the declared
// content type (application/octet-stream if none). A body declared as JSON must be JSON.
func parseBinary(ce []attr, contentType string, body []byte) (bodyEvent, error) {
	ev := bodyEvent{Data: body, ContentType: contentType}
	var specVersion, timeStr string
	for _, h := range ce {
		v := h.Value
		if strings.IndexByte(v, '%') >= 0 {
			if d, err := url.PathUnescape(v); err == nil {
				v = d
			}
		}
		switch h.Name {
		case "specversion":
			specVersion = v
		case "id":
			ev.ID = v
		case "type":
			ev.Type = v
		case "source":
			ev.CESource = v
		case "subject":
			ev.Subject = v
		case "time":
			timeStr = v
		case "dataschema":
			ev.DataSchema = v
		case "datacontenttype", "data", "data_base64":
			// binary mode: Content-Type is the data's type, the body its data
		default:
			if validExtName(h.Name) {
				ev.Ext = append(ev.Ext, attr{h.Name, v})
			}
		}
	}
	if specVersion != "1.0" {
		return ev, fmt.Errorf("ce-specversion %q: only 1.0 is supported", specVersion)
	}
	if err := ev.check(specVersion, timeStr); err != nil {
		return ev, fmt.Errorf("binary-mode CloudEvent (ce-* headers): %w", err)
	}
	if ev.ContentType == "" {
		ev.ContentType = "application/octet-stream"
	}
	if isJSONMedia(ev.ContentType) && len(body) > 0 && !json.Valid(body) {
		return ev, fmt.Errorf("the body is declared %s but is not JSON: %v", ev.ContentType, jsonError(body))
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
