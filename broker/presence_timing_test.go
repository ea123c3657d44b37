package broker

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/storage"
)

// BenchmarkConnectStorm measures what presence events add to a connect storm: two gateways
// on real stores, one with presence on and one with it off, take turns (in the same run) at
// a storm of 2000 MQTT 3.1.1 clients connecting at once (256 dialing at a time), each until
// its first PINGRESP (mochi reads a connection's packets only once the session hooks,
// presence included, have returned). Between storms every client disconnects and, with
// presence on, every disconnected event is stored before the next storm starts. Presence
// events are either routed to a function (presence_routed) or, as with the embedded default
// rule "#", to none (presence_unrouted: stored, then deleted by retention). It also reports the
// commits (each one fsync) the store with presence on made while the storms ran.
//
//	go test -run '^$' -bench ConnectStorm -benchtime 20x ./broker/
func BenchmarkConnectStorm(b *testing.B) {
	b.Run("presence_unrouted", func(b *testing.B) { connectStorm(b, false) })
	b.Run("presence_routed", func(b *testing.B) { connectStorm(b, true) })
}

// connectStorm runs the storms; routed says whether a rule sends presence events to a
// function (one queue entry each), or, as with the embedded rules, none does.
func connectStorm(b *testing.B, routed bool) {
	const clients, dialers = 2000, 256
	type side struct {
		on       bool
		e        *env
		connects [][]byte
		total    time.Duration
		storms   int
		commits  *metrics.Counter // the store's commits (each one fsync)
		during   uint64           // commits while the storms ran
	}
	var sides []*side
	for _, on := range []bool{false, true} {
		sd := &side{on: on}
		set := metrics.NewSet()
		sd.e = newEnv(b, "", func(c *Config, o *Options) {
			c.Presence.Enabled = on
			c.MaxConnsPerIP = 0
			if !routed {
				// as the embedded default rule ("#" to log): "$" topics match no rule
				gw, err := ingest.New(ingest.Options{Store: o.Store, Logger: testLogger(),
					Router: ingest.RouterFunc(func(ev *event.Event, dst []storage.Target) []storage.Target {
						if strings.HasPrefix(ev.Topic, "$") {
							return dst
						}
						return append(dst, storage.Target{Function: "log", Rule: "default"})
					})})
				if err != nil {
					b.Fatal(err)
				}
				o.Gateway = gw
			}
		}, func(o *storage.Options) { o.Metrics = set })
		sd.commits = set.GetOrCreateCounter("fleetgate_storage_commits_total")
		sd.connects = make([][]byte, clients)
		for i := range sd.connects {
			id := fmt.Sprintf("storm-%d", i)
			rc := &rawClient{t: b, v: 4}
			sd.connects[i] = rc.encode(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{ClientIdentifier: id, Clean: true, Keepalive: 60, UsernameFlag: true,
					Username: []byte(id), PasswordFlag: true, Password: []byte(sd.e.token(id, "device", time.Hour))}})
		}
		sides = append(sides, sd)
	}
	ping := []byte{0xC0, 0x00}
	storm := func(sd *side) {
		conns := make([]net.Conn, clients)
		var next, failed atomic.Int64
		var wg sync.WaitGroup
		commits := sd.commits.Get()
		start := time.Now()
		for range dialers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 4)
				for {
					i := int(next.Add(1)) - 1
					if i >= clients {
						return
					}
					c, err := net.Dial("tcp", sd.e.addr)
					if err != nil {
						failed.Add(1)
						continue
					}
					conns[i] = c
					_ = c.SetDeadline(time.Now().Add(60 * time.Second))
					if _, err := c.Write(sd.connects[i]); err != nil {
						failed.Add(1)
						continue
					}
					if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, []byte{0x20, 0x02, 0x00, 0x00}) {
						failed.Add(1)
						continue
					}
					if _, err := c.Write(ping); err != nil {
						failed.Add(1)
						continue
					}
					if _, err := io.ReadFull(c, buf[:2]); err != nil || buf[0] != 0xD0 {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		sd.total += time.Since(start)
		sd.during += sd.commits.Get() - commits
		sd.storms++
		if n := failed.Load(); n > 0 {
			b.Fatalf("presence=%v: %d of %d clients failed", sd.on, n, clients)
		}
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		waitFor(b, "every storm client gone", func() bool { return atomic.LoadInt64(&sd.e.broker.server.Info.ClientsConnected) == 0 })
		if sd.on {
			waitFor(b, "the disconnected events", func() bool {
				return int(sd.e.broker.m.presenceDisconnected.Get()) == clients*sd.storms
			})
		}
	}
	b.ResetTimer()
	for i := range b.N {
		// alternate which side goes first, so that neither always follows the other's storm
		storm(sides[i%2])
		storm(sides[1-i%2])
	}
	b.StopTimer()
	for _, sd := range sides {
		b.ReportMetric(float64(clients*sd.storms)/sd.total.Seconds(), fmt.Sprintf("connects/s_presence_%v", sd.on))
		if sd.on {
			b.ReportMetric(float64(sd.during)/float64(sd.storms), "commits/storm_presence_true")
		}
	}
	if got := len(sides[1].e.storedOn("$events/presence/connected/")); routed && got != clients*b.N {
		b.Fatalf("%d connected events, want %d", got, clients*b.N)
	}
}
