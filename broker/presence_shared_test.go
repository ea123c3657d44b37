package broker

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/storage"
)

// casKV is a KV shared by several gateways that offers compare-and-set, as cluster mode's
// bucket does. before, when set, runs once, right before the next write of a session version:
// another gateway getting in between a gateway's read and its write.
type casKV struct {
	*memKV
	mu     sync.Mutex // a write, and CompareAndPut's check with its write, are one step
	hookMu sync.Mutex
	before func()
}

func (k *casKV) setBefore(f func()) {
	k.hookMu.Lock()
	defer k.hookMu.Unlock()
	k.before = f
}

func (k *casKV) interfere(key string) {
	if !strings.HasPrefix(key, keyPresenceVersion) {
		return
	}
	k.hookMu.Lock()
	f := k.before
	k.before = nil
	k.hookMu.Unlock()
	if f != nil {
		f()
	}
}

func (k *casKV) Put(key string, v []byte) error {
	k.interfere(key)
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.memKV.Put(key, v)
}

func (k *casKV) PutMany(kvs map[string][]byte) error {
	for key := range kvs {
		k.interfere(key)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.memKV.PutMany(kvs)
}

func (k *casKV) CompareAndPut(key string, old []byte, found bool, value []byte) error {
	k.interfere(key)
	k.mu.Lock()
	defer k.mu.Unlock()
	cur, ok, _ := k.memKV.Get(key)
	if ok != found || !bytes.Equal(cur, old) {
		return fmt.Errorf("updating %s: %w", key, storage.ErrChanged)
	}
	return k.memKV.Put(key, value)
}

// casShared is a gateway's Backend in front of a shared casKV: its own log, the shared KV
// with its compare-and-set.
type casShared struct {
	sharedKV
	cas *casKV
}

func (s casShared) CompareAndPut(key string, old []byte, found bool, value []byte) error {
	return s.cas.CompareAndPut(key, old, found, value)
}

// sharingVersions turns presence on and puts the gateway's KV in front of kv.
func sharingVersions(kv *casKV) func(*Config, *Options) {
	return func(c *Config, o *Options) {
		withPresence(0)(c, o)
		o.Store = casShared{sharedKV: sharedKV{Backend: o.Store, kv: kv}, cas: kv}
	}
}

func presenceOf(t testing.TB, b *Broker) *presenceHook {
	t.Helper()
	for _, h := range b.hooks {
		if p, ok := h.(*presenceHook); ok {
			return p
		}
	}
	t.Fatal("no presence hook")
	return nil
}

// Two gateways sharing one KV with compare-and-set (cluster mode) never hand out the same
// session version of a client id, and each version is above every one handed out before it,
// on either gateway: when the other gateway writes between a gateway's read and its write,
// when the client id moves between them, and when both allocate at once.
func TestSharedSessionVersions(t *testing.T) {
	kv := &casKV{memKV: newMemKV()}
	ha := presenceOf(t, newEnv(t, "", sharingVersions(kv)).broker)
	hb := presenceOf(t, newEnv(t, "", sharingVersions(kv)).broker)
	const id = "acme/d1"
	alloc := func(h *presenceHook) uint64 {
		v, reserve, err := h.allocate(id)
		if err != nil {
			t.Error(err)
			return 0
		}
		h.storeVersion(id, reserve) // what OnSessionEstablished does before an event carries v
		return v
	}

	var vb uint64
	kv.setBefore(func() { vb = alloc(hb) })
	va := alloc(ha)
	if va == vb || va == 0 || vb == 0 {
		t.Fatalf("the other gateway wrote between a read and a write: versions %d and %d", vb, va)
	}

	last := max(va, vb)
	for i := range 10 {
		h := []*presenceHook{ha, hb}[i%2]
		if v := alloc(h); v <= last {
			t.Fatalf("session %d, on gateway %d: version %d after %d", i, i%2, v, last)
		} else {
			last = v
		}
	}

	const workers, sessions = 8, 25
	var mu sync.Mutex
	var all []uint64
	var wg sync.WaitGroup
	for w := range 2 * workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := []*presenceHook{ha, hb}[w%2]
			prev := last
			for range sessions {
				v := alloc(h)
				if v <= prev {
					t.Errorf("worker %d: version %d after %d", w, v, prev)
				}
				prev = v
				mu.Lock()
				all = append(all, v)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(all)
	if d := slices.Compact(slices.Clone(all)); len(d) != len(all) {
		t.Fatalf("%d versions handed out twice among %d", len(all)-len(d), len(all))
	}
	if all[0] <= last {
		t.Fatalf("version %d after %d", all[0], last)
	}
}

// A device that reconnects to another gateway sharing the KV gets the next session version
// there: the connected events of its sessions, stored by either gateway, count 1, 2, 3, 4.
func TestSessionVersionsAcrossGateways(t *testing.T) {
	kv := &casKV{memKV: newMemKV()}
	envs := []*env{newEnv(t, "", sharingVersions(kv)), newEnv(t, "", sharingVersions(kv))}
	for v := 1; v <= 4; v++ {
		e := envs[(v-1)%2]
		n := len(e.storedOn(TopicPresenceConnected + "d1"))
		rc := dialRaw(t, e.addr, 4)
		if ack := rc.connect("d1", e.token("d1", "device", time.Hour), true, nil); ack.ReasonCode != 0 {
			t.Fatalf("connack %d", ack.ReasonCode)
		}
		waitFor(t, "the connected event", func() bool { return len(e.storedOn(TopicPresenceConnected+"d1")) == n+1 })
		if got := e.storedOn(TopicPresenceConnected + "d1")[n]["session_version"]; got != float64(v) {
			t.Fatalf("session %d, on gateway %d: version %v", v, (v-1)%2, got)
		}
		rc.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}})
		rc.expectClosed()
		waitFor(t, "the disconnected event", func() bool { return len(e.storedOn(TopicPresenceDisconnected+"d1")) == n+1 })
	}
	if raw, ok, _ := kv.Get(keyPresenceVersion + "acme/d1"); !ok || string(raw) != "4" {
		t.Fatalf("stored version %q", raw)
	}
}
