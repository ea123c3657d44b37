// Package sdk lets a fleetgate wasm function be a plain Go func (a Handler) and implements the
// module side of the gateway's wasm ABI; it depends on the standard library only. Write
//
//	func init() { sdk.Register(handle) } // reactor: one instance serves many batches
//	func main() { sdk.Run(handle) }      // command: used only when built without -buildmode=c-shared
//
// and build a reactor (the fast way: the gateway keeps instances alive and calls them per batch):
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o f.wasm .
//
// or, the slow way, a command (the Go runtime starts on every batch):
//
//	GOOS=wasip1 GOARCH=wasm go build -o f.wasm .
//
// Both receive a batch as the JSON array of CloudEvents 1.0 an http function receives and answer
// with the JSON an http function answers with ({"failed":[...],"publish":[...]}).
//
// # Reactor ABI (version 1)
//
// A reactor module exports its linear memory as "memory", "_initialize" (run once by the gateway
// when it starts an instance; Go runs package init functions there, so Register is called) and:
//
//	fleetgate_alloc(size u32) u32
//	    returns the address of a guest buffer of at least size bytes (size >= 1), which the
//	    guest keeps alive and unchanged until the next fleetgate_alloc call. The gateway writes
//	    each batch there, and calls fleetgate_alloc again only for a batch bigger than size.
//	fleetgate_handle(ptr u32, len u32) u64
//	    handles the batch at ptr..ptr+len and returns addr<<32 | n: the answer is the n bytes at
//	    addr, valid until the next call into the module. n == 0 means every event succeeded.
//	    The answer is a result object {"failed":[ids],"publish":[outputs]}, or {"error":"..."}
//	    to fail the whole batch (it is retried, later bisected and dead-lettered).
//
// Calls into one instance never overlap; one instance serves many batches, one at a time, so
// package-level state survives between batches (but instances come and go: never rely on it
// for correctness). A trap, a proc_exit, running past the function's timeout or growing memory
// past memory_limit_mb fails the batch, and the gateway discards that instance. The module's
// stdout and stderr are logged by the gateway under the function's name; environment variables
// come from the function's env. Handler panics are recovered and fail only their batch.
//
// # Command ABI
//
// A command module (exports _start) is instantiated for each batch: the batch on stdin, the
// answer on stdout, the handler's prints (Run redirects os.Stdout) and errors on stderr; exit
// status 0 is success, anything else fails the batch.
package sdk

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Event is one CloudEvent of a batch. Besides the CloudEvents attributes it carries the
// event's context as the gateway sends it (extension attributes, all strings; empty when
// absent): see "The batch: CloudEvents 1.0" in the functions README.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"` // the authenticated sender
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	DataSchema      string          `json:"dataschema,omitempty"`  // the sender's dataschema
	Data            json.RawMessage `json:"data,omitempty"`        // the payload when it is JSON, or text as a JSON string
	DataBase64      []byte          `json:"data_base64,omitempty"` // the payload otherwise (decoded)
	Topic           string          `json:"topic,omitempty"`       // MQTT topic or HTTP path after /v1/events/
	Tenant          string          `json:"tenant,omitempty"`
	Rule            string          `json:"rule,omitempty"`            // the rule that routed the event here
	Protocol        string          `json:"protocol,omitempty"`        // "mqtt" or "http"
	ClientID        string          `json:"clientid,omitempty"`        // the MQTT client id
	QoS             string          `json:"qos,omitempty"`             // MQTT QoS: "0", "1" or "2"
	Retain          string          `json:"retain,omitempty"`          // MQTT retain flag: "true" or "false"
	ResponseTopic   string          `json:"responsetopic,omitempty"`   // MQTT 5 response topic
	CorrelationData string          `json:"correlationdata,omitempty"` // MQTT 5 correlation data, base64
	PayloadFormat   string          `json:"payloadformat,omitempty"`   // "utf8" or "bytes"
	SenderSource    string          `json:"sendersource,omitempty"`    // the sender's own CloudEvents source
	Traceparent     string          `json:"traceparent,omitempty"`     // W3C trace context
	Tracestate      string          `json:"tracestate,omitempty"`
	Meta            string          `json:"meta,omitempty"` // request metadata as a JSON object of strings; see MetaMap
	// Extensions holds the other string attributes: the sender's own CloudEvents extensions.
	Extensions map[string]string `json:"-"`
}

// knownAttributes are the members Event decodes into fields.
var knownAttributes = [...]string{"specversion", "id", "source", "type", "subject", "time",
	"datacontenttype", "dataschema", "data", "data_base64", "topic", "tenant", "rule", "protocol",
	"clientid", "qos", "retain", "responsetopic", "correlationdata", "payloadformat",
	"sendersource", "traceparent", "tracestate", "meta"}

type eventFields Event

