package broker

import (
	"crypto/tls"
	"os"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestReloadTLS: after the certificate files are replaced (a renewal, here by another CA),
// ReloadTLS (SIGHUP) makes new connections get the new certificate while the open one stays up;
// a broken file keeps the current certificate.
func TestReloadTLS(t *testing.T) {
	old, renewed := newPKI(t), newPKI(t)
	e := newEnv(t, "", func(c *Config, _ *Options) {
		c.TLS = TLSConfig{CertFile: old.certFile, KeyFile: old.keyFile}
	})
	dial := func(p *testPKI) (*rawClient, error) {
		c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: p.caPool, ServerName: "127.0.0.1"})
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { _ = c.Close() })
		return &rawClient{t: t, c: c, v: 5, r: newReader(c)}, nil
	}
	open, err := dial(old)
	if err != nil {
		t.Fatal(err)
	}
	if ack := open.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK %#x", ack.ReasonCode)
	}
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A half-written renewal: the reload fails and the old certificate stays.
	copyFile(renewed.certFile, old.certFile)
	if err := e.broker.ReloadTLS(); err == nil {
		t.Fatal("ReloadTLS with a certificate that does not match its key: no error")
	}
	if _, err := dial(old); err != nil {
		t.Fatalf("after a failed reload the old certificate is gone: %v", err)
	}
	copyFile(renewed.keyFile, old.keyFile)
	if err := e.broker.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(old); err == nil {
		t.Fatal("after the reload a new connection still gets the old certificate")
	}
	rc, err := dial(renewed)
	if err != nil {
		t.Fatalf("new connection after the reload: %v", err)
	}
	if ack := rc.connect("d2", e.token("d2", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
		t.Fatalf("CONNACK after reload %#x", ack.ReasonCode)
	}
	// The connection opened before the reload is still up.
	open.send(publishPacket("devices/d1/t", 1, 9, []byte("still here")))
	if pk, err := open.read(); err != nil || pk.FixedHeader.Type != packets.Puback || pk.PacketID != 9 {
		t.Fatalf("publish on the connection opened before the reload: %+v %v", pk.FixedHeader, err)
	}
}
