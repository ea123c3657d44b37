package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// devicesConfig routes presence, shadow and queue events to the sink function.
func devicesConfig(sinkURL, extra string) string {
	return fmt.Sprintf(`
functions:
  - {name: sink, type: http, url: %s, batch: {max_events: 100, max_wait: 5ms}}
rules:
  - {id: presence, topic: "$events/presence/#", functions: [sink]}
  - {id: drops, topic: "$events/queue/#", functions: [sink]}
  - {id: shadows, topic: "$shadow/+/update/accepted", functions: [sink]}
  - {id: everything, topic: "#", functions: [log]}
auth:
  policies:
    device:   {publish: ["devices/${sub}/#"], subscribe: ["devices/${sub}/#"], shadow: ["${sub}"]}
    app:      {publish: ["apps/#"], shadow: ["+"]}
    operator: {admin: true}
%s`, sinkURL, extra)
}

// eventsOn returns the CloudEvents the sink received on topic, with their data decoded.
func (s *sink) eventsOn(topic string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, ev := range s.events {
		if ev["topic"] == topic {
			out = append(out, ev)
		}
	}
	return out
}

// waitEvent waits for an event on topic whose data satisfies match, and returns its data.
func (s *sink) waitEvent(t *testing.T, topic string, match func(data map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var seen []any
		for _, ev := range s.eventsOn(topic) {
			if d, ok := ev["data"].(map[string]any); ok && (match == nil || match(d)) {
				return d
			}
			seen = append(seen, ev["data"])
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 15s waiting for the event on %s; events there: %v", topic, seen)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func reasonIs(r string, version float64) func(map[string]any) bool {
	return func(d map[string]any) bool { return d["reason"] == r && d["session_version"] == version }
}

// connectV3 connects a paho 3.1.1 client.
func connectV3(t *testing.T, addr, id, tok string, clean bool, onMsg mqtt.MessageHandler) mqtt.Client {
	t.Helper()
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetUsername(id).SetPassword(tok).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).SetProtocolVersion(4).
		SetDefaultPublishHandler(onMsg)
	c := mqtt.NewClient(opts)
	tk := c.Connect()
	if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("connect %s: %v", id, tk.Error())
	}
	return c
}

// muteConn is a client's network that can be cut: once muted, nothing the client writes
// reaches the broker (pings included), but the socket stays open.
type muteConn struct {
	net.Conn
	muted atomic.Bool
}

func (c *muteConn) Write(b []byte) (int, error) {
	if c.muted.Load() {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// connectV5 connects a paho.golang MQTT 5 client over conn.
func connectV5(t *testing.T, conn net.Conn, id, tok string, keepalive uint16, onMsg func(*paho.Publish)) *paho.Client {
	t.Helper()
	cfg := paho.ClientConfig{Conn: conn, ClientID: id}
	if onMsg != nil {
		cfg.OnPublishReceived = []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			onMsg(pr.Packet)
			return true, nil
		}}
	}
	c := paho.NewClient(cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: keepalive, CleanStart: true,
		UsernameFlag: true, Username: id, PasswordFlag: true, Password: []byte(tok)})
	if err != nil || ack.ReasonCode != 0 {
		t.Fatalf("connect %s: %v %+v", id, err, ack)
	}
	return c
}

