package loadtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"

	"golang.org/x/sys/unix"
)

// The bare MQTT peer is the baseline of the MQTT cases, as BareHandler is of the HTTP ones: it
// answers CONNECT with CONNACK, a QoS 1 PUBLISH with PUBACK, a QoS 2 PUBLISH with PUBREC, PUBREL
// with PUBCOMP and PINGREQ with PINGRESP, and does nothing else: no authentication, no
// storage, no subscribers. What it costs per message is what reading and answering costs in
// Go, the floor under any broker written the same way.
//
// It runs in one of two shapes, so that a run shows what the shape of the connection handling
// costs by itself:
//   - BareGoroutines: a goroutine per connection reading its net.Conn, as mochi-mqtt (and so
//     fleetgate) and most Go servers do. Go's poller wakes the connection's goroutine when bytes
//     arrive.
//   - BareEpoll: one OS thread waiting in epoll_wait(2) on every connection, reading and
//     answering whichever is ready, as mosquitto does. Linux only.
//
// In both, a read takes whatever the socket holds (up to 64 KiB), every complete packet in it
// is answered, and the answers go out in one write.
const (
	BareGoroutines = "goroutine"
	BareEpoll      = "epoll"
)

// bareMaxPacket bounds a packet (and so a connection's buffer): larger ones end the connection.
const bareMaxPacket = 1 << 20

// bareReadSize is what one read takes at most.
const bareReadSize = 64 << 10

var (
	// errBareMalformed ends a connection that sent bytes that are not MQTT.
	errBareMalformed = errors.New("bare-mqtt: malformed packet")
	// errBareUnsupported ends a connection that sent a packet the bare peer does not answer.
	errBareUnsupported = errors.New("bare-mqtt: only CONNECT, PUBLISH, PUBREL, PINGREQ and DISCONNECT are answered")
)

// bareSession is what the bare peer knows of a connection: the protocol version its CONNECT
// named (MQTT 5 gets a CONNACK with an empty property list).
type bareSession struct {
	v5        bool
	connected bool
}

// answer parses the complete packets at the start of in and appends their answers to out. It
// returns the bytes it used (a packet cut at the end of in is left for the next read) and an
// error when the connection must end: io.EOF after a DISCONNECT, errBareMalformed,
// errBareUnsupported.
func (s *bareSession) answer(in, out []byte) (used int, _ []byte, err error) {
	for {
		rest := in[used:]
		if len(rest) < 2 {
			return used, out, nil
		}
		length, hdr := 0, 1
		for shift := 0; ; shift += 7 {
			if hdr == len(rest) {
				return used, out, nil // the length is not all here yet
			}
			if hdr == 5 {
				return used, out, errBareMalformed // a fifth length byte
			}
			b := rest[hdr]
			hdr++
			length |= int(b&0x7f) << shift
			if b&0x80 == 0 {
				break
			}
		}
		if length > bareMaxPacket {
			return used, out, errBareMalformed
		}
		if len(rest) < hdr+length {
			return used, out, nil
		}
		typ, flags, body := rest[0]>>4, rest[0]&0x0f, rest[hdr:hdr+length]
		if !s.connected && typ != 1 {
			return used, out, errBareMalformed // [MQTT-3.1.0-1]: CONNECT comes first
		}
		switch typ {
		case 1: // CONNECT: protocol name (a length-prefixed string), then the level
			if s.connected || len(body) < 2 {
				return used, out, errBareMalformed
			}
			n := int(body[0])<<8 | int(body[1])
			if len(body) < 2+n+1 {
				return used, out, errBareMalformed
			}
			s.connected, s.v5 = true, body[2+n] == 5
			if s.v5 {
				out = append(out, 0x20, 0x03, 0x00, 0x00, 0x00)
			} else {
				out = append(out, 0x20, 0x02, 0x00, 0x00)
			}
		case 3: // PUBLISH: topic (a length-prefixed string), then the packet id from QoS 1
			qos := flags >> 1 & 3
			if qos == 3 || len(body) < 2 {
				return used, out, errBareMalformed
			}
			n := int(body[0])<<8 | int(body[1])
			if qos > 0 {
				if len(body) < 2+n+2 {
					return used, out, errBareMalformed
				}
				ack := byte(0x40) // PUBACK
				if qos == 2 {
					ack = 0x50 // PUBREC
				}
				out = append(out, ack, 0x02, body[2+n], body[3+n])
			} else if len(body) < 2+n {
				return used, out, errBareMalformed
			}
		case 4, 5, 7: // PUBACK, PUBREC, PUBCOMP: the bare peer sends no publish to acknowledge
		case 6: // PUBREL
			if len(body) < 2 {
				return used, out, errBareMalformed
			}
			out = append(out, 0x70, 0x02, body[0], body[1])
		case 12: // PINGREQ
			out = append(out, 0xd0, 0x00)
		case 14: // DISCONNECT
			return used + hdr + length, out, io.EOF
		case 8, 10, 15: // SUBSCRIBE, UNSUBSCRIBE, AUTH
			return used, out, errBareUnsupported
		default:
			return used, out, errBareMalformed
		}
		used += hdr + length
	}
}

