package event

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

func sample() *Event {
	return &Event{
		ID: NewID(), Source: "mqtt://dev-1", Type: "fleetgate.mqtt.publish", Subject: "dev-1",
		Time: time.Unix(1700000000, 123456789).UTC(), ContentType: "application/json",
		Data: []byte(`{"temp":21.5}`), Protocol: ProtocolMQTT, Topic: "devices/dev-1/telemetry",
		Tenant: "acme", ClaimsJSON: []byte(`{"sub":"dev-1","tier":"gold"}`),
		Meta: map[string]string{"client_id": "dev-1", "fw": "1.2.3"}, QoS: 1, Retain: true, Hops: 2,
	}
}

func TestCodecRoundTrip(t *testing.T) {
	cases := map[string]*Event{
		"full":                 sample(),
		"empty":                {},
		"no meta, binary data": {ID: "x", Data: []byte{0, 1, 2, 255}, Protocol: ProtocolHTTP, Topic: "apps/a"},
		"unicode":              {ID: "é", Topic: "devices/ü/t", Meta: map[string]string{"k": "日本"}},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			b := in.AppendBinary(nil)
			var out Event
			if err := Decode(b, &out); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(normalize(in), normalize(&out)) {
				t.Fatalf("round trip:\n in  %+v\n out %+v", in, &out)
			}
			// Equal events encode to equal bytes (meta sorted).
			if !bytes.Equal(b, out.AppendBinary(nil)) {
				t.Fatal("re-encoding differs")
			}
		})
	}
}

func normalize(e *Event) Event {
	c := *e
	if len(c.Data) == 0 {
		c.Data = nil
	}
	if len(c.ClaimsJSON) == 0 {
		c.ClaimsJSON = nil
	}
	if len(c.Meta) == 0 {
		c.Meta = nil
	}
	c.Claims = nil
	return c
}

func TestDecodeRejectsCorruptInput(t *testing.T) {
	good := sample().AppendBinary(nil)
	cases := map[string][]byte{
		"empty":            nil,
		"bad version":      append([]byte{9}, good[1:]...),
		"truncated":        good[:len(good)/2],
		"trailing":         append(append([]byte{}, good...), 0),
		"huge length":      {codecVersion, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"short flags":      good[:len(good)-1],
		"meta count bound": append(append([]byte{codecVersion}, bytes.Repeat([]byte{0}, 11)...), 0xff, 0xff, 0x03),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			var e Event
			err := Decode(b, &e)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode = %v, want ErrCorrupt", err)
			}
			if !reflect.DeepEqual(e, Event{}) {
				t.Fatalf("failed decode left data behind: %+v", e)
			}
		})
	}
}

func TestNewIDSortsByTime(t *testing.T) {
	ids := make([]string, 1000)
	for i := range ids {
		ids[i] = NewID()
	}
	if !sort.StringsAreSorted(ids) {
		t.Fatal("ids from one process are not monotonic")
	}
	if len(ids[0]) != 26 || strings.ToUpper(ids[0]) != ids[0] {
		t.Fatalf("id %q is not a 26-character ULID", ids[0])
	}
}

func TestClaimsMap(t *testing.T) {
	e := &Event{ClaimsJSON: []byte(`{"tier":"gold","n":3}`)}
	m := e.ClaimsMap()
	if m["tier"] != "gold" || m["n"] != 3.0 {
		t.Fatalf("ClaimsMap = %v", m)
	}
	if (&Event{ClaimsJSON: []byte(`not json`)}).ClaimsMap() != nil {
		t.Fatal("bad claims JSON should give nil")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample().AppendBinary(nil))
	f.Add((&Event{}).AppendBinary(nil))
	f.Add([]byte{codecVersion, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if err := Decode(b, &e); err != nil {
			return
		}
		// Whatever decodes must re-encode and decode to the same event.
		var again Event
		if err := Decode(e.AppendBinary(nil), &again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !reflect.DeepEqual(normalize(&e), normalize(&again)) {
			t.Fatalf("unstable round trip: %+v vs %+v", e, again)
		}
	})
}

func ExampleDecode() {
	in := &Event{ID: "01J0EXAMPLE", Topic: "devices/d1/telemetry", Data: []byte(`{"temp":21}`)}
	var out Event
	if err := Decode(in.AppendBinary(nil), &out); err != nil {
		panic(err)
	}
	fmt.Println(out.ID, out.Topic, string(out.Data))
	// Output: 01J0EXAMPLE devices/d1/telemetry {"temp":21}
}
