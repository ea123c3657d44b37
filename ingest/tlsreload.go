package ingest

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
)

// certReloader serves the HTTP listener's certificate and can load it again from its files,
// so that a renewed certificate is used for new connections without a restart.
type certReloader struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("http: loading http.tls.cert_file/key_file: %w", err)
	}
	r.cur.Store(&cert)
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.cur.Load(), nil }

// ReloadTLS reads http.tls.cert_file and key_file again; new connections get the new
// certificate, open ones keep theirs. On error the current certificate stays. Nothing to do
// without http.tls.
func (s *Server) ReloadTLS() error {
	if s.cert == nil {
		return nil
	}
	return s.cert.load()
}
