package broker

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/shadow"
)

// The ack pipeline.
//
// mochi reads a connection's packets on one goroutine and, for a PUBLISH, calls the hooks and
// then writes the PUBACK. Waiting there for the commit would be correct but caps a connection
// at one commit latency per QoS 1 message. Instead takePublish (on the read goroutine, from
// OnPacketRead) checks the publish, appends a pipeline entry, hands the event to
// Gateway.AcceptAsync and returns at once, so the reader goes on to the next packet while the
// commit is pending. When an entry's commit completes, the entries at the head of the pipeline
// that are complete are popped in order by a short-lived drain goroutine, which delivers each
// message to MQTT subscribers and then writes the PUBACKs / PUBRECs of the whole run at once
// (encoded as mochi's client write path would, one write under the client's write lock). So acks leave in the order the publishes arrived, each only after its event is
// durable, and many commits of one connection overlap (and share fsyncs in the store's group
// commit). No goroutine exists per idle connection.
//
// Bounds: the pipeline holds at most receive_maximum entries; the reader waits (stops reading
// the socket: TCP backpressure) while it is full. MQTT 5 clients are told receive_maximum in
// CONNACK and are disconnected with 0x93 when they exceed it, counting a QoS 2 publish until
// its PUBREL is answered. A 3.1.1 client, which is told no receive maximum, may have at most
// max_awaiting_rel QoS 2 publishes answered with PUBREC and not yet released; one more
// disconnects it (the PUBRELs come on the same socket, so it cannot be paced instead).

// session is the broker's state for one client.
type session struct {
	b        *Broker
	cl       *mqtt.Client
	p        *auth.Principal
	v5       bool
	clientID string            // the id the client sent (cl.ID is scoped by tenant: see scopedClientID)
	source   string            // event source: "mqtt://<client id>"
	baseMeta map[string]string // the metadata of a publish with no properties (read goroutine only)

	connectedAt time.Time     // when CONNECT was authenticated (zero for a restored session)
	version     atomic.Uint64 // session_version (presence), 0 when presence is off

	mu       sync.Mutex
	timer    *time.Timer // token expiry
	queue    []*entry    // pipeline, oldest first, from queue[head]
	head     int
	draining bool // a drain goroutine is running
	waiting  bool // the reader waits for room in the pipeline
	room     chan struct{}
	quota    int // MQTT 5: QoS>0 publishes not yet complete (receive maximum)
	rel      int // QoS 2 publishes answered with PUBREC, PUBREL not yet read (max_awaiting_rel)

	// MQTT 5 topic aliases the client registered, at most topic_alias_max; read goroutine only.
	// Only publishes that pass the policy register one.
	aliases map[uint16]string

	// publish rate limit, read goroutine only
	tokens float64
	last   time.Time

	// The last answer of the topic index to "has the topic subscribers?" (see hasSubscribers);
	// drain goroutine only (one at a time, handed over under mu).
	subsTopic string
	subsGen   uint64
	subsHas   bool
}

// entry is one publish in the pipeline. It keeps what a decoded PUBLISH holds (see packet),
// not the packet itself: a packets.Packet is 800 bytes, most of them fields a publish never
// sets, and an entry is allocated for every publish.
type entry struct {
	fh       packets.FixedHeader
	topic    string // alias resolved
	payload  []byte
	props    *packets.Properties // MQTT 5 only (alias cleared); nil for 3.1.1, which has none
	version  byte                // protocol version of the sender
	qos      byte
	id       uint16
	code     byte   // PUBACK/PUBREC reason when refused before ingest; 0 otherwise
	reason   string // its reason string, when not the code's own
	reserved bool   // holds room for a retained message (released unless delivered)
	ackOnly  bool   // a QoS 2 resend already acknowledged: ack again, do not ingest
	local    bool   // handled by the gateway itself (a shadow update): not delivered
	done     bool
	err      error // from the gateway
	start    time.Time
}

// newSession builds the session of cl; clientID is the id the client itself uses.
func newSession(b *Broker, cl *mqtt.Client, p *auth.Principal, clientID string) *session {
	return &session{
		b:        b,
		cl:       cl,
		p:        p,
		v5:       cl.Properties.ProtocolVersion == 5,
		clientID: clientID,
		source:   "mqtt://" + clientID,
		tokens:   b.cfg.PublishRate,
	}
}

