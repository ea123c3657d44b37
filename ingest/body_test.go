package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseBody(t *testing.T) {
	f := func(ct, body string, wantData []string, wantErr string) {
		t.Helper()
		got, err := parseBody(ct, []byte(body), 3)
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("parseBody(%q, %q) error = %v, want containing %q", ct, body, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("parseBody(%q, %q): %v", ct, body, err)
		}
		if len(got) != len(wantData) {
			t.Fatalf("parseBody(%q, %q) = %d events, want %d", ct, body, len(got), len(wantData))
		}
		for i := range got {
			if string(got[i].Data) != wantData[i] {
				t.Fatalf("event %d data = %q, want %q", i, got[i].Data, wantData[i])
			}
		}
	}
	f("application/json", `{"a":1}`, []string{`{"a":1}`}, "")
	f("", ` {"a":1} `, []string{`{"a":1}`}, "")
	f("application/json; charset=utf-8", `42`, []string{`42`}, "")
	f("application/json", `[{"a":1}, 2,"x"]`, []string{`{"a":1}`, `2`, `"x"`}, "")
	f("application/json", `[{"a":1}, {"b":}]`, nil, "index 1")
	f("application/json", `[1,2,3,4]`, nil, "too many events")
	f("application/json", `[]`, nil, "empty array")
	f("application/json", ``, nil, "empty body")
	f("application/json", `{"a":`, nil, "malformed body")
	f("application/json", `[1] x`, nil, "malformed")
	f("application/x-ndjson", "{\"a\":1}\n\n[2]\r\n3", []string{`{"a":1}`, `[2]`, `3`}, "")
	f("application/x-ndjson", "{\"a\":1}\nnope\n", nil, "index 1")
	f("application/x-ndjson", "1\n2\n3\n4", nil, "too many events")
	f("application/x-ndjson", "\n\n", nil, "empty body")
	f("text/plain", `hi`, nil, "unsupported content type")
	f("application/x-www-form-urlencoded", `a=1`, nil, "unsupported content type")
	f("bad/;;", `1`, nil, "unsupported content type")
	f("application/cloudevents+json", `{"specversion":"1.0","id":"e1","type":"t","source":"s","data":{"x":1}}`, []string{`{"x":1}`}, "")
	f("application/cloudevents+json", `{"specversion":"1.0","id":"e1","data_base64":"AAE="}`, []string{"\x00\x01"}, "")
	f("application/cloudevents+json", `{"specversion":"1.0","data":1}`, nil, "id must be")
	f("application/cloudevents+json", `{"specversion":"0.3","id":"x"}`, nil, "only 1.0")
	f("application/cloudevents+json", `{"id":"x","time":"yesterday"}`, nil, "RFC 3339")
	f("application/cloudevents+json", `{"id":"x","data":1,"data_base64":"AA=="}`, nil, "exclusive")
	f("application/cloudevents-batch+json", `[{"id":"a","data":1},{"id":"b","data":2}]`, []string{"1", "2"}, "")
	f("application/cloudevents-batch+json", `[{"id":"a","data":1},{"data":2}]`, nil, "index 1")
	f("application/cloudevents-batch+json", `{"id":"a"}`, nil, "JSON array")
	f("application/cloudevents-batch+json", `[]`, nil, "empty batch")
	// String data of a non-JSON type is the text itself; other data keeps its JSON text.
	f("application/cloudevents+json", `{"id":"x","datacontenttype":"text/plain","data":"a \"b\"\n\u00e9"}`, []string{"a \"b\"\n\u00e9"}, "")
	f("application/cloudevents+json", `{"id":"x","datacontenttype":"application/xml","data":"<a x=\"1\"/>"}`, []string{`<a x="1"/>`}, "")
	f("application/cloudevents+json", `{"id":"x","datacontenttype":"text/plain","data":42}`, []string{`42`}, "")
	f("application/cloudevents+json", `{"id":"x","datacontenttype":"application/json","data":"s"}`, []string{`"s"`}, "")
	f("application/cloudevents+json", `{"id":"x","datacontenttype":"application/vnd.x+json","data":"s"}`, []string{`"s"`}, "")
	f("application/cloudevents+json", `{"id":"x","data":"s"}`, []string{`"s"`}, "")
	f("application/cloudevents+json", `{"id":"x","source":7}`, nil, "source must be a string")
	f("application/cloudevents+json", `{"id":"x","source":"a\u0000b"}`, nil, "source must be")
}

