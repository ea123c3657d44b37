package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"text/tabwriter"
	"time"
)

const revokeUsage = `usage:
  fleetgate revoke --subject ID [--tenant T] [--server URL] [--token JWT]
  fleetgate revoke --jti ID [--server URL] [--token JWT]

Revoking a subject refuses every token of that subject (in that tenant; none: tokens without a
tenant claim) issued at or before the current second, and closes its live MQTT connections; new
tokens issued later work. Revoking a jti refuses that one token. Kept until deleted with
'fleetgate revocations delete'.
`

const revocationsUsage = `usage:
  fleetgate revocations list   [-o text|json] [--server URL] [--token JWT]
  fleetgate revocations delete --subject ID [--tenant T] | --jti ID [--server URL] [--token JWT]
`

// revocation is one entry as /admin/v1/revocations answers it.
type revocation struct {
	Subject   string    `json:"subject,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	JTI       string    `json:"jti,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
}

// revocationFlags registers --subject, --tenant and --jti; check says what is wrong with them.
func revocationFlags(fs *flag.FlagSet) (get func() revocation, check func() string) {
	subject := fs.String("subject", "", "the subject (\"sub\") whose tokens to revoke")
	tenant := fs.String("tenant", "", "the subject's tenant (omit for tokens without a tenant claim)")
	jti := fs.String("jti", "", "the id (\"jti\") of one token to revoke")
	get = func() revocation { return revocation{Subject: *subject, Tenant: *tenant, JTI: *jti} }
	check = func() string {
		switch {
		case *subject == "" && *jti == "":
			return "give --subject (with --tenant, if any) or --jti"
		case *jti != "" && (*subject != "" || *tenant != ""):
			return "give --subject or --jti, not both"
		}
		return ""
	}
	return get, check
}

// cmdRevoke runs `fleetgate revoke`.
func cmdRevoke(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleetgate revoke", flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := addClientFlags(fs)
	get, check := revocationFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(stderr, revokeUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fleetgate revoke: unexpected argument %q\n\n%s", fs.Arg(0), revokeUsage)
		return 2
	}
	if msg := check(); msg != "" {
		fmt.Fprintf(stderr, "fleetgate revoke: %s\n\n%s", msg, revokeUsage)
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate revoke:", err)
		return 2
	}
	var res struct {
		Revocation   revocation `json:"revocation"`
		Disconnected int        `json:"disconnected"`
	}
	if err := c.Do("POST", "/admin/v1/revocations", get(), &res); err != nil {
		fmt.Fprintln(stderr, "fleetgate revoke:", err)
		return 1
	}
	r := res.Revocation
	if r.JTI != "" {
		fmt.Fprintf(stdout, "revoked token %s at %s; %d connection(s) closed\n", r.JTI, r.RevokedAt.Format(time.RFC3339), res.Disconnected)
	} else {
		fmt.Fprintf(stdout, "revoked subject %s (%s) at %s: its tokens issued until then are refused; %d connection(s) closed\n",
			r.Subject, tenantText(r.Tenant), r.RevokedAt.Format(time.RFC3339), res.Disconnected)
	}
	return 0
}

func tenantText(t string) string {
	if t == "" {
		return "no tenant"
	}
	return "tenant " + t
}

// cmdRevocations runs `fleetgate revocations list|delete`.
func cmdRevocations(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, revocationsUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("fleetgate revocations "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := addClientFlags(fs)
	var output string
	var get func() revocation
	var check func() string
	switch sub {
	case "list":
		fs.StringVar(&output, "o", "text", "output format: text or json")
	case "delete":
		get, check = revocationFlags(fs)
	default:
		fmt.Fprintf(stderr, "fleetgate revocations: unknown subcommand %q\n\n%s", sub, revocationsUsage)
		return 2
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	if output != "" && output != "text" && output != "json" {
		fmt.Fprintf(stderr, "fleetgate revocations list: -o must be text or json, not %q\n", output)
		return 2
	}
	if check != nil {
		if msg := check(); msg != "" {
			fmt.Fprintf(stderr, "fleetgate revocations delete: %s\n\n%s", msg, revocationsUsage)
			return 2
		}
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate revocations:", err)
		return 2
	}
	if sub == "delete" {
		r := get()
		q := url.Values{}
		if r.JTI != "" {
			q.Set("jti", r.JTI)
		} else {
			q.Set("subject", r.Subject)
			q.Set("tenant", r.Tenant)
		}
		if err := c.Do("DELETE", "/admin/v1/revocations?"+q.Encode(), nil, nil); err != nil {
			fmt.Fprintln(stderr, "fleetgate revocations delete:", err)
			return 1
		}
		fmt.Fprintln(stdout, "revocation deleted")
		return 0
	}
	var page struct {
		Revocations []revocation `json:"revocations"`
	}
	if err := c.Do("GET", "/admin/v1/revocations", nil, &page); err != nil {
		fmt.Fprintln(stderr, "fleetgate revocations list:", err)
		return 1
	}
	if output == "json" {
		if page.Revocations == nil {
			page.Revocations = []revocation{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(page.Revocations); err != nil {
			fmt.Fprintln(stderr, "fleetgate revocations list:", err)
			return 1
		}
		return 0
	}
	if len(page.Revocations) == 0 {
		fmt.Fprintln(stdout, "no revocations")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBJECT\tTENANT\tJTI\tREVOKED AT")
	for _, r := range page.Revocations {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", dash(r.Subject), dash(r.Tenant), dash(r.JTI), r.RevokedAt.Format(time.RFC3339))
	}
	tw.Flush()
	return 0
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
