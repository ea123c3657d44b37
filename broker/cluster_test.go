package broker

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/functions"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/testutil"
	"github.com/fleetgate/fleetgate/storage"
)

// memKV is the in-memory KV shared by the tests (internal/testutil).
type memKV = testutil.MemKV

func newMemKV() *memKV { return testutil.NewMemKV() }

// sharedKV is a node's Backend: its own log, the cluster's KV.
type sharedKV struct {
	storage.Backend
	kv storage.KV
}

func (s sharedKV) Get(key string) ([]byte, bool, error) { return s.kv.Get(key) }
func (s sharedKV) Put(key string, v []byte) error       { return s.kv.Put(key, v) }
func (s sharedKV) PutMany(kvs map[string][]byte) error  { return s.kv.PutMany(kvs) }
func (s sharedKV) Delete(key string) error              { return s.kv.Delete(key) }
func (s sharedKV) Scan(prefix string, fn func(string, []byte) error) error {
	return s.kv.Scan(prefix, fn)
}

// natsBus adapts a core NATS connection to Cluster.
type natsBus struct {
	node string
	nc   *nats.Conn
	tap  busTap // optional
}

// busTap, when set, is called for each message delivered to one of a node's subscriptions:
// before its handler (handled false; it may block to hold the subscription back) and after it.
type busTap func(node, subject string, data []byte, handled bool)

func (n *natsBus) Node() string { return n.node }

func (n *natsBus) Publish(subject string, data []byte) error { return n.nc.Publish(subject, data) }

func (n *natsBus) Subscribe(subject string, fn func([]byte)) (func(), error) {
	sub, err := n.nc.Subscribe(subject, func(m *nats.Msg) {
		if n.tap != nil {
			n.tap(n.node, subject, m.Data, false)
		}
		fn(m.Data)
		if n.tap != nil {
			n.tap(n.node, subject, m.Data, true)
		}
	})
	if err != nil {
		return nil, err
	}
	if err := n.nc.Flush(); err != nil {
		return nil, err
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// startNATS starts n embedded NATS servers on loopback, routed together, and waits for the mesh.
func startNATS(t *testing.T, n int) []*natsserver.Server {
	t.Helper()
	var out []*natsserver.Server
	var routes string
	for i := range n {
		o := &natsserver.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
			Cluster: natsserver.ClusterOpts{Name: "fleetgate-test", Host: "127.0.0.1", Port: -1},
		}
		if routes != "" {
			o.Routes = natsserver.RoutesFromStr(routes)
		}
		s, err := natsserver.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats server not ready")
		}
		t.Cleanup(s.Shutdown)
		if routes == "" {
			routes = fmt.Sprintf("nats://127.0.0.1:%d", s.ClusterAddr().Port)
		}
		out = append(out, s)
	}
	for _, s := range out {
		waitFor(t, "nats routes", func() bool { return s.NumRoutes() >= n-1 })
	}
	return out
}

type clusterNode struct {
	name  string
	b     *Broker
	addr  string
	ns    *natsserver.Server
	nc    *nats.Conn
	store *storage.Store
}

type testCluster struct {
	t     *testing.T
	kv    *memKV
	v     *auth.Verifier
	nodes []*clusterNode
	hb    time.Duration
	tap   busTap
}

const testHeartbeat = 100 * time.Millisecond

// newTestCluster starts n brokers, each with its own embedded NATS server (routed together)
// and its own log, sharing one KV, and waits until the bus carries messages between all nodes.
func newTestCluster(t *testing.T, n int) *testCluster {
	t.Helper()
	return newTestClusterWith(t, n, testHeartbeat, nil)
}

// newTestClusterWith is newTestCluster with the nodes' heartbeat and a tap on their buses.
func newTestClusterWith(t *testing.T, n int, hb time.Duration, tap busTap) *testCluster {
	t.Helper()
	v, err := newVerifierIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, kv: newMemKV(), v: v, hb: hb, tap: tap}
	for i, ns := range startNATS(t, n) {
		tc.nodes = append(tc.nodes, tc.startNode(fmt.Sprintf("gw-%d", i+1), ns))
	}
	tc.busReady()
	return tc
}

