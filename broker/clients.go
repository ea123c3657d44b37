package broker

import (
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/httpx"
)

// ClientsPath is where the clients API is served: GET /admin/v1/clients[/{client_id}].
const ClientsPath = "/admin/v1/clients"

// Bounds of GET /admin/v1/clients.
const (
	defaultClientsLimit = 100
	maxClientsLimit     = 1000
)

// ClientInfo is one MQTT session as the clients API shows it.
type ClientInfo struct {
	ClientID        string         `json:"client_id"`
	Tenant          string         `json:"tenant"`
	Subject         string         `json:"subject"`
	Connected       bool           `json:"connected"`
	Since           *time.Time     `json:"since,omitempty"` // connected: when it connected; offline: when it disconnected
	Node            string         `json:"node"`
	ProtocolVersion byte           `json:"protocol_version"`
	Remote          string         `json:"remote,omitempty"`
	CleanStart      bool           `json:"clean_start"`
	SessionExpiry   uint32         `json:"session_expiry_seconds"`
	SessionVersion  uint64         `json:"session_version"`
	Subscriptions   []Subscription `json:"subscriptions"`
	QueuedMessages  int            `json:"queued_messages"`
	QueuedBytes     int64          `json:"queued_bytes"`
}

// Subscription is one subscription of a session.
type Subscription struct {
	Filter string `json:"filter"`
	QoS    byte   `json:"qos"`
}

// Clients returns the sessions (connected clients and persistent sessions kept while their
// client is away) whose client id starts with prefix, in the given tenant (any tenant when
// anyTenant), sorted by tenant and client id, at most limit of them; more reports whether
// there were others.
func (b *Broker) Clients(prefix, tenant string, anyTenant bool, limit int) (out []ClientInfo, more bool) {
	for _, cl := range b.server.Clients.GetAll() {
		if cl == b.inline || cl.Net.Inline {
			continue
		}
		ci := b.clientInfo(cl)
		if !strings.HasPrefix(ci.ClientID, prefix) || (!anyTenant && ci.Tenant != tenant) {
			continue
		}
		out = append(out, ci)
	}
	slices.SortFunc(out, func(x, y ClientInfo) int {
		if c := strings.Compare(x.Tenant, y.Tenant); c != 0 {
			return c
		}
		return strings.Compare(x.ClientID, y.ClientID)
	})
	if len(out) > limit {
		return out[:limit], true
	}
	return out, false
}

// Client returns the session of clientID in tenant.
func (b *Broker) Client(tenant, clientID string) (ClientInfo, bool) {
	cl, ok := b.server.Clients.Get(scopedClientID(tenant, clientID))
	if !ok || cl == b.inline {
		return ClientInfo{}, false
	}
	return b.clientInfo(cl), true
}

func (b *Broker) clientInfo(cl *mqtt.Client) ClientInfo {
	ci := ClientInfo{
		ClientID: cl.ID, Node: b.node, ProtocolVersion: cl.Properties.ProtocolVersion,
		Remote: cl.Net.Remote, CleanStart: cl.Properties.Clean, SessionExpiry: cl.Properties.Props.SessionExpiryInterval,
		Connected: cl.Net.Conn != nil && !cl.Closed(), Subscriptions: []Subscription{},
	}
	var p *auth.Principal
	if s := b.session(cl); s != nil {
		p = s.p
		ci.ClientID = s.clientID
		ci.SessionVersion = s.version.Load()
		if ci.Connected && !s.connectedAt.IsZero() {
			t := s.connectedAt.UTC()
			ci.Since = &t
		}
	}
	if p != nil {
		ci.Subject, ci.Tenant = p.Subject, p.Tenant
		ci.ClientID = unscopedClientID(p.Tenant, cl.ID)
	} else if t, id, ok := strings.Cut(cl.ID, tenantSep); ok {
		ci.Tenant, ci.ClientID = t, id
	}
	if !ci.Connected {
		if st := cl.StopTime(); st > 0 {
			t := time.Unix(st, 0).UTC()
			ci.Since = &t
		}
	}
	for _, sub := range cl.State.Subscriptions.GetAll() {
		ci.Subscriptions = append(ci.Subscriptions, Subscription{Filter: sub.Filter, QoS: sub.Qos})
	}
	slices.SortFunc(ci.Subscriptions, func(x, y Subscription) int { return strings.Compare(x.Filter, y.Filter) })
	ci.QueuedMessages, ci.QueuedBytes = b.queueLen(cl)
	return ci
}

// ClientsHandler serves GET /admin/v1/clients (?prefix=, ?tenant=, ?limit= up to 1000,
// default 100: {"clients":[...],"more":bool}) and GET /admin/v1/clients/{client_id}
// (?tenant=; 404 when there is no such session). Without ?tenant= the list shows every
// tenant and a single client is looked up without tenant.
func (b *Broker) ClientsHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !ctx.IsGet() {
			ctx.Response.Header.Set("Allow", "GET")
			httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use GET")
			return
		}
		args := ctx.QueryArgs()
		tenant := string(args.Peek("tenant"))
		rest := strings.TrimPrefix(string(ctx.Path()), ClientsPath)
		if rest != "" && rest != "/" {
			id, err := url.PathUnescape(strings.TrimPrefix(rest, "/"))
			if err != nil {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "client id: "+err.Error())
				return
			}
			ci, ok := b.Client(tenant, id)
			if !ok {
				httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no session for client id "+strconv.Quote(id))
				return
			}
			httpx.WriteJSON(ctx, fasthttp.StatusOK, ci)
			return
		}
		limit := defaultClientsLimit
		if l := args.Peek("limit"); l != nil {
			n, err := strconv.Atoi(string(l))
			if err != nil || n < 1 || n > maxClientsLimit {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "limit: must be an integer in [1, 1000]")
				return
			}
			limit = n
		}
		list, more := b.Clients(string(args.Peek("prefix")), tenant, !args.Has("tenant"), limit)
		if list == nil {
			list = []ClientInfo{}
		}
		httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]any{"clients": list, "more": more})
	}
}
