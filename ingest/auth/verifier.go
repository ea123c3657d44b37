package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenBytes is the longest token Verify will look at; longer ones are ErrMalformed.
const MaxTokenBytes = 16 << 10

// Verifier checks JWTs against the configured keys and turns them into Principals.
// It is safe for concurrent use.
type Verifier struct {
	keys     []*verifyKey
	byID     map[string]*verifyKey
	algs     []string // accepted algorithms, sorted, for messages
	signing  *verifyKey
	parsers  map[*verifyKey]*jwt.Parser
	policies map[string]*policyTemplate
	issuer   string
	audience string
	leeway   time.Duration
	needExp  bool
	now      func() time.Time
	log      *slog.Logger
	cache    *tokenCache
	results  map[string]*metrics.Counter
	cached   *metrics.Counter
	duration *metrics.PrometheusHistogram // uncached verifications
}

// result labels of fleetgate_auth_verifications_total, by sentinel.
var resultLabels = []struct {
	err   error
	label string
}{
	{ErrMissingToken, "missing"},
	{ErrMalformed, "malformed"},
	{ErrUnknownKey, "unknown_key"},
	{ErrBadSignature, "bad_signature"},
	{ErrAlgorithm, "algorithm"},
	{ErrExpired, "expired"},
	{ErrNotYetValid, "not_yet_valid"},
	{ErrIssuer, "issuer"},
	{ErrAudience, "audience"},
	{ErrNoSubject, "no_subject"},
	{ErrNoRole, "no_role"},
}

// New builds a Verifier. It validates cfg and loads every key file and the JWKS file, reporting
// all problems at once (a *ConfigError). With no keys and no jwks_file it loads or creates the
// generated HS256 key in <DataDir>/keys/hs256.key (kid "generated").
func New(cfg Config, opts Options) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	v := &Verifier{
		byID:     map[string]*verifyKey{},
		parsers:  map[*verifyKey]*jwt.Parser{},
		policies: map[string]*policyTemplate{},
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		leeway:   cfg.Leeway,
		needExp:  cfg.RequireExp,
		now:      opts.Now,
		log:      opts.Logger,
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	var ce ConfigError
	for i, kc := range cfg.Keys {
		k, err := loadConfiguredKey(kc, fmt.Sprintf("auth.keys[%d]", i))
		if err != nil {
			ce.add("%v", err)
			continue
		}
		v.keys = append(v.keys, k)
	}
	if cfg.JWKSFile != "" {
		data, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			ce.add("auth.jwks_file: %v", err)
		} else if keys, skipped, err := parseJWKS(data); err != nil {
			ce.add("auth.jwks_file: %v", err)
		} else {
			for _, s := range skipped {
				v.log.Warn("auth: JWKS key skipped", "file", cfg.JWKSFile, "key", s)
			}
			if len(keys) == 0 {
				ce.add("auth.jwks_file: no usable signature key in %s", cfg.JWKSFile)
			}
			v.keys = append(v.keys, keys...)
		}
	}
	if len(cfg.Keys) == 0 && cfg.JWKSFile == "" {
		secret, err := loadOrCreateGeneratedKey(opts.DataDir, v.log)
		if err != nil {
			ce.add("auth.keys: %v", err)
		} else {
			v.keys = append(v.keys, &verifyKey{id: GeneratedKeyID, alg: "HS256", key: secret, origin: "generated key"})
		}
	}
	for _, k := range v.keys {
		if k.id != "" {
			if prev, dup := v.byID[k.id]; dup {
				ce.add("%s: kid %q already used by %s", k.origin, k.id, prev.origin)
				continue
			}
			v.byID[k.id] = k
		}
		if v.signing == nil && algFamilies[k.alg] == "hmac" {
			v.signing = k
		}
		if !slices.Contains(v.algs, k.alg) {
			v.algs = append(v.algs, k.alg)
		}
		v.parsers[k] = jwt.NewParser(
			jwt.WithValidMethods([]string{k.alg}),
			jwt.WithLeeway(cfg.Leeway),
			jwt.WithTimeFunc(v.now),
			jwt.WithStrictDecoding(),
		)
	}
	slices.Sort(v.algs)
	for role, pol := range cfg.Policies {
		pt, err := compilePolicy(pol)
		if err != nil { // unreachable after Validate; kept for safety
			ce.add("auth.policies.%s: %v", role, err)
			continue
		}
		v.policies[role] = pt
	}
	if err := ce.orNil(); err != nil {
		return nil, err
	}

	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	v.cache = newTokenCache(size)
	set := opts.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	v.results = map[string]*metrics.Counter{}
	for _, label := range []string{"ok", "cached"} {
		v.results[label] = set.GetOrCreateCounter(`fleetgate_auth_verifications_total{result="` + label + `"}`)
	}
	for _, r := range resultLabels {
		v.results[r.label] = set.GetOrCreateCounter(`fleetgate_auth_verifications_total{result="` + r.label + `"}`)
	}
	v.cached = v.results["cached"]
	v.duration = set.GetOrCreatePrometheusHistogram("fleetgate_auth_verify_duration_seconds")
	set.GetOrCreateGauge("fleetgate_auth_cache_entries", func() float64 { return float64(v.cache.len()) })
	return v, nil
}

