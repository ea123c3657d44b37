package functions

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fleetgate/fleetgate/storage"
)

// ContentTypeBatch is the media type of a batch sent to an http or wasm function.
const ContentTypeBatch = "application/cloudevents-batch+json"

// Limits on a function's answer.
const (
	maxResponseBytes = 16 << 20
	maxOutputs       = 10000
)

// AppendCloudEvents appends b encoded as a CloudEvents 1.0 JSON batch: an array of objects
// with specversion, id, source (always a valid URI reference, see SourceURI), type, subject,
// time (RFC 3339 with nanoseconds), datacontenttype (never rewritten when declared), data (JSON
// for a JSON type or no type when it parses; a JSON string for any other type when the payload
// is UTF-8) or data_base64 (otherwise), the extension attributes topic, tenant and rule, and
// the event's context (see appendContextAttributes and the functions README).
func AppendCloudEvents(dst []byte, b *Batch) []byte {
	// Room for the whole batch at once: grown by append, a batch of hundreds of events was
	// copied again at every doubling (a third of the bytes the gateway allocated, end to end).
	n := 2
	for i := range b.Items {
		it := &b.Items[i]
		n += ceOverhead + it.Event.Size() + len(it.Data) + len(it.Rule)
		for k, v := range it.Event.Meta {
			n += len(k) + len(v) + 8 // again: an attribute of its own and in "meta", escaped
		}
	}
	dst = slices.Grow(dst, n)
	dst = append(dst, '[')
	for i := range b.Items {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendCloudEvent(dst, &b.Items[i])
	}
	return append(dst, ']')
}

// ceOverhead is about what an encoded event adds to its fields (attribute names, quotes, the
// time, the protocol's attributes), for AppendCloudEvents' estimate.
const ceOverhead = 200

func appendCloudEvent(dst []byte, it *storage.Item) []byte {
	e := it.Event
	dst = append(dst, `{"specversion":"1.0","id":`...)
	dst = appendJSONString(dst, e.ID)
	dst = append(dst, `,"source":`...)
	dst = appendJSONString(dst, SourceURI(e.Source))
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, orDefault(e.Type, "fleetgate.event"))
	if e.Subject != "" {
		dst = append(dst, `,"subject":`...)
		dst = appendJSONString(dst, e.Subject)
	}
	if !e.Time.IsZero() {
		dst = append(dst, `,"time":"`...)
		dst = e.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
		dst = append(dst, '"')
	}
	data := it.Data
	if data == nil {
		data = e.Data
	}
	selected := it.Data != nil && !bytes.Equal(it.Data, e.Data)
	ct := e.ContentType
	switch {
	case selected || ct == "" || isJSONType(ct):
		if len(data) > 0 && json.Valid(data) {
			if ct == "" || selected {
				ct = "application/json"
			}
			dst = append(dst, `,"datacontenttype":`...)
			dst = appendJSONString(dst, ct)
			dst = append(dst, `,"data":`...)
			dst = append(dst, data...)
			break
		}
		dst = appendBase64Data(dst, orDefault(ct, "application/octet-stream"), data)
	case utf8.Valid(data):
		// Text stays text: any other declared type goes as a JSON string when it is UTF-8.
		dst = append(dst, `,"datacontenttype":`...)
		dst = appendJSONString(dst, ct)
		dst = append(dst, `,"data":`...)
		dst = appendJSONString(dst, string(data))
	default:
		dst = appendBase64Data(dst, ct, data)
	}
	if e.Topic != "" {
		dst = append(dst, `,"topic":`...)
		dst = appendJSONString(dst, e.Topic)
	}
	if e.Tenant != "" {
		dst = append(dst, `,"tenant":`...)
		dst = appendJSONString(dst, e.Tenant)
	}
	if it.Rule != "" {
		dst = append(dst, `,"rule":`...)
		dst = appendJSONString(dst, it.Rule)
	}
	dst = appendContextAttributes(dst, e)
	if e.Type == ErrorEventType {
		dst = appendErrorAttributes(dst, e.Meta)
	}
	return append(dst, '}')
}

func appendBase64Data(dst []byte, ct string, data []byte) []byte {
	dst = append(dst, `,"datacontenttype":`...)
	dst = appendJSONString(dst, ct)
	dst = append(dst, `,"data_base64":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, data)
	return append(dst, '"')
}

func isJSONType(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(strings.ToLower(ct))
	return ct == "application/json" || strings.HasSuffix(ct, "+json")
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ParseResult decodes a function's answer: empty (or whitespace) means plain success; else a
// JSON object {"failed":[ids],"publish":[outputs]}. Unknown fields are ignored. Outputs must
// name a topic without wildcards and a QoS of 0, 1 or 2; a reply output ("reply": true) names
// no topic, is not retained, and may name the event it answers ("id"). Errors wrap
// ErrBadResponse.
func ParseResult(body []byte) (Result, error) {
	var r Result
	if len(strings.TrimSpace(string(body))) == 0 {
		return r, nil
	}
	if len(body) > maxResponseBytes {
		return r, fmt.Errorf("%w: %d bytes is above the limit of %d", ErrBadResponse, len(body), maxResponseBytes)
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return Result{}, fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	if len(r.Publish) > maxOutputs {
		return Result{}, fmt.Errorf("%w: %d outputs is above the limit of %d", ErrBadResponse, len(r.Publish), maxOutputs)
	}
	for i, o := range r.Publish {
		if o.Reply {
			if o.Topic != "" || o.Retain {
				return Result{}, fmt.Errorf("%w: publish[%d]: a reply has no topic and no retain (it goes to the request's response topic)", ErrBadResponse, i)
			}
			if o.QoS > 2 {
				return Result{}, fmt.Errorf("%w: publish[%d]: qos %d", ErrBadResponse, i, o.QoS)
			}
			continue
		}
		if o.ID != "" {
			return Result{}, fmt.Errorf("%w: publish[%d]: id is for replies (set \"reply\": true)", ErrBadResponse, i)
		}
		if o.Topic == "" || strings.ContainsAny(o.Topic, "+#\x00") {
			return Result{}, fmt.Errorf("%w: publish[%d]: bad topic %q", ErrBadResponse, i, o.Topic)
		}
		if o.QoS > 2 {
			return Result{}, fmt.Errorf("%w: publish[%d]: qos %d", ErrBadResponse, i, o.QoS)
		}
	}
	return r, nil
}

// PayloadBytes returns the bytes to publish for o: a JSON string payload is published as its
// text, any other JSON value as its JSON encoding, a missing payload as nothing.
func (o *Output) PayloadBytes() []byte {
	p := o.Payload
	if len(p) > 0 && p[0] == '"' {
		var s string
		if json.Unmarshal(p, &s) == nil {
			return []byte(s)
		}
	}
	if string(p) == "null" {
		return nil
	}
	return p
}
