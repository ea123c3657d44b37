package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenBytes is the longest token Verify will look at; longer ones are ErrMalformed.
const MaxTokenBytes = 16 << 10

// Verifier checks JWTs against the configured keys and turns them into Principals.
// It is safe for concurrent use. Its keys can be reloaded while it serves (Reload, and the
// jwks_url refresh that Start runs): each verification sees one whole key set.
type Verifier struct {
	cfg         Config
	dataDir     string
	set         atomic.Pointer[keySet]
	srcMu       sync.Mutex // serializes key set rebuilds; guards src
	src         keySources
	gen         atomic.Uint64
	jwks        *jwksFetcher // nil without auth.jwks_url
	revocations *Revocations // nil: nothing is revoked
	policies    map[string]*policyTemplate
	issuer      string
	audience    string
	leeway      time.Duration
	needExp     bool
	now         func() time.Time
	log         *slog.Logger
	cache       *tokenCache
	results     map[string]*metrics.Counter
	cached      *metrics.Counter
	duration    *metrics.PrometheusHistogram // uncached verifications

	startOnce, closeOnce sync.Once
	stop, stopped        chan struct{}
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
	{ErrRevoked, "revoked"},
}

// New builds a Verifier. It validates cfg, loads every key file and the JWKS file and fetches
// auth.jwks_url (unless opts.Offline), reporting all problems at once (a *ConfigError). With
// no keys, no jwks_file and no jwks_url it loads or creates the generated HS256 key in
// <DataDir>/keys/hs256.key (kid "generated"), which is then trusted for admin tokens.
// Call Start to refresh jwks_url periodically, and Close to stop that.
func New(cfg Config, opts Options) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.JWKSRefresh == 0 {
		cfg.JWKSRefresh = DefaultJWKSRefresh
	}
	v := &Verifier{
		cfg:         cfg,
		dataDir:     opts.DataDir,
		revocations: opts.Revocations,
		policies:    map[string]*policyTemplate{},
		issuer:      cfg.Issuer,
		audience:    cfg.Audience,
		leeway:      cfg.Leeway,
		needExp:     cfg.RequireExp,
		now:         opts.Now,
		log:         opts.Logger,
		stop:        make(chan struct{}),
		stopped:     make(chan struct{}),
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.Default()
	}
	set := opts.Metrics
	if set == nil {
		set = metrics.NewSet()
	}
	var ce ConfigError
	static, err := v.loadStatic()
	if err != nil {
		ce.Problems = append(ce.Problems, err.(*ConfigError).Problems...)
	}
	file, err := v.loadJWKSFile()
	if err != nil {
		ce.add("%v", err)
	}
	var url []*verifyKey
	if cfg.JWKSURL != "" {
		v.jwks, err = newJWKSFetcher(cfg, v.now, v.log, set)
		if err != nil {
			ce.add("%v", err)
		} else if !opts.Offline {
			url, err = v.jwks.fetch()
			if err == nil && len(url) == 0 {
				err = errors.New("no usable signature key in the document")
			}
			v.jwks.count(err)
			if err != nil {
				ce.add("auth.jwks_url: %v", err)
			}
		}
	} else {
		newJWKSMetrics(set) // exposed (at zero) whether or not a URL is configured
	}
	v.src = keySources{static: static, file: file, url: url}
	ks, problems := v.buildSet(v.src)
	ce.Problems = append(ce.Problems, problems...)
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
	v.set.Store(ks)
	if len(ks.admin) == 0 && cfg.AdminIssuer == "" {
		for role, pol := range cfg.Policies {
			if pol.Admin {
				v.log.Warn("auth: no key is trusted for admin tokens, so no token reaches the admin API; name the operators' signing key in auth.admin_keys (or set auth.admin_issuer)",
					"role", role)
				break
			}
		}
	}

	size := cfg.CacheSize
	if size == 0 {
		size = DefaultCacheSize
	}
	v.cache = newTokenCache(size)
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
	set.GetOrCreateGauge("fleetgate_auth_keys", func() float64 { return float64(len(v.set.Load().keys)) })
	set.GetOrCreateGauge("fleetgate_auth_revocations", func() float64 { return float64(v.revocations.Len()) })
	return v, nil
}

