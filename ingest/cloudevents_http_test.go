package ingest

import (
	"strings"
	"testing"
)

func TestBinaryModeCloudEvents(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	a := ts.post(t, "/v1/events/apps/x", tok, "text/plain; charset=utf-8", "hello \"world\"\n",
		"ce-specversion", "1.0", "ce-id", "b-1", "ce-type", "com.example.greeting", "ce-source", "mqtt://dev-1",
		"ce-subject", "room-4", "ce-time", "2026-01-02T03:04:05Z", "ce-dataschema", "https://example.com/s/v1",
		"ce-comexampleext", "caf%C3%A9", "ce-region", "eu")
	if a.status != 202 || a.body["ids"].([]any)[0] != "b-1" {
		t.Fatalf("text/plain: %d %v", a.status, a.body)
	}
	bin := "\x00\x01\x02\xff\xfe"
	a = ts.post(t, "/v1/events/apps/x", tok, "application/octet-stream", bin,
		"ce-specversion", "1.0", "ce-id", "b-2", "ce-type", "com.example.blob", "ce-source", "mqtt://dev-1", "ce-traceid", "t1")
	if a.status != 202 || a.body["ids"].([]any)[0] != "b-2" {
		t.Fatalf("octet-stream: %d %v", a.status, a.body)
	}
	// ce-id gives idempotency like a structured event's id.
	a = ts.post(t, "/v1/events/apps/x", tok, "application/octet-stream", "other",
		"ce-specversion", "1.0", "ce-id", "b-2", "ce-type", "com.example.blob", "ce-source", "mqtt://dev-1")
	if a.status != 202 || a.body["ids"].([]any)[0] != "b-2" {
		t.Fatalf("repeat: %d %v", a.status, a.body)
	}
	items := ts.queued(t)
	if len(items) != 2 {
		t.Fatalf("%d events stored, want 2", len(items))
	}
	ev := items[0].Event
	if ev.ID != "b-1" || ev.Type != "com.example.greeting" || ev.Source != "http://app-1" || ev.Subject != "app-1" ||
		ev.ContentType != "text/plain; charset=utf-8" || string(ev.Data) != "hello \"world\"\n" || ev.Time.Year() != 2026 {
		t.Fatalf("text event stored as %+v", ev)
	}
	for k, want := range map[string]string{
		"$ce_source": "mqtt://dev-1", "$ce_dataschema": "https://example.com/s/v1", "ce_subject": "room-4",
		"$ce_ext.comexampleext": "café", "$ce_ext.region": "eu",
	} {
		if ev.Meta[k] != want {
			t.Fatalf("meta[%s] = %q, want %q (meta %v)", k, ev.Meta[k], want, ev.Meta)
		}
	}
	for _, k := range []string{"$ce_ext.specversion", "$ce_ext.id", "$ce_ext.source", "$ce_ext.time"} {
		if _, ok := ev.Meta[k]; ok {
			t.Fatalf("attribute kept as extension %s (meta %v)", k, ev.Meta)
		}
	}
	ev = items[1].Event
	if ev.ContentType != "application/octet-stream" || string(ev.Data) != bin || ev.Meta["$ce_ext.traceid"] != "t1" {
		t.Fatalf("binary event stored as %+v", ev)
	}
	// Without ce-specversion a non-JSON body is still refused; a body declared JSON must be JSON.
	if a := ts.post(t, "/v1/events/apps/x", tok, "text/plain", "x", "ce-id", "b-3"); a.status != 415 {
		t.Fatalf("text/plain without ce-specversion: %d %v", a.status, a.body)
	}
	if a := ts.post(t, "/v1/events/apps/x", tok, "application/json", `{"a":`, "ce-specversion", "1.0", "ce-id", "b-4"); a.status != 400 || a.body["code"] != "malformed" {
		t.Fatalf("bad JSON in binary mode: %d %v", a.status, a.body)
	}
	if a := ts.post(t, "/v1/events/apps/x", tok, "text/plain", "x", "ce-specversion", "1.0"); a.status != 400 || !strings.Contains(a.body["error"].(string), "id must be") {
		t.Fatalf("no ce-id: %d %v", a.status, a.body)
	}
	if n := len(ts.queued(t)); n != 2 {
		t.Fatalf("refused requests stored events: %d", n)
	}
}

