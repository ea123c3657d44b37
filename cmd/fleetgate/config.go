package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleetgate/fleetgate/broker"
	"github.com/fleetgate/fleetgate/cluster"
	"github.com/fleetgate/fleetgate/functions"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/rules"
	"github.com/fleetgate/fleetgate/shadow"
	"github.com/fleetgate/fleetgate/storage"
)

// Config is the whole config file. Every key is optional; see DefaultConfig.
type Config struct {
	DataDir   string                 `yaml:"data_dir"`
	MQTT      broker.Config          `yaml:"mqtt"`
	HTTP      ingest.HTTPConfig      `yaml:"http"`
	Auth      auth.Config            `yaml:"auth"`
	Storage   StorageConfig          `yaml:"storage"`
	Functions []functions.Definition `yaml:"functions"`
	Rules     []rules.Rule           `yaml:"rules"`
	Log       LogConfig              `yaml:"log"`
	Shadow    ShadowConfig           `yaml:"shadow"`
	// Cluster, when present, runs this node in cluster mode on NATS JetStream (see
	// docs/operations.md); absent, one node on Badger.
	Cluster cluster.Config `yaml:"cluster"`
	// MemoryLimit is the memory the gateway plans for, in bytes: the Go runtime's soft memory
	// limit, from which the log's memtables, block cache and pending appends are sized (see
	// storage.PlanMemory). GOMEMLIMIT, when set, takes the runtime's part over. 0 (the
	// default): the log is sized as for storage.DefaultMemoryLimit (128 MiB) and the runtime
	// gets no soft limit, so that a gateway whose connections alone need more (10 000 idle
	// MQTT connections take about 160 MiB) does not spend its CPU collecting garbage.
	MemoryLimit int64 `yaml:"memory_limit"`
	// Procs is how many processors the Go runtime schedules the gateway on: "all" (the
	// default, also when empty), or "auto": one while that saves CPU and holds no sender back,
	// all of them otherwise (internal/procs), for less CPU per event at moderate loads at the
	// price of tail latency. The GOMAXPROCS environment variable, when set, takes over.
	Procs string `yaml:"procs"`
}

// ShadowConfig is the `shadow:` section: device state documents.
type ShadowConfig struct {
	// MaxBytes bounds one device's shadow document (encoded JSON, metadata included); an
	// update that would make it bigger is refused (HTTP 413, MQTT .../update/rejected).
	MaxBytes int `yaml:"max_bytes"`
}

// StorageConfig is the `storage:` section: the safety valves of the durable log.
type StorageConfig struct {
	// MaxBytes: new events are refused (HTTP 503, MQTT quota exceeded) while the log holds this
	// many bytes of events, queue entries and dead letters; 0 means no limit but the disk's.
	MaxBytes int64 `yaml:"max_bytes"`
	// MinFreeBytes: new events are refused while the disk has less free space than this, so
	// that the log never runs out of room for its own files; 0 means 4 × memtable_bytes, and a
	// negative value turns the check off.
	MinFreeBytes int64 `yaml:"min_free_bytes"`
	// MaxAge: events older than this are deleted even if a function has not received them
	// (logged as an error and counted); 0 means never.
	MaxAge time.Duration `yaml:"max_age"`
	// IdempotencyTTL is how long event ids and Idempotency-Keys are remembered (default 24h).
	IdempotencyTTL time.Duration `yaml:"idempotency_ttl"`
	// FateTTL is how long an event's fate (`fleetgate events get ID`) can be looked up after it
	// arrived and after each delivery or dead letter (default 24h); 0 records no fates.
	FateTTL time.Duration `yaml:"fate_ttl"`
	// MemtableBytes is the size of Badger's memtables (default 0: an eighth of memory_limit,
	// 16 MiB by default; usually 2 of them are in memory, 3 at most). Smaller uses less
	// memory, flushes more often, and lowers how much one request may carry (7.5% of it).
	MemtableBytes int64 `yaml:"memtable_bytes"`
	// CommitDelay is the least time from the start of one commit of the log to the next
	// (default 0: as soon as the previous one is written). Events arriving meanwhile share the
	// commit: fewer fsyncs and less CPU per event, for up to this much more latency.
	CommitDelay time.Duration `yaml:"commit_delay"`
	// AutoCommitDelay is the commit delay the gateway tries while commits are frequent (1 000
	// a second or more) and keeps while the senders get as many events taken in with it
	// (within a tenth): devices that publish at their own pace share commits, senders that
	// wait for each acknowledgement keep theirs (storage/autodelay.go). Default
	// DefaultAutoCommitDelay; 0 turns it off; a commit_delay replaces it.
	AutoCommitDelay time.Duration `yaml:"auto_commit_delay"`
}

