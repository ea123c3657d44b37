package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// The JWKS parser is our own (encoding/json + math/big + crypto): the module cache holds no
// JWK library, the format needed here is small (public RSA, EC P-256/384/521 and OKP Ed25519
// keys), and owning it lets every key be checked as strictly as configured keys are
// (curve points validated, RSA >= 2048 bits, alg bound to the key type).

type jwkJSON struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Alg    string   `json:"alg"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	Crv    string   `json:"crv"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	D      string   `json:"d"`
}

// parseJWKS parses a JWK Set of public signature keys. Keys meant for encryption ("use":"enc")
// and key types or curves it does not know are skipped and listed in skipped; a key it knows but
// cannot use (bad encoding, point not on the curve, alg not fitting the key, private or
// symmetric key) is an error naming its index.
func parseJWKS(data []byte) (keys []*verifyKey, skipped []string, err error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("not a JWKS document: %w", err)
	}
	if set.Keys == nil {
		return nil, nil, errors.New(`not a JWKS document: no "keys" array`)
	}
	var problems []string
	for i, raw := range set.Keys {
		var j jwkJSON
		if err := json.Unmarshal(raw, &j); err != nil {
			problems = append(problems, fmt.Sprintf("keys[%d]: %v", i, err))
			continue
		}
		if j.Use != "" && j.Use != "sig" {
			skipped = append(skipped, fmt.Sprintf("keys[%d] (kid %q): use %q", i, j.Kid, j.Use))
			continue
		}
		k, skip, err := parseJWK(j)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("keys[%d] (kid %q): %v", i, j.Kid, err))
		case skip != "":
			skipped = append(skipped, fmt.Sprintf("keys[%d] (kid %q): %s", i, j.Kid, skip))
		default:
			k.origin = fmt.Sprintf("auth.jwks_file keys[%d]", i)
			keys = append(keys, k)
		}
	}
	if len(problems) > 0 {
		return nil, skipped, errors.New(strings.Join(problems, "; "))
	}
	return keys, skipped, nil
}

func parseJWK(j jwkJSON) (k *verifyKey, skip string, err error) {
	if j.D != "" {
		return nil, "", errors.New(`holds a private key ("d"); publish public keys only`)
	}
	k = &verifyKey{id: j.Kid, alg: j.Alg}
	switch j.Kty {
	case "RSA":
		n, err := b64Int(j.N, "n")
		if err != nil {
			return nil, "", err
		}
		e, err := b64Int(j.E, "e")
		if err != nil {
			return nil, "", err
		}
		if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
			return nil, "", fmt.Errorf("RSA exponent %s not accepted", e)
		}
		k.key = &rsa.PublicKey{N: n, E: int(e.Int64())}
		if k.alg == "" {
			k.alg = "RS256"
		}
	case "EC":
		var curve elliptic.Curve
		var alg string
		switch j.Crv {
		case "P-256":
			curve, alg = elliptic.P256(), "ES256"
		case "P-384":
			curve, alg = elliptic.P384(), "ES384"
		case "P-521":
			curve, alg = elliptic.P521(), "ES512"
		default:
			return nil, fmt.Sprintf("EC curve %q not supported", j.Crv), nil
		}
		size := (curve.Params().BitSize + 7) / 8
		x, err := b64Fixed(j.X, "x", size)
		if err != nil {
			return nil, "", err
		}
		y, err := b64Fixed(j.Y, "y", size)
		if err != nil {
			return nil, "", err
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
		if err != nil {
			return nil, "", fmt.Errorf("EC point: %w", err)
		}
		k.key = pub
		if k.alg == "" {
			k.alg = alg
		}
	case "OKP":
		if j.Crv != "Ed25519" {
			return nil, fmt.Sprintf("OKP curve %q not supported", j.Crv), nil
		}
		x, err := b64Fixed(j.X, "x", ed25519.PublicKeySize)
		if err != nil {
			return nil, "", err
		}
		k.key = ed25519.PublicKey(x)
		if k.alg == "" {
			k.alg = "EdDSA"
		}
	case "oct":
		return nil, "", errors.New(`symmetric ("oct") keys do not belong in a JWKS file; configure them in auth.keys`)
	case "":
		return nil, "", errors.New(`missing "kty"`)
	default:
		return nil, fmt.Sprintf("key type %q not supported", j.Kty), nil
	}
	if _, ok := algFamilies[k.alg]; !ok {
		return nil, "", fmt.Errorf("unsupported alg %q", k.alg)
	}
	if err := checkKeyForAlg(k.key, k.alg); err != nil {
		return nil, "", err
	}
	return k, "", nil
}

func b64Bytes(s, field string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("missing %q", field)
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil {
		return nil, fmt.Errorf("%q: bad base64url: %w", field, err)
	}
	return b, nil
}

func b64Int(s, field string) (*big.Int, error) {
	b, err := b64Bytes(s, field)
	if err != nil {
		return nil, err
	}
	return new(big.Int).SetBytes(b), nil
}

func b64Fixed(s, field string, size int) ([]byte, error) {
	b, err := b64Bytes(s, field)
	if err != nil {
		return nil, err
	}
	if len(b) != size {
		return nil, fmt.Errorf("%q: %d bytes, want %d", field, len(b), size)
	}
	return b, nil
}