// TestPresenceEventsReachFunction: every connect and disconnect reaches an HTTP function as a
// durable event on $events/presence/..., with the reason of the disconnect (clean DISCONNECT,
// keepalive timeout after the client's network is cut, a killed client, a takeover) and a
// session version that orders one client id's sessions; the clients API and CLI show the
// sessions.
func TestPresenceEventsReachFunction(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", devicesConfig(s.url(), ""))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	dev := func(id string) string { return token(t, data, cfg, "--subject", id, "--role", "device") }

	// paho 3.1.1: connect, subscribe, clean DISCONNECT.
	c1 := connectV3(t, p.mqttAddr, "dev-1", dev("dev-1"), true, nil)
	con := s.waitEvent(t, "$events/presence/connected/dev-1", reasonIs("client_connect", 1))
	if con["client_id"] != "dev-1" || con["subject"] != "dev-1" || con["protocol_version"] != 4.0 || con["clean_start"] != true ||
		!strings.HasPrefix(con["remote"].(string), "127.0.0.1:") || con["at"] == nil || con["node"] == "" {
		t.Fatalf("connected event data: %v", con)
	}
	// The CloudEvent: chosen by the rule naming $events/presence/# (not by "#"), from the device.
	for _, ev := range s.eventsOn("$events/presence/connected/dev-1") {
		if ev["rule"] != "presence" || ev["type"] != "fleetgate.presence.connected" || ev["source"] != "mqtt://dev-1" || ev["subject"] != "dev-1" {
			t.Fatalf("presence CloudEvent: %v", ev)
		}
	}
	if tk := c1.Subscribe("devices/dev-1/cmd", 1, nil); !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	// The clients API and CLI see it.
	code, out, errOut := runCLI(t, p, op, "clients", "list", "--prefix", "dev-")
	if code != 0 || !strings.Contains(out, "dev-1") || !strings.Contains(out, "connected") {
		t.Fatalf("clients list: %d %q %q", code, out, errOut)
	}
	code, out, errOut = runCLI(t, p, op, "clients", "get", "dev-1", "-o", "json")
	var ci map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &ci) != nil {
		t.Fatalf("clients get: %d %q %q", code, out, errOut)
	}
	subs, _ := ci["subscriptions"].([]any)
	if ci["connected"] != true || ci["session_version"] != 1.0 || len(subs) != 1 || ci["since"] == nil {
		t.Fatalf("clients get dev-1: %v", ci)
	}
	if code, _, _ := runCLI(t, p, op, "clients", "get", "nobody"); code != 3 {
		t.Fatalf("clients get of an unknown id: exit %d, want 3", code)
	}
	// A gateway without a cluster: section says so.
	if code, _, errOut := runCLI(t, p, op, "cluster", "status"); code != 1 || !strings.Contains(errOut, "not_clustered") {
		t.Fatalf("cluster status on a lone gateway: exit %d %q, want 1 and not_clustered", code, errOut)
	}
	c1.Disconnect(100)
	dis := s.waitEvent(t, "$events/presence/disconnected/dev-1", reasonIs("client_disconnect", 1))
	if _, ok := dis["duration_ms"].(float64); !ok {
		t.Fatalf("disconnected event without duration_ms: %v", dis)
	}

	// The next session of the same client id has the next version.
	c1 = connectV3(t, p.mqttAddr, "dev-1", dev("dev-1"), true, nil)
	s.waitEvent(t, "$events/presence/connected/dev-1", reasonIs("client_connect", 2))
	// Takeover: another connection with the same client id.
	c1b := connectV3(t, p.mqttAddr, "dev-1", dev("dev-1"), true, nil)
	s.waitEvent(t, "$events/presence/disconnected/dev-1", reasonIs("takeover", 2))
	s.waitEvent(t, "$events/presence/connected/dev-1", reasonIs("client_connect", 3))
	c1b.Disconnect(100)
	_ = c1

	// MQTT 5, keepalive 1 s: the client's network is cut (nothing more reaches the broker,
	// the socket stays open); the broker ends it after 1.5 × keepalive.
	raw, err := net.Dial("tcp", p.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	mc := &muteConn{Conn: raw}
	c2 := connectV5(t, mc, "dev-2", dev("dev-2"), 1, nil)
	con = s.waitEvent(t, "$events/presence/connected/dev-2", reasonIs("client_connect", 1))
	if con["protocol_version"] != 5.0 {
		t.Fatalf("v5 connected event: %v", con)
	}
	mc.muted.Store(true)
	s.waitEvent(t, "$events/presence/disconnected/dev-2", reasonIs("keepalive_timeout", 1))
	_ = c2
	raw.Close()

	// A killed client: its socket closes without DISCONNECT.
	raw, err = net.Dial("tcp", p.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	connectV5(t, raw, "dev-3", dev("dev-3"), 30, nil)
	s.waitEvent(t, "$events/presence/connected/dev-3", reasonIs("client_connect", 1))
	raw.Close()
	s.waitEvent(t, "$events/presence/disconnected/dev-3", reasonIs("connection_lost", 1))

	// A client cannot forge presence: "$" topics are refused to publishers.
	if code, _, _ := postEvents(http.DefaultClient, "http://"+p.httpAddr, token(t, data, cfg, "--subject", "app-1", "--role", "app"),
		"$events/presence/connected/dev-9", `{}`); code != 400 && code != 403 {
		t.Fatalf("app posting a presence event: %d, want 400 or 403", code)
	}
}

// TestPresenceOnShutdownAndRestart: a graceful stop ends every connection with reason
// server_shutdown, durably: the event reaches the function after the restart, and session
// versions keep growing across it (after the block of 64 reserved before it).
func TestPresenceOnShutdownAndRestart(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", devicesConfig(s.url(), ""))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	tok := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	connectV3(t, p.mqttAddr, "dev-1", tok, true, nil)
	s.waitEvent(t, "$events/presence/connected/dev-1", reasonIs("client_connect", 1))
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	p = startProc(t, data, cfg)
	s.waitEvent(t, "$events/presence/disconnected/dev-1", reasonIs("server_shutdown", 1))
	c := connectV3(t, p.mqttAddr, "dev-1", tok, true, nil)
	defer c.Disconnect(0)
	// Versions go on after the block reserved before the restart (64).
	s.waitEvent(t, "$events/presence/connected/dev-1", reasonIs("client_connect", 65))
}

// shadowHTTP sends method /v1/shadows/device with body and returns the status and JSON answer.
func shadowHTTP(t *testing.T, p *proc, tok, method, device, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, p.url("/v1/shadows/"+device), strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

// inbox collects the messages a client receives, by topic.
type inbox struct {
	mu   sync.Mutex
	msgs map[string][]string
}

func newInbox() *inbox { return &inbox{msgs: map[string][]string{}} }

func (b *inbox) add(topic string, payload []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs[topic] = append(b.msgs[topic], string(payload))
}

func (b *inbox) handler() mqtt.MessageHandler {
	return func(_ mqtt.Client, m mqtt.Message) { b.add(m.Topic(), m.Payload()) }
}

// wait waits for a message on topic containing want, and returns it.
func (b *inbox) wait(t *testing.T, topic, want string) string {
	t.Helper()
	var got string
	waitFor(t, 15*time.Second, fmt.Sprintf("a message on %s with %s", topic, want), func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, m := range b.msgs[topic] {
			if strings.Contains(m, want) {
				got = m
				return true
			}
		}
		return false
	})
	return got
}

// TestShadowRoundTrip: a device reports its temperature to its shadow over MQTT; an app reads
// it over HTTP and sets a desired fan speed with the version it read; the device receives the
// delta, also when it was offline (persistent session, and across a kill -9 of the gateway);
// a stale version gets 409 and changes nothing; every accepted update is an event the rules
// route; a device cannot read or update another device's shadow (HTTP and MQTT).
func TestShadowRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", devicesConfig(s.url(), "shadow: {max_bytes: 2048}\n"))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	devTok := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	otherTok := token(t, data, cfg, "--subject", "dev-2", "--role", "device")
	app := token(t, data, cfg, "--subject", "app-1", "--role", "app")

	if code, _ := shadowHTTP(t, p, app, "GET", "dev-1", ""); code != 404 {
		t.Fatalf("GET before any update: %d, want 404", code)
	}
	in := newInbox()
	dev := connectV3(t, p.mqttAddr, "dev-1", devTok, false, in.handler())
	for _, f := range []string{"$shadow/dev-1/delta", "$shadow/dev-1/update/accepted", "$shadow/dev-1/update/rejected"} {
		if tk := dev.Subscribe(f, 1, nil); !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
			t.Fatalf("subscribe %s: %v", f, tk.Error())
		}
	}
	pub := func(c mqtt.Client, topic, payload string) {
		t.Helper()
		if tk := c.Publish(topic, 1, false, payload); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tk.Error())
		}
	}
	// 1. The device reports.
	pub(dev, "$shadow/dev-1/update", `{"state":{"reported":{"temp":21.5,"fan":1}}}`)
	in.wait(t, "$shadow/dev-1/update/accepted", `"version":1`)
	// 2. The app reads it.
	code, doc := shadowHTTP(t, p, app, "GET", "dev-1", "")
	rep, _ := doc["state"].(map[string]any)["reported"].(map[string]any)
	if code != 200 || rep["temp"] != 21.5 || doc["version"] != 1.0 {
		t.Fatalf("GET: %d %v", code, doc)
	}
	meta, _ := doc["metadata"].(map[string]any)["reported"].(map[string]any)
	if ts, _ := meta["temp"].(map[string]any)["timestamp"].(float64); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("no per-field timestamp: %v", doc["metadata"])
	}
	// 3. The app sets a desired fan speed with the version it read.
	code, doc = shadowHTTP(t, p, app, "PATCH", "dev-1", `{"state":{"desired":{"fan":3}},"version":1}`)
	if code != 200 || doc["version"] != 2.0 {
		t.Fatalf("PATCH: %d %v", code, doc)
	}
	if d := doc["state"].(map[string]any)["delta"].(map[string]any); d["fan"] != 3.0 || len(d) != 1 {
		t.Fatalf("delta after PATCH: %v", d)
	}
	// 4. The device receives the delta.
	in.wait(t, "$shadow/dev-1/delta", `{"state":{"fan":3},"version":2`)
	// A stale version: 409 with the current version, nothing changed.
	code, rej := shadowHTTP(t, p, app, "PATCH", "dev-1", `{"state":{"desired":{"fan":9}},"version":1}`)
	if code != 409 || rej["code"] != "version_conflict" || rej["version"] != 2.0 {
		t.Fatalf("stale PATCH: %d %v", code, rej)
	}
	if _, doc = shadowHTTP(t, p, app, "GET", "dev-1", ""); doc["version"] != 2.0 {
		t.Fatalf("a refused PATCH changed the shadow: %v", doc)
	}
	// The device reports the new speed: the delta is empty; null deletes a field.
	pub(dev, "$shadow/dev-1/update", `{"state":{"reported":{"fan":3,"temp":null}}}`)
	in.wait(t, "$shadow/dev-1/update/accepted", `"version":3`)
	_, doc = shadowHTTP(t, p, app, "GET", "dev-1", "")
	if st := doc["state"].(map[string]any); len(st["delta"].(map[string]any)) != 0 || st["reported"].(map[string]any)["temp"] != nil {
		t.Fatalf("after report: %v", st)
	}
	// A stale version over MQTT is rejected on .../update/rejected.
	pub(dev, "$shadow/dev-1/update", `{"state":{"reported":{"fan":4}},"version":1}`)
	in.wait(t, "$shadow/dev-1/update/rejected", `"code":"version_conflict"`)
	// Too large: 413.
	if code, rej := shadowHTTP(t, p, app, "PATCH", "dev-1", `{"state":{"desired":{"blob":"`+strings.Repeat("x", 3000)+`"}}}`); code != 413 || rej["code"] != "too_large" {
		t.Fatalf("oversized PATCH: %d %v", code, rej)
	}

	// 5. Offline delivery: the device goes away (persistent session), the app changes the
	// desired speed, the gateway is killed and restarted, the device comes back and gets it.
	dev.Disconnect(100)
	if code, doc := shadowHTTP(t, p, app, "PATCH", "dev-1", `{"state":{"desired":{"fan":5}},"version":3}`); code != 200 || doc["version"] != 4.0 {
		t.Fatalf("PATCH while offline: %d %v", code, doc)
	}
	p.kill()
	p = startProc(t, data, cfg)
	in2 := newInbox()
	dev = connectV3(t, p.mqttAddr, "dev-1", devTok, false, in2.handler())
	defer dev.Disconnect(0)
	in2.wait(t, "$shadow/dev-1/delta", `{"state":{"fan":5},"version":4`)
	// A device reads its whole shadow with .../get.
	if tk := dev.Subscribe("$shadow/dev-1/get/+", 1, nil); !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	pub(dev, "$shadow/dev-1/get", ``)
	in2.wait(t, "$shadow/dev-1/get/accepted", `"desired":{"fan":5}`)

	// Every accepted update is an event the rules routed.
	waitFor(t, 15*time.Second, "4 shadow events", func() bool { return len(s.eventsOn("$shadow/dev-1/update/accepted")) >= 4 })

	// Another device may not read or update dev-1's shadow, over HTTP...
	if code, _ := shadowHTTP(t, p, otherTok, "GET", "dev-1", ""); code != 403 {
		t.Fatalf("dev-2 GET dev-1's shadow: %d, want 403", code)
	}
	if code, _ := shadowHTTP(t, p, otherTok, "PATCH", "dev-1", `{"state":{"desired":{"fan":0}}}`); code != 403 {
		t.Fatalf("dev-2 PATCH dev-1's shadow: %d, want 403", code)
	}
	// ...nor over MQTT (MQTT 5: the PUBACK says not authorized; the SUBACK refuses).
	raw, err := net.Dial("tcp", p.mqttAddr)
	if err != nil {
		t.Fatal(err)
	}
	other := connectV5(t, raw, "dev-2", otherTok, 30, nil)
	defer other.Disconnect(&paho.Disconnect{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ack, err := other.Publish(ctx, &paho.Publish{Topic: "$shadow/dev-1/update", QoS: 1, Payload: []byte(`{"state":{"reported":{"fan":0}}}`)}); err == nil && ack.ReasonCode < 0x80 {
		t.Fatalf("dev-2 updated dev-1's shadow over MQTT: %+v", ack)
	}
	if sa, err := other.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$shadow/dev-1/delta", QoS: 1}}}); err == nil && sa.Reasons[0] < 0x80 {
		t.Fatalf("dev-2 subscribed to dev-1's delta: %+v", sa)
	}
	if _, doc = shadowHTTP(t, p, app, "GET", "dev-1", ""); doc["version"] != 4.0 {
		t.Fatalf("a refused update changed the shadow: %v", doc)
	}
	// Its own shadow it may use.
	if code, _ := shadowHTTP(t, p, otherTok, "PATCH", "dev-2", `{"state":{"reported":{"fan":0}}}`); code != 200 {
		t.Fatalf("dev-2 PATCH its own shadow: %d", code)
	}
}

