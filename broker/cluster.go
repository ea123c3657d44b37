package broker

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	mqtt "github.com/mochi-mqtt/server/v2"
	mstorage "github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest/auth"
)

// Cluster is what the broker needs from cluster mode: a node name and a message bus between
// nodes (core NATS subjects).
type Cluster interface {
	Node() string
	// Publish sends data to every node subscribed to subject, this one included (fire and forget).
	Publish(subject string, data []byte) error
	// Subscribe calls fn with the data of every message on subject until stop is called. Calls
	// for one subscription are sequential.
	Subscribe(subject string, fn func(data []byte)) (stop func(), err error)
}

// Subjects of the broker on the cluster bus. How MQTT works across nodes is described in
// README.md ("Cluster mode").
const (
	subjectDownlink = "fleetgate.mqtt.downlink" // a message for the subscribers of every node
	// Takeovers (a client id connected on a node: others let go of it) and releases (a node let
	// go of a client id) share one subject, and so one subscription, which handles a node's
	// messages in the order it sent them: a takeover sent when a client connected to node A is
	// handled by node B before A's release of that client for a newer connection on B. On two
	// subjects B could handle the release first, load the session, and then close its own new
	// connection on A's old takeover.
	subjectSession = "fleetgate.mqtt.session"
)

// Kinds of the messages on subjectSession.
const (
	kindTakeover = "takeover"
	kindReleased = "released"
)

// Keys of cluster mode in the shared KV (besides the session keys of persist.go).
//
//	mqtt/node/<node>                                           heartbeat: {"at": unix ms}
//	mqtt/q/<client id> 0x00 <node> 0x00 <unix ns> 0x00 <seq>   a QoS 1/2 message queued by <node>
//	                                                           for a session whose holder is dead
const (
	keyNode   = "mqtt/node/"
	keyQueued = "mqtt/q/"
)

// DefaultClusterHeartbeat is how often a node writes its heartbeat; a node whose heartbeat is
// older than clusterDeadBeats heartbeats is taken for dead.
const (
	DefaultClusterHeartbeat = 2 * time.Second
	clusterDeadBeats        = 3
	// releaseWait bounds how long a CONNECT waits for the node that held the session to let go
	// of it before the session is read from the KV.
	releaseWait = 2 * time.Second
	// releasedFor is how long the persist hook ignores a client whose session another node took.
	releasedFor = time.Minute
)

// recentMsg is a QoS 1/2 message published on this node, kept for the detection window.
type recentMsg struct {
	at  time.Time
	msg mstorage.Message
}

// recentMax bounds the messages kept for the detection window (the oldest go first).
const recentMax = 1 << 16

// aliveMargin is how long before a node was last known alive a message may have reached it and
// still been lost with it (received, not yet written to the KV).
const aliveMargin = time.Second

type downlinkMsg struct {
	Node string           `json:"n"`
	Msg  mstorage.Message `json:"m"`
}

// sessionMsg is a message on subjectSession.
type sessionMsg struct {
	Kind string `json:"k"`  // kindTakeover or kindReleased
	Node string `json:"n"`  // takeover: the node the client connected to; released: the node that let go
	ID   string `json:"id"` // the tenant-scoped client id
	// At (takeover) is when the client's CONNECT was authenticated, unix ns on its node's
	// clock. A node holding a connection with that id authenticated later keeps it: the
	// takeover is stale (sent for an older connection, and late).
	At int64 `json:"at,omitempty"`
}

type heartbeat struct {
	At   int64 `json:"at"`             // unix ms
	Down bool  `json:"down,omitempty"` // shut down cleanly at At
}

// orphan is a persistent session no live node holds: the node it names is dead.
type orphan struct {
	id     string
	owner  string
	p      *auth.Principal
	queued *atomic.Int64 // its inflight and queued records (bounded by the broker's max inflight)
}

// orphanIndex matches topics against the subscriptions of orphaned sessions.
type orphanIndex struct {
	topics   *mqtt.TopicsIndex
	sessions map[string]orphan
}

