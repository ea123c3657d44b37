// Package cluster runs a fleetgate node in cluster mode: several gateway nodes sharing NATS
// JetStream (replicated Raft streams) for the durable log, the function queues and the KV
// buckets. This file holds the `cluster:` section of the config file; node.go starts (or
// connects to) NATS and tells whether this node has a quorum.
package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Defaults of the `cluster:` section.
const (
	DefaultName       = "fleetgate"
	DefaultReplicas   = 3
	DefaultSync       = SyncAlways
	DefaultPartitions = 8
	DefaultFailover   = 15 * time.Second

	// SyncAlways: JetStream fsyncs every write before it acknowledges it.
	SyncAlways = "always"
	// SyncInterval: JetStream acknowledges once a quorum holds the write in memory (written to
	// the OS page cache) and fsyncs every SyncIntervalPeriod.
	SyncInterval = "interval"

	// SyncIntervalPeriod is how often JetStream fsyncs with `sync: interval`. A simultaneous
	// power loss of a quorum of nodes can lose up to this much acknowledged data.
	SyncIntervalPeriod = time.Second

	// MaxPayload is the largest NATS message the embedded server accepts (8 MiB).
	MaxPayload = 8 << 20

	// MaxReplicas is the largest replication factor JetStream allows.
	MaxReplicas = 5
)

// Config is the `cluster:` section of the config file (YAML). Zero value: cluster mode off.
type Config struct {
	// Node names this node; unique per node (required when the section is present). It is the
	// NATS server name, so it must be a valid one (letters, digits, '-' and '_').
	Node string `yaml:"node"`
	// Name is the NATS cluster name, default "fleetgate". Nodes with different names never join.
	Name string `yaml:"name"`
	// Replicas of every stream and bucket, default 3; 1..5.
	Replicas int `yaml:"replicas"`
	// Sync is "always" (default: fsync before the ack) or "interval" (see SyncIntervalPeriod).
	Sync string `yaml:"sync"`
	// Partitions is the number of sender partitions of each function's queue (per-sender
	// order), default 8.
	Partitions int `yaml:"partitions"`
	// Failover is how long a dead node's work waits before another node takes it, default 15s.
	Failover time.Duration `yaml:"failover"`
	// NATS says where JetStream runs: embedded in this process, or an existing NATS cluster.
	NATS NATSConfig `yaml:"nats"`
}

// NATSConfig is `cluster.nats`: exactly one of Embedded and URL.
type NATSConfig struct {
	Embedded *EmbeddedConfig `yaml:"embedded"`
	// URL of an existing NATS cluster, e.g. nats://h1:4222,nats://h2:4222 (exclusive with
	// embedded).
	URL string `yaml:"url"`
}

// EmbeddedConfig is `cluster.nats.embedded`: a NATS server run in this process.
type EmbeddedConfig struct {
	// Listen is the NATS client listener, host:port (optional; "" = in-process connections only).
	Listen string `yaml:"listen"`
	// ClusterListen is the route listener, host:port; required with routes.
	ClusterListen string `yaml:"cluster_listen"`
	// Routes are the other nodes' cluster_listen as nats://host:port.
	Routes []string `yaml:"routes"`
	// StoreDir is where JetStream keeps its files, default <data_dir>/nats.
	StoreDir string `yaml:"store_dir"`
	// SecretFile holds the routes' shared secret (at least 32 characters, the same on every
	// node): a route that does not present it is refused. Without it, anything that reaches
	// cluster_listen with the cluster's name joins the cluster.
	SecretFile string `yaml:"secret_file"`
	// TLS of the routes: mutual TLS, every node presents its certificate and checks the
	// others' against the CA (nil: plain TCP).
	TLS *RouteTLS `yaml:"tls"`
}

// RouteTLS is `cluster.nats.embedded.tls`.
type RouteTLS struct {
	CertFile string `yaml:"cert_file"` // this node's certificate (PEM), naming the address the others reach it at
	KeyFile  string `yaml:"key_file"`
	CAFile   string `yaml:"ca_file"` // the CA that signed every node's certificate
}

