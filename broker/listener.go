package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

var _ listeners.Listener = (*listener)(nil)

type listenerSpec struct {
	id   string
	addr string
	tls  *tls.Config
	ws   bool
}

// listener is a mochi listener that does what mochi's do not: every new connection gets a
// deadline for TLS and CONNECT (mochi's first read has none, so an idle TCP connection would
// stay forever), its first packet must be a small CONNECT (firstPacketConn), connections
// beyond max_clients plus a margin for handshakes, or beyond max_conns_per_ip from one
// address, are closed at once.
type listener struct {
	id        string
	ln        net.Listener
	ws        *http.Server
	b         *Broker
	log       *slog.Logger
	open      *atomic.Int64 // connections open on all listeners
	establish atomic.Pointer[listeners.EstablishFn]

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open connections, so that Close can end them all
	cwg   sync.WaitGroup        // serveConn calls running
	wg    sync.WaitGroup
	done  atomic.Bool
}

// connectMargin is how many connections beyond max_clients may be in their CONNECT phase.
const connectMargin = 1024

func (b *Broker) listen(sp listenerSpec) (*listener, error) {
	ln, err := net.Listen("tcp", sp.addr)
	if err != nil {
		return nil, fmt.Errorf("mqtt listener %s on %s: %w", sp.id, sp.addr, err)
	}
	if sp.tls != nil {
		ln = tls.NewListener(ln, sp.tls)
	}
	l := &listener{id: sp.id, ln: ln, b: b, open: &b.openConns}
	if sp.ws {
		up := &websocket.Upgrader{
			Subprotocols:    []string{"mqtt"},
			CheckOrigin:     func(*http.Request) bool { return true },
			ReadBufferSize:  1024,
			WriteBufferSize: 1024,
		}
		l.ws = &http.Server{
			ReadHeaderTimeout: b.cfg.ConnectTimeout,
			ErrorLog:          nil,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, err := up.Upgrade(w, r, nil)
				if err != nil {
					return
				}
				l.serveConn(&wsConn{Conn: c.UnderlyingConn(), c: c})
			}),
		}
	}
	return l, nil
}

func (l *listener) ID() string       { return l.id }
func (l *listener) Address() string  { return l.ln.Addr().String() }
func (l *listener) Protocol() string { return l.id }

func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve accepts connections until Close.
func (l *listener) Serve(establish listeners.EstablishFn) {
	l.wg.Add(1)
	defer l.wg.Done()
	l.establish.Store(&establish)
	if l.ws != nil {
		if err := l.ws.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !l.done.Load() {
			l.b.log.Error("mqtt websocket listener stopped", "listener", l.id, "error", err)
		}
		return
	}
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			if l.done.Load() {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			l.b.log.Error("mqtt listener stopped", "listener", l.id, "error", err)
			return
		}
		go l.serveConn(conn)
	}
}

// serveConn runs one connection through mochi (blocking until it ends). Its frame stays on
// the connection's goroutine stack under mochi's for the whole connection, so what it does
// before and after is done by openConn and connEnded: an idle connection's stack can then
// shrink to 4 KiB (BenchmarkIdleConnectionMemory).
func (l *listener) serveConn(conn net.Conn) {
	ip, ok := l.openConn(conn)
	if !ok {
		_ = conn.Close()
		return
	}
	defer l.closeConn(conn, ip)
	est := l.establish.Load()
	if est == nil {
		return
	}
	if err := (*est)(l.id, &firstPacketConn{Conn: conn, max: min(l.b.cfg.MaxConnectBytes, l.b.cfg.MaxPacketBytes)}); err != nil {
		l.connEnded(conn, err)
	}
}

// openConn admits a new connection (max_clients with its margin, max_conns_per_ip), registers
// it for Close and gives it the CONNECT deadline; false when it is refused (the caller closes
// it). Every connection it admits must be released by closeConn.
func (l *listener) openConn(conn net.Conn) (ip string, ok bool) {
	b := l.b
	if n := l.open.Add(1); n > int64(b.cfg.MaxClients)+connectMargin {
		l.open.Add(-1)
		b.m.connectFull.Inc()
		return "", false
	}
	ip = remoteIP(conn)
	if !b.admitIP(ip) {
		l.open.Add(-1)
		b.m.connectPerIP.Inc()
		return "", false
	}
	l.mu.Lock()
	if l.done.Load() {
		l.mu.Unlock()
		b.releaseIP(ip)
		l.open.Add(-1)
		return "", false
	}
	if l.conns == nil {
		l.conns = map[net.Conn]struct{}{}
	}
	l.conns[conn] = struct{}{}
	l.cwg.Add(1)
	l.mu.Unlock()
	// mochi replaces this deadline with the keepalive once CONNECT is accepted.
	_ = conn.SetDeadline(time.Now().Add(b.cfg.ConnectTimeout))
	return ip, true
}

