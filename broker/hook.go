package broker

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/shadow"
)

// authHook is the broker's single authority: it authenticates CONNECT (JWT password, client
// id, mTLS certificate, will topic), answers every ACL check from the client's policy, and
// takes over every PUBLISH a client sends (see takePublish) so that acks follow the commit.
type authHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *authHook) ID() string { return "fleetgate-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnPacketEncode,
		mqtt.OnACLCheck,
		mqtt.OnSessionEstablish,
		mqtt.OnPacketRead,
		mqtt.OnPublish,
		mqtt.OnQosComplete,
		mqtt.OnQosDropped,
		mqtt.OnDisconnect,
		mqtt.OnClientExpired,
	}, []byte{b})
}

// connackRefusal holds the CONNACK codes of one kind of refusal, per protocol version.
type connackRefusal struct {
	v5, v3 byte
	reason string
}

var (
	refuseBadToken = connackRefusal{v5: packets.ErrBadUsernameOrPassword.Code, v3: packets.ErrMalformedUsernameOrPassword.Code, reason: "bad username or password"}
	refuseDenied   = connackRefusal{v5: packets.ErrNotAuthorized.Code, v3: packets.Err3NotAuthorized.Code, reason: "not authorized"}
)

// OnConnect authenticates the client. mochi has already read and validated the CONNECT; a
// refusal writes its own CONNACK (mochi only knows one refusal code) and ends the connection.
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	b := h.b
	var p *auth.Principal
	var err error
	if cert := b.certOnly(cl, pk); cert != nil {
		var tenant string
		if len(cert.Subject.Organization) > 0 {
			tenant = cert.Subject.Organization[0]
		}
		p, err = b.auth.PrincipalFor(cert.Subject.CommonName, tenant, b.cfg.TLS.CertRole, cert.NotAfter)
	} else {
		p, err = b.auth.Verify(string(pk.Connect.Password))
	}
	if err != nil {
		b.m.connectBadToken.Inc()
		return b.refuseConnect(cl, refuseBadToken, fmt.Errorf("client %q: %w", cl.ID, err))
	}
	if reason := admit(cl, pk, p); reason != "" {
		b.m.connectDenied.Inc()
		return b.refuseConnect(cl, refuseDenied, fmt.Errorf("client %q subject %q: %s", cl.ID, p.Subject, reason))
	}
	keepWillProperties(cl, pk)
	clientID := cl.ID
	cl.ID = scopedClientID(p.Tenant, clientID) // before mochi looks up an existing session by it
	s := newSession(b, cl, p, clientID)
	s.connectedAt = time.Now()
	b.sessions.Store(cl, s)
	s.armExpiry()
	if b.cluster != nil { // other nodes let go of this client id; its session may load from the KV
		b.cluster.connect(cl, pk, s)
	}
	b.m.connectOK.Inc()
	return nil
}

// certOnly returns the verified client certificate of a CONNECT that sends no password over
// mTLS, when mqtt.tls.cert_role lets a certificate stand for a token; else nil.
func (b *Broker) certOnly(cl *mqtt.Client, pk packets.Packet) *x509.Certificate {
	if b.cfg.TLS.CertRole == "" || len(pk.Connect.Password) != 0 {
		return nil
	}
	tc := tlsConn(cl.Net.Conn)
	if tc == nil {
		return nil
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.PeerCertificates) == 0 {
		return nil // not verified against mqtt.tls.client_ca_file
	}
	return st.PeerCertificates[0]
}

// admit applies the policy to an authenticated CONNECT; it returns why the client may not
// connect, or "".
func admit(cl *mqtt.Client, pk packets.Packet, p *auth.Principal) string {
	if !p.ClientIDAllowed(pk.Connect.ClientIdentifier) {
		return fmt.Sprintf("client id %q not allowed (must equal the token subject)", pk.Connect.ClientIdentifier)
	}
	if tc := tlsConn(cl.Net.Conn); tc != nil {
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 && certs[0].Subject.CommonName != p.Subject {
			return fmt.Sprintf("client certificate CN %q is not the token subject", certs[0].Subject.CommonName)
		}
	}
	if strings.Contains(p.Tenant, tenantSep) {
		return fmt.Sprintf("tenant %q contains %q, which separates tenant and client id in session keys", p.Tenant, tenantSep)
	}
	if pk.Connect.WillFlag && !p.CanPublish(pk.Connect.WillTopic) {
		return fmt.Sprintf("will topic %q not allowed", pk.Connect.WillTopic)
	}
	return ""
}

