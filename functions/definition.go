package functions

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// Function types provided by DefaultRegistry.
const (
	TypeHTTP      = "http"
	TypeWASM      = "wasm"
	TypeRepublish = "republish"
	TypeLog       = "log"
)

// LogFunction is the name of the built-in log function, which always exists.
const LogFunction = "log"

// Defaults applied by Definition.WithDefaults to fields left zero.
const (
	DefaultMaxEvents      = 100
	DefaultMaxBytes       = 1 << 20
	DefaultMaxWait        = 20 * time.Millisecond
	DefaultConcurrency    = 4
	DefaultTimeout        = 10 * time.Second
	DefaultMaxAttempts    = 10
	DefaultInitialBackoff = 100 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultMaxAge         = 24 * time.Hour
	DefaultMaxHops        = 3
	DefaultMemoryLimitMB  = 128
	DefaultQoS            = 1
	// A function's circuit opens after DefaultCircuitFailures consecutive failures that look
	// like its endpoint, and probes it from DefaultProbeInitial doubling up to DefaultProbeMax.
	DefaultCircuitFailures = 5
	DefaultProbeInitial    = time.Second
	DefaultProbeMax        = 30 * time.Second
)

// Hard limits on definitions.
const (
	MaxBatchEvents = 10000    // largest max_events
	MaxBatchBytes  = 64 << 20 // largest max_bytes
	MaxConcurrency = 256      // largest concurrency
	MaxMemoryMB    = 4096     // largest memory_limit_mb (wasm memory is 32-bit)
)

// BatchPolicy says when a batch is handed to a function: when it holds MaxEvents events, or
// MaxBytes bytes, or its oldest event has waited MaxWait, whichever comes first. Zero means the
// default (100 events, 1 MiB, 20ms); a negative value disables that trigger. A policy with every
// trigger disabled can never flush and is rejected.
type BatchPolicy struct {
	MaxEvents int           `yaml:"max_events" json:"max_events"`
	MaxBytes  int           `yaml:"max_bytes" json:"max_bytes"`
	MaxWait   time.Duration `yaml:"max_wait" json:"max_wait"`
}

// RetryPolicy says how a failed batch is retried: up to MaxAttempts invocations per event, with
// exponential backoff from InitialBackoff doubling up to MaxBackoff (with jitter), and never
// after MaxAge since the first attempt; then the event goes to the function's dead letters.
// Zero means the default: {10, 100ms, 30s, 24h}.
type RetryPolicy struct {
	MaxAttempts    int           `yaml:"max_attempts" json:"max_attempts"`
	InitialBackoff time.Duration `yaml:"initial_backoff" json:"initial_backoff"`
	MaxBackoff     time.Duration `yaml:"max_backoff" json:"max_backoff"`
	MaxAge         time.Duration `yaml:"max_age" json:"max_age"`
}

// CircuitPolicy says when a function counts as down and how it is probed: after Failures
// consecutive batches that failed the way an unavailable endpoint fails (no connection, a
// timeout, 429 or 5xx for the whole batch), the function pauses; its events wait on disk, are
// charged no attempts and are never dead-lettered for the outage. It then sends one probe
// batch of one event after ProbeInitial, doubling up to ProbeMax, and resumes when a probe is
// answered. Zero means the default {5, 1s, 30s}; a negative Failures never opens the circuit.
type CircuitPolicy struct {
	Failures     int           `yaml:"failures" json:"failures"`
	ProbeInitial time.Duration `yaml:"probe_initial" json:"probe_initial"`
	ProbeMax     time.Duration `yaml:"probe_max" json:"probe_max"`
}

