package broker

import (
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest/auth"
)

// DisconnectRevoked closes exactly the connections whose principal is revoked: MQTT 5 with
// DISCONNECT 0x87, MQTT 3.1.1 by closing; others stay.
func TestDisconnectRevoked(t *testing.T) {
	e := newEnv(t, "", nil)
	gotDisconnect := make(chan byte, 1)
	_, _, err := connect5(t, e.addr, "d1", e.token("d1", "device", time.Hour), func(cfg *paho.ClientConfig, _ *paho.Connect) {
		cfg.OnServerDisconnect = func(d *paho.Disconnect) { gotDisconnect <- d.ReasonCode }
	})
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan struct{})
	var once sync.Once
	_, code, err := connect3(t, paho3Options(e.addr, "d2", e.token("d2", "device", time.Hour)).
		SetConnectionLostHandler(func(paho3.Client, error) { once.Do(func() { close(lost) }) }))
	if code != 0 {
		t.Fatalf("3.1.1 connect %#x %v", code, err)
	}
	keep, _, err := connect5(t, e.addr, "d3", e.token("d3", "device", time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	n := e.broker.DisconnectRevoked(func(p *auth.Principal) bool { return p.Subject == "d1" || p.Subject == "d2" })
	if n != 2 {
		t.Fatalf("DisconnectRevoked = %d, want 2", n)
	}
	select {
	case rc := <-gotDisconnect:
		if rc != packets.ErrNotAuthorized.Code {
			t.Fatalf("DISCONNECT reason %#x, want 0x87", rc)
		}
	case <-time.After(time.Second):
		t.Fatal("MQTT 5 client not disconnected within a second")
	}
	select {
	case <-lost:
	case <-time.After(time.Second):
		t.Fatal("3.1.1 client not disconnected within a second")
	}
	if _, err := keep.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d3/#", QoS: 1}}}); err != nil {
		t.Fatalf("an unrevoked client was disturbed: %v", err)
	}
	if n := e.broker.DisconnectRevoked(func(*auth.Principal) bool { return false }); n != 0 {
		t.Fatalf("DisconnectRevoked(none) = %d", n)
	}
}
