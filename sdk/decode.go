package sdk

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"
	"unicode/utf8"
)

// decodeBatch decodes a batch exactly as json.Unmarshal into []Event does, faster for the
// shape the gateway sends: after one validity scan it walks the array directly, and falls back
// to encoding/json at anything unusual (escaped strings, nulls, unknown or differently cased
// keys, invalid UTF-8, a bad time or base64). Decoding the batch is most of a small handler's
// cost, and wasm guest code pays it several times over.
func decodeBatch(b []byte) ([]Event, error) {
	if json.Valid(b) {
		if events, ok := scanBatch(b); ok {
			return events, nil
		}
	}
	var events []Event
	if err := json.Unmarshal(b, &events); err != nil {
		return nil, err
	}
	return events, nil
}

// batchScanner walks JSON already known to be valid.
type batchScanner struct {
	b   []byte
	i   int
	all string // b as one string: the events' string fields are substrings of it (one allocation; a kept field keeps the batch text alive)
}

func (s *batchScanner) peek() byte {
	for s.i < len(s.b) {
		switch c := s.b[s.i]; c {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return c
		}
	}
	return 0
}

// plainString reads the string at s.i; ok is false when it has escapes or invalid UTF-8 (the
// fallback handles those).
func (s *batchScanner) plainString() (str []byte, ok bool) {
	if s.peek() != '"' {
		return nil, false
	}
	start := s.i + 1
	end := bytes.IndexByte(s.b[start:], '"')
	if end < 0 {
		return nil, false
	}
	str = s.b[start : start+end]
	s.i = start + end + 1
	if bytes.IndexByte(str, '\\') >= 0 {
		return nil, false
	}
	for _, c := range str {
		if c >= utf8.RuneSelf {
			return str, utf8.Valid(str)
		}
	}
	return str, true
}

// stringValue reads the string at s.i into *dst: a substring of the batch when it is plain,
// else decoded by encoding/json (escapes; invalid UTF-8 is refused for the fallback).
func (s *batchScanner) stringValue(dst *string) bool {
	if s.peek() != '"' {
		return false
	}
	start := s.i
	raw := s.value()
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		if !utf8.Valid(inner) {
			return false
		}
		*dst = s.all[start+1 : start+1+len(inner)]
		return true
	}
	if !utf8.Valid(inner) {
		return false
	}
	return json.Unmarshal(raw, dst) == nil
}

// value skips the value at s.i and returns its bytes.
func (s *batchScanner) value() []byte {
	s.peek()
	start, depth := s.i, 0
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch c {
		case '"':
			s.i++
			for s.b[s.i] != '"' {
				if s.b[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
			s.i++
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			if depth == 0 {
				return s.b[start:s.i] // a literal ended at its container's end
			}
			depth--
			s.i++
		case ',', ':', ' ', '\t', '\n', '\r':
			if depth == 0 {
				return s.b[start:s.i]
			}
			s.i++
		default:
			s.i++
		}
		if depth == 0 && (c == '"' || c == '}' || c == ']') {
			return s.b[start:s.i]
		}
	}
	return s.b[start:s.i]
}

// scanBatch decodes a valid JSON batch of the usual shape; ok is false for anything else.
func scanBatch(b []byte) (events []Event, ok bool) {
	s := &batchScanner{b: b, all: string(b)}
	if s.peek() != '[' {
		return nil, false
	}
	s.i++
	events = make([]Event, 0, bytes.Count(b, []byte(`"specversion"`)))
	if s.peek() == ']' {
		s.i++
		return events, true
	}
	for {
		if s.peek() != '{' {
			return nil, false
		}
		s.i++
		events = append(events, Event{})
		if !scanEvent(s, &events[len(events)-1]) {
			return nil, false
		}
		switch s.peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return events, true
		default:
			return nil, false
		}
	}
}

// scanEvent decodes the members of one event object; s.i is past its '{'.
func scanEvent(s *batchScanner, e *Event) bool {
	if s.peek() == '}' {
		s.i++
		return true
	}
	for {
		key, ok := s.plainString()
		if !ok || s.peek() != ':' {
			return false
		}
		s.i++
		var field *string
		switch string(key) {
		case "specversion":
			field = &e.SpecVersion
		case "id":
			field = &e.ID
		case "source":
			field = &e.Source
		case "type":
			field = &e.Type
		case "subject":
			field = &e.Subject
		case "datacontenttype":
			field = &e.DataContentType
		case "topic":
			field = &e.Topic
		case "tenant":
			field = &e.Tenant
		case "rule":
			field = &e.Rule
		case "dataschema":
			field = &e.DataSchema
		case "protocol":
			field = &e.Protocol
		case "clientid":
			field = &e.ClientID
		case "qos":
			field = &e.QoS
		case "retain":
			field = &e.Retain
		case "responsetopic":
			field = &e.ResponseTopic
		case "correlationdata":
			field = &e.CorrelationData
		case "payloadformat":
			field = &e.PayloadFormat
		case "sendersource":
			field = &e.SenderSource
		case "traceparent":
			field = &e.Traceparent
		case "tracestate":
			field = &e.Tracestate
		case "meta":
			field = &e.Meta
		case "time":
			if s.peek() != '"' || e.Time.UnmarshalJSON(s.value()) != nil {
				return false
			}
		case "data":
			v := s.value()
			if string(v) == "null" {
				return false
			}
			e.Data = append(json.RawMessage(nil), v...)
		case "data_base64":
			v, ok := s.plainString()
			if !ok {
				return false
			}
			d := make([]byte, base64.StdEncoding.DecodedLen(len(v)))
			n, err := base64.StdEncoding.Decode(d, v)
			if err != nil {
				return false
			}
			e.DataBase64 = d[:n]
		default:
			// Another attribute: a string is one of the sender's extensions. A name
			// encoding/json would match to a field in another case goes to the fallback.
			for _, a := range knownAttributes {
				if strings.EqualFold(string(key), a) {
					return false
				}
			}
			if s.peek() != '"' {
				return false
			}
			if e.Extensions == nil {
				e.Extensions = map[string]string{}
			}
			var v string
			if !s.stringValue(&v) {
				return false
			}
			e.Extensions[string(key)] = v
		}
		if field != nil && !s.stringValue(field) {
			return false
		}
		switch s.peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}