func (b *Broker) refuseConnect(cl *mqtt.Client, r connackRefusal, err error) error {
	ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: r.v3}
	if cl.Properties.ProtocolVersion == 5 {
		ack.ReasonCode = r.v5
		ack.Properties.ReasonString = r.reason
	}
	_ = cl.WritePacket(ack)
	b.log.Debug("mqtt connect refused", "remote", cl.Net.Remote, "error", err)
	return err
}

// OnConnectAuthenticate admits exactly the clients OnConnect authenticated.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	return h.b.session(cl) != nil
}

// OnACLCheck answers from the client's policy: write is a publish topic (never reached for
// network clients, whose publishes takePublish judges; kept for defence), read is a subscribe
// filter or, on delivery, the topic of the message.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if cl == h.b.inline {
		return true
	}
	s := h.b.session(cl)
	if s == nil {
		return false
	}
	if write {
		return s.p.CanPublish(topic)
	}
	return canRead(s.p, topic)
}

// canRead reports whether p may subscribe to filter or receive a message on it: shadow topics
// ($shadow/{device}/...) by the policy's shadow entries, anything else by its subscribe filters.
func canRead(p *auth.Principal, filter string) bool {
	if device, _, ok := shadow.DeviceOfTopic(filter); ok {
		return p.CanUseShadow(device)
	}
	return p.CanSubscribe(filter)
}

// tenantSep separates tenant and client id in the broker's internal client ids.
const tenantSep = "/"

// scopedClientID is the broker's internal id of a client: mochi's sessions, takeovers and the
// stored session keys use it, so that two tenants may use the same client id without seeing
// or disconnecting each other. With a tenant it is tenant + "/" + client id; without one it
// is the client id itself, unless that contains "/" (then "/" + client id). Tenants
// containing "/" are refused at CONNECT, so no two (tenant, client id) pairs share an id.
// The client itself never sees this id.
func scopedClientID(tenant, clientID string) string {
	if tenant == "" && !strings.Contains(clientID, tenantSep) {
		return clientID
	}
	return tenant + tenantSep + clientID
}

// unscopedClientID is the client's own id, back from scopedClientID.
func unscopedClientID(tenant, scoped string) string {
	if tenant == "" && !strings.HasPrefix(scoped, tenantSep) {
		return scoped
	}
	return strings.TrimPrefix(scoped, tenant+tenantSep)
}

// OnSessionEstablish runs before mochi takes over an existing session with the same
// (tenant-scoped) client id: the old connection's state is dropped here (its pipeline keeps
// running on its own), and messages queued for the session that the new connection's policy
// may not read are dropped, since mochi resends inherited messages without an ACL check.
func (h *authHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if old, ok := h.b.server.Clients.Get(cl.ID); ok && old != cl {
		if s := h.b.session(old); s != nil {
			s.stopTimer()
		}
		h.b.sessions.Delete(old)
		if s := h.b.session(cl); s != nil {
			h.b.dropUnreadable(old, s.p)
		}
	}
}

// dropUnreadable removes from cl's inflight table (and the store) the messages for it that p
// may not read.
func (b *Broker) dropUnreadable(cl *mqtt.Client, p *auth.Principal) {
	for _, pk := range cl.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type != packets.Publish || canRead(p, pk.TopicName) {
			continue
		}
		if cl.State.Inflight.Delete(pk.PacketID) {
			atomic.AddInt64(&b.server.Info.Inflight, -1)
			if b.persist != nil {
				b.persist.del(inflightKey(cl.ID, pk.PacketID))
			}
			b.log.Debug("mqtt queued message dropped: not readable by the client's current policy",
				"client", cl.ID, "topic", pk.TopicName)
		}
	}
}

