package functions

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/httpx"
	"github.com/fleetgate/fleetgate/storage"
)

// PurgeRequest is the optional JSON body of DELETE /admin/v1/dlq/{function}.
type PurgeRequest struct {
	Seqs   []uint64  `json:"seqs,omitempty"`   // only these (default: all that match before)
	Before time.Time `json:"before,omitempty"` // only those dead-lettered before this time (default: any)
}

// PurgeResponse answers DELETE /admin/v1/dlq/{function}.
type PurgeResponse struct {
	Function string `json:"function"`
	Purged   int    `json:"purged"`
}

// servePurge serves DELETE /admin/v1/dlq/{function}[?before=RFC3339][&seqs=1,2]: it deletes
// the function's dead letters (dead-lettered before `before`, and only `seqs` when given; all
// of them without either) for good. The same filters may come as a JSON body {"seqs":[...],
// "before":"..."}.
func (d *Dispatcher) servePurge(ctx *fasthttp.RequestCtx, name string) {
	var req PurgeRequest
	if body := strings.TrimSpace(string(ctx.PostBody())); body != "" {
		if err := json.Unmarshal([]byte(body), &req); err != nil {
			httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", `body must be {"seqs":[...],"before":"RFC3339"}: `+err.Error())
			return
		}
	}
	args := ctx.QueryArgs()
	if v := string(args.Peek("before")); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "before must be an RFC 3339 time, such as 2025-01-02T03:04:05Z")
			return
		}
		req.Before = t
	}
	if v := string(args.Peek("seqs")); v != "" {
		for _, p := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 64)
			if err != nil {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "seqs must be comma-separated sequence numbers")
				return
			}
			req.Seqs = append(req.Seqs, n)
		}
	}
	if req.Seqs != nil && len(req.Seqs) == 0 {
		req.Seqs = nil
	}
	n, err := d.PurgeDeadLetters(name, req.Before, req.Seqs)
	if err != nil {
		writeStoreError(ctx, err)
		return
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, PurgeResponse{Function: name, Purged: n})
}

// serveEvent serves GET /admin/v1/events/{id}: the event's fate (EventFate), or 404.
func (d *Dispatcher) serveEvent(ctx *fasthttp.RequestCtx, rawID string) {
	if !ctx.IsGet() {
		methodNotAllowed(ctx, "GET")
		return
	}
	id := rawID // the path is already decoded
	if id == "" || strings.Contains(id, "/") {
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no event with id "+strconv.Quote(rawID))
		return
	}
	fate, err := d.Fate(id)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, storage.ErrUnsupported):
		httpx.WriteError(ctx, fasthttp.StatusNotImplemented, "unsupported", err.Error())
	case err != nil:
		writeStoreError(ctx, err)
	default:
		httpx.WriteJSON(ctx, fasthttp.StatusOK, fate)
	}
}
