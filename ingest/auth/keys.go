package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// GeneratedKeyID is the kid of the HS256 key generated in the data dir.
const GeneratedKeyID = "generated"

// GeneratedKeyPath is where the generated HS256 key lives, relative to the data dir.
const GeneratedKeyPath = "keys/hs256.key"

// minRSABits is the smallest RSA modulus accepted; maxRSABits the largest (a huge modulus,
// from a JWKS document say, would make every verification with it cost seconds of CPU).
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// verifyKey is one usable key: an HMAC secret or a public key, bound to exactly one algorithm.
type verifyKey struct {
	id     string
	alg    string
	key    any    // []byte for HS*, *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
	origin string // where it came from, for messages: "auth.keys[0]", "auth.jwks_file keys[2]"
}

// loadConfiguredKey loads cfg (already validated) into a verifyKey.
func loadConfiguredKey(k KeyConfig, origin string) (*verifyKey, error) {
	vk := &verifyKey{id: k.ID, alg: k.Alg, origin: origin}
	if algFamilies[k.Alg] == "hmac" {
		secret := []byte(k.Secret)
		if k.SecretFile != "" {
			b, err := os.ReadFile(k.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("%s.secret_file: %w", origin, err)
			}
			secret = bytes.TrimRight(b, "\r\n")
			if len(secret) < hmacMinBytes[k.Alg] {
				return nil, fmt.Errorf("%s.secret_file: %d bytes, %s needs at least %d", origin, len(secret), k.Alg, hmacMinBytes[k.Alg])
			}
		}
		vk.key = secret
		return vk, nil
	}
	b, err := os.ReadFile(k.PublicKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%s.public_key_file: %w", origin, err)
	}
	pub, err := parsePublicKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s.public_key_file: %w", origin, err)
	}
	if err := checkKeyForAlg(pub, k.Alg); err != nil {
		return nil, fmt.Errorf("%s.public_key_file: %w", origin, err)
	}
	vk.key = pub
	return vk, nil
}

// parsePublicKeyPEM reads the first PEM block: a PKIX public key, a PKCS#1 RSA public key or a
// certificate (whose public key is used).
func parsePublicKeyPEM(b []byte) (any, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	switch block.Type {
	case "PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		return c.PublicKey, nil
	case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY":
		return nil, fmt.Errorf("holds a private key (%s); give the public key only", block.Type)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q (want PUBLIC KEY or CERTIFICATE)", block.Type)
	}
}

// checkKeyForAlg checks that pub is the right kind of key for alg.
func checkKeyForAlg(pub any, alg string) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if algFamilies[alg] != "rsa" {
			return fmt.Errorf("RSA key cannot be used with %s", alg)
		}
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("RSA key of %d bits is too small (at least %d)", k.N.BitLen(), minRSABits)
		}
		if k.N.BitLen() > maxRSABits {
			return fmt.Errorf("RSA key of %d bits is too large (at most %d)", k.N.BitLen(), maxRSABits)
		}
	case *ecdsa.PublicKey:
		want := map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}[alg]
		if want == nil {
			return fmt.Errorf("EC key cannot be used with %s", alg)
		}
		if k.Curve != want {
			return fmt.Errorf("EC key on %s cannot be used with %s (needs %s)", k.Curve.Params().Name, alg, want.Params().Name)
		}
	case ed25519.PublicKey:
		if alg != "EdDSA" {
			return fmt.Errorf("Ed25519 key cannot be used with %s", alg)
		}
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	return nil
}

// loadOrCreateGeneratedKey returns the HS256 secret kept in <dataDir>/keys/hs256.key, creating
// it (32 random bytes, hex, mode 0600) if missing. Creation is atomic and never replaces a key
// another process created first: the key is written to a temporary file, synced, then
// hard-linked into place (falling back to rename where links are unsupported).
func loadOrCreateGeneratedKey(dataDir string, log *slog.Logger) ([]byte, error) {
	if dataDir == "" {
		return nil, errors.New("no auth keys configured and no data dir to keep a generated key in")
	}
	path := filepath.Join(dataDir, GeneratedKeyPath)
	if secret, err := readGeneratedKey(path, log); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return secret, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key dir: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".hs256.key.tmp-*")
	if err != nil {
		return nil, fmt.Errorf("write generated key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.WriteString(hex.EncodeToString(raw) + "\n")
	if werr == nil {
		werr = tmp.Chmod(0o600)
	}
	if werr == nil {
		werr = tmp.Sync()
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("write generated key: %w", werr)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return readGeneratedKey(path, log) // another process won the race: use its key
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return nil, fmt.Errorf("write generated key: %w", err)
		}
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	log.Info("generated a new HS256 signing key", "path", path, "kid", GeneratedKeyID)
	return raw, nil
}

// readGeneratedKey reads a key file: hex (64+ hex digits, surrounding space ignored) or raw bytes.
func readGeneratedKey(path string, log *slog.Logger) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read generated key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("signing key file is readable by others; chmod 600 it", "path", path, "mode", fi.Mode().Perm().String())
	}
	secret := b
	if t := bytes.TrimSpace(b); len(t) >= 64 && len(t)%2 == 0 {
		if h, err := hex.DecodeString(string(t)); err == nil {
			secret = h
		}
	}
	if len(secret) < 32 {
		return nil, fmt.Errorf("read generated key %s: %d bytes, need at least 32 (delete it to generate a new one)", path, len(secret))
	}
	return secret, nil
}
