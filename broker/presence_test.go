package broker

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest/auth"
)

// storedOn returns the data of the stored events whose topic starts with prefix.
func (e *env) storedOn(prefix string) []map[string]any {
	e.t.Helper()
	var out []map[string]any
	for _, it := range e.stored() {
		if strings.HasPrefix(it.Event.Topic, prefix) {
			var d map[string]any
			if err := json.Unmarshal(it.Event.Data, &d); err != nil {
				e.t.Fatal(err)
			}
			out = append(out, d)
		}
	}
	return out
}

func withPresence(grace time.Duration) func(*Config, *Options) {
	return func(c *Config, o *Options) {
		c.Presence = PresenceConfig{Enabled: true, Grace: grace}
		o.Node = "gw-test"
	}
}

// A connection shorter than mqtt.presence.grace produces no event at all; a longer one
// produces its connected event once the grace period has passed, and its disconnected event.
func TestPresenceGrace(t *testing.T) {
	const grace = 300 * time.Millisecond
	e := newEnv(t, "", withPresence(grace))
	short := dialRaw(t, e.addr, 4)
	if ack := short.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
		t.Fatalf("connack %d", ack.ReasonCode)
	}
	start := time.Now()
	short.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	short.expectClosed()
	waitFor(t, "the short connection to be counted as suppressed", func() bool { return e.broker.m.presenceSuppressed.Get() == 1 })
	if time.Since(start) >= grace {
		t.Skip("the machine is too slow for this grace period")
	}

	long := dialRaw(t, e.addr, 5)
	long.connect("d2", e.token("d2", "device", time.Hour), true, nil)
	connectedAt := time.Now()
	waitFor(t, "the connected event of d2", func() bool { return len(e.storedOn(TopicPresenceConnected+"d2")) == 1 })
	if waited := time.Since(connectedAt); waited < grace-50*time.Millisecond {
		t.Fatalf("connected event after %s, before the grace period %s", waited, grace)
	}
	long.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	waitFor(t, "the disconnected event of d2", func() bool { return len(e.storedOn(TopicPresenceDisconnected+"d2")) == 1 })
	d := e.storedOn(TopicPresenceDisconnected + "d2")[0]
	if d["reason"] != ReasonClientDisconnect || d["node"] != "gw-test" || d["duration_ms"].(float64) < float64(grace.Milliseconds()-50) ||
		d["protocol_version"] != 5.0 || d["tenant"] != "acme" {
		t.Fatalf("disconnected event: %v", d)
	}
	if n := len(e.storedOn("$events/presence/")); n != 2 {
		t.Fatalf("%d presence events, want 2 (none for the short connection)", n)
	}
}

// Token expiry and revocation are reasons of their own.
func TestPresenceReasons(t *testing.T) {
	e := newEnv(t, "", withPresence(0))
	rc := dialRaw(t, e.addr, 5)
	rc.connect("d1", e.token("d1", "device", 1500*time.Millisecond), true, nil)
	rc.expectClosed()
	waitFor(t, "the token_expired event", func() bool { return len(e.storedOn(TopicPresenceDisconnected+"d1")) == 1 })
	if d := e.storedOn(TopicPresenceDisconnected + "d1")[0]; d["reason"] != ReasonTokenExpired || d["session_version"] != 1.0 {
		t.Fatalf("event: %v", d)
	}
	rc = dialRaw(t, e.addr, 4)
	rc.connect("d2", e.token("d2", "device", time.Hour), true, nil)
	waitFor(t, "d2 connected", func() bool { return len(e.storedOn(TopicPresenceConnected+"d2")) == 1 })
	e.broker.DisconnectRevoked(func(p *auth.Principal) bool { return p.Subject == "d2" })
	waitFor(t, "the revoked event", func() bool { return len(e.storedOn(TopicPresenceDisconnected+"d2")) == 1 })
	if d := e.storedOn(TopicPresenceDisconnected + "d2")[0]; d["reason"] != ReasonRevoked {
		t.Fatalf("event: %v", d)
	}
}

