package loadtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// startBare runs a bare MQTT peer of the given shape on loopback until the test ends, and
// checks that Serve returned nil once its context ended.
func startBare(t *testing.T, mode string) string {
	t.Helper()
	b, err := ListenBareMQTT("127.0.0.1:0", mode)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return 10 s after its context ended")
		}
	})
	return b.Addr().String()
}

// TestBareMQTTUnderTheGenerator: both shapes of the bare peer acknowledge every message of the
// real generator (paho clients) at every QoS, closed and open loop.
func TestBareMQTTUnderTheGenerator(t *testing.T) {
	for _, mode := range []string{BareGoroutines, BareEpoll} {
		t.Run(mode, func(t *testing.T) {
			broker := "tcp://" + startBare(t, mode)
			for _, qos := range []byte{0, 1, 2} {
				cfg := quickMQTT(broker)
				cfg.QoS = qos
				if qos == 1 {
					cfg.Rate = 4000 // open loop, as bench-peers' case at the end-to-end rate
				}
				res, err := RunMQTT(context.Background(), cfg)
				if err != nil {
					t.Fatalf("QoS %d: %v", qos, err)
				}
				want := int64(cfg.Clients * cfg.Messages)
				if res.Sent != want || res.Acked != want || res.Errors != 0 {
					t.Fatalf("QoS %d: sent %d acked %d errors %d, want %d/%d/0 (first error %q)", qos, res.Sent, res.Acked, res.Errors, want, want, res.FirstError)
				}
			}
		})
	}
}

// TestBareMQTTWire: the answers on the wire, MQTT 3.1.1 and 5, with packets cut across reads
// and many in one read; and the connection ends after DISCONNECT, after a packet it does not
// answer, and after bytes that are not MQTT.
func TestBareMQTTWire(t *testing.T) {
	connect := func(level byte) []byte {
		return []byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', level, 0x02, 0, 30, 0, 0}
	}
	publish := func(qos byte, id uint16) []byte {
		p := []byte{0x30 | qos<<1, 0, 0, 1, 't'}
		if qos > 0 {
			p = append(p, byte(id>>8), byte(id))
		}
		p = append(p, "payload"...)
		p[1] = byte(len(p) - 2)
		return p
	}
	cases := []struct {
		name   string
		send   [][]byte // each written on its own, the test waiting for nothing between them
		want   []byte
		closed bool // the peer ends the connection after its answers
	}{
		{name: "3.1.1", send: [][]byte{connect(4), publish(1, 7), publish(0, 0), publish(2, 8), {0x62, 2, 0, 8}, {0xc0, 0}},
			want: []byte{0x20, 2, 0, 0, 0x40, 2, 0, 7, 0x50, 2, 0, 8, 0x70, 2, 0, 8, 0xd0, 0}},
		{name: "5", send: [][]byte{connect(5), publish(1, 0x0102)},
			want: []byte{0x20, 3, 0, 0, 0, 0x40, 2, 1, 2}},
		{name: "cut across writes", send: [][]byte{connect(4)[:1], connect(4)[1:5], connect(4)[5:], publish(1, 9)[:3], publish(1, 9)[3:]},
			want: []byte{0x20, 2, 0, 0, 0x40, 2, 0, 9}},
		{name: "many in one write", send: [][]byte{bytes.Join([][]byte{connect(4), publish(1, 1), publish(1, 2), publish(1, 3)}, nil)},
			want: []byte{0x20, 2, 0, 0, 0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40, 2, 0, 3}},
		{name: "disconnect", send: [][]byte{connect(4), {0xe0, 0}},
			want: []byte{0x20, 2, 0, 0}, closed: true},
		{name: "subscribe is not answered", send: [][]byte{connect(4), publish(1, 4), {0x82, 6, 0, 1, 0, 1, 't', 0}},
			want: []byte{0x20, 2, 0, 0, 0x40, 2, 0, 4}, closed: true},
		{name: "publish before connect", send: [][]byte{publish(1, 1)}, closed: true},
		{name: "five length bytes", send: [][]byte{connect(4), {0x30, 0xff, 0xff, 0xff, 0xff, 0x7f}},
			want: []byte{0x20, 2, 0, 0}, closed: true},
		{name: "QoS 3", send: [][]byte{connect(4), {0x36, 5, 0, 1, 't', 0, 1}},
			want: []byte{0x20, 2, 0, 0}, closed: true},
	}
	for _, mode := range []string{BareGoroutines, BareEpoll} {
		addr := startBare(t, mode)
		for _, tc := range cases {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				for _, b := range tc.send {
					if _, err := c.Write(b); err != nil {
						t.Fatal(err)
					}
				}
				got := make([]byte, len(tc.want))
				if _, err := io.ReadFull(c, got); err != nil {
					t.Fatalf("reading %d bytes of answers: %v (got % x)", len(tc.want), err, got)
				}
				if !bytes.Equal(got, tc.want) {
					t.Fatalf("answers % x, want % x", got, tc.want)
				}
				if tc.closed {
					if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
						t.Fatalf("connection still open after the answers (read %d, %v)", n, err)
					}
					return
				}
				// Still open: a PINGREQ is answered.
				if _, err := c.Write([]byte{0xc0, 0}); err != nil {
					t.Fatal(err)
				}
				pong := make([]byte, 2)
				if _, err := io.ReadFull(c, pong); err != nil || !bytes.Equal(pong, []byte{0xd0, 0}) {
					t.Fatalf("PINGRESP % x, %v", pong, err)
				}
			})
		}
	}
}

