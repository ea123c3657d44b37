package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// runCLI runs a fleetgate CLI command in-process against p with the operator token.
func runCLI(t *testing.T, p *proc, op string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append(args, "--server", "http://"+p.httpAddr, "--token", op)
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestRulesAppliedLiveRouteByContext: while an app sends, an operator applies a rule set with
// `fleetgate rules apply -f`; from then on events go where the new rules say, by claims,
// payload, topic and source. A broken set is refused whole, with every reason, and changes
// nothing. `rules test` explains a match and a non-match. App tokens cannot touch rules.
func TestRulesAppliedLiveRouteByContext(t *testing.T) {
	dir := t.TempDir()
	standard, gold := startSink(t), startSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
functions:
  - {name: standard, type: http, url: %s, batch: {max_events: 100, max_wait: 5ms}}
  - {name: gold, type: http, url: %s, batch: {max_events: 100, max_wait: 5ms}}
rules:
  - {id: everything, topic: "#", functions: [standard]}
`, standard.url(), gold.url()))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	plainApp := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	goldApp := token(t, data, cfg, "--subject", "app-2", "--role", "app", "--claim", "tier=gold")
	client := &http.Client{Timeout: 10 * time.Second}

	// Background traffic during the apply: every 202 must be delivered to some function.
	var sent atomic.Int64
	stop := make(chan struct{})
	var bgIDs []string
	var bgMu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			code, ans, err := postEvents(client, "http://"+p.httpAddr, plainApp, "apps/app-1/bg", fmt.Sprintf(`{"i":%d}`, i))
			if err != nil || code != 202 {
				t.Errorf("background post: %d %v %v", code, ans, err)
				return
			}
			bgMu.Lock()
			bgIDs = append(bgIDs, ans["ids"].([]any)[0].(string))
			bgMu.Unlock()
			sent.Add(1)
		}
	}()
	waitFor(t, 30*time.Second, "background traffic", func() bool { return sent.Load() > 20 })

	// A broken set is refused whole and lists every problem.
	bad := writeTestFile(t, dir, "bad.yaml", `
rules:
  - {id: a, topic: "apps/#/x", functions: [standard]}
  - {id: b, topic: "apps/#", when: "payload.temp >", functions: [standard]}
  - {id: c, topic: "apps/#", functions: [nosuch]}
`)
	code, out, errOut := runCLI(t, p, op, "rules", "apply", "-f", bad)
	if code == 0 {
		t.Fatalf("broken rule set applied: %s", out)
	}
	for _, want := range []string{`"a"`, `"b"`, `"c"`, "nosuch"} {
		if !strings.Contains(errOut+out, want) {
			t.Errorf("problem %s not listed:\n%s%s", want, out, errOut)
		}
	}
	code, out, _ = runCLI(t, p, op, "rules", "list", "-o", "json")
	if code != 0 || !strings.Contains(out, `"everything"`) || strings.Contains(out, `"nosuch"`) {
		t.Fatalf("live set changed by a refused apply: %s", out)
	}

	good := writeTestFile(t, dir, "good.yaml", `
rules:
  - id: by-context
    topic: "apps/+/+"
    routes:
      - when: 'claims.tier == "gold" && source == "http"'
        functions: [gold]
      - when: 'payload.priority == "high"'
        functions: [gold]
      - functions: [standard]
`)
	if code, out, errOut := runCLI(t, p, op, "rules", "apply", "-f", good); code != 0 {
		t.Fatalf("apply: %s %s", out, errOut)
	}
	post := func(tok, topic, body string) string {
		code, ans, err := postEvents(client, "http://"+p.httpAddr, tok, topic, body)
		if err != nil || code != 202 {
			t.Fatalf("post: %d %v %v", code, ans, err)
		}
		return ans["ids"].([]any)[0].(string)
	}
	goldByClaim := post(goldApp, "apps/app-2/order", `{"priority":"low"}`)
	goldByPayload := post(plainApp, "apps/app-1/order", `{"priority":"high"}`)
	plain := post(plainApp, "apps/app-1/order", `{"priority":"low"}`)
	close(stop)
	wg.Wait()
	waitFor(t, 30*time.Second, "routed events", func() bool {
		return gold.has([]string{goldByClaim, goldByPayload}) == 0 && standard.has([]string{plain}) == 0
	})
	if gold.has([]string{plain}) == 0 || standard.has([]string{goldByClaim}) == 0 {
		t.Fatal("an event went to both routes")
	}
	bgMu.Lock()
	ids := append([]string(nil), bgIDs...)
	bgMu.Unlock()
	waitFor(t, 30*time.Second, "background events delivered across the apply", func() bool {
		missing := 0
		for _, id := range ids {
			if standard.has([]string{id}) == 1 && gold.has([]string{id}) == 1 {
				missing++
			}
		}
		return missing == 0
	})

	// The dry run explains a match and a non-match.
	ev := writeTestFile(t, dir, "event.json", `{"priority":"high"}`)
	code, out, errOut = runCLI(t, p, op, "rules", "test", "--topic", "apps/app-1/order", "--source", "http", "--event", ev, "-o", "json")
	if code != 0 || !strings.Contains(out, "gold") {
		t.Fatalf("rules test (match): %d %s %s", code, out, errOut)
	}
	code, out, _ = runCLI(t, p, op, "rules", "test", "--topic", "devices/d1/telemetry", "--event", ev)
	if code != 0 || !strings.Contains(out, "apps/+/+") {
		t.Fatalf("rules test (non-match) does not explain the topic filter: %d %s", code, out)
	}

	// App and device tokens cannot read or change rules.
	for _, tok := range []string{plainApp, token(t, data, cfg, "--subject", "d1", "--role", "device")} {
		code, _, errOut := runCLI(t, p, tok, "rules", "list")
		if code == 0 || !strings.Contains(errOut, "403") {
			t.Fatalf("non-operator listed rules: %d %s", code, errOut)
		}
	}
}

// TestDeadLettersListedAndReplayed: a function that is down fills its dead-letter queue; an
// operator lists it and replays it once the function is back.
func TestDeadLettersListedAndReplayed(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	s.setFailing(true)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
functions:
  - name: flaky
    type: http
    url: %s
    batch: {max_events: 10, max_wait: 5ms}
    retry: {max_attempts: 2, initial_backoff: 5ms, max_backoff: 10ms}
rules:
  - {id: all, topic: "#", functions: [flaky]}
`, s.url()))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	app := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	code, ans, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, app, "apps/app-1/x", `[{"n":1},{"n":2},{"n":3}]`)
	if err != nil || code != 202 {
		t.Fatalf("post: %d %v", code, err)
	}
	var ids []string
	for _, id := range ans["ids"].([]any) {
		ids = append(ids, id.(string))
	}
	var page []struct {
		Reason string          `json:"reason"`
		Event  json.RawMessage `json:"event"`
	}
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out, errOut := runCLI(t, p, op, "dlq", "list", "--function", "flaky", "-o", "json")
		last = fmt.Sprint(code, out, errOut)
		if code == 0 && json.Unmarshal([]byte(out), &page) == nil && len(page) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no 3 dead letters after 30s; last answer: %s\n%s", last, p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(page[0].Reason, "500") {
		t.Fatalf("dead letter reason = %q", page[0].Reason)
	}
	code, out, _ := runCLI(t, p, op, "dlq", "list", "--function", "flaky")
	if code != 0 || !strings.Contains(out, ids[0]) {
		t.Fatalf("dlq list (text) = %d %s", code, out)
	}
	s.setFailing(false)
	if code, out, errOut := runCLI(t, p, op, "dlq", "replay", "--function", "flaky"); code != 0 || !strings.Contains(out, "3") {
		t.Fatalf("dlq replay = %d %s %s", code, out, errOut)
	}
	waitFor(t, 30*time.Second, "replayed events delivered", func() bool { return s.has(ids) == 0 })
	code, out, _ = runCLI(t, p, op, "dlq", "list", "--function", "flaky", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &page) != nil || len(page) != 0 {
		t.Fatalf("dead letters left after replay: %s", out)
	}
}

