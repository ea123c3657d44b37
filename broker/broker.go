// Package broker is fleetgate's embedded MQTT 3.1.1/5 broker (mochi-mqtt): listeners, JWT
// authentication and topic policies, durable ingest of every publish with acks only after fsync,
// downlink publishing, and retained messages and sessions kept in the gateway's store.
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/shadow"
	"github.com/fleetgate/fleetgate/storage"
)

// Authenticator verifies the JWT a client sends as its CONNECT password, and builds the
// principal of a client authenticated by its certificate alone (mqtt.tls.cert_role).
type Authenticator interface {
	Verify(token string) (*auth.Principal, error)
	PrincipalFor(subject, tenant, role string, expires time.Time) (*auth.Principal, error)
}

// Acceptor takes events into the gateway durably (ingest.Gateway satisfies it).
type Acceptor interface {
	// Accept returns after the events are durable, or with an error and nothing acknowledged.
	Accept(ctx context.Context, events []*event.Event, opts ingest.AcceptOptions) error
	// AcceptAsync calls done exactly once: after the events are durable, or with the error.
	// done must not block.
	AcceptAsync(events []*event.Event, opts ingest.AcceptOptions, done func(error))
}

var (
	_ Authenticator = (*auth.Verifier)(nil)
	_ mqtt.Hook     = (*authHook)(nil)
	_ mqtt.Hook     = (*persistHook)(nil)
	_ slog.Handler  = minLevel{}
)

// Options are the dependencies of a Broker.
type Options struct {
	Config  Config
	Gateway Acceptor      // required: where publishes go
	Auth    Authenticator // required: verifies CONNECT passwords
	// Store keeps retained messages and persistent sessions (its small KV, keys "mqtt/...").
	// nil keeps them in memory only.
	Store   storage.Backend
	Metrics *metrics.Set // nil: a private set
	Logger  *slog.Logger // nil: slog.Default()
	// Cluster, when set, makes the broker one node of a cluster (see README.md, "Cluster
	// mode"): downlink, retained messages, client ids and persistent sessions work across
	// nodes. Store is then required, and its KV must be the one shared by every node.
	// nil: a single node, and no bus is used.
	Cluster Cluster
	// ClusterHeartbeat is how often this node writes its heartbeat in the shared KV (0:
	// DefaultClusterHeartbeat); a node is taken for dead after 3 heartbeats without one.
	ClusterHeartbeat time.Duration
	// Node names this gateway in presence events and the clients API ("" = the host name,
	// or "local"); cluster mode sets it to cluster.node.
	Node string
	// Shadows takes device shadow updates published on $shadow/{device}/update; nil refuses
	// them like any topic outside the policy.
	Shadows Shadows
	// NewShadows, when Shadows is nil, builds the shadow service with this broker as its
	// publisher (the deltas it sends to devices): both are built in one step, no late binding.
	NewShadows func(b *Broker) (Shadows, error)
}

// Shadows applies a shadow update a device published, and answers a device's get
// (shadow.Service satisfies it). It answers on $shadow/{device}/update|get/accepted or
// /rejected itself.
type Shadows interface {
	UpdateFromDevice(ctx context.Context, from shadow.Sender, tenant, device string, body []byte)
	GetForDevice(tenant, device string)
}

// Broker is the embedded MQTT broker. Create it with New, then Start; Close stops it.
type Broker struct {
	cfg     Config
	tls     *tlsSource // mqtt.tls, reloadable; nil without it
	gw      Acceptor
	auth    Authenticator
	store   storage.Backend
	log     *slog.Logger
	server  *mqtt.Server
	inline  *mqtt.Client  // our own inline client: delivery of committed publishes and downlink
	hooks   []mqtt.Hook   // every hook added to server, in order
	persist *persistHook  // nil without a Store
	cluster *clusterState // nil unless Options.Cluster is set

	// clients whose session another node took over: the persist hook writes nothing for them
	released sync.Map // *mqtt.Client → struct{}
	// halted (tests: a node's death) stops every write to the store
	halted atomic.Bool

	node    string
	shadows Shadows

	presence sync.Map // *mqtt.Client → *presenceConn
	emitter  emitter  // events the broker emits (presence, queue drops)
	queues   sync.Map // tenant-scoped client id → *sessionQueue

	sessions sync.Map // *mqtt.Client → *session

	listeners []*listener
	openConns atomic.Int64 // connections open on all listeners, CONNECT phase included
	ipMu      sync.Mutex
	perIP     map[string]int // open connections by remote IP (when max_conns_per_ip is set)

	retained  *retainedIndex // what max_retained, max_retained_per_client and max_retained_bytes count
	started   atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	pending sync.WaitGroup // AcceptAsync calls whose done has not run yet, and running drains

	// stored sessions read at start: client id → principal re-verified from the stored token
	restoredMu sync.Mutex
	restored   map[string]*auth.Principal

	m brokerMetrics
}

