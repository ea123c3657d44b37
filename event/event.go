// Package event defines Event, the one value every part of fleetgate passes along:
// a CloudEvents-shaped record plus the context it arrived in, and its compact binary codec.
package event

import (
	"encoding/json"
	"time"

	"github.com/oklog/ulid/v2"
)

// Protocols an event can arrive by.
const (
	ProtocolMQTT = "mqtt"
	ProtocolHTTP = "http"
)

// Event is one message from a device or an app. The CloudEvents attributes (ID, Source,
// Type, Subject, Time, ContentType, Data) are what functions receive; the context fields
// (Protocol, Topic, Tenant, Claims, Meta, ...) are what rules select on.
type Event struct {
	ID          string    // unique; assigned by the gateway (a ULID) unless the sender supplied one
	Source      string    // CloudEvents source, e.g. "mqtt://client-id" or "http://app"
	Type        string    // CloudEvents type, e.g. "fleetgate.mqtt.publish"
	Subject     string    // the authenticated sender's subject (token "sub")
	Time        time.Time // when the gateway received the event (or the sender's time, if given)
	ContentType string    // media type of Data, e.g. "application/json"
	Data        []byte    // the payload, as received

	Protocol string // ProtocolMQTT or ProtocolHTTP
	Topic    string // MQTT topic, or the path after /v1/events/ for HTTP
	Tenant   string // the sender's tenant claim, if any
	// Claims is the sender's verified token claims. It is not encoded; ClaimsJSON is.
	// Use ClaimsMap to get it back from a decoded event.
	Claims     map[string]any
	ClaimsJSON []byte            // the claims as JSON, shared between events of one sender
	Meta       map[string]string // request metadata: HTTP headers (user agent, app version, locale), MQTT 5 user properties
	QoS        byte              // MQTT QoS of the publish (0 for HTTP)
	Retain     bool              // MQTT retain flag
	Hops       uint8             // how many times a function output was re-ingested to produce this event
}

// NewID returns a new event id: a ULID (48-bit millisecond timestamp + 80 random bits,
// 26 characters of Crockford base32). ULIDs sort by creation time as plain strings, which
// keeps ids readable in logs and ordered in listings; they are monotonic within a millisecond
// in one process.
func NewID() string { return ulid.Make().String() }

// ClaimsMap returns the sender's claims, parsing ClaimsJSON if Claims is not set.
// A decoding error yields nil.
func (e *Event) ClaimsMap() map[string]any {
	if e.Claims != nil || len(e.ClaimsJSON) == 0 {
		return e.Claims
	}
	var m map[string]any
	if err := json.Unmarshal(e.ClaimsJSON, &m); err != nil {
		return nil
	}
	e.Claims = m
	return m
}

// Size is an estimate of the event's encoded size in bytes, used by batching policies.
func (e *Event) Size() int {
	n := 32 + len(e.ID) + len(e.Source) + len(e.Type) + len(e.Subject) + len(e.ContentType) +
		len(e.Data) + len(e.Protocol) + len(e.Topic) + len(e.Tenant) + len(e.ClaimsJSON)
	for k, v := range e.Meta {
		n += len(k) + len(v) + 2
	}
	return n
}
