package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// checkJWKSURL accepts https URLs only: keys fetched over plain http could be replaced by
// anyone on the path, and with them every token.
func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", raw, err)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%q: only https is accepted (keys fetched over plain http could be replaced in transit); for a private CA, set auth.jwks_ca_file", raw)
	}
	if u.Host == "" {
		return fmt.Errorf("%q has no host", raw)
	}
	if u.User != nil {
		return fmt.Errorf("%q: credentials in the URL are not accepted", raw)
	}
	return nil
}

// jwksFetcher fetches auth.jwks_url: https only (redirects too), bounded in time and size.
type jwksFetcher struct {
	url    string
	client *http.Client
	now    func() time.Time
	log    *slog.Logger

	mu   sync.Mutex // serializes fetches
	last time.Time  // when the last fetch started, by the verifier's clock

	ok, failed *metrics.Counter
}

// newJWKSMetrics registers the jwks_url fetch counters.
func newJWKSMetrics(set *metrics.Set) (ok, failed *metrics.Counter) {
	return set.GetOrCreateCounter(`fleetgate_auth_jwks_fetches_total{result="ok"}`),
		set.GetOrCreateCounter(`fleetgate_auth_jwks_fetches_total{result="error"}`)
}

func newJWKSFetcher(cfg Config, now func() time.Time, log *slog.Logger, set *metrics.Set) (*jwksFetcher, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.JWKSCAFile != "" {
		pemData, err := os.ReadFile(cfg.JWKSCAFile)
		if err != nil {
			return nil, fmt.Errorf("auth.jwks_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemData) {
			return nil, fmt.Errorf("auth.jwks_ca_file: no PEM certificate in %s", cfg.JWKSCAFile)
		}
		tlsCfg.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	tr.MaxIdleConns = 2
	tr.ResponseHeaderTimeout = JWKSFetchTimeout
	f := &jwksFetcher{
		url: cfg.JWKSURL,
		client: &http.Client{
			Transport: tr,
			Timeout:   JWKSFetchTimeout,
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if req.URL.Scheme != "https" {
					return errors.New("redirected to a non-https URL")
				}
				if len(via) >= 3 {
					return errors.New("more than 3 redirects")
				}
				return nil
			},
		},
		now: now,
		log: log,
	}
	f.ok, f.failed = newJWKSMetrics(set)
	return f, nil
}

// count records the outcome of one refresh in fleetgate_auth_jwks_fetches_total.
func (f *jwksFetcher) count(err error) {
	if err != nil {
		f.failed.Inc()
	} else {
		f.ok.Inc()
	}
}

// claimRefetch reports whether a fetch for an unknown kid may start now (none started within
// JWKSMinRefetch), and if so books it.
func (f *jwksFetcher) claimRefetch() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	if !f.last.IsZero() && now.Sub(f.last) < JWKSMinRefetch {
		return false
	}
	f.last = now
	return true
}

// fetch downloads and parses the JWKS document. Fetches are serialized: a caller arriving
// during a fetch waits for it (and then fetches again itself).
func (f *jwksFetcher) fetch() ([]*verifyKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = f.now()
	req, err := http.NewRequest(http.MethodGet, f.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("answered HTTP %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the document: %w", err)
	}
	if len(data) > MaxJWKSBytes {
		return nil, fmt.Errorf("document larger than %d bytes", MaxJWKSBytes)
	}
	keys, skipped, err := parseJWKS(data)
	if err != nil {
		return nil, err
	}
	for _, s := range skipped {
		f.log.Warn("auth: JWKS key skipped", "url", f.url, "key", s)
	}
	for _, k := range keys {
		k.origin = strings.Replace(k.origin, "auth.jwks_file", "auth.jwks_url", 1)
	}
	return keys, nil
}