// Verify checks token (signature, algorithm, exp/nbf with leeway, iss/aud when configured,
// "sub" and "role") and the revocation list, and returns its Principal. A token without "exp"
// never expires. Results are cached per token until exp+leeway or until the key set changes,
// so a cached token is refused from exactly the moment a fresh verification would refuse it;
// revocations are checked on every call, cached or not. The returned Principal is shared:
// read-only. Errors wrap one of the Err* sentinels; their text may name keys, issuers and
// algorithms of the configuration, so it belongs in logs, not in answers to the sender.
func (v *Verifier) Verify(token string) (*Principal, error) {
	if token == "" {
		v.results["missing"].Inc()
		return nil, ErrMissingToken
	}
	now := v.now().UnixNano()
	set := v.set.Load()
	if p, ok := v.cache.get(token, now, set.gen); ok {
		if err := v.checkRevoked(p); err != nil {
			return nil, err
		}
		v.cached.Inc()
		return p, nil
	}
	start := time.Now()
	p, deadline, set, err := v.verify(token, set)
	v.duration.UpdateDuration(start)
	if err != nil {
		v.results[resultLabel(err)].Inc()
		return nil, err
	}
	v.cache.put(p.Token, p, deadline, now, set.gen)
	if err := v.checkRevoked(p); err != nil {
		return nil, err
	}
	v.results["ok"].Inc()
	return p, nil
}

// checkRevoked refuses a principal the revocation list names.
func (v *Verifier) checkRevoked(p *Principal) error {
	if why := v.revocations.Revoked(p); why != "" {
		v.results["revoked"].Inc()
		return fmt.Errorf("%w: %s", ErrRevoked, why)
	}
	return nil
}

// Reason names the refusal in err for machine-readable answers and logs: "missing",
// "malformed", "unknown_key", "bad_signature", "algorithm", "expired", "not_yet_valid", "issuer",
// "audience", "no_subject", "no_role" or "revoked" (the result labels of
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