// takePublish handles a PUBLISH on the connection's read goroutine. A nil error means the
// packet is handled (refused or in the pipeline); an error wrapping packets.ErrRejectPacket
// closes the connection.
func (s *session) takePublish(pk *packets.Packet) error {
	b, cl := s.b, s.cl
	qos := pk.FixedHeader.Qos
	refused := false
	pk.Properties.User = withoutWillProps(pk.Properties.User) // the gateway's own (see will.go)
	switch code := pk.PublishValidate(b.server.Options.Capabilities.TopicAliasMaximum); code {
	case packets.CodeSuccess:
	case packets.ErrProtocolViolationSurplusWildcard:
		refused = true // judged as a policy refusal, like any topic the client may not publish to
	default:
		return s.protocolError(code)
	}
	// PublishValidate refused alias numbers above topic_alias_max (0x94). An alias is resolved
	// here, but registered only below, for a publish the policy allows, so that refused
	// publishes cannot grow the alias table.
	alias := uint16(0)
	if pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 {
		alias = pk.Properties.TopicAlias
		pk.Properties.TopicAlias = 0
		pk.Properties.TopicAliasFlag = false
		if pk.TopicName == "" {
			pk.TopicName = s.aliases[alias]
			alias = 0 // nothing to register
			if pk.TopicName == "" {
				return s.protocolError(packets.ErrTopicAliasInvalid)
			}
		}
	}
	shadowDevice, shadowOp := "", ""
	if device, rest, ok := shadow.DeviceOfTopic(pk.TopicName); ok && !refused {
		// $shadow/{device}/update and /get are taken by the shadow service, if the policy
		// allows the device's shadow; every other $shadow topic is the gateway's to publish.
		if (rest == "update" || rest == "get") && b.shadows != nil && s.p.CanUseShadow(device) {
			shadowDevice, shadowOp = device, rest
			pk.FixedHeader.Retain = false
		} else {
			refused = true
		}
	} else if !refused && !s.p.CanPublish(pk.TopicName) {
		refused = true
	}
	if refused {
		b.m.pubRefused.Inc()
		switch {
		case qos == 0:
			return nil // nothing to answer
		case !s.v5:
			return fmt.Errorf("client %q publish to %q: %w", s.clientID, pk.TopicName, packets.ErrRejectPacket)
		}
	} else if alias != 0 {
		if s.aliases == nil {
			s.aliases = make(map[uint16]string, 1)
		}
		s.aliases[alias] = pk.TopicName
	}
	// A retained message reserves its room (see retained.go). Over a cap, MQTT 5 QoS 1/2 gets
	// 0x97 and nothing is stored; anything else is stored and delivered, but not retained.
	retainRefused, reserved := false, false
	if !refused && pk.FixedHeader.Retain && len(pk.Payload) > 0 && !isAckOnly(cl, pk) {
		reserved = b.retained.reserve(cl.ID, pk.TopicName, retainedSize(pk.TopicName, pk.Payload))
		retainRefused = !reserved
	}
	if retainRefused {
		b.m.retainedRefused.Inc()
		if !s.v5 || qos == 0 {
			pk.FixedHeader.Retain = false
			retainRefused = false
		}
	}
	now := s.pace()

	e := &entry{fh: pk.FixedHeader, topic: pk.TopicName, payload: pk.Payload, version: pk.ProtocolVersion,
		qos: qos, id: pk.PacketID, start: now, reserved: reserved}
	if pk.ProtocolVersion == 5 {
		props := pk.Properties
		e.props = &props
	}
	switch {
	case refused:
		e.code = packets.ErrNotAuthorized.Code
		e.done = true
	case retainRefused:
		e.code = packets.ErrQuotaExceeded.Code
		e.reason = "retained message limit reached (mqtt.max_retained_per_client, max_retained or max_retained_bytes)"
		e.done = true
	case isAckOnly(cl, pk):
		e.ackOnly, e.done = true, true // resent before our PUBREC arrived: already durable
	}
	if qos == 2 && !e.done && !s.v5 {
		if err := s.holdRel(); err != nil {
			s.unreserve(e)
			return err
		}
	}
	if err := s.enqueue(e); err != nil {
		s.unreserve(e)
		return err
	}
	if e.done {
		s.complete(e, nil)
		return nil
	}
	if shadowDevice != "" {
		s.updateShadow(e, shadowDevice, shadowOp)
		return nil
	}
	if qos == 0 {
		b.m.pubQoS0.Inc()
	}
	ev := s.event(pk, now)
	b.pending.Add(1)
	b.m.inflight.Add(1)
	b.gw.AcceptAsync([]*event.Event{ev}, ingest.AcceptOptions{Received: now}, func(err error) {
		s.complete(e, err)
		b.m.inflight.Add(-1)
		b.pending.Done()
	})
	return nil
}

