package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/fleetgate/fleetgate/cluster"
)

const clusterUsage = `usage:
  fleetgate cluster status [-o text|json] [--server URL] [--token JWT]
  fleetgate cluster remove-peer NODE [--server URL] [--token JWT]

status       the node's view of the cluster: quorum, JetStream meta leader, peers online
remove-peer  remove a node that was taken out for good (stopped, its stream replicas moved
             away) from the JetStream meta group, so the quorum no longer counts it; asked of
             any running node (see docs/operations.md, "Shrinking the cluster")
`

// cmdCluster runs `fleetgate cluster status|remove-peer` against a running cluster node.
func cmdCluster(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, clusterUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub := args[0]
	if sub != "status" && sub != "remove-peer" {
		fmt.Fprintf(stderr, "fleetgate cluster: unknown subcommand %q\n\n%s", sub, clusterUsage)
		return 2
	}
	fs := flag.NewFlagSet("fleetgate cluster "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	client := addClientFlags(fs)
	output := fs.String("o", "text", "status: output format, text or json")
	peer, err := parseWithArg(fs, args[1:])
	if err != nil {
		return 2
	}
	if sub == "status" && peer != "" {
		fmt.Fprintf(stderr, "fleetgate cluster status: unexpected argument %q\n\n%s", peer, clusterUsage)
		return 2
	}
	if sub == "remove-peer" && peer == "" {
		fmt.Fprint(stderr, "fleetgate cluster remove-peer: the node to remove is required\n\n"+clusterUsage)
		return 2
	}
	if !checkOutput("fleetgate cluster", *output, stderr) {
		return 2
	}
	c, err := client()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate cluster:", err)
		return 2
	}
	if sub == "remove-peer" {
		var out map[string]string
		if err := c.Do("DELETE", cluster.AdminPath+"/peers/"+url.PathEscape(peer), nil, &out); err != nil {
			fmt.Fprintf(stderr, "fleetgate cluster remove-peer: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "removed %s from the JetStream meta group\n", peer)
		return 0
	}
	var raw json.RawMessage
	if err := c.Do("GET", cluster.AdminPath, nil, &raw); err != nil {
		fmt.Fprintf(stderr, "fleetgate cluster status: %v\n", err)
		return 1
	}
	if *output == "json" {
		fmt.Fprintln(stdout, strings.TrimSpace(string(raw)))
		return 0
	}
	var st cluster.StatusView
	if err := json.Unmarshal(raw, &st); err != nil {
		fmt.Fprintln(stderr, "fleetgate cluster status:", err)
		return 1
	}
	q := "yes"
	if !st.Quorum {
		q = "NO: " + st.Reason
	}
	fmt.Fprintf(stdout, "node %s of cluster %s: quorum %s\nmeta leader %s, meta group of %d, replicas %d\n",
		st.Node, st.Cluster, q, orDash(st.Leader), st.MetaSize, st.Replicas)
	if st.URL != "" {
		fmt.Fprintf(stdout, "external NATS %s\n", st.URL)
	}
	if len(st.Peers) > 0 {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tSTATE\tROUTE\tLAST SEEN")
		for _, p := range st.Peers {
			state := "offline"
			switch {
			case p.Self:
				state = "this node"
			case p.Online:
				state = "online"
			}
			if p.Leader {
				state += ", leader"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Name, state, orDash(p.Route), orDash(p.LastSeen))
		}
		tw.Flush()
	}
	if len(st.WaitingForRoutes) > 0 {
		fmt.Fprintf(stdout, "waiting for routes: %s\n", strings.Join(st.WaitingForRoutes, " "))
	}
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
