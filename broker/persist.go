package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	mstorage "github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/storage"
)

// Keys of the broker's state in the store's small KV. Values are mochi's storage records as JSON.
//
//	mqtt/cl/<client id>                      persistent session (storedClient: mochi's record + who it was)
//	mqtt/sub/<client id> 0x00 <filter>        its subscriptions
//	mqtt/ifm/<client id> 0x00 <packet id>     QoS 1/2 messages sent to it and not yet acknowledged
//	mqtt/ret/<topic>                          retained messages
//
// <client id> is the tenant-scoped id (scopedClientID), so two tenants' sessions never share keys.
const (
	keyClient   = "mqtt/cl/"
	keySub      = "mqtt/sub/"
	keyInflight = "mqtt/ifm/"
	keyRetained = "mqtt/ret/"
)

// persistHook implements mochi's storage hook on the gateway's Store, so that retained messages
// and persistent sessions (3.1.1 clean session false, 5 session expiry > 0) survive restarts in
// the same Badger as the events. Only persistent sessions are written: a clean session costs
// no store write at all.
type persistHook struct {
	mqtt.HookBase
	b     *Broker
	store storage.KV

	mu        sync.Mutex
	persisted map[string]bool // client ids with a stored session
	loaded    map[string]bool // cluster mode, at start: the stored sessions this node holds
}

