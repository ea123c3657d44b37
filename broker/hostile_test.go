package broker

// Tests that hold the broker up against a hostile network: unauthenticated memory, topic
// aliases, retained messages, unreleased QoS 2 flows, tenants sharing client ids, and secrets
// in logs and storage. Memory is measured in this process, where the broker runs.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/testutil"
)

// heapNow is the live heap after a full collection.
func heapNow() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func (e *env) tenantToken(sub, tenant, role string) string {
	e.t.Helper()
	tok, err := e.verifier.Sign(auth.MintClaims(sub, tenant, role, nil, time.Hour, time.Now()))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// dialMany opens n raw TCP connections and writes first to each.
func dialMany(t *testing.T, addr string, n int, first []byte) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		if _, err := c.Write(first); err != nil {
			t.Fatalf("write %d: %v", len(conns), err)
		}
	}
	return conns
}

// closedByServer reports whether the broker closed c (reads EOF or a reset within wait).
func closedByServer(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// TestUnauthenticatedConnectMemory: before CONNECT is accepted, at most max_connect_bytes may
// be allocated per connection. 2000 connections each declare a 262000-byte CONNECT (just under
// max_packet_bytes), which mochi used to allocate up front and hold for the connect deadline:
// +530 MB. BROKER_BREAK_CONNECT_GUARD=1 raises max_connect_bytes to max_packet_bytes, which
// turns the guard off: the test must then fail.
func TestUnauthenticatedConnectMemory(t *testing.T) {
	const n = 2000
	const bound = 64 << 20
	e := newEnv(t, "", func(c *Config, _ *Options) {
		c.MaxConnsPerIP = 0            // all from loopback
		c.ConnectTimeout = time.Minute // a held connection would stay for the whole test
		if os.Getenv("BROKER_BREAK_CONNECT_GUARD") != "" {
			c.MaxConnectBytes = c.MaxPacketBytes
		}
	})
	b := e.broker

	t.Run("declared over max_connect_bytes", func(t *testing.T) {
		heap0 := heapNow()
		conns := dialMany(t, e.addr, n, []byte{0x10, 0xf0, 0xfe, 0x0f}) // CONNECT, remaining length 262000
		waitFor(t, "the broker to read every header", func() bool {
			return b.m.connectBadFirst.Get() >= n || atomic.LoadInt64(&b.server.Info.PacketsReceived) >= n
		})
		grown := heapNow() - heap0
		t.Logf("%d connections declaring a 262000-byte CONNECT: heap +%.1f MiB", n, float64(grown)/(1<<20))
		if grown > bound {
			t.Fatalf("heap grew by %d bytes, bound %d", grown, bound)
		}
		for i, c := range conns {
			if !closedByServer(c, 5*time.Second) {
				t.Fatalf("connection %d still open: an oversize first packet must close it at once", i)
			}
		}
		if got := b.m.connectBadFirst.Get(); got != n {
			t.Fatalf("fleetgate_mqtt_connects_total{result=\"bad_first_packet\"} = %d, want %d", got, n)
		}
	})

	t.Run("declared at max_connect_bytes, held", func(t *testing.T) {
		received0 := atomic.LoadInt64(&b.server.Info.PacketsReceived)
		heap0 := heapNow()
		// CONNECT, remaining length 8000 (within the 8 KiB default), then a few bytes and silence.
		conns := dialMany(t, e.addr, n, []byte{0x10, 0xc0, 0x3e, 0x00, 0x04, 'M', 'Q'})
		// mochi counts a packet when it starts reading its body, then allocates it.
		waitFor(t, "mochi to start reading every CONNECT", func() bool {
			return atomic.LoadInt64(&b.server.Info.PacketsReceived)-received0 >= n
		})
		grown := heapNow() - heap0
		t.Logf("%d connections holding an 8000-byte CONNECT: heap +%.1f MiB", n, float64(grown)/(1<<20))
		if grown > bound {
			t.Fatalf("heap grew by %d bytes, bound %d", grown, bound)
		}
		if open := b.openConns.Load(); open < n {
			t.Fatalf("%d connections open, want %d (they are within the limit)", open, n)
		}
		for _, c := range conns {
			_ = c.Close()
		}
		waitFor(t, "connections closed", func() bool { return b.openConns.Load() == 0 })
	})

	t.Run("first packet not CONNECT", func(t *testing.T) {
		rc := dialRaw(t, e.addr, 4)
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if seen := rc.expectClosed(); len(seen) != 0 {
			t.Fatalf("a PINGREQ before CONNECT was answered: %v", seen)
		}
	})

	t.Run("a real CONNECT still passes", func(t *testing.T) {
		rc := dialRaw(t, e.addr, 5)
		if ack := rc.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
			t.Fatalf("CONNACK %#x", ack.ReasonCode)
		}
	})
}

