// Package ingest is fleetgate's front door: Gateway.Accept turns authenticated events into
// durable log entries routed by the live rules, and the HTTP endpoint feeds it from apps.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// Router chooses the functions an event goes to: the live rule set.
type Router interface {
	// Route appends the targets for ev to dst and returns it. It must be safe for concurrent use.
	Route(ev *event.Event, dst []storage.Target) []storage.Target
}

// RouterFunc adapts a function to Router.
type RouterFunc func(ev *event.Event, dst []storage.Target) []storage.Target

// Route implements Router.
func (f RouterFunc) Route(ev *event.Event, dst []storage.Target) []storage.Target { return f(ev, dst) }

// DefaultRouter sends every event to the built-in log function under the rule "default".
var DefaultRouter = RouterFunc(func(_ *event.Event, dst []storage.Target) []storage.Target {
	return append(dst, storage.Target{Function: "log", Rule: "default"})
})

// Options configures a Gateway.
type Options struct {
	Store   storage.Backend
	Router  Router // nil: DefaultRouter
	Metrics *metrics.Set
	Logger  *slog.Logger
	Now     func() time.Time
}

// Gateway accepts authenticated events: it assigns ids, routes them by the live rules, and
// appends them to the durable log. It is safe for concurrent use.
type Gateway struct {
	store  storage.Backend
	router Router
	log    *slog.Logger
	now    func() time.Time

	accepted, duplicates, refused *metrics.Counter
	appendSeconds                 *metrics.PrometheusHistogram
	// unrouted counts accepted events no rule chose a function for, by protocol.
	unrouted struct{ mqtt, http, other *metrics.Counter }
	// byProtocol counts accepted events by protocol (other: function outputs re-ingested).
	byProtocol struct{ mqtt, http, other *metrics.Counter }
}