func (tc *testCluster) startNode(name string, ns *natsserver.Server) *clusterNode {
	t := tc.t
	t.Helper()
	st, err := storage.Open(storage.Options{InMemory: true, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	gw, err := ingest.New(ingest.Options{Store: st, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.ClientURL(), nats.NoReconnect())
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	b, err := New(Options{Config: cfg, Gateway: gw, Auth: tc.v, Store: sharedKV{Backend: st, kv: tc.kv},
		Logger: testLogger(), Cluster: &natsBus{node: name, nc: nc, tap: tc.tap}, ClusterHeartbeat: tc.hb})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	node := &clusterNode{name: name, b: b, addr: b.Addr().String(), ns: ns, nc: nc, store: st}
	t.Cleanup(func() {
		_ = b.Close()
		nc.Close()
		_ = st.Close()
	})
	return node
}

// busReady waits until a message published by each node reaches every other node. Each node's
// broker subscribed on the same connection before, so its subscriptions have reached the
// other servers too.
func (tc *testCluster) busReady() {
	tc.t.Helper()
	var got sync.Map // "from>to" → true
	for _, to := range tc.nodes {
		sub, err := to.nc.Subscribe("fleetgate.test.probe", func(m *nats.Msg) { got.Store(string(m.Data)+">"+to.name, true) })
		if err != nil {
			tc.t.Fatal(err)
		}
		_ = to.nc.Flush()
		tc.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	waitFor(tc.t, "the cluster bus", func() bool {
		all := true
		for _, from := range tc.nodes {
			_ = from.nc.Publish("fleetgate.test.probe", []byte(from.name))
			for _, to := range tc.nodes {
				if _, ok := got.Load(from.name + ">" + to.name); !ok {
					all = false
				}
			}
		}
		if !all {
			time.Sleep(20 * time.Millisecond)
		}
		return all
	})
}

// kill simulates the death of a node (SIGKILL): from now on it writes nothing to the shared KV
// (not even its session records on the way out, nor the removal of its heartbeat), it leaves
// the bus, its NATS server goes away, and its listeners and connections close.
func (n *clusterNode) kill() {
	n.b.halted.Store(true)
	n.b.cluster.stop(false)
	n.nc.Close()
	n.ns.Shutdown()
	_ = n.b.Close()
}

func (tc *testCluster) token(sub, role string) string {
	tc.t.Helper()
	tok, err := tc.v.Sign(auth.MintClaims(sub, "acme", role, nil, time.Hour, time.Now()))
	if err != nil {
		tc.t.Fatal(err)
	}
	return tok
}

// received collects the messages a paho client gets.
type received struct {
	mu   sync.Mutex
	msgs []string
}

func (r *received) add(s string) {
	r.mu.Lock()
	r.msgs = append(r.msgs, s)
	r.mu.Unlock()
}

func (r *received) has(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if m == s {
			return true
		}
	}
	return false
}

func (r *received) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if m == s {
			n++
		}
	}
	return n
}

func (r *received) handler(_ paho3.Client, m paho3.Message) {
	r.add(m.Topic() + "=" + string(m.Payload()))
}

func (tc *testCluster) connect3(n *clusterNode, id, role string, clean bool, r *received) paho3.Client {
	tc.t.Helper()
	opts := paho3Options(n.addr, id, tc.token(id, role)).SetCleanSession(clean)
	if r != nil {
		opts.SetDefaultPublishHandler(r.handler)
	}
	c, code, err := connect3(tc.t, opts)
	if err != nil || code != 0 {
		tc.t.Fatalf("connecting %s to %s: code %d, %v", id, n.name, code, err)
	}
	return c
}

func subscribe3(t *testing.T, c paho3.Client, filter string, qos byte, r *received) {
	t.Helper()
	tok := c.Subscribe(filter, qos, r.handler)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribing to %s: %v", filter, tok.Error())
	}
}

