// Package shadow keeps each device's state document (its shadow): what the device reported,
// what apps and operators desire, and the delta between them, durably in the gateway's small
// KV, with optimistic concurrency per device.
package shadow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// KV is the small durable key-value store shadows live in (*storage.Store satisfies it; a
// cluster implementation may be another). Put must be durable when it returns.
type KV interface {
	Get(key string) ([]byte, bool, error)
	Put(key string, value []byte) error
	Delete(key string) error
	Scan(prefix string, fn func(key string, value []byte) error) error
}

// Events takes the event of every accepted update into the gateway durably, routed by the
// rules like any event (ingest.Gateway, adapted, satisfies it).
type Events interface {
	Accept(ctx context.Context, events []*event.Event) error
}

// Publisher sends MQTT messages to subscribers (the broker's downlink Publish).
type Publisher interface {
	Publish(topic string, payload []byte, qos byte, retain bool) error
}

// Topics of a device's shadow.
func TopicUpdate(device string) string   { return "$shadow/" + device + "/update" }
func TopicAccepted(device string) string { return "$shadow/" + device + "/update/accepted" }
func TopicRejected(device string) string { return "$shadow/" + device + "/update/rejected" }
func TopicDelta(device string) string    { return "$shadow/" + device + "/delta" }
func TopicGet(device string) string      { return "$shadow/" + device + "/get" }
func TopicGetAccepted(device string) string {
	return "$shadow/" + device + "/get/accepted"
}
func TopicGetRejected(device string) string {
	return "$shadow/" + device + "/get/rejected"
}

// TopicPrefix starts every shadow topic.
const TopicPrefix = "$shadow/"

// DeviceOfTopic returns the device a shadow topic names, and the rest after it
// ("update", "update/accepted", "delta", ...); ok is false when topic is no shadow topic.
func DeviceOfTopic(topic string) (device, rest string, ok bool) {
	t, found := strings.CutPrefix(topic, TopicPrefix)
	if !found {
		return "", "", false
	}
	device, rest, _ = strings.Cut(t, "/")
	return device, rest, device != ""
}

// DefaultMaxBytes is shadow.max_bytes' default.
const DefaultMaxBytes = 8192

// Options configures a Service.
type Options struct {
	KV        KV        // required
	MaxBytes  int       // largest encoded document; 0 means DefaultMaxBytes
	Events    Events    // nil: accepted updates are not events
	Publisher Publisher // nil: nothing is published over MQTT
	Metrics   *metrics.Set
	Logger    *slog.Logger
	Now       func() time.Time
}

// Sender is who sends an update, for the event of the update.
type Sender struct {
	Subject, Tenant string
	Protocol        string // event.ProtocolMQTT or event.ProtocolHTTP
	Source          string // "mqtt://<client id>" or "http://<sub>"
	Claims          map[string]any
	ClaimsJSON      []byte
}

// Service reads and updates shadows. Updates of one device are serialized in this process;
// each is read, checked against its version, written durably, turned into an event and
// published, in that order, before the next one starts. Safe for concurrent use.
type Service struct {
	kv       KV
	maxBytes int
	events   Events
	pub      Publisher
	log      *slog.Logger
	now      func() time.Time
	locks    [256]sync.Mutex

	accepted, rejVersion, rejInvalid, rejLarge, failed, eventFailed, publishFailed *metrics.Counter
}

