package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestDiskFullEndToEnd runs the real gateway on a small real file system (a 192 MiB tmpfs that
// the test mounts and removes) and fills it with ~150 KB posts while the function is down. The
// gateway used to die of SIGBUS in Badger's mmapped write-ahead log there, and again at every
// restart. Now: it refuses with 503 + Retry-After naming storage.min_free_bytes, /readyz says
// not ready, queued events are still delivered, it accepts again by itself once space is freed,
// and after a SIGKILL and restart every acknowledged event has reached the function.
func TestDiskFullEndToEnd(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "small-disk")
	if err := os.Mkdir(disk, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", disk, "tmpfs", 0, "size=192m"); err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("cannot mount a small tmpfs to fill (needs root; CI runs as root): %v", err)
		}
		t.Fatalf("mounting a tmpfs as root: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(disk, syscall.MNT_DETACH) })
	filler := filepath.Join(disk, "filler")
	if err := os.WriteFile(filler, make([]byte, 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	s := startSink(t)
	cfg := writeTestFile(t, dir, "fleetgate.yaml", fmt.Sprintf(`
storage: {memtable_bytes: 8388608}   # min_free_bytes: 4 x 8 MiB
functions:
  - name: sink
    type: http
    url: %s
    batch: {max_events: 50, max_wait: 5ms}
    retry: {max_attempts: 1000, initial_backoff: 10ms, max_backoff: 100ms}
rules:
  - {id: all, topic: "#", functions: [sink]}
`, s.url()))
	data := filepath.Join(disk, "data")
	p := startProc(t, data, cfg)
	tok := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	s.setFailing(true)

	raw := make([]byte, 110<<10)
	rand.Read(raw) // incompressible
	body := `{"blob":"` + base64.StdEncoding.EncodeToString(raw) + `"}`
	client := &http.Client{Timeout: 20 * time.Second}
	var mu sync.Mutex
	var acked []string
	var refusal, lastRefusal map[string]any
	var retryAfter string
	post := func() (int, error) {
		req, _ := http.NewRequest(http.MethodPost, p.url("/v1/events/apps/app-1/blob"), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var ans map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
			return resp.StatusCode, err
		}
		mu.Lock()
		defer mu.Unlock()
		switch resp.StatusCode {
		case 202:
			for _, id := range ans["ids"].([]any) {
				acked = append(acked, id.(string))
			}
		case 503:
			lastRefusal = ans
			if refusal == nil {
				refusal, retryAfter = ans, resp.Header.Get("Retry-After")
			}
		}
		return resp.StatusCode, nil
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				code, err := post()
				if err != nil {
					t.Errorf("post: %v (the gateway died?)\n%s", err, p.logs())
					return
				}
				if code == 503 {
					return
				}
				if code != 202 {
					t.Errorf("post answered %d", code)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if refusal == nil || retryAfter == "" || !strings.Contains(fmt.Sprint(refusal["error"]), "storage.min_free_bytes") {
		t.Fatalf("no 503 naming storage.min_free_bytes with Retry-After on a full disk: %v %q", refusal, retryAfter)
	}
	t.Logf("%d events acknowledged before the disk counted as full; then: %v", len(acked), refusal["error"])
	if code := getStatus(t, p.url("/readyz")); code != 503 {
		t.Fatalf("/readyz on a full disk = %d", code)
	}
	select {
	case <-p.exited:
		t.Fatalf("gateway exited on a full disk:\n%s", p.logs())
	default:
	}

	// Deliveries go on while new events are refused.
	s.setFailing(false)
	deadline := time.Now().Add(60 * time.Second)
	for s.has(acked) > 0 {
		select {
		case <-p.exited:
			t.Fatalf("gateway exited on a full disk:\n%s", p.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged events not delivered on the full disk after 60s\n%s", s.has(acked), len(acked), p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Space comes back: the gateway accepts again by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "/readyz 200 after space was freed", func() bool { return getStatus(t, p.url("/readyz")) == 200 })
	if code, err := post(); code != 202 || err != nil {
		t.Fatalf("post after space was freed: %d %v %v\n%s", code, err, lastRefusal, p.logs())
	}

	// And nothing acknowledged is lost across a SIGKILL.
	s.setFailing(true)
	for range 20 {
		if code, err := post(); code != 202 || err != nil {
			t.Fatalf("post: %d %v", code, err)
		}
	}
	p.kill()
	s.setFailing(false)
	p2 := startProc(t, data, cfg)
	mu.Lock()
	ids := append([]string(nil), acked...)
	mu.Unlock()
	waitFor(t, 60*time.Second, fmt.Sprintf("all %d acknowledged events delivered after the restart", len(ids)), func() bool {
		return s.has(ids) == 0
	})
	_ = p2
}

func getStatus(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
