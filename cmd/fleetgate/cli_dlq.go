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

// cmdDLQ runs `fleetgate dlq list|replay`.
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
	var output, seqList string
	switch sub {
	case "list":
		fs.Uint64Var(&after, "after", 0, "list dead letters after this sequence number")
		fs.IntVar(&limit, "limit", 0, "at most this many (default: all)")
		fs.StringVar(&output, "o", "text", "output format: text or json")
	case "replay":
		fs.StringVar(&seqList, "seq", "", "comma-separated sequence numbers to replay (default: all)")
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
	if sub == "replay" {
		var body any
		if seqList != "" {
			var seqs []uint64
			for _, s := range strings.Split(seqList, ",") {
				n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
				if err != nil {
					fmt.Fprintf(stderr, "fleetgate dlq replay: --seq: %q is not a sequence number\n", s)
					return 2
				}
				seqs = append(seqs, n)
			}
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
		return 0
	}

	// list: page through everything (or up to --limit).
	var letters []dlqLetter
	for {
		pageSize := 1000
		if limit > 0 {
			pageSize = min(pageSize, limit-len(letters))
		}
		var page dlqPage
		q := url.Values{"after": {strconv.FormatUint(after, 10)}, "limit": {strconv.Itoa(pageSize)}}
		if err := c.Do("GET", base+"?"+q.Encode(), nil, &page); err != nil {
			fmt.Fprintln(stderr, "fleetgate dlq list:", err)
			return 1
		}
		letters = append(letters, page.DeadLetters...)
		if page.Next == 0 || len(page.DeadLetters) == 0 || (limit > 0 && len(letters) >= limit) {
			break
		}
		after = page.Next
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