// LogConfig is the `log:` section: the gateway's own log on stderr.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug | info | warn | error (default info)
	Format string `yaml:"format"` // text | json (default text)
}

// MaxCommitDelay bounds storage.commit_delay: every acknowledgement may wait that long.
const MaxCommitDelay = 100 * time.Millisecond

// DefaultAutoCommitDelay is storage.auto_commit_delay's default: routing 10 000 MQTT
// messages/s to a function on 2 cores, it cut the gateway's CPU by a quarter at the same p99
// latencies (BENCHMARKS.md, issue 17's eighth round).
const DefaultAutoCommitDelay = 2 * time.Millisecond

// defaultDataDir is where data goes when neither the config nor --data-dir says.
const defaultDataDir = "./fleetgate-data"

// DefaultConfig is the embedded configuration `fleetgate serve` runs on without a file.
func DefaultConfig() Config {
	return Config{
		DataDir: defaultDataDir,
		MQTT:    broker.DefaultConfig(),
		HTTP:    ingest.DefaultHTTPConfig(),
		Auth:    auth.DefaultConfig(),
		Storage: StorageConfig{IdempotencyTTL: 24 * time.Hour, FateTTL: storage.DefaultFateTTL, AutoCommitDelay: DefaultAutoCommitDelay},
		Log:     LogConfig{Level: "info", Format: "text"},
		Shadow:  ShadowConfig{MaxBytes: shadow.DefaultMaxBytes},
	}
}

// defaultRules is the rule set used when neither the config nor the data dir has one: every
// event goes to the built-in log function.
func defaultRules() []rules.Rule {
	return []rules.Rule{{ID: "default", Description: "every event to the built-in log function", Topic: "#", Functions: []string{functions.LogFunction}}}
}

// loadConfig reads path (if not empty) over the defaults. Unknown keys and every invalid
// value are reported together.
func loadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	if path == "" {
		return cfg, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("reading config: %w", err)
	}
	if err := decodeConfig(data, &cfg); err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// decodeConfig decodes YAML into cfg, refusing unknown keys.
func decodeConfig(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%d problem(s):\n  %s", len(te.Errors), strings.Join(te.Errors, "\n  "))
		}
		return err
	}
	return nil
}

