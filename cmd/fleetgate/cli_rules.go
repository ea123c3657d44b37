package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/fleetgate/fleetgate/rules"
	"gopkg.in/yaml.v3"
)

const rulesUsage = `usage: fleetgate rules <command> [flags]

commands:
  list   [-o table|json]                    the live rules with their counters
  apply  -f FILE                            replace the live set with the rules: list of a YAML file
  delete ID                                 remove one rule
  test   --topic T --event FILE [--claims JSON] [--source mqtt|http]
         [--subject S] [--tenant T] [--meta k=v ...] [-o json]
                                            dry run: which rules match, which functions, and why
  versions [-o table|json]                  the stored rule-set versions, newest first
  rollback VERSION                          make a stored version's rules live again (as a new version)

every command takes --server URL and --token TOKEN (or FLEETGATE_SERVER, FLEETGATE_TOKEN)
`

// rulesCmd implements `fleetgate rules ...` against a running gateway's admin API.
func rulesCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, rulesUsage)
		return 2
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "list":
		return rulesList(rest, stdout, stderr)
	case "apply":
		return rulesApply(rest, stdout, stderr)
	case "delete":
		return rulesDelete(rest, stdout, stderr)
	case "test":
		return rulesTest(rest, stdout, stderr)
	case "versions":
		return rulesVersions(rest, stdout, stderr)
	case "rollback":
		return rulesRollback(rest, stdout, stderr)
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, rulesUsage)
		return 0
	}
	fmt.Fprintf(stderr, "fleetgate rules: unknown command %q\n\n%s", sub, rulesUsage)
	return 2
}

