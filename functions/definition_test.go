package functions

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

func TestValidateDefinitionsReportsEveryProblem(t *testing.T) {
	defs := []Definition{
		{Name: "ok", Type: TypeHTTP, URL: "http://127.0.0.1:9000/x"},
		{Name: "nourl", Type: TypeHTTP},
		{Name: "archive", Type: TypeLog, Batch: BatchPolicy{MaxEvents: -1, MaxBytes: -1, MaxWait: -1}},
		{Name: "ok", Type: TypeLog},
		{Type: TypeWASM},
		{Name: "down", Type: TypeRepublish, Topic: "devices/${who}/x"},
		{Name: "bad", Type: "ftp", Concurrency: -2, Retry: RetryPolicy{InitialBackoff: time.Minute, MaxBackoff: time.Second}},
		{Name: "sec", Type: TypeHTTP, URL: "https://x", Headers: map[string]string{"Authorization": "${env:FLEETGATE_TEST_UNSET_VAR}"}},
		{Name: "brk", Type: TypeLog, Circuit: CircuitPolicy{ProbeInitial: time.Minute, ProbeMax: time.Second}},
		{Name: "brk2", Type: TypeLog, Circuit: CircuitPolicy{ProbeInitial: -time.Second}},
	}
	err := ValidateDefinitions(defs)
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{
		"functions[1] (nourl).url: required for type http",
		"functions[2] (archive).batch: can never flush",
		"functions[3] (ok).name: duplicate of functions[0]",
		"functions[4].name: required",
		"functions[4].module: required for type wasm",
		"functions[5] (down).topic: unknown variable ${who}",
		`functions[6] (bad).type: unknown type "ftp"`,
		"functions[6] (bad).concurrency: -2",
		"functions[6] (bad).retry: initial_backoff 1m0s is above max_backoff 1s",
		"functions[7] (sec).headers.Authorization: environment variable FLEETGATE_TEST_UNSET_VAR is not set",
		"functions[8] (brk).circuit: probe_initial 1m0s is above probe_max 1s",
		"functions[9] (brk2).circuit.probe_initial: -1s must be positive",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "\n  functions[0]") {
		t.Errorf("functions[0] is valid but reported:\n%v", err)
	}
}

func TestDefinitionYAMLAndDefaults(t *testing.T) {
	src := `
- name: archive
  type: http
  url: http://127.0.0.1:9000/ingest
  batch: {max_events: 500, max_bytes: 1048576, max_wait: 20ms}
  concurrency: 4
  timeout: 5s
  retry: {max_attempts: 10, initial_backoff: 100ms, max_backoff: 30s, max_age: 24h}
  circuit: {failures: 3, probe_initial: 2s, probe_max: 1m}
  redrive_on_recovery: true
- name: threshold
  type: wasm
  module: bin/functions/threshold.wasm
  env: {THRESHOLD: "50"}
- name: echo-down
  type: republish
  topic: "devices/${subject}/echo"
`
	var defs []Definition
	if err := yaml.Unmarshal([]byte(src), &defs); err != nil {
		t.Fatal(err)
	}
	if err := ValidateDefinitions(defs); err != nil {
		t.Fatal(err)
	}
	if defs[0].Batch.MaxWait != 20*time.Millisecond || defs[0].Retry.MaxAge != 24*time.Hour || defs[1].Env["THRESHOLD"] != "50" ||
		defs[0].Circuit != (CircuitPolicy{3, 2 * time.Second, time.Minute}) || !defs[0].RedriveOnRecovery {
		t.Fatalf("parsed %+v", defs)
	}
	d := defs[2].WithDefaults()
	if d.Batch != (BatchPolicy{100, 1 << 20, 20 * time.Millisecond}) || d.Concurrency != 4 || d.Timeout != 10*time.Second ||
		d.Retry != (RetryPolicy{10, 100 * time.Millisecond, 30 * time.Second, 24 * time.Hour}) || d.MaxHops != 3 ||
		d.Circuit != (CircuitPolicy{5, time.Second, 30 * time.Second}) || d.RedriveOnRecovery {
		t.Fatalf("defaults = %+v", d)
	}
}

func TestBatcher(t *testing.T) {
	t0 := time.Unix(1000, 0)
	b := BatchPolicy{MaxEvents: 3, MaxBytes: 100, MaxWait: 10 * time.Millisecond}.NewBatcher()
	if b.UntilNext(t0) != -1 {
		t.Fatal("empty batch needs no timer")
	}
	if b.Add(10, t0) {
		t.Fatal("one event is not full")
	}
	if got := b.UntilNext(t0.Add(4 * time.Millisecond)); got != 6*time.Millisecond {
		t.Fatalf("UntilNext = %v, want 6ms", got)
	}
	if got := b.UntilNext(t0.Add(time.Second)); got != 0 {
		t.Fatalf("UntilNext past max_wait = %v, want 0", got)
	}
	b.Add(10, t0)
	if !b.Add(10, t0) || b.UntilNext(t0) != 0 {
		t.Fatal("three events must be full")
	}
	b.Reset()
	b.Add(60, t0)
	if b.Fits(50) || !b.Fits(40) {
		t.Fatal("Fits must respect max_bytes")
	}
	b.Reset()
	if !b.Fits(1000) || !b.Add(1000, t0) {
		t.Fatal("an oversized event goes alone and fills the batch")
	}
	nw := BatchPolicy{MaxEvents: 2, MaxWait: -1}.NewBatcher()
	nw.Add(1, t0)
	if nw.UntilNext(t0) != -1 {
		t.Fatal("no time trigger: no timer")
	}
}

