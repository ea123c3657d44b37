package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/fleetgate/fleetgate/internal/httpx"
	"github.com/fleetgate/fleetgate/storage"
	"github.com/valyala/fasthttp"
	"gopkg.in/yaml.v3"
)

// AdminPrefix is the path the admin handler serves (and everything below it).
const AdminPrefix = "/admin/v1/rules"

// RuleView is a rule as the admin API lists it: the rule plus its counters.
type RuleView struct {
	Rule
	Stats RuleStats `json:"stats"`
}

// ListResponse is the body of GET /admin/v1/rules.
type ListResponse struct {
	Version int        `json:"version"`
	Rules   []RuleView `json:"rules"`
}

// ApplyRequest is the body of PUT /admin/v1/rules (JSON, or YAML with Content-Type application/yaml).
type ApplyRequest struct {
	Rules []Rule `json:"rules" yaml:"rules"`
}

// VersionResponse answers a successful PUT or DELETE.
type VersionResponse struct {
	Version int `json:"version"`
}

// VersionsResponse is the body of GET /admin/v1/rules/versions.
type VersionsResponse struct {
	Live     int           `json:"live"` // the live version
	Versions []VersionInfo `json:"versions"`
}

// ValidateResponse answers a rule set that would be accepted: the rules as the server read
// them (what a PUT of the same body would make live).
type ValidateResponse struct {
	Valid bool   `json:"valid"`
	Rules []Rule `json:"rules"`
}

// RollbackResponse answers a successful rollback.
type RollbackResponse struct {
	Version    int `json:"version"`     // the new live version
	RollbackOf int `json:"rollback_of"` // the version whose rules it holds
}

// InvalidResponse answers a refused rule set: 422 with every problem.
type InvalidResponse struct {
	Error    string    `json:"error"`
	Code     string    `json:"code"` // "invalid_rules"
	Problems []Problem `json:"problems"`
}

// AdminHandler serves the rules admin API under /admin/v1/rules. The HTTP server in front
// of it has already checked the operator token.
//
//	GET    /admin/v1/rules        list with counters
//	PUT    /admin/v1/rules        replace the set: {"rules":[...]} → 200 {"version":N} or 422
//	GET    /admin/v1/rules/{id}   one rule with counters
//	DELETE /admin/v1/rules/{id}   remove one rule → 200 {"version":N} or 404
//	POST   /admin/v1/rules/test   dry run (TestRequest → TestResult)
//	POST   /admin/v1/rules/validate  check a rule set without applying it (body as for PUT)
//	                                 → 200 {"valid":true,"rules":[...]} or 422 with every problem
//	GET    /admin/v1/rules/versions                     stored versions, newest first (VersionsResponse)
//	GET    /admin/v1/rules/versions/{n}                 one stored version with its rules (StoredVersion)
//	POST   /admin/v1/rules/versions/{n}/rollback        make version n's rules live again, as a new version
//	                                                    → 200 {"version":N}, 404, or 422 if they no longer validate
//
// "versions" and "test" name these endpoints, so a rule whose id is "versions" is read from
// the list (GET /admin/v1/rules), not from GET /admin/v1/rules/versions.
func (e *Engine) AdminHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		path := string(ctx.Path())
		rest, ok := strings.CutPrefix(path, AdminPrefix)
		if !ok || (rest != "" && rest[0] != '/') {
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such path: "+path)
			return
		}
		rest = strings.Trim(rest, "/")
		method := string(ctx.Method())
		switch {
		case rest == "":
			switch method {
			case fasthttp.MethodGet:
				e.adminList(ctx)
			case fasthttp.MethodPut:
				e.adminApply(ctx)
			default:
				methodNotAllowed(ctx, "GET, PUT")
			}
		case rest == "test" && method == fasthttp.MethodPost:
			e.adminTest(ctx)
		case rest == "validate" && method == fasthttp.MethodPost:
			e.adminValidate(ctx)
		case rest == "versions" || strings.HasPrefix(rest, "versions/"):
			e.adminVersions(ctx, strings.TrimPrefix(strings.TrimPrefix(rest, "versions"), "/"))
		case strings.Contains(rest, "/"):
			httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such path: "+path)
		default:
			switch method {
			case fasthttp.MethodGet:
				e.adminGet(ctx, rest)
			case fasthttp.MethodDelete:
				e.adminDelete(ctx, rest)
			default:
				methodNotAllowed(ctx, "GET, DELETE")
			}
		}
	}
}

func methodNotAllowed(ctx *fasthttp.RequestCtx, allow string) {
	ctx.Response.Header.Set("Allow", allow)
	httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "method not allowed; use "+allow)
}

func view(set *Set, r Rule) RuleView {
	st, _ := set.Stats(r.ID)
	return RuleView{Rule: r, Stats: st}
}

func (e *Engine) adminList(ctx *fasthttp.RequestCtx) {
	set, version := e.Live()
	resp := ListResponse{Version: version, Rules: make([]RuleView, 0, set.Len())}
	for _, r := range set.Rules() {
		resp.Rules = append(resp.Rules, view(set, r))
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, resp)
}

func (e *Engine) adminGet(ctx *fasthttp.RequestCtx, id string) {
	set, _ := e.Live()
	r, ok := set.Rule(id)
	if !ok {
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", fmt.Sprintf("no rule with id %q", id))
		return
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, view(set, r))
}

