package auth

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// KeyConfig is one verification key (the config file's auth.keys[i]).
// HS256/384/512 keys take secret or secret_file (a trailing newline in the file is ignored);
// RS*/PS*/ES*/EdDSA keys take public_key_file, a PEM file holding a PKIX public key
// ("PUBLIC KEY"), a PKCS#1 RSA public key ("RSA PUBLIC KEY") or a certificate.
type KeyConfig struct {
	ID            string `yaml:"id"`
	Alg           string `yaml:"alg"`
	Secret        string `yaml:"secret"`
	SecretFile    string `yaml:"secret_file"`
	PublicKeyFile string `yaml:"public_key_file"`
}

// Policy is what a role may do. Topic patterns are MQTT filters ('+' one level, '#' the rest)
// that may name the sender with ${sub}, ${tenant} and ${claims.X}; they are expanded per token.
// A variable whose value is empty, is not a string or integer, contains '/', '+', '#' or NUL,
// or starts with '$' is not expanded: the pattern holding it is dropped (it grants nothing).
// Admin grants the admin API; it does not grant any topic.
// Shadow lists the devices whose shadow (device state) the role may read and update: one
// level each, a literal device id, a template such as "${sub}" (the sender's own device), or
// "+" for every device. An admin role may use every shadow.
type Policy struct {
	Publish     []string `yaml:"publish"`
	Subscribe   []string `yaml:"subscribe"`
	Shadow      []string `yaml:"shadow"`
	Admin       bool     `yaml:"admin"`
	AnyClientID bool     `yaml:"any_client_id"`
}

// Config is the auth section of the config file.
type Config struct {
	Keys     []KeyConfig       `yaml:"keys"`
	JWKSFile string            `yaml:"jwks_file"`
	Issuer   string            `yaml:"issuer"`   // checked against "iss" when set
	Audience string            `yaml:"audience"` // must be in "aud" when set
	Leeway   time.Duration     `yaml:"leeway"`   // clock skew allowed on exp and nbf
	Policies map[string]Policy `yaml:"policies"` // by the token's "role" claim
	// CacheSize bounds the verified-token cache (entries). 0 means the default, 100000.
	CacheSize int `yaml:"cache_size"`
	// RequireExp refuses tokens without an "exp" claim (they are accepted by default, for
	// long-lived device credentials).
	RequireExp bool `yaml:"require_exp"`
	// AdminKeys are the ids of keys under Keys trusted to sign tokens whose role grants the
	// admin API. A token of an admin role signed by any other key authenticates, but is not
	// admin. With no keys configured at all, the generated key is trusted for admin.
	AdminKeys []string `yaml:"admin_keys"`
	// AdminIssuer, when set, also trusts for admin the tokens verified by a JWKS key
	// (JWKSFile or JWKSURL) whose "iss" equals it.
	AdminIssuer string `yaml:"admin_issuer"`
	// JWKSURL is an https URL of a JWKS document, fetched at start and every JWKSRefresh, and
	// again (at most once per JWKSMinRefetch) when a token names an unknown kid.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSCAFile is a PEM bundle of the CAs trusted for JWKSURL's certificate, instead of the
	// system's roots.
	JWKSCAFile string `yaml:"jwks_ca_file"`
	// JWKSRefresh is how often JWKSURL is fetched again.
	JWKSRefresh time.Duration `yaml:"jwks_refresh"`
}

// JWKS fetch bounds.
const (
	// DefaultJWKSRefresh is Config.JWKSRefresh's default.
	DefaultJWKSRefresh = 5 * time.Minute
	// MinJWKSRefresh is the shortest Config.JWKSRefresh accepted.
	MinJWKSRefresh = time.Second
	// JWKSMinRefetch is the least time between two fetches of jwks_url caused by tokens
	// naming an unknown kid (any fetch counts), so such tokens cannot make the gateway
	// hammer the identity provider.
	JWKSMinRefetch = 10 * time.Second
	// MaxJWKSBytes is the largest JWKS document read from jwks_url.
	MaxJWKSBytes = 1 << 20
	// JWKSFetchTimeout bounds one fetch of jwks_url (connect, TLS, headers and body).
	JWKSFetchTimeout = 10 * time.Second
)

// DefaultCacheSize is the verified-token cache bound used when Config.CacheSize is 0.
const DefaultCacheSize = 100000

// DefaultConfig returns the embedded defaults: no keys (so a generated HS256 key in the data dir),
// 30s leeway, and the device, app and operator policies.
func DefaultConfig() Config {
	return Config{
		Leeway:      30 * time.Second,
		CacheSize:   DefaultCacheSize,
		JWKSRefresh: DefaultJWKSRefresh,
		Policies: map[string]Policy{
			"device":   {Publish: []string{"devices/${sub}/#"}, Subscribe: []string{"devices/${sub}/#"}, Shadow: []string{"${sub}"}},
			"app":      {Publish: []string{"apps/#"}, Shadow: []string{"${claims.device}"}},
			"operator": {Admin: true},
		},
	}
}

// Options are the runtime dependencies of a Verifier.
type Options struct {
	// DataDir holds keys/hs256.key when no key and no JWKS file is configured.
	DataDir string
	// Metrics receives fleetgate_auth_* metrics; nil creates a private set.
	Metrics *metrics.Set
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock for exp/nbf, the cache and the unknown-kid refetch limit; nil means
	// time.Now.
	Now func() time.Time
	// Revocations, when set, is consulted on every verification (cached tokens included).
	Revocations *Revocations
	// Offline skips fetching auth.jwks_url (for commands that only sign, like `fleetgate token`).
	Offline bool
}