// New returns a Service over opts.KV.
func New(opts Options) (*Service, error) {
	if opts.KV == nil {
		return nil, errors.New("shadow: Options.KV is required")
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxBytes < 256 {
		return nil, fmt.Errorf("shadow.max_bytes: must be at least 256, got %d", opts.MaxBytes)
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := opts.Metrics
	return &Service{
		kv: opts.KV, maxBytes: opts.MaxBytes, events: opts.Events, pub: opts.Publisher, log: opts.Logger, now: opts.Now,
		accepted:      m.NewCounter(`fleetgate_shadow_updates_total{result="accepted"}`),
		rejVersion:    m.NewCounter(`fleetgate_shadow_updates_total{result="version_conflict"}`),
		rejInvalid:    m.NewCounter(`fleetgate_shadow_updates_total{result="invalid"}`),
		rejLarge:      m.NewCounter(`fleetgate_shadow_updates_total{result="too_large"}`),
		failed:        m.NewCounter(`fleetgate_shadow_updates_total{result="store_failed"}`),
		eventFailed:   m.NewCounter(`fleetgate_shadow_event_failures_total`),
		publishFailed: m.NewCounter(`fleetgate_shadow_publish_failures_total`),
	}, nil
}

// key is where the shadow of device (in tenant) is stored.
func key(tenant, device string) string { return "shadow/" + tenant + "\x00" + device }

func (s *Service) lock(k string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(k))
	return &s.locks[h.Sum32()%uint32(len(s.locks))]
}

// Get returns the shadow of device, or ErrNotFound.
func (s *Service) Get(tenant, device string) (*Document, error) {
	if !validDevice(device) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidDevice, device)
	}
	b, ok, err := s.kv.Get(key(tenant, device))
	if err != nil {
		return nil, fmt.Errorf("reading shadow of %q: %w", device, err)
	}
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, device)
	}
	return Decode(b)
}

// ConflictError is the error of an update whose version is stale: it wraps ErrVersionConflict
// and says the current version.
type ConflictError struct {
	Device        string
	Want, Current int64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("shadow of %q is at version %d, the update names version %d: read it again and retry", e.Device, e.Current, e.Want)
}

func (e *ConflictError) Unwrap() error { return ErrVersionConflict }

// Update applies body (see ParseUpdate) to the shadow of device, creating it if needed, and
// returns the new document. When it returns nil the document is durable; then the update is
// taken in as an event on TopicAccepted(device) (data: the new document) and the document is
// published on TopicAccepted, and the delta on TopicDelta with QoS 1 when it is not empty and
// differs from the previous one. A failure of the event or of a publish after the write is
// logged and counted, not returned. On error nothing was changed.
func (s *Service) Update(ctx context.Context, from Sender, tenant, device string, body []byte) (*Document, error) {
	if !validDevice(device) {
		return nil, fmt.Errorf("%w: %q", ErrInvalidDevice, device)
	}
	u, err := ParseUpdate(body)
	if err != nil {
		s.rejInvalid.Inc()
		return nil, err
	}
	k := key(tenant, device)
	mu := s.lock(k)
	mu.Lock()
	defer mu.Unlock()
	// The lock orders this process's updates of one device. Where the KV is shared by several
	// gateways (cluster mode) it also offers CompareAndPut: an update is stored only if the
	// document is still the one it was computed from, else it is computed again from the new one.
	cas, _ := s.kv.(interface {
		CompareAndPut(key string, old []byte, found bool, value []byte) error
	})
	var cur, next *Document
	var enc []byte
	for try := 0; ; try++ {
		cur = Empty()
		b, ok, err := s.kv.Get(k)
		if err != nil {
			s.failed.Inc()
			return nil, fmt.Errorf("reading shadow of %q: %w", device, err)
		}
		if ok {
			if cur, err = Decode(b); err != nil {
				s.failed.Inc()
				return nil, err
			}
		}
		if u.Version != 0 && u.Version != cur.Version {
			s.rejVersion.Inc()
			return nil, &ConflictError{Device: device, Want: u.Version, Current: cur.Version}
		}
		next = Apply(cur, u, s.now().Unix())
		enc, err = json.Marshal(next)
		if err != nil {
			s.rejInvalid.Inc()
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if len(enc) > s.maxBytes {
			s.rejLarge.Inc()
			return nil, fmt.Errorf("%w: the shadow of %q would be %d bytes, shadow.max_bytes is %d", ErrTooLarge, device, len(enc), s.maxBytes)
		}
		if cas == nil {
			err = s.kv.Put(k, enc)
		} else {
			err = cas.CompareAndPut(k, b, ok, enc)
			if errors.Is(err, storage.ErrChanged) && try < casTries {
				continue // another gateway updated it meanwhile: apply to the new document
			}
		}
		if err != nil {
			s.failed.Inc()
			return nil, fmt.Errorf("storing shadow of %q: %w", device, err)
		}
		break
	}
	s.accepted.Inc()
	s.announce(ctx, from, device, enc, cur, next)
	return next, nil
}

// casTries bounds how often an update is computed again because another gateway stored a
// newer document meanwhile.
const casTries = 8

// announce turns an accepted update into an event and MQTT messages.
func (s *Service) announce(ctx context.Context, from Sender, device string, enc []byte, prev, next *Document) {
	if s.events != nil {
		ev := &event.Event{
			Source: from.Source, Type: "fleetgate.shadow.updated", Subject: from.Subject, Tenant: from.Tenant,
			Time: s.now(), ContentType: "application/json", Data: enc, Protocol: from.Protocol,
			Topic: TopicAccepted(device), Claims: from.Claims, ClaimsJSON: from.ClaimsJSON,
			Meta: map[string]string{"device": device},
		}
		if err := s.events.Accept(ctx, []*event.Event{ev}); err != nil {
			s.eventFailed.Inc()
			s.log.Error("shadow updated, but its event was not stored", "device", device, "version", next.Version, "error", err)
		}
	}
	if s.pub == nil {
		return
	}
	if err := s.pub.Publish(TopicAccepted(device), enc, 1, false); err != nil {
		s.publishFailed.Inc()
		s.log.Warn("shadow accepted message not published", "device", device, "error", err)
	}
	if len(next.State.Delta) > 0 && !jsonEqual(next.State.Delta, prev.State.Delta) {
		d, _ := json.Marshal(DeltaMessage{State: next.State.Delta, Version: next.Version, Timestamp: next.Timestamp})
		if err := s.pub.Publish(TopicDelta(device), d, 1, false); err != nil {
			s.publishFailed.Inc()
			s.log.Warn("shadow delta not published", "device", device, "error", err)
		}
	}
}

// DeltaMessage is the payload on TopicDelta.
type DeltaMessage struct {
	State     map[string]any `json:"state"`
	Version   int64          `json:"version"`
	Timestamp int64          `json:"timestamp"`
}

// Rejection is the payload on TopicRejected, and the body of an HTTP error about a shadow.
type Rejection struct {
	Error   string `json:"error"`
	Code    string `json:"code"`
	Version int64  `json:"version,omitempty"` // the current version, on a version conflict
}

// RejectionFor maps an Update error to its code, HTTP status and payload.
func RejectionFor(err error) (status int, r Rejection) {
	r.Error = err.Error()
	var ce *ConflictError
	switch {
	case errors.As(err, &ce):
		r.Code, r.Version = "version_conflict", ce.Current
		return 409, r
	case errors.Is(err, ErrNotFound):
		r.Code = "not_found"
		return 404, r
	case errors.Is(err, ErrTooLarge):
		r.Code = "too_large"
		return 413, r
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrInvalidDevice):
		r.Code = "invalid"
		return 400, r
	default:
		r.Code = "unavailable"
		return 503, r
	}
}

