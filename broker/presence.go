package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/storage"
)

// Presence.
//
// Every MQTT session established and every connection ended is a durable event, taken in
// through the same Gateway as device publishes (so rules route it and the promise holds), on
// $events/presence/connected/{client_id} and $events/presence/disconnected/{client_id}.
// The gateway produces it on the device's behalf: its sender (subject, tenant, claims) is the
// device's, its source "mqtt://{client_id}", its protocol "mqtt". No client can publish to a
// "$" topic, so no client can forge one. A rule must name "$events/..." in its filter: "#"
// does not match "$" topics.
//
// session_version orders the events of one client id: it grows by one at every session
// established, and a connection's disconnected event carries its connected event's version.
// It keeps growing across restarts: the store's KV (presence/ver/<client id>) holds a
// reservation, written (and durable) before any event carries a version under it, once per
// 64 sessions of the client id and once after each start; after a restart versions go on
// after the reservation, so they may jump by up to 63. With mqtt.presence.grace a connection
// shorter than the grace period produces no event, so versions may have gaps there too.
//
// Where the KV is shared by several gateways (cluster mode: it offers CompareAndPut), each
// session's version is written there with a compare-and-set instead (nextSharedVersion): no
// two gateways hand out the same version, and a client id's versions keep growing whichever
// gateway it connects to.

// Topics of presence events.
const (
	TopicPresenceConnected    = "$events/presence/connected/"
	TopicPresenceDisconnected = "$events/presence/disconnected/"
	keyPresenceVersion        = "presence/ver/"
)

// Disconnect reasons, in a disconnected event's "reason".
const (
	ReasonClientDisconnect = "client_disconnect" // the client sent DISCONNECT
	ReasonKeepalive        = "keepalive_timeout" // nothing read from the client for 1.5 × its keepalive
	ReasonTakeover         = "takeover"          // another connection took the client id over
	ReasonTokenExpired     = "token_expired"     // its token expired (MQTT 5: DISCONNECT 0xA0)
	ReasonRevoked          = "revoked"           // its credential was revoked
	ReasonServerShutdown   = "server_shutdown"   // the gateway is stopping
	ReasonProtocolError    = "protocol_error"    // the broker closed it for a malformed or refused packet
	ReasonConnectionLost   = "connection_lost"   // the connection broke without DISCONNECT (killed client, network error)
	reasonConnect          = "client_connect"    // the reason of every connected event
)

// PresenceData is the data of a presence event.
type PresenceData struct {
	ClientID        string    `json:"client_id"`
	Subject         string    `json:"subject"`
	Tenant          string    `json:"tenant"`
	ProtocolVersion byte      `json:"protocol_version"` // 3, 4 (3.1.1) or 5
	Remote          string    `json:"remote"`
	CleanStart      bool      `json:"clean_start"`
	Reason          string    `json:"reason"`
	SessionVersion  uint64    `json:"session_version"`
	At              time.Time `json:"at"`
	DurationMS      *int64    `json:"duration_ms,omitempty"` // disconnected only
	Node            string    `json:"node"`
}

// presenceConn is one connection's presence, from its session established to its end.
type presenceConn struct {
	data  PresenceData
	p     *auth.Principal
	ready chan struct{} // closed once the version is stored and the connected event emitted or scheduled

	mu        sync.Mutex
	timer     *time.Timer // grace period
	announced bool        // its connected event was emitted
	ended     bool
}

// presenceHook emits presence events. One job: it reads the session authHook built.
type presenceHook struct {
	mqtt.HookBase
	b *Broker
	// shared is the store's compare-and-set where the KV is shared by several gateways
	// (cluster mode), nil on a single node.
	shared compareAndPutter

	locks    [256]sync.Mutex   // by client id: one client id's versions are allocated in order
	mu       sync.Mutex        // guards versions
	versions map[string]uint64 // client id → last session version allocated
	reserved map[string]uint64 // client id → versions up to this may be allocated
	stored   map[string]uint64 // client id → last session version written to the KV
	pending  map[string]uint64 // versions to write in the next PutMany
	waiters  []chan struct{}   // closed once the next PutMany is done
	flushing bool              // a flush goroutine runs
}

func (h *presenceHook) ID() string { return "fleetgate-presence" }