// closeConn closes a connection openConn admitted and releases what it counted.
func (l *listener) closeConn(conn net.Conn, ip string) {
	_ = conn.Close()
	l.mu.Lock()
	delete(l.conns, conn)
	l.mu.Unlock()
	l.cwg.Done()
	l.b.releaseIP(ip)
	l.open.Add(-1)
}

// connEnded counts and logs why a connection ended with an error.
func (l *listener) connEnded(conn net.Conn, err error) {
	b := l.b
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		b.m.connectTimeouts.Inc()
	case errors.Is(err, errFirstPacket):
		b.m.connectBadFirst.Inc()
	}
	b.log.Debug("mqtt connection ended", "listener", l.id, "remote", conn.RemoteAddr().String(), "error", err)
}

// Close stops accepting, disconnects this listener's clients (mochi's closeClients: MQTT 5
// gets "server shutting down"), closes connections still in their CONNECT phase, and waits
// until every connection has ended. (mochi's CloseAll then waits on a WaitGroup its
// connections Add to; no connection may start after that.)
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	first := l.done.CompareAndSwap(false, true)
	l.mu.Unlock()
	if first {
		if l.ws != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = l.ws.Shutdown(ctx)
			cancel()
		}
		_ = l.ln.Close()
	}
	// Not mochi's closeClients: its Clients.GetByListener takes a read lock twice and deadlocks
	// against a concurrent Clients.Delete (upstream mochi-mqtt/server#488). The broker's own
	// session map names the same clients; the connections still in CONNECT are closed below.
	l.b.disconnectListener(l.id)
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.cwg.Wait()
}

// firstPacketConn guards the first packet of a connection, read before the client is
// authenticated. mochi allocates a packet's declared remaining length before reading it, so
// without this a client that sends only a fixed header declaring max_packet_bytes would make
// the broker hold that much for the whole connect deadline, unauthenticated. It reads the first
// fixed header itself (at most 5 bytes, one at a time, so nothing beyond it is consumed) and
// closes the connection unless it is a CONNECT declaring at most max bytes. From then on it is
// transparent: the header bytes are handed to mochi first, then the connection's own.
type firstPacketConn struct {
	net.Conn
	max     int
	hdr     [5]byte
	n, off  int  // header bytes read; header bytes handed out
	checked bool // the header passed

	// burst is a larger read buffer for a connection that sends faster than mochi's 1 KiB
	// buffer takes it in (a QoS 0 flood: about 4 messages per read system call). After a read
	// that filled all mochi asked for, the next reads into a 16 KiB buffer from burstPool,
	// which goes back to the pool once mochi has had its bytes; the read after that is a
	// plain one again. So a connection waiting for its client holds none (unless its data
	// stopped exactly where a read's ended), and a flood takes two reads per 17 KiB instead of
	// seventeen. A connection reads in bulk only once mochi has had its whole CONNECT (first
	// bytes), that is once it is authenticated: mochi reads nothing more before.
	burst         *[]byte
	bOff, bLen    int  // unread bytes: (*burst)[bOff:bLen]
	bulk          bool // the last read filled all mochi asked for: the next one reads in bulk
	first, handed int  // the CONNECT's bytes, header included; bytes handed to mochi so far
}

// burstSize is the size of a connection's burst read buffer.
const burstSize = 16 << 10

var burstPool = sync.Pool{New: func() any { b := make([]byte, burstSize); return &b }}

// errFirstPacket ends a connection whose first packet is not a CONNECT within max_connect_bytes.
var errFirstPacket = errors.New("first packet is not a CONNECT within mqtt.max_connect_bytes")