// New returns a Gateway over opts.Store.
func New(opts Options) (*Gateway, error) {
	if opts.Store == nil {
		return nil, errors.New("ingest: no store")
	}
	if opts.Router == nil {
		opts.Router = DefaultRouter
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
	g := &Gateway{
		store: opts.Store, router: opts.Router, log: opts.Logger, now: opts.Now,
		accepted:      m.NewCounter("fleetgate_ingest_events_accepted_total"),
		duplicates:    m.NewCounter("fleetgate_ingest_events_duplicate_total"),
		refused:       m.NewCounter("fleetgate_ingest_events_refused_total"),
		appendSeconds: m.NewPrometheusHistogram("fleetgate_ingest_append_seconds"),
	}
	g.unrouted.mqtt = m.NewCounter(`fleetgate_events_unrouted_total{protocol="mqtt"}`)
	g.unrouted.http = m.NewCounter(`fleetgate_events_unrouted_total{protocol="http"}`)
	g.unrouted.other = m.NewCounter(`fleetgate_events_unrouted_total{protocol="other"}`)
	g.byProtocol.mqtt = m.NewCounter(`fleetgate_ingest_events_by_protocol_total{protocol="mqtt"}`)
	g.byProtocol.http = m.NewCounter(`fleetgate_ingest_events_by_protocol_total{protocol="http"}`)
	g.byProtocol.other = m.NewCounter(`fleetgate_ingest_events_by_protocol_total{protocol="other"}`)
	return g, nil
}

// AcceptOptions are per-call options of Accept.
type AcceptOptions struct {
	// IdempotencyKey, if set, makes the call idempotent for IdempotencyTTL (24 h): a repeat of a
	// call with the same key from the same subject is acknowledged again with the ids of the
	// first time, and nothing is stored twice.
	IdempotencyKey string
	// Received, if set, is when the events were received (the start of
	// fleetgate_ingest_append_seconds, and the time of an event without one); the call's own
	// time otherwise. A caller that has just read the clock passes it here.
	Received time.Time
}

// Accept stores events durably and returns nil only once they are fsynced; then each is
// delivered at least once to every function the live rules chose for it. Every event gets an
// ID (a ULID that carries its commit sequence number, set when it is committed) unless it
// carries one: an event that carries its own ID and was accepted with the same CloudEvents
// source (Meta "$ce_source", or none) from the same tenant and subject in the last 24 h is
// acknowledged again but not stored twice.
// On error nothing was stored.
func (g *Gateway) Accept(ctx context.Context, events []*event.Event, opts AcceptOptions) error {
	ch := make(chan error, 1)
	g.AcceptAsync(events, opts, func(err error) { ch <- err })
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AcceptAsync is Accept that calls done exactly once, when the events are durable or have
// been refused, instead of blocking. done must not block. An event without an ID gets one
// when it is committed (event.NewSeqID): read ev.ID only once done has run.
func (g *Gateway) AcceptAsync(events []*event.Event, opts AcceptOptions, done func(error)) {
	if len(events) == 0 {
		done(nil)
		return
	}
	start := opts.Received
	if start.IsZero() {
		start = g.now()
	}
	entries := make([]*storage.Entry, len(events))
	backing := make([]storage.Entry, len(events))
	for i, ev := range events {
		if ev.Topic == "" {
			done(fmt.Errorf("%w: event %d has no topic", ErrInvalid, i))
			return
		}
		e := &backing[i]
		e.Event = ev
		// An event without an id gets one from the log when it is committed (event.NewSeqID:
		// it carries its seq, so its fate needs no index); nothing here reads it before.
		switch {
		case opts.IdempotencyKey != "":
			e.IdempotencyKey = "r\x00" + ev.Tenant + "\x00" + ev.Subject + "\x00" + opts.IdempotencyKey + "\x00" + strconv.Itoa(i)
		case ev.ID != "":
			e.IdempotencyKey = eventKey(ev)
		}
		if ev.Time.IsZero() {
			ev.Time = start
		}
		e.Targets = g.router.Route(ev, nil)
		entries[i] = e
	}
	g.store.AppendAsync(entries, func(err error) {
		if err != nil {
			g.refused.Add(len(events))
			done(classify(err))
			return
		}
		g.appendSeconds.UpdateDuration(start)
		for _, e := range entries {
			switch {
			case e.Duplicate:
				g.duplicates.Inc()
			case len(e.Targets) == 0:
				g.accepted.Inc()
				g.countProtocol(e.Event.Protocol)
				g.countUnrouted(e.Event.Protocol)
			default:
				g.accepted.Inc()
				g.countProtocol(e.Event.Protocol)
			}
		}
		done(nil)
	})
}

// CESourceKey is the Meta key of a sender's own CloudEvents source (set only by the gateway).
const CESourceKey = "$ce_source"

// eventKey is the idempotency identity of an event that carries its own id: the CloudEvents
// identity (source + id), where source is the sender's own CloudEvents source (Meta
// "$ce_source", or empty), within the tenant and the authenticated subject (so that a sender
// cannot suppress another's events by reusing their ids). The key of an event without a
// source is what it was before sources counted.
func eventKey(ev *event.Event) string {
	src := ev.Meta[CESourceKey]
	if src == "" {
		return "e\x00" + ev.Tenant + "\x00" + ev.Subject + "\x00" + ev.ID
	}
	// The source's length comes first: no source or id can make another's key.
	return "s\x00" + ev.Tenant + "\x00" + ev.Subject + "\x00" + strconv.Itoa(len(src)) + ":" + src + "\x00" + ev.ID
}

// countUnrouted counts an accepted event that no rule chose a function for. It is acknowledged
// and stored like any other (its log entry is deleted by retention, as nothing refers to it), so
// a rule set that misses a topic shows here rather than as silence.
func (g *Gateway) countUnrouted(protocol string) {
	switch protocol {
	case event.ProtocolMQTT:
		g.unrouted.mqtt.Inc()
	case event.ProtocolHTTP:
		g.unrouted.http.Inc()
	default:
		g.unrouted.other.Inc()
	}
}

// countProtocol counts an accepted event by the protocol it came in on.
func (g *Gateway) countProtocol(protocol string) {
	switch protocol {
	case event.ProtocolMQTT:
		g.byProtocol.mqtt.Inc()
	case event.ProtocolHTTP:
		g.byProtocol.http.Inc()
	default:
		g.byProtocol.other.Inc()
	}
}

func classify(err error) error {
	// Both sentinels stay visible: callers that care (the broker: disk full → quota exceeded)
	// can still tell storage.ErrFull from storage.ErrClosed.
	switch {
	case errors.Is(err, storage.ErrBusy):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, storage.ErrFull), errors.Is(err, storage.ErrClosed):
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	case errors.Is(err, storage.ErrTooLarge):
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case errors.Is(err, storage.ErrInvalid):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