// BareMQTT is a running bare MQTT peer.
type BareMQTT struct {
	mode string
	addr net.Addr
	ln   net.Listener // goroutine shape
	lfd  int          // epoll shape: the listening socket
	wake int          // epoll shape: an eventfd that ends Serve
}

// ListenBareMQTT opens the bare MQTT peer's listening socket on addr (host:port, port 0 for
// any) in the given shape, BareGoroutines or BareEpoll. Serve then answers its connections.
func ListenBareMQTT(addr, mode string) (*BareMQTT, error) {
	switch mode {
	case BareGoroutines:
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		return &BareMQTT{mode: mode, addr: ln.Addr(), ln: ln, lfd: -1, wake: -1}, nil
	case BareEpoll:
		return listenEpoll(addr)
	default:
		return nil, fmt.Errorf("%w: bare-mqtt mode %q: want %s or %s", ErrInvalidConfig, mode, BareGoroutines, BareEpoll)
	}
}

// Addr is the address the peer listens on.
func (b *BareMQTT) Addr() net.Addr { return b.addr }

// Serve answers connections until ctx ends, then closes them and the listening socket.
func (b *BareMQTT) Serve(ctx context.Context) error {
	if b.mode == BareEpoll {
		return b.serveEpoll(ctx)
	}
	return b.serveGoroutines(ctx)
}

func (b *BareMQTT) serveGoroutines(ctx context.Context) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
		wg    sync.WaitGroup
	)
	stop := context.AfterFunc(ctx, func() {
		_ = b.ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			_ = c.Close()
			continue
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			bareServeConn(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			_ = c.Close()
		}()
	}
}

// bareServeConn answers one connection on its own goroutine.
func bareServeConn(c net.Conn) {
	var (
		s   bareSession
		in  = make([]byte, 0, 4096)
		out []byte
	)
	for {
		if len(in) == cap(in) {
			in = append(in, make([]byte, min(cap(in), bareReadSize))...)[:len(in)]
		}
		n, err := c.Read(in[len(in):cap(in)])
		if n == 0 {
			return // err is never nil here: EOF, closed or broken
		}
		in = in[:len(in)+n]
		used, o, aerr := s.answer(in, out[:0])
		out = o
		if len(out) > 0 {
			if _, err := c.Write(out); err != nil {
				return
			}
		}
		if aerr != nil || err != nil {
			return
		}
		in = in[:copy(in, in[used:])]
	}
}

