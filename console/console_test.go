package console

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func serve(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: Handler()}
	go srv.Serve(ln) //nolint:errcheck // returns when the listener closes
	t.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func fetch(t *testing.T, method, url string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestHandlerHeadersAndFiles(t *testing.T) {
	base := serve(t)
	f := func(path, wantType string) {
		t.Helper()
		resp, body := fetch(t, "GET", base+path, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != wantType || body == "" {
			t.Fatalf("GET %s: %d %q (%d bytes)", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		if got := resp.Header.Get("Content-Security-Policy"); got != ContentSecurityPolicy {
			t.Fatalf("GET %s: CSP %q", path, got)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("GET %s: headers %v", path, resp.Header)
		}
		etag := resp.Header.Get("ETag")
		if r2, _ := fetch(t, "GET", base+path, map[string]string{"If-None-Match": etag}); etag == "" || r2.StatusCode != 304 {
			t.Fatalf("GET %s with If-None-Match %q: %d", path, etag, r2.StatusCode)
		}
	}
	f("/console/", "text/html; charset=utf-8")
	f("/console/index.html", "text/html; charset=utf-8")
	f("/console/app.js", "text/javascript; charset=utf-8")
	f("/console/pages/rules.js", "text/javascript; charset=utf-8")
	f("/console/style.css", "text/css; charset=utf-8")

	for _, c := range []struct {
		method, path string
		code         int
	}{{"GET", "/console/nope.js", 404}, {"GET", "/console/../go.mod", 404}, {"POST", "/console/", 405}, {"GET", "/console", 301}} {
		resp, _ := fetch(t, c.method, base+c.path, nil)
		if resp.StatusCode != c.code || resp.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("%s %s = %d (CSP %q), want %d", c.method, c.path, resp.StatusCode, resp.Header.Get("Content-Security-Policy"), c.code)
		}
	}
	if resp, _ := fetch(t, "GET", base+"/console", nil); resp.Header.Get("Location") != "/console/" {
		t.Errorf("redirect to %q", resp.Header.Get("Location"))
	}
}

// The CSP leaves no room for a CDN or inline code: the files must reference only each other.
func TestFilesAreSelfContained(t *testing.T) {
	files := Files()
	all := load()
	var refs = regexp.MustCompile(`(?:src|href)="([^"#]+)"|from '([^']+)'|import\('([^']+)'\)`)
	inline := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]|<style|\sstyle=|\son[a-z]+=|javascript:`)
	for _, p := range files {
		body := strings.ReplaceAll(string(all[p].body), "'http://www.w3.org/2000/svg'", "") // a name, not a fetch
		if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
			t.Errorf("%s names an absolute URL: the console must work offline", p)
		}
		if strings.HasSuffix(p, ".html") && inline.MatchString(body) {
			t.Errorf("%s has inline script, style or event handler: %q", p, inline.FindString(body))
		}
		if strings.HasSuffix(p, ".js") && (strings.Contains(body, "innerHTML") || strings.Contains(body, "outerHTML") ||
			strings.Contains(body, "insertAdjacentHTML") || strings.Contains(body, "eval(") || strings.Contains(body, "document.write")) {
			t.Errorf("%s renders HTML from strings: use textContent (el())", p)
		}
		dir := p[:strings.LastIndex(p, "/")+1]
		for _, m := range refs.FindAllStringSubmatch(body, -1) {
			ref := m[1] + m[2] + m[3]
			if strings.HasPrefix(ref, "data:") {
				continue
			}
			target := dir + ref
			for strings.Contains(target, "/./") {
				target = strings.Replace(target, "/./", "/", 1)
			}
			for strings.Contains(target, "/../") {
				i := strings.Index(target, "/../")
				j := strings.LastIndex(target[:i], "/")
				target = target[:j+1] + target[i+4:]
			}
			if !slices.Contains(files, target) {
				t.Errorf("%s references %q (%s), which is not embedded", p, ref, target)
			}
		}
	}
	for _, want := range []string{"/console/index.html", "/console/app.js", "/console/style.css", "/console/pages/rules.js",
		"/console/pages/functions.js", "/console/pages/dlq.js", "/console/pages/clients.js", "/console/pages/overview.js"} {
		if !slices.Contains(files, want) {
			t.Errorf("%s is not embedded (files: %v)", want, files)
		}
	}
}
