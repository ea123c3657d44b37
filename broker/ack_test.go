package broker

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/storage"
)

// TestNoPubackBeforeCommit holds the commit at the storage gate and proves that the PUBACK of a
// QoS 1 publish (MQTT 5 and 3.1.1) leaves only after it. Checked by breaking it on purpose:
// with ingest.Gateway.AcceptAsync calling done(nil) before the store's callback, this test
// fails with "PUBACK ... while its commit was held".
func TestNoPubackBeforeCommit(t *testing.T) {
	for _, v := range []byte{5, 4} {
		gate := storage.NewGate()
		e := newEnv(t, "", nil, func(o *storage.Options) { o.Gate = gate })
		rc := dialRaw(t, e.addr, v)
		if ack := rc.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
			t.Fatalf("v%d CONNACK %#x", v, ack.ReasonCode)
		}
		gate.Hold()
		rc.send(publishPacket("devices/d1/telemetry", 1, 7, []byte(`{"temp":1}`)))
		answered := make(chan packets.Packet, 1)
		go func() {
			pk, err := rc.read()
			if err != nil {
				pk.FixedHeader.Type = 0
			}
			answered <- pk
		}()
		waitFor(t, "the publish to wait at the commit gate", func() bool { return gate.Waiting() > 0 })
		select {
		case pk := <-answered:
			gate.Release()
			t.Fatalf("v%d: packet type %d (PUBACK is %d) while its commit was held", v, pk.FixedHeader.Type, packets.Puback)
		case <-time.After(noAckWindow):
		}
		if n := len(e.stored()); n != 0 {
			t.Fatalf("v%d: %d events readable before the commit", v, n)
		}
		gate.Release()
		select {
		case pk := <-answered:
			if pk.FixedHeader.Type != packets.Puback || pk.PacketID != 7 || pk.ReasonCode != 0 {
				t.Fatalf("v%d: after the commit got %+v, want PUBACK 7", v, pk.FixedHeader)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("v%d: no PUBACK after the commit was released", v)
		}
		if n := len(e.stored()); n != 1 {
			t.Fatalf("v%d: PUBACK given but %d events stored", v, n)
		}
		e.close()
	}
}

// noAckWindow is how long a test watches for an ack that must not come while a commit is held.
// A correct broker never acks in it, however long; an early ack comes within microseconds.
const noAckWindow = 300 * time.Millisecond

// TestFullStorageRefusesPublishes: at storage.max_bytes an MQTT 5 publish gets PUBACK 0x97
// (quota exceeded) and a 3.1.1 client, which has no negative PUBACK, is disconnected; nothing
// is stored.
func TestFullStorageRefusesPublishes(t *testing.T) {
	e := newEnv(t, "", nil, func(o *storage.Options) { o.MaxBytes = 1 })
	rc := dialRaw(t, e.addr, 5)
	rc.connect("d1", e.token("d1", "device", time.Hour), true, nil)
	rc.send(publishPacket("devices/d1/telemetry", 1, 3, []byte(`{"temp":1}`)))
	pk, err := rc.read()
	if err != nil || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode != packets.ErrQuotaExceeded.Code {
		t.Fatalf("v5 publish on full storage: %+v reason %#x, %v", pk.FixedHeader, pk.ReasonCode, err)
	}
	r3 := dialRaw(t, e.addr, 4)
	r3.connect("d2", e.token("d2", "device", time.Hour), true, nil)
	r3.send(publishPacket("devices/d2/telemetry", 1, 3, []byte(`{"temp":1}`)))
	for _, pk := range r3.expectClosed() {
		if pk.FixedHeader.Type == packets.Puback {
			t.Fatal("3.1.1 publish on full storage was acknowledged")
		}
	}
	if n := len(e.stored()); n != 0 {
		t.Fatalf("%d events stored on full storage", n)
	}
}
