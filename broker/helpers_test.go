package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/storage"
)

// failingAcceptor refuses everything with err.
type failingAcceptor struct{ err error }

func (a failingAcceptor) Accept(context.Context, []*event.Event, ingest.AcceptOptions) error {
	return a.err
}
func (a failingAcceptor) AcceptAsync(_ []*event.Event, _ ingest.AcceptOptions, done func(error)) {
	go done(a.err)
}

type env struct {
	t        testing.TB
	dir      string
	store    *storage.Store
	verifier *auth.Verifier
	broker   *Broker
	addr     string
}

func testLogger() *slog.Logger {
	if os.Getenv("BROKER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testAuthConfig() auth.Config {
	cfg := auth.DefaultConfig()
	cfg.Policies["monitor"] = auth.Policy{Subscribe: []string{"devices/#"}, AnyClientID: true}
	return cfg
}

// newEnv starts a store in dir (a new temp dir when ""), a verifier and a broker on 127.0.0.1:0.
func newEnv(t testing.TB, dir string, mod func(*Config, *Options), storeMod ...func(*storage.Options)) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	e := &env{t: t, dir: dir}
	so := storage.Options{Dir: dir + "/store", Logger: testLogger()}
	for _, m := range storeMod {
		m(&so)
	}
	st, err := storage.Open(so)
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	v, err := auth.New(testAuthConfig(), auth.Options{DataDir: dir, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	e.verifier = v
	cfg := DefaultConfig()
	cfg.Addr = "127.0.0.1:0"
	cfg.Presence.Enabled = false                                           // these tests count the events of publishes; presence_test.go turns it on
	gw, err := ingest.New(ingest.Options{Store: st, Logger: testLogger()}) // DefaultRouter: everything to "log"
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Gateway: gw, Auth: v, Store: st, Logger: testLogger()}
	if mod != nil {
		mod(&cfg, &opts)
	}
	opts.Config = cfg
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	e.broker = b
	if a := b.Addr(); a != nil {
		e.addr = a.String()
	}
	t.Cleanup(e.close)
	return e
}

func (e *env) close() {
	if e.broker != nil {
		_ = e.broker.Close()
		e.broker = nil
	}
	if e.store != nil {
		_ = e.store.Close()
		e.store = nil
	}
}

func (e *env) token(sub, role string, ttl time.Duration) string {
	e.t.Helper()
	now := time.Now()
	if ttl < 0 { // already expired: issued 2|ttl| ago, valid for |ttl|
		now, ttl = now.Add(2*ttl), -ttl
	}
	tok, err := e.verifier.Sign(auth.MintClaims(sub, "acme", role, map[string]any{"tier": "gold"}, ttl, now))
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// stored returns the events queued for function "log".
func (e *env) stored() []storage.Item {
	e.t.Helper()
	items, err := e.store.ReadQueue("log", 0, 100000)
	if err != nil {
		e.t.Fatal(err)
	}
	return items
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawClient speaks MQTT with mochi's packet codec, so that tests see every byte the broker sends.
type rawClient struct {
	t   testing.TB
	c   net.Conn
	r   *bufio.Reader
	v   byte
	wmu sync.Mutex
}

func dialRaw(t testing.TB, addr string, v byte) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{t: t, c: c, r: bufio.NewReader(c), v: v}
}

// connect sends CONNECT and returns the CONNACK.
func (rc *rawClient) connect(clientID, token string, clean bool, mod func(*packets.Packet)) packets.Packet {
	rc.t.Helper()
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName:     []byte("MQTT"),
			ClientIdentifier: clientID,
			Clean:            clean,
			Keepalive:        30,
			UsernameFlag:     true,
			Username:         []byte(clientID),
			PasswordFlag:     token != "",
			Password:         []byte(token),
		},
	}
	if rc.v == 5 {
		pk.Properties.ReceiveMaximum = 65535
	}
	if mod != nil {
		mod(&pk)
	}
	rc.send(pk)
	ack, err := rc.read()
	if err != nil {
		rc.t.Fatalf("reading CONNACK: %v", err)
	}
	if ack.FixedHeader.Type != packets.Connack {
		rc.t.Fatalf("got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	return ack
}

func (rc *rawClient) encode(pk packets.Packet) []byte {
	pk.ProtocolVersion = rc.v
	pk.Connect.ProtocolName = []byte("MQTT")
	if rc.v == 3 {
		pk.Connect.ProtocolName = []byte("MQIsdp")
	}
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	case packets.Pubrel:
		err = pk.PubrelEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	case packets.Pingreq:
		err = pk.PingreqEncode(&buf)
	case packets.Disconnect:
		err = pk.DisconnectEncode(&buf)
	default:
		err = fmt.Errorf("test client cannot encode type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		rc.t.Fatal(err)
	}
	return buf.Bytes()
}

func (rc *rawClient) send(pk packets.Packet) {
	rc.t.Helper()
	rc.wmu.Lock()
	defer rc.wmu.Unlock()
	if _, err := rc.c.Write(rc.encode(pk)); err != nil {
		rc.t.Errorf("writing packet: %v", err)
	}
}

// read returns the next packet from the broker (io.EOF-like errors when it closed).
func (rc *rawClient) read() (packets.Packet, error) {
	var pk packets.Packet
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := rc.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(rc.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = rc.v
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Pubrec:
		err = pk.PubrecDecode(body)
	case packets.Pubcomp:
		err = pk.PubcompDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingresp:
	default:
		err = fmt.Errorf("unexpected packet type %d", pk.FixedHeader.Type)
	}
	return pk, err
}

// expectClosed reads until the broker closes the connection; it returns the packets seen before.
func (rc *rawClient) expectClosed() []packets.Packet {
	rc.t.Helper()
	var seen []packets.Packet
	for {
		pk, err := rc.read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				rc.t.Fatalf("connection still open; packets seen: %v", seen)
			}
			return seen
		}
		seen = append(seen, pk)
	}
}

func publishPacket(topic string, qos byte, id uint16, payload []byte) packets.Packet {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
	}
	if qos > 0 {
		pk.PacketID = id
	}
	return pk
}

func newVerifierIn(dir string) (*auth.Verifier, error) {
	return auth.New(testAuthConfig(), auth.Options{DataDir: dir, Logger: testLogger()})
}

func mintDevice(sub string, ttl time.Duration) map[string]any {
	return auth.MintClaims(sub, "acme", "device", nil, ttl, time.Now())
}

func subscribePacket(filter string, qos byte) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}}
}

func pubackPacket(id uint16) packets.Packet {
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: id}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
