package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestConfigYAMLShape(t *testing.T) {
	// The shape of DESIGN.md, "Cluster mode".
	const doc = `
cluster:
  node: gw-1
  replicas: 3
  sync: always
  nats:
    embedded:
      listen: 127.0.0.1:4222
      cluster_listen: 127.0.0.1:6222
      routes: [nats://127.0.0.1:6223, nats://127.0.0.1:6224]
      store_dir: ""
`
	var f struct {
		Cluster Config `yaml:"cluster"`
	}
	if err := yaml.Unmarshal([]byte(doc), &f); err != nil {
		t.Fatal(err)
	}
	c := f.Cluster
	if !c.Enabled() {
		t.Fatal("not enabled")
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Node != "gw-1" || c.Name != DefaultName || c.Replicas != 3 || c.Sync != SyncAlways ||
		c.Partitions != DefaultPartitions || c.Failover != DefaultFailover ||
		c.NATS.Embedded.Listen != "127.0.0.1:4222" || c.NATS.Embedded.ClusterListen != "127.0.0.1:6222" ||
		len(c.NATS.Embedded.Routes) != 2 {
		t.Fatalf("%+v %+v", c, c.NATS.Embedded)
	}

	var off Config
	if off.Enabled() || off.Validate() != nil {
		t.Fatal("the zero Config must be off and valid")
	}
	if err := yaml.Unmarshal([]byte("cluster:\n  node: a\n  failover: 30s\n  nats: {url: nats://h1:4222}\n"), &f); err != nil {
		t.Fatal(err)
	}
	if f.Cluster.Failover != 30*time.Second {
		t.Fatalf("failover %s", f.Cluster.Failover)
	}
}

func TestConfigWithDefaultsCopies(t *testing.T) {
	e := &EmbeddedConfig{Routes: []string{"nats://a:1"}}
	c := Config{Node: "n", NATS: NATSConfig{Embedded: e}}.WithDefaults()
	c.NATS.Embedded.Routes[0] = "changed"
	if e.Routes[0] != "nats://a:1" {
		t.Fatal("WithDefaults shares the embedded config")
	}
	if c := (Config{Node: "n"}).WithDefaults(); c.NATS.Embedded == nil {
		t.Fatal("no nats section: embedded by default")
	}
}

func TestConfigValidate(t *testing.T) {
	emb := func(listen string, routes ...string) NATSConfig {
		return NATSConfig{Embedded: &EmbeddedConfig{ClusterListen: listen, Routes: routes}}
	}
	three := emb("127.0.0.1:6222", "nats://127.0.0.1:6223", "nats://127.0.0.1:6224")
	cases := []struct {
		name string
		cfg  Config
		want string // "" = valid
	}{
		{"three nodes", Config{Node: "gw-1", NATS: three}, ""},
		{"one shared route list naming itself", Config{Node: "gw-1", NATS: emb("127.0.0.1:6222",
			"nats://127.0.0.1:6222", "nats://127.0.0.1:6223", "nats://127.0.0.1:6224")}, ""},
		{"one node R1", Config{Node: "solo", Replicas: 1}, ""},
		{"url", Config{Node: "gw-1", NATS: NATSConfig{URL: "nats://h1:4222, nats://h2:4222"}}, ""},
		{"interval", Config{Node: "gw-1", Sync: "interval", NATS: three}, ""},

		{"node missing", Config{Replicas: 1}, "cluster.node is required"},
		{"node with a space", Config{Node: "gw 1", Replicas: 1}, `cluster.node "gw 1" is not a valid NATS server name`},
		{"node with a dot", Config{Node: "gw.1", Replicas: 1}, `cluster.node "gw.1" is not a valid NATS server name`},
		{"node with a wildcard", Config{Node: "gw*", Replicas: 1}, "not a valid NATS server name"},
		{"cluster name", Config{Node: "a", Name: "my cluster", Replicas: 1}, `cluster.name "my cluster" is not a valid NATS cluster name`},
		{"replicas 0 after defaults is 3: too few routes", Config{Node: "a", NATS: emb("127.0.0.1:6222", "nats://127.0.0.1:6223")},
			"cluster.replicas 3 needs at least 3 nodes; cluster.nats.embedded.routes names 1 other"},
		{"replicas 3, no routes", Config{Node: "a"}, "cluster.replicas 3 needs at least 3 nodes; cluster.nats.embedded.routes names 0 other"},
		{"replicas 3, routes only itself", Config{Node: "a", NATS: emb("127.0.0.1:6222", "nats://127.0.0.1:6222", "nats://127.0.0.1:6223")},
			"cluster.nats.embedded.routes names 1 other"},
		{"replicas 6", Config{Node: "a", Replicas: 6, NATS: three}, "cluster.replicas 6: must be 1 to 5"},
		{"replicas negative", Config{Node: "a", Replicas: -1}, "cluster.replicas -1: must be 1 to 5"},
		{"sync", Config{Node: "a", Sync: "never", NATS: three}, `cluster.sync "never": must be "always" or "interval"`},
		{"partitions", Config{Node: "a", Partitions: -2, NATS: three}, "cluster.partitions -2"},
		{"failover", Config{Node: "a", Failover: -time.Second, NATS: three}, "cluster.failover -1s: must be positive"},
		{"embedded and url", Config{Node: "a", NATS: NATSConfig{URL: "nats://h:4222", Embedded: three.Embedded}},
			"cluster.nats: embedded and url are exclusive"},
		{"url scheme", Config{Node: "a", NATS: NATSConfig{URL: "http://h:4222"}}, `cluster.nats.url: "http://h:4222": the scheme must be nats://`},
		{"url no port", Config{Node: "a", NATS: NATSConfig{URL: "nats://h"}}, `cluster.nats.url: "nats://h"`},
		{"url path", Config{Node: "a", NATS: NATSConfig{URL: "nats://h:4222/x"}}, "without a path"},
		{"url empty member", Config{Node: "a", NATS: NATSConfig{URL: "nats://h:4222,"}}, "cluster.nats.url: empty URL"},
		{"route with tls (not supported yet)", Config{Node: "a", Replicas: 1, NATS: emb("127.0.0.1:6222", "tls://h:6222")}, "the scheme must be nats:// or nats-route://"},
		{"route bad", Config{Node: "a", Replicas: 1, NATS: emb("127.0.0.1:6222", "127.0.0.1:6223")}, "cluster.nats.embedded.routes[0]"},
		{"route port", Config{Node: "a", Replicas: 1, NATS: emb("127.0.0.1:6222", "nats://h:99999")}, `port "99999" is not 1..65535`},
		{"routes without cluster_listen", Config{Node: "a", Replicas: 2, NATS: emb("", "nats://127.0.0.1:6223")},
			"cluster.nats.embedded.cluster_listen is required with routes"},
		{"cluster_listen", Config{Node: "a", Replicas: 1, NATS: emb("6222", "nats://h:6222")}, "cluster.nats.embedded.cluster_listen: \"6222\" is not host:port"},
		{"cluster_listen without routes", Config{Node: "a", Replicas: 1, NATS: emb("127.0.0.1:6222")}, "cluster.nats.embedded.cluster_listen without routes"},
		{"listen", Config{Node: "a", Replicas: 1, NATS: NATSConfig{Embedded: &EmbeddedConfig{Listen: "localhost"}}},
			"cluster.nats.embedded.listen"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			err := cfg.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case c.want != "" && err == nil:
				t.Fatalf("no error, want %q", c.want)
			case c.want != "" && !strings.Contains(err.Error(), c.want):
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

// TestConfigRouteSecretAndTLS: an incomplete TLS section is refused at load; a short or missing
// route secret and unreadable TLS files are refused at start, naming the key.
func TestConfigRouteSecretAndTLS(t *testing.T) {
	dir := t.TempDir()
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("tooshort\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := func() Config {
		return Config{Node: "gw-1", Replicas: 1, NATS: NATSConfig{Embedded: &EmbeddedConfig{
			ClusterListen: "127.0.0.1:6222", Routes: []string{"nats://127.0.0.1:6223"}}}}
	}
	for _, c := range []struct {
		name string
		set  func(e *EmbeddedConfig)
		want string
	}{
		{"short secret", func(e *EmbeddedConfig) { e.SecretFile = short }, "at least 32"},
		{"missing secret", func(e *EmbeddedConfig) { e.SecretFile = filepath.Join(dir, "none") }, "secret_file"},
		{"tls without key", func(e *EmbeddedConfig) { e.TLS = &RouteTLS{CertFile: "a", CAFile: "c"} }, "all required"},
		{"tls unreadable", func(e *EmbeddedConfig) { e.TLS = &RouteTLS{CertFile: "a", KeyFile: "b", CAFile: "c"} }, "cluster.nats.embedded.tls"},
	} {
		cfg := base()
		c.set(cfg.NATS.Embedded)
		err := cfg.Validate()
		if err == nil {
			_, _, err = cfg.NATS.Embedded.routeSecurity()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	ok := base()
	ok.NATS.Embedded.TLS = routeCerts(t)
	if err := ok.Validate(); err != nil {
		t.Fatalf("a complete TLS section: %v", err)
	}
	if _, tc, err := ok.NATS.Embedded.routeSecurity(); err != nil || tc == nil {
		t.Fatalf("a complete TLS section: %v", err)
	}
}
