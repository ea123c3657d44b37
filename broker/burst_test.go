package broker

import (
	"bytes"
	"net"
	"testing"
)

// countingConn is bytesConn that counts its reads.
type countingConn struct {
	bytesConn
	reads int
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads++
	return c.bytesConn.Read(p)
}

// TestBurstReadBuffer: a connection whose reads fill what mochi asks for gets a larger read
// buffer, and fewer read system calls, but only once its whole CONNECT has been handed on (an
// unauthenticated client costs no more than before); it gives the buffer back as soon as a read
// brings less than asked, and every byte reaches mochi once, in order.
func TestBurstReadBuffer(t *testing.T) {
	connect := append([]byte{0x10, 0x80, 0x10}, bytes.Repeat([]byte{'c'}, 2048)...) // a 2 KiB CONNECT body
	flood := make([]byte, 64<<10)
	for i := range flood {
		flood[i] = byte(i % 251)
	}
	src := &countingConn{bytesConn: bytesConn{data: append(append([]byte(nil), connect...), flood...), chunk: 1 << 20}}
	c := &firstPacketConn{Conn: src, max: 8192}
	var got []byte
	buf := make([]byte, 1024) // mochi's read buffer
	for len(got) < len(connect) {
		n, err := c.Read(buf[:min(len(buf), len(connect)-len(got))])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
		if c.burst != nil {
			t.Fatalf("burst buffer taken after %d of the CONNECT's %d bytes: before authentication", len(got), len(connect))
		}
	}
	readsBefore := src.reads
	for len(got) < len(connect)+len(flood)-100 {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if c.burst == nil {
		t.Fatal("no burst buffer during a flood that fills every read")
	}
	floodReads := src.reads - readsBefore
	if want := len(flood)/burstSize + 2; floodReads > want {
		t.Fatalf("%d reads of the connection for %d bytes, want at most %d with a %d-byte buffer", floodReads, len(flood), want, burstSize)
	}
	// The rest is less than mochi asks for: handed on, and the buffer given back.
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if c.burst != nil {
		t.Fatal("burst buffer kept after a read brought less than asked for")
	}
	if !bytes.Equal(got, append(append([]byte(nil), connect...), flood...)) {
		t.Fatal("bytes handed on differ from the bytes sent")
	}
	var _ net.Conn = c
}