func TestMaxConnsPerIP(t *testing.T) {
	// Loopback is not counted in production (a local proxy or load generator): count it here.
	countLoopback.Store(true)
	t.Cleanup(func() { countLoopback.Store(false) })
	e := newEnv(t, "", func(c *Config, _ *Options) { c.MaxConnsPerIP = 3 })
	var held []*rawClient
	for range 3 {
		held = append(held, dialRaw(t, e.addr, 4)) // in their CONNECT phase: they count
	}
	waitFor(t, "3 connections counted", func() bool { return e.broker.openConns.Load() == 3 })
	over := dialRaw(t, e.addr, 4)
	if seen := over.expectClosed(); len(seen) != 0 {
		t.Fatalf("4th connection from one address answered: %v", seen)
	}
	if got := e.broker.m.connectPerIP.Get(); got != 1 {
		t.Fatalf("max_conns_per_ip refusals counted %d, want 1", got)
	}
	_ = held[0].c.Close()
	waitFor(t, "a slot freed", func() bool {
		e.broker.ipMu.Lock()
		defer e.broker.ipMu.Unlock()
		return e.broker.perIP["127.0.0.1"] == 2
	})
	rc := dialRaw(t, e.addr, 4)
	if ack := rc.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	// Loopback as in production: not counted.
	countLoopback.Store(false)
	for range 3 {
		held = append(held, dialRaw(t, e.addr, 4))
	}
	ok := dialRaw(t, e.addr, 4)
	if ack := ok.connect("d2", e.token("d2", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
		t.Fatalf("loopback connection refused by max_conns_per_ip: CONNACK %#x", ack.ReasonCode)
	}
}

// sessionOf returns the broker's session of the connected client with internal id id.
func sessionOf(t *testing.T, b *Broker, id string) *session {
	t.Helper()
	var s *session
	waitFor(t, "session of "+id, func() bool {
		cl, ok := b.server.Clients.Get(id)
		if ok {
			s = b.session(cl)
		}
		return s != nil
	})
	return s
}

func aliasPublish(topic string, qos byte, id, alias uint16, payload []byte) packets.Packet {
	pk := publishPacket(topic, qos, id, payload)
	pk.Properties.TopicAlias = alias
	pk.Properties.TopicAliasFlag = true
	return pk
}

func TestTopicAliasesBounded(t *testing.T) {
	e := newEnv(t, "", nil)
	tok := e.token("d1", "device", time.Hour)

	t.Run("announced and enforced", func(t *testing.T) {
		rc := dialRaw(t, e.addr, 5)
		ack := rc.connect("d1", tok, true, nil)
		if ack.Properties.TopicAliasMaximum != 10 {
			t.Fatalf("CONNACK topic alias maximum %d, want 10", ack.Properties.TopicAliasMaximum)
		}
		// An allowed publish registers its alias; the alias alone then names the topic.
		rc.send(aliasPublish("devices/d1/a", 1, 1, 2, []byte("x")))
		rc.send(aliasPublish("", 1, 2, 2, []byte("y")))
		for i := uint16(1); i <= 2; i++ {
			if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode != 0 {
				t.Fatalf("PUBACK %d: %+v %v", i, pk, err)
			}
		}
		waitFor(t, "2 events", func() bool { return len(e.stored()) == 2 })
		for _, it := range e.stored() {
			if it.Event.Topic != "devices/d1/a" {
				t.Fatalf("stored event topic %q, want the aliased topic", it.Event.Topic)
			}
		}
		rc.send(aliasPublish("devices/d1/a", 0, 0, 11, []byte("x")))
		seen := rc.expectClosed()
		if len(seen) != 1 || seen[0].FixedHeader.Type != packets.Disconnect || seen[0].ReasonCode != packets.ErrTopicAliasInvalid.Code {
			t.Fatalf("alias 11: got %+v, want DISCONNECT 0x94", seen)
		}
	})

	t.Run("refused publishes register nothing", func(t *testing.T) {
		// Even with the cap raised to mochi's old 65535, refused publishes cannot grow memory.
		e := newEnv(t, "", func(c *Config, _ *Options) { c.TopicAliasMax = 65535 })
		rc := dialRaw(t, e.addr, 5)
		rc.connect("d1", e.token("d1", "device", time.Hour), true, nil)
		s := sessionOf(t, e.broker, "acme/d1")
		const n, topicLen = 2000, 16 << 10
		heap0 := heapNow()
		for i := range n {
			topic := fmt.Sprintf("devices/d2/%d/%s", i, strings.Repeat("x", topicLen))
			rc.send(aliasPublish(topic, 0, 0, uint16(i+1), nil)) // another device's topic: refused
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("PINGRESP: %+v %v", pk, err)
		}
		grown := heapNow() - heap0
		t.Logf("%d refused QoS 0 publishes with %d-byte topics and new aliases: heap +%.1f MiB", n, topicLen, float64(grown)/(1<<20))
		if len(s.aliases) != 0 {
			t.Fatalf("%d aliases registered by refused publishes", len(s.aliases))
		}
		if grown > 8<<20 {
			t.Fatalf("heap grew by %d bytes, bound %d", grown, 8<<20)
		}
		// The alias of a refused publish is unknown afterwards.
		rc.send(aliasPublish("", 0, 0, 1, []byte("x")))
		seen := rc.expectClosed()
		if len(seen) != 1 || seen[0].ReasonCode != packets.ErrTopicAliasInvalid.Code {
			t.Fatalf("unknown alias: got %+v, want DISCONNECT 0x94", seen)
		}
	})
}

func retainedKeys(t *testing.T, e *env) int {
	t.Helper()
	n := 0
	if err := e.store.Scan(keyRetained, func(string, []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func retainedGauge(e *env) float64 {
	var buf bytes.Buffer
	e.broker.m.set.WritePrometheus(&buf)
	var v float64
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "fleetgate_mqtt_retained_messages ") {
			_, _ = fmt.Sscan(strings.TrimPrefix(line, "fleetgate_mqtt_retained_messages "), &v)
		}
	}
	return v
}

func TestRetainedCaps(t *testing.T) {
	dir := t.TempDir()
	caps := func(c *Config, _ *Options) { c.MaxRetainedPerClient = 3; c.MaxRetained = 5 }
	e := newEnv(t, dir, caps)
	retained := func(topic string, qos byte, id uint16, payload string) packets.Packet {
		pk := publishPacket(topic, qos, id, []byte(payload))
		pk.FixedHeader.Retain = true
		return pk
	}
	// MQTT 5: three retained messages; the fourth gets 0x97 and is not stored.
	r5 := dialRaw(t, e.addr, 5)
	r5.connect("d1", e.token("d1", "device", time.Hour), true, nil)
	for i := uint16(1); i <= 4; i++ {
		r5.send(retained(fmt.Sprintf("devices/d1/r%d", i), 1, i, "v"))
		pk, err := r5.read()
		want := byte(0)
		if i == 4 {
			want = packets.ErrQuotaExceeded.Code
		}
		if err != nil || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode != want {
			t.Fatalf("retained publish %d: %+v %v, want PUBACK %#x", i, pk, err, want)
		}
	}
	waitFor(t, "3 retained", func() bool { return retainedGauge(e) == 3 && retainedKeys(t, e) == 3 })
	if n := len(e.stored()); n != 3 {
		t.Fatalf("%d events stored, want 3 (the refused one is not)", n)
	}
	// Replacing one of its own is fine; clearing one makes room.
	for i, pk := range []packets.Packet{
		retained("devices/d1/r1", 1, 5, "v2"),
		retained("devices/d1/r2", 1, 6, ""),
		retained("devices/d1/r4", 1, 7, "v"),
	} {
		r5.send(pk)
		if pk, err := r5.read(); err != nil || pk.ReasonCode != 0 {
			t.Fatalf("publish %d: %+v %v", i+5, pk.FixedHeader, err)
		}
	}
	waitFor(t, "still 3 retained", func() bool { return retainedGauge(e) == 3 && retainedKeys(t, e) == 3 })

	// MQTT 3.1.1: over the total cap, the publish is acknowledged and stored, but not retained.
	r3 := dialRaw(t, e.addr, 4)
	r3.connect("d2", e.token("d2", "device", time.Hour), true, nil)
	for i := uint16(1); i <= 3; i++ {
		r3.send(retained(fmt.Sprintf("devices/d2/r%d", i), 1, i, "v"))
		if pk, err := r3.read(); err != nil || pk.FixedHeader.Type != packets.Puback {
			t.Fatalf("3.1.1 retained publish %d: %+v %v", i, pk, err)
		}
	}
	waitFor(t, "5 retained in all", func() bool { return retainedGauge(e) == 5 && retainedKeys(t, e) == 5 })
	if n := len(e.stored()); n != 9 {
		t.Fatalf("%d events stored, want 9", n)
	}
	// Downlink counts toward the total too.
	if err := e.broker.Publish("devices/d1/cfg", []byte("x"), 1, true); !errors.Is(err, ErrRetainedFull) {
		t.Fatalf("downlink over max_retained: %v, want ErrRetainedFull", err)
	}
	// So does a retained will message (mochi retains it without a publish).
	w := dialRaw(t, e.addr, 4)
	w.connect("d3", e.token("d3", "device", time.Hour), true, func(pk *packets.Packet) {
		pk.Connect.WillFlag, pk.Connect.WillRetain, pk.Connect.WillQos = true, true, 1
		pk.Connect.WillTopic, pk.Connect.WillPayload = "devices/d3/status", []byte("gone")
	})
	_ = w.c.Close()
	waitFor(t, "the will refused", func() bool { return e.broker.m.retainedRefused.Get() == 4 })
	if g, k := retainedGauge(e), retainedKeys(t, e); g != 5 || k != 5 {
		t.Fatalf("after the will: gauge %v, stored %d, want 5 and 5", g, k)
	}

	// After a restart the gauge is right (it read 0), and lowered caps hold for what is loaded.
	e.close()
	e = newEnv(t, dir, caps)
	if g := retainedGauge(e); g != 5 {
		t.Fatalf("retained gauge after restart %v, want 5", g)
	}
	e.close()
	e = newEnv(t, dir, func(c *Config, _ *Options) { c.MaxRetainedPerClient = 1; c.MaxRetained = 5 })
	if g, k := retainedGauge(e), retainedKeys(t, e); g != 2 || k != 2 {
		t.Fatalf("with max_retained_per_client 1: gauge %v, stored %d, want 2 and 2", g, k)
	}
	inMemory := 0
	for topic := range e.broker.server.Topics.Retained.GetAll() {
		if !strings.HasPrefix(topic, "$") { // mochi's own $SYS topics aside
			inMemory++
		}
	}
	if inMemory != 2 {
		t.Fatalf("%d retained messages in memory, want 2", inMemory)
	}
}

func TestQoS2AwaitingRelBounded(t *testing.T) {
	e := newEnv(t, "", func(c *Config, _ *Options) { c.MaxAwaitingRel = 5 })
	rc := dialRaw(t, e.addr, 4)
	rc.connect("d1", e.token("d1", "device", time.Hour), true, nil)
	for i := uint16(1); i <= 5; i++ {
		rc.send(publishPacket("devices/d1/t", 2, i, []byte("x")))
		if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Pubrec || pk.PacketID != i {
			t.Fatalf("PUBREC %d: %+v %v", i, pk.FixedHeader, err)
		}
	}
	// A PUBREL frees a slot.
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pubrel, Qos: 1}, PacketID: 1})
	if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Pubcomp {
		t.Fatalf("PUBCOMP: %+v %v", pk.FixedHeader, err)
	}
	rc.send(publishPacket("devices/d1/t", 2, 6, []byte("x")))
	if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Pubrec || pk.PacketID != 6 {
		t.Fatalf("PUBREC 6: %+v %v", pk.FixedHeader, err)
	}
	cl, ok := e.broker.server.Clients.Get("acme/d1")
	if !ok {
		t.Fatal("client not found")
	}
	if n := cl.State.Inflight.Len(); n != 5 {
		t.Fatalf("%d inbound QoS 2 flows held, want 5", n)
	}
	// A resend of one already answered is answered again, not counted.
	dup := publishPacket("devices/d1/t", 2, 6, []byte("x"))
	dup.FixedHeader.Dup = true
	rc.send(dup)
	if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Pubrec || pk.PacketID != 6 {
		t.Fatalf("PUBREC for the resend: %+v %v", pk.FixedHeader, err)
	}
	// One more without PUBRELs: disconnected.
	rc.send(publishPacket("devices/d1/t", 2, 7, []byte("x")))
	if seen := rc.expectClosed(); len(seen) != 0 {
		t.Fatalf("over max_awaiting_rel: got %+v, want the connection closed", seen)
	}
	if n := len(e.stored()); n != 6 {
		t.Fatalf("%d stored, want 6", n)
	}
}