// Verify checks token (signature, algorithm, exp/nbf with leeway, iss/aud when configured,
// "sub" and "role") and returns its Principal. A token without "exp" never expires.
// Results are cached per token until exp+leeway, so a cached token is refused from exactly the
// moment a fresh verification would refuse it. The returned Principal is shared: read-only.
// Errors wrap one of the Err* sentinels.
func (v *Verifier) Verify(token string) (*Principal, error) {
	if token == "" {
		v.results["missing"].Inc()
		return nil, ErrMissingToken
	}
	now := v.now().UnixNano()
	if p, ok := v.cache.get(token, now); ok {
		v.cached.Inc()
		return p, nil
	}
	start := time.Now()
	p, deadline, err := v.verify(token)
	v.duration.UpdateDuration(start)
	if err != nil {
		v.results[resultLabel(err)].Inc()
		return nil, err
	}
	v.results["ok"].Inc()
	v.cache.put(p.Token, p, deadline, now)
	return p, nil
}

// Reason names the refusal in err for machine-readable answers and logs: "missing",
// "malformed", "unknown_key", "bad_signature", "algorithm", "expired", "not_yet_valid", "issuer",
// "audience", "no_subject" or "no_role" (the result labels of
// fleetgate_auth_verifications_total); "" for a nil error.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	return resultLabel(err)
}