// TestOfflineQueueFull: a persistent session's queue holds mqtt.session_queue_max.messages;
// past it the oldest messages are dropped, each with an event on $events/queue/dropped/...
// that reaches the function, and the client gets the newest ones when it comes back.
func TestOfflineQueueFull(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", devicesConfig(s.url(), "mqtt: {session_queue_max: {messages: 3, bytes: 1048576}}\n"))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	devTok := token(t, data, cfg, "--subject", "dev-q", "--role", "device")
	in := newInbox()
	dev := connectV3(t, p.mqttAddr, "dev-q", devTok, false, in.handler())
	if tk := dev.Subscribe("devices/dev-q/cmd", 1, nil); !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
		t.Fatal(tk.Error())
	}
	dev.Disconnect(100)
	for i := range 5 {
		body := fmt.Sprintf(`{"topic":"devices/dev-q/cmd","payload":{"n":%d},"qos":1}`, i)
		req, _ := http.NewRequest("POST", p.url("/admin/v1/publish"), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+op)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("admin publish %d: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	waitFor(t, 15*time.Second, "2 drop events", func() bool { return len(s.eventsOn("$events/queue/dropped/dev-q")) == 2 })
	for _, ev := range s.eventsOn("$events/queue/dropped/dev-q") {
		d := ev["data"].(map[string]any)
		if d["reason"] != "messages" || d["topic"] != "devices/dev-q/cmd" || d["limit_messages"] != 3.0 || d["connected"] != false {
			t.Fatalf("drop event: %v", d)
		}
	}
	code, out, errOut := runCLI(t, p, op, "clients", "get", "dev-q", "-o", "json")
	var ci map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &ci) != nil || ci["connected"] != false || ci["queued_messages"] != 3.0 {
		t.Fatalf("clients get dev-q: %d %q %q", code, out, errOut)
	}
	// The queue survives a restart; the client gets the 3 newest.
	p.kill()
	p = startProc(t, data, cfg)
	in2 := newInbox()
	dev = connectV3(t, p.mqttAddr, "dev-q", devTok, false, in2.handler())
	defer dev.Disconnect(0)
	for _, n := range []string{`{"n":2}`, `{"n":3}`, `{"n":4}`} {
		in2.wait(t, "devices/dev-q/cmd", n)
	}
	in2.mu.Lock()
	got := in2.msgs["devices/dev-q/cmd"]
	in2.mu.Unlock()
	for _, m := range got {
		if m == `{"n":0}` || m == `{"n":1}` {
			t.Fatalf("a dropped message was delivered: %v", got)
		}
	}
}