type clusterState struct {
	b    *Broker
	bus  Cluster
	node string
	hb   time.Duration

	stops   []func()
	quit    chan struct{}
	done    chan struct{}
	stopped sync.Once

	mu      sync.Mutex
	waiters map[string][]chan struct{} // "<node>\x00<client id>" → CONNECTs waiting for its release

	orphans atomic.Pointer[orphanIndex]
	seq     atomic.Uint64

	// The detection window: a node that dies is taken for dead a moment later (its routes
	// close at once, its heartbeat goes stale after clusterDeadBeats beats); a QoS 1/2 message
	// published here meanwhile went to it over the bus and was lost with it. So the QoS 1/2
	// messages published here in the last recentKeep are kept, and when a session becomes an
	// orphan, those published since its node was last known alive (less a margin) are queued
	// for it too (at least once: it may get one it had already been given).
	replayMu sync.Mutex  // orders broadcast's queueing against refresh's index swap and replay
	recent   []recentMsg // oldest first, from recentAt on
	recentAt int
	lastUp   map[string]time.Time // when each node was last seen connected (bus with PeersUp)
	replayed *metrics.Counter

	sent, received, takeovers, sessionLoads, queued, busErrors *metrics.Counter
	queueFull, expired, staleTakeovers                         *metrics.Counter
}

func newClusterState(b *Broker, bus Cluster, hb time.Duration, set *metrics.Set) *clusterState {
	if hb <= 0 {
		hb = DefaultClusterHeartbeat
	}
	c := &clusterState{
		b: b, bus: bus, node: bus.Node(), hb: hb,
		quit: make(chan struct{}), done: make(chan struct{}),
		waiters: map[string][]chan struct{}{},
		lastUp:  map[string]time.Time{},
	}
	c.sent = set.NewCounter(`fleetgate_cluster_downlink_sent_total`)
	c.received = set.NewCounter(`fleetgate_cluster_downlink_received_total`)
	c.takeovers = set.NewCounter(`fleetgate_cluster_takeovers_total`)
	c.sessionLoads = set.NewCounter(`fleetgate_cluster_session_loads_total`)
	c.staleTakeovers = set.NewCounter(`fleetgate_cluster_stale_takeovers_total`)
	c.queued = set.NewCounter(`fleetgate_cluster_offline_queued_total`)
	c.busErrors = set.NewCounter(`fleetgate_cluster_bus_errors_total`)
	c.queueFull = set.NewCounter(`fleetgate_cluster_offline_dropped_total`)
	c.expired = set.NewCounter(`fleetgate_cluster_orphans_expired_total`)
	c.replayed = set.NewCounter(`fleetgate_cluster_detection_window_queued_total`)
	c.orphans.Store(&orphanIndex{topics: mqtt.NewTopicsIndex(), sessions: map[string]orphan{}})
	// Persistent sessions whose node is dead, as this node knows them: QoS 1/2 messages for
	// them are queued in the KV by the node that publishes them.
	set.NewGauge(`fleetgate_cluster_orphaned_sessions`, func() float64 { return float64(len(c.orphans.Load().sessions)) })
	return c
}

// start subscribes to the bus and writes the first heartbeat; run (the heartbeat loop) follows.
func (c *clusterState) start() error {
	for subj, fn := range map[string]func([]byte){
		subjectDownlink: c.onDownlink,
		subjectSession:  c.onSession,
	} {
		stop, err := c.bus.Subscribe(subj, fn)
		if err != nil {
			c.unsubscribe()
			return fmt.Errorf("cluster: subscribing to %s: %w", subj, err)
		}
		c.stops = append(c.stops, stop)
	}
	c.beat()
	c.refresh()
	go c.run()
	return nil
}

func (c *clusterState) unsubscribe() {
	for _, stop := range c.stops {
		stop()
	}
	c.stops = nil
}

func (c *clusterState) run() {
	defer close(c.done)
	t := time.NewTicker(c.hb)
	defer t.Stop()
	// A bus that sees the nodes' connections (cluster mode's embedded NATS) tells of a node's
	// death at once: the index of orphaned sessions is then rebuilt at once, not at the next
	// heartbeat, so that a message published right after is queued for them.
	fast := make(<-chan time.Time)
	if _, ok := c.bus.(interface{ PeersUp() []string }); ok {
		ft := time.NewTicker(peerCheck)
		defer ft.Stop()
		fast = ft.C
	}
	last := ""
	for {
		select {
		case <-c.quit:
			return
		case <-t.C:
			c.beat()
			c.refresh()
			c.sweep()
		case <-fast:
			peers := c.peersUp()
			c.seen(peers)
			if up := strings.Join(peers, ","); up != last {
				last = up
				c.refresh()
			}
		}
	}
}

