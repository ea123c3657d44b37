package broker

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest"
)

// Benchmarks of the real broker over loopback with the real gateway and a real store on disk
// (acks after fsync), side by side with mosquitto (not fsyncing) when it is installed.
//
//	go test -run XXX -bench 'QoS1' -benchtime 20000x ./broker/
//	go test -run XXX -bench IdleConnectionMemory -benchtime 1x ./broker/
//
// Results and the machine they were taken on: bench_results.txt.

const benchPayload = 100

func BenchmarkQoS1(b *testing.B) {
	for _, tc := range []struct {
		name          string
		conns, window int
	}{
		{"10conns_64inflight", 10, 64},
		{"1conn_256inflight", 1, 256},
		// what a connection gets when each ack waits for its commit before the next publish is
		// read (blocking in OnPublish): one commit latency per message
		{"1conn_1inflight", 1, 1},
	} {
		b.Run("fleetgate/"+tc.name, func(b *testing.B) {
			e := newEnv(b, "", nil)
			runQoS1Load(b, e.addr, tc.conns, tc.window, benchTokens(e, tc.conns), 0)
			if n := len(e.stored()); n < b.N {
				b.Fatalf("%d stored, %d acked", n, b.N)
			}
		})
		b.Run("mosquitto/"+tc.name, func(b *testing.B) {
			addr, pid := startMosquitto(b)
			runQoS1Load(b, addr, tc.conns, tc.window, make([]string, tc.conns), pid)
		})
	}
}

// BenchmarkQoS1Broker is BenchmarkQoS1's fleetgate half without the store: a gateway that
// accepts every event at once, so that it measures the broker's and mochi's own work per
// message (and the client's, the same as in BenchmarkQoS1's mosquitto half).
//
//	go test -run XXX -bench 'QoS1Broker' -benchtime 100000x ./broker/
func BenchmarkQoS1Broker(b *testing.B) {
	for _, tc := range []struct {
		name          string
		conns, window int
	}{
		{"10conns_64inflight", 10, 64},
		{"1conn_256inflight", 1, 256},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := newEnv(b, "", func(_ *Config, o *Options) { o.Gateway = instantAcceptor{} })
			runQoS1Load(b, e.addr, tc.conns, tc.window, benchTokens(e, tc.conns), 0)
		})
	}
}

// benchTokens mints a device token for each of n benchmark clients.
func benchTokens(e *env, n int) []string {
	tokens := make([]string, n)
	for i := range tokens {
		tokens[i] = e.token(fmt.Sprintf("bench-%d", i), "device", time.Hour)
	}
	return tokens
}

// instantAcceptor accepts every event at once, storing nothing.
type instantAcceptor struct{}

func (instantAcceptor) Accept(context.Context, []*event.Event, ingest.AcceptOptions) error {
	return nil
}

func (instantAcceptor) AcceptAsync(_ []*event.Event, _ ingest.AcceptOptions, done func(error)) {
	done(nil)
}

