package ingest

import (
	"errors"

	"github.com/fleetgate/fleetgate/storage"
)

var (
	// ErrBusy means the gateway cannot take more events right now (too many appends pending);
	// nothing was stored and the sender should retry (HTTP 503 + Retry-After, MQTT 5 quota exceeded).
	ErrBusy = errors.New("ingest: busy, retry later")
	// ErrUnavailable means storage refused the events: closed, disk full or storage.max_bytes
	// reached. Nothing was stored.
	ErrUnavailable = errors.New("ingest: storage unavailable")
	// ErrTooManyHops means an event re-ingested from a function output exceeded the hop limit.
	ErrTooManyHops = errors.New("ingest: too many hops")
	// ErrTooLarge means one call holds more than a single commit may (split it); nothing was stored.
	ErrTooLarge = errors.New("ingest: too many events or bytes for one commit")
	// ErrInvalid means an event is malformed (no topic, bad id); nothing was stored.
	ErrInvalid = errors.New("ingest: invalid event")
)

// Refusal is how a refused Accept answers on each protocol. RefusalFor is the one table that
// maps storage and ingest errors to HTTP statuses and MQTT reason codes: the HTTP endpoint and
// the broker both answer from it, so that a full disk says the same thing everywhere.
type Refusal struct {
	HTTPStatus int    // the answer's status
	Code       string // the "code" of the JSON error
	RetryAfter string // the Retry-After header in seconds; "" for none
	// MQTT5 is the reason code of the PUBACK or PUBREC sent to an MQTT 5 client. An MQTT 3.1.1
	// client cannot be told that a QoS 1/2 publish was refused: it is disconnected instead,
	// and its client resends the publish on its next session.
	MQTT5 byte
}

// MQTT reason codes used in Refusal (MQTT 5.0, section 3.4.2.1).
const (
	reasonUnspecified    = 0x80
	reasonImplementation = 0x83
	reasonQuotaExceeded  = 0x97
	reasonPayloadFormat  = 0x99
	reasonPacketTooLarge = 0x95
)

// refusals is the table, most specific first; an error that matches none answers as the last.
var refusals = []struct {
	err error
	Refusal
}{
	{ErrBusy, Refusal{503, "busy", "1", reasonQuotaExceeded}},
	{storage.ErrBusy, Refusal{503, "busy", "1", reasonQuotaExceeded}},
	{storage.ErrFull, Refusal{503, "unavailable", "5", reasonQuotaExceeded}},
	{storage.ErrNoQuorum, Refusal{503, "no_quorum", "2", reasonQuotaExceeded}},
	{ErrTooLarge, Refusal{413, "too_large", "", reasonPacketTooLarge}},
	{ErrInvalid, Refusal{400, "invalid", "", reasonPayloadFormat}},
	{ErrTooManyHops, Refusal{400, "too_many_hops", "", reasonImplementation}},
	{nil, Refusal{503, "unavailable", "5", reasonUnspecified}}, // closed, or anything else: retry later
}

// RefusalFor returns how err, returned by Accept or AcceptAsync, is answered.
func RefusalFor(err error) Refusal {
	for _, r := range refusals {
		if r.err == nil || errors.Is(err, r.err) {
			return r.Refusal
		}
	}
	panic("unreachable: the table ends with a catch-all")
}
