package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
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
	for _, s := range []string{`{"a":1}`, `[1,2,{"x":[true,null]}]`, "1\n2\n", `[{"id":"a","data":1}]`, `{"id":"x","data_base64":"AA=="}`, `[1,}`} {
		f.Add("application/json", []byte(s))
		f.Add("application/x-ndjson", []byte(s))
		f.Add("application/cloudevents-batch+json", []byte(s))
		f.Add("application/cloudevents+json", []byte(s))
	}
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		evs, err := parseBody(ct, body, 100)
		if err != nil {
			return
		}
		if len(evs) == 0 || len(evs) > 100 {
			t.Fatalf("%d events accepted", len(evs))
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
