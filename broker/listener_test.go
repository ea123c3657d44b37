package broker

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/internal/testutil"
)

type testPKI struct {
	caPool            *x509.CertPool
	caFile            string
	certFile, keyFile string // server
	clientD1, clientX tls.Certificate
	untrustedClientD1 tls.Certificate
}

func newPKI(t *testing.T) *testPKI {
	dir := t.TempDir()
	ca := testutil.NewCert(t, "test CA", nil, true)
	p := &testPKI{caPool: x509.NewCertPool()}
	p.caPool.AddCert(ca.X509)
	p.caFile, _ = ca.WriteFiles(t, dir, "ca")
	p.certFile, p.keyFile = testutil.NewCert(t, "fleetgate", ca, false).WriteFiles(t, dir, "server")
	p.clientD1 = testutil.NewCert(t, "d1", ca, false).TLS(t)
	p.clientX = testutil.NewCert(t, "someone-else", ca, false).TLS(t)
	p.untrustedClientD1 = testutil.NewCert(t, "d1", nil, false).TLS(t) // self-signed: not from the client CA
	return p
}

func TestMutualTLS(t *testing.T) {
	pki := newPKI(t)
	e := newEnv(t, "", func(c *Config, _ *Options) {
		c.TLSAddr = "127.0.0.1:0"
		c.TLS = TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, ClientCAFile: pki.caFile}
	})
	tlsAddr := e.broker.TLSAddr().String()
	tok := e.token("d1", "device", time.Hour)

	dial := func(cert *tls.Certificate) (*rawClient, error) {
		cfg := &tls.Config{RootCAs: pki.caPool, ServerName: "127.0.0.1"}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c, err := tls.Dial("tcp", tlsAddr, cfg)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { _ = c.Close() })
		rc := &rawClient{t: t, c: c, v: 4}
		rc.r = newReader(c)
		return rc, nil
	}

	// Certificate CN d1 + token of d1: accepted, and publishes are stored.
	rc, err := dial(&pki.clientD1)
	if err != nil {
		t.Fatal(err)
	}
	if ack := rc.connect("d1", tok, true, nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	rc.send(publishPacket("devices/d1/t", 1, 1, []byte("over tls")))
	if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode != 0 {
		t.Fatalf("PUBACK %+v %v", pk, err)
	}
	// A certificate for another subject: not authorized.
	rc, err = dial(&pki.clientX)
	if err != nil {
		t.Fatal(err)
	}
	if ack := rc.connect("d1", tok, true, nil); ack.ReasonCode != 0x05 {
		t.Fatalf("CN mismatch: CONNACK %#x, want 0x05", ack.ReasonCode)
	}
	// No certificate, or one from another CA: the handshake fails.
	for name, cert := range map[string]*tls.Certificate{"no certificate": nil, "untrusted certificate": &pki.untrustedClientD1} {
		rc, err := dial(cert)
		if err == nil {
			// TLS 1.3 reports the client certificate refusal on the first read.
			rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
				ClientIdentifier: "d1", Clean: true, PasswordFlag: true, Password: []byte(tok)}})
			if _, err = rc.read(); err == nil {
				t.Fatalf("%s: connection accepted", name)
			}
		}
	}
	// Plain TCP stays available on addr.
	if ack := dialRaw(t, e.addr, 4).connect("d1", tok, true, nil); ack.ReasonCode != 0 {
		t.Fatalf("plain CONNACK %#x", ack.ReasonCode)
	}
	if got := len(e.stored()); got != 1 {
		t.Fatalf("%d stored", got)
	}
}

func TestTLSOnAddr(t *testing.T) {
	pki := newPKI(t)
	e := newEnv(t, "", func(c *Config, _ *Options) {
		c.TLS = TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile}
	})
	if e.broker.TLSAddr() == nil || e.broker.Addr().String() != e.broker.TLSAddr().String() {
		t.Fatalf("addr %v tls %v: want TLS on addr", e.broker.Addr(), e.broker.TLSAddr())
	}
	c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: pki.caPool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := &rawClient{t: t, c: c, v: 5, r: newReader(c)}
	if ack := rc.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
}

func TestWebSocket(t *testing.T) {
	e := newEnv(t, "", func(c *Config, _ *Options) { c.WSAddr = "127.0.0.1:0" })
	opts := paho3Options("", "d1", e.token("d1", "device", time.Hour))
	opts.Servers = nil
	opts.AddBroker("ws://" + e.broker.WSAddr().String() + "/mqtt")
	c, code, err := connect3(t, opts)
	if code != 0 || err != nil {
		t.Fatalf("connect over websocket: %#x %v", code, err)
	}
	got := make(chan string, 1)
	if tok := c.Subscribe("devices/d1/cmd", 1, func(_ paho3Client, m paho3Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if tok := c.Publish("devices/d1/t", 1, false, "over ws"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if err := e.broker.Publish("devices/d1/cmd", []byte("down"), 1, false); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "down" {
			t.Fatalf("received %q", p)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("downlink not received over websocket")
	}
	if items := e.stored(); len(items) != 1 || string(items[0].Event.Data) != "over ws" {
		t.Fatalf("stored %+v", items)
	}
	// An idle WebSocket is closed by the CONNECT deadline too (checked on TCP in detail).
}

// TestCertificateOnlyDevices: with mqtt.tls.cert_role, a device with a certificate from the
// client CA and no password is its certificate's Common Name, under the role's policy; without
// cert_role, no password is refused as before.
func TestCertificateOnlyDevices(t *testing.T) {
	pki := newPKI(t)
	for _, role := range []string{"device", ""} {
		e := newEnv(t, "", func(c *Config, _ *Options) {
			c.TLSAddr = "127.0.0.1:0"
			c.TLS = TLSConfig{CertFile: pki.certFile, KeyFile: pki.keyFile, ClientCAFile: pki.caFile, CertRole: role}
		})
		dial := func(cert tls.Certificate, v byte) *rawClient {
			c, err := tls.Dial("tcp", e.broker.TLSAddr().String(), &tls.Config{RootCAs: pki.caPool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			return &rawClient{t: t, c: c, v: v, r: newReader(c)}
		}
		rc := dial(pki.clientD1, 5)
		ack := rc.connect("d1", "", true, nil)
		if role == "" {
			if ack.ReasonCode != packets.ErrBadUsernameOrPassword.Code {
				t.Fatalf("no password without cert_role: CONNACK %#x", ack.ReasonCode)
			}
			continue
		}
		if ack.ReasonCode != 0 {
			t.Fatalf("certificate-only CONNACK %#x", ack.ReasonCode)
		}
		rc.send(publishPacket("devices/d1/t", 1, 1, []byte("by certificate")))
		if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.ReasonCode != 0 {
			t.Fatalf("PUBACK %+v %v", pk, err)
		}
		rc.send(publishPacket("devices/d2/t", 1, 2, []byte("not mine")))
		if pk, err := rc.read(); err != nil || pk.ReasonCode != packets.ErrNotAuthorized.Code {
			t.Fatalf("publish outside the certificate's policy: %+v %v", pk, err)
		}
		stored := e.stored()
		if len(stored) != 1 || stored[0].Event.Subject != "d1" || stored[0].Event.Topic != "devices/d1/t" {
			t.Fatalf("stored %+v", stored)
		}
		// The client id must still be the certificate's subject.
		if ack := dial(pki.clientD1, 5).connect("d2", "", true, nil); ack.ReasonCode != packets.ErrNotAuthorized.Code {
			t.Fatalf("certificate of d1 as client d2: CONNACK %#x", ack.ReasonCode)
		}
	}
}