// parseInterspersed parses flags that may come before or after positional arguments
// (`rules delete ID --token x`) and returns the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// failRules prints err (every problem of a refused rule set, one per line) and returns 1.
func failRules(stderr io.Writer, what string, err error) int {
	var apiErr *APIError
	if errors.As(err, &apiErr) && apiErr.Code == "invalid_rules" {
		var inv rules.InvalidResponse
		if json.Unmarshal(apiErr.Body, &inv) == nil && len(inv.Problems) > 0 {
			fmt.Fprintf(stderr, "fleetgate rules %s: %s\n", what, inv.Error)
			for _, p := range inv.Problems {
				fmt.Fprintf(stderr, "  %s\n", p.Error())
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "fleetgate rules %s: %v\n", what, err)
	return 1
}

func newRulesFlags(name string, stderr io.Writer) (*flag.FlagSet, func() (*adminClient, error)) {
	fs := flag.NewFlagSet("fleetgate rules "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, addClientFlags(fs)
}

func rulesList(args []string, stdout, stderr io.Writer) int {
	fs, client := newRulesFlags("list", stderr)
	output := fs.String("o", "table", "output: table or json")
	if _, err := parseInterspersed(fs, args); err != nil {
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "fleetgate rules list: -o must be table or json, not %q\n", *output)
		return 2
	}
	c, err := client()
	if err != nil {
		return failRules(stderr, "list", err)
	}
	var raw json.RawMessage
	if err := c.Do("GET", rules.AdminPrefix, nil, &raw); err != nil {
		return failRules(stderr, "list", err)
	}
	if *output == "json" {
		fmt.Fprintln(stdout, strings.TrimSpace(string(raw)))
		return 0
	}
	var list rules.ListResponse
	if err := json.Unmarshal(raw, &list); err != nil {
		return failRules(stderr, "list", fmt.Errorf("decoding the answer: %w", err))
	}
	fmt.Fprintf(stdout, "rule set version %d, %d rules\n", list.Version, len(list.Rules))
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTOPIC\tWHEN\tFUNCTIONS\tENABLED\tMATCHED\tPASSED\tERRORS")
	for _, r := range list.Rules {
		fns := strings.Join(r.Functions, ",")
		for i, rt := range r.Routes {
			if fns != "" || i > 0 {
				fns += " "
			}
			cond := rt.When
			if cond == "" {
				cond = "default"
			}
			fns += fmt.Sprintf("[%s → %s]", cond, strings.Join(rt.Functions, ","))
		}
		when := r.When
		if when == "" {
			when = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\t%d\t%d\t%d\n", r.ID, r.Topic, when, fns, r.IsEnabled(), r.Stats.Matched, r.Stats.Passed, r.Stats.Errors)
	}
	tw.Flush()
	return 0
}

// readRulesFile reads the top-level rules: list of a YAML file (a rules file or the config
// file). Unknown keys inside a rule are refused, so a misspelt key does not pass silently.
func readRulesFile(path string) ([]rules.Rule, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Rules yaml.Node `yaml:"rules"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if doc.Rules.Kind == 0 {
		return nil, fmt.Errorf("%s: no top-level rules: list", path)
	}
	sub, err := yaml.Marshal(map[string]*yaml.Node{"rules": &doc.Rules})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	req, err := rules.DecodeApply(sub, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return req.Rules, nil
}

func rulesApply(args []string, stdout, stderr io.Writer) int {
	fs, client := newRulesFlags("apply", stderr)
	file := fs.String("f", "", "YAML file with a top-level rules: list (required)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(stderr, "fleetgate rules apply: -f FILE is required")
		return 2
	}
	list, err := readRulesFile(*file)
	if err != nil {
		return failRules(stderr, "apply", err)
	}
	c, err := client()
	if err != nil {
		return failRules(stderr, "apply", err)
	}
	var resp rules.VersionResponse
	if err := c.Do("PUT", rules.AdminPrefix, rules.ApplyRequest{Rules: list}, &resp); err != nil {
		return failRules(stderr, "apply", err)
	}
	fmt.Fprintf(stdout, "applied %d rules: rule set version %d is live\n", len(list), resp.Version)
	return 0
}

func rulesDelete(args []string, stdout, stderr io.Writer) int {
	fs, client := newRulesFlags("delete", stderr)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: fleetgate rules delete ID")
		return 2
	}
	c, err := client()
	if err != nil {
		return failRules(stderr, "delete", err)
	}
	var resp rules.VersionResponse
	if err := c.Do("DELETE", rules.AdminPrefix+"/"+url.PathEscape(pos[0]), nil, &resp); err != nil {
		return failRules(stderr, "delete", err)
	}
	fmt.Fprintf(stdout, "deleted rule %s: rule set version %d is live\n", pos[0], resp.Version)
	return 0
}

// metaFlags collects repeated --meta k=v.
type metaFlags map[string]string

func (m metaFlags) String() string { return "" }

func (m metaFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	m[k] = v
	return nil
}

func rulesTest(args []string, stdout, stderr io.Writer) int {
	fs, client := newRulesFlags("test", stderr)
	topic := fs.String("topic", "", "topic of the event (required)")
	claims := fs.String("claims", "", "sender claims as a JSON object")
	source := fs.String("source", "mqtt", "mqtt or http")
	subject := fs.String("subject", "", "sender subject")
	tenant := fs.String("tenant", "", "sender tenant")
	eventFile := fs.String("event", "", "file holding the event payload (required; non-JSON is sent as is)")
	output := fs.String("o", "text", "output: text or json")
	meta := metaFlags{}
	fs.Var(meta, "meta", "request metadata key=value (repeatable)")
	if _, err := parseInterspersed(fs, args); err != nil {
		return 2
	}
	switch {
	case *topic == "":
		fmt.Fprintln(stderr, "fleetgate rules test: --topic is required")
		return 2
	case *eventFile == "":
		fmt.Fprintln(stderr, "fleetgate rules test: --event FILE is required")
		return 2
	case *source != "mqtt" && *source != "http":
		fmt.Fprintln(stderr, "fleetgate rules test: --source must be mqtt or http")
		return 2
	case *output != "text" && *output != "json":
		fmt.Fprintln(stderr, "fleetgate rules test: -o must be text or json")
		return 2
	}
	req := rules.TestRequest{Topic: *topic, Source: *source, Subject: *subject, Tenant: *tenant}
	if len(meta) > 0 {
		req.Meta = meta
	}
	if *claims != "" {
		if err := json.Unmarshal([]byte(*claims), &req.Claims); err != nil {
			fmt.Fprintf(stderr, "fleetgate rules test: --claims must be a JSON object: %v\n", err)
			return 2
		}
	}
	data, err := os.ReadFile(*eventFile)
	if err != nil {
		return failRules(stderr, "test", err)
	}
	if json.Valid(data) {
		req.Payload = data
	} else {
		req.RawPayload = string(data)
	}
	c, err := client()
	if err != nil {
		return failRules(stderr, "test", err)
	}
	var raw json.RawMessage
	if err := c.Do("POST", rules.AdminPrefix+"/test", req, &raw); err != nil {
		return failRules(stderr, "test", err)
	}
	if *output == "json" {
		fmt.Fprintln(stdout, strings.TrimSpace(string(raw)))
		return 0
	}
	var res rules.TestResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return failRules(stderr, "test", fmt.Errorf("decoding the answer: %w", err))
	}
	printTestResult(stdout, *topic, res)
	return 0
}

func printTestResult(w io.Writer, topic string, res rules.TestResult) {
	fmt.Fprintf(w, "topic %s against rule set version %d\n", topic, res.Version)
	if len(res.Functions) == 0 {
		fmt.Fprintln(w, "functions: none (no rule chose a function)")
	} else {
		fmt.Fprintf(w, "functions: %s\n", strings.Join(res.Functions, ", "))
	}
	fmt.Fprintf(w, "\nmatched (%d):\n", len(res.Matched))
	for _, r := range res.Matched {
		fmt.Fprintf(w, "  %s → %s\n      %s\n", r.Rule, strings.Join(r.Functions, ", "), r.Reason)
		if len(r.Data) > 0 {
			fmt.Fprintf(w, "      select output: %s\n", r.Data)
		}
	}
	fmt.Fprintf(w, "\nnot matched (%d):\n", len(res.NotMatched))
	for _, r := range res.NotMatched {
		fmt.Fprintf(w, "  %s: %s\n", r.Rule, r.Reason)
	}
}

func rulesVersions(args []string, stdout, stderr io.Writer) int {
	fs, client := newRulesFlags("versions", stderr)
	output := fs.String("o", "table", "output: table or json")
	if _, err := parseInterspersed(fs, args); err != nil {
		return 2
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "fleetgate rules versions: -o must be table or json, not %q\n", *output)
		return 2
	}
	c, err := client()
	if err != nil {
		return failRules(stderr, "versions", err)
	}
	var raw json.RawMessage
	if err := c.Do("GET", rules.AdminPrefix+"/versions", nil, &raw); err != nil {
		return failRules(stderr, "versions", err)
	}
	if *output == "json" {
		fmt.Fprintln(stdout, strings.TrimSpace(string(raw)))
		return 0
	}
	var vs rules.VersionsResponse
	if err := json.Unmarshal(raw, &vs); err != nil {
		return failRules(stderr, "versions", fmt.Errorf("decoding the answer: %w", err))
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tAPPLIED\tRULES\tNOTE")
	for _, v := range vs.Versions {
		var note []string
		if v.Live {
			note = append(note, "live")
		}
		if v.RollbackOf > 0 {
			note = append(note, fmt.Sprintf("rollback to %d", v.RollbackOf))
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", v.Version, v.AppliedAt.Format("2006-01-02 15:04:05Z07:00"), v.RuleCount, strings.Join(note, ", "))
	}
	tw.Flush()
	return 0
}

func rulesRollback(args []string, stdout, stderr io.Writer) int {
	fs, client := newRulesFlags("rollback", stderr)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) != 1 {
		fmt.Fprintln(stderr, "usage: fleetgate rules rollback VERSION   (see fleetgate rules versions)")
		return 2
	}
	n, err := strconv.Atoi(pos[0])
	if err != nil || n <= 0 {
		fmt.Fprintf(stderr, "fleetgate rules rollback: VERSION must be a positive integer, not %q\n", pos[0])
		return 2
	}
	c, err := client()
	if err != nil {
		return failRules(stderr, "rollback", err)
	}
	var resp rules.RollbackResponse
	if err := c.Do("POST", fmt.Sprintf("%s/versions/%d/rollback", rules.AdminPrefix, n), nil, &resp); err != nil {
		return failRules(stderr, "rollback", err)
	}
	fmt.Fprintf(stdout, "rolled back to the rules of version %d: rule set version %d is live\n", resp.RollbackOf, resp.Version)
	return 0
}