// MinSecretLen is the shortest route secret accepted.
const MinSecretLen = 32

// Enabled reports whether the `cluster:` section turns cluster mode on.
func (c Config) Enabled() bool {
	return c.Node != "" || c.Name != "" || c.Replicas != 0 || c.Sync != "" || c.Partitions != 0 ||
		c.Failover != 0 || c.NATS.Embedded != nil || c.NATS.URL != ""
}

// WithDefaults returns c with the defaults filled in. With neither embedded nor url, it is
// embedded NATS with in-process connections only (a one-node cluster unless routes are given).
func (c Config) WithDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.Sync == "" {
		c.Sync = DefaultSync
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.Failover == 0 {
		c.Failover = DefaultFailover
	}
	if c.NATS.Embedded == nil && c.NATS.URL == "" {
		c.NATS.Embedded = &EmbeddedConfig{}
	}
	if e := c.NATS.Embedded; e != nil {
		cp := *e
		cp.Routes = append([]string(nil), e.Routes...)
		c.NATS.Embedded = &cp
	}
	return c
}

// validName is what a node or cluster name may hold: it becomes a NATS server or cluster name,
// which appear in subjects and Raft group names (no spaces, dots or wildcards).
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// Validate checks the section (after filling in the defaults, which it does in place) and
// returns every problem found, each naming the key concerned.
func (c *Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	*c = c.WithDefaults()
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	switch {
	case c.Node == "":
		add("cluster.node is required: a name unique per node, e.g. gw-1")
	case !validName.MatchString(c.Node):
		add("cluster.node %q is not a valid NATS server name: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit", c.Node)
	}
	if !validName.MatchString(c.Name) {
		add("cluster.name %q is not a valid NATS cluster name: use 1 to 64 letters, digits, '-' or '_', starting with a letter or digit", c.Name)
	}
	if c.Replicas < 1 || c.Replicas > MaxReplicas {
		add("cluster.replicas %d: must be 1 to %d", c.Replicas, MaxReplicas)
	}
	if c.Sync != SyncAlways && c.Sync != SyncInterval {
		add("cluster.sync %q: must be %q or %q", c.Sync, SyncAlways, SyncInterval)
	}
	if c.Partitions < 1 || c.Partitions > 1024 {
		add("cluster.partitions %d: must be 1 to 1024", c.Partitions)
	}
	if c.Failover < 0 {
		add("cluster.failover %s: must be positive", c.Failover)
	}

	e := c.NATS.Embedded
	if e != nil && c.NATS.URL != "" {
		add("cluster.nats: embedded and url are exclusive: run NATS in this process (embedded) or use an existing NATS cluster (url), not both")
	}
	if c.NATS.URL != "" {
		for _, u := range strings.Split(c.NATS.URL, ",") {
			if err := checkURL(strings.TrimSpace(u), "nats", "tls", "ws", "wss"); err != nil {
				add("cluster.nats.url: %v", err)
			}
		}
	}
	if e != nil && c.NATS.URL == "" {
		if e.Listen != "" {
			if err := checkHostPort(e.Listen); err != nil {
				add("cluster.nats.embedded.listen: %v", err)
			}
		}
		if e.ClusterListen != "" {
			if err := checkHostPort(e.ClusterListen); err != nil {
				add("cluster.nats.embedded.cluster_listen: %v", err)
			}
		}
		if len(e.Routes) == 0 && e.ClusterListen != "" {
			add("cluster.nats.embedded.cluster_listen without routes: NATS runs a JetStream cluster only with routes to the other nodes (name them in cluster.nats.embedded.routes, or drop cluster_listen for one node)")
		}
		if len(e.Routes) > 0 && e.ClusterListen == "" {
			add("cluster.nats.embedded.cluster_listen is required with routes: the address the other nodes' routes reach this node at")
		}
		if t := e.TLS; t != nil && (t.CertFile == "" || t.KeyFile == "" || t.CAFile == "") {
			add("cluster.nats.embedded.tls: cert_file, key_file and ca_file are all required (mutual TLS between the nodes)")
		}
		others := map[string]bool{}
		for i, r := range e.Routes {
			if err := checkURL(r, "nats", "nats-route"); err != nil {
				add("cluster.nats.embedded.routes[%d]: %v", i, err)
				continue
			}
			u, _ := url.Parse(r)
			if e.ClusterListen != "" && sameAddr(u.Host, e.ClusterListen) {
				continue // this node itself (one route list shared by every node)
			}
			others[strings.ToLower(u.Host)] = true
		}
		if c.Replicas > 1 && len(others)+1 < c.Replicas {
			add("cluster.replicas %d needs at least %d nodes; cluster.nats.embedded.routes names %d other", c.Replicas, c.Replicas, len(others))
		}
	}
	return errors.Join(errs...)
}