// TestShadowDefaultPolicies: with the embedded policies, a device may use its own shadow, an
// app the shadow its token's "device" claim names (and no other), an operator every shadow.
func TestShadowDefaultPolicies(t *testing.T) {
	data := t.TempDir() + "/data"
	p := startProc(t, data, "")
	dev := token(t, data, "", "--subject", "dev-1", "--role", "device")
	owner := token(t, data, "", "--subject", "app-7", "--role", "app", "--claim", "device=dev-1")
	plain := token(t, data, "", "--subject", "app-8", "--role", "app")
	op := token(t, data, "", "--subject", "ops", "--role", "operator")
	for _, c := range []struct {
		tok, method, device, body string
		want                      int
	}{
		{dev, "PATCH", "dev-1", `{"state":{"reported":{"temp":21.5}}}`, 200},
		{dev, "GET", "dev-2", ``, 403},
		{owner, "GET", "dev-1", ``, 200},
		{owner, "PATCH", "dev-1", `{"state":{"desired":{"fan":3}},"version":1}`, 200},
		{owner, "GET", "dev-2", ``, 403},
		{plain, "GET", "dev-1", ``, 403},
		{op, "GET", "dev-1", ``, 200},
		{op, "GET", "dev-9", ``, 404},
		{op, "PUT", "dev-1", `{}`, 405},
		{"not-a-token", "GET", "dev-1", ``, 401},
	} {
		if code, ans := shadowHTTP(t, p, c.tok, c.method, c.device, c.body); code != c.want {
			t.Errorf("%s %s: %d %v, want %d", c.method, c.device, code, ans, c.want)
		}
	}
}