// peersUp is the nodes the bus sees connected, or nil when it cannot tell (a bus without
// PeersUp, such as an external NATS).
func (c *clusterState) peersUp() []string {
	if pu, ok := c.bus.(interface{ PeersUp() []string }); ok {
		return pu.PeersUp()
	}
	return nil
}

// seen records that the peers in up are connected now.
func (c *clusterState) seen(up []string) {
	now := time.Now()
	c.replayMu.Lock()
	for _, n := range up {
		c.lastUp[n] = now
	}
	c.replayMu.Unlock()
}

// peerCheck is how often the bus's view of the other nodes is looked at (in memory).
const peerCheck = 100 * time.Millisecond

// stop leaves the bus and stops the heartbeat. clean marks the heartbeat down, so that other
// nodes take this one for dead at once (its persistent sessions become orphans); without it
// (a crash, in tests) they notice after clusterDeadBeats heartbeats.
func (c *clusterState) stop(clean bool) {
	c.stopped.Do(func() {
		close(c.quit)
		<-c.done
		c.unsubscribe()
		if clean {
			c.b.persist.put(keyNode+c.node, heartbeat{At: time.Now().UnixMilli(), Down: true})
		}
	})
}

func (c *clusterState) publish(subject string, v any) error {
	data, err := json.Marshal(v)
	if err == nil {
		err = c.bus.Publish(subject, data)
	}
	if err != nil {
		c.busErrors.Inc()
		c.b.log.Warn("cluster bus: publish failed", "subject", subject, "error", err)
		return fmt.Errorf("%w: %w", ErrClusterBus, err)
	}
	return nil
}

// ---- liveness ----

func (c *clusterState) beat() {
	c.b.persist.put(keyNode+c.node, heartbeat{At: time.Now().UnixMilli()})
}

// alive reports whether node's heartbeat is recent. A session record naming no node (written
// by a single node before cluster mode) has no live holder.
func (c *clusterState) alive(node string) bool {
	if node == c.node {
		return true
	}
	if node == "" {
		return false
	}
	// A bus that sees the nodes' connections (cluster mode's embedded NATS) knows of a death
	// at once: its routes close when the process dies.
	if up := c.peersUp(); up != nil && !slices.Contains(up, node) {
		return false
	}
	data, ok, err := c.b.persist.store.Get(keyNode + node)
	if err != nil || !ok {
		return false
	}
	var h heartbeat
	if json.Unmarshal(data, &h) != nil {
		return false
	}
	return c.beating(h)
}

func (c *clusterState) beating(h heartbeat) bool {
	return !h.Down && time.Since(time.UnixMilli(h.At)) < clusterDeadBeats*c.hb
}

