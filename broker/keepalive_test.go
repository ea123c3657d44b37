package broker

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The keepalive [MQTT-3.1.2-22]: a client that keeps sending stays connected, and a silent one
// is disconnected one and a half keepalives after its last packet, never sooner (patched mochi
// sets the deadline a few times per window, not at every packet: third_party/mochi/PATCHES.md).
func TestKeepaliveDeadline(t *testing.T) {
	e := newEnv(t, t.TempDir(), nil)
	rc := dialRaw(t, e.addr, 4)
	if ack := rc.connect("ka", e.token("ka", "device", time.Hour), true, func(pk *packets.Packet) { pk.Connect.Keepalive = 3 }); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	// 1.5 × 3 s (mochi gave 4 s: keepalive + keepalive/2 in whole seconds). A window of seconds
	// lets the pings below through a stall of the test process on a busy machine.
	const window = 4500 * time.Millisecond
	// Pings every 100 ms for 5 s: the connection outlives the window, and the deadline the
	// broker keeps must follow the last packet closely.
	var last time.Time
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(100 * time.Millisecond) {
		last = time.Now()
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}})
		if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Pingresp {
			t.Fatalf("PINGREQ %s into the pings: %v, %v", time.Since(start), pk.FixedHeader.Type, err)
		}
	}
	// Silence: the broker closes the connection, not before the window.
	rc.expectClosed()
	if after := time.Since(last); after < window {
		t.Fatalf("disconnected %s after the last packet, before the keepalive window of %s", after, window)
	} else if after > window+window/16+5*time.Second {
		t.Fatalf("still connected %s after the last packet (window %s)", after, window)
	} else {
		t.Logf("disconnected %s after the last packet (window %s)", after, window)
	}
}
