package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/httpx"
)

// AdminPath is where the cluster's admin API is served: GET for this node's view of the
// cluster, DELETE AdminPath+"/peers/{node}" to remove a stopped node for good.
const AdminPath = "/admin/v1/cluster"

// PeerView is one peer of the JetStream meta group as this node sees it.
type PeerView struct {
	Name    string `json:"name"`
	Self    bool   `json:"self,omitempty"`
	Leader  bool   `json:"leader,omitempty"`
	Online  bool   `json:"online"`            // JetStream has seen it recently and a route to it is up
	Route   string `json:"route,omitempty"`   // the address of its connected route
	Current bool   `json:"current,omitempty"` // caught up with the meta group
	// LastSeen is how long ago JetStream last heard from it (empty for this node).
	LastSeen string `json:"last_seen,omitempty"`
}

// StatusView is GET AdminPath's answer.
type StatusView struct {
	Node     string `json:"node"`
	Cluster  string `json:"cluster"`
	Quorum   bool   `json:"quorum"`
	Reason   string `json:"reason,omitempty"` // why there is no quorum
	Leader   string `json:"meta_leader,omitempty"`
	MetaSize int    `json:"meta_size"` // peers the meta group counts, offline ones included
	Replicas int    `json:"replicas"`
	// Peers are the meta group's peers (embedded NATS only; with cluster.nats.url, ask NATS).
	Peers            []PeerView `json:"peers,omitempty"`
	WaitingForRoutes []string   `json:"waiting_for_routes,omitempty"`
	URL              string     `json:"nats_url,omitempty"` // with an external NATS cluster
}

// Status returns this node's view of the cluster now (not the cached quorum: a fresh look).
func (n *Node) Status() StatusView {
	st := n.check()
	v := StatusView{Node: n.cfg.Node, Cluster: n.cfg.Name, Quorum: st.err == nil, Leader: st.leader,
		MetaSize: st.size, Replicas: n.cfg.Replicas, WaitingForRoutes: st.waiting}
	if st.err != nil {
		v.Reason = st.err.Error()
	}
	if n.srv == nil {
		v.URL = redactURL(n.cfg.NATS.URL)
		return v
	}
	routes := map[string]string{}
	for _, c := range st.connected {
		name, addr, _ := strings.Cut(c, "@")
		routes[name] = addr
	}
	v.Peers = append(v.Peers, PeerView{Name: n.cfg.Node, Self: true, Leader: st.leader == n.cfg.Node, Online: true, Current: true})
	if jsi, err := n.srv.Jsz(&server.JSzOptions{}); err == nil && jsi.Meta != nil {
		for _, p := range jsi.Meta.Replicas {
			pv := PeerView{Name: p.Name, Leader: p.Name == st.leader, Route: routes[p.Name], Current: p.Current}
			pv.Online = !p.Offline && pv.Route != ""
			if p.Active > 0 {
				pv.LastSeen = p.Active.Round(time.Millisecond).String()
			}
			v.Peers = append(v.Peers, pv)
		}
	}
	sort.Slice(v.Peers, func(i, j int) bool { return v.Peers[i].Name < v.Peers[j].Name })
	return v
}

// redactURL drops user info (passwords) from a NATS URL list.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = nil
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// ErrPeerOnline refuses to remove a peer that is still running.
var ErrPeerOnline = errors.New("the peer is online: stop it first (and move its stream replicas away, see docs/operations.md)")

// ErrUnknownPeer: no peer of that name in the meta group.
var ErrUnknownPeer = errors.New("no such peer in the JetStream meta group")

// RemoveStoppedPeer removes node from the meta group after checking that it is a known peer
// that this node does not see online (RemovePeer does the removal).
func (n *Node) RemoveStoppedPeer(ctx context.Context, node string) error {
	if n.srv == nil {
		return fmt.Errorf("%w: with cluster.nats.url run `nats server raft peer-remove %s` with your NATS system user", errExternal, node)
	}
	if node == n.cfg.Node {
		return fmt.Errorf("cluster: %q is this node: ask another node to remove it, once it is stopped", node)
	}
	for _, p := range n.Status().Peers {
		if p.Name != node {
			continue
		}
		if p.Online {
			return fmt.Errorf("cluster: remove peer %s: %w", node, ErrPeerOnline)
		}
		return n.RemovePeer(ctx, node)
	}
	return fmt.Errorf("cluster: remove peer %s: %w", node, ErrUnknownPeer)
}

var errExternal = errors.New("cluster: removing a peer needs the embedded NATS server")

// AdminHandler serves AdminPath (the caller checks the operator's token):
//
//	GET    /admin/v1/cluster               this node's view: quorum, meta leader, peers
//	DELETE /admin/v1/cluster/peers/{node}  remove a stopped node from the meta group for good
func (n *Node) AdminHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		rest := strings.TrimPrefix(string(ctx.Path()), AdminPath)
		rest = strings.Trim(rest, "/")
		switch {
		case rest == "" && ctx.IsGet():
			httpx.WriteJSON(ctx, fasthttp.StatusOK, n.Status())
		case strings.HasPrefix(rest, "peers/") && ctx.IsDelete():
			peer, err := url.PathUnescape(strings.TrimPrefix(rest, "peers/"))
			if err != nil || peer == "" || strings.Contains(peer, "/") {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "usage: DELETE "+AdminPath+"/peers/{node}")
				return
			}
			rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			switch err := n.RemoveStoppedPeer(rctx, peer); {
			case err == nil:
				httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]string{"removed": peer})
			case errors.Is(err, ErrUnknownPeer):
				httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", err.Error())
			case errors.Is(err, ErrPeerOnline):
				httpx.WriteError(ctx, fasthttp.StatusConflict, "peer_online", err.Error())
			case errors.Is(err, errExternal):
				httpx.WriteError(ctx, fasthttp.StatusNotImplemented, "unsupported", err.Error())
			case peer == n.cfg.Node:
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", err.Error())
			default:
				httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
			}
		default:
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "GET "+AdminPath+" or DELETE "+AdminPath+"/peers/{node}")
		}
	}
}

// NotClusteredHandler answers AdminPath on a gateway without a cluster: section.
func NotClusteredHandler(ctx *fasthttp.RequestCtx) {
	httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_clustered", "this gateway runs alone (no cluster: section in its config)")
}
