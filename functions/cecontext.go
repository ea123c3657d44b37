package functions

import (
	"encoding/json"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/fleetgate/fleetgate/event"
)

// Meta keys set only by the gateway (a sender's own "$" keys are dropped at ingest).
const (
	MetaResponseTopic   = "$response_topic"   // MQTT 5 response topic of a request
	MetaCorrelationData = "$correlation_data" // MQTT 5 correlation data, standard base64
	MetaPayloadFormat   = "$payload_format"   // MQTT 5 payload format indicator: "utf8" or "bytes"
	MetaTraceparent     = "$traceparent"
	MetaTracestate      = "$tracestate"
	MetaCESource        = "$ce_source"     // the sender's own CloudEvents source
	MetaCEDataschema    = "$ce_dataschema" // the sender's CloudEvents dataschema
	MetaCEExtPrefix     = "$ce_ext."       // + name: the sender's CloudEvents extension attributes
	metaClientID        = "client_id"
)

// ownAttributes are the attribute names the gateway writes; a sender's extension of the same
// name is dropped.
var ownAttributes = map[string]bool{
	"specversion": true, "id": true, "source": true, "type": true, "subject": true, "time": true,
	"datacontenttype": true, "dataschema": true, "data": true,
	"topic": true, "tenant": true, "rule": true, "protocol": true, "clientid": true, "qos": true,
	"retain": true, "responsetopic": true, "correlationdata": true, "payloadformat": true,
	"sendersource": true, "traceparent": true, "tracestate": true, "meta": true,
	MetaErrorFunction: true, MetaErrorReason: true, MetaErrorAttempts: true, MetaErrorEventID: true,
	MetaErrorEventType: true,
}

// ValidAttributeName reports whether name is a valid CloudEvents attribute name as the gateway
// sends them: 1 to 20 characters, lowercase ASCII letters and digits only.
func ValidAttributeName(name string) bool {
	if name == "" || len(name) > 20 {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// isUnreserved reports whether c is an RFC 3986 unreserved character.
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// isURIChar reports whether c may appear literally in a URI reference.
func isURIChar(c byte) bool {
	return isUnreserved(c) || strings.IndexByte(":/?#[]@!$&'()*+,;=%", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// escapeSegment percent-encodes every byte of s but the unreserved ones and the sub-delims
// "!$&'()*+,;=" and "@": the result is one valid path segment.
func escapeSegment(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isUnreserved(c) || strings.IndexByte("!$&'()*+,;=@", c) >= 0 {
			sb.WriteByte(c)
			continue
		}
		sb.WriteByte('%')
		sb.WriteByte("0123456789ABCDEF"[c>>4])
		sb.WriteByte("0123456789ABCDEF"[c&0xf])
	}
	return sb.String()
}

// validURIRef reports whether s is a URI reference strict parsers accept: only URI
// characters, well-formed percent escapes, and url.Parse accepts it.
func validURIRef(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isURIChar(c) {
			return false
		}
		if c == '%' && (i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2])) {
			return false
		}
	}
	_, err := url.Parse(s)
	return err == nil
}

// SourceURI returns the CloudEvents source for an event's Source: unchanged when it is
// already a valid URI reference; a gateway-built "mqtt://<client id>" or "http://<subject>"
// whose id is not a plain host name becomes "mqtt:///<id>" with the id percent-encoded as one
// path segment (an empty authority: percent escapes in a host are refused by common URI
// parsers); anything else is percent-encoded as one relative path segment.
func SourceURI(s string) string {
	for _, scheme := range [...]string{"mqtt://", "http://"} {
		if id, ok := strings.CutPrefix(s, scheme); ok && unreservedOnly(id) {
			return s // a plain host name: valid as it is (the usual case), without url.Parse
		}
	}
	return sourceURI(s)
}

// unreservedOnly reports whether s is not empty and holds only RFC 3986's unreserved
// characters.
func unreservedOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isUnreserved(s[i]) {
			return false
		}
	}
	return s != ""
}

// sourceURI is SourceURI without its fast path.
func sourceURI(s string) string {
	if s == "" {
		return "fleetgate"
	}
	if validURIRef(s) {
		return s
	}
	for _, scheme := range [...]string{"mqtt://", "http://"} {
		if id, ok := strings.CutPrefix(s, scheme); ok {
			return scheme + "/" + escapeSegment(id)
		}
	}
	return escapeSegment(s)
}

