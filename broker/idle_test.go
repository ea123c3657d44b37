package broker

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// TestIdleConnectionFootprint guards what an idle connection costs in goroutines and stack
// (the patched mochi in third_party/mochi, and the listener's serveConn): one goroutine per
// connection, the reader, whose stack shrinks to 4 KiB while it waits for the next packet; the
// writer runs only while there is something to write, here a downlink each client reads
// before it goes idle. With mochi's writer goroutine per client there are two goroutines per
// connection; with its reader holding a packet by value, or serveConn a large frame, under its
// wait, the stack stays at 8 KiB or more.
func TestIdleConnectionFootprint(t *testing.T) {
	const n = 100
	e := newEnv(t, "", func(c *Config, _ *Options) { c.MaxConnsPerIP = 0 })
	goroutines0, stack0 := idleFootprint()
	clients := make([]*rawClient, n)
	for i := range clients {
		id := fmt.Sprintf("idle-%d", i)
		rc := dialRaw(t, e.addr, 4)
		if ack := rc.connect(id, e.token(id, "device", time.Hour), true, func(pk *packets.Packet) { pk.Connect.Keepalive = 600 }); ack.ReasonCode != 0 {
			t.Fatalf("%s: CONNACK %#x", id, ack.ReasonCode)
		}
		rc.send(subscribePacket("devices/"+id+"/cmd", 0))
		if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Suback {
			t.Fatalf("%s: SUBACK: %v %+v", id, err, pk)
		}
		clients[i] = rc
	}
	for i, rc := range clients {
		if err := e.broker.Publish(fmt.Sprintf("devices/idle-%d/cmd", i), []byte("x"), 0, false); err != nil {
			t.Fatal(err)
		}
		if pk, err := rc.read(); err != nil || pk.FixedHeader.Type != packets.Publish {
			t.Fatalf("idle-%d: downlink: %v %+v", i, err, pk)
		}
	}
	var goroutines, stack int64
	deadline := time.Now().Add(10 * time.Second)
	for {
		goroutines, stack = idleFootprint()
		goroutines, stack = (goroutines-goroutines0)*100/n, (stack-stack0)/n
		// Per connection: 1 goroutine (plus the store's and timers' background, a few in all);
		// 4 KiB of stack (8 KiB under the race detector, whose instrumented frames are larger).
		if goroutines < 150 && stack <= idleStackLimit {
			t.Logf("per idle connection: %d.%02d goroutines, %d bytes of stack", goroutines/100, goroutines%100, stack)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("per idle connection: %d.%02d goroutines and %d bytes of stack, want < 1.5 and <= %d",
				goroutines/100, goroutines%100, stack, idleStackLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// idleFootprint returns the goroutines and the bytes of goroutine stacks after a collection
// (each collection halves the stacks that use less than a quarter of theirs).
func idleFootprint() (goroutines, stack int64) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(runtime.NumGoroutine()), int64(m.StackInuse)
}
