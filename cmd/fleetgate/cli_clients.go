package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fleetgate/fleetgate/broker"
)

const clientsUsage = `usage:
  fleetgate clients list [--prefix P] [--tenant T] [--limit N] [-o text|json] [--server URL] [--token JWT]
  fleetgate clients get ID [--tenant T] [-o text|json] [--server URL] [--token JWT]
`

// cmdClients runs `fleetgate clients list|get`: the MQTT sessions of a running gateway.
func cmdClients(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, clientsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub := args[0]
	if sub != "list" && sub != "get" {
		fmt.Fprintf(stderr, "fleetgate clients: unknown subcommand %q\n\n%s", sub, clientsUsage)
		return 2
	}
	fs := flag.NewFlagSet("fleetgate clients "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := addClientFlags(fs)
	output := fs.String("o", "text", "output format: text or json")
	tenant := fs.String("tenant", "", "tenant of the client ids (list: only this tenant; default all)")
	prefix := fs.String("prefix", "", "list: client ids starting with this")
	limit := fs.Int("limit", 100, "list: at most this many (1 to 1000)")
	id, err := parseWithArg(fs, args[1:])
	if err != nil {
		return 2
	}
	if sub == "list" && id != "" {
		fmt.Fprintf(stderr, "fleetgate clients list: unexpected argument %q (narrow with --prefix)\n\n%s", id, clientsUsage)
		return 2
	}
	if sub == "get" && id == "" {
		fmt.Fprint(stderr, "fleetgate clients get: a client id is required\n\n"+clientsUsage)
		return 2
	}
	if !checkOutput("fleetgate clients", *output, stderr) {
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate clients:", err)
		return 2
	}
	q := url.Values{}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["tenant"] {
		q.Set("tenant", *tenant)
	}
	path := broker.ClientsPath
	if sub == "get" {
		path += "/" + url.PathEscape(id)
	} else {
		if *prefix != "" {
			q.Set("prefix", *prefix)
		}
		q.Set("limit", fmt.Sprint(*limit))
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var raw json.RawMessage
	if err := c.Do("GET", path, nil, &raw); err != nil {
		fmt.Fprintf(stderr, "fleetgate clients %s: %v\n", sub, err)
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == 404 {
			return 3
		}
		return 1
	}
	if *output == "json" {
		fmt.Fprintln(stdout, strings.TrimSpace(string(raw)))
		return 0
	}
	if sub == "get" {
		var ci broker.ClientInfo
		if err := json.Unmarshal(raw, &ci); err != nil {
			fmt.Fprintln(stderr, "fleetgate clients get:", err)
			return 1
		}
		printClient(stdout, ci)
		return 0
	}
	var list struct {
		Clients []broker.ClientInfo `json:"clients"`
		More    bool                `json:"more"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		fmt.Fprintln(stderr, "fleetgate clients list:", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT ID\tTENANT\tSTATE\tSINCE\tSUBS\tQUEUED\tVERSION\tNODE")
	for _, ci := range list.Clients {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", ci.ClientID, ci.Tenant, clientState(ci), sinceText(ci.Since),
			len(ci.Subscriptions), ci.QueuedMessages, ci.SessionVersion, ci.Node)
	}
	tw.Flush()
	if list.More {
		fmt.Fprintln(stdout, "(more: narrow with --prefix or raise --limit)")
	}
	return 0
}

func clientState(ci broker.ClientInfo) string {
	if ci.Connected {
		return "connected"
	}
	return "offline"
}

func sinceText(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func printClient(w io.Writer, ci broker.ClientInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	row("client id", ci.ClientID)
	row("tenant", ci.Tenant)
	row("subject", ci.Subject)
	row("state", clientState(ci))
	row("since", sinceText(ci.Since))
	row("node", ci.Node)
	row("protocol version", ci.ProtocolVersion)
	row("remote", ci.Remote)
	row("clean start", ci.CleanStart)
	row("session expiry", fmt.Sprintf("%ds", ci.SessionExpiry))
	row("session version", ci.SessionVersion)
	row("queued", fmt.Sprintf("%d messages, %d bytes", ci.QueuedMessages, ci.QueuedBytes))
	for _, s := range ci.Subscriptions {
		row("subscription", fmt.Sprintf("%s (QoS %d)", s.Filter, s.QoS))
	}
	tw.Flush()
}
