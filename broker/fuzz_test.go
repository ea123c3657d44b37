package broker

import (
	"encoding/json"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

func FuzzPublishRequest(f *testing.F) {
	for _, s := range []string{
		`{"topic":"devices/d1/cmd","payload":{"a":[1,2]},"qos":1,"retain":true}`,
		`{"topic":"t","payload":"text"}`,
		`{"topic":"t","payload_base64":"AAEC"}`,
		`{"topic":"t","payload":null}`,
		`{"topic":"t"} {}`,
		`{"topic":"t","payload":"\ud800"}`,
		``, `[]`, `{"qos":-1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, payload, err := parsePublishRequest(body)
		if err != nil {
			return
		}
		if req.Topic == "" || req.QoS < 0 || req.QoS > 2 {
			t.Fatalf("accepted invalid request %+v", req)
		}
		if len(req.Payload) > 0 && string(req.Payload) != "null" && req.Payload[0] != '"' {
			if !json.Valid(payload) {
				t.Fatalf("JSON payload %q is not JSON", payload)
			}
		}
	})
}

// FuzzConnection feeds arbitrary bytes to the broker after a valid CONNECT (and, for a
// second connection, instead of one): the broker must neither crash nor ack anything it did
// not store, and must go on serving.
func FuzzConnection(f *testing.F) {
	e := newEnv(f, "", func(c *Config, _ *Options) {
		c.ConnectTimeout = 300 * time.Millisecond
		c.MaxPacketBytes = 4096
	})
	tok := e.token("d1", "device", time.Hour)
	rc := &rawClient{t: f, v: 5}
	for _, pk := range []packets.Packet{
		publishPacket("devices/d1/t", 1, 1, []byte("x")),
		publishPacket("devices/d2/t", 2, 2, []byte("x")),
		publishPacket("devices/+/t", 0, 0, nil),
		subscribePacket("devices/#", 1),
		{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}},
	} {
		f.Add(rc.encode(pk), true)
	}
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0x7f}, false)
	f.Add([]byte{0x10, 0x02, 0x00, 0x04}, false)
	f.Fuzz(func(t *testing.T, data []byte, connectFirst bool) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		rc := &rawClient{t: t, c: c, v: 5, r: newReader(c)}
		if connectFirst {
			if ack := rc.connect("d1", tok, true, nil); ack.ReasonCode != 0 {
				t.Fatalf("CONNACK %#x", ack.ReasonCode)
			}
		}
		_, _ = c.Write(data)
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
		// Still serving.
		c2 := dialRaw(t, e.addr, 4)
		if ack := c2.connect("d1", tok, true, nil); ack.ReasonCode != 0 {
			t.Fatalf("broker stopped serving: CONNACK %#x", ack.ReasonCode)
		}
		c2.c.Close()
	})
}
