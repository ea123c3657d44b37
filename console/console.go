// Package console serves the operator web console: static files embedded in the binary
// (HTML, ES modules, CSS), which talk to the admin API with the operator's token.
package console

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"path"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/httpx"
)

// Prefix is the path the console is served under (GET /console redirects to it).
const Prefix = "/console/"

// ContentSecurityPolicy is sent with every console response: scripts, styles and requests
// only from the gateway itself, no inline code, no framing, no forms posted anywhere.
const ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

//go:embed static
var static embed.FS

type file struct {
	body        []byte
	contentType string
	etag        string
}

var contentTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
}

// Files lists the embedded console files by the path they are served at (for tests).
func Files() []string {
	var out []string
	for p := range load() {
		out = append(out, p)
	}
	return out
}

func load() map[string]file {
	files := map[string]file{}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		ct, ok := contentTypes[path.Ext(p)]
		if !ok {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		files[Prefix+strings.TrimPrefix(p, "static/")] = file{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		panic("console: reading the embedded files: " + err.Error()) // they are compiled in
	}
	files[Prefix] = files[Prefix+"index.html"]
	return files
}

// Handler serves GET and HEAD of the console's files under Prefix, with a strict
// Content-Security-Policy. It needs no token: the files hold no data; the pages ask the
// operator for a token and send it to the admin API.
func Handler() fasthttp.RequestHandler {
	files := load()
	return func(ctx *fasthttp.RequestCtx) {
		h := &ctx.Response.Header
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !ctx.IsGet() && !ctx.IsHead() {
			h.Set("Allow", "GET, HEAD")
			httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "the console is read with GET")
			return
		}
		p := string(ctx.Path())
		if p == strings.TrimSuffix(Prefix, "/") {
			// A relative Location: right behind a proxy that changes the host or scheme.
			h.Set("Location", Prefix)
			ctx.SetStatusCode(fasthttp.StatusMovedPermanently)
			return
		}
		f, ok := files[p]
		if !ok {
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such console file: "+p)
			return
		}
		// Revalidate every time (cheap: 304 by ETag), so a new binary's console is seen at once.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		if string(ctx.Request.Header.Peek("If-None-Match")) == f.etag {
			ctx.SetStatusCode(fasthttp.StatusNotModified)
			return
		}
		ctx.SetContentType(f.contentType)
		ctx.SetBody(f.body)
	}
}
