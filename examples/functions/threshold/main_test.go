package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/sdk"
)

func TestHandle(t *testing.T) {
	t.Setenv("THRESHOLD", "40")
	in := `[{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"dev1","data":{"temp":41.5,"hum":3}},
	        {"specversion":"1.0","id":"b","source":"s","type":"t","subject":"dev2","data":{"temp":40}},
	        {"specversion":"1.0","id":"c","source":"s","type":"t","subject":"dev3","data_base64":"AAE="},
	        {"specversion":"1.0","id":"d","source":"s","type":"t","subject":"dev4","data":[1,2]}]`
	var out bytes.Buffer
	if err := sdk.Handle(strings.NewReader(in), &out, handle); err != nil {
		t.Fatal(err)
	}
	var res sdk.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, out.Bytes())
	}
	if len(res.Publish) != 1 || res.Publish[0].Topic != "devices/dev1/alerts" || res.Publish[0].QoS != 1 {
		t.Fatalf("publish = %+v", res.Publish)
	}
	var got map[string]any
	if err := json.Unmarshal(res.Publish[0].Payload, &got); err != nil {
		t.Fatal(err)
	}
	if got["alert"] != "overheat" || got["temp"] != 41.5 || got["hum"] != 3.0 {
		t.Fatalf("payload = %v", got)
	}
}

func TestHandleBadThreshold(t *testing.T) {
	t.Setenv("THRESHOLD", "hot")
	if _, err := handle(nil); err == nil {
		t.Fatal("want an error for a non-numeric THRESHOLD")
	}
}