func TestCloudEventAttributes(t *testing.T) {
	body := `{"specversion":"1.0","id":"e1","type":"t","source":"mqtt://dev-1","dataschema":"https://s/v1",
		"zeta":"z","alpha":7,"flag":true,"nothing":null,"obj":{"a":1},"arr":[1],"Upper":"u","with-dash":"d",
		"datacontenttype":"text/plain","data":"42"}`
	evs, err := parseBody("application/cloudevents+json", []byte(body), 10)
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	if ev.CESource != "mqtt://dev-1" || ev.DataSchema != "https://s/v1" || ev.ContentType != "text/plain" || string(ev.Data) != "42" {
		t.Fatalf("event = %+v", ev)
	}
	if got, want := fmt.Sprint(ev.Ext), "[{alpha 7} {flag true} {zeta z}]"; got != want {
		t.Fatalf("extensions = %s, want %s", got, want)
	}
	many := `{"id":"x"`
	for i := range maxExtensions + 1 {
		many += fmt.Sprintf(`,"x%d":"v"`, i)
	}
	if _, err := parseBody("application/cloudevents+json", []byte(many+"}"), 10); err == nil || !strings.Contains(err.Error(), "extension attributes") {
		t.Fatalf("%d extensions: err = %v", maxExtensions+1, err)
	}
}

func TestParseBinary(t *testing.T) {
	ce := []attr{{"specversion", "1.0"}, {"id", "e1"}, {"type", "t"}, {"source", "mqtt://dev-1"}, {"subject", "s"},
		{"time", "2026-01-02T03:04:05Z"}, {"dataschema", "d"}, {"zext", "a%20b%"}, {"aext", "caf%C3%A9"}, {"bad-name", "x"},
		{"datacontenttype", "ignored"}}
	evs, err := parseRequest("text/plain; charset=utf-8", ce, []byte("hello\n"), 10)
	if err != nil {
		t.Fatal(err)
	}
	ev := evs[0]
	if len(evs) != 1 || ev.ID != "e1" || ev.Type != "t" || ev.CESource != "mqtt://dev-1" || ev.Subject != "s" || ev.DataSchema != "d" ||
		ev.ContentType != "text/plain; charset=utf-8" || string(ev.Data) != "hello\n" || ev.Time.Year() != 2026 {
		t.Fatalf("event = %+v", ev)
	}
	// Percent-decoded; a value that is not valid percent-encoding is kept as sent.
	if got, want := fmt.Sprint(ev.Ext), "[{aext café} {zext a%20b%}]"; got != want {
		t.Fatalf("extensions = %s, want %s", got, want)
	}
	for _, c := range []struct {
		ct   string
		ce   []attr
		body string
		err  string
	}{
		{"text/plain", []attr{{"specversion", "1.0"}}, "x", "id must be"},
		{"text/plain", []attr{{"specversion", "0.3"}, {"id", "x"}}, "x", "only 1.0"},
		{"application/json", []attr{{"specversion", "1.0"}, {"id", "x"}}, `{"a":`, "not JSON"},
		{"", []attr{{"specversion", "1.0"}, {"id", "x"}, {"time", "now"}}, "x", "RFC 3339"},
	} {
		if _, err := parseRequest(c.ct, c.ce, []byte(c.body), 10); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Fatalf("parseRequest(%q, %v) error = %v, want %q", c.ct, c.ce, err, c.err)
		}
	}
	// No content type: octet-stream. ce-* headers without ce-specversion, or with a structured
	// content type, are not binary mode.
	if evs, err := parseRequest("", []attr{{"specversion", "1.0"}, {"id", "x"}}, []byte{0, 1}, 10); err != nil || evs[0].ContentType != "application/octet-stream" {
		t.Fatalf("no content type: %+v, %v", evs, err)
	}
	if _, err := parseRequest("text/plain", []attr{{"id", "x"}}, []byte("x"), 10); !errors.Is(err, errUnsupportedType) {
		t.Fatalf("without ce-specversion: err = %v", err)
	}
	if evs, err := parseRequest("application/cloudevents+json", ce, []byte(`{"id":"s1","data":1}`), 10); err != nil || evs[0].ID != "s1" {
		t.Fatalf("structured with ce headers: %+v, %v", evs, err)
	}
}

