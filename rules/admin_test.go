package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
	"github.com/valyala/fasthttp"
)

// serveAdmin serves e's admin handler on a real loopback listener and returns its base URL.
func serveAdmin(t *testing.T, e *Engine) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: e.AdminHandler()}
	go srv.Serve(ln) //nolint:errcheck // returns when the listener closes
	t.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func call(t *testing.T, method, url, contentType, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decoding %q: %v", method, url, data, err)
		}
	}
	return resp.StatusCode
}

func TestAdminAPI(t *testing.T) {
	e, _ := newTestEngine(t, Rule{ID: "all", Topic: "#", Functions: []string{"log"}})
	base := serveAdmin(t, e) + AdminPrefix
	e.Match(&event.Event{Topic: "x"}, nil)

	var list ListResponse
	if code := call(t, "GET", base, "", "", &list); code != 200 || list.Version != 1 || len(list.Rules) != 1 || list.Rules[0].Stats.Matched != 1 {
		t.Fatalf("list: %d %+v", code, list)
	}

	// Replace with JSON.
	var ver VersionResponse
	body := `{"rules":[{"id":"tele","topic":"devices/+/telemetry","when":"payload.temp > 1","functions":["log"]},{"id":"apps","topic":"apps/#","functions":["log"]}]}`
	if code := call(t, "PUT", base, "application/json", body, &ver); code != 200 || ver.Version != 2 {
		t.Fatalf("put json: %d %+v", code, ver)
	}
	// Replace with YAML.
	yamlBody := "rules:\n  - id: tele\n    topic: devices/+/telemetry\n    functions: [log]\n    routes:\n      - when: 'claims.tier == \"gold\"'\n        functions: [gold]\n"
	if code := call(t, "PUT", base, "application/yaml", yamlBody, &ver); code != 200 || ver.Version != 3 {
		t.Fatalf("put yaml: %d %+v", code, ver)
	}
	var one RuleView
	if code := call(t, "GET", base+"/tele", "", "", &one); code != 200 || one.ID != "tele" || len(one.Routes) != 1 || one.Routes[0].Functions[0] != "gold" {
		t.Fatalf("get: %d %+v", code, one)
	}

	// A bad set: 422 with every problem, and nothing changes.
	var inv InvalidResponse
	bad := `{"rules":[{"id":"x","topic":"a/#/b","functions":["log"]},{"id":"x","topic":"a","when":"1 +","functions":[]}]}`
	if code := call(t, "PUT", base, "application/json", bad, &inv); code != 422 || inv.Code != "invalid_rules" || len(inv.Problems) != 4 {
		t.Fatalf("put bad: %d %+v", code, inv)
	}
	if inv.Problems[0].Field != "topic" || inv.Problems[1].Field != "id" || inv.Problems[1].Index != 1 {
		t.Fatalf("problems %+v", inv.Problems)
	}
	if _, v := e.Live(); v != 3 {
		t.Fatalf("a refused set changed the version to %d", v)
	}
	// Unknown fields and missing rules are 400s.
	var herr struct{ Error, Code string }
	if code := call(t, "PUT", base, "application/json", `{"rules":[{"id":"a","topic":"#","funtions":["log"]}]}`, &herr); code != 400 || herr.Code != "bad_request" || !strings.Contains(herr.Error, "funtions") {
		t.Fatalf("typo: %d %+v", code, herr)
	}
	if code := call(t, "PUT", base, "application/json", `{}`, &herr); code != 400 {
		t.Fatalf("no rules: %d %+v", code, herr)
	}

	// Dry run.
	var res TestResult
	if code := call(t, "POST", base+"/test", "application/json", `{"topic":"devices/d1/telemetry","claims":{"tier":"gold"},"payload":{"temp":3}}`, &res); code != 200 || res.Version != 3 || strings.Join(res.Functions, ",") != "log,gold" {
		t.Fatalf("test: %d %+v", code, res)
	}
	if code := call(t, "POST", base+"/test", "application/json", `{"source":"mqtt"}`, &herr); code != 400 {
		t.Fatalf("test without topic: %d", code)
	}
	if code := call(t, "POST", base+"/test", "application/json", `{"topic":"a","source":"ftp"}`, &herr); code != 400 {
		t.Fatalf("test with a bad source: %d", code)
	}

	// Delete.
	if code := call(t, "DELETE", base+"/tele", "", "", &ver); code != 200 || ver.Version != 4 {
		t.Fatalf("delete: %d %+v", code, ver)
	}
	if code := call(t, "DELETE", base+"/tele", "", "", &herr); code != 404 || herr.Code != "not_found" {
		t.Fatalf("delete again: %d %+v", code, herr)
	}
	if code := call(t, "GET", base+"/tele", "", "", &herr); code != 404 {
		t.Fatalf("get deleted: %d", code)
	}
	if code := call(t, "POST", base, "", "", &herr); code != 405 || herr.Code != "method_not_allowed" {
		t.Fatalf("POST list: %d %+v", code, herr)
	}
	if code := call(t, "GET", base+"/a/b", "", "", &herr); code != 404 {
		t.Fatalf("nested path: %d", code)
	}
}

func TestDecodeApplyYAMLRefusesUnknownFields(t *testing.T) {
	_, err := DecodeApply([]byte("rules:\n  - id: a\n    topic: '#'\n    function: [x]\n"), true)
	if err == nil || !strings.Contains(err.Error(), "function") {
		t.Fatalf("got %v", err)
	}
	req, err := DecodeApply(bytes.TrimSpace([]byte("rules: []")), true)
	if err != nil || req.Rules == nil || len(req.Rules) != 0 {
		t.Fatalf("empty list: %+v %v", req, err)
	}
}

// TestAdminApplyWithoutQuorum: a rule set that cannot be stored because the cluster has no
// quorum right now is answered 503 no_quorum (the client's to retry), and nothing changes.
func TestAdminApplyWithoutQuorum(t *testing.T) {
	kv := newMemKV()
	e, err := NewEngine(EngineOptions{KV: kv, Seed: []Rule{{ID: "all", Topic: "#", Functions: []string{"log"}}}})
	if err != nil {
		t.Fatal(err)
	}
	base := serveAdmin(t, e) + AdminPrefix
	kv.FailPut = fmt.Errorf("writing rules/v/2: %w (nats: no response from stream)", storage.ErrNoQuorum)
	var ans struct{ Code, Error string }
	if code := call(t, "PUT", base, "application/json", `{"rules":[{"id":"x","topic":"x/#","functions":["log"]}]}`, &ans); code != 503 || ans.Code != "no_quorum" {
		t.Fatalf("apply without quorum: %d %+v, want 503 no_quorum", code, ans)
	}
	if _, v := e.Live(); v != 1 {
		t.Fatalf("version after a refused apply = %d, want 1", v)
	}
}
