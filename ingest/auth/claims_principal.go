package auth

import (
	"encoding/json"
	"fmt"
	"time"
)

// PrincipalFromClaims rebuilds the principal of a sender from the verified claims stored with
// one of its events (event.ClaimsJSON), with its role's current policy, to judge on its behalf
// later (a function's reply to a request must go to a topic the requester may subscribe to).
// The claims are trusted as they are (they were verified at ingest); only "sub" and "role" are
// required. A revoked subject or token is refused (ErrRevoked); expiry is not checked.
func (v *Verifier) PrincipalFromClaims(claimsJSON []byte) (*Principal, error) {
	var claims map[string]any
	if err := json.Unmarshal(claimsJSON, &claims); err != nil {
		return nil, fmt.Errorf("%w: claims: %v", ErrMalformed, err)
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		return nil, fmt.Errorf("%w: claims have no \"sub\"", ErrNoSubject)
	}
	tenant, _ := claims["tenant"].(string)
	role, _ := claims["role"].(string)
	pt, ok := v.policies[role]
	if !ok {
		return nil, fmt.Errorf("%w: no policy for role %q", ErrNoRole, role)
	}
	p := &Principal{
		Subject: sub, Tenant: tenant, Role: role, Claims: claims, ClaimsJSON: claimsJSON,
		policy: pt.instantiate(sub, tenant, claims),
	}
	p.ID, _ = claims["jti"].(string)
	if iat, ok := claims["iat"].(float64); ok {
		p.IssuedAt = time.Unix(int64(iat), 0)
	}
	if err := v.checkRevoked(p); err != nil {
		return nil, err
	}
	return p, nil
}
