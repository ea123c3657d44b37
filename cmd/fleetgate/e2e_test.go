package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func sinkConfig(t testing.TB, dir string, s *sink) string {
	return writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
functions:
  - name: sink
    type: http
    url: %s
    batch: {max_events: 200, max_wait: 5ms}
    retry: {max_attempts: 1000, initial_backoff: 10ms, max_backoff: 200ms}
rules:
  - id: all
    topic: "#"
    functions: [sink]
`, s.url()))
}

// TestHTTPAcknowledgedSurviveSIGKILL posts bursts of events, kills the gateway with SIGKILL
// mid-burst, restarts it on the same data dir, and checks that every event answered 202 is
// delivered to the function.
func TestHTTPAcknowledgedSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	cfg := sinkConfig(t, dir, s)
	data := dir + "/data"
	p := startProc(t, data, cfg)
	tok := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	// The function fails until the gateway has been killed: every event must come from the log.
	s.setFailing(true)

	var mu sync.Mutex
	var acked []string
	var requests atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`[{"w":%d,"i":%d,"k":0},{"w":%d,"i":%d,"k":1},{"w":%d,"i":%d,"k":2}]`, w, i, w, i, w, i)
				code, ans, err := postEvents(client, "http://"+p.httpAddr, tok, "apps/app-1/burst", body)
				if err != nil {
					return // the gateway is gone
				}
				if code != 202 {
					continue
				}
				requests.Add(1)
				mu.Lock()
				for _, id := range ans["ids"].([]any) {
					acked = append(acked, id.(string))
				}
				mu.Unlock()
			}
		}()
	}
	waitFor(t, 60*time.Second, "200 acknowledged requests", func() bool { return requests.Load() >= 200 })
	p.kill()
	close(stop)
	wg.Wait()
	mu.Lock()
	ids := append([]string(nil), acked...)
	mu.Unlock()
	if s.count() != 0 {
		t.Fatalf("%d events delivered while the function was failing", s.count())
	}
	t.Logf("%d events acknowledged before SIGKILL, none delivered", len(ids))
	s.setFailing(false)

	p2 := startProc(t, data, cfg)
	deadline := time.Now().Add(60 * time.Second)
	for s.has(ids) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged events never delivered after restart\n%s", s.has(ids), len(ids), p2.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMQTTAcknowledgedSurviveSIGKILL publishes QoS1 with many messages in flight, kills the
// gateway with SIGKILL, restarts it, and checks that every PUBACKed message reaches the function.
func TestMQTTAcknowledgedSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	cfg := sinkConfig(t, dir, s)
	data := dir + "/data"
	p := startProc(t, data, cfg)
	tok := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	s.setFailing(true)

	opts := mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID("dev-1").
		SetUsername("dev-1").SetPassword(tok).SetAutoReconnect(false).SetConnectRetry(false).
		SetMaxResumePubInFlight(256).SetWriteTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("connect: %v\n%s", tk.Error(), p.logs())
	}
	type pending struct {
		uid string
		tk  mqtt.Token
	}
	var sent []pending
	var acked []string
	killed := false
	for i := 0; i < 20000 && !killed; i++ {
		uid := fmt.Sprintf("m-%d", i)
		tk := c.Publish("devices/dev-1/telemetry", 1, false, fmt.Sprintf(`{"uid":%q,"temp":%d}`, uid, i%90))
		sent = append(sent, pending{uid, tk})
		// Keep up to 256 in flight; count the acknowledged ones.
		for len(sent) >= 256 || (i%50 == 0 && len(sent) > 0) {
			head := sent[0]
			if !head.tk.WaitTimeout(10 * time.Second) {
				t.Fatalf("no PUBACK in 10s\n%s", p.logs())
			}
			if head.tk.Error() == nil {
				acked = append(acked, head.uid)
			}
			sent = sent[1:]
			if len(acked) == 3000 {
				p.kill()
				killed = true
				break
			}
		}
	}
	if !killed {
		t.Fatalf("only %d PUBACKs", len(acked))
	}
	// Tokens still pending complete with an error once the connection is gone; any acked
	// meanwhile count too.
	for _, pd := range sent {
		if pd.tk.WaitTimeout(5*time.Second) && pd.tk.Error() == nil {
			acked = append(acked, pd.uid)
		}
	}
	c.Disconnect(0)
	t.Logf("%d QoS1 messages PUBACKed before SIGKILL", len(acked))
	s.setFailing(false)

	startProc(t, data, cfg)
	waitFor(t, 60*time.Second, "every PUBACKed message delivered", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		got := map[string]bool{}
		for _, ev := range s.events {
			if d, ok := ev["data"].(map[string]any); ok {
				got[fmt.Sprint(d["uid"])] = true
			}
		}
		for _, uid := range acked {
			if !got[uid] {
				return false
			}
		}
		return true
	})
}

// TestServeRejectsBadConfig checks that every problem of a config file is reported at once and
// the gateway does not start.
func TestServeRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfg := writeTestFile(t, dir, "bad.yaml", `
data_dir: `+dir+`/data
http: {max_body_bytes: -1, bogus_key: 1}
mqtt: {max_clients: -5}
functions:
  - {name: f, type: teleport}
rules:
  - {id: r, topic: "a/#/b", functions: [nope]}
`)
	out, err := exec.Command(binPath, "serve", "--config", cfg).CombinedOutput()
	if err == nil {
		t.Fatalf("serve accepted a bad config:\n%s", out)
	}
	// Unknown keys are reported first, with their line.
	if !bytes.Contains(out, []byte("bogus_key")) {
		t.Fatalf("unknown key not reported:\n%s", out)
	}
	cfg = writeTestFile(t, dir, "bad2.yaml", `
data_dir: `+dir+`/data
http: {max_body_bytes: -1}
mqtt: {max_clients: -5, tls: {cert_role: wizard}}
functions:
  - {name: f, type: teleport}
rules:
  - {id: r, topic: "a/#/b", functions: [nope]}
`)
	out, _ = exec.Command(binPath, "serve", "--config", cfg).CombinedOutput()
	for _, want := range []string{"http.max_body_bytes", "max_clients", "teleport", "a/#/b", "nope", `no policy for role "wizard"`, "cert_role: needs mqtt.tls.client_ca_file"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("problem %q not reported in:\n%s", want, out)
		}
	}
}

// TestTokenCommand checks the token command's refusals and that its tokens work.
func TestTokenCommand(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command(binPath, "token", "--data-dir", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--subject is required") {
		t.Fatalf("token without subject: %v %s", err, out)
	}
	out, err = exec.Command(binPath, "token", "--data-dir", dir, "--subject", "x", "--role", "wizard").CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no policy for role "wizard"`) {
		t.Fatalf("token with unknown role: %v %s", err, out)
	}
	tok := token(t, dir, "", "--subject", "op", "--role", "operator", "--claim", "tier=gold", "--claim", "level=3")
	if strings.Count(tok, ".") != 2 {
		t.Fatalf("not a JWT: %q", tok)
	}
}