// updateShadow hands a shadow update (op "update") or get (op "get") to the shadow service
// off the read goroutine; the publish is acknowledged once the service has answered (the
// update is durable, or was rejected on $shadow/{device}/update/rejected). It is not
// delivered to subscribers.
func (s *session) updateShadow(e *entry, device, op string) {
	b := s.b
	e.local = true
	from := shadow.Sender{Subject: s.p.Subject, Tenant: s.p.Tenant, Protocol: event.ProtocolMQTT, Source: s.source,
		Claims: s.p.Claims, ClaimsJSON: s.p.ClaimsJSON}
	b.pending.Add(1)
	go func() {
		defer b.pending.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if op == "get" {
			b.shadows.GetForDevice(s.p.Tenant, device)
		} else {
			b.shadows.UpdateFromDevice(ctx, from, s.p.Tenant, device, e.payload)
		}
		s.complete(e, nil)
	}()
}

// isAckOnly reports whether pk resends a QoS 2 publish already answered with PUBREC.
func isAckOnly(cl *mqtt.Client, pk *packets.Packet) bool {
	if pk.FixedHeader.Qos != 2 {
		return false
	}
	in, ok := cl.State.Inflight.Get(pk.PacketID)
	return ok && in.FixedHeader.Type == packets.Pubrec
}

// unreserve gives back the retained room of a publish that will not be delivered.
func (s *session) unreserve(e *entry) {
	if e.reserved {
		e.reserved = false
		s.b.retained.release(s.cl.ID, retainedSize(e.topic, e.payload))
	}
}

// protocolError ends a connection that sent a malformed publish (MQTT 5: DISCONNECT with code).
func (s *session) protocolError(code packets.Code) error {
	if s.v5 {
		_ = s.b.server.DisconnectClient(s.cl, code)
	}
	s.b.m.protocolRefused.Inc()
	return fmt.Errorf("client %q: %s: %w", s.clientID, code.Reason, packets.ErrRejectPacket)
}

// holdRel checks, for a QoS 2 publish of a 3.1.1 client, that fewer than max_awaiting_rel of
// its QoS 2 publishes wait for their PUBREL (MQTT 5 clients are held to receive_maximum,
// which counts a QoS 2 flow until its PUBREL, by enqueue).
func (s *session) holdRel() error {
	s.mu.Lock()
	n := s.rel
	s.mu.Unlock()
	if n >= s.b.cfg.MaxAwaitingRel {
		s.b.m.protocolRefused.Inc()
		return fmt.Errorf("client %q: %d QoS 2 publishes wait for PUBREL (mqtt.max_awaiting_rel): %w",
			s.clientID, n, packets.ErrRejectPacket)
	}
	return nil
}

// event builds the event of an accepted publish.
func (s *session) event(pk *packets.Packet, now time.Time) *event.Event {
	var meta map[string]string
	if len(pk.Properties.User) == 0 && pk.Properties.ResponseTopic == "" && len(pk.Properties.CorrelationData) == 0 && !pk.Properties.PayloadFormatFlag {
		// The usual publish: its metadata is the client id alone, the same map for every
		// event of the session (an event's Meta is never written once it is built).
		if s.baseMeta == nil {
			s.baseMeta = map[string]string{"client_id": s.clientID}
		}
		meta = s.baseMeta
	} else {
		meta = s.publishMeta(pk)
	}
	return &event.Event{
		Source:      s.source,
		Type:        "fleetgate.mqtt.publish",
		Subject:     s.p.Subject,
		Time:        now,
		ContentType: pk.Properties.ContentType,
		Data:        pk.Payload,
		Protocol:    event.ProtocolMQTT,
		Topic:       pk.TopicName,
		Tenant:      s.p.Tenant,
		Claims:      s.p.Claims,
		ClaimsJSON:  s.p.ClaimsJSON,
		Meta:        meta,
		QoS:         pk.FixedHeader.Qos,
		Retain:      pk.FixedHeader.Retain,
	}
}