// verify does the uncached work with set, or with a newer set when an unknown kid made it
// fetch jwks_url again (the set used is returned); deadline is exp+leeway in unix
// nanoseconds (0: no exp).
func (v *Verifier) verify(token string, set *keySet) (*Principal, int64, *keySet, error) {
	fail := func(err error) (*Principal, int64, *keySet, error) { return nil, 0, set, err }
	if len(token) > MaxTokenBytes {
		return fail(fmt.Errorf("%w: %d bytes, longer than %d", ErrMalformed, len(token), MaxTokenBytes))
	}
	headSeg, _, ok := strings.Cut(token, ".")
	if !ok || strings.Count(token, ".") != 2 {
		return fail(fmt.Errorf("%w: want three dot-separated segments", ErrMalformed))
	}
	headJSON, err := base64.RawURLEncoding.Strict().DecodeString(headSeg)
	if err != nil {
		return fail(fmt.Errorf("%w: header is not base64url", ErrMalformed))
	}
	var head struct {
		Alg  string          `json:"alg"`
		Kid  string          `json:"kid"`
		Crit json.RawMessage `json:"crit"`
	}
	if err := json.Unmarshal(headJSON, &head); err != nil {
		return fail(fmt.Errorf("%w: header: %v", ErrMalformed, err))
	}
	if head.Crit != nil {
		// RFC 7515 §4.1.11: a token naming critical extensions we do not implement is refused.
		return fail(fmt.Errorf("%w: header \"crit\" extensions are not supported", ErrMalformed))
	}
	var candidates []*verifyKey
	switch {
	case head.Alg == "":
		return fail(fmt.Errorf("%w: header has no alg", ErrAlgorithm))
	case strings.EqualFold(head.Alg, "none"):
		return fail(fmt.Errorf("%w: alg %q is never accepted", ErrAlgorithm, head.Alg))
	case head.Kid != "":
		k, ok := set.byID[head.Kid]
		if !ok && v.jwks != nil {
			// Perhaps a new key of the identity provider: fetch again (rate-limited), and look
			// in the live set, which a concurrent fetch may also have renewed.
			v.refetchForKid()
			set = v.set.Load()
			k, ok = set.byID[head.Kid]
		}
		if !ok {
			return fail(fmt.Errorf("%w: no key with kid %q", ErrUnknownKey, head.Kid))
		}
		if k.alg != head.Alg {
			return fail(fmt.Errorf("%w: token alg %q, but key %q is %s", ErrAlgorithm, head.Alg, k.id, k.alg))
		}
		candidates = []*verifyKey{k}
	default:
		for _, k := range set.keys {
			if k.alg == head.Alg {
				candidates = append(candidates, k)
			}
		}
		if len(candidates) == 0 {
			return fail(fmt.Errorf("%w: alg %q (accepted: %s)", ErrAlgorithm, head.Alg, strings.Join(set.algs, ", ")))
		}
	}

	var claims jwt.MapClaims
	var signer *verifyKey
	for i, k := range candidates {
		claims = jwt.MapClaims{}
		_, err = set.parsers[k].ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return k.key, nil })
		if err == nil {
			signer = k
			break
		}
		if errors.Is(err, jwt.ErrTokenSignatureInvalid) && i < len(candidates)-1 {
			continue // try the next key of this algorithm
		}
		return fail(v.mapJWTError(err, claims))
	}

	iss, _ := claims["iss"].(string)
	if v.issuer != "" && iss != v.issuer {
		return fail(fmt.Errorf("%w: token issuer %q, want %q", ErrIssuer, iss, v.issuer))
	}
	if v.audience != "" {
		aud, err := claims.GetAudience()
		if err != nil {
			return fail(fmt.Errorf("%w: \"aud\" claim: %v", ErrMalformed, err))
		}
		if !slices.Contains(aud, v.audience) {
			return fail(fmt.Errorf("%w: token audience %q does not include %q", ErrAudience, []string(aud), v.audience))
		}
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return fail(fmt.Errorf("%w: token has no string \"sub\" claim", ErrNoSubject))
	}
	var tenant string
	if t, ok := claims["tenant"]; ok {
		if tenant, ok = t.(string); !ok {
			return fail(fmt.Errorf("%w: \"tenant\" claim is not a string", ErrMalformed))
		}
	}
	role, _ := claims["role"].(string)
	if role == "" {
		return fail(fmt.Errorf("%w: token has no string \"role\" claim", ErrNoRole))
	}
	pt, ok := v.policies[role]
	if !ok {
		return fail(fmt.Errorf("%w: no policy for role %q", ErrNoRole, role))
	}
	claimsJSON, err := json.Marshal(claims)
	if err != nil {
		return fail(fmt.Errorf("%w: claims: %v", ErrMalformed, err))
	}
	tok := strings.Clone(token) // the caller's string may alias a reused buffer
	jti, _ := claims["jti"].(string)
	p := &Principal{
		Subject:    sub,
		Tenant:     tenant,
		Role:       role,
		Claims:     claims,
		ClaimsJSON: claimsJSON,
		Token:      tok,
		ID:         jti,
		policy:     pt.instantiate(sub, tenant, claims),
	}
	if iat, err := claims.GetIssuedAt(); err == nil && iat != nil {
		p.IssuedAt = iat.Time
	}
	if pt.admin && !set.trustedForAdmin(signer, iss, v.cfg.AdminIssuer) {
		// The role grants the admin API, but its signer is not trusted to say so: the token
		// keeps the rest of its policy and loses admin (answered 403 by the admin API).
		p.policy.expanded.Admin = false
		p.adminUntrusted = true
		p.signer = signer.id
	}
	var deadline int64
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		p.ExpiresAt = exp.Time
		deadline = exp.Add(v.leeway).UnixNano()
	} else if v.needExp {
		return fail(fmt.Errorf("%w: token has no \"exp\" claim and auth.require_exp is set", ErrExpired))
	}
	return p, deadline, set, nil
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
	k := v.set.Load().signing
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
// none) is when the credential stops being valid. A revoked subject is refused (ErrRevoked):
// such a credential has no issue time, so any subject revocation covers it.
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
	p := &Principal{
		Subject: subject, Tenant: tenant, Role: role, Claims: claims, ClaimsJSON: claimsJSON,
		ExpiresAt: expires, policy: pt.instantiate(subject, tenant, claims),
	}
	if err := v.checkRevoked(p); err != nil {
		return nil, err
	}
	return p, nil
}

// HasRole reports whether role has a policy.
func (v *Verifier) HasRole(role string) bool {
	_, ok := v.policies[role]
	return ok
}