// runQoS1Load publishes b.N QoS 1 messages of benchPayload bytes over conns MQTT 3.1.1
// connections, each with at most window unacknowledged, and reports msgs/s and the CPU time
// per message of this process (client, and broker and store when in process) plus that of
// the server process pid (0: none).
func runQoS1Load(b *testing.B, addr string, conns, window int, tokens []string, pid int) {
	b.Helper()
	b.SetBytes(benchPayload)
	b.ReportAllocs()
	clients := make([]*rawClient, conns)
	for i := range clients {
		clients[i] = dialRaw(b, addr, 4)
		id := fmt.Sprintf("bench-%d", i)
		if ack := clients[i].connect(id, tokens[i], true, nil); ack.ReasonCode != 0 {
			b.Fatalf("CONNACK %#x", ack.ReasonCode)
		}
	}
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU(0)+processCPU(pid)
	for i, rc := range clients {
		n := b.N / conns
		if i < b.N%conns {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := pipelinedPublisher(rc.c, rc.r, fmt.Sprintf("devices/bench-%d/telemetry", i), n, window); err != nil {
				failed.Store(err)
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), processCPU(0)+processCPU(pid)-cpu0
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/msg")
	}
}

// processCPU is the user and system CPU time used by process pid, or by this one for 0 (0
// where unknown).
func processCPU(pid int) time.Duration {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux), after
	// the command name in parentheses.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// pipelinedPublisher sends n QoS 1 publishes on c keeping up to window unacknowledged, and
// returns when all are acked (in order).
func pipelinedPublisher(c net.Conn, r *bufio.Reader, topic string, n, window int) error {
	tmpl := publishPacket(topic, 1, 1, bytes.Repeat([]byte("x"), benchPayload))
	tmpl.ProtocolVersion = 4
	var buf bytes.Buffer
	if err := tmpl.PublishEncode(&buf); err != nil {
		return err
	}
	raw := buf.Bytes()
	idAt := len(raw) - benchPayload - 2
	slots := make(chan struct{}, window)
	errc := make(chan error, 1)
	go func() {
		var hdr [5]byte
		for i := 1; i <= n; i++ {
			if _, err := io.ReadFull(r, hdr[:2]); err != nil {
				errc <- err
				return
			}
			if hdr[0]>>4 != packets.Puback || hdr[1] != 2 {
				errc <- fmt.Errorf("ack %d: unexpected packet %x", i, hdr[:2])
				return
			}
			if _, err := io.ReadFull(r, hdr[2:4]); err != nil {
				errc <- err
				return
			}
			if id := uint16(hdr[2])<<8 | uint16(hdr[3]); id != uint16(i%65535+1) {
				errc <- fmt.Errorf("ack %d: packet id %d: out of order", i, id)
				return
			}
			<-slots
		}
		errc <- nil
	}()
	w := bufio.NewWriterSize(c, 32<<10)
	for i := 1; i <= n; i++ {
		select {
		case slots <- struct{}{}:
		default:
			if err := w.Flush(); err != nil {
				return err
			}
			slots <- struct{}{}
		}
		id := uint16(i%65535 + 1)
		raw[idAt], raw[idAt+1] = byte(id>>8), byte(id)
		if _, err := w.Write(raw); err != nil {
			return err
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	select {
	case err := <-errc:
		return err
	case <-time.After(60 * time.Second):
		return fmt.Errorf("acks did not arrive within 60s")
	}
}

// startMosquitto runs mosquitto (Debian's package, no persistence) on a free loopback port.
func startMosquitto(b *testing.B) (addr string, pid int) {
	b.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/mosquitto"); err2 != nil {
			b.Skip("mosquitto not installed")
		}
		bin = "/usr/sbin/mosquitto"
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr = l.Addr().String()
	_ = l.Close()
	_, port, _ := net.SplitHostPort(addr)
	conf := filepath.Join(b.TempDir(), "mosquitto.conf")
	if err := os.WriteFile(conf, []byte("listener "+port+" 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 100000\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", conf)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	waitFor(b, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	return addr, cmd.Process.Pid
}

// BenchmarkIdleConnectionMemory connects 10 000 idle MQTT clients (from a child process, so
// that only the broker's memory is measured) and reports the broker's heap+stack and RSS growth
// per connection. Run with -benchtime 1x.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const n = 10000
	e := newEnv(b, "", func(c *Config, _ *Options) { c.MaxConnsPerIP = 0 }) // all from loopback
	dir := b.TempDir()
	var toks strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&toks, "idle-%d %s\n", i, e.token(fmt.Sprintf("idle-%d", i), "device", time.Hour))
	}
	tokFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokFile, []byte(toks.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	heap0, stack0, rss0 := memNow()
	b.ResetTimer()
	// One measurement whatever b.N is: it is a memory figure, not a rate.
	{
		exe, err := os.Executable()
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(exe, "-test.run", "^TestIdleClientsChild$")
		cmd.Env = append(os.Environ(), "BROKER_IDLE_ADDR="+e.addr, "BROKER_IDLE_TOKENS="+tokFile)
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		waitFor(b, "10k clients connected", func() bool {
			return atomic.LoadInt64(&e.broker.server.Info.ClientsConnected) >= n
		})
		time.Sleep(time.Second) // let the connect-time garbage become garbage
		heap1, stack1, rss1 := memNow()
		if p := os.Getenv("BROKER_IDLE_HEAPPROFILE"); p != "" {
			if f, err := os.Create(p); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
		}
		b.ReportMetric(float64(heap1+stack1-heap0-stack0)/n, "heap+stack-B/conn")
		b.ReportMetric(float64(stack1-stack0)/n, "stack-B/conn")
		b.ReportMetric(float64(rss1-rss0)/n, "rss-B/conn")
		_ = stdin.Close()
		_, _ = io.Copy(io.Discard, out)
		_ = cmd.Wait()
		waitFor(b, "clients gone", func() bool { return atomic.LoadInt64(&e.broker.server.Info.ClientsConnected) == 0 })
	}
}

func memNow() (heap, stack, rss int64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	heap, stack = int64(m.HeapInuse), int64(m.StackInuse)
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				rss = kb << 10
			}
		}
	}
	return heap, stack, rss
}

// TestIdleClientsChild is the client side of BenchmarkIdleConnectionMemory, run in a child
// process; it does nothing in a normal test run.
func TestIdleClientsChild(t *testing.T) {
	addr, tokFile := os.Getenv("BROKER_IDLE_ADDR"), os.Getenv("BROKER_IDLE_TOKENS")
	if addr == "" {
		t.Skip("client side of BenchmarkIdleConnectionMemory")
	}
	data, err := os.ReadFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		id, tok, _ := strings.Cut(line, " ")
		rc := dialRaw(t, addr, 4)
		if ack := rc.connect(id, tok, true, func(pk *packets.Packet) { pk.Connect.Keepalive = 600 }); ack.ReasonCode != 0 {
			t.Fatalf("%s: CONNACK %#x", id, ack.ReasonCode)
		}
		_ = rc.c.SetReadDeadline(time.Time{})
		conns = append(conns, rc.c)
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent closes stdin
	for _, c := range conns {
		_ = c.Close()
	}
}