// TestGracefulShutdownOnSIGTERM: SIGTERM stops the listeners, finishes in-flight work, closes
// storage and exits 0; the data dir then opens again with everything acknowledged.
func TestGracefulShutdownOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	s.setFailing(true)
	cfg := sinkConfig(t, dir, s)
	data := dir + "/data"
	p := startProc(t, data, cfg)
	tok := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	code, ans, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, tok, "apps/app-1/x", `[1,2,3]`)
	if err != nil || code != 202 {
		t.Fatalf("post: %d %v", code, err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("no exit 30s after SIGTERM\n%s", p.logs())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(p.logs(), "stopped") {
		t.Fatalf("exit code %d after SIGTERM\n%s", code, p.logs())
	}
	s.setFailing(false)
	startProc(t, data, cfg)
	var ids []string
	for _, id := range ans["ids"].([]any) {
		ids = append(ids, id.(string))
	}
	waitFor(t, 30*time.Second, "events acknowledged before SIGTERM delivered after restart", func() bool { return s.has(ids) == 0 })
}

// TestStoredRulesNamingARemovedFunction: a rule set stored in the data dir that names a
// function no longer configured stops the start with the remedy; --reset-rules applies it.
func TestStoredRulesNamingARemovedFunction(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	data := dir + "/data"
	p := startProc(t, data, sinkConfig(t, dir, s))
	p.kill()
	plain := writeTestFile(t, dir, "plain.yaml", "rules:\n  - {id: everything, topic: \"#\", functions: [log]}\n")
	out, err := exec.Command(binPath, "serve", "--data-dir", data, "--config", plain, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--reset-rules") || !strings.Contains(string(out), "sink") {
		t.Fatalf("start with a stale stored rule set: %v\n%s", err, out)
	}
	p = startProc(t, data, plain, "--reset-rules")
	op := token(t, data, plain, "--subject", "ops", "--role", "operator")
	var outBuf, errBuf bytes.Buffer
	if code := run([]string{"rules", "list", "-o", "json", "--server", "http://" + p.httpAddr, "--token", op}, &outBuf, &errBuf); code != 0 ||
		!strings.Contains(outBuf.String(), `"everything"`) || !strings.Contains(outBuf.String(), `"version":2`) {
		t.Fatalf("rules after --reset-rules: %d %s %s", code, outBuf.String(), errBuf.String())
	}
}

// TestProfilerIsOperatorOnly: /admin/v1/debug/pprof/ serves Go's profiles to operators only.
func TestProfilerIsOperatorOnly(t *testing.T) {
	dir := t.TempDir()
	p := startProc(t, dir, "")
	get := func(tok, path string) int {
		req, _ := http.NewRequest(http.MethodGet, p.url(path), nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(token(t, dir, "", "--subject", "a", "--role", "app"), "/admin/v1/debug/pprof/"); code != 403 {
		t.Fatalf("app token got %d from the profiler", code)
	}
	op := token(t, dir, "", "--subject", "ops", "--role", "operator")
	if code := get(op, "/admin/v1/debug/pprof/"); code != 200 {
		t.Fatalf("operator got %d from the profiler index", code)
	}
	if code := get(op, "/admin/v1/debug/pprof/heap"); code != 200 {
		t.Fatalf("operator got %d for a heap profile", code)
	}
}

// TestRemovedFunctionQueueIsShownAndDropped: events queued for a function that was since removed
// from the config show as "removed" in /admin/v1/functions and can be dropped, so that they do
// not keep the log from shrinking.
func TestRemovedFunctionQueueIsShownAndDropped(t *testing.T) {
	dir := t.TempDir()
	s := startSink(t)
	s.setFailing(true)
	data := dir + "/data"
	p := startProc(t, data, sinkConfig(t, dir, s))
	tok := token(t, data, "", "--subject", "app-1", "--role", "app")
	if code, _, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, tok, "apps/app-1/x", `[1,2,3]`); err != nil || code != 202 {
		t.Fatalf("post: %d %v", code, err)
	}
	p.kill()
	plain := writeTestFile(t, dir, "plain.yaml", "rules:\n  - {id: everything, topic: \"#\", functions: [log]}\n")
	p = startProc(t, data, plain, "--reset-rules")
	// stderr comes through its own pipe: the warning may arrive just after the ready line.
	waitFor(t, 10*time.Second, "the warning about the removed function's events", func() bool {
		return strings.Contains(p.logs(), "no longer configured")
	})
	op := token(t, data, plain, "--subject", "ops", "--role", "operator")
	call := func(method, path string) (int, string) {
		req, _ := http.NewRequest(method, p.url(path), nil)
		req.Header.Set("Authorization", "Bearer "+op)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := call(http.MethodGet, "/admin/v1/functions")
	if code != 200 || !strings.Contains(body, `"name":"sink"`) || !strings.Contains(body, `"state":"removed"`) || !strings.Contains(body, `"queue_depth":3`) {
		t.Fatalf("functions: %d %s", code, body)
	}
	if code, body := call(http.MethodDelete, "/admin/v1/functions/log/queue"); code != 409 {
		t.Fatalf("dropping a configured function's queue: %d %s", code, body)
	}
	if code, body := call(http.MethodDelete, "/admin/v1/functions/sink/queue"); code != 200 || !strings.Contains(body, `"dropped":3`) {
		t.Fatalf("drop: %d %s", code, body)
	}
	if _, body := call(http.MethodGet, "/admin/v1/functions"); strings.Contains(body, `"sink"`) {
		t.Fatalf("dropped function still listed: %s", body)
	}
}
