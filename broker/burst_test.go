package broker

import (
	"bytes"
	"testing"
)

// countingConn is bytesConn that counts its reads and the largest.
type countingConn struct {
	bytesConn
	reads, largest int
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads++
	n, err := c.bytesConn.Read(p)
	c.largest = max(c.largest, n)
	return n, err
}

// TestBurstReadBuffer: a connection whose reads fill what mochi asks for reads in bulk, with
// fewer read system calls, but only once its whole CONNECT has been handed on (an
// unauthenticated client costs no more than before); the bulk buffer is given back as soon as
// mochi has had its bytes, so a connection that waits for its client holds none; and every
// byte reaches mochi once, in order.
func TestBurstReadBuffer(t *testing.T) {
	connect := append([]byte{0x10, 0x80, 0x10}, bytes.Repeat([]byte{'c'}, 2048)...) // a 2 KiB CONNECT body
	flood := make([]byte, 3*(burstSize+1024)+1024+5000)                             // ends in a bulk read of 5000 bytes
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
		if c.burst != nil || src.largest > len(buf) {
			t.Fatalf("bulk read after %d of the CONNECT's %d bytes: before authentication", len(got), len(connect))
		}
	}
	readsBefore := src.reads
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
		if len(src.data) == 0 && len(got) == len(connect)+len(flood) && c.burst != nil {
			t.Fatal("bulk buffer held once mochi has every byte sent: the next read waits for the client")
		}
	}
	if src.largest != burstSize {
		t.Fatalf("largest read of the connection %d bytes during a flood, want %d", src.largest, burstSize)
	}
	// Two reads (a plain one, then one in bulk) per 17 KiB, and the last one that finds
	// nothing.
	if reads, want := src.reads-readsBefore, 2*(len(flood)/(burstSize+len(buf))+1)+1; reads > want {
		t.Fatalf("%d reads of the connection for %d bytes, want at most %d", reads, len(flood), want)
	}
	if c.burst != nil {
		t.Fatal("bulk buffer held by a connection whose client sends nothing more")
	}
	if !bytes.Equal(got, append(append([]byte(nil), connect...), flood...)) {
		t.Fatal("bytes handed on differ from the bytes sent")
	}
}
