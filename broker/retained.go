package broker

import (
	"bytes"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Retained messages are bounded three ways: in all (mqtt.max_retained), per sender
// (mqtt.max_retained_per_client; the sender is the tenant-scoped client id, and the broker's
// own downlink is exempt) and in bytes (mqtt.max_retained_bytes: topics and payloads). A
// device's retained publish reserves its room when it is read (takePublish; over a cap, MQTT 5
// QoS 1/2 gets PUBACK/PUBREC 0x97 and nothing is stored), and the reservation becomes the
// retained message when it is delivered after its commit (retainHook.OnPublish), or is
// released if the commit fails. So publishes in flight count, and a publish acknowledged as
// accepted is retained. The same caps apply when the store is read at start, so an old data
// dir (or a lowered cap) cannot fill memory.

// retainedIndex accounts for the retained messages by topic.
type retainedIndex struct {
	maxAll, maxOwner int
	maxBytes         int64

	mu      sync.Mutex
	topics  map[string]retainedRef
	byOwner map[string]int
	bytes   int64
	// reservations of publishes in flight
	pendingByOwner map[string]int
	pending        int
	pendingBytes   int64
}

type retainedRef struct {
	owner string // tenant-scoped client id of the sender; "" for the broker's own downlink
	size  int64
}

func newRetainedIndex(c Config) *retainedIndex {
	return &retainedIndex{
		maxAll: c.MaxRetained, maxOwner: c.MaxRetainedPerClient, maxBytes: c.MaxRetainedBytes,
		topics: map[string]retainedRef{}, byOwner: map[string]int{}, pendingByOwner: map[string]int{},
	}
}

func retainedSize(topic string, payload []byte) int64 { return int64(len(topic) + len(payload)) }

// fitsLocked reports whether owner may retain size bytes on topic (replacing what is there),
// beside the reservations of publishes in flight.
func (x *retainedIndex) fitsLocked(owner, topic string, size int64) bool {
	count, total, mine := len(x.topics)+x.pending, x.bytes+x.pendingBytes, x.byOwner[owner]+x.pendingByOwner[owner]
	if old, ok := x.topics[topic]; ok {
		count--
		total -= old.size
		if old.owner == owner {
			mine--
		}
	}
	return count < x.maxAll && total+size <= x.maxBytes && (owner == "" || mine < x.maxOwner)
}

// fits reports whether owner may retain size bytes on topic now; it records nothing.
func (x *retainedIndex) fits(owner, topic string, size int64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.fitsLocked(owner, topic, size)
}

// reserve holds room for a retained publish in flight; false if there is none.
func (x *retainedIndex) reserve(owner, topic string, size int64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.fitsLocked(owner, topic, size) {
		return false
	}
	x.pendingByOwner[owner]++
	x.pending++
	x.pendingBytes += size
	return true
}

// release gives back a reservation.
func (x *retainedIndex) release(owner string, size int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.releaseLocked(owner, size)
}

func (x *retainedIndex) releaseLocked(owner string, size int64) {
	if x.pendingByOwner[owner] <= 1 {
		delete(x.pendingByOwner, owner)
	} else {
		x.pendingByOwner[owner]--
	}
	x.pending--
	x.pendingBytes -= size
}

// commit turns a reservation into the retained message. It always succeeds: the room was held.
func (x *retainedIndex) commit(owner, topic string, size int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.releaseLocked(owner, size)
	x.putLocked(owner, topic, size)
}

// force records a retained message already checked by fits (a will message).
func (x *retainedIndex) force(owner, topic string, size int64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.putLocked(owner, topic, size)
}

// put records a retained message if it fits; false (and nothing recorded) if it does not.
func (x *retainedIndex) put(owner, topic string, size int64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.fitsLocked(owner, topic, size) {
		return false
	}
	x.putLocked(owner, topic, size)
	return true
}

func (x *retainedIndex) putLocked(owner, topic string, size int64) {
	x.removeLocked(topic)
	x.topics[topic] = retainedRef{owner: owner, size: size}
	x.byOwner[owner]++
	x.bytes += size
}

func (x *retainedIndex) remove(topic string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.removeLocked(topic)
}

func (x *retainedIndex) removeLocked(topic string) {
	old, ok := x.topics[topic]
	if !ok {
		return
	}
	delete(x.topics, topic)
	x.bytes -= old.size
	if x.byOwner[old.owner] <= 1 {
		delete(x.byOwner, old.owner)
	} else {
		x.byOwner[old.owner]--
	}
}

func (x *retainedIndex) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.topics)
}

