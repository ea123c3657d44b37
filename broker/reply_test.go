package broker

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/functions"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/storage"
)

// replyEnv is a test env whose gateway routes every event to the functions "reply" and "keep"
// (which no dispatcher consumes: kept() reads it).
func replyEnv(t *testing.T) *env {
	return newEnv(t, "", func(_ *Config, o *Options) {
		gw, err := ingest.New(ingest.Options{Store: o.Store, Logger: testLogger(),
			Router: ingest.RouterFunc(func(_ *event.Event, dst []storage.Target) []storage.Target {
				return append(dst, storage.Target{Function: "reply", Rule: "r"}, storage.Target{Function: "keep", Rule: "r"})
			})})
		if err != nil {
			t.Fatal(err)
		}
		o.Gateway = gw
	})
}

func (e *env) kept() []storage.Item {
	e.t.Helper()
	items, err := e.store.ReadQueue("keep", 0, 100000)
	if err != nil {
		e.t.Fatal(err)
	}
	return items
}

// replyFunction starts an http function "reply" on loopback that answers each event on a topic ending in "/req" with a reply naming its id,
// and starts a dispatcher publishing through the broker.
func replyFunction(t *testing.T, e *env) {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch []struct {
			ID    string `json:"id"`
			Topic string `json:"topic"`
		}
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var outs []string
		for _, ev := range batch {
			if strings.HasSuffix(ev.Topic, "/req") {
				outs = append(outs, fmt.Sprintf(`{"reply":true,"id":%q,"payload":{"answer":%q},"qos":1}`, ev.ID, ev.Topic))
			}
		}
		fmt.Fprintf(w, `{"publish":[%s]}`, strings.Join(outs, ","))
	}))
	t.Cleanup(srv.Close)
	d, err := functions.NewDispatcher(functions.Options{
		Store: e.store, Publisher: e.broker, Logger: testLogger(),
		LogWriter: io.Discard,
		Definitions: []functions.Definition{{Name: "reply", Type: functions.TypeHTTP, URL: srv.URL,
			Timeout: 5 * time.Second, Batch: functions.BatchPolicy{MaxEvents: 10, MaxWait: time.Millisecond}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = d.Stop(ctx)
	})
}

func TestRequestResponse(t *testing.T) {
	e := replyEnv(t)
	replyFunction(t, e)

	// d1 listens on its response topic; a monitor sees everything under devices/.
	d1got := make(chan *paho.Publish, 16)
	d1, _, err := connect5(t, e.addr, "d1", e.token("d1", "device", time.Hour), func(cfg *paho.ClientConfig, _ *paho.Connect) {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d1got <- pr.Packet
			return true, nil
		}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d1/responses", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	monGot := make(chan *paho.Publish, 64)
	mon, _, err := connect5(t, e.addr, "monitor-1", e.token("ops", "monitor", time.Hour), func(cfg *paho.ClientConfig, _ *paho.Connect) {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			monGot <- pr.Packet
			return true, nil
		}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mon.Subscribe(ctx10(t), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "devices/d2/responses", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	// A request with a response topic d1 may subscribe to: the reply reaches d1 with the same
	// correlation data. "$" user properties do not reach the event; the payload format does.
	utf8 := byte(1)
	corr := []byte{0x00, 0xff, 'r', 'q', '1'}
	if _, err := d1.Publish(ctx10(t), &paho.Publish{Topic: "devices/d1/req", QoS: 1, Payload: []byte("what time is it"),
		Properties: &paho.PublishProperties{ResponseTopic: "devices/d1/responses", CorrelationData: corr, PayloadFormat: &utf8,
			User: paho.UserProperties{{Key: "$response_topic", Value: "devices/d2/responses"}, {Key: "$x", Value: "y"}, {Key: "k", Value: "v"}}}}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-d1got:
		if p.Topic != "devices/d1/responses" || !bytes.Equal(p.Properties.CorrelationData, corr) ||
			string(p.Payload) != `{"answer":"devices/d1/req"}` || p.QoS != 1 {
			t.Fatalf("d1 received %q %q corr %x qos %d", p.Topic, p.Payload, p.Properties.CorrelationData, p.QoS)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("d1 did not receive the reply")
	}
	items := e.kept()
	var found bool
	for _, it := range items {
		if it.Event.Topic != "devices/d1/req" {
			continue
		}
		found = true
		m := it.Event.Meta
		if m["$response_topic"] != "devices/d1/responses" || m["$correlation_data"] != base64.StdEncoding.EncodeToString(corr) ||
			m["$payload_format"] != "utf8" || m["k"] != "v" || m["client_id"] != "d1" {
			t.Fatalf("meta %v", m)
		}
		if _, ok := m["$x"]; ok {
			t.Fatalf("a \"$\" user property reached the event: %v", m)
		}
		if it.Event.ContentType != "" {
			t.Fatalf("content type %q, want none (none declared)", it.Event.ContentType)
		}
	}
	if !found {
		t.Fatal("the request is not stored")
	}

	// A request whose response topic d1 may not subscribe to: the reply is refused, never published.
	if _, err := d1.Publish(ctx10(t), &paho.Publish{Topic: "devices/d1/req", QoS: 1, Payload: []byte("x"),
		Properties: &paho.PublishProperties{ResponseTopic: "devices/d2/responses", CorrelationData: []byte("c2")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reply to a foreign response topic is refused", func() bool { return e.broker.m.replyRefused.Get() == 1 })
	// The monitor's first message on devices/d2/responses is a later downlink, not the reply.
	if err := e.broker.Publish("devices/d2/responses", []byte("marker"), 1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-monGot:
		if string(p.Payload) != "marker" {
			t.Fatalf("monitor received %q on %q: the refused reply was published", p.Payload, p.Topic)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("monitor did not receive the marker")
	}
	if n := e.broker.m.replies.Get(); n != 1 {
		t.Fatalf("replies published: %d, want 1", n)
	}
}

func TestPayloadFormatBytes(t *testing.T) {
	e := newEnv(t, "", nil)
	d1, _, err := connect5(t, e.addr, "d1", e.token("d1", "device", time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	zero := byte(0)
	if _, err := d1.Publish(ctx10(t), &paho.Publish{Topic: "devices/d1/bin", QoS: 1, Payload: []byte{1, 2},
		Properties: &paho.PublishProperties{PayloadFormat: &zero, ContentType: "application/cbor"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d1.Publish(ctx10(t), &paho.Publish{Topic: "devices/d1/plain", QoS: 1, Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	items := e.stored()
	if len(items) != 2 {
		t.Fatalf("%d events stored", len(items))
	}
	if m := items[0].Event.Meta; m["$payload_format"] != "bytes" || items[0].Event.ContentType != "application/cbor" {
		t.Fatalf("meta %v, content type %q", m, items[0].Event.ContentType)
	}
	for _, k := range []string{"$payload_format", "$response_topic", "$correlation_data"} {
		if _, ok := items[1].Event.Meta[k]; ok {
			t.Fatalf("publish without properties has %s: %v", k, items[1].Event.Meta)
		}
	}
}

// A W3C traceparent (and tracestate) MQTT 5 user property is the event's trace context, as the
// headers are on HTTP ingest: "$traceparent" and "$tracestate", not user metadata; a malformed
// traceparent is dropped, and its tracestate with it.
func TestTraceContextUserProperties(t *testing.T) {
	e := newEnv(t, "", nil)
	d1, _, err := connect5(t, e.addr, "d1", e.token("d1", "device", time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, user := range []paho.UserProperties{
		{{Key: "traceparent", Value: tp}, {Key: "tracestate", Value: "congo=t61rcWkgMzE"}, {Key: "tracestate", Value: "rojo=00f067aa0ba902b7"}, {Key: "k", Value: "v"}},
		{{Key: "traceparent", Value: "00-nothex-00f067aa0ba902b7-01"}, {Key: "tracestate", Value: "congo=t61rcWkgMzE"}},
	} {
		if _, err := d1.Publish(ctx10(t), &paho.Publish{Topic: "devices/d1/t", QoS: 1, Payload: []byte("x"),
			Properties: &paho.PublishProperties{User: user}}); err != nil {
			t.Fatal(err)
		}
	}
	items := e.stored()
	if len(items) != 2 {
		t.Fatalf("%d events stored", len(items))
	}
	if m := items[0].Event.Meta; m["$traceparent"] != tp || m["$tracestate"] != "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" || m["k"] != "v" ||
		m["traceparent"] != "" || m["tracestate"] != "" {
		t.Fatalf("meta %v", m)
	}
	for _, k := range []string{"$traceparent", "$tracestate", "traceparent", "tracestate"} {
		if _, ok := items[1].Event.Meta[k]; ok {
			t.Fatalf("malformed traceparent kept as %s: %v", k, items[1].Event.Meta)
		}
	}
}
