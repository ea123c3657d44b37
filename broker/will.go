package broker

import (
	"encoding/json"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Will properties.
//
// mochi (v2.7.9) copies only a will's topic, payload, QoS, retain, user properties and delay
// from the CONNECT into its Will value, publishes the will with only its user properties, and
// stores only that value with a persistent session. So at CONNECT the auth hook keeps the other
// MQTT 5 will properties (payload format, content type, message expiry, response topic,
// correlation data) as one extra user property of the Will, willPropsKey, which travels
// wherever mochi takes the will (delayed, retained, queued for offline sessions, stored across
// restarts). Every packet mochi writes to a client passes OnPacketEncode, which removes that user
// property and puts the properties back (willPacket); a retained will is fixed the same way
// when mochi retains it, so that it is stored and expires like a retained publish. A client's
// own user property of that name is dropped, from a will at CONNECT and from a publish when it
// is read, so no client can set it.
const willPropsKey = "$fleetgate/will-properties"

// willProps are the will properties mochi drops, as kept under willPropsKey.
type willProps struct {
	PayloadFormat *byte  `json:"pf,omitempty"`
	ContentType   string `json:"ct,omitempty"`
	Expiry        uint32 `json:"exp,omitempty"` // message expiry interval, seconds
	Delay         uint32 `json:"delay,omitempty"`
	ResponseTopic string `json:"rt,omitempty"`
	Correlation   []byte `json:"cd,omitempty"`
}

// keepWillProperties records in cl's Will the MQTT 5 will properties of its CONNECT pk that
// mochi drops. It runs after mochi parsed the CONNECT.
func keepWillProperties(cl *mqtt.Client, pk packets.Packet) {
	w := &cl.Properties.Will
	w.User = withoutWillProps(w.User)
	if !pk.Connect.WillFlag || cl.Properties.ProtocolVersion != 5 {
		return
	}
	wp := pk.Connect.WillProperties
	p := willProps{ContentType: wp.ContentType, Expiry: wp.MessageExpiryInterval, Delay: w.WillDelayInterval,
		ResponseTopic: wp.ResponseTopic, Correlation: wp.CorrelationData}
	if wp.PayloadFormatFlag {
		f := wp.PayloadFormat
		p.PayloadFormat = &f
	}
	if p.PayloadFormat == nil && p.ContentType == "" && p.Expiry == 0 && p.ResponseTopic == "" && len(p.Correlation) == 0 {
		return
	}
	b, err := json.Marshal(p)
	if err != nil {
		return // unreachable: plain fields
	}
	w.User = append(w.User, packets.UserProperty{Key: willPropsKey, Val: string(b)})
}

// withoutWillProps returns user without willPropsKey (user itself when it has none; else a
// copy, since mochi's packets share their slices).
func withoutWillProps(user []packets.UserProperty) []packets.UserProperty {
	i := willPropsIndex(user)
	if i < 0 {
		return user
	}
	out := make([]packets.UserProperty, 0, len(user)-1)
	for _, u := range user {
		if u.Key != willPropsKey {
			out = append(out, u)
		}
	}
	return out
}

func willPropsIndex(user []packets.UserProperty) int {
	for i, u := range user {
		if u.Key == willPropsKey {
			return i
		}
	}
	return -1
}

// willPacket turns a will mochi built (carrying willPropsKey) back into the publish its client
// asked for: willPropsKey removed, the kept properties set, and pk.Expiry set from the message
// expiry, counted from when the will was published (after its delay). ok is false, and pk
// returned as is, for any other packet.
func willPacket(pk packets.Packet) (_ packets.Packet, p willProps, ok bool) {
	i := willPropsIndex(pk.Properties.User)
	if i < 0 || pk.FixedHeader.Type != packets.Publish {
		return pk, p, false
	}
	raw := pk.Properties.User[i].Val
	pk.Properties.User = withoutWillProps(pk.Properties.User)
	if len(pk.Properties.User) == 0 {
		pk.Properties.User = nil
	}
	if json.Unmarshal([]byte(raw), &p) != nil {
		return pk, willProps{}, true
	}
	if p.PayloadFormat != nil {
		pk.Properties.PayloadFormat, pk.Properties.PayloadFormatFlag = *p.PayloadFormat, true
	}
	pk.Properties.ContentType = p.ContentType
	pk.Properties.ResponseTopic = p.ResponseTopic
	pk.Properties.CorrelationData = p.Correlation
	if p.Expiry > 0 {
		created := pk.Created
		if created == 0 {
			created = time.Now().Unix()
		}
		pk.Expiry = created + int64(p.Delay) + int64(p.Expiry)
		pk.Properties.MessageExpiryInterval = p.Expiry
	}
	return pk, p, true
}

// encodeWill is willPacket for a packet about to be written to a client: the message expiry
// sent is what is left of the will's.
func encodeWill(pk packets.Packet) packets.Packet {
	pk, p, ok := willPacket(pk)
	if ok && p.Expiry > 0 {
		left := max(pk.Expiry-time.Now().Unix(), 1)
		pk.Properties.MessageExpiryInterval = uint32(min(left, int64(p.Expiry)))
	}
	return pk
}