// retainHook keeps the retained index in step with mochi's retained store. Every publish mochi
// processes comes from the broker's inline client (deliveries of committed device publishes,
// and downlink), and this hook sees it before mochi retains it.
type retainHook struct {
	mqtt.HookBase
	b *Broker
}

var _ mqtt.Hook = (*retainHook)(nil)

func (h *retainHook) ID() string { return "fleetgate-retained" }

func (h *retainHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublish, mqtt.OnRetainedExpired, mqtt.OnWill, mqtt.OnRetainMessage}, []byte{b})
}

// OnPublish records a retained message in the index, or clears its retain flag when a cap
// would be exceeded (it is still delivered to current subscribers). It runs after the auth
// hook's OnPublish, which set the packet's origin to the sender ("" for downlink).
func (h *retainHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl != h.b.inline || !pk.FixedHeader.Retain {
		return pk, nil
	}
	if len(pk.Payload) == 0 {
		h.b.retained.remove(pk.TopicName) // mochi deletes the retained message
		return pk, nil
	}
	size := retainedSize(pk.TopicName, pk.Payload)
	if remoteOrigin(pk) != "" { // from another node, which checked the caps
		h.b.retained.force(pk.Origin, pk.TopicName, size)
		return pk, nil
	}
	if pk.Origin != "" { // a device's publish: it reserved its room in takePublish
		h.b.retained.commit(pk.Origin, pk.TopicName, size)
		return pk, nil
	}
	if !h.b.retained.put("", pk.TopicName, size) {
		h.b.m.retainedRefused.Inc()
		h.b.log.Debug("mqtt retained message over a cap: delivered, not retained",
			"sender", pk.Origin, "topic", pk.TopicName)
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}

// OnWill clears the retain flag of a will message over a cap. mochi retains a will itself,
// without OnPublish (at once, or after the will delay): OnRetainMessage records it then.
func (h *retainHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if will.Retain && len(will.Payload) > 0 && !h.b.retained.fits(cl.ID, will.TopicName, retainedSize(will.TopicName, will.Payload)) {
		h.b.m.retainedRefused.Inc()
		will.Retain = false
	}
	return will, nil
}

// OnRetainMessage records a will message mochi retained (publishes are recorded by OnPublish).
func (h *retainHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if cl == h.b.inline {
		return
	}
	if r == -1 || len(pk.Payload) == 0 {
		h.b.retained.remove(pk.TopicName)
		return
	}
	h.b.retained.force(cl.ID, pk.TopicName, retainedSize(pk.TopicName, pk.Payload))
	// mochi retained the will as it built it: without its MQTT 5 properties, so without its
	// message expiry. Replace it by the will the client asked for (see will.go), unless the
	// topic was retained again meanwhile.
	if will, _, ok := willPacket(pk); ok {
		if cur, ok := h.b.server.Topics.Retained.Get(pk.TopicName); ok && cur.Created == pk.Created &&
			willPropsIndex(cur.Properties.User) >= 0 && bytes.Equal(cur.Payload, pk.Payload) {
			will.ProtocolVersion = 5 // mochi expires a retained message only if it is MQTT 5
			h.b.server.Topics.Retained.Add(pk.TopicName, will)
		}
	}
}

// OnRetainedExpired forgets a retained message whose message expiry passed.
func (h *retainHook) OnRetainedExpired(topic string) { h.b.retained.remove(topic) }