// Validate reports every problem of the configuration at once, each with its path.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: empty"))
	}
	if err := c.MQTT.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.HTTP.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Cluster.Enabled() {
		if err := c.Cluster.Validate(); err != nil {
			errs = append(errs, err)
		}
		if len(c.Auth.Keys) == 0 && c.Auth.JWKSFile == "" && c.Auth.JWKSURL == "" {
			errs = append(errs, errors.New("cluster: every node must accept the same tokens: configure auth.keys (the same keys on every node), "+
				"auth.jwks_file or auth.jwks_url (the key generated into data_dir without them is this node's alone)"))
		}
	}
	if err := c.Auth.Validate(); err != nil {
		errs = append(errs, err)
	}
	if r := c.MQTT.TLS.CertRole; r != "" {
		if _, ok := c.Auth.Policies[r]; !ok {
			errs = append(errs, fmt.Errorf("mqtt.tls.cert_role: no policy for role %q under auth.policies", r))
		}
	}
	if c.Storage.MaxBytes < 0 {
		errs = append(errs, fmt.Errorf("storage.max_bytes: must not be negative, got %d", c.Storage.MaxBytes))
	}
	if c.Storage.MemtableBytes != 0 && c.Storage.MemtableBytes < storage.MinMemTableBytes {
		errs = append(errs, fmt.Errorf("storage.memtable_bytes: at least %d (8 MiB), or 0 for an eighth of memory_limit, got %d", storage.MinMemTableBytes, c.Storage.MemtableBytes))
	}
	if c.Procs != "" && c.Procs != "auto" && c.Procs != "all" {
		errs = append(errs, fmt.Errorf("procs: \"all\" (the default) or \"auto\", got %q", c.Procs))
	}
	if c.MemoryLimit != 0 && c.MemoryLimit < storage.MinMemoryLimit {
		errs = append(errs, fmt.Errorf("memory_limit: at least %d (32 MiB), got %d", storage.MinMemoryLimit, c.MemoryLimit))
	}
	if c.Storage.FateTTL < 0 {
		errs = append(errs, fmt.Errorf("storage.fate_ttl: must not be negative (0 turns event fates off), got %s", c.Storage.FateTTL))
	}
	if c.Shadow.MaxBytes < 256 {
		errs = append(errs, fmt.Errorf("shadow.max_bytes: at least 256, got %d", c.Shadow.MaxBytes))
	}
	if c.Storage.CommitDelay < 0 || c.Storage.CommitDelay > MaxCommitDelay {
		errs = append(errs, fmt.Errorf("storage.commit_delay: 0 to %s (every acknowledgement may wait this long), got %s", MaxCommitDelay, c.Storage.CommitDelay))
	}
	if c.Storage.AutoCommitDelay < 0 || c.Storage.AutoCommitDelay > MaxCommitDelay {
		errs = append(errs, fmt.Errorf("storage.auto_commit_delay: 0 to %s (every acknowledgement may wait this long), got %s", MaxCommitDelay, c.Storage.AutoCommitDelay))
	}
	if c.Storage.MaxAge < 0 {
		errs = append(errs, fmt.Errorf("storage.max_age: must not be negative, got %s", c.Storage.MaxAge))
	}
	if err := functions.ValidateDefinitions(c.Functions); err != nil {
		errs = append(errs, err)
	}
	if len(c.Rules) > 0 {
		if err := rules.Validate(c.Rules, rules.CompileOptions{KnownFunction: c.knownFunction}); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		errs = append(errs, err)
	}
	if c.Log.Format != "" && c.Log.Format != "text" && c.Log.Format != "json" {
		errs = append(errs, fmt.Errorf("log.format: %q is not text or json", c.Log.Format))
	}
	if len(errs) == 0 {
		return nil
	}
	return &configError{errs: errs}
}

// knownFunction reports whether name is configured (or is the built-in log function).
func (c *Config) knownFunction(name string) bool {
	if name == functions.LogFunction {
		return true
	}
	for _, d := range c.Functions {
		if d.Name == name {
			return true
		}
	}
	return false
}

// configError lists every problem of a configuration.
type configError struct{ errs []error }

func (e *configError) Error() string {
	var lines []string
	for _, err := range e.errs {
		for _, l := range strings.Split(err.Error(), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
	}
	return fmt.Sprintf("invalid configuration, %d problem(s):\n  %s", len(lines), strings.Join(lines, "\n  "))
}

func (e *configError) Unwrap() []error { return e.errs }

// memoryPlan shares memory_limit out (storage.PlanMemory); storage.memtable_bytes, when set,
// overrides the memtable size it picks.
func (c *Config) memoryPlan() storage.MemoryPlan {
	p, err := storage.PlanMemory(c.MemoryLimit)
	if err != nil { // Validate refused it already
		p, _ = storage.PlanMemory(storage.DefaultMemoryLimit)
	}
	if c.Storage.MemtableBytes != 0 {
		p.MemTableBytes = c.Storage.MemtableBytes
	}
	return p
}