// publishMeta is the metadata of a publish with user properties or request properties: the
// user properties (trace context as HTTP ingest keeps it), the client id, the request's.
func (s *session) publishMeta(pk *packets.Packet) map[string]string {
	meta := make(map[string]string, 1+len(pk.Properties.User))
	var traceparent, tracestate []byte
	for _, u := range pk.Properties.User {
		switch {
		case strings.HasPrefix(u.Key, "$"):
			continue // "$" keys are the gateway's own (requestMeta)
		case strings.EqualFold(u.Key, "traceparent"): // W3C trace context, as HTTP ingest keeps it
			traceparent = []byte(u.Val)
		case strings.EqualFold(u.Key, "tracestate"):
			if len(tracestate) > 0 {
				tracestate = append(tracestate, ',')
			}
			tracestate = append(tracestate, u.Val...)
		default:
			meta[u.Key] = u.Val
		}
	}
	ingest.TraceMeta(meta, traceparent, tracestate)
	meta["client_id"] = s.clientID
	requestMeta(meta, pk)
	return meta
}

// enqueue appends e to the pipeline, waiting while it is full. For MQTT 5 it enforces the
// receive maximum.
func (s *session) enqueue(e *entry) error {
	limit := s.b.cfg.ReceiveMaximum
	for {
		s.mu.Lock()
		if s.v5 && e.qos > 0 && !e.ackOnly {
			if s.quota >= limit {
				s.mu.Unlock()
				_ = s.b.server.DisconnectClient(s.cl, packets.ErrReceiveMaximum)
				return fmt.Errorf("client %q: %w", s.cl.ID, packets.ErrRejectPacket)
			}
		}
		if len(s.queue)-s.head < limit {
			if s.v5 && e.qos > 0 && !e.ackOnly {
				s.quota++
			}
			if s.head > 0 && len(s.queue) == cap(s.queue) { // compact instead of growing
				n := copy(s.queue, s.queue[s.head:])
				clear(s.queue[n:])
				s.queue, s.head = s.queue[:n], 0
			}
			s.queue = append(s.queue, e)
			s.mu.Unlock()
			return nil
		}
		if s.room == nil {
			s.room = make(chan struct{}, 1)
		}
		s.waiting = true
		room := s.room
		s.mu.Unlock()
		select {
		case <-room:
		case <-time.After(100 * time.Millisecond):
		}
		if s.cl.Closed() {
			return fmt.Errorf("client %q closed while waiting: %w", s.cl.ID, packets.ErrRejectPacket)
		}
		s.extendDeadline()
	}
}

// extendDeadline gives a connection whose reader waited (full pipeline, rate limit) its
// keepalive again: mochi sets one deadline for reads and writes before each packet, and the
// acks written meanwhile must not hit it.
func (s *session) extendDeadline() {
	if ka := s.cl.State.Keepalive; ka > 0 && s.cl.Net.Conn != nil {
		_ = s.cl.Net.Conn.SetDeadline(time.Now().Add(time.Duration(ka) * 1500 * time.Millisecond))
	}
}

// pace applies the per-connection publish rate limit (token bucket, burst of one second), and
// returns the time it lets the publish go (one clock read per publish, not one per use).
func (s *session) pace() time.Time {
	now := time.Now()
	rate := s.b.cfg.PublishRate
	if rate <= 0 {
		return now
	}
	if !s.last.IsZero() {
		s.tokens += now.Sub(s.last).Seconds() * rate
	}
	if burst := max(rate, 1); s.tokens > burst {
		s.tokens = burst
	}
	s.last = now
	if s.tokens >= 1 {
		s.tokens--
		return now
	}
	s.b.m.pubPaced.Inc()
	wait := time.Duration((1 - s.tokens) / rate * float64(time.Second))
	for wait > 0 && !s.cl.Closed() {
		step := min(wait, time.Second)
		time.Sleep(step)
		wait -= step
		s.extendDeadline()
	}
	s.tokens = 0
	s.last = time.Now()
	return s.last
}

// complete marks e done (err from the gateway) and starts a drain if the pipeline's head is done.
// It never blocks: it runs on the store's commit goroutine.
func (s *session) complete(e *entry, err error) {
	s.mu.Lock()
	e.done, e.err = true, err
	if s.draining || s.head == len(s.queue) || !s.queue[s.head].done {
		s.mu.Unlock()
		return
	}
	s.draining = true
	s.mu.Unlock()
	s.b.pending.Add(1)
	go s.drain()
}