// TestClusterDownlink: Publish on node 3 reaches a device on node 2; a device's publish on node
// 1 reaches a subscriber on node 2; the metrics count it.
func TestClusterDownlink(t *testing.T) {
	tc := newTestCluster(t, 3)
	n1, n2, n3 := tc.nodes[0], tc.nodes[1], tc.nodes[2]

	var dev received
	d1 := tc.connect3(n2, "d1", "device", true, nil)
	subscribe3(t, d1, "devices/d1/cmd", 1, &dev)
	if err := n3.b.Publish("devices/d1/cmd", []byte("reboot"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the downlink from node 3 on node 2", func() bool { return dev.has("devices/d1/cmd=reboot") })

	var mon received
	m := tc.connect3(n2, "mon", "monitor", true, nil)
	subscribe3(t, m, "devices/#", 1, &mon)
	d2 := tc.connect3(n1, "d2", "device", true, nil)
	if tok := d2.Publish("devices/d2/telemetry", 1, false, "21.5"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	waitFor(t, "a device publish on node 1 at a subscriber on node 2", func() bool { return mon.has("devices/d2/telemetry=21.5") })

	// a will message on node 1 reaches the subscriber on node 2
	rc := dialRaw(t, n1.addr, 4)
	if ack := rc.connect("d3", tc.token("d3", "device"), true, func(pk *packets.Packet) {
		pk.Connect.WillFlag, pk.Connect.WillTopic, pk.Connect.WillPayload, pk.Connect.WillQos = true, "devices/d3/status", []byte("gone"), 1
	}); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK 0x%02x", ack.ReasonCode)
	}
	_ = rc.c.Close()
	waitFor(t, "a will message of node 1 at a subscriber on node 2", func() bool { return mon.has("devices/d3/status=gone") })

	if got := n3.b.cluster.sent.Get(); got < 1 {
		t.Errorf("node 3 downlink sent = %d", got)
	}
	if got := n2.b.cluster.received.Get(); got < 3 {
		t.Errorf("node 2 downlink received = %d, want >= 3", got)
	}
	// a node does not deliver its own broadcast twice
	if err := n2.b.Publish("devices/d1/cmd", []byte("once"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the local downlink", func() bool { return dev.has("devices/d1/cmd=once") })
	if err := n3.b.Publish("devices/d1/cmd", []byte("marker"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a later downlink", func() bool { return dev.has("devices/d1/cmd=marker") })
	if c := dev.count("devices/d1/cmd=once"); c != 1 {
		t.Errorf("a local downlink was delivered %d times", c)
	}
}

// TestClusterReplyV5: a publish with MQTT 5 properties, and a PublishReply, on node 1 reach
// the requester on node 2 with their properties (correlation data, content type).
func TestClusterReplyV5(t *testing.T) {
	tc := newTestCluster(t, 2)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	got := make(chan *paho.Publish, 4)
	c, _, err := connect5(t, n2.addr, "d5", tc.token("d5", "device"), func(cfg *paho.ClientConfig, _ *paho.Connect) {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d5/reply", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "devices/d5/reply",
		Payload: []byte("pong"), PacketID: 1}
	pk.Properties.CorrelationData = []byte("corr-1")
	pk.Properties.ContentType = "text/plain"
	if err := n1.b.inject(pk); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if string(p.Payload) != "pong" || string(p.Properties.CorrelationData) != "corr-1" || p.Properties.ContentType != "text/plain" {
			t.Fatalf("got %q corr %q content type %q", p.Payload, p.Properties.CorrelationData, p.Properties.ContentType)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reply across nodes")
	}

	// PublishReply on node 1 to a request of the device on node 2
	claims, err := json.Marshal(auth.MintClaims("d5", "acme", "device", nil, time.Hour, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	req := &event.Event{ID: "ev-1", Subject: "d5", Tenant: "acme", ClaimsJSON: claims, Meta: map[string]string{
		functions.MetaResponseTopic:   "devices/d5/reply",
		functions.MetaCorrelationData: base64.StdEncoding.EncodeToString([]byte("corr-2")),
	}}
	if err := n1.b.PublishReply(req, []byte("answer"), 1); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if string(p.Payload) != "answer" || string(p.Properties.CorrelationData) != "corr-2" {
			t.Fatalf("got %q corr %q", p.Payload, p.Properties.CorrelationData)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no PublishReply across nodes")
	}
}

// TestClusterRetained: a retained message set on node 1 (admin publish, and a device's
// publish) is served to new subscribers on node 2, clearing it too; a node started later
// reads it from the shared KV.
func TestClusterRetained(t *testing.T) {
	tc := newTestCluster(t, 2)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	retainedOn := func(n *clusterNode, topic string) func() bool {
		return func() bool {
			pk, ok := n.b.server.Topics.Retained.Get(topic)
			return ok && len(pk.Payload) > 0
		}
	}
	if err := n1.b.Publish("devices/d1/config", []byte("v1"), 1, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the retained message on node 2", retainedOn(n2, "devices/d1/config"))
	var r1 received
	s1 := tc.connect3(n2, "d1", "device", true, nil)
	subscribe3(t, s1, "devices/d1/config", 1, &r1)
	waitFor(t, "the retained message at a new subscriber on node 2", func() bool { return r1.has("devices/d1/config=v1") })

	// a device's retained publish on node 1
	d2 := tc.connect3(n1, "d2", "device", true, nil)
	if tok := d2.Publish("devices/d2/state", 1, true, "on"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	waitFor(t, "the device's retained message on node 2", retainedOn(n2, "devices/d2/state"))
	var r2 received
	mon := tc.connect3(n2, "mon", "monitor", true, nil)
	subscribe3(t, mon, "devices/d2/state", 1, &r2)
	waitFor(t, "the device's retained message at a subscriber on node 2", func() bool { return r2.has("devices/d2/state=on") })
	if n := tc.kv.Count(keyRetained); n != 2 {
		t.Errorf("retained records in the KV = %d, want 2", n)
	}

	// a node started now reads them from the KV
	n3 := tc.startNode("gw-3", n1.ns)
	tc.nodes = append(tc.nodes, n3)
	if !retainedOn(n3, "devices/d1/config")() || !retainedOn(n3, "devices/d2/state")() {
		t.Fatal("a node started later does not serve the retained messages in the KV")
	}
	tc.busReady()

	// clearing on node 1 clears everywhere
	if err := n1.b.Publish("devices/d1/config", nil, 1, true); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*clusterNode{n2, n3} {
		waitFor(t, "the retained message cleared on "+n.name, func() bool { return !retainedOn(n, "devices/d1/config")() })
	}
	if _, ok, _ := tc.kv.Get(keyRetained + "devices/d1/config"); ok {
		t.Error("the cleared retained message is still in the KV")
	}
}

// TestClusterTakeover: a client id connected on node 1 then on node 2: the first connection
// gets DISCONNECT 0x8E, and node 1 leaves the session records (now node 2's) in the KV.
func TestClusterTakeover(t *testing.T) {
	tc := newTestCluster(t, 2)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	tok := tc.token("d1", "device")
	gotDisc := make(chan byte, 1)
	persistent := func(_ *paho.ClientConfig, cp *paho.Connect) {
		cp.CleanStart = false
		exp := uint32(300)
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	}
	c1, _, err := connect5(t, n1.addr, "d1", tok, func(cfg *paho.ClientConfig, cp *paho.Connect) {
		persistent(cfg, cp)
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { gotDisc <- d.ReasonCode }
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d1/cmd", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	var got2 atomic.Int32
	c2, ack, err := connect5(t, n2.addr, "d1", tok, func(cfg *paho.ClientConfig, cp *paho.Connect) {
		persistent(cfg, cp)
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if string(pr.Packet.Payload) == "to-new" {
				got2.Add(1)
			}
			return true, nil
		}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ack.SessionPresent {
		t.Error("CONNACK on node 2: session present = false, want true (loaded from the KV)")
	}
	select {
	case code := <-gotDisc:
		if code != packets.ErrSessionTakenOver.Code {
			t.Fatalf("DISCONNECT reason 0x%02x, want 0x8E", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection on node 1 was not taken over")
	}
	waitFor(t, "node 1 done with the old connection", func() bool {
		_, held := n1.b.server.Clients.Get("acme/d1")
		return atomic.LoadInt64(&n1.b.server.Info.ClientsConnected) == 0 && !held
	})
	rec, found := n2.b.cluster.readClient("acme/d1")
	if !found || rec.Node != "gw-2" {
		t.Fatalf("session record after the takeover: found %v, %+v", found, rec)
	}
	if tc.kv.Count(keySub+"acme/d1\x00") != 1 {
		t.Fatal("the session's subscription is gone from the KV")
	}
	if n1.b.cluster.takeovers.Get() != 1 || n2.b.cluster.sessionLoads.Get() != 1 {
		t.Errorf("takeovers on node 1 = %d, session loads on node 2 = %d; want 1, 1",
			n1.b.cluster.takeovers.Get(), n2.b.cluster.sessionLoads.Get())
	}
	// the subscription came along: a downlink from node 1 reaches the client on node 2 once
	if err := n1.b.Publish("devices/d1/cmd", []byte("to-new"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the downlink at the new connection", func() bool { return got2.Load() >= 1 })

	// back to node 1 while node 2 (alive) holds the session offline with a message queued
	_ = c2.Disconnect(&paho.Disconnect{})
	waitFor(t, "node 2 to see the disconnect", func() bool { return atomic.LoadInt64(&n2.b.server.Info.ClientsConnected) == 0 })
	if err := n1.b.Publish("devices/d1/cmd", []byte("queued-on-2"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 2 to queue it", func() bool { return tc.kv.Count(keyInflight+"acme/d1\x00") == 1 })
	got3 := make(chan string, 4)
	_, ack, err = connect5(t, n1.addr, "d1", tok, func(cfg *paho.ClientConfig, cp *paho.Connect) {
		persistent(cfg, cp)
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got3 <- string(pr.Packet.Payload)
			return true, nil
		}}
	})
	if err != nil || !ack.SessionPresent {
		t.Fatalf("back on node 1: %v, session present %v", err, ack != nil && ack.SessionPresent)
	}
	select {
	case m := <-got3:
		if m != "queued-on-2" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the message node 2 queued did not follow the session to node 1")
	}
	waitFor(t, "node 2 to let go of the session", func() bool {
		_, held := n2.b.server.Clients.Get("acme/d1")
		return !held
	})
	if rec, _ := n1.b.cluster.readClient("acme/d1"); rec == nil || rec.Node != "gw-1" {
		t.Fatalf("session record: %+v, want node gw-1", rec)
	}
}

// TestClusterStaleTakeover: the takeover node 1 sends when a client connects there reaches node
// 2 late, after the same client id connected to node 2. The newer connection, on node 2, keeps
// its session and gets its downlink.
//
//   - handed over: a persistent session, so node 2 waits for node 1 to release it. Node 1's old
//     takeover is held back at node 2 until node 1's release has reached node 2's connection:
//     node 2 must handle node 1's messages in the order they were sent (the old takeover first,
//     while node 2 holds nothing yet), not load the session on the release and then drop it
//     on the takeover.
//   - not handed over: clean sessions, so node 2 has nothing to wait for and connects first.
//     The old takeover arrives after: node 2 sees that its connection is the newer one.
func TestClusterStaleTakeover(t *testing.T) {
	for _, handedOver := range []bool{true, false} {
		name := map[bool]string{true: "handed over", false: "not handed over"}[handedOver]
		t.Run(name, func(t *testing.T) { testStaleTakeover(t, handedOver) })
	}
}

func testStaleTakeover(t *testing.T, handedOver bool) {
	hold := make(chan struct{})          // closed: node 1's first takeover may reach node 2's handler
	var held atomic.Bool                 // node 2's handler is being held back
	markerDone := make(chan struct{}, 1) // node 2 handled the marker
	tap := func(node, subject string, data []byte, handled bool) {
		if node != "gw-2" || subject != subjectSession {
			return
		}
		var m sessionMsg
		if json.Unmarshal(data, &m) != nil {
			return
		}
		if handled && m.Node == "marker" {
			markerDone <- struct{}{}
		}
		if !handled && m.Kind == kindTakeover && m.Node == "gw-1" && held.CompareAndSwap(false, true) {
			select {
			case <-hold:
			case <-time.After(20 * time.Second): // never deadlock the test
			}
		}
	}
	// Heartbeats of 1 s: node 1 is never taken for dead here (which would skip the hand-over).
	tc := newTestClusterWith(t, 2, time.Second, tap)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	tok := tc.token("d1", "device")
	opts := func(cp *paho.Connect) {
		if handedOver {
			cp.CleanStart = false
			exp := uint32(300)
			cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
		}
	}
	// node 2's connection sees node 1's release (not yet its handler)
	sawRelease := make(chan struct{})
	var sawOnce sync.Once
	spy, err := n2.nc.Subscribe(subjectSession, func(msg *nats.Msg) {
		var m sessionMsg
		if json.Unmarshal(msg.Data, &m) == nil && m.Kind == kindReleased && m.Node == "gw-1" {
			sawOnce.Do(func() { close(sawRelease) })
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = spy.Unsubscribe() }()
	if err := n2.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	c1, _, err := connect5(t, n1.addr, "d1", tok, func(_ *paho.ClientConfig, cp *paho.Connect) { opts(cp) })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d1/cmd", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 1's takeover held back at node 2", held.Load)

	gotDisc := make(chan byte, 1)
	var got2 atomic.Int32
	cfg2 := func(cfg *paho.ClientConfig, cp *paho.Connect) {
		opts(cp)
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { gotDisc <- d.ReasonCode }
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if string(pr.Packet.Payload) == "to-new" {
				got2.Add(1)
			}
			return true, nil
		}}
	}
	type connected struct {
		c   *paho.Client
		ack *paho.Connack
		err error
	}
	done := make(chan connected, 1)
	go func() {
		c, ack, err := connect5(t, n2.addr, "d1", tok, cfg2)
		done <- connected{c, ack, err}
	}()
	var r connected
	if handedOver {
		// node 2 waits for node 1's release; once it reached node 2, let the old takeover go
		select {
		case <-sawRelease:
		case <-time.After(10 * time.Second):
			t.Fatal("node 1 did not release the session")
		}
		close(hold)
		r = <-done
	} else {
		r = <-done // nothing to wait for: connected before the old takeover is handled
		close(hold)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.ack.SessionPresent != handedOver {
		t.Errorf("CONNACK on node 2: session present = %v, want %v", r.ack.SessionPresent, handedOver)
	}
	if !handedOver {
		if _, err := r.c.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d1/cmd", QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	// node 2 has handled every session message sent before the marker
	if err := n1.nc.Publish(subjectSession, []byte(`{"k":"released","n":"marker","id":"none"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-markerDone:
	case <-time.After(10 * time.Second):
		t.Fatal("node 2 did not handle the marker")
	}
	waitFor(t, "node 1 done with the old connection", func() bool {
		_, held := n1.b.server.Clients.Get("acme/d1")
		return atomic.LoadInt64(&n1.b.server.Info.ClientsConnected) == 0 && !held
	})
	wantStale := map[bool]int64{true: 0, false: 1}[handedOver]
	if got := int64(n2.b.cluster.staleTakeovers.Get()); got != wantStale {
		t.Errorf("stale takeovers seen on node 2 = %d, want %d", got, wantStale)
	}
	if err := n1.b.Publish("devices/d1/cmd", []byte("to-new"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the downlink at the new connection", func() bool { return got2.Load() >= 1 })
	select {
	case code := <-gotDisc:
		t.Fatalf("the new connection on node 2 was closed: DISCONNECT 0x%02x", code)
	default:
	}
	if cl, ok := n2.b.server.Clients.Get("acme/d1"); !ok || cl.Closed() {
		t.Fatal("node 2 no longer holds the new connection")
	}
}

// TestClusterSessionResume: a device with a persistent session on node 1; node 1 dies; QoS 1
// messages published while it is offline (one queued by node 1 before it died, one published
// on node 3 after) are delivered when it reconnects to node 2, with its subscription.
func TestClusterSessionResume(t *testing.T) {
	tc := newTestCluster(t, 3)
	n1, n2, n3 := tc.nodes[0], tc.nodes[1], tc.nodes[2]

	var r received
	d := tc.connect3(n1, "d1", "device", false, &r)
	subscribe3(t, d, "devices/d1/cmd", 1, &r)
	if err := n3.b.Publish("devices/d1/cmd", []byte("online"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a downlink while online", func() bool { return r.has("devices/d1/cmd=online") })
	d.Disconnect(100)
	waitFor(t, "node 1 to see the disconnect", func() bool { return atomic.LoadInt64(&n1.b.server.Info.ClientsConnected) == 0 })

	// offline, node 1 alive: node 1 queues it (an inflight record in the KV)
	if err := n3.b.Publish("devices/d1/cmd", []byte("queued-by-node-1"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 1 to queue the message", func() bool { return tc.kv.Count(keyInflight+"acme/d1\x00") == 1 })

	// Node 1 dies: first it stops beating and leaves the bus, then a message is published on
	// node 3 before node 3 takes node 1 for dead (3 heartbeats later): the detection window,
	// where the bus hands the message to node 1 only, and it is lost with it. It is queued
	// when node 3 sees the death.
	n1.b.halted.Store(true)
	n1.b.cluster.stop(false)
	if err := n3.b.Publish("devices/d1/cmd", []byte("in-detection-window"), 1, false); err != nil {
		t.Fatal(err)
	}
	// Not an orphan yet once the publish returned: the index swap, and its replay, come after.
	_, early := n3.b.cluster.orphans.Load().sessions["acme/d1"]
	n1.kill()
	waitFor(t, "node 3 to take node 1 for dead", func() bool {
		_, ok := n3.b.cluster.orphans.Load().sessions["acme/d1"]
		return ok
	})
	if early {
		// A machine too slow to publish within 3 heartbeats: the message went the
		// orphan way (still checked below), not through the window.
		t.Log("node 3 took node 1 for dead before the publish: the detection window was not exercised")
	} else {
		// The new index is visible (Swap) a moment before its replay has written the queue.
		waitFor(t, "the message of the detection window queued for the new orphan", func() bool {
			return n3.b.cluster.replayed.Get() >= 1
		})
	}
	if err := n3.b.Publish("devices/d1/cmd", []byte("while-node-1-dead"), 1, false); err != nil {
		t.Fatal(err)
	}
	// At least the two (a message published in the margin before node 1's last heartbeat
	// is queued again too: at least once).
	if n := tc.kv.Count(keyQueued + "acme/d1\x00"); n < 2 {
		t.Fatalf("queued records for the orphaned session = %d, want at least 2", n)
	}

	var r2 received
	d2 := tc.connect3(n2, "d1", "device", false, &r2)
	waitFor(t, "the queued messages on node 2", func() bool {
		return r2.has("devices/d1/cmd=queued-by-node-1") && r2.has("devices/d1/cmd=in-detection-window") &&
			r2.has("devices/d1/cmd=while-node-1-dead")
	})
	if err := n3.b.Publish("devices/d1/cmd", []byte("after"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a downlink after the resume (the subscription came back)", func() bool { return r2.has("devices/d1/cmd=after") })
	waitFor(t, "the acknowledged messages gone from the KV", func() bool {
		return tc.kv.Count(keyInflight+"acme/d1\x00") == 0 && tc.kv.Count(keyQueued) == 0
	})
	if rec, _ := n2.b.cluster.readClient("acme/d1"); rec == nil || rec.Node != "gw-2" {
		t.Fatalf("session record: %+v, want node gw-2", rec)
	}
	if n3.b.cluster.queued.Get() < 2 || n2.b.cluster.sessionLoads.Get() != 1 {
		t.Errorf("queued on node 3 = %d, session loads on node 2 = %d; want at least 2, and 1", n3.b.cluster.queued.Get(), n2.b.cluster.sessionLoads.Get())
	}
	d2.Disconnect(100)
}

// TestClusterNodeRestart: a node that shuts down cleanly and starts again (same node name)
// reads back the sessions it held, with what another node queued for them meanwhile; the other
// nodes never load sessions they do not hold at start.
func TestClusterNodeRestart(t *testing.T) {
	tc := newTestCluster(t, 2)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	var r received
	d := tc.connect3(n1, "d1", "device", false, &r)
	subscribe3(t, d, "devices/d1/cmd", 1, &r)
	d.Disconnect(100)
	waitFor(t, "node 1 to see the disconnect", func() bool { return atomic.LoadInt64(&n1.b.server.Info.ClientsConnected) == 0 })
	if _, held := n2.b.server.Clients.Get("acme/d1"); held {
		t.Fatal("node 2 holds a session of node 1")
	}

	_ = n1.b.Close() // clean: its heartbeat is deleted, its sessions are orphans at once
	n1.nc.Close()
	waitFor(t, "node 2 to see node 1's session as an orphan", func() bool {
		_, ok := n2.b.cluster.orphans.Load().sessions["acme/d1"]
		return ok
	})
	if err := n2.b.Publish("devices/d1/cmd", []byte("while-down"), 1, false); err != nil {
		t.Fatal(err)
	}
	if n := tc.kv.Count(keyQueued + "acme/d1\x00"); n != 1 {
		t.Fatalf("queued records = %d, want 1", n)
	}

	n1b := tc.startNode("gw-1", n2.ns)
	tc.nodes = []*clusterNode{n1b, n2}
	if _, held := n1b.b.server.Clients.Get("acme/d1"); !held {
		t.Fatal("the restarted node does not hold its session")
	}
	if q, ifm := tc.kv.Count(keyQueued), tc.kv.Count(keyInflight+"acme/d1\x00"); q != 0 || ifm != 1 {
		t.Fatalf("after the restart: %d queued, %d inflight records; want 0, 1", q, ifm)
	}
	n3 := tc.startNode("gw-3", n2.ns) // a node started now leaves node 1's session alone
	if _, held := n3.b.server.Clients.Get("acme/d1"); held {
		t.Fatal("a new node loaded a session of another node at start")
	}
	var r2 received
	tc.connect3(n1b, "d1", "device", false, &r2)
	waitFor(t, "the message queued while the node was down", func() bool { return r2.has("devices/d1/cmd=while-down") })
}

// TestClusterOrphanExpiry: the session of a device whose node died expires (MQTT 5 session
// expiry, counted from the dead node's last heartbeat): a live node deletes its records.
func TestClusterOrphanExpiry(t *testing.T) {
	tc := newTestCluster(t, 2)
	n1, n2 := tc.nodes[0], tc.nodes[1]
	c, _, err := connect5(t, n1.addr, "d1", tc.token("d1", "device"), func(_ *paho.ClientConfig, cp *paho.Connect) {
		exp := uint32(1)
		cp.CleanStart = false
		cp.Properties = &paho.ConnectProperties{SessionExpiryInterval: &exp}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d1/cmd", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if tc.kv.Count(keyClient+"acme/d1") != 1 || tc.kv.Count(keySub+"acme/d1\x00") != 1 {
		t.Fatal("the session is not in the KV")
	}
	n1.kill()
	waitFor(t, "the orphaned session to expire", func() bool {
		return tc.kv.Count(keyClient+"acme/d1") == 0 && tc.kv.Count(keySub+"acme/d1\x00") == 0
	})
	if n2.b.cluster.expired.Get() != 1 {
		t.Errorf("orphans expired on node 2 = %d, want 1", n2.b.cluster.expired.Get())
	}
}

// failingBus is a bus whose publishes fail (NATS unreachable).
type failingBus struct{}

func (failingBus) Node() string                                   { return "gw-x" }
func (failingBus) Publish(string, []byte) error                   { return errors.New("nats: connection closed") }
func (failingBus) Subscribe(string, func([]byte)) (func(), error) { return func() {}, nil }

// TestClusterBusDown: when the bus refuses a message, Publish says the other nodes did not
// get it (the admin API answers 503), after delivering it here.
func TestClusterBusDown(t *testing.T) {
	v, err := newVerifierIn(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{t: t, kv: newMemKV(), v: v}
	st, err := storage.Open(storage.Options{InMemory: true, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	gw, err := ingest.New(ingest.Options{Store: st, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	b, err := New(Options{Config: cfg, Gateway: gw, Auth: v, Store: sharedKV{Backend: st, kv: tc.kv},
		Logger: testLogger(), Cluster: failingBus{}, ClusterHeartbeat: testHeartbeat})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	var r received
	c := tc.connect3(&clusterNode{name: "gw-x", addr: b.Addr().String()}, "d1", "device", true, nil)
	subscribe3(t, c, "devices/d1/cmd", 1, &r)
	if err := b.Publish("devices/d1/cmd", []byte("x"), 1, false); !errors.Is(err, ErrClusterBus) {
		t.Fatalf("Publish with the bus down: %v, want ErrClusterBus", err)
	}
	waitFor(t, "the local delivery", func() bool { return r.has("devices/d1/cmd=x") })
	if _, err := New(Options{Config: cfg, Gateway: gw, Auth: v, Cluster: failingBus{}}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("cluster mode without a Store: %v, want ErrInvalidConfig", err)
	}
}