func (h *presenceHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSessionEstablished, mqtt.OnDisconnect}, []byte{b})
}

// compareAndPutter is what a KV shared by several gateways offers (cluster mode's bucket):
// value is stored only if key still holds old (found false: nothing), else storage.ErrChanged.
type compareAndPutter interface {
	CompareAndPut(key string, old []byte, found bool, value []byte) error
}

// newPresenceHook returns the presence hook of b.
func newPresenceHook(b *Broker) *presenceHook {
	h := &presenceHook{b: b, versions: map[string]uint64{}, reserved: map[string]uint64{},
		stored: map[string]uint64{}, pending: map[string]uint64{}}
	h.shared, _ = b.store.(compareAndPutter)
	return h
}

// allocate allocates the session version of a new session of the (tenant-scoped) client id,
// and returns the reservation that must be durable before an event carries it (storeVersion;
// 0 when it already is). On a single node it does not wait for the store; with a shared KV it
// writes the version there first, and fails if it cannot.
func (h *presenceHook) allocate(id string) (v, reserve uint64, err error) {
	if h.shared != nil {
		v, err = h.nextSharedVersion(id)
		return v, 0, err
	}
	v, reserve = h.nextVersion(id)
	return v, reserve, nil
}

// sharedVersionTries bounds the compare-and-set attempts of one session version: each one
// that fails lost to another gateway's write of the same client id's version.
const sharedVersionTries = 16

// nextSharedVersion allocates the next session version of client id in a KV shared by several
// gateways: the version itself is written to presence/ver/<client id> with a compare-and-set on
// what was read there, and is used only once that write succeeded. So two gateways never hand
// out the same version, and a version is always above every one handed out before it,
// whichever gateway the client id connected to. This costs a KV write per session (a block
// reserved ahead, as on a single node, would not save it: a read cannot tell a gateway that
// no other one has reserved since, because the bucket's reads may be answered by a replica
// that lags behind; only the write's compare-and-set is checked by the bucket's leader).
func (h *presenceHook) nextSharedVersion(id string) (uint64, error) {
	l := &h.locks[fnv32(id)%uint32(len(h.locks))]
	l.Lock()
	defer l.Unlock()
	key := keyPresenceVersion + id
	h.mu.Lock()
	last, cached := h.versions[id] // what this gateway wrote last: most likely still there
	h.mu.Unlock()
	var old []byte
	found := cached
	if cached {
		old = strconv.AppendUint(nil, last, 10)
	} else {
		var err error
		if old, found, err = h.b.store.Get(key); err != nil {
			return 0, fmt.Errorf("reading the session version of %q: %w", id, err)
		}
	}
	for try := 1; ; try++ {
		var cur uint64
		if found {
			var err error
			if cur, err = strconv.ParseUint(string(old), 10, 64); err != nil {
				return 0, fmt.Errorf("reading the session version of %q: %q is not a number", id, old)
			}
		}
		v := cur + 1
		err := h.shared.CompareAndPut(key, old, found, strconv.AppendUint(nil, v, 10))
		if err == nil {
			h.mu.Lock()
			h.versions[id] = v
			h.mu.Unlock()
			return v, nil
		}
		if !errors.Is(err, storage.ErrChanged) || try == sharedVersionTries {
			return 0, fmt.Errorf("storing the session version of %q: %w", id, err)
		}
		if old, found, err = h.b.store.Get(key); err != nil { // another gateway wrote it meanwhile
			return 0, fmt.Errorf("reading the session version of %q: %w", id, err)
		}
	}
}

// versionBlock is how many session versions of one client id are reserved in the KV at a
// time: a client id's version is written once per versionBlock sessions (and once after each
// start of the gateway), not at every connect.
const versionBlock = 64

