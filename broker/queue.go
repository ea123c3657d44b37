package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
)

// Session queues.
//
// A session's queue is its QoS 1/2 messages not yet acknowledged by its client: queued while
// it is offline (persistent sessions, kept in the store: mqtt/ifm/...) or in flight while it
// is online. mqtt.session_queue_max bounds it by count and by bytes (topic + payload). When a
// new message would exceed either bound, the oldest messages of the queue are dropped until it
// fits (the new message itself too, if it alone is over the byte bound), and every dropped
// message becomes a durable event on $events/queue/dropped/{client_id} (data: QueueDrop) that
// rules can route, counted in fleetgate_mqtt_queue_dropped_total{reason}. Never a silent drop.
// MQTT 5 message expiry is mochi's: an expired message is dropped from the queue (no event:
// its sender asked for it).

const (
	// TopicQueueDropped is the prefix of the events of dropped queued messages.
	TopicQueueDropped = "$events/queue/dropped/"
	// maxQueueMessages bounds session_queue_max.messages (packet ids are 16 bits).
	maxQueueMessages = 60000
	// queueSlack is how far above session_queue_max.messages mochi's own cap sits.
	queueSlack = 1024
)

// QueueDrop is the data of a $events/queue/dropped event.
type QueueDrop struct {
	ClientID       string    `json:"client_id"`
	Subject        string    `json:"subject"`
	Tenant         string    `json:"tenant"`
	Topic          string    `json:"topic"` // of the dropped message
	QoS            byte      `json:"qos"`
	Bytes          int       `json:"bytes"`
	Reason         string    `json:"reason"` // "messages" or "bytes": the bound exceeded
	QueuedMessages int       `json:"queued_messages"`
	QueuedBytes    int64     `json:"queued_bytes"`
	LimitMessages  int       `json:"limit_messages"`
	LimitBytes     int64     `json:"limit_bytes"`
	Connected      bool      `json:"connected"`
	At             time.Time `json:"at"`
	Node           string    `json:"node"`
}

// sessionQueue counts the messages and bytes of one session's queue.
type sessionQueue struct {
	mu     sync.Mutex
	synced bool           // sizes reflect the client's inflight table
	sizes  map[uint16]int // packet id → topic + payload bytes, outbound publishes only
	bytes  int64
}

func (q *sessionQueue) sync(cl *mqtt.Client) {
	q.sizes, q.bytes = map[uint16]int{}, 0
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish {
			q.add(pk.PacketID, msgSize(&pk))
		}
	}
	q.synced = true
}

func (q *sessionQueue) add(id uint16, n int) {
	if _, ok := q.sizes[id]; ok {
		return
	}
	q.sizes[id] = n
	q.bytes += int64(n)
}

func (q *sessionQueue) remove(id uint16) {
	if n, ok := q.sizes[id]; ok {
		delete(q.sizes, id)
		q.bytes -= int64(n)
	}
}

func msgSize(pk *packets.Packet) int { return len(pk.TopicName) + len(pk.Payload) }

// queueHook keeps each session's queue within mqtt.session_queue_max.
type queueHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *queueHook) ID() string { return "fleetgate-queues" }

func (h *queueHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnDisconnect, mqtt.OnClientExpired,
	}, []byte{b})
}

func (b *Broker) queue(id string) *sessionQueue {
	v, _ := b.queues.LoadOrStore(id, &sessionQueue{})
	return v.(*sessionQueue)
}

// queueLen returns the messages and bytes queued for cl's session.
func (b *Broker) queueLen(cl *mqtt.Client) (int, int64) {
	q := b.queue(cl.ID)
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.synced {
		q.sync(cl)
	}
	return len(q.sizes), q.bytes
}

// OnSessionEstablished counts the queue the session starts with (inherited, or cleared).
func (h *queueHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	q := h.b.queue(cl.ID)
	q.mu.Lock()
	q.sync(cl)
	q.mu.Unlock()
}