func TestValidTraceparent(t *testing.T) {
	for v, want := range map[string]bool{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":        true,
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future": true,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra":  false,
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01":        false,
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01":        false,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01":        false,
		"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":        false,
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7":           false,
		"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":        false,
		"zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01":        false,
		"": false,
	} {
		if got := validTraceparent([]byte(v)); got != want {
			t.Errorf("validTraceparent(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestParseBodyErrorsAreTyped(t *testing.T) {
	_, err := parseBody("application/json", []byte(`[1,}`), 10)
	var be *BodyError
	if !errors.As(err, &be) || be.Index != 1 {
		t.Fatalf("err = %#v, want BodyError at index 1", err)
	}
	_, err = parseBody("image/png", []byte(`x`), 10)
	if !errors.Is(err, errUnsupportedType) {
		t.Fatalf("err = %v, want errUnsupportedType", err)
	}
}

func FuzzParseBody(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `[1,2,{"x":[true,null]}]`, "1\n2\n", `[{"id":"a","data":1}]`, `{"id":"x","data_base64":"AA=="}`, `[1,}`,
		`{"specversion":"1.0","id":"x","source":"mqtt://d","dataschema":"s","ext1":"v","n":3,"b":true,"o":{},"datacontenttype":"text/plain","data":"hi\n"}`,
		`[{"id":"a","datacontenttype":"application/xml","data":"<a/>"},{"id":"b","datacontenttype":"text/plain","data":42}]`} {
		f.Add("application/json", "", []byte(s))
		f.Add("application/x-ndjson", "", []byte(s))
		f.Add("application/cloudevents-batch+json", "", []byte(s))
		f.Add("application/cloudevents+json", "", []byte(s))
	}
	// Binary mode: ce-* headers, one "name: value" a line.
	binary := "specversion: 1.0\nid: e1\ntype: t\nsource: mqtt://dev-1\ntime: 2026-01-02T03:04:05Z\ncomexampleext: a%20b\n"
	f.Add("text/plain", binary, []byte("hello"))
	f.Add("application/octet-stream", binary, []byte{0, 1, 2, 0xff})
	f.Add("application/json", binary, []byte(`{"a":`))
	f.Add("", "specversion: 0.3\nid: x\n", []byte("x"))
	f.Add("application/cloudevents+json", binary, []byte(`{"id":"x","data":1}`))
	f.Fuzz(func(t *testing.T, ct, headers string, body []byte) {
		var ce []attr
		for _, l := range strings.Split(headers, "\n") {
			if name, value, ok := strings.Cut(l, ": "); ok {
				ce = append(ce, attr{strings.ToLower(name), value})
			}
		}
		evs, err := parseRequest(ct, ce, body, 100)
		if err != nil {
			return
		}
		if len(evs) == 0 || len(evs) > 100 {
			t.Fatalf("%d events accepted", len(evs))
		}
		for _, ev := range evs {
			if len(ev.Ext) > maxExtensions || len(ev.CESource) > maxSourceLength {
				t.Fatalf("unbounded attributes accepted: %d extensions, source of %d bytes", len(ev.Ext), len(ev.CESource))
			}
			for _, x := range ev.Ext {
				if !validExtName(x.Name) || ceAttributes[x.Name] {
					t.Fatalf("extension %q kept", x.Name)
				}
			}
		}
	})
}

// FuzzSplitArray checks the fast array splitter against encoding/json on every valid array.
func FuzzSplitArray(f *testing.F) {
	for _, s := range []string{`[]`, `[1]`, ` [ {"a":[1,2,{"b":"]"}]} , "x\"]" ,null,[[]] ] `, `["\\",1]`, `[{"a":"},"}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want []json.RawMessage
		if json.Unmarshal(b, &want) != nil {
			return
		}
		got := splitArray(bytes.TrimLeft(b, " \t\r\n"), nil)
		if len(got) != len(want) {
			t.Fatalf("split %q into %d elements, encoding/json into %d", b, len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], bytes.TrimSpace(want[i])) {
				t.Fatalf("element %d of %q: got %q, want %q", i, b, got[i], want[i])
			}
		}
	})
}