func TestStructuredCloudEventsAttributes(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	batch := `[
		{"specversion":"1.0","id":"s-1","type":"t","source":"mqtt://dev-1","dataschema":"https://example.com/s/v2",
		 "comexampleext":"v","count":3,"flag":false,"datacontenttype":"text/plain","data":"line \"one\"\n"},
		{"specversion":"1.0","id":"s-2","type":"t","datacontenttype":"text/plain","data":42},
		{"specversion":"1.0","id":"s-3","type":"t","datacontenttype":"application/xml","data":"<a b=\"1\"/>"},
		{"specversion":"1.0","id":"s-4","type":"t","data":{"k":"v"}}
	]`
	a := ts.post(t, "/v1/events/apps/x", tok, "application/cloudevents-batch+json", batch, "X-Meta-Screen", "cart")
	if a.status != 202 || a.body["accepted"] != 4.0 {
		t.Fatalf("batch: %d %v", a.status, a.body)
	}
	items := ts.queued(t)
	if len(items) != 4 {
		t.Fatalf("%d events stored, want 4", len(items))
	}
	for i, want := range []struct{ ct, data string }{
		{"text/plain", "line \"one\"\n"}, {"text/plain", "42"}, {"application/xml", `<a b="1"/>`}, {"application/json", `{"k":"v"}`},
	} {
		ev := items[i].Event
		if ev.ContentType != want.ct || string(ev.Data) != want.data || ev.Source != "http://app-1" || ev.Meta["screen"] != "cart" {
			t.Fatalf("event %d stored as %+v, want %s %q", i, ev, want.ct, want.data)
		}
	}
	ev := items[0].Event
	// The sender's source never becomes the event's source: the gateway sets it from the token.
	for k, want := range map[string]string{
		"$ce_source": "mqtt://dev-1", "$ce_dataschema": "https://example.com/s/v2",
		"$ce_ext.comexampleext": "v", "$ce_ext.count": "3", "$ce_ext.flag": "false",
	} {
		if ev.Meta[k] != want {
			t.Fatalf("meta[%s] = %q, want %q (meta %v)", k, ev.Meta[k], want, ev.Meta)
		}
	}
	if _, ok := items[1].Event.Meta["$ce_source"]; ok {
		t.Fatalf("an event without a source got one: %v", items[1].Event.Meta)
	}
}

func TestSenderIDIdentityIsSourceAndID(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	post := func(source string) {
		t.Helper()
		ce := `{"specversion":"1.0","id":"same","type":"t"` + source + `,"data":1}`
		if a := ts.post(t, "/v1/events/apps/x", tok, "application/cloudevents+json", ce); a.status != 202 || a.body["ids"].([]any)[0] != "same" {
			t.Fatalf("%s: %d %v", ce, a.status, a.body)
		}
	}
	post(`,"source":"mqtt://dev-1"`)
	post(`,"source":"mqtt://dev-2"`)
	post(`,"source":"mqtt://dev-1"`) // same id and source: stored once
	post(``)                         // no source: its own identity
	post(``)
	// Binary mode shares the identity with structured mode.
	if a := ts.post(t, "/v1/events/apps/x", tok, "text/plain", "x", "ce-specversion", "1.0", "ce-id", "same", "ce-source", "mqtt://dev-2"); a.status != 202 {
		t.Fatalf("binary: %d %v", a.status, a.body)
	}
	items := ts.queued(t)
	if len(items) != 3 {
		t.Fatalf("%d events stored, want 3 (sources dev-1, dev-2 and none)", len(items))
	}
	for i, want := range []string{"mqtt://dev-1", "mqtt://dev-2", ""} {
		if ev := items[i].Event; ev.Meta["$ce_source"] != want || ev.Source != "http://app-1" {
			t.Fatalf("event %d: source %q, $ce_source %q, want %q", i, ev.Source, ev.Meta["$ce_source"], want)
		}
	}
	// The Idempotency-Key header works as before.
	a1 := ts.post(t, "/v1/events/apps/x", tok, "application/json", `[1]`, "Idempotency-Key", "k")
	a2 := ts.post(t, "/v1/events/apps/x", tok, "application/json", `[1]`, "Idempotency-Key", "k")
	if a1.status != 202 || a2.status != 202 || a1.body["ids"].([]any)[0] != a2.body["ids"].([]any)[0] || len(ts.queued(t)) != 4 {
		t.Fatalf("Idempotency-Key: %v then %v, %d stored", a1.body, a2.body, len(ts.queued(t)))
	}
}

func TestTraceContextAndReservedMeta(t *testing.T) {
	ts := startServer(t)
	tok := ts.token(t, "app-1", "app")
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if a := ts.post(t, "/v1/events/apps/x", tok, "application/json", `1`, "traceparent", tp, "tracestate", "congo=t61rcWkgMzE",
		"X-Meta-$x", "forged", "X-Meta-$ce_source", "forged", "X-Meta-Ok", "yes"); a.status != 202 {
		t.Fatalf("%d %v", a.status, a.body)
	}
	if a := ts.post(t, "/v1/events/apps/x", tok, "application/json", `2`, "traceparent", "00-nothex-00f067aa0ba902b7-01", "tracestate", "congo=t61rcWkgMzE"); a.status != 202 {
		t.Fatalf("%d %v", a.status, a.body)
	}
	items := ts.queued(t)
	m := items[0].Event.Meta
	if m["$traceparent"] != tp || m["$tracestate"] != "congo=t61rcWkgMzE" || m["ok"] != "yes" {
		t.Fatalf("meta = %v", m)
	}
	for k := range m {
		if strings.HasPrefix(k, "$") && k != "$traceparent" && k != "$tracestate" {
			t.Fatalf("user metadata %s kept: %v", k, m)
		}
	}
	// A malformed traceparent is dropped, and its tracestate with it.
	if m := items[1].Event.Meta; m["$traceparent"] != "" || m["$tracestate"] != "" {
		t.Fatalf("malformed trace context kept: %v", m)
	}
}
