package shadow

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/httpx"
)

// HTTPPrefix is where the shadow API is served: GET and PATCH /v1/shadows/{device}.
const HTTPPrefix = "/v1/shadows/"

// Handler serves GET /v1/shadows/{device} (200 with the document, 404 when there is none)
// and PATCH /v1/shadows/{device} with an update (200 with the new document; 400 invalid,
// 409 stale version with the current one in "version", 413 over shadow.max_bytes). The HTTP
// server authenticates the request and stores the *auth.Principal under httpx.PrincipalKey;
// the principal must be allowed the device's shadow by its policy (403 otherwise). The
// shadow is looked up in the principal's tenant; an operator may name another with
// ?tenant=.
func (s *Service) Handler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		p, _ := ctx.UserValue(httpx.PrincipalKey).(*auth.Principal)
		if p == nil {
			httpx.WriteError(ctx, fasthttp.StatusUnauthorized, "unauthenticated", "a bearer token is required")
			return
		}
		device := strings.TrimPrefix(string(ctx.Path()), HTTPPrefix)
		if !validDevice(device) {
			httpx.WriteError(ctx, fasthttp.StatusBadRequest, "invalid", "the path must be "+HTTPPrefix+"{device}, one level without '+', '#' or a leading '$'")
			return
		}
		if !p.CanUseShadow(device) {
			httpx.WriteError(ctx, fasthttp.StatusForbidden, "forbidden",
				"the token's role may not use the shadow of "+strconvQuote(device)+" (auth.policies.<role>.shadow)")
			return
		}
		tenant := p.Tenant
		if t := ctx.QueryArgs().Peek("tenant"); t != nil && p.IsAdmin() {
			tenant = string(t)
		}
		switch {
		case ctx.IsGet():
			doc, err := s.Get(tenant, device)
			if err != nil {
				writeRejection(ctx, err)
				return
			}
			httpx.WriteJSON(ctx, fasthttp.StatusOK, doc)
		case ctx.IsPatch():
			from := Sender{Subject: p.Subject, Tenant: p.Tenant, Protocol: event.ProtocolHTTP, Source: "http://" + p.Subject,
				Claims: p.Claims, ClaimsJSON: p.ClaimsJSON}
			c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			doc, err := s.Update(c, from, tenant, device, ctx.PostBody())
			if err != nil {
				writeRejection(ctx, err)
				return
			}
			httpx.WriteJSON(ctx, fasthttp.StatusOK, doc)
		default:
			ctx.Response.Header.Set("Allow", "GET, PATCH")
			httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use GET or PATCH")
		}
	}
}

func writeRejection(ctx *fasthttp.RequestCtx, err error) {
	status, r := RejectionFor(err)
	httpx.WriteJSON(ctx, status, r)
}

func strconvQuote(s string) string { b, _ := json.Marshal(s); return string(b) }