func listenEpoll(addr string) (*BareMQTT, error) {
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, err
	}
	var (
		family = unix.AF_INET
		sa     unix.Sockaddr
	)
	if ip4 := ta.IP.To4(); ip4 != nil || ta.IP == nil {
		a := &unix.SockaddrInet4{Port: ta.Port}
		copy(a.Addr[:], ip4)
		sa = a
	} else {
		family = unix.AF_INET6
		a := &unix.SockaddrInet6{Port: ta.Port}
		copy(a.Addr[:], ta.IP.To16())
		sa = a
	}
	lfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bare-mqtt: socket: %w", err)
	}
	fail := func(what string, err error) (*BareMQTT, error) {
		_ = unix.Close(lfd)
		return nil, fmt.Errorf("bare-mqtt: %s %s: %w", what, addr, err)
	}
	if err := unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("setsockopt", err)
	}
	if err := unix.Bind(lfd, sa); err != nil {
		return fail("bind", err)
	}
	if err := unix.Listen(lfd, 1024); err != nil {
		return fail("listen", err)
	}
	got, err := unix.Getsockname(lfd)
	if err != nil {
		return fail("getsockname", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fail("eventfd", err)
	}
	b := &BareMQTT{mode: BareEpoll, lfd: lfd, wake: wake}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		b.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]).To16(), Port: a.Port}
	case *unix.SockaddrInet6:
		b.addr = &net.TCPAddr{IP: net.IP(a.Addr[:]), Port: a.Port}
	}
	return b, nil
}

// epollConn is a connection of the epoll shape: what is left of its last read.
type epollConn struct {
	s  bareSession
	in []byte
}

func (b *BareMQTT) serveEpoll(ctx context.Context) error {
	// The loop blocks its thread in epoll_wait, as mosquitto's does.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("bare-mqtt: epoll_create1: %w", err)
	}
	conns := map[int32]*epollConn{}
	defer func() {
		for fd := range conns {
			_ = unix.Close(int(fd))
		}
		_ = unix.Close(ep)
		_ = unix.Close(b.lfd)
		_ = unix.Close(b.wake)
	}()
	for _, fd := range []int{b.lfd, b.wake} {
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return fmt.Errorf("bare-mqtt: epoll_ctl: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(b.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	})
	defer stop()
	end := func(fd int32) {
		_ = unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, int(fd), nil)
		_ = unix.Close(int(fd))
		delete(conns, fd)
	}
	var (
		events = make([]unix.EpollEvent, 128)
		buf    = make([]byte, bareReadSize)
		out    []byte
	)
	for {
		n, err := unix.EpollWait(ep, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("bare-mqtt: epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case b.wake:
				return nil
			case b.lfd:
				for {
					fd, _, err := unix.Accept4(b.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
					if err != nil {
						break // EAGAIN: none left; anything else: the next event tries again
					}
					_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
					if unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}) != nil {
						_ = unix.Close(fd)
						continue
					}
					conns[int32(fd)] = &epollConn{}
				}
				continue
			}
			c := conns[ev.Fd]
			if c == nil {
				continue
			}
			k, err := unix.Read(int(ev.Fd), buf)
			if err == unix.EAGAIN || err == unix.EINTR {
				continue // level-triggered: it is reported again when there is something
			}
			if k <= 0 {
				end(ev.Fd) // EOF, or the connection is broken
				continue
			}
			in := buf[:k]
			if len(c.in) > 0 { // a packet cut by the last read
				c.in = append(c.in, in...)
				in = c.in
			}
			used, o, aerr := c.s.answer(in, out[:0])
			out = o
			if len(out) > 0 {
				// An answer is 2 to 5 bytes: a socket buffer that does not take them whole
				// belongs to a client that does not read its answers; it is ended.
				if w, err := unix.Write(int(ev.Fd), out); err != nil || w < len(out) {
					end(ev.Fd)
					continue
				}
			}
			if aerr != nil {
				end(ev.Fd)
				continue
			}
			c.in = append(c.in[:0], in[used:]...)
		}
	}
}
