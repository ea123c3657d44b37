package main

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/console"
)

// The real binary serves the console from its embedded files, with the strict CSP, and
// http.console: false turns it off.
func TestConsoleServedByTheGateway(t *testing.T) {
	dir := t.TempDir()
	get := func(p *proc, path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(p.url(path))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	on := startProc(t, filepath.Join(dir, "on"), "")
	resp, body := get(on, "/console/")
	if resp.StatusCode != 200 || !strings.Contains(body, `<script type="module" src="app.js"></script>`) {
		t.Fatalf("GET /console/: %d\n%s", resp.StatusCode, body)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") || csp != console.ContentSecurityPolicy {
		t.Errorf("CSP %q", csp)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("no nosniff: %v", resp.Header)
	}
	if resp, _ := get(on, "/console/pages/rules.js"); resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
		t.Errorf("GET /console/pages/rules.js: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	// The admin API behind it still needs the token.
	if resp, _ := get(on, "/admin/v1/rules/versions"); resp.StatusCode != 401 {
		t.Errorf("GET /admin/v1/rules/versions without a token: %d", resp.StatusCode)
	}

	off := startProc(t, filepath.Join(dir, "off"), writeTestFile(t, dir, "off.yaml", "http: {console: false}\n"))
	for _, path := range []string{"/console/", "/console/app.js", "/console"} {
		if resp, _ := get(off, path); resp.StatusCode != 404 {
			t.Errorf("GET %s with http.console: false: %d, want 404", path, resp.StatusCode)
		}
	}
}
