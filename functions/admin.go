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

// FunctionStats is one function's state as the admin API shows it.
type FunctionStats struct {
	Name        string  `json:"name"`
	Type        string  `json:"type"`
	State       string  `json:"state"` // running | catching_up | failing | paused (circuit open) | stopped | removed (events left for a function no longer configured)
	QueueDepth  int64   `json:"queue_depth"`
	DeadLetters int64   `json:"dead_letters"`
	LagSeconds  float64 `json:"lag_seconds"` // age of the oldest event in memory not yet delivered
	InFlight    int64   `json:"in_flight"`   // batches
	Successes   int64   `json:"successes"`   // batches
	Failures    int64   `json:"failures"`    // batches failed in whole or in part
	Retries     int64   `json:"retries"`     // batches retried
	LastError   string  `json:"last_error,omitempty"`
	// Circuit is the function's breaker: open while its endpoint looks down (nil for a
	// removed function).
	Circuit *CircuitStats `json:"circuit,omitempty"`
}

// Stats returns every function's state, by name.
func (d *Dispatcher) Stats() []FunctionStats {
	out := make([]FunctionStats, 0, len(d.order))
	for _, f := range d.order {
		st := FunctionStats{
			Name: f.name, Type: f.def.Type, State: "running",
			QueueDepth: d.store.QueueDepth(f.name), DeadLetters: d.store.DeadLetterDepth(f.name),
			LagSeconds: f.lag().Seconds(), InFlight: f.inFlight.Load(),
			Successes: f.successes.Load(), Failures: f.failures.Load(), Retries: f.retriesN.Load(),
		}
		if p := f.lastErr.Load(); p != nil {
			st.LastError = *p
		}
		cs := f.circuitV.stats(time.Now())
		st.Circuit = &cs
		switch {
		case d.stopping.Load() || !d.started.Load():
			st.State = "stopped"
		case cs.State != CircuitClosed:
			st.State = "paused"
		case f.failing.Load():
			st.State = "failing"
		case f.catchingUpA.Load():
			st.State = "catching_up"
		}
		out = append(out, st)
	}
	return append(out, d.removed()...)
}

// DeadLetterView is one dead letter as the admin API shows it.
type DeadLetterView struct {
	Seq      uint64          `json:"seq"`
	Attempts int             `json:"attempts"`
	Reason   string          `json:"reason"`
	At       time.Time       `json:"at"`
	Rule     string          `json:"rule,omitempty"`
	Event    json.RawMessage `json:"event"` // the CloudEvent the function received
}

// DeadLetterPage is the answer of GET /admin/v1/dlq/{function}.
type DeadLetterPage struct {
	Function    string           `json:"function"`
	DeadLetters []DeadLetterView `json:"dead_letters"`
	Next        uint64           `json:"next,omitempty"` // pass as ?after= for the next page; 0 at the end
}

// DeadLetters lists up to limit dead letters of function after seq afterSeq.
func (d *Dispatcher) DeadLetters(function string, afterSeq uint64, limit int) (DeadLetterPage, error) {
	if !d.Known(function) {
		return DeadLetterPage{}, ErrUnknownFunction
	}
	letters, err := d.store.DeadLetters(function, afterSeq, limit)
	if err != nil {
		return DeadLetterPage{}, err
	}
	page := DeadLetterPage{Function: function, DeadLetters: make([]DeadLetterView, len(letters))}
	for i, l := range letters {
		it := l.Item
		page.DeadLetters[i] = DeadLetterView{
			Seq: l.Seq, Attempts: l.Attempts, Reason: l.Reason, At: l.At, Rule: it.Rule,
			Event: appendCloudEvent(nil, &it),
		}
	}
	if len(letters) == limit && limit > 0 {
		page.Next = letters[len(letters)-1].Seq
	}
	return page, nil
}

// Replay moves dead letters of function (all of them when seqs is nil) back to its queue and
// delivers them again; it returns how many were moved.
func (d *Dispatcher) Replay(function string, seqs []uint64) (int, error) {
	if d.stopping.Load() {
		return 0, ErrStopped
	}
	return d.replay(function, seqs)
}

const adminPrefix = "/admin/v1/"

