package auth

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// generatedOrigin is the origin of the generated development key.
const generatedOrigin = "generated key"

// keySet is one immutable generation of verification keys. The Verifier swaps whole sets, so
// a verification never sees half of a reload.
type keySet struct {
	gen     uint64
	keys    []*verifyKey
	byID    map[string]*verifyKey
	algs    []string // accepted algorithms, sorted, for messages
	signing *verifyKey
	parsers map[*verifyKey]*jwt.Parser
	admin   map[*verifyKey]bool // trusted to sign admin tokens: auth.admin_keys, or the generated key
	jwks    map[*verifyKey]bool // from jwks_file or jwks_url: admin only through auth.admin_issuer
}

// keySources are the keys last loaded from each source. A source that fails to load again
// keeps its last good keys.
type keySources struct {
	static []*verifyKey // auth.keys, or the generated key
	file   []*verifyKey // auth.jwks_file
	url    []*verifyKey // auth.jwks_url
}

// trustedForAdmin reports whether a token verified with k may carry a role that grants the
// admin API: k is in auth.admin_keys (or is the generated key), or k comes from a JWKS and the
// token's issuer is auth.admin_issuer.
func (s *keySet) trustedForAdmin(k *verifyKey, iss, adminIssuer string) bool {
	if s.admin[k] {
		return true
	}
	return adminIssuer != "" && s.jwks[k] && iss == adminIssuer
}

// buildSet makes a key set of src; problems are duplicate kids (such keys are left out).
func (v *Verifier) buildSet(src keySources) (*keySet, []string) {
	s := &keySet{
		gen:     v.gen.Add(1),
		byID:    map[string]*verifyKey{},
		parsers: map[*verifyKey]*jwt.Parser{},
		admin:   map[*verifyKey]bool{},
		jwks:    map[*verifyKey]bool{},
	}
	var problems []string
	add := func(k *verifyKey, fromJWKS bool) {
		if k.id != "" {
			if prev, dup := s.byID[k.id]; dup {
				problems = append(problems, fmt.Sprintf("%s: kid %q already used by %s", k.origin, k.id, prev.origin))
				return
			}
			s.byID[k.id] = k
		}
		s.keys = append(s.keys, k)
		if fromJWKS {
			s.jwks[k] = true
		} else if k.origin == generatedOrigin || (k.id != "" && slices.Contains(v.cfg.AdminKeys, k.id)) {
			s.admin[k] = true
		}
		if s.signing == nil && algFamilies[k.alg] == "hmac" {
			s.signing = k
		}
		if !slices.Contains(s.algs, k.alg) {
			s.algs = append(s.algs, k.alg)
		}
		s.parsers[k] = jwt.NewParser(
			jwt.WithValidMethods([]string{k.alg}),
			jwt.WithLeeway(v.cfg.Leeway),
			jwt.WithTimeFunc(v.now),
			jwt.WithStrictDecoding(),
		)
	}
	for _, k := range src.static {
		add(k, false)
	}
	for _, k := range src.file {
		add(k, true)
	}
	for _, k := range src.url {
		add(k, true)
	}
	slices.Sort(s.algs)
	return s, problems
}

// loadStatic loads auth.keys, or the generated key when no key source is configured at all.
// Errors are a *ConfigError.
func (v *Verifier) loadStatic() ([]*verifyKey, error) {
	var ce ConfigError
	var keys []*verifyKey
	for i, kc := range v.cfg.Keys {
		k, err := loadConfiguredKey(kc, fmt.Sprintf("auth.keys[%d]", i))
		if err != nil {
			ce.add("%v", err)
			continue
		}
		keys = append(keys, k)
	}
	if len(v.cfg.Keys) == 0 && v.cfg.JWKSFile == "" && v.cfg.JWKSURL == "" {
		secret, err := loadOrCreateGeneratedKey(v.dataDir, v.log)
		if err != nil {
			ce.add("auth.keys: %v", err)
		} else {
			keys = append(keys, &verifyKey{id: GeneratedKeyID, alg: "HS256", key: secret, origin: generatedOrigin})
		}
	}
	if err := ce.orNil(); err != nil {
		return nil, err
	}
	return keys, nil
}