// DecodeApply decodes a rule set body: YAML when yamlBody is set, else JSON. Unknown fields
// are refused, so a misspelt key is an error rather than a silently ignored setting.
func DecodeApply(body []byte, yamlBody bool) (ApplyRequest, error) {
	var req ApplyRequest
	if yamlBody {
		dec := yaml.NewDecoder(bytes.NewReader(body))
		dec.KnownFields(true)
		if err := dec.Decode(&req); err != nil {
			return req, fmt.Errorf("decoding YAML rule set: %w", err)
		}
	} else {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			return req, fmt.Errorf("decoding JSON rule set: %w", err)
		}
	}
	if req.Rules == nil {
		return req, errors.New(`the body needs a "rules" list (an empty list removes every rule)`)
	}
	return req, nil
}

func (e *Engine) adminApply(ctx *fasthttp.RequestCtx) {
	ct := string(ctx.Request.Header.ContentType())
	isYAML := strings.Contains(ct, "yaml")
	req, err := DecodeApply(ctx.PostBody(), isYAML)
	if err != nil {
		httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", err.Error())
		return
	}
	version, err := e.Apply(req.Rules)
	if err != nil {
		writeApplyError(ctx, err)
		return
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, VersionResponse{Version: version})
}

func (e *Engine) adminValidate(ctx *fasthttp.RequestCtx) {
	req, err := DecodeApply(ctx.PostBody(), strings.Contains(string(ctx.Request.Header.ContentType()), "yaml"))
	if err != nil {
		httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", err.Error())
		return
	}
	if err := e.Validate(req.Rules); err != nil {
		writeApplyError(ctx, err)
		return
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, ValidateResponse{Valid: true, Rules: req.Rules})
}

func writeApplyError(ctx *fasthttp.RequestCtx, err error) {
	var ve *ValidationError
	if errors.As(err, &ve) {
		msg := fmt.Sprintf("rule set refused, nothing changed: %d problem(s)", len(ve.Problems))
		httpx.WriteJSON(ctx, fasthttp.StatusUnprocessableEntity, InvalidResponse{Error: msg, Code: "invalid_rules", Problems: ve.Problems})
		return
	}
	if errors.Is(err, ErrConflict) {
		httpx.WriteError(ctx, fasthttp.StatusConflict, "conflict", "rule set not applied: "+err.Error())
		return
	}
	if errors.Is(err, storage.ErrNoQuorum) {
		// cluster mode: no quorum reachable right now (a node lost, a leader being elected)
		httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "no_quorum", "rule set not applied, try again: "+err.Error())
		return
	}
	httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "storage", "rule set not applied: "+err.Error())
}

func (e *Engine) adminDelete(ctx *fasthttp.RequestCtx, id string) {
	version, err := e.Delete(id)
	switch {
	case errors.Is(err, ErrNotFound):
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", fmt.Sprintf("no rule with id %q", id))
	case err != nil:
		writeApplyError(ctx, err)
	default:
		httpx.WriteJSON(ctx, fasthttp.StatusOK, VersionResponse{Version: version})
	}
}

func (e *Engine) adminTest(ctx *fasthttp.RequestCtx) {
	var req TestRequest
	dec := json.NewDecoder(bytes.NewReader(ctx.PostBody()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "decoding test request: "+err.Error())
		return
	}
	if req.Topic == "" {
		httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", "topic is required")
		return
	}
	if req.Source != "" && req.Source != "mqtt" && req.Source != "http" {
		httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", `source must be "mqtt" or "http"`)
		return
	}
	httpx.WriteJSON(ctx, fasthttp.StatusOK, e.Test(req))
}

// adminVersions serves GET versions, GET versions/{n} and POST versions/{n}/rollback.
func (e *Engine) adminVersions(ctx *fasthttp.RequestCtx, rest string) {
	method := string(ctx.Method())
	if rest == "" {
		if method != fasthttp.MethodGet {
			methodNotAllowed(ctx, "GET")
			return
		}
		vs, err := e.History()
		if err != nil {
			httpx.WriteError(ctx, fasthttp.StatusInternalServerError, "internal", err.Error())
			return
		}
		_, live := e.Live()
		if vs == nil {
			vs = []VersionInfo{}
		}
		httpx.WriteJSON(ctx, fasthttp.StatusOK, VersionsResponse{Live: live, Versions: vs})
		return
	}
	num, action, _ := strings.Cut(rest, "/")
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such rule set version: "+strconv.Quote(num)+" (versions are positive integers)")
		return
	}
	switch action {
	case "":
		if method != fasthttp.MethodGet {
			methodNotAllowed(ctx, "GET")
			return
		}
		sv, err := e.Version(n)
		if err != nil {
			writeVersionError(ctx, n, err)
			return
		}
		httpx.WriteJSON(ctx, fasthttp.StatusOK, sv)
	case "rollback":
		if method != fasthttp.MethodPost {
			methodNotAllowed(ctx, "POST")
			return
		}
		v, err := e.Rollback(n)
		if err != nil {
			writeVersionError(ctx, n, err)
			return
		}
		httpx.WriteJSON(ctx, fasthttp.StatusOK, RollbackResponse{Version: v, RollbackOf: n})
	default:
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found", "no such path: "+string(ctx.Path()))
	}
}

func writeVersionError(ctx *fasthttp.RequestCtx, n int, err error) {
	if errors.Is(err, ErrNoVersion) {
		httpx.WriteError(ctx, fasthttp.StatusNotFound, "not_found",
			fmt.Sprintf("rule set version %d is not stored (the last %d versions are kept; see GET %s/versions)", n, DefaultKeep, AdminPrefix))
		return
	}
	writeApplyError(ctx, err)
}
