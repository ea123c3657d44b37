package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/internal/testutil"
	"github.com/fleetgate/fleetgate/rules"
	"github.com/valyala/fasthttp"
)

// startRulesAdmin serves a rules engine's admin API on a real loopback port, behind a
// bearer-token check like the gateway's, and returns the CLI flags to reach it.
func startRulesAdmin(t *testing.T) (*rules.Engine, []string) {
	t.Helper()
	e, err := rules.NewEngine(rules.EngineOptions{
		KV:      testutil.NewMemKV(),
		Seed:    []rules.Rule{{ID: "default", Topic: "#", Functions: []string{"log"}}},
		Compile: rules.CompileOptions{KnownFunction: func(n string) bool { return n == "log" || n == "archive" || n == "threshold" || n == "echo-down" }},
	})
	if err != nil {
		t.Fatal(err)
	}
	admin := e.AdminHandler()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Request.Header.Peek("Authorization")) != "Bearer op-token" {
			ctx.SetStatusCode(fasthttp.StatusUnauthorized)
			ctx.SetBodyString(`{"error":"operator token required","code":"unauthorized"}`)
			return
		}
		admin(ctx)
	}}
	go srv.Serve(ln) //nolint:errcheck // returns when the listener closes
	t.Cleanup(func() { _ = srv.Shutdown() })
	return e, []string{"--server", "http://" + ln.Addr().String(), "--token", "op-token"}
}

