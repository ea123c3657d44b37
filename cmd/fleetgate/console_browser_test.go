package main

// The operator console in a real browser: Debian's chromium, driven by chromedp, against the
// real gateway (the fleetgate binary on 127.0.0.1:0) and a real HTTP function on loopback.
// scripts/install-chromium.sh (make browser, part of make test) installs chromium when it is
// missing. Without chromium the test fails under CI=true and skips elsewhere, saying why.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// chromiumPath returns the browser to drive, or ends the test when there is none.
func chromiumPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("CHROMIUM")
	if p == "" {
		p = "/usr/bin/chromium"
	}
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("no browser at %s (%v): install Debian's chromium with scripts/install-chromium.sh (make browser), or set CHROMIUM", p, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// modalFunction is an HTTP function endpoint whose answer the test switches: "ok" (200),
// "reject" (400: the batch fails and is retried, then dead-lettered) or "down" (503: the
// endpoint looks unavailable and the function's circuit opens).
type modalFunction struct {
	ln   net.Listener
	mode atomic.Value
	mu   sync.Mutex
	ids  map[string]int
}

func startModalFunction(t *testing.T) *modalFunction {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &modalFunction{ln: ln, ids: map[string]int{}}
	f.mode.Store("ok")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch f.mode.Load().(string) {
		case "reject":
			http.Error(w, "rejected on purpose", http.StatusBadRequest)
			return
		case "down":
			http.Error(w, "down on purpose", http.StatusServiceUnavailable)
			return
		}
		var batch []map[string]any
		if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		for _, ev := range batch {
			id, _ := ev["id"].(string)
			f.ids[id]++
		}
		f.mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *modalFunction) received(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ids[id] > 0
}

// adminJSON reads an admin API path into out.
func adminJSON(t *testing.T, p *proc, tok, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.url(path), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	return resp.StatusCode
}

type liveRules struct {
	Version int `json:"version"`
	Rules   []struct {
		ID string `json:"id"`
	} `json:"rules"`
}

func (l liveRules) ids() string {
	var s []string
	for _, r := range l.Rules {
		s = append(s, r.ID)
	}
	return strings.Join(s, ",")
}

const consoleBadRules = `rules:
  - id: apps
    topic: "apps/#"
    functions: [sink]
  - id: broken
    topic: "devices/+/telemetry"
    when: 'payload.temp >'
    functions: [nope]
`

const consoleGoodRules = `rules:
  - id: apps
    topic: "apps/#"
    functions: [sink]
  - id: hot
    topic: "devices/+/telemetry"
    when: 'payload.temp > 50'
    functions: [log]
`

func TestConsoleInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	dir := t.TempDir()
	fn := startModalFunction(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
functions:
  - name: sink
    type: http
    url: http://%s/
    batch: {max_events: 10, max_wait: 5ms}
    concurrency: 1
    timeout: 2s
    retry: {max_attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}
    circuit: {failures: 1, probe_initial: 200ms, probe_max: 200ms}
rules:
  - id: apps
    topic: "apps/#"
    functions: [sink]
`, fn.ln.Addr()))
	data := filepath.Join(dir, "data")
	p := startProc(t, data, cfg)
	op := token(t, data, cfg, "--subject", "ops", "--role", "operator")
	app := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	dev := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	post := func(tok, topic, body string) string {
		t.Helper()
		code, m, err := postEvents(http.DefaultClient, "http://"+p.httpAddr, tok, topic, body)
		if err != nil || code != 202 {
			t.Fatalf("posting to %s: %d %v %v", topic, code, m, err)
		}
		ids, _ := m["ids"].([]any)
		return ids[0].(string)
	}

	// A device connected over MQTT (for the clients page), and a little steady traffic over
	// both protocols (routed nowhere) for the overview's rates and charts.
	mc := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID("dev-1").
		SetUsername("dev-1").SetPassword(dev).SetAutoReconnect(false))
	if tk := mc.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("MQTT connect: %v", tk.Error())
	}
	defer mc.Disconnect(0)
	if tk := mc.Subscribe("devices/dev-1/commands", 1, nil); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("MQTT subscribe: %v", tk.Error())
	}
	stopTraffic := make(chan struct{})
	trafficDone := make(chan struct{})
	go func() {
		defer close(trafficDone)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopTraffic:
				return
			case <-tick.C:
				postEvents(http.DefaultClient, "http://"+p.httpAddr, dev, "devices/dev-1/telemetry", `{"temp":20}`)
				mc.Publish("devices/dev-1/telemetry", 1, false, `{"temp":21}`).WaitTimeout(5 * time.Second)
			}
		}
	}()
	t.Cleanup(func() { close(stopTraffic); <-trafficDone })

	// Screenshots of every page go to a temporary directory, or to $CONSOLE_SCREENSHOTS to keep
	// them; UPDATE_SCREENSHOTS=1 also rewrites the two the README shows, in docs/console/.
	shots := os.Getenv("CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	readme := os.Getenv("UPDATE_SCREENSHOTS") == "1"

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true))...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	// The browser lives as long as ctx (no deadline on the first Run); each step has its own.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	// Every console message of the page: an exception, a console.error or a CSP refusal (the
	// browser log's "security" source) fails the test.
	var pageErrors []string
	var pmu sync.Mutex
	go func() {
		for m, err := range chromedp.Console(ctx) {
			if err != nil {
				return
			}
			// The network log reports every non-2xx answer (the refused rule set's 422, the
			// 404 of a missing clients API): those are expected; anything else is not.
			if m.IsException() || (m.Type == chromedp.ConsoleError && m.Source != "network") {
				pmu.Lock()
				pageErrors = append(pageErrors, m.String())
				pmu.Unlock()
			}
		}
	}()

	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById('main').innerText`))
			t.Fatalf("%s: %v\npage text:\n%s", what, err, body)
		}
	}
	// until waits for a JavaScript condition on the page.
	until := func(what, cond string) {
		t.Helper()
		step(what, func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second))(ctx, tg)
			return chromedp.Void{}, err
		})
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector(`+jsString(sel)+`)||{}).innerText||''`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	shoot := func(name string, forReadme bool) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
		if forReadme && readme {
			if err := os.WriteFile(filepath.Join("..", "..", "docs", "console", name+".png"), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	goTo := func(page, ready string) {
		t.Helper()
		step("opening "+page, chromedp.Evaluate[chromedp.Void](`location.hash = `+jsString("#/"+page)))
		until(page+" page shown", ready)
	}

	// Sign in. The token goes to session storage, never to a cookie.
	step("sign in",
		chromedp.Navigate(p.url("/console/")),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SetValue(chromedp.ID("token"), op),
		chromedp.Click(chromedp.ID("login-submit")))
	until("overview after sign-in", `document.querySelector('#overview-tiles .tile') !== null`)
	if c, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.cookie + '|' + (sessionStorage.getItem('fleetgate.token') ? 'stored' : '')`)); c != "|stored" {
		t.Fatalf("token storage: %q (want no cookie, the token in session storage)", c)
	}

	// Rules: a set with errors is refused, every problem shown at its rule; the live set stays.
	goTo("rules", `document.querySelector('#rules-live-title')?.dataset.version === '1' && document.querySelector('#rules-editor').value.includes('id: apps')`)
	step("review a bad set", chromedp.SetValue(chromedp.ID("rules-editor"), consoleBadRules), chromedp.Click(chromedp.ID("rules-review")))
	until("problems at rule broken", `document.querySelector('#rules-problem-list li[data-rule="broken"]') !== null`)
	got := text(`#rules-problem-list li[data-rule="broken"]`)
	for _, want := range []string{`rules[1] (id "broken")`, "line 5", "when", "functions[0]", `unknown function "nope"`} {
		if !strings.Contains(got, want) {
			t.Errorf("the problems of rule broken lack %q:\n%s", want, got)
		}
	}
	if n, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#rules-problem-list li[data-rule="apps"]').length`)); n != 0 {
		t.Errorf("the valid rule apps is listed with problems")
	}
	if hidden, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById('rules-apply').hidden`)); !hidden {
		t.Errorf("the apply button is offered for a refused set")
	}
	shoot("rules-problems", true)
	var lr liveRules
	if adminJSON(t, p, op, "/admin/v1/rules", &lr); lr.Version != 1 || lr.ids() != "apps" {
		t.Fatalf("the live set changed after a refused set: %+v", lr)
	}

	// A good set: reviewed (diff against the live set), then applied.
	step("review a good set", chromedp.SetValue(chromedp.ID("rules-editor"), consoleGoodRules), chromedp.Click(chromedp.ID("rules-review")))
	until("diff shown", `!document.getElementById('rules-apply').hidden && document.querySelector('#rules-diff pre.diff') !== null`)
	if d := text("#rules-diff"); !strings.Contains(d, "+   - id: hot") || strings.Contains(d, "-   - id: apps") {
		t.Errorf("diff against the live set:\n%s", d)
	}
	if b := text("#rules-apply"); b != "Apply as version 2" {
		t.Errorf("apply button %q", b)
	}
	step("apply", chromedp.Click(chromedp.ID("rules-apply")))
	until("applied", `document.getElementById('rules-result').innerText.includes('version 2 is live') && document.querySelector('#rules-live-title').dataset.version === '2'`)
	if adminJSON(t, p, op, "/admin/v1/rules", &lr); lr.Version != 2 || lr.ids() != "apps,hot" {
		t.Fatalf("live set after apply: %+v", lr)
	}

	// Dry run: which rules match an event, and why.
	step("dry run",
		chromedp.SetValue(chromedp.ID("dry-topic"), "devices/dev-7/telemetry"),
		chromedp.SetValue(chromedp.ID("dry-payload"), `{"temp": 71}`),
		chromedp.Click(chromedp.ID("dry-run")))
	until("dry-run result", `document.querySelector('#dry-table tr[data-rule="hot"].matched') !== null`)
	if f := text("#dry-functions"); !strings.Contains(f, "Functions: log") {
		t.Errorf("dry run functions: %q", f)
	}
	if r := text(`#dry-table tr[data-rule="apps"]`); !strings.Contains(r, "no match") || !strings.Contains(r, "topic did not match") {
		t.Errorf("dry run row of apps: %q", r)
	}
	shoot("rules", false)

	// Dead letters first: the function rejects two events (400), which fail their 2 attempts.
	fn.mode.Store("reject")
	dead := []string{post(app, "apps/app-1/click", `{"n":1}`), post(app, "apps/app-1/click", `{"n":2}`)}
	waitFor(t, 15*time.Second, "2 dead letters", func() bool { return deadLetters(t, p, op, "sink") == 2 })

	// Functions: the endpoint goes down; the circuit opens and the queue grows.
	goTo("functions", `document.querySelector('#functions tr[data-function="sink"]') !== null`)
	fn.mode.Store("down")
	post(app, "apps/app-1/click", `{"n":3}`)
	until("circuit open", `document.querySelector('#functions tr[data-function="sink"] .circuit')?.innerText.includes('open')`)
	for i := 4; i <= 8; i++ {
		post(app, "apps/app-1/click", fmt.Sprintf(`{"n":%d}`, i))
	}
	until("queue of 6", `Number(document.querySelector('#functions tr[data-function="sink"] .queue')?.innerText.replace(/,/g, '')) >= 6`)
	if row := text(`#functions tr[data-function="sink"]`); !strings.Contains(row, "paused") || !strings.Contains(row, "503") {
		t.Errorf("the row of a function whose endpoint is down: %q", row)
	}
	until("a few chart points", `(document.querySelector('#function-charts figure[data-function="sink"] polyline')?.getAttribute('points') || '').split(' ').length >= 4`)
	shoot("functions", true)
	// The endpoint comes back: the probe closes the circuit and the queue drains.
	fn.mode.Store("ok")
	until("queue drained", `document.querySelector('#functions tr[data-function="sink"] .queue')?.innerText === '0' && document.querySelector('#functions tr[data-function="sink"] .circuit')?.innerText.includes('closed')`)

	// Dead letters: browse with the reason and the event, replay one, then all.
	goTo("dlq?function=sink", `document.querySelectorAll('#dlq-table tbody tr').length === 2`)
	if tbl := text("#dlq-table"); !strings.Contains(tbl, "400") || !strings.Contains(tbl, "apps/app-1/click") {
		t.Errorf("dead letters table lacks the reason or the event:\n%s", tbl)
	}
	shoot("dlq", false)
	step("replay the first", chromedp.Click(chromedp.CSS(`#dlq-table tbody tr input[type=checkbox]`)), chromedp.Click(chromedp.ID("dlq-replay-selected")))
	until("one replayed", `document.getElementById('dlq-result').innerText.includes('1 dead letter of sink replayed') && document.querySelectorAll('#dlq-table tbody tr').length === 1`)
	step("replay all", chromedp.Click(chromedp.ID("dlq-replay-all")))
	until("all replayed", `document.getElementById('dlq-list').innerText.includes('sink has no dead letters')`)
	waitFor(t, 10*time.Second, "the replayed events at the function", func() bool { return fn.received(dead[0]) && fn.received(dead[1]) })

	// Rollback to version 1, from the history.
	goTo("rules", `document.querySelector('#history-table tr[data-version="1"] button[data-action="rollback"]') !== null`)
	step("roll back", chromedp.Click(chromedp.CSS(`#history-table tr[data-version="1"] button[data-action="rollback"]`)), chromedp.Click(chromedp.ID("rollback-confirm")))
	until("rolled back", `document.getElementById('rules-history-result').innerText.includes('version 3 is live with the rules of version 1') && document.querySelector('#rules-live-title').dataset.version === '3'`)
	if adminJSON(t, p, op, "/admin/v1/rules", &lr); lr.Version != 3 || lr.ids() != "apps" {
		t.Fatalf("live set after rollback: %+v", lr)
	}

	// Clients: the list when the gateway has the API, else a clear note.
	goTo("clients", `document.querySelector('#clients-body table, #clients-body .notice') !== null`)
	if code := adminJSON(t, p, op, "/admin/v1/clients", nil); code == 404 {
		if c := text("#clients-body"); !strings.Contains(c, "Not available") {
			t.Errorf("clients page without a clients API: %q", c)
		}
		if d, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.getElementById('client-search').disabled`)); !d {
			t.Errorf("the search is offered without a clients API")
		}
	} else {
		until("dev-1 listed", `document.querySelector('#clients-table tr[data-client="dev-1"]')?.innerText.includes('connected')`)
		step("search by prefix", chromedp.SetValue(chromedp.ID("client-search"), "zz"), chromedp.Click(chromedp.CSS(`form[role=search] button`)))
		until("no match", `document.getElementById('clients-body').innerText.includes('starts with "zz"')`)
		step("search by prefix", chromedp.SetValue(chromedp.ID("client-search"), "dev-"), chromedp.Click(chromedp.CSS(`form[role=search] button`)))
		until("dev-1 found", `document.querySelector('#clients-table tr[data-client="dev-1"]') !== null`)
	}
	shoot("clients", false)

	// Overview: rates from /metrics (the steady traffic is HTTP).
	goTo("overview", `document.querySelectorAll('#main polyline').length >= 2 && [1, 2].every(i => /[1-9]/.test(document.querySelector('#overview-tiles .tile:nth-child(' + i + ') .tile-value').innerText))`)
	shoot("overview", false)

	// Idle: no page makes more than one admin API round trip per second. And on each page
	// every form control has a label.
	for _, page := range []string{"overview", "rules", "functions", "dlq", "clients"} {
		goTo(page, `document.querySelector('#page h1') !== null`)
		unlabelled, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll('#page input, #page select, #page textarea')].filter(e => !e.labels || e.labels.length === 0).map(e => e.id || e.outerHTML.slice(0, 60))`))
		if err != nil || len(unlabelled) > 0 {
			t.Errorf("page %s: form controls without a label: %v %v", page, unlabelled, err)
		}
		step("idle "+page, chromedp.Evaluate[chromedp.Void](`performance.setResourceTimingBufferSize(10000); performance.clearResourceTimings(); window.__idleFrom = performance.now()`))
		until("2.5 s on "+page, `performance.now() - window.__idleFrom > 2500`)
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`performance.getEntriesByType('resource').filter(e => e.name.includes('/admin/v1/')).length`))
		if err != nil {
			t.Fatal(err)
		}
		if n > 3 { // one a second, and one more for a call at the very start
			t.Errorf("page %s made %d admin API calls in 2.5 s while idle", page, n)
		}
	}

	// On a tablet (portrait, 820 px wide) no page is wider than the screen: wide tables scroll
	// inside their own box.
	step("tablet viewport", chromedp.EmulateViewport(820, 1180))
	for _, page := range []string{"rules", "functions", "dlq"} {
		goTo(page, `document.querySelector('#page h1') !== null && document.querySelector('#page table, #page .notice') !== null`)
		if w, _ := chromedp.Run(ctx, chromedp.Evaluate[[]int](`[document.documentElement.scrollWidth, window.innerWidth]`)); len(w) != 2 || w[0] > w[1] {
			t.Errorf("page %s on a tablet: %v (document width, screen width)", page, w)
		}
		shoot(page+"-tablet", false)
	}
	step("desktop viewport", chromedp.EmulateViewport(1280, 800))

	// Sign out: the token is gone from the tab.
	step("sign out", chromedp.Click(chromedp.ID("logout")), chromedp.WaitVisible(chromedp.ID("token")))
	if s, _ := chromedp.Run(ctx, chromedp.Evaluate[bool](`sessionStorage.getItem('fleetgate.token') === null`)); !s {
		t.Errorf("the token stayed in session storage after sign-out")
	}
	pmu.Lock()
	defer pmu.Unlock()
	for _, e := range pageErrors {
		t.Errorf("browser console: %s", e)
	}
	t.Logf("screenshots in %s", shots)
}

// deadLetters is the dead-letter count of a function, from the admin API.
func deadLetters(t *testing.T, p *proc, tok, name string) int {
	t.Helper()
	var fs []struct {
		Name        string `json:"name"`
		DeadLetters int    `json:"dead_letters"`
	}
	adminJSON(t, p, tok, "/admin/v1/functions", &fs)
	for _, f := range fs {
		if f.Name == name {
			return f.DeadLetters
		}
	}
	return -1
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
