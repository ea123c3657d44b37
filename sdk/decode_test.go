package sdk

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// gatewayBatch is n events as the gateway encodes them.
func gatewayBatch(n int) []byte {
	var sb strings.Builder
	sb.WriteString("[")
	for i := range n {
		if i > 0 {
			sb.WriteString(",")
		}
		if i%2 == 0 {
			fmt.Fprintf(&sb, `{"specversion":"1.0","id":"01JX%022d","source":"mqtt://dev%d","type":"fleetgate.mqtt.publish","subject":"dev%d","time":"2026-11-26T18:59:24.123456789Z","datacontenttype":"application/json","data":{"temp":%d,"unit":"°C"},"topic":"devices/dev%d/telemetry","tenant":"acme","rule":"hot"}`, i, i, i, i, i)
		} else {
			fmt.Fprintf(&sb, `{"specversion":"1.0","id":"01JX%022d","source":"http://app","type":"fleetgate.http.post","time":"2026-11-26T18:59:24Z","datacontenttype":"application/octet-stream","data_base64":"AAEC/w==","topic":"apps/x"}`, i)
		}
	}
	sb.WriteString("]")
	return []byte(sb.String())
}

// decodeBatch must agree with encoding/json on everything; the fast path must actually run
// on the gateway's shape.
func TestDecodeBatchAgreesWithEncodingJSON(t *testing.T) {
	f := func(in string, fast bool) {
		t.Helper()
		var want []Event
		wantErr := json.Unmarshal([]byte(in), &want)
		got, err := decodeBatch([]byte(in))
		if (err == nil) != (wantErr == nil) || (err == nil && !reflect.DeepEqual(got, want)) {
			t.Errorf("%s:\n got %+v, %v\nwant %+v, %v", in, got, err, want, wantErr)
		}
		if json.Valid([]byte(in)) {
			if _, ok := scanBatch([]byte(in)); ok != fast {
				t.Errorf("%s: fast path taken = %v, want %v", in, ok, fast)
			}
		}
	}
	f(string(gatewayBatch(5)), true)
	f(`[]`, true)
	f(` [ { } , {"id" : "a" , "data" : [ 1, {"b":"]}"} ] } ] `, true)
	f(`[{"data":"x\"y","data_base64":""}]`, true)
	f(`[{"data":-1.5e3},{"data":true}]`, true)
	f(`[{"id":"a\u0041","meta":"{\"k\":\"v\"}"}]`, true)        // escapes
	f(`[{"region":"eu","qos":"1","traceparent":"00-x"}]`, true) // context and extensions
	f(`[{"Region":"eu","region":"us"}]`, true)
	f(`[{"ID":"a","Meta":"m"}]`, false) // other case
	f(`[{"other":1}]`, false)           // unknown member, not a string
	f(`[{"subject":null}]`, false)      // null
	f(`[{"data":null}]`, false)         // null data
	f(`[{"id":"a\xffb"}]`, false)       // invalid UTF-8
	f(`[{"time":"yesterday"}]`, false)  // bad time: an error either way
	f(`[{"data_base64":"!!"}]`, false)  // bad base64: an error either way
	f(`[{"id":1}]`, false)              // wrong type: an error either way
	f(`null`, false)
	f(`{"id":"a"}`, false)
	f(`[{"id":"a"}`, false) // invalid JSON
	f(`[{"id":"a"}] x`, false)
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add(gatewayBatch(3))
	for _, s := range []string{`[]`, `[{"data":[1,{"a":"]"}]}]`, `[{"id":"\u00e9"}]`, `[{"time":"2026-01-02T03:04:05+01:00"}]`, `[{"data_base64":"AA=="}]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var want []Event
		wantErr := json.Unmarshal(in, &want)
		got, err := decodeBatch(in)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("err = %v, encoding/json: %v", err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})
}

// The context attributes the gateway sends decode into fields; text payloads read as text.
func TestDecodeContext(t *testing.T) {
	in := `[{"specversion":"1.0","id":"e1","source":"mqtt:///dev%201","type":"fleetgate.mqtt.publish","subject":"auth0|abc123","time":"2026-01-02T03:04:05Z","datacontenttype":"text/plain","data":"h\u00e9llo \"w\"","topic":"t","protocol":"mqtt","clientid":"dev 1","qos":"1","retain":"false","responsetopic":"r/1","correlationdata":"AQID","payloadformat":"utf8","sendersource":"urn:x","dataschema":"https://s.example/x","traceparent":"00-a-b-01","tracestate":"k=v","meta":"{\"fw\":\"1.2\"}","region":"eu"}]`
	for _, events := range [][]Event{mustDecode(t, in), mustUnmarshal(t, in)} {
		e := events[0]
		if e.Protocol != "mqtt" || e.ClientID != "dev 1" || e.QoS != "1" || e.Retain != "false" ||
			e.ResponseTopic != "r/1" || e.CorrelationData != "AQID" || e.PayloadFormat != "utf8" ||
			e.SenderSource != "urn:x" || e.DataSchema != "https://s.example/x" || e.Traceparent != "00-a-b-01" ||
			e.Tracestate != "k=v" || e.MetaMap()["fw"] != "1.2" || e.Extensions["region"] != "eu" || len(e.Extensions) != 1 ||
			string(e.Payload()) != `héllo "w"` {
			t.Errorf("%+v payload %q", e, e.Payload())
		}
	}
	j := Event{DataContentType: "application/vnd.x+json", Data: json.RawMessage(`"s"`)}
	if string(j.Payload()) != `"s"` {
		t.Errorf("a JSON string stays JSON for a JSON type: %q", j.Payload())
	}
}

func mustDecode(t *testing.T, in string) []Event {
	t.Helper()
	if _, ok := scanBatch([]byte(in)); !ok {
		t.Error("fast path not taken")
	}
	ev, err := decodeBatch([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func mustUnmarshal(t *testing.T, in string) []Event {
	t.Helper()
	var ev []Event
	if err := json.Unmarshal([]byte(in), &ev); err != nil {
		t.Fatal(err)
	}
	return ev
}
