package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/httpx"
)

// RevocationsPath is where RevocationsHandler is mounted.
const RevocationsPath = "/admin/v1/revocations"

// Disconnecter ends the live connections of senders whose principal revoked reports true and
// returns how many it ended. The MQTT broker satisfies it.
type Disconnecter interface {
	DisconnectRevoked(revoked func(*auth.Principal) bool) int
}

// RevocationsHandler serves the revocation list to operators:
//
//	POST   /admin/v1/revocations  {"subject":"..","tenant":".."} or {"jti":".."}
//	       → 201 {"revocation":{...},"disconnected":N}, once the entry is durable; live
//	       connections it covers (d, may be nil) are closed before the answer.
//	GET    /admin/v1/revocations  → 200 {"revocations":[...]}
//	DELETE /admin/v1/revocations?subject=..&tenant=.. or ?jti=..  → 200 {"deleted":true}, or 404
func RevocationsHandler(list *auth.Revocations, d Disconnecter, log *slog.Logger) fasthttp.RequestHandler {
	if log == nil {
		log = slog.Default()
	}
	return func(ctx *fasthttp.RequestCtx) {
		if strings.TrimSuffix(string(ctx.Path()), "/") != RevocationsPath {
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such path: "+string(ctx.Path()))
			return
		}
		switch string(ctx.Method()) {
		case fasthttp.MethodGet:
			httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]any{"revocations": nonNil(list.List())})
		case fasthttp.MethodPost:
			var rv auth.Revocation
			dec := json.NewDecoder(bytes.NewReader(ctx.PostBody()))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&rv); err != nil {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "malformed", `body: want {"subject":"...","tenant":"..."} or {"jti":"..."}: `+err.Error())
				return
			}
			rv, err := list.Add(auth.Revocation{Subject: rv.Subject, Tenant: rv.Tenant, JTI: rv.JTI})
			if err != nil {
				revocationError(ctx, err)
				return
			}
			n := 0
			if d != nil {
				n = d.DisconnectRevoked(func(p *auth.Principal) bool { return list.Revoked(p) != "" })
			}
			log.Info("revoked", "subject", rv.Subject, "tenant", rv.Tenant, "jti", rv.JTI, "by", operator(ctx), "disconnected", n)
			httpx.WriteJSON(ctx, fasthttp.StatusCreated, map[string]any{"revocation": rv, "disconnected": n})
		case fasthttp.MethodDelete:
			q := ctx.QueryArgs()
			rv := auth.Revocation{Subject: string(q.Peek("subject")), Tenant: string(q.Peek("tenant")), JTI: string(q.Peek("jti"))}
			found, err := list.Remove(rv)
			if err != nil {
				revocationError(ctx, err)
				return
			}
			if !found {
				httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such revocation")
				return
			}
			log.Info("revocation deleted", "subject", rv.Subject, "tenant", rv.Tenant, "jti", rv.JTI, "by", operator(ctx))
			httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]any{"deleted": true})
		default:
			ctx.Response.Header.Set(fasthttp.HeaderAllow, "GET, POST, DELETE")
			httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "method not allowed; use GET, POST or DELETE")
		}
	}
}

func revocationError(ctx *fasthttp.RequestCtx, err error) {
	if errors.Is(err, auth.ErrInvalidRevocation) {
		httpx.WriteError(ctx, fasthttp.StatusBadRequest, "invalid", err.Error())
		return
	}
	ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, "5")
	httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
}

func nonNil(l []auth.Revocation) []auth.Revocation {
	if l == nil {
		return []auth.Revocation{}
	}
	return l
}

// operator names the admin who made the request, for the log.
func operator(ctx *fasthttp.RequestCtx) string {
	if p, ok := ctx.UserValue(httpx.PrincipalKey).(*auth.Principal); ok {
		return p.Subject
	}
	return ""
}