func (c *firstPacketConn) Read(p []byte) (int, error) {
	if !c.checked {
		if err := c.readHeader(); err != nil {
			return 0, err
		}
	}
	if c.off < c.n {
		k := copy(p, c.hdr[c.off:c.n])
		c.off += k
		c.handed += k
		return k, nil
	}
	if c.burst != nil { // what the last bulk read brought
		k := copy(p, (*c.burst)[c.bOff:c.bLen])
		c.bOff += k
		if c.bOff == c.bLen {
			c.dropBurst() // not held across a read that may wait for an idle client
		}
		return k, nil
	}
	if c.bulk {
		// The last read filled all mochi asked for: more is waiting, read it in bulk.
		c.bulk = false
		b := burstPool.Get().(*[]byte)
		n, err := c.Conn.Read(*b)
		if n == 0 {
			burstPool.Put(b)
			return 0, err
		}
		k := copy(p, (*b)[:n])
		if k == n {
			burstPool.Put(b)
		} else {
			c.burst, c.bOff, c.bLen = b, k, n
		}
		return k, nil
	}
	authenticated := c.handed >= c.first
	n, err := c.Conn.Read(p)
	c.handed += n
	c.bulk = authenticated && n == len(p) && n > 0 && len(p) < burstSize && err == nil
	return n, err
}

func (c *firstPacketConn) dropBurst() {
	burstPool.Put(c.burst)
	c.burst, c.bOff, c.bLen = nil, 0, 0
}

func (c *firstPacketConn) readHeader() error {
	for {
		if c.n > 0 {
			if c.hdr[0] != packets.Connect<<4 { // CONNECT, flags 0 [MQTT-2.2.2-2]
				return c.refuse()
			}
			length, mult := 0, 1
			for i := 1; i < c.n; i++ {
				length += int(c.hdr[i]&0x7f) * mult
				if c.hdr[i]&0x80 == 0 {
					if length > c.max {
						return c.refuse()
					}
					c.checked, c.first = true, c.n+length
					return nil
				}
				mult *= 128
			}
			if c.n == len(c.hdr) { // a fifth length byte: malformed
				return c.refuse()
			}
		}
		k, err := c.Conn.Read(c.hdr[c.n : c.n+1])
		c.n += k
		if err != nil && k == 0 {
			return err
		}
	}
}

func (c *firstPacketConn) refuse() error {
	_ = c.Conn.Close()
	return errFirstPacket
}

// tlsConn returns the TLS connection under c, or nil.
func tlsConn(c net.Conn) *tls.Conn {
	if fc, ok := c.(*firstPacketConn); ok {
		c = fc.Conn
	}
	tc, _ := c.(*tls.Conn)
	return tc
}

// remoteIP is the address max_conns_per_ip counts by.
func remoteIP(c net.Conn) string {
	a := c.RemoteAddr()
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// loopback reports whether ip is a loopback address: a local proxy or load generator, not
// counted by max_conns_per_ip (a remote attacker cannot connect from there).
func loopback(ip string) bool {
	if countLoopback.Load() {
		return false
	}
	a := net.ParseIP(ip)
	return a != nil && a.IsLoopback()
}

// countLoopback makes max_conns_per_ip count loopback addresses too (tests only: they have no
// other address).
var countLoopback atomic.Bool

// admitIP counts a new connection from ip; false (and nothing counted) beyond max_conns_per_ip.
func (b *Broker) admitIP(ip string) bool {
	limit := b.cfg.MaxConnsPerIP
	if limit <= 0 || loopback(ip) {
		return true
	}
	b.ipMu.Lock()
	defer b.ipMu.Unlock()
	if b.perIP[ip] >= limit {
		return false
	}
	if b.perIP == nil {
		b.perIP = map[string]int{}
	}
	b.perIP[ip]++
	return true
}

func (b *Broker) releaseIP(ip string) {
	if b.cfg.MaxConnsPerIP <= 0 || loopback(ip) {
		return
	}
	b.ipMu.Lock()
	defer b.ipMu.Unlock()
	if b.perIP[ip] <= 1 {
		delete(b.perIP, ip)
	} else {
		b.perIP[ip]--
	}
}

// load reads the certificate and client CAs; nil when TLS is not configured.
func (t TLSConfig) load() (*tls.Config, error) {
	if !t.Enabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: mqtt.tls: loading cert_file/key_file: %w", ErrInvalidConfig, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: mqtt.tls.client_ca_file: %w", ErrInvalidConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: mqtt.tls.client_ca_file: no PEM certificate in %s", ErrInvalidConfig, t.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// wsConn carries MQTT over binary WebSocket messages; deadlines apply to the underlying conn.
type wsConn struct {
	net.Conn
	c *websocket.Conn
	r io.Reader
}

var errWSMessage = errors.New("websocket message is not binary")

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errWSMessage
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}