// refresh rebuilds the index of orphaned sessions: persistent sessions whose holder is dead.
// The live node with the smallest name also deletes orphaned sessions past their expiry,
// counted from their node's last heartbeat.
func (c *clusterState) refresh() {
	h := c.b.persist
	up := c.peersUp()
	c.seen(up)
	beats := map[string]heartbeat{}
	expirer := true
	_ = scanJSON(h, keyNode, func(key string, hb *heartbeat) {
		node := strings.TrimPrefix(key, keyNode)
		beats[node] = *hb
		if node < c.node && c.beating(*hb) {
			expirer = false
		}
	})
	idx := &orphanIndex{topics: mqtt.NewTopicsIndex(), sessions: map[string]orphan{}}
	var expired []*storedClient
	err := scanJSON(h, keyClient, func(_ string, rec *storedClient) {
		if rec.Node == c.node {
			return
		}
		hb, known := beats[rec.Node]
		// Alive: a recent heartbeat, and connected when the bus can tell (a killed node's
		// routes close at once, long before its heartbeat goes stale).
		if known && c.beating(hb) && (up == nil || slices.Contains(up, rec.Node)) {
			return
		}
		if expirer && known && c.orphanExpired(rec, hb) {
			expired = append(expired, rec)
			return
		}
		p, err := h.principalOf(rec)
		if err != nil {
			return // no longer authorized: nothing is queued for it
		}
		idx.sessions[rec.ID] = orphan{id: rec.ID, owner: rec.Node, p: p, queued: new(atomic.Int64)}
	})
	if err != nil {
		h.fail("listing sessions", err)
		return
	}
	for id, o := range idx.sessions {
		_ = scanJSON(h, keySub+id+"\x00", func(_ string, s *mstorage.Subscription) {
			idx.topics.Subscribe(id, packets.Subscription{Filter: s.Filter, Qos: s.Qos, NoLocal: s.NoLocal})
		})
		for _, prefix := range []string{keyInflight, keyQueued} {
			_ = h.store.Scan(prefix+id+"\x00", func(string, []byte) error { o.queued.Add(1); return nil })
		}
	}
	c.replayMu.Lock()
	old := c.orphans.Swap(idx)
	c.replay(old, idx, beats)
	c.replayMu.Unlock()
	for _, rec := range expired {
		if cur, ok := c.readClient(rec.ID); ok && cur.Node == rec.Node { // not adopted meanwhile
			h.deleteSession(rec.ID)
			c.expired.Inc()
			c.b.log.Info("mqtt session of a dead node expired", "client", rec.ID, "node", rec.Node)
		}
	}
}

// replay queues, for each session that is an orphan in idx and was not in old, the messages
// kept from the detection window of its node: those published here since the node was last
// known alive, less aliveMargin. Called with replayMu held, right after idx became the index.
func (c *clusterState) replay(old, idx *orphanIndex, beats map[string]heartbeat) {
	if c.recentAt == len(c.recent) {
		return
	}
	since := map[string]time.Time{} // new orphans → when their messages may have been lost from
	for id, o := range idx.sessions {
		if _, was := old.sessions[id]; was {
			continue
		}
		alive := c.lastUp[o.owner]
		if hb, ok := beats[o.owner]; ok && time.UnixMilli(hb.At).After(alive) {
			alive = time.UnixMilli(hb.At)
		}
		since[id] = alive.Add(-aliveMargin)
	}
	if len(since) == 0 {
		return
	}
	for _, r := range c.recent[c.recentAt:] {
		for id, sub := range idx.topics.Subscribers(r.msg.TopicName).Subscriptions {
			if from, ok := since[id]; ok && !r.at.Before(from) && c.queueFor(idx.sessions[id], sub, r.msg) {
				c.replayed.Inc()
			}
		}
	}
}

// keep remembers a QoS 1/2 message published here for the detection window. Called with
// replayMu held.
func (c *clusterState) keep(msg mstorage.Message) {
	now := time.Now()
	keep := time.Duration(clusterDeadBeats+1)*c.hb + aliveMargin
	for c.recentAt < len(c.recent) && (now.Sub(c.recent[c.recentAt].at) > keep || len(c.recent)-c.recentAt >= recentMax) {
		c.recent[c.recentAt] = recentMsg{}
		c.recentAt++
	}
	if c.recentAt > len(c.recent)/2 { // compact now and then: amortized O(1) a message
		n := copy(c.recent, c.recent[c.recentAt:])
		clear(c.recent[n:])
		c.recent, c.recentAt = c.recent[:n], 0
	}
	c.recent = append(c.recent, recentMsg{at: now, msg: msg})
}

// orphanExpired reports whether an orphaned session is past its expiry (MQTT 5 session expiry
// interval, else the broker's maximum), counted from its node's last heartbeat: the latest it
// can have been disconnected.
func (c *clusterState) orphanExpired(rec *storedClient, hb heartbeat) bool {
	expiry := int64(c.b.server.Options.Capabilities.MaximumSessionExpiryInterval)
	if rec.ProtocolVersion == 5 && rec.Properties.SessionExpiryIntervalFlag {
		expiry = int64(rec.Properties.SessionExpiryInterval)
	}
	return time.Now().UnixMilli() > hb.At+expiry*1000
}

// ---- downlink ----

