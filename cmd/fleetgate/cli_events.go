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
)

const eventsUsage = `usage:
  fleetgate events get ID [-o text|json] [--server URL] [--token JWT]
`

// eventFate is GET /admin/v1/events/{id}'s answer.
type eventFate struct {
	ID          string     `json:"id"`
	Seq         uint64     `json:"seq"`
	Topic       string     `json:"topic"`
	Subject     string     `json:"subject"`
	Tenant      string     `json:"tenant"`
	Protocol    string     `json:"protocol"`
	Time        *time.Time `json:"time"`
	PayloadSize int        `json:"payload_size"`
	ContentType string     `json:"content_type"`
	RuleVersion int        `json:"rule_version"`
	Rules       []string   `json:"rules"`
	Functions   []struct {
		Function       string     `json:"function"`
		Rule           string     `json:"rule"`
		State          string     `json:"state"`
		DeliveredAt    *time.Time `json:"delivered_at"`
		Attempts       int        `json:"attempts"`
		LastError      string     `json:"last_error"`
		DeadLetteredAt *time.Time `json:"dead_lettered_at"`
	} `json:"functions"`
}

// cmdEvents runs `fleetgate events get ID`.
func cmdEvents(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, eventsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] != "get" {
		fmt.Fprintf(stderr, "fleetgate events: unknown subcommand %q\n\n%s", args[0], eventsUsage)
		return 2
	}
	fs := flag.NewFlagSet("fleetgate events get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := addClientFlags(fs)
	output := fs.String("o", "text", "output format: text or json")
	// The id may come before or after the flags.
	id, err := parseWithArg(fs, args[1:])
	if err != nil {
		return 2
	}
	if id == "" {
		fmt.Fprint(stderr, "fleetgate events get: an event id is required\n\n"+eventsUsage)
		return 2
	}
	if !checkOutput("fleetgate events get", *output, stderr) {
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate events:", err)
		return 2
	}
	var raw json.RawMessage
	if err := c.Do("GET", "/admin/v1/events/"+url.PathEscape(id), nil, &raw); err != nil {
		fmt.Fprintln(stderr, "fleetgate events get:", err)
		var ae *APIError
		if errors.As(err, &ae) && ae.Status == 404 {
			return 3
		}
		return 1
	}
	if *output == "json" {
		fmt.Fprintln(stdout, string(raw))
		return 0
	}
	var f eventFate
	if err := json.Unmarshal(raw, &f); err != nil {
		fmt.Fprintln(stderr, "fleetgate events get:", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("id", f.ID)
	row("seq", fmt.Sprint(f.Seq))
	row("topic", f.Topic)
	row("subject", f.Subject)
	row("tenant", f.Tenant)
	row("protocol", f.Protocol)
	row("time", fmtTime(f.Time))
	row("payload", fmt.Sprintf("%d bytes %s", f.PayloadSize, f.ContentType))
	if f.RuleVersion > 0 {
		row("rule set version", fmt.Sprint(f.RuleVersion))
	} else {
		row("rule set version", "unknown")
	}
	row("rules", strings.Join(f.Rules, ", "))
	tw.Flush()
	fmt.Fprintln(stdout)
	if len(f.Functions) == 0 {
		fmt.Fprintln(stdout, "no function was chosen for this event (or its records expired)")
		return 0
	}
	tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FUNCTION\tRULE\tSTATE\tDETAIL")
	for _, fn := range f.Functions {
		var detail []string
		if fn.DeliveredAt != nil {
			detail = append(detail, "delivered at "+fmtTime(fn.DeliveredAt))
		}
		if fn.DeadLetteredAt != nil {
			reason := strings.ReplaceAll(fn.LastError, "\n", " ")
			if len(reason) > 120 {
				reason = reason[:120] + "…"
			}
			verb := "dead-lettered"
			if fn.State != "dead_lettered" {
				verb = "was dead-lettered"
			}
			detail = append(detail, fmt.Sprintf("%s at %s after %d attempts: %s", verb, fmtTime(fn.DeadLetteredAt), fn.Attempts, reason))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", fn.Function, fn.Rule, fn.State, strings.Join(detail, "; "))
	}
	tw.Flush()
	return 0
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}
