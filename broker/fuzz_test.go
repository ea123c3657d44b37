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

// bytesConn is a net.Conn that reads from a fixed byte slice, in chunks of at most chunk bytes.
type bytesConn struct {
	net.Conn
	data   []byte
	chunk  int
	closed bool
}

func (c *bytesConn) Read(p []byte) (int, error) {
	if c.closed || len(c.data) == 0 {
		return 0, net.ErrClosed
	}
	n := min(len(p), c.chunk, len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func (c *bytesConn) Close() error { c.closed = true; return nil }

// FuzzFirstPacket: the guard in front of mochi reads untrusted bytes before any authentication.
// It never panics, never reads past the fixed header before deciding, refuses what is not a
// CONNECT within the limit, and once it lets a connection through hands mochi exactly the
// bytes that were sent, in order, whatever the read sizes.
func FuzzFirstPacket(f *testing.F) {
	for _, s := range [][]byte{
		{0x10, 0x0c, 0, 4, 'M', 'Q', 'T', 'T', 5, 2, 0, 30, 0, 0},
		{0x10, 0xf0, 0xfe, 0x0f}, // CONNECT declaring 262000 bytes
		{0x30, 0x02, 0, 0},       // PUBLISH first
		{0x10, 0xff, 0xff, 0xff, 0xff, 0x01},
		{0x10},
		{},
	} {
		f.Add(s, uint8(1))
		f.Add(s, uint8(7))
	}
	const limit = 8192
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		src := &bytesConn{data: append([]byte(nil), data...), chunk: int(chunk)%16 + 1}
		c := &firstPacketConn{Conn: src, max: limit}
		var got []byte
		buf := make([]byte, 1+int(chunk)%32)
		for {
			n, err := c.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		if !c.checked {
			return // refused, or the input ended inside the fixed header
		}
		if data[0] != 0x10 {
			t.Fatalf("let through a first packet of type byte %#x", data[0])
		}
		length, mult, i := 0, 1, 1
		for ; data[i]&0x80 != 0; i++ {
			length += int(data[i]&0x7f) * mult
			mult *= 128
		}
		length += int(data[i]&0x7f) * mult
		if length > limit {
			t.Fatalf("let through a CONNECT declaring %d bytes (limit %d)", length, limit)
		}
		if string(got) != string(data) {
			t.Fatalf("handed on %x, sent %x", got, data)
		}
	})
}