// nextVersion allocates the next session version of the (tenant-scoped) client id, and
// returns the reservation that must be durable before an event carries it (storeVersion).
// It does not wait for the store.
func (h *presenceHook) nextVersion(id string) (v, reserve uint64) {
	l := &h.locks[fnv32(id)%uint32(len(h.locks))]
	l.Lock()
	defer l.Unlock()
	h.mu.Lock()
	v, ok := h.versions[id]
	reserve = h.reserved[id]
	h.mu.Unlock()
	if !ok && h.b.store != nil {
		raw, found, err := h.b.store.Get(keyPresenceVersion + id)
		if err != nil {
			h.b.log.Error("mqtt presence: reading session version", "client", id, "error", err)
		} else if found {
			// Every version up to the stored reservation may have been used: go on after it.
			v, _ = strconv.ParseUint(string(raw), 10, 64)
			reserve = v
			h.mu.Lock()
			h.stored[id] = max(h.stored[id], v)
			h.mu.Unlock()
		}
	}
	v++
	if v > reserve {
		reserve = v + versionBlock - 1
	}
	h.mu.Lock()
	h.versions[id], h.reserved[id] = v, reserve
	h.mu.Unlock()
	return v, reserve
}

// storeVersion writes version v of client id to the store's KV (unless a later one is
// already there) and returns once it is durable. Concurrent calls are written together, in
// one PutMany: a connect storm costs a few commits, not one write per client.
func (h *presenceHook) storeVersion(id string, v uint64) {
	if h.b.store == nil {
		return
	}
	done := make(chan struct{})
	h.mu.Lock()
	if h.stored[id] >= v {
		h.mu.Unlock()
		return
	}
	if h.pending[id] < v {
		h.pending[id] = v
	}
	h.waiters = append(h.waiters, done)
	if !h.flushing {
		h.flushing = true
		go h.flush()
	}
	h.mu.Unlock()
	<-done
}

// flush writes the pending versions until there are none left.
func (h *presenceHook) flush() {
	for {
		h.mu.Lock()
		if len(h.pending) == 0 {
			h.flushing = false
			h.mu.Unlock()
			return
		}
		batch, waiters := h.pending, h.waiters
		h.pending, h.waiters = map[string]uint64{}, nil
		h.mu.Unlock()
		kvs := make(map[string][]byte, len(batch))
		for id, v := range batch {
			kvs[keyPresenceVersion+id] = strconv.AppendUint(nil, v, 10)
		}
		err := h.b.store.PutMany(kvs)
		if err != nil {
			h.b.log.Error("mqtt presence: storing session versions", "clients", len(batch), "error", err)
		}
		h.mu.Lock()
		for id, v := range batch {
			if err == nil && h.stored[id] < v {
				h.stored[id] = v
			}
		}
		h.mu.Unlock()
		for _, w := range waiters {
			close(w)
		}
	}
}

func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	return h
}

// OnSessionEstablished allocates the connection's session version and, off the connection's
// goroutine, makes it durable and then emits the connected event (after the grace period, if
// any), so that a connect storm does not wait for the store. (With a shared KV the version is
// written before, on the connection's goroutine: see nextSharedVersion.)
func (h *presenceHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	b := h.b
	s := b.session(cl)
	if s == nil || cl.Net.Inline {
		return
	}
	version, reserve, err := h.allocate(cl.ID)
	if err != nil {
		// No version that is sure to be new: this connection gets no presence events.
		b.m.gatewayEventFailed.Inc()
		b.log.Error("mqtt presence: no session version, no presence events for this connection", "client", cl.ID, "error", err)
		return
	}
	pc := &presenceConn{p: s.p, ready: make(chan struct{}), data: PresenceData{
		ClientID: s.clientID, Subject: s.p.Subject, Tenant: s.p.Tenant,
		ProtocolVersion: cl.Properties.ProtocolVersion, Remote: cl.Net.Remote, CleanStart: cl.Properties.Clean,
		Reason: reasonConnect, SessionVersion: version, At: s.connectedAt, Node: b.node,
	}}
	s.version.Store(pc.data.SessionVersion)
	b.presence.Store(cl, pc)
	id := cl.ID
	b.pending.Add(1)
	go func() {
		defer b.pending.Done()
		defer close(pc.ready)
		h.storeVersion(id, reserve)
		grace := b.cfg.Presence.Grace
		pc.mu.Lock()
		defer pc.mu.Unlock()
		switch {
		case pc.ended:
		case grace <= 0:
			pc.announced = true
			b.emitPresence(TopicPresenceConnected, pc)
		default:
			pc.timer = time.AfterFunc(grace-time.Since(s.connectedAt), func() {
				pc.mu.Lock()
				defer pc.mu.Unlock()
				if pc.ended {
					return
				}
				pc.announced = true
				b.emitPresence(TopicPresenceConnected, pc)
			})
		}
	}()
}