// TestBareMQTTLargePacket: a publish larger than one read (200 KiB) is answered, in both
// shapes; one beyond the limit ends the connection without the peer buffering it.
func TestBareMQTTLargePacket(t *testing.T) {
	for _, mode := range []string{BareGoroutines, BareEpoll} {
		t.Run(mode, func(t *testing.T) {
			c, err := net.Dial("tcp", startBare(t, mode))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			w := bufio.NewWriter(c)
			_, _ = w.Write([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30, 0, 0})
			body := append([]byte{0, 1, 't', 0x12, 0x34}, make([]byte, 200<<10)...)
			_, _ = w.Write([]byte{0x32, byte(len(body)) | 0x80, byte(len(body)>>7) | 0x80, byte(len(body) >> 14)})
			_, _ = w.Write(body)
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, 8)
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte{0x20, 2, 0, 0, 0x40, 2, 0x12, 0x34}) {
				t.Fatalf("answers % x, %v", got, err)
			}
			// 2 MiB announced: over bareMaxPacket.
			if _, err := c.Write([]byte{0x32, 0x80, 0x80, 0x80, 0x01}); err != nil {
				t.Fatal(err)
			}
			if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("connection still open after a 2 MiB length (read %d, %v)", n, err)
			}
		})
	}
}

func TestBareMQTTBadMode(t *testing.T) {
	if _, err := ListenBareMQTT("127.0.0.1:0", "threads"); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("mode threads: %v, want ErrInvalidConfig", err)
	}
}

// FuzzBareAnswer: whatever the bytes, answer never panics, never reports more bytes used than
// it was given, and answers a stream the same however it is cut into reads.
func FuzzBareAnswer(f *testing.F) {
	f.Add([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 30, 0, 0, 0x32, 5, 0, 1, 't', 0, 1, 0xc0, 0, 0xe0, 0}, 3)
	f.Add([]byte{0x10, 2, 0, 9}, 1)
	f.Add([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x01}, 2)
	f.Add([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30, 0, 0, 0x36, 5, 0, 1, 't', 0, 1}, 7)
	f.Add([]byte{0x10, 12, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 30, 0, 0, 0x62, 2, 0, 1, 0x82, 1, 0}, 15)
	f.Fuzz(func(t *testing.T, stream []byte, cut int) {
		whole, wholeErr := answerAll(stream, len(stream)+1)
		pieces, piecesErr := answerAll(stream, cut)
		if !bytes.Equal(whole, pieces) || piecesErr != wholeErr {
			t.Fatalf("answers differ by how the stream is cut (%d): % x (%v) and % x (%v)", cut, whole, wholeErr, pieces, piecesErr)
		}
	})
}

// answerAll feeds stream to a session in reads of cut bytes (at least 1), as a connection
// would, and returns every answer and the error that ended it (nil if none did).
func answerAll(stream []byte, cut int) ([]byte, error) {
	cut = max(cut, 1)
	var (
		s        bareSession
		in, outs []byte
	)
	for off := 0; off < len(stream); off += cut {
		in = append(in, stream[off:min(off+cut, len(stream))]...)
		used, out, err := s.answer(in, nil)
		if used < 0 || used > len(in) {
			panic(fmt.Sprintf("used %d of %d bytes", used, len(in)))
		}
		outs = append(outs, out...)
		if err != nil {
			return outs, err
		}
		in = in[used:]
	}
	return outs, nil
}
