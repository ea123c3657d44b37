package ingest

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"testing"
)

// ReloadTLS swaps a renewed certificate in for new connections; a failed reload keeps the old.
func TestReloadTLSCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, oldPool := selfSigned(t, dir)
	ts := startServer(t, func(c *HTTPConfig) { c.TLS = TLSConfig{CertFile: certFile, KeyFile: keyFile} })
	get := func(pool *x509.CertPool) error {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		resp, err := client.Get("https://" + ts.srv.Addr().String() + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(oldPool); err != nil {
		t.Fatal(err)
	}
	newCert, newKey, newPool := selfSigned(t, t.TempDir())
	for src, dst := range map[string]string{newCert: certFile, newKey: keyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := ts.srv.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if err := get(newPool); err != nil {
		t.Fatalf("new certificate after reload: %v", err)
	}
	if err := get(oldPool); err == nil {
		t.Fatal("old certificate still served after reload")
	}
	if err := os.WriteFile(certFile, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ts.srv.ReloadTLS(); err == nil {
		t.Fatal("reload of a bad certificate succeeded")
	}
	if err := get(newPool); err != nil {
		t.Fatalf("a failed reload dropped the certificate: %v", err)
	}
}