func resultLabel(err error) string {
	for _, r := range resultLabels {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "malformed"
}

// verify does the uncached work; deadline is exp+leeway in unix nanoseconds (0: no exp).
func (v *Verifier) verify(token string) (*Principal, int64, error) {
	if len(token) > MaxTokenBytes {
		return nil, 0, fmt.Errorf("%w: %d bytes, longer than %d", ErrMalformed, len(token), MaxTokenBytes)
	}
	headSeg, _, ok := strings.Cut(token, ".")
	if !ok || strings.Count(token, ".") != 2 {
		return nil, 0, fmt.Errorf("%w: want three dot-separated segments", ErrMalformed)
	}
	headJSON, err := base64.RawURLEncoding.Strict().DecodeString(headSeg)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: header is not base64url", ErrMalformed)
	}
	var head struct {
		Alg  string          `json:"alg"`
		Kid  string          `json:"kid"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(headJSON, &head); err != nil {
		return nil, 0, fmt.Errorf("%w: header: %v", ErrMalformed, err)
	}
	if head.Crit != nil {
		// RFC 7515 §4.1.11: a token naming critical extensions we do not implement is refused.
		return nil, 0, fmt.Errorf("%w: header \"crit\" extensions are not supported", ErrMalformed)
	}
	var candidates []*verifyKey
	switch {
	case head.Alg == "":
		return nil, 0, fmt.Errorf("%w: header has no alg", ErrAlgorithm)
	case strings.EqualFold(head.Alg, "none"):
		return nil, 0, fmt.Errorf("%w: alg %q is never accepted", ErrAlgorithm, head.Alg)
	case head.Kid != "":
		k, ok := v.byID[head.Kid]
		if !ok {
			return nil, 0, fmt.Errorf("%w: no key with kid %q", ErrUnknownKey, head.Kid)
		}
		if k.alg != head.Alg {
			return nil, 0, fmt.Errorf("%w: token alg %q, but key %q is %s", ErrAlgorithm, head.Alg, k.id, k.alg)
		}
		candidates = []*verifyKey{k}
	default:
		for _, k := range v.keys {
			if k.alg == head.Alg {
				candidates = append(candidates, k)
			}
		}
		if len(candidates) == 0 {
			return nil, 0, fmt.Errorf("%w: alg %q (accepted: %s)", ErrAlgorithm, head.Alg, strings.Join(v.algs, ", "))
		}
	}

	var claims jwt.MapClaims
	for i, k := range candidates {
		claims = jwt.MapClaims{}
		_, err = v.parsers[k].ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return k.key, nil })
		if err == nil {
			break
		}
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) && i < len(candidates)-1 {
			continue // try the next key of this algorithm
		}
		return nil, 0, v.mapJWTError(err, claims)
	}

	if v.issuer != "" {
		if iss, _ := claims["iss"].(string); iss != v.issuer {
			return nil, 0, fmt.Errorf("%w: token issuer %q, want %q", ErrIssuer, iss, v.issuer)
		}
	}
	if v.audience != "" {
		aud, err := claims.GetAudience()
		if err != nil {
			return nil, 0, fmt.Errorf("%w: \"aud\" claim: %v", ErrMalformed, err)
		}
		if !slices.Contains(aud, v.audience) {
			return nil, 0, fmt.Errorf("%w: token audience %q does not include %q", ErrAudience, []string(aud), v.audience)
		}
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return nil, 0, fmt.Errorf("%w: token has no string \"sub\" claim", ErrNoSubject)
	}
	var tenant string
	if t, ok := claims["tenant"]; ok {
		if tenant, ok = t.(string); !ok {
			return nil, 0, fmt.Errorf("%w: \"tenant\" claim is not a string", ErrMalformed)
		}
	}
	role, _ := claims["role"].(string)
	if role == "" {
		return nil, 0, fmt.Errorf("%w: token has no string \"role\" claim", ErrNoRole)
	}
	pt, ok := v.policies[role]
	if !ok {
		return nil, 0, fmt.Errorf("%w: no policy for role %q", ErrNoRole, role)
	}
	claimsJSON, err := json.Marshal(claims)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	tok := strings.Clone(token) // the caller's string may alias a reused buffer
	p := &Principal{
		Subject:    sub,
		Tenant:     tenant,
		Role:       role,
		Claims:     claims,
		ClaimsJSON: claimsJSON,
		Token:      tok,
		policy:     pt.instantiate(sub, tenant, claims),
	}
	var deadline int64
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		p.ExpiresAt = exp.Time
		deadline = exp.Add(v.leeway).UnixNano()
	} else if v.needExp {
		return nil, 0, fmt.Errorf("%w: token has no \"exp\" claim and auth.require_exp is set", ErrExpired)
	}
	return p, deadline, nil
}

// mapJWTError turns a golang-jwt error into one of ours with a readable message.
func (v *Verifier) mapJWTError(err error, claims jwt.MapClaims) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ErrBadSignature
	case errors.Is(err, jwt.ErrInvalidType):
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	case errors.Is(err, jwt.ErrTokenExpired):
		exp, _ := claims.GetExpirationTime()
		if exp == nil {
			return ErrExpired
		}
		return fmt.Errorf("%w at %s (now %s, leeway %s)", ErrExpired,
			exp.UTC().Format(time.RFC3339), v.now().UTC().Format(time.RFC3339), v.leeway)
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		nbf, _ := claims.GetNotBefore()
		if nbf == nil {
			return ErrNotYetValid
		}
		return fmt.Errorf("%w: not before %s (now %s, leeway %s)", ErrNotYetValid,
			nbf.UTC().Format(time.RFC3339), v.now().UTC().Format(time.RFC3339), v.leeway)
	default:
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
}

// Sign signs claims with the first HMAC key (the generated key when none is configured) and
// puts its kid in the header. ErrNoSigningKey when only public keys are configured.
func (v *Verifier) Sign(claims map[string]any) (string, error) {
	k := v.signing
	if k == nil {
		return "", ErrNoSigningKey
	}
	t := jwt.NewWithClaims(jwt.GetSigningMethod(k.alg), jwt.MapClaims(claims))
	if k.id != "" {
		t.Header["kid"] = k.id
	}
	s, err := t.SignedString(k.key)
	if err != nil {
		return "", fmt.Errorf("sign token: %w", err)
	}
	return s, nil
}

// MintClaims builds the claims of a gateway token: extra, then sub, role (if set), tenant
// (if set), iat, and exp when ttl > 0 (the standard claims win over extra).
func MintClaims(subject, tenant, role string, extra map[string]any, ttl time.Duration, now time.Time) map[string]any {
	c := make(map[string]any, len(extra)+5)
	for k, val := range extra {
		c[k] = val
	}
	c["sub"] = subject
	if role != "" {
		c["role"] = role
	}
	if tenant != "" {
		c["tenant"] = tenant
	}
	c["iat"] = now.Unix()
	if ttl > 0 {
		c["exp"] = now.Add(ttl).Unix()
	}
	return c
}

// CacheLen reports how many verified tokens are cached.
func (v *Verifier) CacheLen() int { return v.cache.len() }

// PrincipalFor builds the principal of a sender authenticated by other means than a token,
// such as a verified client certificate: subject, tenant and role play the parts of the
// token's "sub", "tenant" and "role" claims, with the same policy templates. expires (zero:
// none) is when the credential stops being valid.
func (v *Verifier) PrincipalFor(subject, tenant, role string, expires time.Time) (*Principal, error) {
	if subject == "" {
		return nil, fmt.Errorf("%w: empty subject", ErrNoSubject)
	}
	pt, ok := v.policies[role]
	if !ok {
		return nil, fmt.Errorf("%w: no policy for role %q", ErrNoRole, role)
	}
	claims := map[string]any{"sub": subject, "role": role}
	if tenant != "" {
		claims["tenant"] = tenant
	}
	claimsJSON, err := json.Marshal(claims)
	if err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	return &Principal{
		Subject: subject, Tenant: tenant, Role: role, Claims: claims, ClaimsJSON: claimsJSON,
		ExpiresAt: expires, policy: pt.instantiate(subject, tenant, claims),
	}, nil
}

// HasRole reports whether role has a policy.
func (v *Verifier) HasRole(role string) bool {
	_, ok := v.policies[role]
	return ok
}
