package auth

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RevocationStore keeps revocations durably; *storage.Store satisfies it.
type RevocationStore interface {
	Put(key string, value []byte) error
	Delete(key string) error
	Scan(prefix string, fn func(key string, value []byte) error) error
}

// revocationPrefix is the KV prefix of revocations.
const revocationPrefix = "auth/revocations/"

// maxRevocationField bounds a revoked subject, tenant or jti.
const maxRevocationField = 1024

// Revocation is one entry of the revocation list: a subject (with its tenant; "" is the
// tenant of tokens without a "tenant" claim) whose tokens issued at or before RevokedAt are
// refused, or a token id ("jti") refused whenever it is presented.
type Revocation struct {
	Subject   string    `json:"subject,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	JTI       string    `json:"jti,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
}

// Check reports what is wrong with r as a request (ErrInvalidRevocation), or nil.
func (r Revocation) Check() error {
	switch {
	case r.JTI == "" && r.Subject == "":
		return fmt.Errorf("%w: give a subject (and its tenant, if any) or a jti", ErrInvalidRevocation)
	case r.JTI != "" && (r.Subject != "" || r.Tenant != ""):
		return fmt.Errorf("%w: give a subject or a jti, not both", ErrInvalidRevocation)
	case len(r.JTI) > maxRevocationField || len(r.Subject) > maxRevocationField || len(r.Tenant) > maxRevocationField:
		return fmt.Errorf("%w: subject, tenant and jti are at most %d bytes", ErrInvalidRevocation, maxRevocationField)
	}
	return nil
}

func (r Revocation) key() string {
	if r.JTI != "" {
		return revocationPrefix + "jti/" + url.PathEscape(r.JTI)
	}
	return revocationPrefix + "subject/" + url.PathEscape(r.Tenant) + "/" + url.PathEscape(r.Subject)
}

type subjectKey struct{ tenant, subject string }

// revSnapshot is an immutable view of the list: readers never lock.
type revSnapshot struct {
	subjects map[subjectKey]time.Time
	jtis     map[string]time.Time
}

// Revocations is the revocation list: kept in a RevocationStore, loaded at start, read without
// locks on every verification. Safe for concurrent use. A nil *Revocations revokes nothing.
type Revocations struct {
	store RevocationStore
	now   func() time.Time
	mu    sync.Mutex // serializes writers
	snap  atomic.Pointer[revSnapshot]
}