// OnPacketEncode announces topic_alias_max in a successful MQTT 5 CONNACK (mochi announces none),
// and puts back the MQTT 5 properties of a will (see will.go).
func (h *authHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Publish {
		return encodeWill(pk)
	}
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 && cl.Properties.ProtocolVersion == 5 {
		pk.Properties.TopicAliasMaximum = uint16(h.b.cfg.TopicAliasMax)
	}
	return pk
}

// OnPacketRead takes over PUBLISH packets; everything else is left to mochi.
func (h *authHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	s := h.b.session(cl)
	if s == nil {
		return pk, packets.ErrRejectPacket
	}
	if err := s.takePublish(&pk); err != nil {
		return pk, err
	}
	return noopPacket, nil
}

// noopPacket is what mochi processes in place of a publish takePublish took over: a PUBACK for
// packet id 0, which no inflight message ever has, so mochi ignores it.
var noopPacket = packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}}

// OnPublish sees only the broker's own inline publishes (deliveries of committed publishes and
// downlink): it restores the original sender as the packet's origin, for MQTT 5 no-local.
func (h *authHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl != h.b.inline {
		return pk, packets.ErrRejectPacket // unreachable: network publishes never reach processPublish
	}
	// The sender's tenant-scoped id, or "" for downlink (retainHook counts retained messages
	// by it; mochi would say "fleetgate", which a device could use as its id).
	pk.Origin = pk.Connect.ClientIdentifier
	pk.Connect.ClientIdentifier = ""
	return pk, nil
}

// OnQosComplete releases the receive-maximum slot of an inbound QoS 2 publish when its PUBREL
// has been answered.
func (h *authHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Pubrel {
		if s := h.b.session(cl); s != nil {
			s.releaseQuota()
			s.releaseRel()
		}
	}
}

// OnQosDropped releases the slot of an inbound QoS 2 publish dropped before its PUBREL.
func (h *authHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if pk.FixedHeader.Type == packets.Pubrec {
		if s := h.b.session(cl); s != nil {
			s.releaseQuota()
			s.releaseRel()
		}
	}
}

// OnDisconnect forgets a session that ends with its connection; a persistent one stays, so
// that messages for it are still judged by its policy while it is away.
func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	b := h.b
	if cl.Net.Conn == nil { // a persistent session restored from the store at start
		b.restoredMu.Lock()
		p := b.restored[cl.ID]
		delete(b.restored, cl.ID)
		b.restoredMu.Unlock()
		if p != nil && !expire {
			b.sessions.Store(cl, newSession(b, cl, p, unscopedClientID(p.Tenant, cl.ID)))
		}
		return
	}
	s := b.session(cl)
	if s == nil {
		return
	}
	s.stopTimer()
	if expire || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		b.sessions.Delete(cl)
	}
}

// OnClientExpired forgets an expired persistent session, and its subscriptions (mochi keeps
// them in its topic index otherwise).
func (h *authHook) OnClientExpired(cl *mqtt.Client) {
	h.b.sessions.Delete(cl)
	h.b.server.UnsubscribeClient(cl)
}

// expire closes a connection whose token has expired: MQTT 5 gets DISCONNECT 0xA0
// (maximum connect time), 3.1.1 a closed connection.
func (s *session) expire() {
	b := s.b
	if s.cl.Closed() {
		return
	}
	b.m.expired.Inc()
	b.log.Info("mqtt token expired, disconnecting", "client", s.cl.ID, "subject", s.p.Subject)
	if s.cl.Properties.ProtocolVersion == 5 {
		_ = b.server.DisconnectClient(s.cl, packets.ErrMaxConnectTime)
		return
	}
	s.cl.Stop(ErrTokenExpired)
}

func (s *session) armExpiry() {
	if s.p.ExpiresAt.IsZero() {
		return
	}
	s.mu.Lock()
	s.timer = time.AfterFunc(time.Until(s.p.ExpiresAt), s.expire)
	s.mu.Unlock()
}

func (s *session) stopTimer() {
	s.mu.Lock()
	t := s.timer
	s.mu.Unlock()
	if t != nil {
		t.Stop()
	}
}
