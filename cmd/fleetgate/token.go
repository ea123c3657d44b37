package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/fleetgate/fleetgate/ingest/auth"
)

// claimFlags collects repeated --claim k=v flags.
type claimFlags map[string]any

func (c claimFlags) String() string { return fmt.Sprint(map[string]any(c)) }

// Set takes k=v; v is taken as JSON when it parses (numbers, true, [..], {..}), else as a string.
func (c claimFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("--claim wants key=value, got %q", s)
	}
	var parsed any
	if err := json.Unmarshal([]byte(v), &parsed); err == nil {
		c[k] = parsed
	} else {
		c[k] = v
	}
	return nil
}

func cmdToken(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleetgate token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serverFlags
	f.register(fs, false)
	subject := fs.String("subject", "", "the token's subject (\"sub\"): the device id, app user or operator name (required)")
	tenant := fs.String("tenant", "", "the token's tenant claim")
	role := fs.String("role", "device", "role: device, app, operator, or a role configured under auth.policies")
	ttl := fs.Duration("ttl", time.Hour, "lifetime; 0 for a token without expiry")
	claims := claimFlags{}
	fs.Var(claims, "claim", "extra claim key=value (repeatable; value parsed as JSON when it can be)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleetgate token --subject ID [--tenant T] [--role device|app|operator] [--claim k=v ...] [--ttl 1h] [--config FILE] [--data-dir DIR]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *subject == "" {
		fmt.Fprintln(stderr, "fleetgate token: --subject is required")
		return 2
	}
	// Only the auth section matters here: a function header taken from an environment variable
	// that this shell lacks must not stop an operator from minting a token.
	cfg, err := f.read()
	if err == nil {
		err = cfg.Auth.Validate()
	}
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate:", err)
		return 2
	}
	if _, ok := cfg.Auth.Policies[*role]; !ok {
		fmt.Fprintf(stderr, "fleetgate token: no policy for role %q under auth.policies: such a token would be refused\n", *role)
		return 2
	}
	quiet := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	v, err := auth.New(cfg.Auth, auth.Options{DataDir: cfg.DataDir, Logger: quiet, Offline: true})
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate token:", err)
		return 1
	}
	if cfg.Auth.Policies[*role].Admin && !v.SignsAdminTokens() {
		fmt.Fprintf(stderr, "fleetgate token: warning: role %q grants the admin API, but the signing key is not in auth.admin_keys: the admin API will refuse this token (403)\n", *role)
	}
	tok, err := v.Sign(auth.MintClaims(*subject, *tenant, *role, claims, *ttl, time.Now()))
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate token:", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	return 0
}