// UnmarshalJSON decodes an event as encoding/json does into its fields, and collects the other
// string members into Extensions.
func (e *Event) UnmarshalJSON(b []byte) error {
	var f eventFields
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	f.Extensions = nil
next:
	for k, v := range all {
		for _, a := range knownAttributes {
			if strings.EqualFold(k, a) {
				continue next
			}
		}
		var s string
		if len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil {
			if f.Extensions == nil {
				f.Extensions = map[string]string{}
			}
			f.Extensions[k] = s
		}
	}
	*e = Event(f)
	return nil
}

// MetaMap returns the request metadata (HTTP headers, MQTT 5 user properties, client_id), or nil.
func (e *Event) MetaMap() map[string]string {
	if e.Meta == "" {
		return nil
	}
	var m map[string]string
	if json.Unmarshal([]byte(e.Meta), &m) != nil {
		return nil
	}
	return m
}

// Payload returns the event's data: the JSON text, the text of a non-JSON payload (sent as a
// JSON string), or the decoded binary payload.
func (e *Event) Payload() []byte {
	if len(e.Data) > 0 {
		if e.Data[0] == '"' && !isJSONType(e.DataContentType) {
			var s string
			if json.Unmarshal(e.Data, &s) == nil {
				return []byte(s)
			}
		}
		return e.Data
	}
	return e.DataBase64
}

// isJSONType reports whether ct is a JSON media type (or absent, which the gateway sends only
// with JSON data).
func isJSONType(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(strings.ToLower(ct))
	return ct == "" || ct == "application/json" || strings.HasSuffix(ct, "+json")
}

// Decode unmarshals the event's JSON payload into v.
func (e *Event) Decode(v any) error { return json.Unmarshal(e.Payload(), v) }

// Output is one message for the gateway to publish to devices. A JSON string payload is
// published as its text; any other JSON value as its JSON encoding.
//
// With Reply set it answers the MQTT 5 request of event ID instead (no Topic, no Retain): the
// gateway publishes it to that event's response topic with its correlation data, if the
// requester may subscribe to that topic. ID may be empty when the batch holds one event.
type Output struct {
	Topic   string          `json:"topic,omitempty"`
	Payload json.RawMessage `json:"payload"`
	QoS     byte            `json:"qos"`
	Retain  bool            `json:"retain,omitempty"`
	Reply   bool            `json:"reply,omitempty"`
	ID      string          `json:"id,omitempty"`
}

// Result is the handler's answer: ids of events to retry, and outputs to publish. A zero
// Result means every event was handled.
type Result struct {
	Failed  []string `json:"failed,omitempty"`
	Publish []Output `json:"publish,omitempty"`
}

// Fail marks the event with id as failed: the gateway retries it (and only it).
func (r *Result) Fail(id string) { r.Failed = append(r.Failed, id) }

// Emit adds an output publishing payload (marshalled as JSON) to topic with qos.
func (r *Result) Emit(topic string, payload any, qos byte) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("sdk: encoding payload for %s: %w", topic, err)
	}
	r.Publish = append(r.Publish, Output{Topic: topic, Payload: b, QoS: qos})
	return nil
}

// Reply adds an output answering the request of the event with id (payload marshalled as
// JSON), published to its response topic with its correlation data.
func (r *Result) Reply(id string, payload any, qos byte) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("sdk: encoding reply to %s: %w", id, err)
	}
	r.Publish = append(r.Publish, Output{Reply: true, ID: id, Payload: b, QoS: qos})
	return nil
}

// Handler processes one batch. Returning an error fails the whole batch: the gateway retries it.
type Handler func(events []Event) (Result, error)

// Handle reads a batch from in, calls h and writes its answer to out.
func Handle(in io.Reader, out io.Writer, h Handler) error {
	batch, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("sdk: reading batch: %w", err)
	}
	events, err := decodeBatch(batch)
	if err != nil {
		return fmt.Errorf("sdk: decoding batch: %w", err)
	}
	res, err := h(events)
	if err != nil {
		return err
	}
	if len(res.Failed) == 0 && len(res.Publish) == 0 {
		return nil
	}
	b, err := json.Marshal(res)
	if err != nil {
		return fmt.Errorf("sdk: encoding result: %w", err)
	}
	_, err = out.Write(b)
	return err
}

// Register makes h the module's handler for the reactor ABI (fleetgate_handle). Call it from an
// init function: when the module is built with -buildmode=c-shared, main is never run.
// A later call replaces the handler.
func Register(h Handler) { registered = h }

// Run is a function's main: it serves one batch from stdin to stdout and exits with status 0,
// or 1 (with the error on stderr) when h or the I/O failed, which fails the batch.
func Run(h Handler) {
	out := os.Stdout
	os.Stdout = os.Stderr // the handler's prints are logs, not the answer
	if err := Handle(os.Stdin, out, h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}
