package loadtest

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/valyala/fasthttp"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startBroker starts a real MQTT broker on loopback and returns its tcp:// address:
// mosquitto when it is installed, else an in-process mochi broker that allows everyone.
// It installs nothing.
func startBroker(t *testing.T) (addr, kind string) {
	t.Helper()
	if bin, err := exec.LookPath("mosquitto"); err == nil && os.Getenv("LOADTEST_BROKER") != "mochi" {
		return startMosquitto(t, bin), "mosquitto"
	}
	return startMochi(t), "mochi"
}

func startMosquitto(t *testing.T, bin string) string {
	t.Helper()
	port := freePort(t)
	conf := filepath.Join(t.TempDir(), "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n", port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	hostport := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitFor(t, 10*time.Second, "mosquitto to listen", func() bool {
		c, err := net.DialTimeout("tcp", hostport, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return "tcp://" + hostport
}

func startMochi(t *testing.T) string {
	t.Helper()
	srv := mochi.New(&mochi.Options{
		InlineClient: true,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"})
	if err := srv.AddListener(tcp); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Close() })
	return "tcp://" + tcp.Address()
}

// serveHTTP serves h on a loopback port until the test ends and returns its base URL.
func serveHTTP(t *testing.T, h fasthttp.RequestHandler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Shutdown(); <-done })
	return "http://" + ln.Addr().String()
}

// cloudEvent is what the test's stand-in gateway sends to a function.
type cloudEvent struct {
	SpecVersion string          `json:"specversion"`
	ID          string          `json:"id"`
	Source      string          `json:"source"`
	Type        string          `json:"type"`
	Data        json.RawMessage `json:"data,omitempty"`
	DataBase64  []byte          `json:"data_base64,omitempty"`
}

// forwarder batches events and POSTs them to a function URL as
// application/cloudevents-batch+json, as the gateway's http invoker does.
type forwarder struct {
	t      *testing.T
	mu     sync.Mutex
	url    string
	buf    []cloudEvent
	n      int
	binary bool // send data_base64 instead of data
	client fasthttp.Client
}

func (f *forwarder) setURL(u string) { f.mu.Lock(); f.url = u; f.mu.Unlock() }

func (f *forwarder) add(data []byte, copies int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	for range copies {
		ev := cloudEvent{SpecVersion: "1.0", ID: strconv.Itoa(f.n), Source: "test", Type: "test"}
		if f.binary {
			ev.DataBase64 = append([]byte(nil), data...)
		} else {
			ev.Data = append(json.RawMessage(nil), data...)
		}
		f.buf = append(f.buf, ev)
	}
	if len(f.buf) >= 50 {
		f.flushLocked()
	}
}

func (f *forwarder) flush() { f.mu.Lock(); f.flushLocked(); f.mu.Unlock() }

func (f *forwarder) flushLocked() {
	if len(f.buf) == 0 || f.url == "" {
		return
	}
	body, err := json.Marshal(f.buf)
	if err != nil {
		f.t.Error(err)
		return
	}
	f.buf = f.buf[:0]
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(f.url)
	req.Header.SetMethod("POST")
	req.Header.SetContentType("application/cloudevents-batch+json")
	req.SetBody(body)
	if err := f.client.DoTimeout(req, resp, 5*time.Second); err != nil || resp.StatusCode() != 200 {
		f.t.Errorf("forwarding a batch: %v (status %d)", err, resp.StatusCode())
	}
}

// run flushes every 2 ms until stop is closed.
func (f *forwarder) run(stop <-chan struct{}) {
	tk := time.NewTicker(2 * time.Millisecond)
	defer tk.Stop()
	for {
		select {
		case <-stop:
			f.flush()
			return
		case <-tk.C:
			f.flush()
		}
	}
}

// subscribe connects a paho client to broker that hands every message on filter to fn.
func subscribe(t *testing.T, broker, filter string, fn func([]byte)) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID("sub-" + newRunID()).SetOrderMatters(false)
	o.SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { fn(m.Payload()) })
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	if tok := c.Subscribe(filter, 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
}

func mustContain(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%q does not contain %q", s, sub)
		}
	}
}
