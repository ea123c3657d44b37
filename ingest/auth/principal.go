// Package auth verifies the JWTs that devices, apps and operators present, and decides what
// each may publish, subscribe to and administer, by the policy of its role.
package auth

import "time"

// Principal is an authenticated sender: a device, an app or an operator, with the policy
// its role grants, expanded for its own subject, tenant and claims.
//
// A Principal returned by Verify is shared (it is cached with its token): treat it, its
// Claims and ClaimsJSON as read-only.
type Principal struct {
	Subject    string         // the token's "sub"
	Tenant     string         // the token's "tenant" claim, if any
	Role       string         // the token's "role" claim: device, app, operator, or a configured role
	Claims     map[string]any // all verified claims (read-only: shared between callers)
	ClaimsJSON []byte         // the claims as JSON (read-only), for storing with events
	ExpiresAt  time.Time      // zero when the token has no "exp"
	Token      string         // the raw token this principal was verified from
	IssuedAt   time.Time      // the token's "iat"; zero when it has none
	ID         string         // the token's "jti"; "" when it has none

	policy         *compiledPolicy
	adminUntrusted bool   // the role grants admin, but the signer is not trusted for admin
	signer         string // kid of the key that verified the token, when adminUntrusted
}

// AdminUntrusted reports whether the principal's role grants the admin API but the key that
// signed its token is not trusted for admin tokens (auth.admin_keys, auth.admin_issuer), so
// IsAdmin is false. The admin API answers such a principal 403.
func (p *Principal) AdminUntrusted() bool { return p != nil && p.adminUntrusted }

// SignerKeyID is the kid of the key that verified the token of a principal for which
// AdminUntrusted holds ("" otherwise, or for a key without kid): for logs, not for answers.
func (p *Principal) SignerKeyID() string {
	if p == nil {
		return ""
	}
	return p.signer
}