func TestCloudEventsEncoding(t *testing.T) {
	ts := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	jsonEv := &event.Event{ID: "01J", Source: "mqtt://d1", Type: "fleetgate.mqtt.publish", Subject: "d\"1\n",
		Time: ts, ContentType: "application/json", Data: []byte(`{"temp": 21}`), Topic: "devices/d1/t", Tenant: "acme"}
	binEv := &event.Event{ID: "01K", Time: ts, ContentType: "application/octet-stream", Data: []byte{0xff, 0, 1}}
	textEv := &event.Event{ID: "01L", Time: ts, ContentType: "text/plain", Data: []byte("hello")}
	b := &Batch{Function: "f", Items: []storage.Item{
		{Seq: 1, Rule: "r", Event: jsonEv, Data: jsonEv.Data},
		{Seq: 2, Rule: "r2", Event: binEv, Data: binEv.Data},
		{Seq: 3, Event: textEv, Data: textEv.Data},
		{Seq: 4, Rule: "sel", Event: binEv, Data: []byte(`{"picked":1}`)},
	}}
	out := AppendCloudEvents(nil, b)
	var got []map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	e := got[0]
	if e["specversion"] != "1.0" || e["id"] != "01J" || e["subject"] != "d\"1\n" || e["time"] != "2024-05-06T07:08:09.123456789Z" ||
		e["datacontenttype"] != "application/json" || e["data"].(map[string]any)["temp"] != 21.0 ||
		e["topic"] != "devices/d1/t" || e["tenant"] != "acme" || e["rule"] != "r" {
		t.Errorf("json event = %v", e)
	}
	if got[1]["data_base64"] != base64.StdEncoding.EncodeToString([]byte{0xff, 0, 1}) || got[1]["data"] != nil ||
		got[1]["datacontenttype"] != "application/octet-stream" || got[1]["source"] == "" || got[1]["type"] == "" {
		t.Errorf("binary event = %v", got[1])
	}
	if got[2]["data"] != "hello" || got[2]["data_base64"] != nil || got[2]["datacontenttype"] != "text/plain" { // text stays text
		t.Errorf("text event = %v", got[2])
	}
	if got[3]["datacontenttype"] != "application/json" || got[3]["data"].(map[string]any)["picked"] != 1.0 {
		t.Errorf("selected data = %v", got[3])
	}
}

func TestParseResult(t *testing.T) {
	f := func(body string, wantErr bool, wantFailed, wantPublish int) {
		t.Helper()
		r, err := ParseResult([]byte(body))
		if (err != nil) != wantErr || len(r.Failed) != wantFailed || len(r.Publish) != wantPublish {
			t.Errorf("ParseResult(%q) = %+v, %v", body, r, err)
		}
	}
	f("", false, 0, 0)
	f(" \n", false, 0, 0)
	f(`{}`, false, 0, 0)
	f(`{"failed":["a","b"]}`, false, 2, 0)
	f(`{"publish":[{"topic":"devices/x/alerts","payload":{"a":1},"qos":1}],"other":true}`, false, 0, 1)
	f(`{"publish":[{"topic":"devices/+/alerts","payload":1}]}`, true, 0, 0)
	f(`{"publish":[{"topic":"","payload":1}]}`, true, 0, 0)
	f(`{"publish":[{"topic":"a","qos":3}]}`, true, 0, 0)
	f(`[1,2]`, true, 0, 0)
	f(`not json`, true, 0, 0)
	o := Output{Payload: json.RawMessage(`"text"`)}
	if string(o.PayloadBytes()) != "text" {
		t.Errorf("string payload = %q", o.PayloadBytes())
	}
	o.Payload = json.RawMessage(`{"a":1}`)
	if string(o.PayloadBytes()) != `{"a":1}` {
		t.Errorf("object payload = %q", o.PayloadBytes())
	}
}

func TestTopicTemplate(t *testing.T) {
	e := &event.Event{Subject: "d1", Tenant: "acme", Topic: "devices/d1/telemetry"}
	f := func(tmpl, want string, wantErr bool) {
		t.Helper()
		tt, err := compileTemplate(tmpl)
		if err == nil {
			var got string
			got, err = tt.expand(e)
			if err == nil && got != want {
				t.Errorf("%q → %q, want %q", tmpl, got, want)
			}
		}
		if (err != nil) != wantErr {
			t.Errorf("%q: err = %v", tmpl, err)
		}
	}
	f("devices/${subject}/echo", "devices/d1/echo", false)
	f("t/${tenant}/${levels.2}/${topic}", "t/acme/telemetry/devices/d1/telemetry", false)
	f("x/${levels.9}", "", true)
	f("x/${nope}", "", true)
	f("x/${subject", "", true)
	f("x/#", "", true)
}

