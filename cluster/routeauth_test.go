package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/internal/testutil"
)

// routeCerts writes a CA and one certificate it signed for 127.0.0.1 (server and client use),
// and returns the TLS section naming them.
func routeCerts(t *testing.T) *RouteTLS {
	t.Helper()
	dir := t.TempDir()
	ca := testutil.NewCert(t, "fleetgate test CA", nil, true)
	caFile, _ := ca.WriteFiles(t, dir, "ca")
	certFile, keyFile := testutil.NewCert(t, "gw", ca, false).WriteFiles(t, dir, "gw")
	return &RouteTLS{CAFile: caFile, CertFile: certFile, KeyFile: keyFile}
}

// TestRouteSecretAndTLS: with secret_file and tls, the route port asks for TLS and
// credentials; a node with another secret never joins (and says which routes it waits for);
// with the right one it does.
func TestRouteSecretAndTLS(t *testing.T) {
	t.Parallel()
	tlsCfg := routeCerts(t)
	dir := t.TempDir()
	secret := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := secret("good", strings.Repeat("a1", 20))
	bad := secret("bad", strings.Repeat("b2", 20))
	tns := threeNodes(t)
	for _, tn := range tns {
		tn.cfg.NATS.Embedded.SecretFile, tn.cfg.NATS.Embedded.TLS = good, tlsCfg
		tn.cfg.Replicas = 2 // two nodes make a working cluster while the third is refused
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nodes := startAll(t, ctx, tns[:2]) // 2 of 3: a quorum
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()

	// The route port speaks TLS only (no plain INFO), wants a client certificate, and then
	// credentials.
	addr := tns[0].cfg.NATS.Embedded.ClusterListen
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if line, _ := bufio.NewReader(c).ReadString('\n'); strings.Contains(line, "INFO") {
		t.Fatalf("the route port answered in plain text: %q", line)
	}
	c.Close()
	tc, err := routeTLSConfig(tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "127.0.0.1"
	noCert := tc.Clone()
	noCert.Certificates = nil
	if c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, noCert); err == nil {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if line, _ := bufio.NewReader(c).ReadString('\n'); strings.Contains(line, "INFO") {
			t.Fatalf("a route without a client certificate got %q", line)
		}
		c.Close()
	}
	tconn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
	if err != nil {
		t.Fatalf("TLS to the route port with the node certificate: %v", err)
	}
	_ = tconn.SetReadDeadline(time.Now().Add(5 * time.Second))
	info, err := bufio.NewReader(tconn).ReadString('\n')
	tconn.Close()
	if err != nil || !strings.Contains(info, `"auth_required":true`) {
		t.Fatalf("route INFO over TLS %q (%v): want auth_required", info, err)
	}

	// Another secret: the node never joins.
	tns[2].cfg.NATS.Embedded.SecretFile = bad
	sctx, scancel := context.WithTimeout(context.Background(), 4*time.Second)
	n3, err := Start(sctx, tns[2].cfg, tns[2].opts())
	scancel()
	if err == nil {
		n3.Close()
		t.Fatal("a node with another route secret joined the cluster")
	}
	if !strings.Contains(err.Error(), "waiting for routes") {
		t.Fatalf("start with a wrong secret: %v (want the routes it waits for named)", err)
	}
	for _, p := range nodes[0].Status().Peers {
		if p.Name == "gw-3" && p.Online {
			t.Fatal("gw-3 with a wrong secret is online")
		}
	}

	// The right secret: it joins.
	tns[2].cfg.NATS.Embedded.SecretFile = good
	n3, err = Start(ctx, tns[2].cfg, tns[2].opts())
	if err != nil {
		t.Fatalf("start with the right secret: %v\n%s", err, tns[2].logs)
	}
	nodes = append(nodes, n3)
	waitFor(t, 10*time.Second, "three peers online", func() error {
		on := 0
		for _, p := range nodes[0].Status().Peers {
			if p.Online {
				on++
			}
		}
		if on != 3 {
			return fmt.Errorf("%d online", on)
		}
		return nil
	})
}
