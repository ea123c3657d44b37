package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// Invoker calls one function with one batch. It returns an error when the batch as a whole
// failed (nothing of it may be acknowledged); a nil error with Result.Failed naming event ids
// means only those failed. Invoke must honour ctx (the function's timeout) and be safe for
// concurrent use by up to the function's concurrency.
type Invoker interface {
	Invoke(ctx context.Context, b *Batch) (Result, error)
}

// Batch is what a function receives: its name and the items, in commit order.
type Batch struct {
	Function string
	Items    []storage.Item
}

// Result is a function's answer to a batch: ids of events that failed (to be retried) and
// outputs to publish. It is the JSON shape of an http function's 2xx body and of a wasm
// module's stdout: {"failed":["id",...],"publish":[{"topic":"...","payload":...,"qos":1}]}
// (a reply: {"reply":true,"id":"...","payload":...}).
type Result struct {
	Failed  []string `json:"failed,omitempty"`
	Publish []Output `json:"publish,omitempty"`
}

// Output is one message a function asks the gateway to publish to devices.
//
// With Reply set it answers a request instead (MQTT 5 request/response): it has no Topic and
// no Retain; it goes to the response topic of the batch's event with id ID ("$response_topic"
// in its Meta), with that event's correlation data. ID may be left empty in the answer to a
// batch of one event only.
type Output struct {
	Topic   string          `json:"topic,omitempty"`
	Payload json.RawMessage `json:"payload"`
	QoS     byte            `json:"qos"`
	Retain  bool            `json:"retain"`
	Reply   bool            `json:"reply,omitempty"`
	ID      string          `json:"id,omitempty"` // the event a reply answers
}

// Publisher sends a message to devices; the broker's downlink satisfies it.
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, retain bool) error
}

// Replier is a Publisher that can also answer requests (the broker's downlink is one).
// PublishReply publishes payload with qos to req's response topic ("$response_topic" in its
// Meta) with its correlation data ("$correlation_data", base64), only if req's sender (by the
// claims stored with req) may subscribe to that topic: otherwise it returns an error wrapping
// ErrReplyRefused, which is not retried. Other errors are retried like those of Publish.
type Replier interface {
	PublishReply(req *event.Event, payload []byte, qos byte) error
}

// Env is what a factory gets besides the definition: shared services of the dispatcher.
type Env struct {
	Publisher Publisher
	DataDir   string    // wasm compilation cache under DataDir/wasm-cache
	LogWriter io.Writer // the log function's output
	Logger    *slog.Logger
}

// Factory builds the invoker of one function from its definition (defaults applied).
// An invoker that also implements io.Closer is closed when the dispatcher stops.
type Factory func(def Definition, env Env) (Invoker, error)

// Registry maps function types to factories. Its methods are safe for concurrent use.
type Registry struct {
	mu sync.RWMutex
	m  map[string]Factory
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{m: make(map[string]Factory)} }

// DefaultRegistry returns a new registry holding the built-in types http, wasm, republish and log.
func DefaultRegistry() *Registry {
	r := NewRegistry()
	r.Register(TypeHTTP, newHTTPInvoker)
	r.Register(TypeWASM, newWASMInvoker)
	r.Register(TypeRepublish, newRepublishInvoker)
	r.Register(TypeLog, newLogInvoker)
	return r
}

// Register adds or replaces the factory for typ.
func (r *Registry) Register(typ string, f Factory) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[typ] = f
}

// Has reports whether typ is registered.
func (r *Registry) Has(typ string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.m[typ]
	return ok
}

// Types lists the registered types, sorted.
func (r *Registry) Types() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.m))
	for t := range r.m {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// New builds the invoker for def.
func (r *Registry) New(def Definition, env Env) (Invoker, error) {
	r.mu.RLock()
	f, ok := r.m[def.Type]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("function %s: %w %q", def.Name, ErrUnknownType, def.Type)
	}
	inv, err := f(def, env)
	if err != nil {
		return nil, fmt.Errorf("function %s (%s): %w", def.Name, def.Type, err)
	}
	return inv, nil
}

// InvokerFunc adapts a plain function to Invoker.
type InvokerFunc func(ctx context.Context, b *Batch) (Result, error)

// Invoke calls f.
func (f InvokerFunc) Invoke(ctx context.Context, b *Batch) (Result, error) { return f(ctx, b) }

var _ Invoker = InvokerFunc(nil)
