package loadtest

import (
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MintToken returns an HS256 JWT for subject with the given role, valid for ttl, signed with
// secret; kid, when not empty, names the key in the token header.
func MintToken(secret, kid, subject, role string, ttl time.Duration) (string, error) {
	now := time.Now()
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":  subject,
		"role": role,
		"iat":  now.Unix(),
		"exp":  now.Add(ttl).Unix(),
	})
	if kid != "" {
		t.Header["kid"] = kid
	}
	s, err := t.SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("minting token for %q: %w", subject, err)
	}
	return s, nil
}