// TestTenantsDoNotShareSessions: two tenants' devices with the same client id have separate
// sessions. Before, tenant B's "s1" took over tenant A's session, received the messages queued
// for it and could disconnect it at will.
func TestTenantsDoNotShareSessions(t *testing.T) {
	e := newEnv(t, "", nil)
	tokA, tokB := e.tenantToken("s1", "tenant-a", "device"), e.tenantToken("s1", "tenant-b", "device")
	ping := func(rc *rawClient, who string) {
		t.Helper()
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		pk, err := rc.read()
		if err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("%s: got %+v %v, want PINGRESP (and nothing before it)", who, pk.FixedHeader, err)
		}
	}
	// A's s1: persistent session, subscribed, offline; a command is queued for it.
	a := dialRaw(t, e.addr, 4)
	a.connect("s1", tokA, false, nil)
	a.send(subscribePacket("devices/s1/cmd", 1))
	if pk, err := a.read(); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK %+v %v", pk, err)
	}
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	a.expectClosed()
	waitFor(t, "A offline", func() bool { return atomic.LoadInt64(&e.broker.server.Info.ClientsConnected) == 0 })
	if err := e.broker.Publish("devices/s1/cmd", []byte("for tenant A"), 1, false); err != nil {
		t.Fatal(err)
	}

	// B's s1 finds no session and receives nothing of A's.
	bc := dialRaw(t, e.addr, 4)
	if ack := bc.connect("s1", tokB, false, nil); ack.ReasonCode != 0 || ack.SessionPresent {
		t.Fatalf("tenant B CONNACK %#x session present %v, want a new session", ack.ReasonCode, ack.SessionPresent)
	}
	ping(bc, "tenant B")

	// A comes back: its session and queued message are there, and B stays connected.
	a = dialRaw(t, e.addr, 4)
	if ack := a.connect("s1", tokA, false, nil); !ack.SessionPresent {
		t.Fatal("tenant A's session is gone")
	}
	pk, err := a.read()
	if err != nil || pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != "for tenant A" {
		t.Fatalf("tenant A got %+v %v, want its queued command", pk, err)
	}
	a.send(pubackPacket(pk.PacketID))
	ping(bc, "tenant B after A reconnected")
	ping(a, "tenant A")
	// Both sessions are stored apart.
	for _, k := range []string{keyClient + "tenant-a/s1"} {
		if _, ok, err := e.store.Get(k); err != nil || !ok {
			t.Fatalf("stored session %q: %v %v", k, ok, err)
		}
	}
	// Events carry the device's own id.
	a.send(publishPacket("devices/s1/t", 1, 9, []byte("x")))
	if pk, err := a.read(); err != nil || pk.FixedHeader.Type != packets.Puback {
		t.Fatalf("PUBACK %+v %v", pk, err)
	}
	waitFor(t, "event", func() bool { return len(e.stored()) == 1 })
	if ev := e.stored()[0].Event; ev.Source != "mqtt://s1" || ev.Meta["client_id"] != "s1" || ev.Tenant != "tenant-a" {
		t.Fatalf("event source %q, client_id %q, tenant %q: want the device's own id", ev.Source, ev.Meta["client_id"], ev.Tenant)
	}
}

