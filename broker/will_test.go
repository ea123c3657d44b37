package broker

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/mochi-mqtt/server/v2/packets"
)

// monitor5 connects an MQTT 5 monitor subscribed to filter and returns what it receives.
func monitor5(t *testing.T, e *env, clientID, filter string) <-chan *paho.Publish {
	t.Helper()
	got := make(chan *paho.Publish, 16)
	c, _, err := connect5(t, e.addr, clientID, e.token("ops", "monitor", time.Hour), func(cfg *paho.ClientConfig, _ *paho.Connect) {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1, RetainAsPublished: true}}}); err != nil {
		t.Fatal(err)
	}
	return got
}

func receive(t *testing.T, what string, ch <-chan *paho.Publish) *paho.Publish {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing received", what)
		return nil
	}
}

// checkWill checks that p is the will TestWillProperties sets, with all its MQTT 5 properties.
func checkWill(t *testing.T, what string, p *paho.Publish, retain bool) {
	t.Helper()
	pr := p.Properties
	if p.Topic != "devices/d1/status" || string(p.Payload) != "gone" || p.Retain != retain || pr == nil {
		t.Fatalf("%s: %q %q retain %v", what, p.Topic, p.Payload, p.Retain)
	}
	var user []string
	for _, u := range pr.User {
		user = append(user, u.Key+"="+u.Value)
	}
	if pr.PayloadFormat == nil || *pr.PayloadFormat != 1 || pr.ContentType != "text/plain" ||
		pr.ResponseTopic != "devices/d1/responses" || !bytes.Equal(pr.CorrelationData, []byte{0, 0xff, 'w'}) ||
		pr.MessageExpiry == nil || *pr.MessageExpiry == 0 || *pr.MessageExpiry > 3600 || fmt.Sprint(user) != "[k=v]" {
		t.Fatalf("%s: properties lost: format %v, content type %q, response topic %q, correlation %x, expiry %v, user %v",
			what, pr.PayloadFormat, pr.ContentType, pr.ResponseTopic, pr.CorrelationData, pr.MessageExpiry, user)
	}
}

// A will keeps all its MQTT 5 properties (mochi drops all but the user properties): delivered
// when the device's connection dies, retained, and retained across a restart. A client cannot
// set the user property the gateway keeps them in.
func TestWillProperties(t *testing.T) {
	dir := t.TempDir()
	e := newEnv(t, dir, nil)
	live := monitor5(t, e, "monitor-1", "devices/d1/status")

	// The will client is raw (mochi's own encoder): paho.golang (v0.23.0) packs will properties
	// as CONNECT properties, so it sends none but the user properties and the delay.
	d1 := dialRaw(t, e.addr, 5)
	if ack := d1.connect("d1", e.token("d1", "device", time.Hour), true, func(pk *packets.Packet) {
		pk.Connect.WillFlag, pk.Connect.WillRetain, pk.Connect.WillQos = true, true, 1
		pk.Connect.WillTopic, pk.Connect.WillPayload = "devices/d1/status", []byte("gone")
		pk.Mods.AllowResponseInfo = true // mochi's encoder writes response topic and correlation data only so
		pk.Connect.WillProperties = packets.Properties{PayloadFormat: 1, PayloadFormatFlag: true, MessageExpiryInterval: 3600,
			ContentType: "text/plain", ResponseTopic: "devices/d1/responses", CorrelationData: []byte{0, 0xff, 'w'},
			User: []packets.UserProperty{{Key: "k", Val: "v"}, {Key: willPropsKey, Val: `{"ct":"forged"}`}}}
	}); ack.ReasonCode != 0 {
		t.Fatalf("connect: %+v", ack)
	}
	_ = d1.c.Close()                                         // the connection dies: mochi sends the will
	checkWill(t, "live", receive(t, "the will", live), true) // retain as published

	// mochi's retained copy is the will as sent, so that it expires with its message expiry.
	if r, ok := e.broker.server.Topics.Retained.Get("devices/d1/status"); !ok || r.Expiry <= time.Now().Unix() ||
		r.Properties.ContentType != "text/plain" || len(r.Properties.User) != 1 {
		t.Fatalf("retained will: %v %+v expiry %d", ok, r.Properties, r.Expiry)
	}
	checkWill(t, "retained", receive(t, "the retained will", monitor5(t, e, "monitor-2", "devices/d1/status")), true)

	e.close()
	e = newEnv(t, dir, nil)
	checkWill(t, "retained after restart", receive(t, "the retained will after restart", monitor5(t, e, "monitor-3", "devices/d1/status")), true)

	// A publish cannot carry the gateway's user property either.
	d2, _, err := connect5(t, e.addr, "d2", e.token("d2", "device", time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	live2 := monitor5(t, e, "monitor-4", "devices/d2/#")
	if _, err := d2.Publish(ctx10(t), &paho.Publish{Topic: "devices/d2/t", QoS: 1, Payload: []byte("x"),
		Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: willPropsKey, Value: `{"ct":"forged"}`}}}}); err != nil {
		t.Fatal(err)
	}
	if p := receive(t, "the publish", live2); p.Properties != nil && (p.Properties.ContentType != "" || len(p.Properties.User) != 0) {
		t.Fatalf("publish delivered with %+v", p.Properties)
	}
}

// A delayed will keeps its properties too, and its message expiry counts from when it is sent.
func TestDelayedWillProperties(t *testing.T) {
	e := newEnv(t, "", nil)
	live := monitor5(t, e, "monitor-1", "devices/d1/status")
	d1 := dialRaw(t, e.addr, 5)
	if ack := d1.connect("d1", e.token("d1", "device", time.Hour), true, func(pk *packets.Packet) {
		pk.Properties.SessionExpiryInterval = 60 // the will delay is capped by the session expiry
		pk.Connect.WillFlag, pk.Connect.WillQos = true, 1
		pk.Connect.WillTopic, pk.Connect.WillPayload = "devices/d1/status", []byte("gone")
		pk.Mods.AllowResponseInfo = true
		pk.Connect.WillProperties = packets.Properties{WillDelayInterval: 1, PayloadFormat: 1, PayloadFormatFlag: true,
			MessageExpiryInterval: 3600, ContentType: "text/plain", ResponseTopic: "devices/d1/responses",
			CorrelationData: []byte{0, 0xff, 'w'}, User: []packets.UserProperty{{Key: "k", Val: "v"}}}
	}); ack.ReasonCode != 0 {
		t.Fatalf("connect: %+v", ack)
	}
	_ = d1.c.Close()
	p := receive(t, "the delayed will", live)
	checkWill(t, "delayed", p, false)
	if *p.Properties.MessageExpiry < 3590 {
		t.Fatalf("delayed will expiry %d, want about 3600", *p.Properties.MessageExpiry)
	}
}
