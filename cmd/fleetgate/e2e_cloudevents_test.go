package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	ce "github.com/cloudevents/sdk-go/v2/event"
	"github.com/eclipse/paho.golang/paho"
)

// Every batch a real http function receives parses and validates with the official CloudEvents
// SDK, and carries the event's context: an MQTT 5 publish with user properties by a client id
// (the subject) with a space and a "|", and an HTTP post of a text/plain CloudEvent.
func TestE2ECloudEventsValidWithSDKGo(t *testing.T) {
	var (
		mu     sync.Mutex
		events = map[string]ce.Event{}
		hdrs   = map[string]http.Header{} // the headers of the request that brought each event
		errs   []string
	)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var batch []ce.Event
		mu.Lock()
		defer mu.Unlock()
		if err := json.Unmarshal(body, &batch); err != nil {
			errs = append(errs, err.Error()+": "+string(body))
			return // success: an error here is the test's, not a retry
		}
		for _, e := range batch {
			if err := e.Validate(); err != nil {
				errs = append(errs, e.ID()+": "+err.Error())
			}
			events[e.Type()+" "+e.Subject()] = e
			hdrs[e.Type()+" "+e.Subject()] = r.Header.Clone()
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	dir := t.TempDir()
	cfg := writeTestFile(t, dir, "fleetgate.yaml", `
functions:
  - name: sink
    type: http
    url: http://`+ln.Addr().String()+`/
    batch: {max_events: 10, max_wait: 5ms}
rules:
  - {id: all, topic: "#", functions: [sink]}
`)
	data := dir + "/data"
	p := startProc(t, data, cfg)
	devTok := token(t, data, cfg, "--subject", "auth0|dev 1", "--role", "device")
	appTok := token(t, data, cfg, "--subject", "auth0|app", "--role", "app")

	conn, err := net.Dial("tcp", p.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: "auth0|dev 1"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ack, err := c.Connect(ctx, &paho.Connect{ClientID: "auth0|dev 1", KeepAlive: 30, CleanStart: true,
		UsernameFlag: true, Username: "auth0|dev 1", PasswordFlag: true, Password: []byte(devTok)}); err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect: %v %+v", err, ack)
	}
	defer c.Disconnect(&paho.Disconnect{})
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if _, err := c.Publish(ctx, &paho.Publish{Topic: "devices/auth0|dev 1/telemetry", QoS: 1, Payload: []byte(`{"temp":21}`),
		Properties: &paho.PublishProperties{ContentType: "application/json",
			User: paho.UserProperties{{Key: "fw", Value: "1.2"}, {Key: "zone", Value: "a b"},
				{Key: "traceparent", Value: tp}, {Key: "tracestate", Value: "congo=t61rcWkgMzE"}}}}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	// The MQTT event reaches the function before the HTTP post, alone in its batch: the trace
	// headers are sent for a batch whose events share one trace context.
	waitFor(t, 30*time.Second, "the mqtt event at the function", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) >= 1
	})
	req, _ := http.NewRequest(http.MethodPost, p.url("/v1/events/apps/notes"), strings.NewReader(
		`{"specversion":"1.0","id":"note-1","type":"com.example.note","datacontenttype":"text/plain","data_base64":"ZG9vciBvcGVuZWQ="}`))
	req.Header.Set("Authorization", "Bearer "+appTok)
	req.Header.Set("Content-Type", "application/cloudevents+json")
	req.Header.Set("User-Agent", "notes/3.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 202 {
		t.Fatalf("post: %v %v", resp, err)
	}
	resp.Body.Close()

	waitFor(t, 30*time.Second, "both events at the function", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) >= 2
	})
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatalf("sdk-go: %v", errs)
	}
	m, ok := events["fleetgate.mqtt.publish auth0|dev 1"]
	if !ok {
		t.Fatalf("no mqtt event in %v", events)
	}
	ext := m.Extensions()
	var meta map[string]string
	json.Unmarshal([]byte(ext["meta"].(string)), &meta)
	if m.Source() != "mqtt:///auth0%7Cdev%201" || m.DataContentType() != "application/json" || string(m.Data()) != `{"temp":21}` ||
		ext["topic"] != "devices/auth0|dev 1/telemetry" || ext["protocol"] != "mqtt" || ext["clientid"] != "auth0|dev 1" ||
		ext["qos"] != "1" || ext["retain"] != "false" || meta["fw"] != "1.2" || meta["zone"] != "a b" {
		t.Errorf("mqtt event: %v (meta %v)", m, meta)
	}
	// The traceparent user property is the event's trace context: the distributed-tracing
	// extension and the request's traceparent header, not user metadata.
	if h := hdrs["fleetgate.mqtt.publish auth0|dev 1"]; ext["traceparent"] != tp || ext["tracestate"] != "congo=t61rcWkgMzE" ||
		h.Get("traceparent") != tp || h.Get("tracestate") != "congo=t61rcWkgMzE" || meta["traceparent"] != "" {
		t.Errorf("mqtt trace context: extensions %v, headers %v, meta %v", ext, h, meta)
	}
	h, ok := events["com.example.note auth0|app"]
	if !ok {
		t.Fatalf("no http event in %v", events)
	}
	hx := h.Extensions()
	if h.Source() != "http:///auth0%7Capp" || h.DataContentType() != "text/plain" || string(h.Data()) != "door opened" ||
		hx["protocol"] != "http" || hx["topic"] != "apps/notes" || !strings.Contains(hx["meta"].(string), `"notes/3.1"`) {
		t.Errorf("http event: %v", h)
	}
}
