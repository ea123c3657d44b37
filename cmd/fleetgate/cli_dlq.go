package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

const dlqUsage = `usage:
  fleetgate dlq list   --function NAME [--after SEQ] [--limit N] [-o text|json] [--server URL] [--token JWT]
  fleetgate dlq replay --function NAME [--seq SEQ,...] [--server URL] [--token JWT]
  fleetgate dlq purge  --function NAME [--before TIME|AGE] [--seq SEQ,...] [--yes] [--server URL] [--token JWT]
`

// dlqLetter is one dead letter as GET /admin/v1/dlq/{function} answers it.
type dlqLetter struct {
	Seq      uint64          `json:"seq"`
	Attempts int             `json:"attempts"`
	Reason   string          `json:"reason"`
	At       time.Time       `json:"at"`
	Rule     string          `json:"rule"`
	Event    json.RawMessage `json:"event"`
}

type dlqPage struct {
	Function    string      `json:"function"`
	DeadLetters []dlqLetter `json:"dead_letters"`
	Next        uint64      `json:"next"`
}

// cmdDLQ runs `fleetgate dlq list|replay|purge`.
func cmdDLQ(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, dlqUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("fleetgate dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := addClientFlags(fs)
	function := fs.String("function", "", "function name (required)")
	var after uint64
	var limit int
	var output, seqList, beforeArg string
	var yes bool
	switch sub {
	case "list":
		fs.Uint64Var(&after, "after", 0, "list dead letters after this sequence number")
		fs.IntVar(&limit, "limit", 0, "at most this many (default: all)")
		fs.StringVar(&output, "o", "text", "output format: text or json")
	case "replay":
		fs.StringVar(&seqList, "seq", "", "comma-separated sequence numbers to replay (default: all)")
	case "purge":
		fs.StringVar(&beforeArg, "before", "", "only dead letters older than this: an RFC 3339 time, or an age such as 24h (default: any)")
		fs.StringVar(&seqList, "seq", "", "comma-separated sequence numbers to purge (default: all that match --before)")
		fs.BoolVar(&yes, "yes", false, "delete them; without it, only show what would be purged")
	default:
		fmt.Fprintf(stderr, "fleetgate dlq: unknown subcommand %q\n\n%s", sub, dlqUsage)
		return 2
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if *function == "" {
		fmt.Fprintf(stderr, "fleetgate dlq %s: --function is required\n", sub)
		return 2
	}
	if output != "" && output != "text" && output != "json" {
		fmt.Fprintf(stderr, "fleetgate dlq list: -o must be text or json, not %q\n", output)
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate dlq:", err)
		return 2
	}
	base := "/admin/v1/dlq/" + url.PathEscape(*function)
	var seqs []uint64
	if seqList != "" {
		for _, s := range strings.Split(seqList, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
			if err != nil {
				fmt.Fprintf(stderr, "fleetgate dlq %s: --seq: %q is not a sequence number\n", sub, s)
				return 2
			}
			seqs = append(seqs, n)
		}
	}
	if sub == "purge" {
		return dlqPurge(c, base, *function, beforeArg, seqs, yes, stdout, stderr)
	}
	if sub == "replay" {
		var body any
		if seqs != nil {
			body = map[string][]uint64{"seqs": seqs}
		}
		var res struct {
			Replayed int `json:"replayed"`
		}
		if err := c.Do("POST", base+"/replay", body, &res); err != nil {
			fmt.Fprintln(stderr, "fleetgate dlq replay:", err)
			return 1
		}
		fmt.Fprintf(stdout, "replayed %d dead letters of %s\n", res.Replayed, *function)
		if res.Replayed > 0 {
			fmt.Fprintln(stdout, "order: each goes before its sender's newer events still waiting (they are held until it is done),\n"+
				"after those already delivered, in flight or waiting for a retry; its attempts start again at 0")
		}
		return 0
	}

	// list: page through everything (or up to --limit).
	letters, err := listDeadLetters(c, base, after, limit)
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate dlq list:", err)
		return 1
	}
	if output == "json" {
		if letters == nil {
			letters = []dlqLetter{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(letters); err != nil {
			fmt.Fprintln(stderr, "fleetgate dlq list:", err)
			return 1
		}
		return 0
	}
	if len(letters) == 0 {
		fmt.Fprintf(stdout, "no dead letters for %s\n", *function)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tEVENT\tSUBJECT\tTOPIC\tATTEMPTS\tAT\tREASON")
	for _, l := range letters {
		var ev struct{ ID, Subject, Topic string }
		_ = json.Unmarshal(l.Event, &ev)
		reason := strings.ReplaceAll(l.Reason, "\n", " ")
		if len(reason) > 120 {
			reason = reason[:120] + "…"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", l.Seq, ev.ID, ev.Subject, ev.Topic, l.Attempts, l.At.Format(time.RFC3339), reason)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "%d dead letters; replay with: fleetgate dlq replay --function %s\n", len(letters), *function)
	return 0
}

// listDeadLetters pages through a function's dead letters after seq after, up to limit (0: all).
func listDeadLetters(c *adminClient, base string, after uint64, limit int) ([]dlqLetter, error) {
	var letters []dlqLetter
	for {
		pageSize := 1000
		if limit > 0 {
			pageSize = min(pageSize, limit-len(letters))
		}
		var page dlqPage
		q := url.Values{"after": {strconv.FormatUint(after, 10)}, "limit": {strconv.Itoa(pageSize)}}
		if err := c.Do("GET", base+"?"+q.Encode(), nil, &page); err != nil {
			return letters, err
		}
		letters = append(letters, page.DeadLetters...)
		if page.Next == 0 || len(page.DeadLetters) == 0 || (limit > 0 && len(letters) >= limit) {
			return letters, nil
		}
		after = page.Next
	}
}

// dlqPurge runs `fleetgate dlq purge`: without yes it lists what would be purged; with it, it
// deletes those dead letters for good and prints how many.
func dlqPurge(c *adminClient, base, function, beforeArg string, seqs []uint64, yes bool, stdout, stderr io.Writer) int {
	var before time.Time
	if beforeArg != "" {
		if t, err := time.Parse(time.RFC3339Nano, beforeArg); err == nil {
			before = t
		} else if d, err := time.ParseDuration(beforeArg); err == nil && d >= 0 {
			before = time.Now().Add(-d)
		} else {
			fmt.Fprintf(stderr, "fleetgate dlq purge: --before: %q is neither an RFC 3339 time nor an age such as 24h\n", beforeArg)
			return 2
		}
	}
	what := "all dead letters"
	if !before.IsZero() {
		what = "dead letters from before " + before.UTC().Format(time.RFC3339)
	}
	if seqs != nil {
		what += fmt.Sprintf(" among %d sequence numbers", len(seqs))
	}
	if !yes {
		letters, err := listDeadLetters(c, base, 0, 0)
		if err != nil {
			fmt.Fprintln(stderr, "fleetgate dlq purge:", err)
			return 1
		}
		want := map[uint64]bool{}
		for _, s := range seqs {
			want[s] = true
		}
		var match []dlqLetter
		for _, l := range letters {
			if (before.IsZero() || l.At.Before(before)) && (seqs == nil || want[l.Seq]) {
				match = append(match, l)
			}
		}
		if len(match) == 0 {
			fmt.Fprintf(stdout, "nothing to purge: no %s of %s\n", what, function)
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tEVENT\tSUBJECT\tATTEMPTS\tAT")
		for i, l := range match {
			if i == 20 {
				fmt.Fprintf(tw, "…\t%d more\t\t\t\n", len(match)-20)
				break
			}
			var ev struct{ ID, Subject string }
			_ = json.Unmarshal(l.Event, &ev)
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\n", l.Seq, ev.ID, ev.Subject, l.Attempts, l.At.Format(time.RFC3339))
		}
		tw.Flush()
		fmt.Fprintf(stdout, "would purge %d dead letters of %s (%s); nothing was deleted: add --yes to delete them for good\n", len(match), function, what)
		return 0
	}
	q := url.Values{}
	if !before.IsZero() {
		q.Set("before", before.UTC().Format(time.RFC3339Nano))
	}
	if seqs != nil {
		parts := make([]string, len(seqs))
		for i, s := range seqs {
			parts[i] = strconv.FormatUint(s, 10)
		}
		q.Set("seqs", strings.Join(parts, ","))
	}
	path := base
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var res struct {
		Purged int `json:"purged"`
	}
	if err := c.Do("DELETE", path, nil, &res); err != nil {
		fmt.Fprintln(stderr, "fleetgate dlq purge:", err)
		return 1
	}
	fmt.Fprintf(stdout, "purged %d dead letters of %s\n", res.Purged, function)
	return 0
}
