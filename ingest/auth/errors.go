package auth

import "errors"

// Verification errors. Verify wraps exactly one of these, with a message that says what was
// wrong with the token ("token expired at 2026-01-02T15:04:05Z (leeway 30s)"); test with errors.Is.
var (
	// ErrMissingToken: the sender presented no token at all (empty string).
	ErrMissingToken = errors.New("missing token")
	// ErrMalformed: the token is not a well-formed JWS compact JWT (segments, base64, JSON,
	// claim types), or is longer than MaxTokenBytes.
	ErrMalformed = errors.New("malformed token")
	// ErrUnknownKey: the token's "kid" names no configured key (after fetching auth.jwks_url
	// again, when configured and allowed by JWKSMinRefetch).
	ErrUnknownKey = errors.New("unknown signing key")
	// ErrBadSignature: the signature does not verify with the selected key(s).
	ErrBadSignature = errors.New("bad token signature")
	// ErrAlgorithm: the token's "alg" is "none", unknown, or not the algorithm of any configured
	// key it could be checked with (this is what stops HS/RS key confusion).
	ErrAlgorithm = errors.New("token algorithm not accepted")
	// ErrExpired: the token's "exp" (plus the configured leeway) has passed.
	ErrExpired = errors.New("token expired")
	// ErrNotYetValid: the token's "nbf" (minus the configured leeway) has not been reached.
	ErrNotYetValid = errors.New("token not valid yet")
	// ErrIssuer: an issuer is configured and the token's "iss" differs.
	ErrIssuer = errors.New("token issuer not accepted")
	// ErrAudience: an audience is configured and the token's "aud" does not contain it.
	ErrAudience = errors.New("token audience not accepted")
	// ErrNoSubject: the token has no non-empty string "sub" claim.
	ErrNoSubject = errors.New("token has no subject")
	// ErrNoRole: the token has no string "role" claim, or no policy is configured for its role.
	ErrNoRole = errors.New("token role not accepted")
	// ErrRevoked: the token's "jti", or its subject (tenant and "sub") with an "iat" at or
	// before the revocation, is on the revocation list (see Revocations).
	ErrRevoked = errors.New("token revoked")
	// ErrInvalidRevocation: a revocation names neither a subject nor a jti, or both, or a
	// value too long.
	ErrInvalidRevocation = errors.New("invalid revocation")
	// ErrNoSigningKey: Sign was called but no HMAC (HS256/384/512) key is configured or generated.
	ErrNoSigningKey = errors.New("no HMAC signing key")
	// ErrInvalidConfig: the auth configuration, a key file, the JWKS file or the document at
	// auth.jwks_url is invalid (or could not be fetched).
	// Validate and New wrap it with every problem found, each with its field path.
	ErrInvalidConfig = errors.New("invalid auth config")
)