// loadJWKSFile loads auth.jwks_file (nil, nil when not configured).
func (v *Verifier) loadJWKSFile() ([]*verifyKey, error) {
	if v.cfg.JWKSFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(v.cfg.JWKSFile)
	if err != nil {
		return nil, fmt.Errorf("auth.jwks_file: %w", err)
	}
	keys, skipped, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("auth.jwks_file: %w", err)
	}
	for _, s := range skipped {
		v.log.Warn("auth: JWKS key skipped", "file", v.cfg.JWKSFile, "key", s)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("auth.jwks_file: no usable signature key in %s", v.cfg.JWKSFile)
	}
	return keys, nil
}

// swap rebuilds the key set with change applied to the sources and makes it live. When the
// new set has problems (duplicate kids) nothing changes and the problems are returned.
func (v *Verifier) swap(change func(*keySources)) error {
	v.srcMu.Lock()
	defer v.srcMu.Unlock()
	src := v.src
	change(&src)
	s, problems := v.buildSet(src)
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s (the previous keys stay in use)", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	v.src = src
	v.set.Store(s)
	return nil
}

// Reload reads the files of auth.keys and auth.jwks_file again and fetches auth.jwks_url, then
// makes the new keys live at once, without dropping anything in flight. A source that fails
// keeps its last good keys; the error names every failure. Tokens verified with a key that is
// gone are refused from then on, cached or not. Safe to call at any time (on SIGHUP).
func (v *Verifier) Reload() error {
	var errs []error
	static, err := v.loadStatic()
	if err != nil {
		errs = append(errs, err)
	}
	file, ferr := v.loadJWKSFile()
	if ferr != nil {
		errs = append(errs, ferr)
	}
	if err := v.swap(func(src *keySources) {
		if err == nil {
			src.static = static
		}
		if ferr == nil {
			src.file = file
		}
	}); err != nil {
		errs = append(errs, err)
	}
	if v.jwks != nil {
		if err := v.refreshURL("reload"); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		v.log.Warn("auth: reload kept the last good keys of the sources that failed", "error", err)
		return err
	}
	v.log.Info("auth: keys reloaded", "keys", len(v.set.Load().keys))
	return nil
}

// refreshURL fetches auth.jwks_url and makes its keys live; on failure the last good keys stay
// (logged at WARN and counted in fleetgate_auth_jwks_fetches_total{result="error"}).
func (v *Verifier) refreshURL(why string) error {
	keys, err := v.jwks.fetch()
	if err == nil && len(keys) == 0 {
		err = errors.New("no usable signature key in the document")
	}
	if err == nil {
		err = v.swap(func(src *keySources) { src.url = keys })
	}
	v.jwks.count(err)
	if err != nil {
		err = fmt.Errorf("auth.jwks_url: %w", err)
		v.log.Warn("auth: jwks_url refresh failed; the last good keys stay in use", "why", why, "error", err)
		return err
	}
	v.log.Debug("auth: jwks_url refreshed", "why", why, "keys", len(keys))
	return nil
}

// refetchForKid fetches jwks_url again because a token named an unknown kid, unless a fetch
// started less than JWKSMinRefetch ago.
func (v *Verifier) refetchForKid() {
	if v.jwks.claimRefetch() {
		_ = v.refreshURL("unknown kid")
	}
}

// Start refreshes auth.jwks_url every auth.jwks_refresh in the background (nothing to do
// without a URL). Close stops it.
func (v *Verifier) Start() {
	v.startOnce.Do(func() {
		if v.jwks == nil {
			close(v.stopped)
			return
		}
		go func() {
			defer close(v.stopped)
			t := time.NewTicker(v.cfg.JWKSRefresh)
			defer t.Stop()
			for {
				select {
				case <-v.stop:
					return
				case <-t.C:
					_ = v.refreshURL("periodic")
				}
			}
		}()
	})
}

// Close stops the background refresh started by Start and waits for it.
func (v *Verifier) Close() {
	v.closeOnce.Do(func() {
		close(v.stop)
		v.startOnce.Do(func() { close(v.stopped) })
		<-v.stopped
	})
}

// SignsAdminTokens reports whether the key Sign uses is trusted for admin tokens, so that a
// token it signs with an admin role reaches the admin API.
func (v *Verifier) SignsAdminTokens() bool {
	s := v.set.Load()
	return s.signing != nil && s.admin[s.signing]
}