// OnDisconnect emits the disconnected event of a connection whose connected event was emitted.
func (h *presenceHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	b := h.b
	v, ok := b.presence.LoadAndDelete(cl)
	if !ok {
		return
	}
	pc := v.(*presenceConn)
	<-pc.ready // the connected event, if any, is emitted first
	pc.mu.Lock()
	pc.ended = true
	if pc.timer != nil {
		pc.timer.Stop()
	}
	announced := pc.announced
	pc.mu.Unlock()
	if !announced {
		b.m.presenceSuppressed.Inc()
		return
	}
	d := pc.data
	now := time.Now()
	ms := now.Sub(d.At).Milliseconds()
	d.DurationMS, d.At, d.Reason = &ms, now, disconnectReason(cl, err)
	b.emitPresence(TopicPresenceDisconnected, &presenceConn{p: pc.p, data: d})
}

// disconnectReason classifies why a connection ended, from its stop cause and read error.
func disconnectReason(cl *mqtt.Client, err error) string {
	cause := cl.StopCause()
	var code packets.Code
	switch {
	case errors.Is(cause, packets.ErrSessionTakenOver) || cl.IsTakenOver():
		return ReasonTakeover
	case errors.Is(cause, packets.ErrServerShuttingDown):
		return ReasonServerShutdown
	case errors.Is(cause, ErrTokenExpired) || errors.Is(cause, packets.ErrMaxConnectTime):
		return ReasonTokenExpired
	case errors.Is(cause, errTokenRevoked) || errors.Is(cause, packets.ErrNotAuthorized):
		return ReasonRevoked
	case errors.Is(cause, packets.CodeDisconnect) || errors.Is(cause, packets.CodeDisconnectWillMessage):
		return ReasonClientDisconnect
	case isTimeout(err) || isTimeout(cause):
		return ReasonKeepalive
	case errors.As(cause, &code) && code.Code >= packets.ErrUnspecifiedError.Code,
		errors.Is(cause, packets.ErrRejectPacket), errors.Is(err, packets.ErrRejectPacket):
		return ReasonProtocolError
	}
	return ReasonConnectionLost
}

func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && (errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()))
}

// topicLevel makes a client id one safe topic level: '/', '+', '#', NUL and '%' are
// percent-encoded (the data keeps the id as it is).
func topicLevel(id string) string {
	if !strings.ContainsAny(id, "/+#\x00%") {
		return id
	}
	var sb strings.Builder
	for i := 0; i < len(id); i++ {
		switch c := id[i]; c {
		case '/', '+', '#', 0, '%':
			sb.WriteString("%" + strings.ToUpper(strconv.FormatUint(uint64(c)|0x100, 16)[1:]))
		default:
			sb.WriteByte(c)
		}
	}
	return sb.String()
}

// emitPresence takes a presence event in through the Gateway. It does not wait: a failure is
// logged and counted (fleetgate_presence_events_total{result="failed"}).
func (b *Broker) emitPresence(prefix string, pc *presenceConn) {
	kind := "connected"
	if prefix == TopicPresenceDisconnected {
		kind = "disconnected"
	}
	data, _ := json.Marshal(pc.data)
	b.emit(&event.Event{
		Source: "mqtt://" + pc.data.ClientID, Type: "fleetgate.presence." + kind,
		Subject: pc.p.Subject, Tenant: pc.p.Tenant, Claims: pc.p.Claims, ClaimsJSON: pc.p.ClaimsJSON,
		Time: time.Now(), ContentType: "application/json", Data: data, Protocol: event.ProtocolMQTT,
		Topic: prefix + topicLevel(pc.data.ClientID), Meta: map[string]string{"client_id": pc.data.ClientID},
	}, kind)
}

// emit takes an event the broker produces (presence, queue drops) in through the Gateway,
// asynchronously and in order; Close waits for it. The events are appended in rounds (see
// emitLoop), so that a connect storm costs a few commits, not one per client or per batch.
func (b *Broker) emit(ev *event.Event, kind string) {
	b.pending.Add(1)
	e := &b.emitter
	e.mu.Lock()
	e.queue = append(e.queue, emitted{ev: ev, kind: kind, size: ev.Size()})
	if !e.running {
		e.running = true
		go b.emitLoop()
	}
	e.mu.Unlock()
}