type brokerMetrics struct {
	set                                         *metrics.Set
	connectOK, connectBadToken, connectDenied   *metrics.Counter
	connectFull, connectTimeouts                *metrics.Counter
	connectBadFirst, connectPerIP               *metrics.Counter
	retainedRefused, protocolRefused            *metrics.Counter
	pubAccepted, pubRefused, pubFailed, pubQoS0 *metrics.Counter
	pubPaced                                    *metrics.Counter
	expired                                     *metrics.Counter
	downlink                                    *metrics.Counter
	replies, replyRefused                       *metrics.Counter
	ackLatency                                  *metrics.PrometheusHistogram
	inflight                                    atomic.Int64
	persistErrors                               *metrics.Counter
	presenceConnected, presenceDisconnected     *metrics.Counter
	presenceSuppressed, gatewayEventFailed      *metrics.Counter
	queueDroppedMessages, queueDroppedBytes     *metrics.Counter
}

// New checks the options and builds a broker; nothing listens until Start.
func New(opts Options) (*Broker, error) {
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	if opts.Gateway == nil {
		return nil, fmt.Errorf("%w: Options.Gateway is required", ErrInvalidConfig)
	}
	if opts.Auth == nil {
		return nil, fmt.Errorf("%w: Options.Auth is required", ErrInvalidConfig)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.Cluster != nil && opts.Store == nil {
		return nil, fmt.Errorf("%w: cluster mode needs Options.Store (the KV shared by the nodes)", ErrInvalidConfig)
	}
	if opts.Cluster != nil && opts.Cluster.Node() == "" {
		return nil, fmt.Errorf("%w: cluster mode needs a node name", ErrInvalidConfig)
	}
	b := &Broker{
		cfg:      opts.Config,
		gw:       opts.Gateway,
		auth:     opts.Auth,
		store:    opts.Store,
		log:      opts.Logger,
		restored: map[string]*auth.Principal{},
		retained: newRetainedIndex(opts.Config),
		node:     opts.Node,
		shadows:  opts.Shadows,
	}
	if b.node == "" {
		b.node = defaultNode()
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(b.cfg.MaxClients)
	caps.MaximumPacketSize = uint32(b.cfg.MaxPacketBytes)
	caps.ReceiveMaximum = uint16(b.cfg.ReceiveMaximum)
	caps.MaximumClientWritesPending = int32(b.cfg.OutboundQueue)
	// Inbound topic aliases a client may register (announced in CONNACK by OnPacketEncode;
	// takePublish refuses higher alias numbers). mochi's default is 65535 per connection.
	caps.TopicAliasMaximum = uint16(b.cfg.TopicAliasMax)
	// Messages kept for an offline persistent session, per session (and the cap on a client's
	// announced receive maximum).
	// mochi drops (and only counts) a message past it: queueHook keeps every queue within
	// session_queue_max.messages, dropping the oldest with an event, so this is a backstop
	// for deliveries that race on one session.
	caps.MaximumInflight = uint16(min(65535, b.cfg.SessionQueueMax.Messages+queueSlack))
	// Retained messages and offline messages expire only by their own message expiry interval,
	// not after a broker-wide day.
	caps.MaximumMessageExpiryInterval = 0
	b.server = mqtt.New(&mqtt.Options{
		Capabilities:             caps,
		Logger:                   slog.New(minLevel{h: b.log.Handler(), min: slog.LevelWarn}),
		SysTopicResendInterval:   60,
		ClientNetReadBufferSize:  1024, // per connection; larger packets are read past it
		ClientNetWriteBufferSize: 2048,
	})
	b.inline = b.server.NewClient(nil, mqtt.LocalListener, "fleetgate", true)
	b.inline.Properties.ProtocolVersion = 5

	b.initMetrics(opts.Metrics)
	if b.shadows == nil && opts.NewShadows != nil {
		sh, err := opts.NewShadows(b)
		if err != nil {
			return nil, err
		}
		b.shadows = sh
	}
	if err := b.addHook(&authHook{b: b}); err != nil {
		return nil, err
	}
	if err := b.addHook(&retainHook{b: b}); err != nil { // after authHook: it reads the origin authHook sets
		return nil, err
	}
	if b.store != nil {
		b.persist = &persistHook{b: b, store: b.store}
		if err := b.addHook(b.persist); err != nil {
			return nil, err
		}
	}
	if opts.Cluster != nil {
		b.cluster = newClusterState(b, opts.Cluster, opts.ClusterHeartbeat, opts.Metrics)
		if err := b.addHook(&clusterHook{c: b.cluster}); err != nil {
			return nil, err
		}
	}
	if err := b.addHook(&queueHook{b: b}); err != nil { // after persistHook: it deletes what that one stored
		return nil, err
	}
	if b.cfg.Presence.Enabled {
		if err := b.addHook(newPresenceHook(b)); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// addHook is the only way hooks reach the mochi server, so that checkHooks sees them all.
func (b *Broker) addHook(h mqtt.Hook) error {
	if err := b.server.AddHook(h, nil); err != nil {
		return fmt.Errorf("adding mqtt hook %s: %w", h.ID(), err)
	}
	b.hooks = append(b.hooks, h)
	return nil
}

func (b *Broker) initMetrics(set *metrics.Set) {
	m := &b.m
	m.set = set
	m.connectOK = set.NewCounter(`fleetgate_mqtt_connects_total{result="ok"}`)
	m.connectBadToken = set.NewCounter(`fleetgate_mqtt_connects_total{result="bad_token"}`)
	m.connectDenied = set.NewCounter(`fleetgate_mqtt_connects_total{result="not_authorized"}`)
	m.connectFull = set.NewCounter(`fleetgate_mqtt_connects_total{result="max_clients"}`)
	m.connectTimeouts = set.NewCounter(`fleetgate_mqtt_connects_total{result="timeout"}`)
	m.connectBadFirst = set.NewCounter(`fleetgate_mqtt_connects_total{result="bad_first_packet"}`)
	m.connectPerIP = set.NewCounter(`fleetgate_mqtt_connects_total{result="max_conns_per_ip"}`)
	m.retainedRefused = set.NewCounter(`fleetgate_mqtt_retained_refused_total`)
	m.protocolRefused = set.NewCounter(`fleetgate_mqtt_protocol_disconnects_total`)
	m.pubAccepted = set.NewCounter(`fleetgate_mqtt_publishes_total{result="accepted"}`)
	m.pubRefused = set.NewCounter(`fleetgate_mqtt_publishes_total{result="not_authorized"}`)
	m.pubFailed = set.NewCounter(`fleetgate_mqtt_publishes_total{result="store_failed"}`)
	m.pubQoS0 = set.NewCounter(`fleetgate_mqtt_publishes_qos0_total`)
	m.pubPaced = set.NewCounter(`fleetgate_mqtt_publish_rate_waits_total`)
	m.expired = set.NewCounter(`fleetgate_mqtt_token_expiry_disconnects_total`)
	m.downlink = set.NewCounter(`fleetgate_mqtt_downlink_publishes_total`)
	m.replies = set.NewCounter(`fleetgate_mqtt_replies_total{result="published"}`)
	m.replyRefused = set.NewCounter(`fleetgate_mqtt_replies_total{result="refused"}`)
	m.persistErrors = set.NewCounter(`fleetgate_mqtt_session_store_errors_total`)
	m.ackLatency = set.NewPrometheusHistogram(`fleetgate_mqtt_publish_ack_seconds`)
	m.presenceConnected = set.NewCounter(`fleetgate_presence_events_total{kind="connected"}`)
	m.presenceDisconnected = set.NewCounter(`fleetgate_presence_events_total{kind="disconnected"}`)
	m.presenceSuppressed = set.NewCounter(`fleetgate_presence_suppressed_total`)
	m.gatewayEventFailed = set.NewCounter(`fleetgate_mqtt_gateway_events_failed_total`)
	m.queueDroppedMessages = set.NewCounter(`fleetgate_mqtt_queue_dropped_total{reason="messages"}`)
	m.queueDroppedBytes = set.NewCounter(`fleetgate_mqtt_queue_dropped_total{reason="bytes"}`)
	set.NewGauge(`fleetgate_mqtt_publishes_inflight`, func() float64 { return float64(m.inflight.Load()) })
	info := b.server.Info
	set.NewGauge(`fleetgate_mqtt_clients_connected`, func() float64 { return float64(atomic.LoadInt64(&info.ClientsConnected)) })
	// Not mochi's Info.Retained: that counts $SYS topics and is reset to 0 after a restart.
	set.NewGauge(`fleetgate_mqtt_retained_messages`, func() float64 { return float64(b.retained.len()) })
	set.NewGauge(`fleetgate_mqtt_subscriptions`, func() float64 { return float64(atomic.LoadInt64(&info.Subscriptions)) })
	set.NewGauge(`fleetgate_mqtt_deliveries_dropped_total`, func() float64 { return float64(atomic.LoadInt64(&info.MessagesDropped)) })
	set.NewGauge(`fleetgate_mqtt_deliveries_inflight_dropped_total`, func() float64 {
		return float64(atomic.LoadInt64(&info.InflightDropped))
	})
}

// Start opens every configured listener, restores retained messages and persistent sessions,
// and begins serving. When it returns without error, every listener accepts connections.
func (b *Broker) Start() error {
	if b.closed.Load() {
		return ErrClosed
	}
	if !b.started.CompareAndSwap(false, true) {
		return errors.New("broker: already started")
	}
	if err := b.checkHooks(); err != nil {
		return err
	}
	src, err := newTLSSource(b.cfg.TLS)
	if err != nil {
		return err
	}
	b.tls = src
	var tlsCfg *tls.Config
	if src != nil {
		tlsCfg = src.config()
	}
	var specs []listenerSpec
	switch {
	case tlsCfg != nil && b.cfg.TLSAddr == "":
		if b.cfg.Addr != "" {
			specs = append(specs, listenerSpec{id: "tls", addr: b.cfg.Addr, tls: tlsCfg})
		}
	default:
		if b.cfg.Addr != "" {
			specs = append(specs, listenerSpec{id: "tcp", addr: b.cfg.Addr})
		}
		if tlsCfg != nil {
			specs = append(specs, listenerSpec{id: "tls", addr: b.cfg.TLSAddr, tls: tlsCfg})
		}
	}
	if b.cfg.WSAddr != "" {
		specs = append(specs, listenerSpec{id: "ws", addr: b.cfg.WSAddr, ws: true})
	}
	for _, sp := range specs {
		l, err := b.listen(sp)
		if err != nil {
			b.closeListeners()
			return err
		}
		b.listeners = append(b.listeners, l)
	}
	for _, l := range b.listeners {
		if err := b.server.AddListener(l); err != nil {
			b.closeListeners()
			return fmt.Errorf("adding listener %s: %w", l.id, err)
		}
	}
	if err := b.server.Serve(); err != nil {
		b.closeListeners()
		return fmt.Errorf("starting mqtt server: %w", err)
	}
	if b.cluster != nil {
		if err := b.cluster.start(); err != nil {
			_ = b.server.Close()
			return err
		}
		b.log.Info("mqtt cluster mode", "node", b.cluster.node)
	}
	b.restoreExpiry()
	for _, l := range b.listeners {
		b.log.Info("mqtt listening", "listener", l.id, "addr", l.Address())
	}
	return nil
}

// checkHooks enforces exactly one authority: mochi allows a CONNECT or an ACL check when ANY
// hook allows it, so a second hook providing either would silently widen access.
func (b *Broker) checkHooks() error {
	var authn, acl int
	for _, h := range b.hooks {
		if h.Provides(mqtt.OnConnectAuthenticate) {
			authn++
		}
		if h.Provides(mqtt.OnACLCheck) {
			acl++
		}
	}
	if authn != 1 || acl != 1 {
		return fmt.Errorf("%w: %d answer CONNECT authentication and %d answer ACL checks, want 1 each",
			ErrHookConflict, authn, acl)
	}
	return nil
}

func (b *Broker) closeListeners() {
	for _, l := range b.listeners {
		l.Close(func(string) {})
	}
	b.listeners = nil
}

// Addr returns the address of the plain TCP listener (or of the TLS one on addr when TLS
// replaces it): with "127.0.0.1:0" configured, the port chosen. nil before Start or when
// no such listener is configured.
func (b *Broker) Addr() net.Addr { return b.listenerAddr("tcp", "tls") }

// TLSAddr returns the address of the TLS listener, or nil.
func (b *Broker) TLSAddr() net.Addr { return b.listenerAddr("tls") }

// WSAddr returns the address of the WebSocket listener, or nil.
func (b *Broker) WSAddr() net.Addr { return b.listenerAddr("ws") }

func (b *Broker) listenerAddr(ids ...string) net.Addr {
	for _, id := range ids {
		for _, l := range b.listeners {
			if l.id == id {
				return l.ln.Addr()
			}
		}
	}
	return nil
}

// Publish sends a message to the subscribers of topic (downlink: commands to devices, outputs of
// functions). Each subscriber receives it only if its policy lets it subscribe to topic.
// retain keeps it (durably, when a Store is configured) for future subscribers; an empty payload
// with retain clears the retained message. Delivery to a QoS 1/2 subscriber is at least once
// while its session lives, which for persistent sessions includes broker restarts.
// It does not go through ingest: downlink messages are not events.
func (b *Broker) Publish(topic string, payload []byte, qos byte, retain bool) error {
	return b.publish(topic, payload, qos, retain, 0)
}

// publish is Publish with an MQTT 5 message expiry interval in seconds (0: none).
func (b *Broker) publish(topic string, payload []byte, qos byte, retain bool, expiry uint32) error {
	if b.closed.Load() {
		return ErrClosed
	}
	if !b.started.Load() {
		return ErrNotStarted
	}
	if topic == "" || !mqtt.IsValidFilter(topic, true) {
		return fmt.Errorf("publishing to %q: %w", topic, ErrInvalidTopic)
	}
	if qos > 2 {
		return fmt.Errorf("publishing to %q: %w: %d", topic, ErrInvalidQoS, qos)
	}
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		TopicName:   topic,
		Payload:     payload,
	}
	pk.Properties.MessageExpiryInterval = expiry
	if qos > 0 {
		pk.PacketID = 1 // required by validation; the inline client never acks
	}
	if retain && len(payload) > 0 && !b.retained.fits("", topic, retainedSize(topic, payload)) {
		b.m.retainedRefused.Inc()
		return fmt.Errorf("publishing to %q: %w", topic, ErrRetainedFull)
	}
	if err := b.server.InjectPacket(b.inline, pk); err != nil {
		return fmt.Errorf("publishing to %q: %w", topic, err)
	}
	b.m.downlink.Inc()
	if b.cluster != nil {
		if err := b.cluster.broadcast(pk); err != nil {
			return fmt.Errorf("publishing to %q: delivered on this node only: %w", topic, err)
		}
	}
	return nil
}

// inject hands a publish to mochi through the inline client (the sender's tenant-scoped id,
// if any, in pk.Connect.ClientIdentifier) and, in cluster mode, to the other nodes (a bus
// failure is logged and counted: the publish is committed and delivered here).
func (b *Broker) inject(pk packets.Packet) error {
	if err := b.server.InjectPacket(b.inline, pk); err != nil {
		return err
	}
	if b.cluster != nil {
		_ = b.cluster.broadcast(pk)
	}
	return nil
}

// Close stops accepting connections, disconnects every client (MQTT 5: "server shutting
// down"), waits up to 5 s for publishes already handed to the gateway to be answered, and
// releases the listeners. It does not close the Gateway or the Store.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		if !b.started.Load() {
			return
		}
		b.emitter.mu.Lock()
		b.emitter.wakeUp() // emitted events wait no longer
		b.emitter.mu.Unlock()
		b.closeErr = b.server.Close()
		if b.cluster != nil {
			b.cluster.stop(true)
		}
		done := make(chan struct{})
		go func() { b.pending.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			b.log.Warn("mqtt close: publishes still waiting for the gateway after 5s")
		}
		b.sessions.Range(func(k, v any) bool {
			v.(*session).stopTimer()
			return true
		})
	})
	return b.closeErr
}

