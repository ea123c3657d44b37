package broker

import (
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
)

var _ ingest.Disconnecter = (*Broker)(nil)

// errTokenRevoked is the stop cause of a connection closed because its credential was revoked.
var errTokenRevoked = errors.New("token revoked")

// DisconnectRevoked closes the connection of every authenticated client whose principal
// revoked reports true, and returns how many it closed. MQTT 5 clients first get DISCONNECT
// with reason 0x87 "not authorized" (the reason MQTT 5 allows in a server's DISCONNECT for
// credentials no longer accepted; 0x8A "banned" is a CONNACK-only code); MQTT 3.1.1 has no
// server DISCONNECT, so the connection is just closed. A client reconnecting with the revoked
// token is refused at CONNECT by the verifier. Safe to call from any goroutine.
func (b *Broker) DisconnectRevoked(revoked func(*auth.Principal) bool) int {
	n := 0
	b.sessions.Range(func(k, v any) bool {
		cl, s := k.(*mqtt.Client), v.(*session)
		if cl == b.inline || cl.Closed() || !revoked(s.p) {
			return true
		}
		s.stopTimer()
		b.log.Info("mqtt credential revoked, disconnecting", "client", cl.ID, "subject", s.p.Subject, "tenant", s.p.Tenant)
		if cl.Properties.ProtocolVersion == 5 {
			_ = b.server.DisconnectClient(cl, packets.ErrNotAuthorized)
		} else {
			cl.Stop(errTokenRevoked)
		}
		n++
		return true
	})
	return n
}
