package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fleetgate/fleetgate/internal/crashfs"
)

// TestAcknowledgedSurvivePowerLoss runs the gateway with its data dir on a crashfs mount, sends
// over HTTP and MQTT QoS 1 at once, SIGKILLs the gateway mid-stream and cuts the power
// (crashfs undoes everything not fsynced), mounts again, restarts the gateway with the function
// up, and checks that every event answered 202 or PUBACKed is delivered to the function.
// SIGKILL alone keeps the page cache; the power cut is what catches a missing fsync.
//
// Checked to fail without fsync: with `var syncWrites = false` in storage/store.go (TestMain
// builds the gateway from the tree), `go test -run TestAcknowledgedSurvivePowerLoss
// ./cmd/fleetgate/` fails: the restarted gateway exits before it is ready with
// `msg="fleetgate failed to start" err="opening storage in \".../data/log\": while opening
// memtables err: while opening fid: 1 err: Create a new file"` (Badger's memtable log was
// never synced and came back empty, with every acknowledged event in it).
func TestAcknowledgedSurvivePowerLoss(t *testing.T) {
	if err := crashfs.Available(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := crashfs.Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Unmount() })

	s := startSink(t)
	cfg := sinkConfig(t, dir, s) // the config stays off the mount: only the data dir loses power
	data := filepath.Join(mnt, "data")
	p := startProc(t, data, cfg)
	appTok := token(t, data, cfg, "--subject", "app-1", "--role", "app")
	devTok := token(t, data, cfg, "--subject", "dev-1", "--role", "device")
	// The function fails until after the power cut: every event must come from the log.
	s.setFailing(true)

	var mu sync.Mutex
	var httpIDs, mqttUIDs []string
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(httpIDs), len(mqttUIDs)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`[{"w":%d,"i":%d,"k":0},{"w":%d,"i":%d,"k":1},{"w":%d,"i":%d,"k":2}]`, w, i, w, i, w, i)
				code, ans, err := postEvents(client, "http://"+p.httpAddr, appTok, "apps/app-1/burst", body)
				if err != nil {
					return // the gateway is gone
				}
				if code != 202 {
					continue
				}
				mu.Lock()
				for _, id := range ans["ids"].([]any) {
					httpIDs = append(httpIDs, id.(string))
				}
				mu.Unlock()
			}
		}()
	}

	opts := mqtt.NewClientOptions().AddBroker("tcp://" + p.mqttAddr).SetClientID("dev-1").
		SetUsername("dev-1").SetPassword(devTok).SetAutoReconnect(false).SetConnectRetry(false).
		SetMaxResumePubInFlight(64).SetWriteTimeout(5 * time.Second)
	c := mqtt.NewClient(opts)
	if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("connect: %v\n%s", tk.Error(), p.logs())
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		type pending struct {
			uid string
			tk  mqtt.Token
		}
		var inflight []pending
		// Up to 64 in flight; a PUBACK counts once its token completes without error. After the
		// kill, tokens complete with an error (or time out) and count for nothing.
		settle := func(n int) {
			for len(inflight) > n {
				head := inflight[0]
				inflight = inflight[1:]
				if head.tk.WaitTimeout(10*time.Second) && head.tk.Error() == nil {
					mu.Lock()
					mqttUIDs = append(mqttUIDs, head.uid)
					mu.Unlock()
				}
			}
		}
		defer settle(0)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			uid := fmt.Sprintf("m-%d", i)
			tk := c.Publish("devices/dev-1/telemetry", 1, false, fmt.Sprintf(`{"uid":%q,"temp":%d}`, uid, i%90))
			inflight = append(inflight, pending{uid, tk})
			settle(63)
		}
	}()

	waitFor(t, 60*time.Second, "300 HTTP and 1000 MQTT acknowledgements", func() bool {
		h, m := counts()
		return h >= 300 && m >= 1000
	})
	p.kill()
	close(stop)
	wg.Wait()
	c.Disconnect(0)
	mu.Lock()
	ids, uids := append([]string(nil), httpIDs...), append([]string(nil), mqttUIDs...)
	mu.Unlock()
	if s.count() != 0 {
		t.Fatalf("%d events delivered while the function was failing", s.count())
	}
	t.Logf("%d events answered 202 and %d PUBACKed before SIGKILL", len(ids), len(uids))

	fsys2, err := fsys.PowerCycle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys2.Unmount() })

	s.setFailing(false)
	p2 := startProc(t, data, cfg)
	missing := func() (nh, nm int) {
		s.mu.Lock()
		defer s.mu.Unlock()
		got := map[string]bool{}
		for _, ev := range s.events {
			if d, ok := ev["data"].(map[string]any); ok {
				if uid, ok := d["uid"].(string); ok {
					got[uid] = true
				}
			}
		}
		for _, id := range ids {
			if s.ids[id] == 0 {
				nh++
			}
		}
		for _, uid := range uids {
			if !got[uid] {
				nm++
			}
		}
		return nh, nm
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		h, m := missing()
		if h == 0 && m == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the power cut, %d of %d HTTP and %d of %d MQTT acknowledged events never delivered\n%s",
				h, len(ids), m, len(uids), p2.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
