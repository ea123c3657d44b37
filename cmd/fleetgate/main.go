// Command fleetgate runs the gateway (serve), mints development tokens (token), and drives a
// running gateway's admin API (rules, dlq, events), and checks or repairs a data dir (storage).
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `fleetgate: an event gateway for device fleets (MQTT) and apps (HTTPS)

usage: fleetgate <command> [flags]

commands:
  serve     run the gateway (MQTT, HTTP, rules, functions)
  token     print a JWT signed with the gateway's own key (development and tests)
  rules     list, apply, delete, test and roll back routing rules on a running gateway
  dlq       list, replay and purge a function's dead letters on a running gateway
  events    show what became of an event (its fate) on a running gateway
  clients   list MQTT sessions (connected or kept offline) and show one, on a running gateway
  revoke    revoke a subject's tokens (closing its MQTT connections) or one token (jti)
  revocations  list and delete revocations on a running gateway
  cluster   show a cluster node's view (quorum, peers) and remove a node taken out for good
  storage   check or repair a stopped gateway's data dir (after a crash or disk damage)
  version   print the version

Run 'fleetgate <command> -h' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(rest, stdout, stderr)
	case "token":
		return cmdToken(rest, stdout, stderr)
	case "rules":
		return rulesCmd(rest, stdout, stderr)
	case "dlq":
		return cmdDLQ(rest, stdout, stderr)
	case "events":
		return cmdEvents(rest, stdout, stderr)
	case "clients":
		return cmdClients(rest, stdout, stderr)
	case "cluster":
		return cmdCluster(rest, stdout, stderr)
	case "revoke":
		return cmdRevoke(rest, stdout, stderr)
	case "revocations":
		return cmdRevocations(rest, stdout, stderr)
	case "storage":
		return cmdStorage(rest, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "fleetgate", version)
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "fleetgate: unknown command %q\n\n%s", cmd, usage)
	return 2
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log.level: %q is not debug, info, warn or error", s)
}

func newLogger(c LogConfig, w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.Level)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