// session is the broker's state for one client: its principal, and its pipeline of publishes
// waiting for their commit.
func (b *Broker) session(cl *mqtt.Client) *session {
	v, ok := b.sessions.Load(cl)
	if !ok {
		return nil
	}
	return v.(*session)
}

// minLevel is the handler of mochi's logger. It drops records below min (mochi logs every
// connection at Info and every refused packet at Warn) and redacts packets: mochi logs whole
// packets as attributes (a second CONNECT on one socket is logged at Warn), which would put
// CONNECT passwords (device JWTs), payloads and properties in the log. A packet is logged as
// its type, packet id, client id and topic only.
type minLevel struct {
	h   slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.h.Enabled(ctx, l)
}

func (m minLevel) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return m.h.Handle(ctx, out)
}

func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(as))
	for i, a := range as {
		red[i] = redactAttr(a)
	}
	return minLevel{h: m.h.WithAttrs(red), min: m.min}
}

// redactAttr replaces packets (also inside groups) by their summary.
func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		g := v.Group()
		red := make([]slog.Attr, len(g))
		for i, ga := range g {
			red[i] = redactAttr(ga)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(red...)}
	case slog.KindAny:
		switch pk := v.Any().(type) {
		case packets.Packet:
			return slog.Attr{Key: a.Key, Value: packetSummary(&pk)}
		case *packets.Packet:
			if pk != nil {
				return slog.Attr{Key: a.Key, Value: packetSummary(pk)}
			}
		case mqtt.Will:
			return slog.Attr{Key: a.Key, Value: slog.GroupValue(slog.String("topic", pk.TopicName))}
		case []byte:
			return slog.Int(a.Key+"_bytes", len(pk)) // raw bytes may be a payload or a password
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

func packetSummary(pk *packets.Packet) slog.Value {
	as := []slog.Attr{slog.String("type", packets.PacketNames[pk.FixedHeader.Type])}
	if pk.PacketID != 0 {
		as = append(as, slog.Int("id", int(pk.PacketID)))
	}
	if pk.Connect.ClientIdentifier != "" {
		as = append(as, slog.String("client_id", pk.Connect.ClientIdentifier))
	}
	if pk.TopicName != "" {
		as = append(as, slog.String("topic", pk.TopicName))
	}
	return slog.GroupValue(as...)
}
func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{h: m.h.WithGroup(g), min: m.min} }

// ackCode maps a failed append to the MQTT 5 reason code of its PUBACK/PUBREC, from the
// gateway's one table of refusals (ingest.RefusalFor).
func ackCode(err error) packets.Code {
	code := ingest.RefusalFor(err).MQTT5
	for _, c := range []packets.Code{packets.ErrQuotaExceeded, packets.ErrPacketTooLarge, packets.ErrPayloadFormatInvalid, packets.ErrImplementationSpecificError} {
		if c.Code == code {
			return c
		}
	}
	return packets.ErrUnspecifiedError
}

// disconnectListener tells the authenticated clients of one listener that the server is
// shutting down (MQTT 5: DISCONNECT 0x8B) and closes them.
func (b *Broker) disconnectListener(id string) {
	b.sessions.Range(func(k, _ any) bool {
		if cl := k.(*mqtt.Client); cl.Net.Listener == id && !cl.Closed() {
			_ = b.server.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
		return true
	})
}