// TestQueuedMessagesRecheckedOnReconnect: messages queued for a session are delivered only if
// the policy of the connection that takes the session over may read them (mochi resends them
// without an ACL check).
func TestQueuedMessagesRecheckedOnReconnect(t *testing.T) {
	e := newEnv(t, "", nil)
	a := dialRaw(t, e.addr, 4)
	a.connect("s1", e.tenantToken("s1", "acme", "device"), false, nil)
	a.send(subscribePacket("devices/s1/cmd", 1))
	if pk, err := a.read(); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK %+v %v", pk, err)
	}
	a.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	a.expectClosed()
	waitFor(t, "offline", func() bool { return atomic.LoadInt64(&e.broker.server.Info.ClientsConnected) == 0 })
	if err := e.broker.Publish("devices/s1/cmd", []byte("queued"), 1, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "queued message stored", func() bool {
		n := 0
		_ = e.store.Scan(keyInflight, func(string, []byte) error { n++; return nil })
		return n == 1
	})
	// Same tenant and id, but a role that may subscribe to nothing ("app"): takes the session,
	// gets nothing of it.
	app := dialRaw(t, e.addr, 4)
	if ack := app.connect("s1", e.tenantToken("s1", "acme", "app"), false, nil); !ack.SessionPresent {
		t.Fatal("session not present")
	}
	app.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
	if pk, err := app.read(); err != nil || pk.FixedHeader.Type != packets.Pingresp {
		t.Fatalf("got %+v %v, want PINGRESP and no queued message", pk, err)
	}
	n := 0
	_ = e.store.Scan(keyInflight, func(string, []byte) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d dropped messages still stored", n)
	}
}

