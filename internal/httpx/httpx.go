// Package httpx holds the small JSON response helpers shared by fleetgate's fasthttp handlers.
package httpx

import (
	"encoding/json"
	"strconv"

	"github.com/valyala/fasthttp"
)

// Error is the JSON body of every error response: {"error":"...","code":"..."}, plus
// "request_id" on refusals whose details are only in the log, under that id.
type Error struct {
	Error     string `json:"error"`
	Code      string `json:"code"`
	RequestID string `json:"request_id,omitempty"`
}

// WriteJSON answers with status and v encoded as JSON.
func WriteJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = fasthttp.StatusInternalServerError
		b = []byte(`{"error":"encoding response: ` + strconv.Quote(err.Error())[1:] + `,"code":"internal"}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}

// WriteError answers with status and {"error":msg,"code":code}.
func WriteError(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	WriteJSON(ctx, status, Error{Error: msg, Code: code})
}

// PrincipalKey is the fasthttp user-value key under which the HTTP server stores the
// authenticated *auth.Principal of a request before calling a mounted handler.
const PrincipalKey = "fleetgate.principal"