// broadcast sends a publish injected on this node to the other nodes, and queues it in the KV
// for the orphaned persistent sessions it is for. pk is as given to InjectPacket (the sender's
// id, if any, in pk.Connect.ClientIdentifier). An error (wrapping ErrClusterBus) means the
// other nodes did not get it.
func (c *clusterState) broadcast(pk packets.Packet) error {
	msg := message(mstorage.InflightKey, "", pk.Connect.ClientIdentifier, pk, 0)
	msg.Origin = pk.Connect.ClientIdentifier
	msg.PacketID = 0
	if msg.Created == 0 {
		msg.Created = time.Now().Unix()
	}
	err := c.publish(subjectDownlink, downlinkMsg{Node: c.node, Msg: msg})
	if err == nil {
		c.sent.Inc()
	}
	if pk.FixedHeader.Qos > 0 {
		c.replayMu.Lock()
		c.keep(msg)
		c.queueForOrphans(msg)
		c.replayMu.Unlock()
	}
	return err
}

// queueForOrphans appends msg to the queued records of every orphaned session subscribed to
// its topic. Only the node where the message was published does this, so it is queued once.
// Called with replayMu held.
func (c *clusterState) queueForOrphans(msg mstorage.Message) {
	idx := c.orphans.Load()
	if len(idx.sessions) == 0 {
		return
	}
	for id, sub := range idx.topics.Subscribers(msg.TopicName).Subscriptions {
		if o, ok := idx.sessions[id]; ok {
			c.queueFor(o, sub, msg)
		}
	}
}

// queueFor appends msg to the queued records of the orphaned session o, subscribed to msg's
// topic by sub (at the granted QoS), and reports whether it did.
func (c *clusterState) queueFor(o orphan, sub packets.Subscription, msg mstorage.Message) bool {
	if (sub.NoLocal && msg.Origin == o.id) || !o.p.CanSubscribe(msg.TopicName) {
		return false
	}
	if rec, found := c.readClient(o.id); !found || c.alive(rec.Node) {
		return false // gone, or adopted by a live node since the index was built: it delivers
	}
	if o.queued.Load() >= int64(c.b.server.Options.Capabilities.MaximumInflight) {
		c.queueFull.Inc() // as mochi drops what exceeds an offline session's inflight quota
		return false
	}
	m := msg
	m.Client = o.id
	m.FixedHeader.Qos = min(msg.FixedHeader.Qos, sub.Qos)
	m.FixedHeader.Retain = false
	if m.FixedHeader.Qos == 0 {
		return false
	}
	key := fmt.Sprintf("%s%s\x00%s\x00%020d\x00%d", keyQueued, o.id, c.node, time.Now().UnixNano(), c.seq.Add(1))
	m.ID = key
	c.b.persist.put(key, m)
	o.queued.Add(1)
	c.queued.Inc()
	return true
}

// onDownlink injects a message published on another node into this node's mochi, marked as
// remote: it is delivered to the subscribers here and retained in memory, but neither sent on
// again nor written to the KV (its node did that).
func (c *clusterState) onDownlink(data []byte) {
	var m downlinkMsg
	if err := json.Unmarshal(data, &m); err != nil {
		c.b.log.Warn("cluster bus: bad downlink message", "error", err)
		return
	}
	if m.Node == c.node || c.b.closed.Load() {
		return
	}
	pk := m.Msg.ToPacket()
	pk.FixedHeader.Type = packets.Publish
	pk.Origin = ""
	pk.Connect.ClientIdentifier = m.Msg.Origin
	pk.Connect.Username = []byte(m.Node) // remoteOrigin
	if pk.FixedHeader.Qos > 0 {
		pk.PacketID = 1 // required by validation; the inline client never acks
	}
	if err := c.b.server.InjectPacket(c.b.inline, pk); err != nil {
		c.b.log.Debug("cluster downlink: delivery failed", "topic", pk.TopicName, "error", err)
		return
	}
	c.received.Inc()
}

// remoteOrigin is the node a publish came from over the bus, or "" for one published here.
func remoteOrigin(pk packets.Packet) string { return string(pk.Connect.Username) }

// clusterHook sends will messages to the other nodes: mochi publishes them itself (not through
// the inline client), on the node where the connection ended.
type clusterHook struct {
	mqtt.HookBase
	c *clusterState
}