// UpdateFromDevice is Update for a message on TopicUpdate(device): a refusal is published on
// TopicRejected(device) (the device learns it there; MQTT acks only say the message arrived).
func (s *Service) UpdateFromDevice(ctx context.Context, from Sender, tenant, device string, body []byte) {
	if _, err := s.Update(ctx, from, tenant, device, body); err != nil {
		if s.pub == nil {
			return
		}
		_, r := RejectionFor(err)
		b, _ := json.Marshal(r)
		if perr := s.pub.Publish(TopicRejected(device), b, 1, false); perr != nil {
			s.publishFailed.Inc()
		}
	}
}

// GetForDevice answers a message on TopicGet(device): the document on
// TopicGetAccepted(device), or a Rejection (code "not_found" when there is none) on
// TopicGetRejected(device). A device that starts a clean session reads its shadow this way.
func (s *Service) GetForDevice(tenant, device string) {
	if s.pub == nil {
		return
	}
	doc, err := s.Get(tenant, device)
	topic := TopicGetAccepted(device)
	var b []byte
	if err != nil {
		_, r := RejectionFor(err)
		b, _ = json.Marshal(r)
		topic = TopicGetRejected(device)
	} else {
		b, _ = json.Marshal(doc)
	}
	if perr := s.pub.Publish(topic, b, 1, false); perr != nil {
		s.publishFailed.Inc()
	}
}

func validDevice(d string) bool {
	return d != "" && len(d) <= 256 && d[0] != '$' && !strings.ContainsAny(d, "/+#\x00")
}