// Rounds of emitted events. A round takes every queued event and hands it to the Gateway at
// once, in order, in requests of at most maxEmitBatch events and maxEmitBytes bytes (under
// the limits of one request of either log), which share the store's commit; it ends when all
// are committed. The next round starts emitSpacing times the last round's duration after that
// round started (maxEmitGap at most), or at once when the broker closes; a round after a quiet
// spell starts at once.
//
// Why: the store's committer waits for fsync in a system call, and the Go runtime hands that
// goroutine's P (one of GOMAXPROCS) to other goroutines only once sysmon has seen it there on
// two of its ticks, which are up to 10 ms apart once sysmon has found nothing to take back
// for a while, so an msync of ~1-2 ms keeps its P to the end. Appended back to back (a
// round right after the other), the presence events of a connect storm kept the store in
// msync for half of the storm or more, one P of two held away from the connections
// (0.64-0.70 of the connect rate with presence off, on a virtual disk; 0.98 on tmpfs). Spaced
// out, the broker's own events keep the store in fsync at most 1/emitSpacing of the time. Every
// event is still stored and fsynced, in order; under a storm it may be stored up to
// emitSpacing commit times later (maxEmitGap at most).
const (
	maxEmitBatch = 1024
	maxEmitBytes = 256 << 10
	emitSpacing  = 25
	maxEmitGap   = time.Second
)

// emitter is the queue of events the broker emits, and whether a goroutine drains it.
type emitter struct {
	mu      sync.Mutex
	queue   []emitted
	running bool          // emitLoop runs
	next    time.Time     // the next round starts no sooner, unless the broker closes
	wake    chan struct{} // a waiting emitLoop: the broker closes
}

type emitted struct {
	ev   *event.Event
	kind string
	size int // ev.Size()
}

// wakeUp ends a wait of emitLoop. e.mu is held.
func (e *emitter) wakeUp() {
	if e.wake == nil {
		e.wake = make(chan struct{}, 1)
	}
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (b *Broker) emitLoop() {
	e := &b.emitter
	for {
		e.mu.Lock()
		if len(e.queue) == 0 {
			e.running = false
			e.mu.Unlock()
			return
		}
		if wait := time.Until(e.next); wait > 0 && !b.closed.Load() {
			if e.wake == nil {
				e.wake = make(chan struct{}, 1)
			}
			wake := e.wake
			e.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-wake:
			}
			t.Stop()
			continue
		}
		round := e.queue
		e.queue = nil
		e.mu.Unlock()
		start := time.Now()
		b.emitRound(round)
		e.mu.Lock()
		e.next = start.Add(min(emitSpacing*time.Since(start), maxEmitGap))
		e.mu.Unlock()
	}
}

// emitRound appends the events of one round and waits until every request is answered.
func (b *Broker) emitRound(round []emitted) {
	var reqs [][]emitted
	for i := 0; i < len(round); {
		n, size := 0, 0
		for i+n < len(round) && n < maxEmitBatch && (n == 0 || size+round[i+n].size <= maxEmitBytes) {
			size += round[i+n].size
			n++
		}
		reqs = append(reqs, round[i:i+n])
		i += n
	}
	errs := make([]error, len(reqs))
	var wg sync.WaitGroup
	for r, req := range reqs {
		evs := make([]*event.Event, len(req))
		for i, x := range req {
			evs[i] = x.ev
		}
		wg.Add(1)
		b.gw.AcceptAsync(evs, ingest.AcceptOptions{}, func(err error) { errs[r] = err; wg.Done() })
	}
	wg.Wait()
	for r, req := range reqs {
		for _, x := range req {
			switch err := errs[r]; {
			case err != nil:
				b.m.gatewayEventFailed.Inc()
				b.log.Error("mqtt: gateway event not stored", "kind", x.kind, "topic", x.ev.Topic, "error", err)
			case x.kind == "connected":
				b.m.presenceConnected.Inc()
			case x.kind == "disconnected":
				b.m.presenceDisconnected.Inc()
			}
			b.pending.Done()
		}
	}
}

// defaultNode is the node name when Options.Node is empty: the host name, or "local".
func defaultNode() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "local"
}