func (h *clusterHook) ID() string { return "fleetgate-cluster" }

func (h *clusterHook) Provides(b byte) bool { return b == mqtt.OnWillSent }

func (h *clusterHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	if h.c.b.halted.Load() {
		return
	}
	pk.Connect.ClientIdentifier = cl.ID
	_ = h.c.broadcast(pk) // logged and counted
}

// ---- client ids and sessions across nodes ----

// readClient reads the stored session record of client id.
func (c *clusterState) readClient(id string) (*storedClient, bool) {
	data, ok, err := c.b.persist.store.Get(keyClient + id)
	if err != nil {
		c.b.persist.fail("reading "+keyClient+id, err)
		return nil, false
	}
	if !ok {
		return nil, false
	}
	rec := new(storedClient)
	if err := json.Unmarshal(data, rec); err != nil {
		c.b.persist.fail("decoding "+keyClient+id, err)
		return nil, false
	}
	return rec, true
}

// connect runs in OnConnect for an authenticated client, before mochi looks for an existing
// session: every other node closes its connection with this client id and lets go of its copy
// of the session; then, when the session is not held here, it is loaded from the KV (or
// deleted there, for a clean start).
func (c *clusterState) connect(cl *mqtt.Client, pk packets.Packet, s *session) {
	id := cl.ID
	rec, found := c.readClient(id)
	var wait chan struct{}
	if found && rec.Node != c.node && c.alive(rec.Node) {
		wait = c.waitRelease(rec.Node, id)
	}
	_ = c.publish(subjectSession, sessionMsg{Kind: kindTakeover, Node: c.node, ID: id, At: s.connectedAt.UnixNano()}) // logged and counted
	if wait != nil {
		select {
		case <-wait:
		case <-time.After(releaseWait):
			c.cancelWait(rec.Node, id, wait)
			c.b.log.Warn("cluster: the node holding a session did not let go of it in time; loading it anyway",
				"client", id, "node", rec.Node)
		}
	}
	local, held := c.b.server.Clients.Get(id)
	if held && (!found || rec.Node == c.node) {
		return // held here: mochi takes it over as on one node
	}
	if held { // a stale copy: another node adopted the session since
		c.release(local)
	}
	if !found {
		return
	}
	if pk.Connect.Clean {
		c.b.persist.deleteSession(id)
		return
	}
	c.load(id, rec, s)
}

func (c *clusterState) waitRelease(node, id string) chan struct{} {
	ch := make(chan struct{})
	k := node + "\x00" + id
	c.mu.Lock()
	c.waiters[k] = append(c.waiters[k], ch)
	c.mu.Unlock()
	return ch
}

func (c *clusterState) cancelWait(node, id string, ch chan struct{}) {
	k := node + "\x00" + id
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := c.waiters[k]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(c.waiters, k)
	} else {
		c.waiters[k] = ws
	}
}

// onSession handles a message on subjectSession from another node.
func (c *clusterState) onSession(data []byte) {
	var m sessionMsg
	if err := json.Unmarshal(data, &m); err != nil {
		c.b.log.Warn("cluster bus: bad session message", "error", err)
		return
	}
	if m.Node == c.node {
		return
	}
	switch m.Kind {
	case kindTakeover:
		c.onTakeover(m)
	case kindReleased:
		c.onReleased(m)
	default:
		c.b.log.Warn("cluster bus: unknown session message", "kind", m.Kind, "node", m.Node)
	}
}

func (c *clusterState) onReleased(m sessionMsg) {
	k := m.Node + "\x00" + m.ID
	c.mu.Lock()
	ws := c.waiters[k]
	delete(c.waiters, k)
	c.mu.Unlock()
	for _, ch := range ws {
		close(ch)
	}
}

