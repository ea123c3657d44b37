package ingest

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/valyala/fasthttp"
)

// The server streams request bodies (fasthttp Server.StreamRequestBody): the handler runs
// once the headers are in, checks the token, and only then reads the body, bounded by
// http.max_body_bytes. Before the handler runs fasthttp reads at most streamPrefetch bytes
// of a body, so a request that is not authenticated never has its body buffered.

// streamPrefetch is fasthttp's Server.MaxRequestBodySize. With StreamRequestBody fasthttp
// reads min(it, Content-Length, 8 KiB) bytes of a body before the handler runs, and lets a
// bigger body through as a stream; readBody enforces http.max_body_bytes itself. It must be
// positive (zero selects fasthttp's 4 MiB default, and so an 8 KiB pre-read).
const streamPrefetch = 1

// errBodyTooLarge: the body is longer than http.max_body_bytes.
var errBodyTooLarge = errors.New("request body over http.max_body_bytes")

// Buffers request bodies are read into, reused across requests; bigger ones are left to GC.
const maxPooledBody = 256 << 10

var bodyBufs = sync.Pool{New: func() any { return new([]byte) }}

func getBodyBuf() *[]byte { return bodyBufs.Get().(*[]byte) }

func putBodyBuf(b *[]byte) {
	if cap(*b) > maxPooledBody {
		return
	}
	*b = (*b)[:0]
	bodyBufs.Put(b)
}

// readBody appends the request body to dst, at most limit bytes: errBodyTooLarge (without
// reading any of it) when the declared Content-Length is over limit, or as soon as a chunked
// body passes it. Call it only once the request is authenticated and allowed. On success
// the body stream is consumed and closed; on failure the connection is to be closed.
func readBody(ctx *fasthttp.RequestCtx, limit int, dst []byte) ([]byte, error) {
	r := ctx.RequestBodyStream()
	if r == nil { // not streamed (fasthttp had the body whole, or there is none)
		b := ctx.Request.Body()
		if len(b) > limit {
			return dst, errBodyTooLarge
		}
		return append(dst, b...), nil
	}
	n := ctx.Request.Header.ContentLength()
	if n > limit {
		return dst, errBodyTooLarge
	}
	if n >= 0 {
		start := len(dst)
		dst = slices.Grow(dst, n)[:start+n]
		if _, err := io.ReadFull(r, dst[start:]); err != nil {
			return dst[:start], err
		}
	} else { // chunked: read up to limit+1 bytes to see whether it is over
		for {
			if len(dst) == cap(dst) {
				dst = slices.Grow(dst, min(max(cap(dst), 4096), limit+1))
			}
			m, err := r.Read(dst[len(dst):cap(dst)])
			dst = dst[:len(dst)+m]
			if len(dst) > limit {
				return dst, errBodyTooLarge
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return dst, err
			}
		}
	}
	// The whole body is read: mark the stream done (fasthttp's server loop still owns and
	// releases it), so that handle keeps the connection open.
	_ = ctx.Request.CloseBodyStream()
	return dst, nil
}

// failBody answers a readBody error and closes the connection (what is left of the body is
// never read). It says nothing about the request beyond the limit that was passed.
func (s *Server) failBody(ctx *fasthttp.RequestCtx, err error) {
	ctx.SetConnectionClose()
	switch {
	case errors.Is(err, errBodyTooLarge):
		s.fail(ctx, fasthttp.StatusRequestEntityTooLarge, "too_large",
			fmt.Sprintf("request body over http.max_body_bytes (%d bytes)", s.opts.Config.MaxBodyBytes))
	case isTimeout(err):
		s.fail(ctx, fasthttp.StatusRequestTimeout, "timeout", "request not received within http.read_timeout")
	default:
		s.fail(ctx, fasthttp.StatusBadRequest, "bad_request", "malformed HTTP request: the body ended early or its chunked encoding is broken")
	}
}

// loadBody reads the body of an authorized request into ctx.Request, for handlers that take
// it with ctx.PostBody() (the mounted admin APIs). It answers the error itself and reports
// false when the body could not be read.
func (s *Server) loadBody(ctx *fasthttp.RequestCtx) bool {
	if ctx.RequestBodyStream() == nil {
		return true
	}
	b, err := readBody(ctx, s.opts.Config.MaxBodyBytes, nil)
	if err != nil {
		s.failBody(ctx, err)
		return false
	}
	ctx.Request.SetBodyRaw(b)
	return true
}

// closeIfBodyUnread closes the connection after an answer given without reading the body
// (any refusal before or after authentication): fasthttp would otherwise read and discard up
// to 256 KiB of it to keep the connection alive, for a client that may not be authenticated.
func closeIfBodyUnread(ctx *fasthttp.RequestCtx) {
	if ctx.RequestBodyStream() != nil && ctx.Request.Header.ContentLength() != 0 {
		ctx.SetConnectionClose()
	}
}

// errorAnswer is what handleTransportError answers for an error fasthttp met before the
// handler ran: never the error's text, which can quote the request's headers (a bearer
// token included).
func errorAnswer(err error, maxBody int) (status int, code, msg string) {
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		return fasthttp.StatusRequestEntityTooLarge, "too_large",
			fmt.Sprintf("request body over http.max_body_bytes (%d bytes)", maxBody)
	case isTimeout(err):
		return fasthttp.StatusRequestTimeout, "timeout", "request not received within http.read_timeout"
	case errors.As(err, &small):
		return fasthttp.StatusBadRequest, "bad_request",
			fmt.Sprintf("malformed HTTP request: the request line and headers are over %d bytes", readBufferSize)
	default:
		return fasthttp.StatusBadRequest, "bad_request", "malformed HTTP request: the request line, headers or body framing could not be parsed"
	}
}