// OnQosPublish counts a message added to the queue and drops the oldest while over a bound.
func (h *queueHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, _ int64, _ int) {
	if cl.Net.Inline || pk.FixedHeader.Type != packets.Publish {
		return
	}
	b := h.b
	limit := b.cfg.SessionQueueMax
	q := b.queue(cl.ID)
	q.mu.Lock()
	if !q.synced {
		q.sync(cl) // includes pk: mochi adds it before this hook
	} else {
		q.add(pk.PacketID, msgSize(&pk))
	}
	if len(q.sizes) <= limit.Messages && q.bytes <= limit.Bytes {
		q.mu.Unlock()
		return
	}
	// Over a bound: drop the oldest (by creation, then packet id), the new message last.
	all := cl.State.Inflight.GetAll(false)
	all = slices.DeleteFunc(all, func(x packets.Packet) bool {
		_, ok := q.sizes[x.PacketID]
		return x.FixedHeader.Type != packets.Publish || !ok || x.PacketID == pk.PacketID
	})
	slices.SortStableFunc(all, func(x, y packets.Packet) int {
		if x.Created != y.Created {
			return int(x.Created - y.Created)
		}
		return int(x.PacketID) - int(y.PacketID)
	})
	all = append(all, pk)
	var drops []QueueDrop
	for _, old := range all {
		reason := ""
		switch {
		case len(q.sizes) > limit.Messages:
			reason = "messages"
		case q.bytes > limit.Bytes:
			reason = "bytes"
		}
		if reason == "" {
			break
		}
		if !cl.State.Inflight.Delete(old.PacketID) {
			q.remove(old.PacketID)
			continue
		}
		atomic.AddInt64(&b.server.Info.Inflight, -1)
		cl.State.Inflight.IncreaseSendQuota()
		if b.persist != nil && persistent(cl) {
			b.persist.del(inflightKey(cl.ID, old.PacketID))
		}
		q.remove(old.PacketID)
		drops = append(drops, QueueDrop{
			Topic: old.TopicName, QoS: old.FixedHeader.Qos, Bytes: msgSize(&old), Reason: reason,
			QueuedMessages: len(q.sizes), QueuedBytes: q.bytes,
		})
	}
	q.mu.Unlock()
	for _, d := range drops {
		b.queueDropped(cl, d)
	}
}

// queueDropped counts, logs and emits the event of one dropped message.
func (b *Broker) queueDropped(cl *mqtt.Client, d QueueDrop) {
	if d.Reason == "bytes" {
		b.m.queueDroppedBytes.Inc()
	} else {
		b.m.queueDroppedMessages.Inc()
	}
	s := b.session(cl)
	if s == nil {
		b.log.Warn("mqtt queued message dropped (mqtt.session_queue_max); session unknown, no event", "client", cl.ID, "topic", d.Topic)
		return
	}
	d.ClientID, d.Subject, d.Tenant = s.clientID, s.p.Subject, s.p.Tenant
	d.LimitMessages, d.LimitBytes = b.cfg.SessionQueueMax.Messages, b.cfg.SessionQueueMax.Bytes
	d.Connected, d.At, d.Node = !cl.Closed() && cl.Net.Conn != nil, time.Now(), b.node
	b.log.Warn("mqtt queued message dropped: session queue full (mqtt.session_queue_max)",
		"client", cl.ID, "topic", d.Topic, "reason", d.Reason)
	data, _ := json.Marshal(d)
	b.emit(&event.Event{
		Source: "mqtt://" + d.ClientID, Type: "fleetgate.queue.dropped",
		Subject: s.p.Subject, Tenant: s.p.Tenant, Claims: s.p.Claims, ClaimsJSON: s.p.ClaimsJSON,
		Time: d.At, ContentType: "application/json", Data: data, Protocol: event.ProtocolMQTT,
		Topic: TopicQueueDropped + topicLevel(d.ClientID), Meta: map[string]string{"client_id": d.ClientID},
	}, "queue_dropped")
}

// OnQosComplete uncounts an acknowledged message.
func (h *queueHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if t := pk.FixedHeader.Type; t == packets.Puback || t == packets.Pubcomp {
		h.uncount(cl, pk.PacketID)
	}
}

// OnQosDropped uncounts a message mochi gave up on (expired).
func (h *queueHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if t := pk.FixedHeader.Type; t == packets.Pubrel {
		return // an inbound QoS 2 flow
	}
	h.uncount(cl, pk.PacketID)
}

func (h *queueHook) uncount(cl *mqtt.Client, id uint16) {
	if v, ok := h.b.queues.Load(cl.ID); ok {
		q := v.(*sessionQueue)
		q.mu.Lock()
		q.remove(id)
		q.mu.Unlock()
	}
}

// OnDisconnect forgets the queue of a session that ends with its connection.
func (h *queueHook) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if expire && !errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) && !cl.IsTakenOver() {
		h.b.queues.Delete(cl.ID)
	}
}

// OnClientExpired forgets the queue of an expired session.
func (h *queueHook) OnClientExpired(cl *mqtt.Client) { h.b.queues.Delete(cl.ID) }

// restoreExpiry gives the queued messages restored from the store their MQTT 5 expiry back:
// mochi's stored record keeps the expiry interval and creation time, but the restored packet
// has no expiry time (nor protocol version), so mochi's sweep would never drop it.
func (b *Broker) restoreExpiry() {
	for _, cl := range b.server.Clients.GetAll() {
		for _, pk := range cl.State.Inflight.GetAll(false) {
			if pk.FixedHeader.Type != packets.Publish || pk.Properties.MessageExpiryInterval == 0 || pk.Expiry != 0 {
				continue
			}
			pk.Expiry = pk.Created + int64(pk.Properties.MessageExpiryInterval)
			pk.ProtocolVersion = 5
			cl.State.Inflight.Set(pk)
		}
	}
}