// onTakeover: client id connected on another node. A connection here with that id is closed
// (MQTT 5: DISCONNECT 0x8E session taken over), and this node's copy of its session is dropped
// without touching the KV, which the new node now owns.
func (c *clusterState) onTakeover(m sessionMsg) {
	if old, ok := c.b.server.Clients.Get(m.ID); ok {
		if s := c.b.session(old); s != nil && m.At != 0 && s.connectedAt.UnixNano() > m.At {
			// Our connection is the newer one: this takeover was sent for an older connection
			// and arrived late. No release is sent: this node keeps the session.
			c.staleTakeovers.Inc()
			c.b.log.Info("mqtt takeover for an older connection on another node ignored",
				"client", m.ID, "node", m.Node)
			return
		}
		if !old.Closed() {
			c.takeovers.Inc()
			c.b.log.Info("mqtt client id connected on another node: session taken over", "client", m.ID, "node", m.Node)
		}
		c.release(old)
	}
	_ = c.publish(subjectSession, sessionMsg{Kind: kindReleased, Node: c.node, ID: m.ID})
}

// release drops this node's copy of old's session: its connection (if open), subscriptions
// and queued messages, with every store write of the persist hook for it suppressed.
func (c *clusterState) release(old *mqtt.Client) {
	b := c.b
	b.released.Store(old, struct{}{})
	// Forgotten once its connection's goroutine has surely run its last hooks (it may still be
	// reading when this returns): OnDisconnect, then ClearInflights/UnsubscribeClient.
	time.AfterFunc(releasedFor, func() { b.released.Delete(old) })
	b.persist.setPersisted(old.ID, false)
	if cur, ok := b.server.Clients.Get(old.ID); ok && cur == old {
		b.server.Clients.Delete(old.ID) // no more deliveries to it here
	}
	if s := b.session(old); s != nil {
		s.stopTimer()
	}
	b.sessions.Delete(old)
	if !old.Closed() {
		if old.Properties.ProtocolVersion == 5 {
			_ = b.server.DisconnectClient(old, packets.ErrSessionTakenOver)
		} else {
			old.Stop(packets.ErrSessionTakenOver)
		}
	}
	b.server.UnsubscribeClient(old)
	old.ClearInflights()
}

// load builds the offline session of client id from the KV, as mochi does for the sessions it
// reads at start, so that mochi takes it over for the connecting client: its subscriptions,
// its unacknowledged messages and the messages queued for it while its node was dead
// (renumbered into free packet ids). The session record then names this node.
func (c *clusterState) load(id string, rec *storedClient, s *session) {
	b, h := c.b, c.b.persist
	ncl := b.server.NewClient(nil, rec.Listener, id, false)
	ncl.Properties.Username = rec.Username
	ncl.Properties.Clean = rec.Clean
	ncl.Properties.ProtocolVersion = rec.ProtocolVersion
	ncl.Properties.Props = packets.Properties{
		SessionExpiryInterval:     rec.Properties.SessionExpiryInterval,
		SessionExpiryIntervalFlag: rec.Properties.SessionExpiryIntervalFlag,
		RequestProblemInfoFlag:    rec.Properties.RequestProblemInfoFlag,
		RequestProblemInfo:        rec.Properties.RequestProblemInfo,
		RequestResponseInfo:       rec.Properties.RequestResponseInfo,
		ReceiveMaximum:            rec.Properties.ReceiveMaximum,
		TopicAliasMaximum:         rec.Properties.TopicAliasMaximum,
		User:                      rec.Properties.User,
		MaximumPacketSize:         rec.Properties.MaximumPacketSize,
	}
	ncl.Properties.Will = mqtt.Will(rec.Will)
	ncl.Stop(packets.ErrServerShuttingDown)

	var subs []mstorage.Subscription
	h.fail("listing subscriptions of "+id, scanJSON(h, keySub+id+"\x00", func(_ string, v *mstorage.Subscription) {
		subs = append(subs, *v)
	}))
	h.fail("listing inflight messages of "+id, scanJSON(h, keyInflight+id+"\x00", func(_ string, m *mstorage.Message) {
		if ncl.State.Inflight.Set(m.ToPacket()) {
			atomic.AddInt64(&b.server.Info.Inflight, 1)
		}
	}))
	c.adoptQueued(ncl)

	// judged by the connecting client's principal until mochi hands it over (OnSessionEstablish)
	ls := newSession(b, ncl, s.p, s.clientID)
	ls.connectedAt = s.connectedAt // stands for the connecting client (see onTakeover)
	b.sessions.Store(ncl, ls)
	for _, v := range subs {
		sb := packets.Subscription{Filter: v.Filter, RetainHandling: v.RetainHandling, Qos: v.Qos,
			RetainAsPublished: v.RetainAsPublished, NoLocal: v.NoLocal, Identifier: v.Identifier}
		if b.server.Topics.Subscribe(id, sb) {
			atomic.AddInt64(&b.server.Info.Subscriptions, 1)
		}
		ncl.State.Subscriptions.Add(v.Filter, sb)
	}
	b.server.Clients.Add(ncl) // from here, messages broadcast to this node are queued for it
	rec.Node = c.node
	h.put(keyClient+id, rec)
	h.setPersisted(id, true)
	c.adoptQueued(ncl) // queued by a node that read the old record before it was replaced
	c.sessionLoads.Inc()
	b.log.Info("mqtt session loaded from the cluster", "client", id, "subscriptions", len(subs),
		"queued", ncl.State.Inflight.Len())
}