// validAbsURI reports whether s is an absolute URI (the dataschema attribute must be one).
func validAbsURI(s string) bool {
	if !validURIRef(s) {
		return false
	}
	u, err := url.Parse(s)
	return err == nil && u.IsAbs()
}

// appendContextAttributes appends the event's context as extension attributes (string values).
func appendContextAttributes(dst []byte, e *event.Event) []byte {
	attr := func(name, v string) {
		if v == "" {
			return
		}
		dst = append(dst, ',', '"')
		dst = append(dst, name...)
		dst = append(dst, '"', ':')
		dst = appendJSONString(dst, v)
	}
	if s := e.Meta[MetaCEDataschema]; s != "" && validAbsURI(s) {
		attr("dataschema", s)
	}
	attr("protocol", e.Protocol)
	attr("clientid", e.Meta[metaClientID])
	if e.Protocol == event.ProtocolMQTT {
		attr("qos", strconv.Itoa(int(e.QoS)))
		attr("retain", strconv.FormatBool(e.Retain))
	}
	attr("responsetopic", e.Meta[MetaResponseTopic])
	attr("correlationdata", e.Meta[MetaCorrelationData])
	attr("payloadformat", e.Meta[MetaPayloadFormat])
	attr("sendersource", e.Meta[MetaCESource])
	attr("traceparent", e.Meta[MetaTraceparent])
	attr("tracestate", e.Meta[MetaTracestate])
	if len(e.Meta) == 0 {
		return dst
	}
	var keysBuf [8]string
	keys := keysBuf[:0] // of the meta attribute
	plain := true       // every key and value of it needs no JSON escaping
	var exts []string
	isError := e.Type == ErrorEventType
	for k, v := range e.Meta {
		if name, ok := strings.CutPrefix(k, MetaCEExtPrefix); ok {
			if ValidAttributeName(name) && !ownAttributes[name] {
				exts = append(exts, name)
			}
			continue
		}
		if strings.HasPrefix(k, "$") || isError && isErrorAttribute(k) {
			continue
		}
		keys = append(keys, k)
		plain = plain && plainJSON(k) && plainJSON(v)
	}
	switch {
	case len(keys) == 0:
	case plain:
		dst = appendPlainMeta(dst, e.Meta, keys)
	default:
		b, _ := json.Marshal(metaOf(e.Meta, keys)) // sorted keys; invalid UTF-8 becomes U+FFFD
		attr("meta", string(b))
	}
	sort.Strings(exts)
	for _, name := range exts {
		attr(name, e.Meta[MetaCEExtPrefix+name])
	}
	return dst
}

// appendPlainMeta appends the meta attribute: a JSON string holding the JSON object of
// meta's keys, exactly as encoding/json writes a map[string]string (keys sorted), when no key
// or value needs escaping (plainJSON), without encoding/json's reflection and allocations:
// the usual case, such as an MQTT publish's client id.
func appendPlainMeta(dst []byte, meta map[string]string, keys []string) []byte {
	slices.Sort(keys)
	dst = append(dst, `,"meta":"{`...)
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '\\', '"')
		dst = append(dst, k...)
		dst = append(dst, '\\', '"', ':', '\\', '"')
		dst = append(dst, meta[k]...)
		dst = append(dst, '\\', '"')
	}
	return append(dst, '}', '"')
}

func metaOf(meta map[string]string, keys []string) map[string]string {
	m := make(map[string]string, len(keys))
	for _, k := range keys {
		m[k] = meta[k]
	}
	return m
}

// plainJSON reports whether encoding/json writes s as a string unchanged between quotes:
// printable ASCII other than ", \, <, > and &.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func isErrorAttribute(k string) bool {
	for _, a := range errorAttributes {
		if a == k {
			return true
		}
	}
	return false
}

// sharedTrace returns the traceparent and tracestate all events of b share, if they do.
func sharedTrace(b *Batch) (traceparent, tracestate string) {
	for i := range b.Items {
		m := b.Items[i].Event.Meta
		tp, ts := m[MetaTraceparent], m[MetaTracestate]
		if tp == "" || i > 0 && (tp != traceparent || ts != tracestate) {
			return "", ""
		}
		traceparent, tracestate = tp, ts
	}
	return traceparent, tracestate
}