// LoadRevocations reads the list kept in store. now is the clock stamping new revocations
// (nil: time.Now).
func LoadRevocations(store RevocationStore, now func() time.Time) (*Revocations, error) {
	if now == nil {
		now = time.Now
	}
	r := &Revocations{store: store, now: now}
	snap := &revSnapshot{subjects: map[subjectKey]time.Time{}, jtis: map[string]time.Time{}}
	err := store.Scan(revocationPrefix, func(key string, value []byte) error {
		var rv Revocation
		if err := json.Unmarshal(value, &rv); err != nil {
			return fmt.Errorf("revocation %q: %w", key, err)
		}
		if rv.JTI != "" {
			snap.jtis[rv.JTI] = rv.RevokedAt
		} else {
			snap.subjects[subjectKey{rv.Tenant, rv.Subject}] = rv.RevokedAt
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("loading revocations: %w", err)
	}
	r.snap.Store(snap)
	return r, nil
}

// Add revokes r's subject or jti as of now (RevokedAt is set here; revoking a subject again
// moves its time forward) and returns the stored entry. It returns once the entry is durable.
func (r *Revocations) Add(rv Revocation) (Revocation, error) {
	if err := rv.Check(); err != nil {
		return rv, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rv.RevokedAt = r.now().UTC()
	data, err := json.Marshal(rv)
	if err != nil {
		return rv, err
	}
	if err := r.store.Put(rv.key(), data); err != nil {
		return rv, fmt.Errorf("storing revocation: %w", err)
	}
	r.update(func(s *revSnapshot) {
		if rv.JTI != "" {
			s.jtis[rv.JTI] = rv.RevokedAt
		} else {
			s.subjects[subjectKey{rv.Tenant, rv.Subject}] = rv.RevokedAt
		}
	})
	return rv, nil
}

// Remove deletes r's entry (by subject and tenant, or by jti) and reports whether there was one.
func (r *Revocations) Remove(rv Revocation) (bool, error) {
	if err := rv.Check(); err != nil {
		return false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.snap.Load()
	var found bool
	if rv.JTI != "" {
		_, found = cur.jtis[rv.JTI]
	} else {
		_, found = cur.subjects[subjectKey{rv.Tenant, rv.Subject}]
	}
	if !found {
		return false, nil
	}
	if err := r.store.Delete(rv.key()); err != nil {
		return false, fmt.Errorf("deleting revocation: %w", err)
	}
	r.update(func(s *revSnapshot) {
		delete(s.jtis, rv.JTI)
		delete(s.subjects, subjectKey{rv.Tenant, rv.Subject})
	})
	return true, nil
}

// update copies the snapshot, applies change and publishes it; r.mu is held.
func (r *Revocations) update(change func(*revSnapshot)) {
	cur := r.snap.Load()
	next := &revSnapshot{subjects: make(map[subjectKey]time.Time, len(cur.subjects)+1), jtis: make(map[string]time.Time, len(cur.jtis)+1)}
	for k, v := range cur.subjects {
		next.subjects[k] = v
	}
	for k, v := range cur.jtis {
		next.jtis[k] = v
	}
	change(next)
	r.snap.Store(next)
}

// List returns every revocation: subjects first (by tenant, then subject), then jtis.
func (r *Revocations) List() []Revocation {
	if r == nil {
		return nil
	}
	s := r.snap.Load()
	out := make([]Revocation, 0, len(s.subjects)+len(s.jtis))
	for k, at := range s.subjects {
		out = append(out, Revocation{Subject: k.subject, Tenant: k.tenant, RevokedAt: at})
	}
	for j, at := range s.jtis {
		out = append(out, Revocation{JTI: j, RevokedAt: at})
	}
	slices.SortFunc(out, func(a, b Revocation) int {
		if c := strings.Compare(a.JTI, b.JTI); c != 0 {
			return c // "" (subjects) first
		}
		if c := strings.Compare(a.Tenant, b.Tenant); c != 0 {
			return c
		}
		return strings.Compare(a.Subject, b.Subject)
	})
	return out
}

// Len is the number of revocations.
func (r *Revocations) Len() int {
	if r == nil {
		return 0
	}
	s := r.snap.Load()
	return len(s.subjects) + len(s.jtis)
}

// Revoked says why p is revoked, or "" when it is not: its token's jti is listed, or its
// subject (with its tenant) is listed and the token was issued ("iat", in whole seconds) at
// or before the second of the revocation. A principal without "iat" (or from a certificate)
// counts as issued before any subject revocation.
func (r *Revocations) Revoked(p *Principal) string {
	if r == nil || p == nil {
		return ""
	}
	s := r.snap.Load()
	if len(s.subjects) == 0 && len(s.jtis) == 0 {
		return ""
	}
	if p.ID != "" {
		if at, ok := s.jtis[p.ID]; ok {
			return fmt.Sprintf("jti %q revoked at %s", p.ID, at.Format(time.RFC3339))
		}
	}
	at, ok := s.subjects[subjectKey{p.Tenant, p.Subject}]
	if !ok {
		return ""
	}
	if p.IssuedAt.IsZero() {
		return fmt.Sprintf("subject %q (tenant %q) revoked at %s; the credential has no issue time", p.Subject, p.Tenant, at.Format(time.RFC3339))
	}
	if p.IssuedAt.Unix() <= at.Unix() {
		return fmt.Sprintf("subject %q (tenant %q) revoked at %s; token issued at %s", p.Subject, p.Tenant,
			at.Format(time.RFC3339), p.IssuedAt.UTC().Format(time.RFC3339))
	}
	return ""
}