// ConfigError lists every problem found in an auth config, each prefixed with its field path
// ("auth.keys[1].alg: unsupported \"none\""). It matches ErrInvalidConfig with errors.Is.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	return "invalid auth config: " + strings.Join(e.Problems, "; ")
}

// Unwrap makes errors.Is(err, ErrInvalidConfig) hold.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func (e *ConfigError) add(format string, args ...any) {
	e.Problems = append(e.Problems, fmt.Sprintf(format, args...))
}

func (e *ConfigError) orNil() error {
	if len(e.Problems) == 0 {
		return nil
	}
	return e
}

// algorithms accepted in KeyConfig.Alg and JWKS keys.
var algFamilies = map[string]string{
	"HS256": "hmac", "HS384": "hmac", "HS512": "hmac",
	"RS256": "rsa", "RS384": "rsa", "RS512": "rsa",
	"PS256": "rsa", "PS384": "rsa", "PS512": "rsa",
	"ES256": "ecdsa", "ES384": "ecdsa", "ES512": "ecdsa",
	"EdDSA": "ed25519",
}

// hmacMinBytes is the RFC 7518 §3.2 minimum secret size: the hash output size.
var hmacMinBytes = map[string]int{"HS256": 32, "HS384": 48, "HS512": 64}

func supportedAlgs() string {
	algs := make([]string, 0, len(algFamilies))
	for a := range algFamilies {
		algs = append(algs, a)
	}
	sort.Strings(algs)
	return strings.Join(algs, ", ")
}

// Validate reports every problem of the config at once (a *ConfigError), or nil.
// It does not read files; New does, and reports their problems the same way.
func (c *Config) Validate() error {
	var ce ConfigError
	ids := map[string]int{}
	for i, k := range c.Keys {
		p := fmt.Sprintf("auth.keys[%d]", i)
		if k.ID != "" {
			if j, dup := ids[k.ID]; dup {
				ce.add("%s.id: %q already used by auth.keys[%d]", p, k.ID, j)
			} else {
				ids[k.ID] = i
			}
		}
		fam, ok := algFamilies[k.Alg]
		switch {
		case k.Alg == "":
			ce.add("%s.alg: missing (one of %s)", p, supportedAlgs())
		case !ok:
			ce.add("%s.alg: unsupported %q (one of %s)", p, k.Alg, supportedAlgs())
		case fam == "hmac":
			if k.PublicKeyFile != "" {
				ce.add("%s.public_key_file: not used by %s (give secret or secret_file)", p, k.Alg)
			}
			switch {
			case k.Secret == "" && k.SecretFile == "":
				ce.add("%s: %s needs secret or secret_file", p, k.Alg)
			case k.Secret != "" && k.SecretFile != "":
				ce.add("%s: give secret or secret_file, not both", p)
			case k.Secret != "" && len(k.Secret) < hmacMinBytes[k.Alg]:
				ce.add("%s.secret: %d bytes, %s needs at least %d", p, len(k.Secret), k.Alg, hmacMinBytes[k.Alg])
			}
		default:
			if k.PublicKeyFile == "" {
				ce.add("%s.public_key_file: missing (%s needs a PEM public key or certificate)", p, k.Alg)
			}
			if k.Secret != "" || k.SecretFile != "" {
				ce.add("%s: %s takes public_key_file, not secret or secret_file", p, k.Alg)
			}
		}
	}
	for i, id := range c.AdminKeys {
		if _, ok := ids[id]; !ok || id == "" {
			ce.add("auth.admin_keys[%d]: no key with id %q under auth.keys", i, id)
		}
	}
	if c.AdminIssuer != "" && c.JWKSFile == "" && c.JWKSURL == "" {
		ce.add("auth.admin_issuer: set, but there is no auth.jwks_file or auth.jwks_url to verify that issuer's tokens with (use auth.admin_keys for keys under auth.keys)")
	}
	if c.JWKSURL != "" {
		if err := checkJWKSURL(c.JWKSURL); err != nil {
			ce.add("auth.jwks_url: %v", err)
		}
	} else if c.JWKSCAFile != "" {
		ce.add("auth.jwks_ca_file: set without auth.jwks_url")
	}
	if c.JWKSRefresh != 0 && c.JWKSRefresh < MinJWKSRefresh {
		ce.add("auth.jwks_refresh: %s is below %s (0 means the default, %s)", c.JWKSRefresh, MinJWKSRefresh, DefaultJWKSRefresh)
	}
	if c.Leeway < 0 {
		ce.add("auth.leeway: %s is negative", c.Leeway)
	}
	if c.CacheSize < 0 {
		ce.add("auth.cache_size: %d is negative (0 means the default, %d)", c.CacheSize, DefaultCacheSize)
	}
	roles := make([]string, 0, len(c.Policies))
	for r := range c.Policies {
		roles = append(roles, r)
	}
	sort.Strings(roles)
	for _, r := range roles {
		pol := c.Policies[r]
		p := fmt.Sprintf("auth.policies.%s", r)
		if r == "" {
			ce.add("auth.policies: empty role name")
		}
		for i, f := range pol.Publish {
			if _, err := compilePattern(f); err != nil {
				ce.add("%s.publish[%d]: %v", p, i, err)
			}
		}
		for i, f := range pol.Shadow {
			if _, err := compileShadowPattern(f); err != nil {
				ce.add("%s.shadow[%d]: %v", p, i, err)
			}
		}
		for i, f := range pol.Subscribe {
			if _, err := compilePattern(f); err != nil {
				ce.add("%s.subscribe[%d]: %v", p, i, err)
			}
		}
	}
	return ce.orNil()
}
