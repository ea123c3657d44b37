package broker

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/httpx"
)

// maxAdminPublishBytes bounds the request body of POST /admin/v1/publish.
const maxAdminPublishBytes = 1 << 20

// PublishRequest is the body of POST /admin/v1/publish. Payload is any JSON value: a JSON
// string is sent as its text, anything else as its JSON encoding. PayloadBase64 sends raw
// bytes instead; at most one of the two may be set (neither sends an empty payload).
type PublishRequest struct {
	Topic         string          `json:"topic"`
	Payload       json.RawMessage `json:"payload,omitempty"`
	PayloadBase64 string          `json:"payload_base64,omitempty"`
	QoS           int             `json:"qos"`
	Retain        bool            `json:"retain"`
	// MessageExpiry is the MQTT 5 message expiry interval in seconds (0: none): a message
	// still queued for a session when it passes is dropped, not delivered.
	MessageExpiry int64 `json:"message_expiry,omitempty"`
}

// parsePublishRequest decodes and checks a PublishRequest body; it returns the payload bytes.
func parsePublishRequest(body []byte) (PublishRequest, []byte, error) {
	var req PublishRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, nil, fmt.Errorf("decoding publish request: %w", err)
	}
	if dec.More() {
		return req, nil, errors.New("decoding publish request: trailing data after the JSON object")
	}
	if req.Topic == "" {
		return req, nil, errors.New("topic: required")
	}
	if req.QoS < 0 || req.QoS > 2 {
		return req, nil, fmt.Errorf("qos: must be 0, 1 or 2, got %d", req.QoS)
	}
	if req.MessageExpiry < 0 || req.MessageExpiry > 1<<32-1 {
		return req, nil, fmt.Errorf("message_expiry: must be seconds in [0, 4294967295], got %d", req.MessageExpiry)
	}
	hasPayload := len(req.Payload) > 0 && string(req.Payload) != "null"
	if hasPayload && req.PayloadBase64 != "" {
		return req, nil, errors.New("payload and payload_base64: set at most one")
	}
	var payload []byte
	switch {
	case req.PayloadBase64 != "":
		p, err := base64.StdEncoding.DecodeString(req.PayloadBase64)
		if err != nil {
			return req, nil, fmt.Errorf("payload_base64: %w", err)
		}
		payload = p
	case hasPayload && req.Payload[0] == '"':
		var s string
		if err := json.Unmarshal(req.Payload, &s); err != nil {
			return req, nil, fmt.Errorf("payload: %w", err)
		}
		payload = []byte(s)
	case hasPayload:
		var buf bytes.Buffer
		if err := json.Compact(&buf, req.Payload); err != nil {
			return req, nil, fmt.Errorf("payload: %w", err)
		}
		payload = buf.Bytes()
	}
	return req, payload, nil
}

// AdminHandler serves POST /admin/v1/publish: an operator sends a message to devices
// ({"topic","payload" | "payload_base64","qos","retain","message_expiry"} → 200
// {"published":true,"topic","bytes"}).
// The HTTP server authenticates the request and stores the *auth.Principal under
// httpx.PrincipalKey; this handler requires it to be an admin (operator) principal.
func (b *Broker) AdminHandler() fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if !ctx.IsPost() {
			ctx.Response.Header.Set("Allow", "POST")
			httpx.WriteError(ctx, fasthttp.StatusMethodNotAllowed, "method_not_allowed", "use POST")
			return
		}
		p, _ := ctx.UserValue(httpx.PrincipalKey).(*auth.Principal)
		if p == nil {
			httpx.WriteError(ctx, fasthttp.StatusUnauthorized, "unauthorized", "an operator token is required")
			return
		}
		if !p.IsAdmin() {
			httpx.WriteError(ctx, fasthttp.StatusForbidden, "forbidden", "the admin API needs an operator token")
			return
		}
		body := ctx.PostBody()
		if len(body) > maxAdminPublishBytes {
			httpx.WriteError(ctx, fasthttp.StatusRequestEntityTooLarge, "too_large",
				fmt.Sprintf("publish request is %d bytes, at most %d", len(body), maxAdminPublishBytes))
			return
		}
		req, payload, err := parsePublishRequest(body)
		if err != nil {
			httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_request", err.Error())
			return
		}
		if len(payload) > b.cfg.MaxPacketBytes {
			httpx.WriteError(ctx, fasthttp.StatusRequestEntityTooLarge, "too_large",
				fmt.Sprintf("payload is %d bytes, mqtt.max_packet_bytes is %d", len(payload), b.cfg.MaxPacketBytes))
			return
		}
		if err := b.publish(req.Topic, payload, byte(req.QoS), req.Retain, uint32(req.MessageExpiry)); err != nil {
			switch {
			case errors.Is(err, ErrInvalidTopic):
				httpx.WriteError(ctx, fasthttp.StatusBadRequest, "bad_topic", err.Error())
			default:
				httpx.WriteError(ctx, fasthttp.StatusServiceUnavailable, "unavailable", err.Error())
			}
			return
		}
		b.log.Info("mqtt admin publish", "operator", p.Subject, "topic", req.Topic, "bytes", len(payload), "qos", req.QoS, "retain", req.Retain)
		httpx.WriteJSON(ctx, fasthttp.StatusOK, map[string]any{"published": true, "topic": req.Topic, "bytes": len(payload)})
	}
}
