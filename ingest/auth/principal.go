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

	policy *compiledPolicy
}