// Definition is one entry of the config file's `functions:` list.
type Definition struct {
	Name string `yaml:"name"`
	Type string `yaml:"type"` // http | wasm | republish | log

	// http
	URL string `yaml:"url"`
	// Headers are sent with every request. A value "${env:VAR}" is replaced by the
	// environment variable VAR when the function is created (keep secrets out of the file).
	Headers map[string]string `yaml:"headers"`

	// wasm
	Module        string            `yaml:"module"`          // path of a WASI reactor (-buildmode=c-shared, preferred) or command module
	Env           map[string]string `yaml:"env"`             // its environment
	MemoryLimitMB int               `yaml:"memory_limit_mb"` // default 128

	// republish: topic template with ${subject}, ${tenant}, ${topic}, ${levels.N}
	Topic string `yaml:"topic"`
	QoS   *byte  `yaml:"qos"` // republish: 0, 1 or 2 (default 1)

	Batch       BatchPolicy   `yaml:"batch"`
	Concurrency int           `yaml:"concurrency"` // batches in flight, default 4
	Timeout     time.Duration `yaml:"timeout"`     // per batch, default 10s
	Retry       RetryPolicy   `yaml:"retry"`
	Circuit     CircuitPolicy `yaml:"circuit"`
	// RedriveOnRecovery replays the function's dead letters when its circuit closes again.
	RedriveOnRecovery bool `yaml:"redrive_on_recovery"`

	// Reingest makes the function's publish outputs also enter the gateway as new events
	// (with Hops+1), refused past MaxHops (default 3).
	Reingest bool `yaml:"reingest"`
	MaxHops  int  `yaml:"max_hops"`
}

