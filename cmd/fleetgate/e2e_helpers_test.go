package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binPath is the fleetgate binary built once for the end-to-end tests.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fleetgate-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "fleetgate")
	if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building fleetgate: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// proc is a running `fleetgate serve` process.
type proc struct {
	cmd      *exec.Cmd
	mqttAddr string
	httpAddr string
	mu       sync.Mutex
	stdout   bytes.Buffer
	stderr   bytes.Buffer
	exited   chan struct{}
}

var readyLine = regexp.MustCompile(`fleetgate ready: mqtt=(\S+) http=(\S+)`)

// startProc runs `fleetgate serve` on loopback with dataDir and the config file (if any), and
// waits for its ready line. The process is killed at the end of the test.
func startProc(t testing.TB, dataDir, config string, extra ...string) *proc {
	t.Helper()
	p, err := launch(dataDir, config, 60*time.Second, extra...)
	if p != nil {
		t.Cleanup(p.kill)
	}
	if err != nil {
		t.Fatalf("fleetgate: %v", err)
	}
	return p
}

// launch is startProc without a test: it returns an error instead of failing, so that several
// processes can be started at once (a cluster's nodes wait for each other). The caller kills it.
func launch(dataDir, config string, wait time.Duration, extra ...string) (*proc, error) {
	args := []string{"serve", "--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}
	if config != "" {
		args = append(args, "--config", config)
	}
	args = append(args, extra...)
	p := &proc{cmd: exec.Command(binPath, args...), exited: make(chan struct{})}
	outPipe, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p.cmd.Stderr = &lockedWriter{mu: &p.mu, w: &p.stderr}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(outPipe)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if m := readyLine.FindStringSubmatch(line); m != nil {
				ready <- [2]string{m[1], m[2]}
			}
			p.mu.Lock()
			p.stdout.WriteString(line + "\n")
			p.mu.Unlock()
		}
	}()
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	select {
	case a := <-ready:
		p.mqttAddr, p.httpAddr = a[0], a[1]
		return p, nil
	case <-p.exited:
		return p, fmt.Errorf("exited before ready:\n%s", p.logs())
	case <-time.After(wait):
		return p, fmt.Errorf("not ready after %s:\n%s", wait, p.logs())
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "--- stdout\n" + p.stdout.String() + "--- stderr\n" + p.stderr.String()
}

func (p *proc) url(path string) string { return "http://" + p.httpAddr + path }

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// token mints a token with the fleetgate binary, as a user would.
func token(t testing.TB, dataDir, config string, args ...string) string {
	t.Helper()
	full := append([]string{"token", "--data-dir", dataDir}, args...)
	if config != "" {
		full = append(full, "--config", config)
	}
	out, err := exec.Command(binPath, full...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errorsAs(err, &ee) {
			t.Fatalf("fleetgate token: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func errorsAs(err error, target **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*target = e
	}
	return ok
}

// postEvents posts body to /v1/events/topic and returns the status and decoded answer.
func postEvents(client *http.Client, base, tok, topic, body string) (int, map[string]any, error) {
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/events/"+topic, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m, nil
}

// sink is a real HTTP function endpoint on loopback: it records every CloudEvent it receives.
type sink struct {
	ln       net.Listener
	mu       sync.Mutex
	ids      map[string]int // event id → times delivered
	batches  int
	events   []map[string]any
	failNext int // answer 500 to this many batches first
}

func startSink(t testing.TB) *sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{ln: ln, ids: map[string]int{}}
	srv := &http.Server{Handler: http.HandlerFunc(s.serve)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// setFailing makes the sink answer 500 to every batch (true) or accept them again (false).
func (s *sink) setFailing(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = 0
	if on {
		s.failNext = 1 << 30
	}
}

func (s *sink) url() string { return "http://" + s.ln.Addr().String() + "/" }

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents-batch+json" {
		http.Error(w, "bad content type "+ct, 400)
		return
	}
	var batch []map[string]any
	if err := json.NewDecoder(r.Body).Decode(&batch); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNext > 0 {
		s.failNext--
		http.Error(w, "failing on purpose", 500)
		return
	}
	s.batches++
	for _, ev := range batch {
		id, _ := ev["id"].(string)
		s.ids[id]++
		s.events = append(s.events, ev)
	}
	w.WriteHeader(200)
}

// has reports whether every id was delivered at least once.
func (s *sink) has(ids []string) (missing int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if s.ids[id] == 0 {
			missing++
		}
	}
	return missing
}

func (s *sink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

func writeTestFile(t testing.TB, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