// buildThreshold compiles the WASM example the way `make examples` does.
func buildThreshold(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "threshold.wasm")
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, "../../examples/functions/threshold")
	cmd.Env = append(cmd.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the threshold example: %v\n%s", err, b)
	}
	return out
}

// TestDeviceTour: a device with a token from `fleetgate token --role device` connects,
// publishes QoS1 telemetry that the threshold WASM function turns into an alert on its own
// topic, cannot publish or subscribe outside its policy, and receives an operator's command.
func TestDeviceTour(t *testing.T) {
	dir := t.TempDir()
	module := buildThreshold(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
functions:
  - name: threshold
    type: wasm
    module: %s
    env: {THRESHOLD: "50"}
    batch: {max_events: 50, max_wait: 5ms}
rules:
  - {id: telemetry, topic: "devices/+/telemetry", functions: [threshold, log]}
`, module))
	data := dir + "/data"
	p := startProc(t, data, cfg)
	devTok := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")

	received := make(chan mqtt.Message, 16)
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID("dev-1").
		SetUsername("dev-1").SetPassword(devTok).SetAutoReconnect(false)
	c := mqtt.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("connect: %v", tk.Error())
	}
	defer c.Disconnect(0)
	if tk := c.Subscribe("devices/dev-1/#", 1, func(_ mqtt.Client, m mqtt.Message) { received <- m }); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscribe: %v", tk.Error())
	}
	// Another device's topics: the SUBACK refuses it (0x80).
	stk := c.Subscribe("devices/dev-2/#", 1, nil)
	stk.WaitTimeout(10 * time.Second)
	if code := stk.(*mqtt.SubscribeToken).Result()["devices/dev-2/#"]; code != 0x80 {
		t.Fatalf("subscription to another device's topics granted with code %#x", code)
	}
	if tk := c.Publish("devices/dev-1/telemetry", 1, false, `{"temp":75,"unit":"C"}`); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("publish: %v", tk.Error())
	}
	alert := waitMessage(t, received, "devices/dev-1/alerts", 60*time.Second)
	var fields map[string]any
	if err := json.Unmarshal(alert.Payload(), &fields); err != nil || fields["alert"] != "overheat" || fields["temp"] != 75.0 {
		t.Fatalf("alert payload = %s", alert.Payload())
	}

	// An operator's command reaches the device.
	body := `{"topic":"devices/dev-1/commands","payload":{"reboot":true},"qos":1}`
	req, _ := http.NewRequest(http.MethodPost, p.url("/admin/v1/publish"), strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+op)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("admin publish: %v %v", resp, err)
	}
	resp.Body.Close()
	cmd := waitMessage(t, received, "devices/dev-1/commands", 10*time.Second)
	if string(cmd.Payload()) != `{"reboot":true}` {
		t.Fatalf("command payload = %s", cmd.Payload())
	}

	// Publishing to another device's topic at QoS1 gets a 3.1.1 client disconnected.
	c.Publish("devices/dev-2/telemetry", 1, false, `{"temp":1}`).WaitTimeout(5 * time.Second)
	waitFor(t, 10*time.Second, "disconnect after a publish outside the policy", func() bool { return !c.IsConnectionOpen() })
}

func waitMessage(t *testing.T, ch <-chan mqtt.Message, topic string, timeout time.Duration) mqtt.Message {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m := <-ch:
			if m.Topic() == topic {
				return m
			}
		case <-deadline:
			t.Fatalf("no message on %s within %s", topic, timeout)
		}
	}
}
