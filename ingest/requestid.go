package ingest

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/httpx"
)

// headerRequestID names a request in answers and logs.
const headerRequestID = "X-Request-Id"

// maxRequestIDLen bounds a request id taken from the sender's X-Request-Id header.
const maxRequestIDLen = 64

// requestID returns the request's id: the sender's X-Request-Id when it is short and plain
// (letters, digits, '-', '_', '.', ':'), else a new random one. It is also set as the answer's
// X-Request-Id header.
func requestID(ctx *fasthttp.RequestCtx) string {
	id := string(ctx.Request.Header.Peek(headerRequestID))
	if !plainID(id) {
		var b [12]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	ctx.Response.Header.Set(headerRequestID, id)
	return id
}

func plainID(s string) bool {
	if s == "" || len(s) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// failWithID answers {"error":msg,"code":code,"request_id":id}.
func failWithID(ctx *fasthttp.RequestCtx, status int, code, msg, id string) {
	httpx.WriteJSON(ctx, status, httpx.Error{Error: msg, Code: code, RequestID: id})
}