// syncBuffer is a log destination shared by the broker's goroutines.
type syncBuffer = testutil.SyncBuffer

func TestSecretsNotLogged(t *testing.T) {
	var logBuf syncBuffer
	e := newEnv(t, "", func(_ *Config, o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&logBuf), &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	tok := e.token("d1", "device", time.Hour)
	rc := dialRaw(t, e.addr, 4)
	rc.connect("d1", tok, true, nil)
	// A second CONNECT on one socket: mochi logs the packet at Warn.
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
		ClientIdentifier: "d1", Clean: true, Keepalive: 30, UsernameFlag: true, Username: []byte("d1"),
		PasswordFlag: true, Password: []byte(tok),
	}})
	rc.expectClosed()
	waitFor(t, "mochi's warning", func() bool { return strings.Contains(logBuf.String(), "error processing packet") })
	out := logBuf.String()
	if strings.Contains(out, tok) || strings.Contains(out, tok[len(tok)-20:]) {
		t.Fatalf("the device token is in the log:\n%s", out)
	}
	if !strings.Contains(out, "pk.type=Connect") {
		t.Fatalf("the packet summary is missing from the log:\n%s", out)
	}
}

func TestStoredSessionHasNoToken(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, nil)
	tok := e.token("d1", "device", time.Hour)
	rc := dialRaw(t, e.addr, 4)
	rc.connect("d1", tok, false, nil)
	rc.send(subscribePacket("devices/d1/cmd", 1))
	if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK %+v %v", pk, err)
	}
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	rc.expectClosed()
	waitFor(t, "offline", func() bool { return atomic.LoadInt64(&e.broker.server.Info.ClientsConnected) == 0 })
	noToken := func(what string) {
		t.Helper()
		err := e.store.Scan("mqtt/", func(k string, v []byte) error {
			if bytes.Contains(v, []byte(tok)) || bytes.Contains(v, []byte(`"token"`)) {
				return fmt.Errorf("%s: %s holds the token: %s", what, k, v)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	v, ok, err := e.store.Get(keyClient + "acme/d1")
	if err != nil || !ok {
		t.Fatalf("stored session: %v %v", ok, err)
	}
	if !bytes.Contains(v, []byte(`"subject":"d1"`)) || !bytes.Contains(v, []byte(`"role":"device"`)) {
		t.Fatalf("stored session does not say who it was: %s", v)
	}
	noToken("after disconnect")

	// A record written by an older version still carries the token: it is rewritten without it
	// at start, and the session is still judged by its policy (a command reaches it).
	rec := storedClient{}
	if err := json.Unmarshal(v, &rec); err != nil {
		t.Fatal(err)
	}
	rec.Subject, rec.Role, rec.Tenant, rec.ExpiresAt, rec.Token = "", "", "", time.Time{}, tok
	legacy, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.Put(keyClient+"acme/d1", legacy); err != nil {
		t.Fatal(err)
	}
	e.close()
	e = newEnv(t, dir, nil)
	noToken("after a restart")
	if err := e.broker.Publish("devices/d1/cmd", []byte("after restart"), 1, false); err != nil {
		t.Fatal(err)
	}
	rc = dialRaw(t, e.addr, 4)
	if ack := rc.connect("d1", e.token("d1", "device", time.Hour), false, nil); !ack.SessionPresent {
		t.Fatal("session not restored")
	}
	if pk, err := rc.read(); err != nil || string(pk.Payload) != "after restart" {
		t.Fatalf("got %+v %v, want the command queued while offline", pk, err)
	}
}

func TestRedactAttr(t *testing.T) {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: "devices/d1/t",
		Payload: []byte("secret-payload"), Connect: packets.ConnectParams{Password: []byte("secret-password")}}
	var buf bytes.Buffer
	log := slog.New(minLevel{h: slog.NewTextHandler(&buf, nil), min: slog.LevelInfo})
	log.With("pk", &pk).Warn("x", "packet", pk, "group", slog.GroupValue(slog.Any("inner", pk)), "raw", []byte("secret-bytes"))
	out := buf.String()
	if strings.Contains(out, "secret") {
		t.Fatalf("secret logged: %s", out)
	}
	if strings.Count(out, "topic=devices/d1/t") != 3 {
		t.Fatalf("summary missing: %s", out)
	}
}
