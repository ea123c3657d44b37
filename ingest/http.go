package ingest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/httpx"
	"github.com/fleetgate/fleetgate/internal/topic"
)

// TLSConfig names the certificate files of a TLS listener.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// HTTPConfig is the `http:` section of the config file.
type HTTPConfig struct {
	Addr            string        `yaml:"addr"`
	TLS             TLSConfig     `yaml:"tls"`
	MaxBodyBytes    int           `yaml:"max_body_bytes"`
	MaxEvents       int           `yaml:"max_events_per_request"`
	ReadTimeout     time.Duration `yaml:"read_timeout"`
	WriteTimeout    time.Duration `yaml:"write_timeout"`
	IdleTimeout     time.Duration `yaml:"idle_timeout"`
	MaxConnsPerIP   int           `yaml:"max_conns_per_ip"`
	RateLimit       float64       `yaml:"rate_limit"` // events per second per sender (tenant + subject); 0 = off
	RateBurst       int           `yaml:"rate_burst"` // events a sender may send at once (default: one second's worth)
	Concurrency     int           `yaml:"concurrency"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	Console         bool          `yaml:"console"` // serve the operator web console at /console/
}

// DefaultHTTPConfig returns the defaults of the `http:` section.
func DefaultHTTPConfig() HTTPConfig {
	return HTTPConfig{
		Addr: ":8080", MaxBodyBytes: 1 << 20, MaxEvents: 10000,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxConnsPerIP: 1000, Concurrency: 256 * 1024, ShutdownTimeout: 20 * time.Second,
		Console: true,
	}
}

// Validate reports every problem of the section at once.
func (c *HTTPConfig) Validate() error {
	var errs []error
	if c.Addr == "" {
		errs = append(errs, errors.New("http.addr: empty"))
	} else if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("http.addr: %q is not host:port", c.Addr))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("http.tls: cert_file and key_file must be set together"))
	}
	if c.MaxBodyBytes <= 0 {
		errs = append(errs, fmt.Errorf("http.max_body_bytes: must be positive, got %d", c.MaxBodyBytes))
	}
	if c.MaxEvents <= 0 {
		errs = append(errs, fmt.Errorf("http.max_events_per_request: must be positive, got %d", c.MaxEvents))
	}
	if c.MaxConnsPerIP < 0 {
		errs = append(errs, fmt.Errorf("http.max_conns_per_ip: must not be negative (0 is no limit), got %d", c.MaxConnsPerIP))
	}
	if c.RateLimit < 0 {
		errs = append(errs, fmt.Errorf("http.rate_limit: must not be negative, got %g", c.RateLimit))
	}
	if c.RateBurst < 0 {
		errs = append(errs, fmt.Errorf("http.rate_burst: must not be negative, got %d", c.RateBurst))
	}
	for name, d := range map[string]time.Duration{"read_timeout": c.ReadTimeout, "write_timeout": c.WriteTimeout, "idle_timeout": c.IdleTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("http.%s: must be positive, got %s", name, d))
		}
	}
	return errors.Join(errs...)
}

// Authenticator verifies bearer tokens; *auth.Verifier satisfies it.
type Authenticator interface {
	Verify(token string) (*auth.Principal, error)
}

// ServerOptions configures the HTTP server.
type ServerOptions struct {
	Config  HTTPConfig
	Gateway *Gateway
	Auth    Authenticator
	Metrics *metrics.Set // the set written at /metrics (also where the server's own metrics go)
	Ready   func() error // nil error: /readyz answers 200
	// Console serves the operator web console under /console/ (nil: off, 404). It is not
	// behind the token check: it serves static files only; the admin API checks the token.
	Console fasthttp.RequestHandler
	Logger  *slog.Logger
}

// Server is the HTTP front door: POST /v1/events/{topic}, health, metrics and the mounted
// operator APIs under /admin/v1/.
type Server struct {
	opts   ServerOptions
	srv    *fasthttp.Server
	ln     net.Listener
	log    *slog.Logger
	mu     sync.RWMutex
	mounts []mount
	api    []mount // authenticated endpoints for any role (MountAPI)
	ready  atomic.Bool

	byCode   sync.Map // status code → *metrics.Counter
	requests *metrics.Counter
	limits   *senderLimits // nil when http.rate_limit is 0
	limited  *metrics.Counter
	cert     *certReloader // nil without http.tls
}

type mount struct {
	prefix string
	h      fasthttp.RequestHandler
}

// NewServer returns a server; call Start to listen.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Gateway == nil || opts.Auth == nil {
		return nil, errors.New("ingest: server needs a gateway and an authenticator")
	}
	def := DefaultHTTPConfig()
	if opts.Config.MaxBodyBytes <= 0 {
		opts.Config.MaxBodyBytes = def.MaxBodyBytes
	}
	if opts.Config.MaxEvents <= 0 {
		opts.Config.MaxEvents = def.MaxEvents
	}
	if opts.Config.ReadTimeout <= 0 {
		opts.Config.ReadTimeout = def.ReadTimeout
	}
	if opts.Config.WriteTimeout <= 0 {
		opts.Config.WriteTimeout = def.WriteTimeout
	}
	if opts.Config.IdleTimeout <= 0 {
		opts.Config.IdleTimeout = def.IdleTimeout
	}
	if opts.Config.Concurrency <= 0 {
		opts.Config.Concurrency = def.Concurrency
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.NewSet()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{opts: opts, log: opts.Logger}
	s.requests = opts.Metrics.NewCounter("fleetgate_http_requests_total")
	s.limited = opts.Metrics.NewCounter("fleetgate_http_rate_limited_events_total")
	if opts.Config.RateLimit > 0 {
		s.limits = newSenderLimits(opts.Config.RateLimit, opts.Config.RateBurst)
	}
	s.srv = &fasthttp.Server{
		Handler:      s.handle,
		ErrorHandler: s.handleTransportError,
		Name:         "fleetgate",
		// Bodies are streamed: the handler runs after the headers, checks the token, and
		// reads the body (bounded by http.max_body_bytes) only then; see http_body.go.
		StreamRequestBody:  true,
		MaxRequestBodySize: streamPrefetch,
		// Multipart bodies are not parsed ahead of the handler (that would read them before
		// authentication, with no limit but fasthttp's).
		DisablePreParseMultipartForm: true,
		// fasthttp's errors and logs do not quote the request (its headers hold tokens).
		SecureErrorLogMessage: true,
		// ReadTimeout bounds the request line, the headers and the body together, from the
		// first byte: a slow (slowloris) client is cut off after http.read_timeout.
		ReadTimeout:           opts.Config.ReadTimeout,
		WriteTimeout:          opts.Config.WriteTimeout,
		IdleTimeout:           opts.Config.IdleTimeout,
		MaxConnsPerIP:         opts.Config.MaxConnsPerIP,
		Concurrency:           opts.Config.Concurrency,
		ReadBufferSize:        readBufferSize,
		NoDefaultServerHeader: false,
		NoDefaultContentType:  true,
		CloseOnShutdown:       true,
		Logger:                fasthttpLogger{opts.Logger},
	}
	return s, nil
}

// readBufferSize is fasthttp's per-connection read buffer: the request line and headers
// must fit in it.
const readBufferSize = 16 << 10

// Mount serves prefix (under /admin/v1/) with h, for operator tokens only.
func (s *Server) Mount(prefix string, h fasthttp.RequestHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mounts = append(s.mounts, mount{prefix: prefix, h: h})
}

// MountAPI serves prefix (under /v1/, e.g. "/v1/shadows/") with h for any authenticated
// principal: the server checks the bearer token (401 otherwise), reads the body within
// http.max_body_bytes, and stores the *auth.Principal under httpx.PrincipalKey; h decides
// what the principal may do.
func (s *Server) MountAPI(prefix string, h fasthttp.RequestHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.api = append(s.api, mount{prefix: prefix, h: h})
}

func (s *Server) apiHandler(path []byte) fasthttp.RequestHandler {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, m := range s.api {
		if bytes.HasPrefix(path, []byte(m.prefix)) {
			return m.h
		}
	}
	return nil
}

func (s *Server) handleAPI(ctx *fasthttp.RequestCtx, h fasthttp.RequestHandler) {
	p := s.authenticate(ctx)
	if p == nil {
		return
	}
	ctx.SetUserValue(httpx.PrincipalKey, p)
	if !s.loadBody(ctx) {
		return
	}
	h(ctx)
}

// Start listens on the configured address (TLS when cert and key are configured) and serves
// in the background. When it returns nil, the listener accepts connections.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.opts.Config.Addr)
	if err != nil {
		return fmt.Errorf("http: listening on %s (http.addr): %w", s.opts.Config.Addr, err)
	}
	if c := s.opts.Config.TLS; c.CertFile != "" {
		cr, err := newCertReloader(c.CertFile, c.KeyFile)
		if err != nil {
			ln.Close()
			return err
		}
		s.cert = cr
		ln = tls.NewListener(ln, &tls.Config{GetCertificate: cr.get, MinVersion: tls.VersionTLS12})
	}
	s.ln = ln
	s.ready.Store(true)
	go func() {
		if err := s.srv.Serve(ln); err != nil {
			s.log.Error("http server stopped", "err", err)
		}
	}()
	return nil
}

// Addr is the address the server listens on (with the real port when configured with :0).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting connections and waits for in-flight requests (whose appends then
// complete) until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.ready.Store(false)
	return s.srv.ShutdownWithContext(ctx)
}

var (
	pathEvents  = []byte("/v1/events/")
	pathAdmin   = []byte("/admin/v1/")
	pathHealth  = []byte("/healthz")
	pathReady   = []byte("/readyz")
	pathMetrics = []byte("/metrics")
	pathConsole = []byte("/console")
)

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	s.requests.Inc()
	path := ctx.Path()
	switch {
	case bytes.HasPrefix(path, pathEvents):
		s.handleEvents(ctx, path[len(pathEvents):])
	case bytes.HasPrefix(path, pathAdmin):
		s.handleAdmin(ctx)
	case bytes.Equal(path, pathHealth):
		ctx.SetContentType("text/plain")
		ctx.SetBodyString("ok\n")
	case bytes.Equal(path, pathReady):
		s.handleReady(ctx)
	case s.opts.Console != nil && bytes.HasPrefix(path, pathConsole) && (len(path) == len(pathConsole) || path[len(pathConsole)] == '/'):
		s.opts.Console(ctx)
	case bytes.Equal(path, pathMetrics):
		ctx.SetContentType("text/plain; version=0.0.4")
		w := ctx.Response.BodyWriter()
		s.opts.Metrics.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	case s.apiHandler(path) != nil:
		s.handleAPI(ctx, s.apiHandler(path))
	default:
		s.fail(ctx, fasthttp.StatusNotFound, "not_found", "no such endpoint: "+string(path))
	}
	closeIfBodyUnread(ctx)
	s.countCode(ctx.Response.StatusCode())
}

func (s *Server) countCode(code int) {
	c, ok := s.byCode.Load(code)
	if !ok {
		c, _ = s.byCode.LoadOrStore(code, s.opts.Metrics.GetOrCreateCounter(`fleetgate_http_responses_total{code="`+strconv.Itoa(code)+`"}`))
	}
	c.(*metrics.Counter).Inc()
}

func (s *Server) handleReady(ctx *fasthttp.RequestCtx) {
	var err error
	if !s.ready.Load() {
		err = errors.New("http listener not started or shutting down")
	} else if s.opts.Ready != nil {
		err = s.opts.Ready()
	}
	if err != nil {
		s.fail(ctx, fasthttp.StatusServiceUnavailable, "not_ready", err.Error())
		return
	}
	ctx.SetContentType("text/plain")
	ctx.SetBodyString("ready\n")
}

// handleTransportError answers errors fasthttp meets before the handler runs, such as a
// malformed or oversized request head, in the JSON error format. The answer carries no
// request data (see errorAnswer); fasthttp closes the connection after it.
func (s *Server) handleTransportError(ctx *fasthttp.RequestCtx, err error) {
	status, code, msg := errorAnswer(err, s.opts.Config.MaxBodyBytes)
	ctx.Response.Reset()
	s.fail(ctx, status, code, msg)
	s.countCode(status)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (s *Server) fail(ctx *fasthttp.RequestCtx, status int, code, msg string) {
	httpx.WriteError(ctx, status, code, msg)
}

// authenticate verifies the bearer token of the request, answering 401 itself on failure.
func (s *Server) authenticate(ctx *fasthttp.RequestCtx) *auth.Principal {
	h := ctx.Request.Header.Peek(fasthttp.HeaderAuthorization)
	token, ok := bytes.CutPrefix(h, []byte("Bearer "))
	if !ok || len(token) == 0 {
		ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, `Bearer realm="fleetgate"`)
		failWithID(ctx, fasthttp.StatusUnauthorized, "unauthenticated", "missing bearer token: send Authorization: Bearer <JWT>", requestID(ctx))
		return nil
	}
	p, err := s.opts.Auth.Verify(string(bytes.TrimSpace(token)))
	if err != nil {
		// The reason names keys, issuers and algorithms of the configuration: it goes to the
		// log, under the request id the sender gets.
		id := requestID(ctx)
		s.log.Debug("http: token refused", "request_id", id, "reason", auth.Reason(err), "error", err,
			"remote", ctx.RemoteIP().String(), "path", clip(ctx.Path()))
		ctx.Response.Header.Set(fasthttp.HeaderWWWAuthenticate, `Bearer realm="fleetgate", error="invalid_token"`)
		failWithID(ctx, fasthttp.StatusUnauthorized, "unauthenticated", "invalid token", id)
		return nil
	}
	return p
}

func (s *Server) handleAdmin(ctx *fasthttp.RequestCtx) {
	p := s.authenticate(ctx)
	if p == nil {
		return
	}
	if p.AdminUntrusted() {
		id := requestID(ctx)
		s.log.Debug("http: admin role from a key not trusted for admin", "request_id", id,
			"subject", p.Subject, "role", p.Role, "kid", p.SignerKeyID(), "remote", ctx.RemoteIP().String())
		failWithID(ctx, fasthttp.StatusForbidden, "forbidden",
			"the token's role grants the admin API, but its signing key is not trusted for admin tokens (auth.admin_keys, auth.admin_issuer)", id)
		return
	}
	if !p.IsAdmin() {
		s.fail(ctx, fasthttp.StatusForbidden, "forbidden", "the admin API needs an operator token (a role whose policy has admin: true)")
		return
	}
	ctx.SetUserValue(httpx.PrincipalKey, p)
	path := string(ctx.Path())
	s.mu.RLock()
	var h fasthttp.RequestHandler
	for _, m := range s.mounts {
		if path == strings.TrimSuffix(m.prefix, "/") || strings.HasPrefix(path, m.prefix) {
			h = m.h
			break
		}
	}
	s.mu.RUnlock()
	if h == nil {
		s.fail(ctx, fasthttp.StatusNotFound, "not_found", "no such admin endpoint: "+path)
		return
	}
	if !s.loadBody(ctx) { // only now, for an operator: the mounted APIs take ctx.PostBody()
		return
	}
	h(ctx)
}

// Metadata headers kept on HTTP events, by meta key.
var metaHeaders = []struct{ key, header string }{
	{"user_agent", fasthttp.HeaderUserAgent},
	{"app_version", "X-App-Version"},
	{"locale", "X-Locale"},
	{"accept_language", fasthttp.HeaderAcceptLanguage},
	{"platform", "X-Platform"},
	{"os_version", "X-OS-Version"},
	{"device_model", "X-Device-Model"},
	{"request_id", "X-Request-Id"},
}

// Bounds on request metadata taken from headers.
const (
	maxMetaValue   = 512
	maxMetaEntries = 32
	metaPrefix     = "X-Meta-"
)

// metaByHeader maps a header name, lower-cased, to its meta key.
var metaByHeader = func() map[string]string {
	m := make(map[string]string, len(metaHeaders))
	for _, h := range metaHeaders {
		m[strings.ToLower(h.header)] = h.key
	}
	return m
}()

// requestMeta collects the request metadata in one pass over the headers, and the ce-*
// headers (names lower case, without the prefix) of a binary-mode CloudEvent. Meta keys
// starting with "$" are the gateway's: "$traceparent" and "$tracestate" (W3C trace context,
// a malformed traceparent is dropped, and tracestate with it); user metadata named so
// (X-Meta-$...) is dropped.
func requestMeta(ctx *fasthttp.RequestCtx) (meta map[string]string, ce []attr) {
	meta = make(map[string]string, 4)
	var lower [64]byte
	var traceparent []byte
	var tracestate []byte
	for k, v := range ctx.Request.Header.All() {
		if len(v) == 0 || len(k) > len(lower) {
			continue
		}
		name := lower[:len(k)]
		for i, c := range k {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			name[i] = c
		}
		switch {
		case len(name) > 3 && string(name[:3]) == "ce-":
			// Bounded by the size of the request head; parseBinary bounds the extensions.
			ce = append(ce, attr{string(name[3:]), string(v)})
		case string(name) == "traceparent":
			traceparent = v
		case string(name) == "tracestate":
			if len(tracestate) > 0 {
				tracestate = append(append(tracestate[:len(tracestate):len(tracestate)], ','), v...)
			} else {
				tracestate = v
			}
		case len(meta) >= maxMetaEntries:
		default:
			if key, ok := metaByHeader[string(name)]; ok {
				meta[key] = clip(v)
			} else if len(name) > len(metaPrefix) && string(name[:len(metaPrefix)]) == "x-meta-" && name[len(metaPrefix)] != '$' {
				meta[strings.ReplaceAll(string(name[len(metaPrefix):]), "-", "_")] = clip(v)
			}
		}
	}
	TraceMeta(meta, traceparent, tracestate)
	meta["remote_addr"] = ctx.RemoteIP().String()
	return meta, ce
}

// TraceMeta keeps a W3C trace context in meta, as "$traceparent" and "$tracestate", when
// traceparent is valid; a malformed traceparent is dropped, and tracestate with it (as is a
// tracestate over 512 bytes). HTTP ingest takes them from the headers, the MQTT broker from
// MQTT 5 user properties of the same names.
func TraceMeta(meta map[string]string, traceparent, tracestate []byte) {
	if validTraceparent(traceparent) {
		meta["$traceparent"] = string(traceparent)
		if len(tracestate) > 0 && len(tracestate) <= maxMetaValue {
			meta["$tracestate"] = string(tracestate)
		}
	}
}

// validTraceparent checks a W3C traceparent: version-traceid-parentid-flags, in lower-case hex
// (2-32-16-2 digits), version not ff, trace and parent ids not all zeros. A version after 00
// may add fields after the flags.
func validTraceparent(v []byte) bool {
	if len(v) < 55 || len(v) > maxMetaValue || (len(v) > 55 && (v[55] != '-' || string(v[:2]) == "00")) {
		return false
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' || string(v[:2]) == "ff" {
		return false
	}
	hex := func(b []byte, nonZero bool) bool {
		zero := true
		for _, c := range b {
			if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
			zero = zero && c == '0'
		}
		return !nonZero || !zero
	}
	return hex(v[0:2], false) && hex(v[3:35], true) && hex(v[36:52], true) && hex(v[53:55], false)
}

func clip(v []byte) string {
	if len(v) > maxMetaValue {
		v = v[:maxMetaValue]
	}
	return string(v)
}

// validTopic checks an HTTP event topic: the path after /v1/events/.
func validTopic(t string) error {
	if t == "" {
		return errors.New("empty topic: POST /v1/events/{topic}")
	}
	return topic.CheckName(t)
}

func (s *Server) handleEvents(ctx *fasthttp.RequestCtx, rawTopic []byte) {
	if !ctx.IsPost() {
		ctx.Response.Header.Set(fasthttp.HeaderAllow, "POST")
		s.fail(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use POST to send events")
		return
	}
	p := s.authenticate(ctx)
	if p == nil {
		return
	}
	name := string(rawTopic)
	if err := validTopic(name); err != nil {
		s.fail(ctx, fasthttp.StatusBadRequest, "bad_topic", err.Error())
		return
	}
	if !p.CanPublish(name) {
		s.fail(ctx, fasthttp.StatusForbidden, "forbidden", fmt.Sprintf("the policy of role %q does not allow publishing to %q", p.Role, name))
		return
	}
	bodyBuf := getBodyBuf()
	defer putBodyBuf(bodyBuf)
	body, err := readBody(ctx, s.opts.Config.MaxBodyBytes, *bodyBuf)
	*bodyBuf = body
	if err != nil {
		s.failBody(ctx, err)
		return
	}
	meta, ce := requestMeta(ctx)
	parsed, err := parseRequest(string(ctx.Request.Header.ContentType()), ce, body, s.opts.Config.MaxEvents)
	if err != nil {
		if errors.Is(err, errUnsupportedType) {
			s.fail(ctx, fasthttp.StatusUnsupportedMediaType, "unsupported_media_type", err.Error())
		} else if errors.Is(err, errTooMany) {
			s.fail(ctx, fasthttp.StatusRequestEntityTooLarge, "too_many_events", err.Error())
		} else {
			s.fail(ctx, fasthttp.StatusBadRequest, "malformed", err.Error())
		}
		return
	}
	if s.limits != nil && len(parsed) > s.limits.burst {
		s.limited.Add(len(parsed))
		s.fail(ctx, fasthttp.StatusTooManyRequests, "rate_limited", fmt.Sprintf(
			"a request of %d events can never pass http.rate_burst (%d events): split it", len(parsed), s.limits.burst))
		return
	}
	if s.limits != nil {
		if ok, wait := s.limits.allow(p.Tenant+"\x00"+p.Subject, len(parsed), time.Now()); !ok {
			s.limited.Add(len(parsed))
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, strconv.Itoa(int(math.Ceil(max(wait.Seconds(), 1)))))
			s.fail(ctx, fasthttp.StatusTooManyRequests, "rate_limited", fmt.Sprintf(
				"over http.rate_limit (%g events/s, burst %d) for subject %q: retry later", s.opts.Config.RateLimit, s.limits.burst, p.Subject))
			return
		}
	}
	now := time.Now().UTC()
	events := make([]*event.Event, len(parsed))
	backing := make([]event.Event, len(parsed))
	// Data is copied once into one buffer: the request body is reused after the handler.
	var size int
	for _, b := range parsed {
		size += len(b.Data)
	}
	buf := make([]byte, 0, size)
	// The event's source is the authenticated sender, never the body's: one string for all.
	source := "http://" + p.Subject
	for i, b := range parsed {
		ev := &backing[i]
		start := len(buf)
		buf = append(buf, b.Data...)
		*ev = event.Event{
			ID: b.ID, Source: source, Type: b.Type, Subject: p.Subject, Time: b.Time,
			ContentType: b.ContentType, Data: buf[start:len(buf):len(buf)],
			Protocol: event.ProtocolHTTP, Topic: name, Tenant: p.Tenant,
			Claims: p.Claims, ClaimsJSON: p.ClaimsJSON, Meta: meta,
		}
		if ev.Type == "" {
			ev.Type = "fleetgate.http.event"
		}
		if ev.ContentType == "" {
			ev.ContentType = ctJSON
		}
		if ev.Time.IsZero() {
			ev.Time = now
		}
		if b.Subject != "" || b.CESource != "" || b.DataSchema != "" || len(b.Ext) > 0 {
			ev.Meta = eventMeta(meta, &b)
		}
		events[i] = ev
	}
	idem := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if len(idem) > maxIDLength {
		s.fail(ctx, fasthttp.StatusBadRequest, "bad_idempotency_key", fmt.Sprintf("Idempotency-Key longer than %d bytes", maxIDLength))
		return
	}
	// Wait for the outcome whatever happens to the connection: the answer must say what was stored.
	if err := s.opts.Gateway.Accept(context.Background(), events, AcceptOptions{IdempotencyKey: idem}); err != nil {
		r := RefusalFor(err)
		if r.RetryAfter != "" {
			ctx.Response.Header.Set(fasthttp.HeaderRetryAfter, r.RetryAfter)
		}
		msg := err.Error()
		if errors.Is(err, ErrTooLarge) {
			msg = "too many events for one request (each event and each function it goes to counts): split the request"
		}
		s.fail(ctx, r.HTTPStatus, r.Code, msg)
		return
	}
	writeAccepted(ctx, events)
}

// eventMeta is the request metadata plus a CloudEvent's own attributes: its subject (the
// token's subject is the event's subject) as "ce_subject", its source as "$ce_source", its
// dataschema as "$ce_dataschema" and its extension attributes as "$ce_ext.<name>".
func eventMeta(meta map[string]string, b *bodyEvent) map[string]string {
	m := make(map[string]string, len(meta)+3+len(b.Ext))
	for k, v := range meta {
		m[k] = v
	}
	if b.Subject != "" {
		m["ce_subject"] = clip([]byte(b.Subject))
	}
	if b.CESource != "" {
		m["$ce_source"] = b.CESource // bounded by check, never cut: it is part of the event's identity
	}
	if b.DataSchema != "" {
		m["$ce_dataschema"] = clip([]byte(b.DataSchema))
	}
	for _, x := range b.Ext {
		m["$ce_ext."+x.Name] = clip([]byte(x.Value))
	}
	return m
}

// writeAccepted answers 202 {"accepted":N,"ids":[...]} without reflection.
func writeAccepted(ctx *fasthttp.RequestCtx, events []*event.Event) {
	ctx.SetStatusCode(fasthttp.StatusAccepted)
	ctx.SetContentType("application/json")
	b := make([]byte, 0, 32+len(events)*30)
	b = append(b, `{"accepted":`...)
	b = strconv.AppendInt(b, int64(len(events)), 10)
	b = append(b, `,"ids":[`...)
	for i, ev := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, ev.ID)
	}
	b = append(b, "]}\n"...)
	ctx.SetBody(b)
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("http: " + fmt.Sprintf(format, args...))
}