// adoptQueued moves the messages queued in the KV for cl's session into its inflight table,
// each under a packet id it does not use yet, and into its inflight records. An open
// connection is sent them at once; an offline session gets them when it reconnects.
func (c *clusterState) adoptQueued(cl *mqtt.Client) {
	h := c.b.persist
	type q struct {
		key string
		m   mstorage.Message
	}
	var qs []q
	h.fail("listing queued messages of "+cl.ID, scanJSON(h, keyQueued+cl.ID+"\x00", func(key string, m *mstorage.Message) {
		qs = append(qs, q{key, *m})
	}))
	next := 1
	for _, e := range qs {
		for ; next <= 65535; next++ {
			if _, used := cl.State.Inflight.Get(uint16(next)); !used {
				break
			}
		}
		if next > 65535 {
			c.b.log.Warn("cluster: no free packet id for a queued message; it stays queued", "client", cl.ID)
			return
		}
		pk := e.m.ToPacket()
		pk.FixedHeader.Type = packets.Publish
		pk.PacketID = uint16(next)
		next++
		if !cl.State.Inflight.Set(pk) {
			continue
		}
		atomic.AddInt64(&c.b.server.Info.Inflight, 1)
		key := inflightKey(cl.ID, pk.PacketID)
		h.put(key, message(mstorage.InflightKey, key, cl.ID, pk, 0))
		h.del(e.key)
		if !cl.Closed() && cl.Net.Conn != nil {
			_ = cl.WritePacket(pk)
		}
	}
}

// sweep adopts messages queued in the KV for sessions this node holds (queued by a node that
// took this one's session for an orphan, or before this node adopted it).
func (c *clusterState) sweep() {
	ids := map[string]bool{}
	_ = c.b.persist.store.Scan(keyQueued, func(key string, _ []byte) error {
		id, _, _ := strings.Cut(strings.TrimPrefix(key, keyQueued), "\x00")
		ids[id] = true
		return nil
	})
	for id := range ids {
		if cl, ok := c.b.server.Clients.Get(id); ok && c.b.persist.isPersisted(id) {
			if rec, found := c.readClient(id); found && rec.Node == c.node {
				c.adoptQueued(cl)
			}
		}
	}
}

// owns reports whether a stored session record belongs to this node (read at start).
func (c *clusterState) owns(rec *storedClient) bool { return rec.Node == c.node }

// queuedForStart returns the messages queued in the KV for the owned session id, renumbered
// after the packet ids in used, and moves them to inflight records.
func (c *clusterState) queuedForStart(id string, used map[uint16]bool) []mstorage.Message {
	h := c.b.persist
	type q struct {
		key string
		m   mstorage.Message
	}
	var qs []q
	h.fail("listing queued messages of "+id, scanJSON(h, keyQueued+id+"\x00", func(key string, m *mstorage.Message) {
		qs = append(qs, q{key, *m})
	}))
	var out []mstorage.Message
	next := 1
	for _, e := range qs {
		for next <= 65535 && used[uint16(next)] {
			next++
		}
		if next > 65535 {
			break
		}
		m := e.m
		m.PacketID = uint16(next)
		used[m.PacketID] = true
		m.ID = inflightKey(id, m.PacketID)
		m.T = mstorage.InflightKey
		m.FixedHeader.Type = packets.Publish
		h.put(m.ID, m)
		h.del(e.key)
		out = append(out, m)
	}
	return out
}