// The queue of an offline persistent session is bounded by bytes too; the oldest messages
// go first, each with an event.
func TestSessionQueueBytes(t *testing.T) {
	e := newEnv(t, "", func(c *Config, _ *Options) { c.SessionQueueMax = QueueMax{Messages: 100, Bytes: 100} })
	sub := dialRaw(t, e.addr, 5)
	sub.connect("d1", e.token("d1", "device", time.Hour), false, func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	})
	sub.send(subscribePacket("devices/d1/cmd", 1))
	if ack, err := sub.read(); err != nil || ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback: %v %v", ack, err)
	}
	sub.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	sub.expectClosed()
	payload := strings.Repeat("x", 30) // 14 + 30 = 44 bytes a message
	for range 3 {
		if err := e.broker.Publish("devices/d1/cmd", []byte(payload), 1, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the drop event", func() bool { return len(e.storedOn(TopicQueueDropped+"d1")) == 1 })
	d := e.storedOn(TopicQueueDropped + "d1")[0]
	if d["reason"] != "bytes" || d["queued_messages"] != 2.0 || d["queued_bytes"] != 88.0 || d["limit_bytes"] != 100.0 {
		t.Fatalf("drop event: %v", d)
	}
	if ci, ok := e.broker.Client("acme", "d1"); !ok || ci.QueuedMessages != 2 || ci.QueuedBytes != 88 || ci.Connected {
		t.Fatalf("client: %+v %v", ci, ok)
	}
}

// MQTT 5 message expiry: a message queued for an offline session expires there (mochi's sweep
// drops it, no drop event: its sender asked for it) and is not delivered on reconnect.
func TestQueuedMessageExpiry(t *testing.T) {
	e := newEnv(t, "", nil)
	mon := dialRaw(t, e.addr, 5)
	monTok := e.token("m1", "monitor", time.Hour)
	persist := func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	}
	mon.connect("m1", monTok, false, persist)
	mon.send(subscribePacket("devices/#", 1))
	if ack, err := mon.read(); err != nil || ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback: %v %v", ack, err)
	}
	mon.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	mon.expectClosed()
	dev := dialRaw(t, e.addr, 5)
	dev.connect("d2", e.token("d2", "device", time.Hour), true, nil)
	short := publishPacket("devices/d2/t", 1, 1, []byte("expires"))
	short.Properties.MessageExpiryInterval = 1
	dev.send(short)
	keep := publishPacket("devices/d2/t", 1, 2, []byte("stays"))
	dev.send(keep)
	for range 2 {
		if ack, err := dev.read(); err != nil || ack.FixedHeader.Type != packets.Puback {
			t.Fatalf("puback: %v %v", ack, err)
		}
	}
	waitFor(t, "the expired message to leave m1's queue", func() bool {
		ci, _ := e.broker.Client("acme", "m1")
		return ci.QueuedMessages == 1
	})
	mon = dialRaw(t, e.addr, 5)
	mon.connect("m1", monTok, false, persist)
	pk, err := mon.read()
	if err != nil || pk.FixedHeader.Type != packets.Publish || string(pk.Payload) != "stays" {
		t.Fatalf("after reconnect: %v %v", pk, err)
	}
	if n := len(e.storedOn(TopicQueueDropped)); n != 0 {
		t.Fatalf("%d drop events for an expired message", n)
	}
}

// The expiry of a queued message survives a restart of the gateway.
func TestQueuedMessageExpiryAfterRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, nil)
	mon := dialRaw(t, e.addr, 5)
	monTok := e.token("m1", "monitor", time.Hour)
	mon.connect("m1", monTok, false, func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval, pk.Properties.SessionExpiryIntervalFlag = 3600, true
	})
	mon.send(subscribePacket("devices/#", 1))
	if ack, err := mon.read(); err != nil || ack.FixedHeader.Type != packets.Suback {
		t.Fatalf("suback: %v %v", ack, err)
	}
	mon.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	mon.expectClosed()
	dev := dialRaw(t, e.addr, 5)
	dev.connect("d2", e.token("d2", "device", time.Hour), true, nil)
	short := publishPacket("devices/d2/t", 1, 1, []byte("expires"))
	short.Properties.MessageExpiryInterval = 2
	dev.send(short)
	if ack, err := dev.read(); err != nil || ack.FixedHeader.Type != packets.Puback {
		t.Fatalf("puback: %v %v", ack, err)
	}
	waitFor(t, "the message queued for m1", func() bool { ci, _ := e.broker.Client("acme", "m1"); return ci.QueuedMessages == 1 })
	e.close()
	e = newEnv(t, dir, nil)
	if ci, _ := e.broker.Client("acme", "m1"); ci.QueuedMessages != 1 {
		t.Fatalf("after the restart: %+v", ci)
	}
	waitFor(t, "the expired message to leave m1's queue after the restart", func() bool {
		ci, _ := e.broker.Client("acme", "m1")
		return ci.QueuedMessages == 0
	})
}

