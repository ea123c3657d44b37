package broker

import (
	"crypto/tls"
	"sync/atomic"
)

// tlsSource is the TLS configuration of the MQTT listeners (mqtt.tls), which ReloadTLS loads
// again from its files: new connections get the new certificate and client CAs, open ones keep
// theirs, so a renewed certificate needs no restart and drops no device.
type tlsSource struct {
	spec TLSConfig
	cur  atomic.Pointer[tls.Config]
}

// newTLSSource loads spec; nil without mqtt.tls.
func newTLSSource(spec TLSConfig) (*tlsSource, error) {
	if !spec.Enabled() {
		return nil, nil
	}
	s := &tlsSource{spec: spec}
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *tlsSource) load() error {
	cfg, err := s.spec.load()
	if err != nil {
		return err
	}
	s.cur.Store(cfg)
	return nil
}

// config is what the listeners use: every handshake takes the configuration loaded last.
func (s *tlsSource) config() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.cur.Load(), nil },
	}
}

// ReloadTLS reads mqtt.tls.cert_file, key_file and client_ca_file again (SIGHUP). On error
// the current configuration stays in use. Nothing to do without mqtt.tls.
func (b *Broker) ReloadTLS() error {
	if b.tls == nil {
		return nil
	}
	return b.tls.load()
}