// AdminHandler serves GET /admin/v1/functions, GET /admin/v1/dlq/{function}?after=SEQ&limit=N,
// POST /admin/v1/dlq/{function}/replay (body optional: {"seqs":[...]}) → {"replayed":N},
// DELETE /admin/v1/dlq/{function} (purge, see servePurge) and GET /admin/v1/events/{id}.
// The caller has already checked the operator token.
func (d *Dispatcher) AdminHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		path := string(ctx.Path())
		rest, ok := strings.CutPrefix(path, adminPrefix)
		if !ok {
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such admin endpoint: "+path)
			return
		}
		switch {
		case rest == "functions" || rest == "functions/":
			if !ctx.IsGet() {
				methodNotAllowed(ctx, "GET")
				return
			}
			httpx.WriteJSON(ctx, fasthttp.StatusOK, d.Stats())
		case strings.HasPrefix(rest, "functions/") && strings.HasSuffix(rest, "/queue"):
			d.serveDropQueue(ctx, strings.TrimSuffix(strings.TrimPrefix(rest, "functions/"), "/queue"))
		case strings.HasPrefix(rest, "dlq/"):
			d.serveDLQ(ctx, strings.TrimPrefix(rest, "dlq/"))
		case strings.HasPrefix(rest, "events/"):
			d.serveEvent(ctx, strings.TrimPrefix(rest, "events/"))
		default:
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such admin endpoint: "+path)
		}
	}
}

func (d *Dispatcher) serveDLQ(ctx *fasthttp.RequestCtx, rest string) {
	name, action, _ := strings.Cut(rest, "/")
	if name == "" || !d.Known(name) {
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "unknown_function", "no function named "+strconv.Quote(name))
		return
	}
	switch action {
	case "":
		if ctx.IsDelete() {
			d.servePurge(ctx, name)
			return
		}
		if !ctx.IsGet() {
			methodNotAllowed(ctx, "GET, DELETE")
			return
		}
		args := ctx.QueryArgs()
		var after uint64
		if v := args.Peek("after"); len(v) > 0 {
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "after must be a sequence number")
				return
			}
			after = n
		}
		limit := 100
		if v := args.Peek("limit"); len(v) > 0 {
			n, err := strconv.Atoi(string(v))
			if err != nil || n < 1 || n > 10000 {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "limit must be between 1 and 10000")
				return
			}
			limit = n
		}
		page, err := d.DeadLetters(name, after, limit)
		if err != nil {
			writeStoreError(ctx, err)
			return
		}
		httpx.WriteJSON(ctx, fasthttp.StatusOK, page)
	case "replay":
		if !ctx.IsPost() {
			methodNotAllowed(ctx, "POST")
			return
		}
		var req struct {
			Seqs []uint64 `json:"seqs"`
		}
		if body := ctx.PostBody(); len(strings.TrimSpace(string(body))) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "body must be {\"seqs\":[...]}: "+err.Error())
				return
			}
		}
		n, err := d.Replay(name, req.Seqs)
		if err != nil {
			writeStoreError(ctx, err)
			return
		}
		httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]int{"replayed": n})
	default:
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such admin endpoint: "+string(ctx.Path()))
	}
}

// serveDropQueue serves DELETE /admin/v1/functions/{name}/queue: it drops the queued events
// and dead letters of a function that is no longer configured. A configured function's queue
// cannot be dropped (its events are being delivered; use the dead letters instead).
func (d *Dispatcher) serveDropQueue(ctx *fasthttp.RequestCtx, name string) {
	if !ctx.IsDelete() {
		methodNotAllowed(ctx, "DELETE")
		return
	}
	if d.Known(name) {
		httpx.WriteError(ctx, fasthttp.StatusConflict, "function_configured",
			"function "+strconv.Quote(name)+" is configured: its queue is being delivered; only a removed function's queue can be dropped")
		return
	}
	q, dl, err := d.store.DropQueue(name)
	if err != nil {
		writeStoreError(ctx, err)
		return
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]any{"function": name, "dropped": q, "dropped_dead_letters": dl})
}

func methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use "+allow)
}

func writeStoreError(ctx *fasthttp.RequestCtx, err error) {
	switch {
	case errors.Is(err, ErrStopped), errors.Is(err, storage.ErrClosed):
		httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
	case errors.Is(err, storage.ErrBusy), errors.Is(err, storage.ErrFull):
		ctx.Response.Header.Set("Retry-After", "1")
		httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "busy", err.Error())
	default:
		httpx.WriteError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
	}
}