// storedClient is a persistent session's record: mochi's, plus who connected (subject, tenant,
// role, expiry), so that after a restart messages for it are still judged by its role's policy
// while it is away. No credential is stored: the token (or certificate) is checked again when
// the device reconnects. A policy template naming ${claims.X} cannot be expanded from this
// record, so such a filter grants nothing to an offline session after a restart (fail closed).
type storedClient struct {
	mstorage.Client
	Subject   string    `json:"subject,omitempty"`
	Tenant    string    `json:"tenant,omitempty"`
	Role      string    `json:"role,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Token is only read: records written before tokens were left out carry it. Such a record
	// is rewritten without it when the store is read at start.
	Token string `json:"token,omitempty"`
	// Node is the cluster node holding the session (cluster mode; "" on a single node).
	Node string `json:"node,omitempty"`
}

func (h *persistHook) ID() string { return "fleetgate-sessions" }

func (h *persistHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnSubscribed,
		mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage,
		mqtt.OnQosPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
		mqtt.OnClientExpired,
		mqtt.OnRetainedExpired,
		mqtt.StoredClients,
		mqtt.StoredSubscriptions,
		mqtt.StoredInflightMessages,
		mqtt.StoredRetainedMessages,
	}, []byte{b})
}

// Stop does not close the store: it belongs to the gateway.
func (h *persistHook) Stop() error { return nil }

// persistent reports whether cl's session outlives its connection.
func persistent(cl *mqtt.Client) bool {
	if cl.Net.Inline {
		return false
	}
	if cl.Properties.ProtocolVersion == 5 {
		return cl.Properties.Props.SessionExpiryInterval > 0
	}
	return !cl.Properties.Clean
}

// skip reports whether nothing may be written for cl: another node took its session over (the
// records in the shared KV are that node's now), or this broker was halted by a test.
func (h *persistHook) skip(cl *mqtt.Client) bool {
	if h.b.halted.Load() {
		return true
	}
	_, ok := h.b.released.Load(cl)
	return ok
}

func (h *persistHook) isPersisted(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.persisted[id]
}

func (h *persistHook) setPersisted(id string, v bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.persisted == nil {
		h.persisted = map[string]bool{}
	}
	if v {
		h.persisted[id] = true
	} else {
		delete(h.persisted, id)
	}
}

func (h *persistHook) fail(what string, err error) {
	if err == nil {
		return
	}
	h.b.m.persistErrors.Inc()
	h.b.log.Error("mqtt session store: "+what, "error", err)
}

func (h *persistHook) put(key string, v any) {
	if h.b.halted.Load() {
		return
	}
	data, err := json.Marshal(v)
	if err == nil {
		err = h.store.Put(key, data)
	}
	h.fail("writing "+key, err)
}

func (h *persistHook) del(key string) {
	if h.b.halted.Load() {
		return
	}
	h.fail("deleting "+key, h.store.Delete(key))
}

// deleteSession removes everything stored for client id.
func (h *persistHook) deleteSession(id string) {
	h.del(keyClient + id)
	for _, prefix := range []string{keySub + id + "\x00", keyInflight + id + "\x00", keyQueued + id + "\x00"} {
		var keys []string
		err := h.store.Scan(prefix, func(k string, _ []byte) error {
			keys = append(keys, k)
			return nil
		})
		h.fail("listing "+prefix, err)
		for _, k := range keys {
			h.del(k)
		}
	}
	h.setPersisted(id, false)
}

func (h *persistHook) writeClient(cl *mqtt.Client) {
	rec := storedClient{Client: mstorage.Client{
		ID:              cl.ID,
		T:               mstorage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: mstorage.ClientProperties{
			SessionExpiryInterval:     cl.Properties.Props.SessionExpiryInterval,
			SessionExpiryIntervalFlag: cl.Properties.Props.SessionExpiryIntervalFlag,
			RequestProblemInfo:        cl.Properties.Props.RequestProblemInfo,
			RequestProblemInfoFlag:    cl.Properties.Props.RequestProblemInfoFlag,
			RequestResponseInfo:       cl.Properties.Props.RequestResponseInfo,
			ReceiveMaximum:            cl.Properties.Props.ReceiveMaximum,
			TopicAliasMaximum:         cl.Properties.Props.TopicAliasMaximum,
			MaximumPacketSize:         cl.Properties.Props.MaximumPacketSize,
			User:                      cl.Properties.Props.User,
		},
		Will: mstorage.ClientWill(cl.Properties.Will),
	}}
	if s := h.b.session(cl); s != nil {
		rec.Subject, rec.Tenant, rec.Role, rec.ExpiresAt = s.p.Subject, s.p.Tenant, s.p.Role, s.p.ExpiresAt
	}
	if h.b.cluster != nil {
		rec.Node = h.b.cluster.node
	}
	h.put(keyClient+cl.ID, rec)
	h.setPersisted(cl.ID, true)
}

// OnSessionEstablished stores a persistent session, or removes a stored one the client now
// starts clean.
func (h *persistHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if h.skip(cl) {
		return
	}
	switch {
	case persistent(cl):
		h.writeClient(cl)
	case h.isPersisted(cl.ID):
		h.deleteSession(cl.ID)
	}
}

// OnDisconnect refreshes a persistent session's record (MQTT 5 may change the expiry on
// DISCONNECT) or removes it when the session ends with the connection.
func (h *persistHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if cl.Net.Conn == nil { // restored at start, not a connection
		return
	}
	if h.skip(cl) {
		return
	}
	switch {
	case errors.Is(cl.StopCause(), packets.ErrSessionTakenOver):
		// a newer connection has the session (and may have written its record already)
	case expire && h.isPersisted(cl.ID):
		h.deleteSession(cl.ID)
	case !expire && persistent(cl):
		h.writeClient(cl)
	}
}

func subKey(id, filter string) string { return keySub + id + "\x00" + filter }

func inflightKey(id string, packetID uint16) string {
	return fmt.Sprintf("%s%s\x00%05d", keyInflight, id, packetID)
}

// OnSubscribed stores the granted subscriptions of a persistent session.
func (h *persistHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if !persistent(cl) || h.skip(cl) {
		return
	}
	for i, f := range pk.Filters {
		if i >= len(codes) || codes[i] >= packets.ErrUnspecifiedError.Code {
			continue
		}
		h.put(subKey(cl.ID, f.Filter), mstorage.Subscription{
			ID:                subKey(cl.ID, f.Filter),
			T:                 mstorage.SubscriptionKey,
			Client:            cl.ID,
			Filter:            f.Filter,
			Qos:               codes[i],
			Identifier:        f.Identifier,
			NoLocal:           f.NoLocal,
			RetainHandling:    f.RetainHandling,
			RetainAsPublished: f.RetainAsPublished,
		})
	}
}

// OnUnsubscribed removes stored subscriptions.
func (h *persistHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if (!persistent(cl) && !h.isPersisted(cl.ID)) || h.skip(cl) {
		return
	}
	for _, f := range pk.Filters {
		h.del(subKey(cl.ID, f.Filter))
	}
}

func message(t, id, client string, pk packets.Packet, sent int64) mstorage.Message {
	return mstorage.Message{
		ID:          id,
		T:           t,
		Client:      client,
		Origin:      pk.Origin,
		PacketID:    pk.PacketID,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		Sent:        sent,
		Properties: mstorage.MessageProperties{
			PayloadFormat:          pk.Properties.PayloadFormat,
			PayloadFormatFlag:      pk.Properties.PayloadFormatFlag,
			MessageExpiryInterval:  pk.Properties.MessageExpiryInterval,
			ContentType:            pk.Properties.ContentType,
			ResponseTopic:          pk.Properties.ResponseTopic,
			CorrelationData:        pk.Properties.CorrelationData,
			SubscriptionIdentifier: pk.Properties.SubscriptionIdentifier,
			User:                   pk.Properties.User,
		},
	}
}

// OnRetainMessage stores (or, for an empty payload, deletes) a retained message. Its client is
// its sender (the origin authHook set: "" for downlink), by which max_retained_per_client
// counts it again at start.
func (h *persistHook) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	if remoteOrigin(pk) != "" {
		return // published on another node, which wrote the shared KV
	}
	key := keyRetained + pk.TopicName
	if r == -1 || len(pk.Payload) == 0 { // cleared (r is 0 when there was nothing to clear)
		h.del(key)
		return
	}
	if will, _, ok := willPacket(pk); ok { // a will: stored with its MQTT 5 properties (see will.go)
		pk = will
	}
	h.put(key, message(mstorage.RetainedKey, key, pk.Origin, pk, 0))
}

// OnRetainedExpired deletes an expired retained message.
func (h *persistHook) OnRetainedExpired(topic string) { h.del(keyRetained + topic) }

// OnQosPublish stores a QoS 1/2 message sent (or queued) to a persistent session.
func (h *persistHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	if pk.FixedHeader.Type != packets.Publish || !persistent(cl) || h.skip(cl) {
		return
	}
	key := inflightKey(cl.ID, pk.PacketID)
	h.put(key, message(mstorage.InflightKey, key, cl.ID, pk, sent))
}

// OnQosComplete deletes a message the persistent session acknowledged.
func (h *persistHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	t := pk.FixedHeader.Type
	if (t != packets.Puback && t != packets.Pubcomp) || !persistent(cl) || h.skip(cl) {
		return
	}
	h.del(inflightKey(cl.ID, pk.PacketID))
}

// OnQosDropped deletes a message mochi gave up on (expired, session cleared).
func (h *persistHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Pubrec || !persistent(cl) || h.skip(cl) {
		return // an inbound QoS 2 flow: never stored
	}
	h.del(inflightKey(cl.ID, pk.PacketID))
}

// OnClientExpired deletes an expired session.
func (h *persistHook) OnClientExpired(cl *mqtt.Client) {
	if h.isPersisted(cl.ID) && !h.skip(cl) {
		h.deleteSession(cl.ID)
	}
}

func scanJSON[T any](h *persistHook, prefix string, keep func(key string, v *T)) error {
	return h.store.Scan(prefix, func(key string, value []byte) error {
		v := new(T)
		if err := json.Unmarshal(value, v); err != nil {
			h.fail("decoding "+key, err) // a bad record is skipped, not fatal
			return nil
		}
		keep(key, v)
		return nil
	})
}

// StoredClients returns the persistent sessions, with the principal each is judged by while
// it is away (rebuilt from its subject, tenant and role; none once it has expired).
func (h *persistHook) StoredClients() ([]mstorage.Client, error) {
	var out []mstorage.Client
	var legacy []*storedClient
	err := scanJSON(h, keyClient, func(_ string, c *storedClient) {
		if h.b.cluster != nil {
			if !h.b.cluster.owns(c) {
				return // held by another node, or an orphan: loaded by the node it connects to
			}
			h.mu.Lock()
			if h.loaded == nil {
				h.loaded = map[string]bool{}
			}
			h.loaded[c.ID] = true
			h.mu.Unlock()
		}
		out = append(out, c.Client)
		h.setPersisted(c.ID, true)
		p, err := h.principalOf(c)
		if c.Token != "" {
			legacy = append(legacy, c)
		}
		if err != nil {
			h.b.log.Info("mqtt stored session no longer authorized: nothing is delivered to it until it reconnects",
				"client", c.ID, "error", err)
			return
		}
		h.b.restoredMu.Lock()
		h.b.restored[c.ID] = p
		h.b.restoredMu.Unlock()
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored mqtt sessions: %w", err)
	}
	for _, c := range legacy { // written before tokens were left out: rewrite without it
		c.Token = ""
		h.put(keyClient+c.ID, c)
	}
	return out, nil
}

// principalOf rebuilds the principal of a stored session.
func (h *persistHook) principalOf(c *storedClient) (*auth.Principal, error) {
	if c.Subject == "" && c.Token != "" { // a legacy record: who it was is in its token
		p, err := h.b.auth.Verify(c.Token)
		if err != nil {
			return nil, err
		}
		c.Subject, c.Tenant, c.Role, c.ExpiresAt = p.Subject, p.Tenant, p.Role, p.ExpiresAt
		return p, nil
	}
	if !c.ExpiresAt.IsZero() && !c.ExpiresAt.After(time.Now()) {
		return nil, fmt.Errorf("its token expired at %s", c.ExpiresAt.Format(time.RFC3339))
	}
	return h.b.auth.PrincipalFor(c.Subject, c.Tenant, c.Role, c.ExpiresAt)
}

// loadedHere reports whether the stored session of client id is read at start: on a single node
// every one; in cluster mode those of this node.
func (h *persistHook) loadedHere(id string) bool {
	if h.b.cluster == nil {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.loaded[id]
}

// StoredSubscriptions returns the subscriptions of persistent sessions.
func (h *persistHook) StoredSubscriptions() ([]mstorage.Subscription, error) {
	var out []mstorage.Subscription
	err := scanJSON(h, keySub, func(_ string, s *mstorage.Subscription) {
		if h.loadedHere(s.Client) {
			out = append(out, *s)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored mqtt subscriptions: %w", err)
	}
	return out, nil
}

// StoredInflightMessages returns the unacknowledged messages of persistent sessions.
func (h *persistHook) StoredInflightMessages() ([]mstorage.Message, error) {
	var out []mstorage.Message
	used := map[string]map[uint16]bool{}
	err := scanJSON(h, keyInflight, func(_ string, m *mstorage.Message) {
		if !h.loadedHere(m.Client) {
			return
		}
		if used[m.Client] == nil {
			used[m.Client] = map[uint16]bool{}
		}
		used[m.Client][m.PacketID] = true
		out = append(out, *m)
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored mqtt inflight messages: %w", err)
	}
	if h.b.cluster != nil { // and what other nodes queued for them while this one was down
		h.mu.Lock()
		ids := make([]string, 0, len(h.loaded))
		for id := range h.loaded {
			ids = append(ids, id)
		}
		h.mu.Unlock()
		for _, id := range ids {
			if used[id] == nil {
				used[id] = map[uint16]bool{}
			}
			out = append(out, h.b.cluster.queuedForStart(id, used[id])...)
		}
	}
	return out, nil
}

// StoredRetainedMessages returns the retained messages, within the caps on retained messages:
// stored ones beyond them (kept before the caps existed, or under higher ones) are deleted.
func (h *persistHook) StoredRetainedMessages() ([]mstorage.Message, error) {
	var out []mstorage.Message
	var over []string
	err := scanJSON(h, keyRetained, func(key string, m *mstorage.Message) {
		if m.TopicName == "" {
			m.TopicName = strings.TrimPrefix(key, keyRetained)
		}
		owner := m.Client
		if owner == h.b.inline.ID { // written before the sender was recorded
			owner = ""
		}
		if len(m.Payload) == 0 || !h.b.retained.put(owner, m.TopicName, retainedSize(m.TopicName, m.Payload)) {
			over = append(over, key)
			return
		}
		out = append(out, *m)
	})
	if err != nil {
		return nil, fmt.Errorf("reading stored retained messages: %w", err)
	}
	if len(over) > 0 {
		h.b.log.Warn("mqtt stored retained messages deleted at start: empty, or over mqtt.max_retained, max_retained_per_client or max_retained_bytes",
			"deleted", len(over), "kept", len(out))
		for _, k := range over {
			h.del(k)
		}
	}
	return out, nil
}
