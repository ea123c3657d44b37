// Package sdk lets a fleetgate wasm function be a plain Go func: write
//
//	func main() { sdk.Run(handle) }
//
// and build with GOOS=wasip1 GOARCH=wasm go build. The gateway runs the module once per batch,
// with the batch (a JSON array of CloudEvents 1.0, the same body an http function receives) on
// stdin; Run decodes it, calls the handler, and writes the answer ({"failed":[...],"publish":[...]})
// on stdout. Anything the handler prints (fmt.Println, log) goes to stderr, which the gateway
// logs under the function's name. The package has no dependency outside the standard library.
package sdk

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"
)

// Event is one CloudEvent of a batch.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject,omitempty"` // the authenticated sender
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`        // the payload when it is JSON
	DataBase64      []byte          `json:"data_base64,omitempty"` // the payload otherwise (decoded)
	Topic           string          `json:"topic,omitempty"`       // MQTT topic or HTTP path after /v1/events/
	Tenant          string          `json:"tenant,omitempty"`
	Rule            string          `json:"rule,omitempty"` // the rule that routed the event here
}

// Payload returns the event's data: the JSON text, or the decoded binary payload.
func (e *Event) Payload() []byte {
	if len(e.Data) > 0 {
		return e.Data
	}
	return e.DataBase64
}

// Decode unmarshals the event's JSON payload into v.
func (e *Event) Decode(v any) error { return json.Unmarshal(e.Payload(), v) }

// Output is one message for the gateway to publish to devices. A JSON string payload is
// published as its text; any other JSON value as its JSON encoding.
type Output struct {
	Topic   string          `json:"topic"`
	Payload json.RawMessage `json:"payload"`
	QoS     byte            `json:"qos"`
	Retain  bool            `json:"retain,omitempty"`
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

// Handler processes one batch. Returning an error fails the whole batch: the gateway retries it.
type Handler func(events []Event) (Result, error)

// Handle reads a batch from in, calls h and writes its answer to out.
func Handle(in io.Reader, out io.Writer, h Handler) error {
	var events []Event
	if err := json.NewDecoder(in).Decode(&events); err != nil {
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