func FuzzParseResult(f *testing.F) {
	f.Add([]byte(`{"failed":["a"],"publish":[{"topic":"t","payload":{"x":1},"qos":1,"retain":true}]}`))
	f.Add([]byte(`{"publish":[{"topic":"t","payload":"s"}]}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseResult(b)
		if err != nil {
			return
		}
		for _, o := range r.Publish {
			if o.Topic == "" || o.QoS > 2 || strings.ContainsAny(o.Topic, "+#") {
				t.Fatalf("accepted bad output %+v", o)
			}
			_ = o.PayloadBytes()
		}
	})
}

// FuzzCloudEvents: whatever the event's strings and bytes, the batch is valid JSON and carries
// the payload back exactly.
func FuzzCloudEvents(f *testing.F) {
	f.Add("id", "sub\x00\"", "devices/a", "application/json", []byte(`{"a":1}`))
	f.Add("\xff\xfe", "s", "t", "text/plain", []byte{0xff, 0})
	f.Fuzz(func(t *testing.T, id, subject, topic, ct string, data []byte) {
		e := &event.Event{ID: id, Subject: subject, Topic: topic, ContentType: ct, Data: data, Time: time.Unix(1, 2)}
		out := AppendCloudEvents(nil, &Batch{Items: []storage.Item{{Event: e, Data: data, Rule: subject}}})
		var got []struct {
			Data       json.RawMessage `json:"data"`
			DataBase64 []byte          `json:"data_base64"`
		}
		if err := json.Unmarshal(out, &got); err != nil || len(got) != 1 {
			t.Fatalf("invalid JSON %q: %v", out, err)
		}
		if got[0].Data != nil {
			if !json.Valid(data) {
				t.Fatalf("inline data for invalid JSON %q", data)
			}
		} else if string(got[0].DataBase64) != string(data) {
			t.Fatalf("data_base64 round trip: %q != %q", got[0].DataBase64, data)
		}
	})
}

func TestRepublishQoSZeroIsKept(t *testing.T) {
	var defs struct {
		Functions []Definition `yaml:"functions"`
	}
	src := "functions:\n  - {name: a, type: republish, topic: 'x/${subject}', qos: 0}\n  - {name: b, type: republish, topic: 'x/${subject}'}\n"
	if err := yaml.Unmarshal([]byte(src), &defs); err != nil {
		t.Fatal(err)
	}
	a, b := defs.Functions[0].WithDefaults(), defs.Functions[1].WithDefaults()
	if *a.QoS != 0 || *b.QoS != 1 {
		t.Fatalf("qos: explicit 0 became %d, default became %d", *a.QoS, *b.QoS)
	}
	bad := byte(3)
	if err := ValidateDefinitions([]Definition{{Name: "c", Type: TypeRepublish, Topic: "x", QoS: &bad}}); err == nil {
		t.Fatal("qos 3 accepted")
	}
}

// FuzzContextAttributes: the meta attribute written without encoding/json (keys and values
// needing no escaping) is what encoding/json writes, and SourceURI's fast path for plain host
// names answers as its full path does.
func FuzzContextAttributes(f *testing.F) {
	f.Add("client_id", "dev-1", "fw", "1.2", "mqtt://dev-1")
	f.Add("a<b", "x&y", "k", "v\"", "mqtt://dev 1")
	f.Add("z", "", "a", "\xff", "http://auth0|abc")
	f.Add("b", "2", "a", "1", "mqtt://a.b~c_d")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, source string) {
		if got, want := SourceURI(source), sourceURI(source); got != want {
			t.Fatalf("SourceURI(%q) = %q, the full path says %q", source, got, want)
		}
		meta := map[string]string{k1: v1, k2: v2}
		want := map[string]string{}
		for k, v := range meta {
			if !strings.HasPrefix(k, "$") {
				want[k] = v
			}
		}
		e := &event.Event{ID: "x", Source: source, Meta: meta}
		out := AppendCloudEvents(nil, &Batch{Items: []storage.Item{{Event: e}}})
		var got []map[string]any
		if err := json.Unmarshal(out, &got); err != nil || len(got) != 1 {
			t.Fatalf("invalid JSON %q: %v", out, err)
		}
		m, has := got[0]["meta"]
		if len(want) == 0 {
			if has {
				t.Fatalf("meta %q for no metadata", m)
			}
			return
		}
		b, _ := json.Marshal(want)
		if m != string(b) {
			t.Fatalf("meta = %q, encoding/json writes %q", m, b)
		}
	})
}