// checkURL checks a NATS URL: scheme among schemes, a host and a port, nothing else.
func checkURL(s string, schemes ...string) error {
	if s == "" {
		return errors.New("empty URL")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("%q is not a URL: %v", s, err)
	}
	ok := false
	for _, sc := range schemes {
		if u.Scheme == sc {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("%q: the scheme must be %s://", s, strings.Join(schemes, ":// or "))
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host", s)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" {
		return fmt.Errorf("%q: a NATS URL is nats://host:port, without a path or query", s)
	}
	if err := checkHostPort(u.Host); err != nil {
		return fmt.Errorf("%q: %v", s, err)
	}
	return nil
}

// checkHostPort checks host:port with a port in 1..65535 (an empty host means every interface).
func checkHostPort(hp string) error {
	_, port, err := net.SplitHostPort(hp)
	if err != nil {
		return fmt.Errorf("%q is not host:port: %v", hp, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("%q: port %q is not 1..65535", hp, port)
	}
	return nil
}

// sameAddr reports whether two host:port name the same listener, as far as the text tells.
func sameAddr(a, b string) bool {
	ah, ap, err1 := net.SplitHostPort(a)
	bh, bp, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil {
		return strings.EqualFold(a, b)
	}
	return ap == bp && strings.EqualFold(ah, bh)
}

// splitHostPort splits a validated host:port.
func splitHostPort(hp string) (string, int) {
	h, p, _ := net.SplitHostPort(hp)
	n, _ := strconv.Atoi(p)
	if h == "" {
		h = "0.0.0.0"
	}
	return h, n
}

// routeSecurity reads the route secret and loads the route TLS files ("" and nil when not
// configured), at start: errors name the key.
func (e *EmbeddedConfig) routeSecurity() (secret string, tc *tls.Config, err error) {
	if e.SecretFile != "" {
		b, err := os.ReadFile(e.SecretFile)
		if err != nil {
			return "", nil, fmt.Errorf("cluster.nats.embedded.secret_file: %w", err)
		}
		if secret = strings.TrimSpace(string(b)); len(secret) < MinSecretLen {
			return "", nil, fmt.Errorf("cluster.nats.embedded.secret_file %s: the secret has %d characters, at least %d are needed (e.g. openssl rand -hex 32)",
				e.SecretFile, len(secret), MinSecretLen)
		}
	}
	if e.TLS != nil {
		if tc, err = routeTLSConfig(e.TLS); err != nil {
			return "", nil, fmt.Errorf("cluster.nats.embedded.tls: %w", err)
		}
	}
	return secret, tc, nil
}

// routeTLSConfig loads t: the node's certificate, offered to and required from every other
// node, checked against the CA.
func routeTLSConfig(t *RouteTLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cert_file %s / key_file %s: %w", t.CertFile, t.KeyFile, err)
	}
	pem, err := os.ReadFile(t.CAFile)
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", t.CAFile)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}