// WithDefaults returns d with every zero field set to its documented default.
func (d Definition) WithDefaults() Definition {
	if d.Batch.MaxEvents == 0 {
		d.Batch.MaxEvents = DefaultMaxEvents
	}
	if d.Batch.MaxBytes == 0 {
		d.Batch.MaxBytes = DefaultMaxBytes
	}
	if d.Batch.MaxWait == 0 {
		d.Batch.MaxWait = DefaultMaxWait
	}
	if d.Concurrency == 0 {
		d.Concurrency = DefaultConcurrency
	}
	if d.Timeout == 0 {
		d.Timeout = DefaultTimeout
	}
	if d.Retry.MaxAttempts == 0 {
		d.Retry.MaxAttempts = DefaultMaxAttempts
	}
	if d.Retry.InitialBackoff == 0 {
		d.Retry.InitialBackoff = DefaultInitialBackoff
	}
	if d.Retry.MaxBackoff == 0 {
		d.Retry.MaxBackoff = DefaultMaxBackoff
	}
	if d.Retry.MaxAge == 0 {
		d.Retry.MaxAge = DefaultMaxAge
	}
	if d.Circuit.Failures == 0 {
		d.Circuit.Failures = DefaultCircuitFailures
	}
	if d.Circuit.ProbeInitial == 0 {
		d.Circuit.ProbeInitial = DefaultProbeInitial
	}
	if d.Circuit.ProbeMax == 0 {
		d.Circuit.ProbeMax = max(DefaultProbeMax, d.Circuit.ProbeInitial)
	}
	if d.MaxHops == 0 {
		d.MaxHops = DefaultMaxHops
	}
	if d.MemoryLimitMB == 0 {
		d.MemoryLimitMB = DefaultMemoryLimitMB
	}
	if d.QoS == nil {
		q := byte(DefaultQoS)
		d.QoS = &q
	}
	return d
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ValidateDefinitions checks defs (before defaults are applied) and reports every problem at
// once, each with its place, e.g. "functions[2] (archive).batch: can never flush ...".
// The returned error wraps ErrInvalidConfig.
func ValidateDefinitions(defs []Definition) error {
	return validateDefinitions(defs, nil)
}

// validateDefinitions also checks types against reg when it is not nil.
func validateDefinitions(defs []Definition, reg *Registry) error {
	var errs []string
	seen := make(map[string]int, len(defs))
	for i, d := range defs {
		at := fmt.Sprintf("functions[%d]", i)
		if d.Name != "" {
			at += " (" + d.Name + ")"
		}
		add := func(field, format string, args ...any) {
			p := at
			if field != "" {
				p += "." + field
			}
			errs = append(errs, p+": "+fmt.Sprintf(format, args...))
		}
		switch {
		case d.Name == "":
			add("name", "required")
		case !nameRE.MatchString(d.Name):
			add("name", "%q must be 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit", d.Name)
		default:
			if j, dup := seen[d.Name]; dup {
				add("name", "duplicate of functions[%d]", j)
			}
			seen[d.Name] = i
		}
		if d.Name == LogFunction && d.Type != "" && d.Type != TypeLog {
			add("name", "%q is the built-in log function; it can only have type log", LogFunction)
		}
		switch d.Type {
		case TypeHTTP:
			if d.URL == "" {
				add("url", "required for type http")
			} else if !strings.HasPrefix(d.URL, "http://") && !strings.HasPrefix(d.URL, "https://") {
				add("url", "%q must start with http:// or https://", d.URL)
			}
			for k, v := range d.Headers {
				if k == "" || strings.ContainsAny(k, " \t\r\n:") {
					add("headers", "bad header name %q", k)
				}
				if name, ok := envRef(v); ok {
					if _, set := os.LookupEnv(name); !set {
						add("headers."+k, "environment variable %s is not set", name)
					}
				}
			}
		case TypeWASM:
			if d.Module == "" {
				add("module", "required for type wasm")
			}
			if d.MemoryLimitMB < 0 || d.MemoryLimitMB > MaxMemoryMB {
				add("memory_limit_mb", "%d must be between 1 and %d", d.MemoryLimitMB, MaxMemoryMB)
			}
		case TypeRepublish:
			if d.Topic == "" {
				add("topic", "required for type republish")
			} else if err := checkTemplate(d.Topic); err != nil {
				add("topic", "%v", err)
			}
		case TypeLog:
		case "":
			add("type", "required: one of http, wasm, republish, log")
		default:
			if reg == nil || !reg.Has(d.Type) {
				add("type", "unknown type %q: one of http, wasm, republish, log", d.Type)
			}
		}
		if d.QoS != nil && *d.QoS > 2 {
			add("qos", "%d must be 0, 1 or 2", *d.QoS)
		}
		b := d.Batch
		if b.MaxEvents > MaxBatchEvents {
			add("batch.max_events", "%d is above the limit of %d", b.MaxEvents, MaxBatchEvents)
		}
		if b.MaxBytes > MaxBatchBytes {
			add("batch.max_bytes", "%d is above the limit of %d", b.MaxBytes, MaxBatchBytes)
		}
		if b.MaxEvents < 0 && b.MaxBytes < 0 && b.MaxWait < 0 {
			add("batch", "can never flush: max_events, max_bytes and max_wait are all disabled; enable at least one")
		}
		if d.Concurrency < 0 || d.Concurrency > MaxConcurrency {
			add("concurrency", "%d must be between 1 and %d", d.Concurrency, MaxConcurrency)
		}
		if d.Timeout < 0 {
			add("timeout", "%v must be positive", d.Timeout)
		}
		r := d.Retry
		if r.MaxAttempts < 0 {
			add("retry.max_attempts", "%d must be positive", r.MaxAttempts)
		}
		if r.InitialBackoff < 0 {
			add("retry.initial_backoff", "%v must be positive", r.InitialBackoff)
		}
		if r.MaxBackoff < 0 {
			add("retry.max_backoff", "%v must be positive", r.MaxBackoff)
		}
		if r.MaxAge < 0 {
			add("retry.max_age", "%v must be positive", r.MaxAge)
		}
		if r.InitialBackoff > 0 && r.MaxBackoff > 0 && r.InitialBackoff > r.MaxBackoff {
			add("retry", "initial_backoff %v is above max_backoff %v", r.InitialBackoff, r.MaxBackoff)
		}
		c := d.Circuit
		if c.ProbeInitial < 0 {
			add("circuit.probe_initial", "%v must be positive", c.ProbeInitial)
		}
		if c.ProbeMax < 0 {
			add("circuit.probe_max", "%v must be positive", c.ProbeMax)
		}
		if c.ProbeInitial > 0 && c.ProbeMax > 0 && c.ProbeInitial > c.ProbeMax {
			add("circuit", "probe_initial %v is above probe_max %v", c.ProbeInitial, c.ProbeMax)
		}
		if d.MaxHops < 0 || d.MaxHops > 255 {
			add("max_hops", "%d must be between 1 and 255", d.MaxHops)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n  %s", ErrInvalidConfig, strings.Join(errs, "\n  "))
}

// envRef reports whether v is "${env:NAME}" and returns NAME.
func envRef(v string) (string, bool) {
	if strings.HasPrefix(v, "${env:") && strings.HasSuffix(v, "}") {
		return v[len("${env:") : len(v)-1], true
	}
	return "", false
}

// expandHeaders resolves "${env:VAR}" header values.
func expandHeaders(h map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(h))
	var errs []error
	for k, v := range h {
		if name, ok := envRef(v); ok {
			ev, set := os.LookupEnv(name)
			if !set {
				errs = append(errs, fmt.Errorf("header %s: environment variable %s is not set", k, name))
				continue
			}
			v = ev
		}
		out[k] = v
	}
	return out, errors.Join(errs...)
}