// Session versions grow by one per session; the KV holds a reservation of 64, written once,
// and after a restart versions go on after it.
func TestSessionVersionsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, withPresence(0))
	tok := e.token("d1", "device", time.Hour)
	for v := 1; v <= 3; v++ {
		rc := dialRaw(t, e.addr, 4)
		rc.connect("d1", tok, true, nil)
		waitFor(t, "the connected event", func() bool { return len(e.storedOn(TopicPresenceConnected+"d1")) == v })
		if got := e.storedOn(TopicPresenceConnected + "d1")[v-1]["session_version"]; got != float64(v) {
			t.Fatalf("session %d has version %v", v, got)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.expectClosed()
	}
	if raw, ok, err := e.store.Get(keyPresenceVersion + "acme/d1"); err != nil || !ok || string(raw) != "64" {
		t.Fatalf("stored reservation: %q %v %v", raw, ok, err)
	}
	waitFor(t, "3 disconnected events", func() bool { return len(e.storedOn(TopicPresenceDisconnected+"d1")) == 3 })
	e.close()
	e = newEnv(t, dir, withPresence(0))
	rc := dialRaw(t, e.addr, 4)
	rc.connect("d1", tok, true, nil)
	waitFor(t, "the connected event after the restart", func() bool { return len(e.storedOn(TopicPresenceConnected+"d1")) == 4 })
	if got := e.storedOn(TopicPresenceConnected + "d1")[3]["session_version"]; got != 65.0 {
		t.Fatalf("after the restart: version %v, want 65", got)
	}
	if raw, _, _ := e.store.Get(keyPresenceVersion + "acme/d1"); string(raw) != "128" {
		t.Fatalf("stored reservation after the restart: %q", raw)
	}
}

// An operator's downlink may carry an MQTT 5 message expiry: queued for an offline session, it
// is dropped once the interval passes.
func TestAdminPublishMessageExpiry(t *testing.T) {
	e := newEnv(t, "", nil)
	rc := dialRaw(t, e.addr, 4)
	rc.connect("d1", e.token("d1", "device", time.Hour), false, nil)
	rc.send(subscribePacket("devices/d1/#", 1))
	if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Suback {
		t.Fatalf("SUBACK %+v %v", pk, err)
	}
	rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
	rc.expectClosed()
	op := e.token("alice", "operator", time.Hour)
	if status, out := adminRequest(t, e, op, "POST", `{"topic":"devices/d1/cmd","payload":"soon stale","qos":1,"message_expiry":1}`); status != 200 {
		t.Fatalf("admin publish: %d %v", status, out)
	}
	if status, out := adminRequest(t, e, op, "POST", `{"topic":"devices/d1/cmd","payload":"x","qos":1,"message_expiry":-1}`); status != 400 {
		t.Fatalf("negative expiry: %d %v", status, out)
	}
	waitFor(t, "the message queued", func() bool { ci, _ := e.broker.Client("acme", "d1"); return ci.QueuedMessages == 1 })
	waitFor(t, "the message expired", func() bool { ci, _ := e.broker.Client("acme", "d1"); return ci.QueuedMessages == 0 })
}

// TestPresenceEventsStoredInOrder: a client connecting and disconnecting again and again gets,
// for each session version, its connected event stored before its disconnected event, each
// once, although the broker appends them in rounds of many. (Sessions of one client id may be
// stored in another order than they happened: their session_version orders them.)
func TestPresenceEventsStoredInOrder(t *testing.T) {
	e := newEnv(t, "", withPresence(0))
	const cycles = 30
	tok := e.token("d1", "device", time.Hour)
	for range cycles {
		c := dialRaw(t, e.addr, 4)
		if ack := c.connect("d1", tok, true, nil); ack.ReasonCode != 0 {
			t.Fatalf("connack %d", ack.ReasonCode)
		}
		c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		c.expectClosed()
	}
	var seen []string
	waitFor(t, "every presence event of d1", func() bool {
		seen = seen[:0]
		for _, it := range e.stored() {
			if strings.HasPrefix(it.Event.Topic, "$events/presence/") {
				var d struct {
					V uint64 `json:"session_version"`
				}
				if err := json.Unmarshal(it.Event.Data, &d); err != nil {
					t.Fatal(err)
				}
				seen = append(seen, fmt.Sprintf("%s@%d", strings.TrimSuffix(strings.TrimPrefix(it.Event.Topic, "$events/presence/"), "/d1"), d.V))
			}
		}
		return len(seen) >= 2*cycles
	})
	at := map[string]int{}
	for i, s := range seen {
		if _, dup := at[s]; dup {
			t.Fatalf("%s stored twice (all: %v)", s, seen)
		}
		at[s] = i
	}
	for v := 1; v <= cycles; v++ {
		c, okC := at[fmt.Sprintf("connected@%d", v)]
		d, okD := at[fmt.Sprintf("disconnected@%d", v)]
		if !okC || !okD || c > d {
			t.Fatalf("session %d: connected at %d (%v), disconnected at %d (%v): want both, connected first (all: %v)", v, c, okC, d, okD, seen)
		}
	}
}