// drain answers and delivers the done entries at the head of the pipeline, in order.
func (s *session) drain() {
	defer s.b.pending.Done()
	var batch []*entry
	for {
		s.mu.Lock()
		end := s.head
		for end < len(s.queue) && s.queue[end].done {
			end++
		}
		if end == s.head {
			s.draining = false
			s.mu.Unlock()
			return
		}
		batch = append(batch[:0], s.queue[s.head:end]...)
		clear(s.queue[s.head:end])
		s.head = end
		if s.head == len(s.queue) {
			s.queue, s.head = s.queue[:0], 0
		}
		if s.waiting {
			s.waiting = false
			select {
			case s.room <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
		acks := ackBufs.Get().(*ackBuf)
		for _, e := range batch {
			s.finish(e, acks)
		}
		s.writeAcks(acks)
		ackBufs.Put(acks)
	}
}

// ackBuf gathers the encoded acks of one drain pass, written to the client in one write: a
// group commit completes many publishes of a connection at once, and one write (one syscall,
// one TCP segment on loopback) per ack was a third of the broker's CPU under QoS 1 load.
type ackBuf struct {
	bytes.Buffer
	n int // acks in it
}

var ackBufs = sync.Pool{New: func() any { return new(ackBuf) }}

// encodeAck encodes pk for s's client as mochi's WritePacket would (protocol version, the
// client's maximum packet size, problem info), into acks; false when it must go through
// WritePacket instead (too large for the client, or an encoding error).
func (s *session) encodeAck(pk packets.Packet, acks *ackBuf) bool {
	cl := s.cl
	pk.ProtocolVersion = cl.Properties.ProtocolVersion
	pk.Mods.MaxSize = cl.Properties.Props.MaximumPacketSize
	if cl.Properties.Props.RequestProblemInfoFlag && cl.Properties.Props.RequestProblemInfo == 0 {
		pk.Mods.DisallowProblemInfo = true // [MQTT-3.1.2-29]
	}
	mark := acks.Len()
	var err error
	if pk.FixedHeader.Type == packets.Pubrec {
		err = pk.PubrecEncode(&acks.Buffer)
	} else {
		err = pk.PubackEncode(&acks.Buffer)
	}
	if err != nil || (pk.Mods.MaxSize > 0 && uint32(acks.Len()-mark) > pk.Mods.MaxSize) {
		acks.Truncate(mark)
		return false
	}
	acks.n++
	return true
}

// writeAcks writes the gathered acks to the client at once, under the client's write lock (as
// mochi's WritePacket), and counts them in the broker's $SYS figures.
func (s *session) writeAcks(acks *ackBuf) {
	defer func() { acks.Reset(); acks.n = 0 }()
	cl := s.cl
	if acks.n == 0 || cl.Closed() || cl.Net.Conn == nil {
		return
	}
	cl.Lock()
	n, err := acks.WriteTo(cl.Net.Conn)
	cl.Unlock()
	if info := s.b.server.Info; info != nil {
		atomic.AddInt64(&info.BytesSent, n)
		atomic.AddInt64(&info.PacketsSent, int64(acks.n))
	}
	if err != nil {
		cl.Stop(fmt.Errorf("writing acks: %w", err))
	}
}

// finish delivers one entry to subscribers if its event is durable, then answers it (into
// acks, written by the caller).
func (s *session) finish(e *entry, acks *ackBuf) {
	b := s.b
	stored := e.err == nil && e.code == 0 && !e.ackOnly
	if !stored {
		s.unreserve(e)
	}
	switch {
	case e.err != nil:
		b.m.pubFailed.Inc()
		if e.qos > 0 && !s.v5 {
			// 3.1.1 has no negative ack: close so that the client publishes again.
			if !s.cl.Closed() {
				b.log.Warn("mqtt publish not stored, disconnecting 3.1.1 client", "client", s.cl.ID, "error", e.err)
			}
			s.cl.Stop(fmt.Errorf("%w: %w", ErrAppendFailed, e.err))
			return
		}
		e.code = ackCode(e.err).Code
	case stored:
		b.m.pubAccepted.Inc()
	}
	// Delivered before it is acknowledged: once the sender has its ack, its retained message
	// (or the clearing of one) is in place, and its room under the retained caps is counted.
	if stored && !e.local {
		s.deliver(e)
	}
	if e.qos > 0 {
		s.ack(e, acks)
		b.m.ackLatency.UpdateDuration(e.start)
	}
}

// ack adds the PUBACK (QoS 1) or PUBREC (QoS 2) of e to acks.
func (s *session) ack(e *entry, acks *ackBuf) {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: e.id, ReasonCode: e.code}
	if e.qos == 2 {
		ack.FixedHeader.Type = packets.Pubrec
	}
	if e.code >= packets.ErrUnspecifiedError.Code {
		ack.Properties.ReasonString = e.reason
		if e.reason == "" {
			ack.Properties.ReasonString = reasonOf(e.code)
		}
	}
	if e.qos == 2 && e.code < packets.ErrUnspecifiedError.Code {
		// mochi completes the flow: PUBREL → PUBCOMP, then OnQosComplete releases the quota.
		ack.Created = time.Now().Unix()
		s.cl.State.Inflight.Set(ack)
		s.mu.Lock()
		s.rel++
		s.mu.Unlock()
	} else if !e.ackOnly {
		s.releaseQuota()
	}
	if !s.encodeAck(ack, acks) {
		s.writeAcks(acks) // keeps the order of the acks before it
		_ = s.cl.WritePacket(ack)
	}
}

// releaseRel counts the PUBREL (or the drop) of a QoS 2 publish answered with PUBREC.
func (s *session) releaseRel() {
	s.mu.Lock()
	if s.rel > 0 {
		s.rel--
	}
	s.mu.Unlock()
}

func (s *session) releaseQuota() {
	if !s.v5 {
		return
	}
	s.mu.Lock()
	if s.quota > 0 {
		s.quota--
	}
	s.mu.Unlock()
}

// hasSubscribers reports whether a publish to topic may have a subscriber on this node. A
// device publishes to the same few topics: the index's answer for the session's last topic is
// kept until a subscription changes anywhere (the index's generation), which saves the walk
// down the index's levels, each under its lock (3 % of the CPU of MQTT to a function).
func (s *session) hasSubscribers(topic string) bool {
	x := s.b.server.Topics
	gen := x.Generation() // before the walk: a change during it moves the generation on
	if gen == s.subsGen && topic == s.subsTopic {
		return s.subsHas
	}
	has := x.HasSubscribers(topic)
	s.subsTopic, s.subsGen, s.subsHas = topic, gen, has
	return has
}

// deliver hands a committed publish to mochi for its subscribers (and the retained store),
// through the broker's inline client, with the sender as origin.
func (s *session) deliver(e *entry) {
	if !e.fh.Retain && s.b.cluster == nil && !s.hasSubscribers(e.topic) {
		return // no one on this node can receive it (telemetry usually goes to functions only)
	}
	s.inject(e)
}

// inject is deliver's hand-over to mochi, a function of its own: its frame holds a whole
// packet (about 800 bytes), and a drain goroutine, which starts with a small stack, would
// grow (copy) its stack on entering deliver even when no one subscribes. Not inlined for that.
//
//go:noinline
func (s *session) inject(e *entry) {
	pk := e.packet()
	pk.Connect.ClientIdentifier = s.cl.ID // restored as Origin by OnPublish: the tenant-scoped id
	if pk.FixedHeader.Qos == 0 {
		pk.PacketID = 0
	}
	pk.FixedHeader.Dup = false
	if err := s.b.inject(pk); err != nil {
		s.unreserve(e) // refused before retainHook committed it
		s.b.log.Debug("mqtt delivery failed", "client", s.cl.ID, "topic", pk.TopicName, "error", err)
	}
}

// packet is the publish of e as takePublish had it: a decoded PUBLISH sets only these fields
// (ReadPacket the protocol version, PublishDecode the others).
func (e *entry) packet() packets.Packet {
	pk := packets.Packet{FixedHeader: e.fh, TopicName: e.topic, Payload: e.payload, PacketID: e.id, ProtocolVersion: e.version}
	if e.props != nil {
		pk.Properties = *e.props
	}
	return pk
}

func reasonOf(code byte) string {
	switch code {
	case packets.ErrNotAuthorized.Code:
		return packets.ErrNotAuthorized.Reason
	case packets.ErrQuotaExceeded.Code:
		return packets.ErrQuotaExceeded.Reason
	default:
		return packets.ErrUnspecifiedError.Reason
	}
}
