package broker

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/functions"
	"github.com/fleetgate/fleetgate/ingest/auth"
)

var _ functions.Replier = (*Broker)(nil)

// claimsAuthenticator rebuilds a sender's principal from the claims stored with its event
// (auth.Verifier satisfies it). Without it, PrincipalFor (subject, tenant and role only) is used.
type claimsAuthenticator interface {
	PrincipalFromClaims(claimsJSON []byte) (*auth.Principal, error)
}

// requestMeta puts the MQTT 5 request/response properties and the payload format indicator of
// pk into meta, under the keys only the gateway sets (see functions.MetaResponseTopic).
func requestMeta(meta map[string]string, pk *packets.Packet) {
	if t := pk.Properties.ResponseTopic; t != "" {
		meta[functions.MetaResponseTopic] = t
	}
	if cd := pk.Properties.CorrelationData; len(cd) > 0 {
		meta[functions.MetaCorrelationData] = base64.StdEncoding.EncodeToString(cd)
	}
	if pk.Properties.PayloadFormatFlag {
		if pk.Properties.PayloadFormat == 1 {
			meta[functions.MetaPayloadFormat] = "utf8"
		} else {
			meta[functions.MetaPayloadFormat] = "bytes"
		}
	}
}

// PublishReply answers the request req (an event of an MQTT 5 publish with a response topic):
// payload goes to req's response topic with qos and req's correlation data, like a downlink
// Publish (never retained), only if req's sender may subscribe to that topic by its role's
// policy, expanded with the claims stored with req. A refusal wraps functions.ErrReplyRefused.
func (b *Broker) PublishReply(req *event.Event, payload []byte, qos byte) error {
	if err := b.replyAllowed(req); err != nil {
		b.m.replyRefused.Inc()
		return fmt.Errorf("%w: %w", functions.ErrReplyRefused, err)
	}
	if b.closed.Load() {
		return ErrClosed
	}
	if !b.started.Load() {
		return ErrNotStarted
	}
	if qos > 2 {
		return fmt.Errorf("replying to event %s: %w: %d", req.ID, ErrInvalidQoS, qos)
	}
	topic := req.Meta[functions.MetaResponseTopic]
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos},
		TopicName:   topic,
		Payload:     payload,
	}
	if cd := req.Meta[functions.MetaCorrelationData]; cd != "" {
		pk.Properties.CorrelationData, _ = base64.StdEncoding.DecodeString(cd) // checked by replyAllowed
	}
	if qos > 0 {
		pk.PacketID = 1 // required by validation; the inline client never acks
	}
	if err := b.server.InjectPacket(b.inline, pk); err != nil {
		return fmt.Errorf("replying to event %s on %q: %w", req.ID, topic, err)
	}
	b.m.downlink.Inc()
	b.m.replies.Inc()
	if b.cluster != nil {
		if err := b.cluster.broadcast(pk); err != nil {
			return fmt.Errorf("replying to event %s on %q: delivered on this node only: %w", req.ID, topic, err)
		}
	}
	return nil
}

// replyAllowed checks that req has a valid response topic and correlation data, and that its
// sender may subscribe to the response topic.
func (b *Broker) replyAllowed(req *event.Event) error {
	topic := req.Meta[functions.MetaResponseTopic]
	if topic == "" {
		return fmt.Errorf("event %s has no response topic", req.ID)
	}
	if !mqtt.IsValidFilter(topic, true) || strings.HasPrefix(topic, "$") {
		return fmt.Errorf("event %s: response topic %q: %w", req.ID, topic, ErrInvalidTopic)
	}
	if cd := req.Meta[functions.MetaCorrelationData]; cd != "" {
		if _, err := base64.StdEncoding.DecodeString(cd); err != nil {
			return fmt.Errorf("event %s: correlation data is not base64: %v", req.ID, err)
		}
	}
	p, err := b.requester(req)
	if err != nil {
		return fmt.Errorf("event %s: requester: %w", req.ID, err)
	}
	if !p.CanSubscribe(topic) {
		return fmt.Errorf("event %s: %q (role %q) may not subscribe to its response topic %q", req.ID, p.Subject, p.Role, topic)
	}
	return nil
}

// requester rebuilds the principal of req's sender, with its role's current policy.
func (b *Broker) requester(req *event.Event) (*auth.Principal, error) {
	if len(req.ClaimsJSON) > 0 {
		if ca, ok := b.auth.(claimsAuthenticator); ok {
			return ca.PrincipalFromClaims(req.ClaimsJSON)
		}
	}
	role, _ := req.ClaimsMap()["role"].(string)
	if req.Subject == "" || role == "" {
		return nil, errors.New("the event carries no subject or role")
	}
	return b.auth.PrincipalFor(req.Subject, req.Tenant, role, time.Time{})
}