func runRules(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = rulesCmd(args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodRulesYAML = `
data_dir: ./somewhere   # a config file works too: only rules: is read
rules:
  - id: telemetry
    topic: "devices/+/telemetry"
    when: 'payload.temp > -50'
    functions: [archive]
    routes:
      - when: 'claims.tier == "gold"'
        functions: [threshold]
      - functions: [echo-down]
  - id: apps
    topic: "apps/#"
    when: 'source == "http"'
    functions: [log]
`

func TestRulesCLI(t *testing.T) {
	e, conn := startRulesAdmin(t)

	code, out, errOut := runRules(t, append([]string{"apply", "-f", writeFile(t, "rules.yaml", goodRulesYAML)}, conn...)...)
	if code != 0 || !strings.Contains(out, "applied 2 rules: rule set version 2 is live") {
		t.Fatalf("apply: %d %q %q", code, out, errOut)
	}
	// From now on events go where the new rules say.
	ev := &event.Event{Topic: "devices/d1/telemetry", Protocol: event.ProtocolMQTT, Data: []byte(`{"temp": 20}`), Claims: map[string]any{"tier": "gold"}}
	var fns []string
	for _, tg := range e.Match(ev, nil) {
		fns = append(fns, tg.Function)
	}
	if strings.Join(fns, ",") != "archive,threshold" {
		t.Fatalf("after apply the event goes to %v", fns)
	}

	// A broken set is refused whole, every problem listed, exit 1.
	bad := "rules:\n  - id: a\n    topic: a/#/b\n    functions: [nope]\n  - id: a\n    topic: x\n    when: 'payload.temp +'\n    functions: [log]\n"
	code, _, errOut = runRules(t, append([]string{"apply", "-f", writeFile(t, "bad.yaml", bad)}, conn...)...)
	if code != 1 {
		t.Fatalf("bad apply exit %d", code)
	}
	for _, want := range []string{`rules[0] (id "a").topic:`, `rules[0] (id "a").functions[0]: unknown function "nope"`, `rules[1] (id "a").id: duplicate id`, `rules[1] (id "a").when:`} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if _, v := e.Live(); v != 2 {
		t.Fatalf("a refused set moved the version to %d", v)
	}
	// A typo in a key is refused locally.
	code, _, errOut = runRules(t, append([]string{"apply", "-f", writeFile(t, "typo.yaml", "rules:\n  - id: a\n    topic: '#'\n    funtions: [log]\n")}, conn...)...)
	if code != 1 || !strings.Contains(errOut, "funtions") {
		t.Fatalf("typo: %d %q", code, errOut)
	}

	// list, table and json.
	code, out, errOut = runRules(t, append([]string{"list"}, conn...)...)
	if code != 0 || !strings.Contains(out, "rule set version 2, 2 rules") || !strings.Contains(out, "[claims.tier == \"gold\" → threshold]") || !strings.Contains(out, "MATCHED") {
		t.Fatalf("list: %d\n%s%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[2], "telemetry ") || !strings.Contains(lines[2], " 1 ") {
		t.Fatalf("table rows:\n%s", out)
	}
	code, out, _ = runRules(t, append([]string{"list", "-o", "json"}, conn...)...)
	var list rules.ListResponse
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || list.Version != 2 || list.Rules[0].Stats.Matched != 1 || list.Rules[0].Stats.Passed != 1 {
		t.Fatalf("list json: %d %s", code, out)
	}

	// test: a match and a non-match explained.
	evFile := writeFile(t, "event.json", `{"temp": 72}`)
	code, out, errOut = runRules(t, append([]string{"test", "--topic", "devices/d9/telemetry", "--claims", `{"tier":"silver"}`, "--event", evFile}, conn...)...)
	if code != 0 {
		t.Fatalf("test: %d %s", code, errOut)
	}
	for _, want := range []string{"functions: archive, echo-down", "telemetry → archive, echo-down", "default route (routes[1])", `apps: topic did not match filter "apps/#"`} {
		if !strings.Contains(out, want) {
			t.Errorf("test output lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runRules(t, append([]string{"test", "--topic", "apps/shop/click", "--source", "mqtt", "--event", writeFile(t, "raw.txt", "not json"), "-o", "json"}, conn...)...)
	var res rules.TestResult
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || len(res.Functions) != 0 || len(res.NotMatched) != 2 {
		t.Fatalf("test json: %d %s", code, out)
	}
	if !strings.Contains(res.NotMatched[1].Reason, `when evaluated false (source == "http")`) {
		t.Fatalf("apps reason: %+v", res.NotMatched)
	}

	// delete: flags may follow the id.
	code, out, errOut = runRules(t, append([]string{"delete", "apps"}, conn...)...)
	if code != 0 || !strings.Contains(out, "deleted rule apps: rule set version 3") {
		t.Fatalf("delete: %d %q %q", code, out, errOut)
	}
	code, _, errOut = runRules(t, append([]string{"delete", "apps"}, conn...)...)
	if code != 1 || !strings.Contains(errOut, `no rule with id "apps"`) {
		t.Fatalf("delete missing: %d %q", code, errOut)
	}

	// Without the operator token nothing is read or changed.
	code, _, errOut = runRules(t, "list", "--server", conn[1], "--token", "device-token")
	if code != 1 || !strings.Contains(errOut, "401") {
		t.Fatalf("wrong token: %d %q", code, errOut)
	}
	// Usage errors exit 2.
	if code, _, _ := runRules(t, "apply"); code != 2 {
		t.Fatalf("apply without -f: %d", code)
	}
	if code, _, _ := runRules(t, "test", "--event", evFile); code != 2 {
		t.Fatalf("test without --topic: %d", code)
	}
	if code, _, _ := runRules(t, "frobnicate"); code != 2 {
		t.Fatalf("unknown subcommand: %d", code)
	}
}

func TestRulesCLIVersionsAndRollback(t *testing.T) {
	e, conn := startRulesAdmin(t)
	if code, out, errOut := runRules(t, append([]string{"apply", "-f", writeFile(t, "rules.yaml", goodRulesYAML)}, conn...)...); code != 0 {
		t.Fatalf("apply: %d %q %q", code, out, errOut)
	}
	code, out, errOut := runRules(t, append([]string{"versions"}, conn...)...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "VERSION") ||
		!strings.HasPrefix(lines[1], "2 ") || !strings.HasSuffix(lines[1], "live") || !strings.HasPrefix(lines[2], "1 ") {
		t.Fatalf("versions: %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = runRules(t, append([]string{"rollback", "1"}, conn...)...)
	if code != 0 || !strings.Contains(out, "rolled back to the rules of version 1: rule set version 3 is live") {
		t.Fatalf("rollback: %d %q %q", code, out, errOut)
	}
	if set, v := e.Live(); v != 3 || set.Rules()[0].ID != "default" {
		t.Fatalf("after rollback: v%d %+v", v, set.Rules())
	}
	code, out, _ = runRules(t, append([]string{"versions", "-o", "json"}, conn...)...)
	var vs rules.VersionsResponse
	if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || vs.Live != 3 || vs.Versions[0].RollbackOf != 1 {
		t.Fatalf("versions json: %d %s", code, out)
	}
	if code, _, errOut := runRules(t, append([]string{"rollback", "42"}, conn...)...); code != 1 || !strings.Contains(errOut, "version 42 is not stored") {
		t.Fatalf("rollback to a missing version: %d %q", code, errOut)
	}
	if code, _, _ := runRules(t, append([]string{"rollback", "x"}, conn...)...); code != 2 {
		t.Fatalf("rollback x: %d", code)
	}
}
