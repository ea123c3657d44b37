package broker

import (
	"fmt"
	"net"
	"strings"
	"time"
)

// TLSConfig is mqtt.tls in the config file.
//
// With CertFile and KeyFile set the broker serves MQTT over TLS: on TLSAddr when it is set
// (plain MQTT stays on Addr), otherwise on Addr itself (no plain listener then).
// With ClientCAFile set as well, TLS clients must present a certificate signed by one of its
// CAs (mTLS). Certificate → subject mapping: the certificate's Subject Common Name is the
// device's identity. With a password JWT, the token's "sub" must equal the Common Name,
// otherwise the CONNECT is refused with "not authorized" (3.1.1: 0x05, 5: 0x87). With
// CertRole set, a client that sends no password is authenticated by its certificate alone:
// subject = Common Name, tenant = the first Organization (if any), role = CertRole, until the
// certificate's NotAfter.
type TLSConfig struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	CertRole     string `yaml:"cert_role"`
}

// Enabled reports whether TLS is configured.
func (t TLSConfig) Enabled() bool { return t.CertFile != "" || t.KeyFile != "" }

// PresenceConfig is mqtt.presence: connect and disconnect events (see presence.go).
type PresenceConfig struct {
	// Enabled turns presence events on (the default).
	Enabled bool `yaml:"enabled"`
	// Grace, when positive, suppresses short connections: a connection that ends less than
	// Grace after its session was established produces neither a connected nor a
	// disconnected event. A longer one produces its connected event Grace after it connected
	// (the event's "at" is still the connect time) and its disconnected event when it ends.
	Grace time.Duration `yaml:"grace"`
}

// QueueMax is mqtt.session_queue_max: the QoS 1/2 messages one session may hold that its
// client has not acknowledged (queued while it is offline, or in flight while it is online).
type QueueMax struct {
	Messages int   `yaml:"messages"`
	Bytes    int64 `yaml:"bytes"` // topic and payload bytes
}

// Config is the mqtt section of the config file.
type Config struct {
	// Addr is the plain MQTT (TCP) listen address; "" disables it (then TLSAddr or WSAddr must be set).
	// When TLS is configured and TLSAddr is empty, Addr serves TLS.
	Addr string `yaml:"addr"`
	// WSAddr is the MQTT-over-WebSocket listen address (plain ws, path "/"; terminate TLS in a
	// proxy); "" disables it.
	WSAddr string `yaml:"ws_addr"`
	// TLS configures TLS and mTLS; see TLSConfig.
	TLS TLSConfig `yaml:"tls"`
	// TLSAddr is an optional separate TLS listen address.
	TLSAddr string `yaml:"tls_addr"`

	// MaxClients bounds connected clients; one more CONNECT gets "server unavailable"
	// (3.1.1: 0x03, 5: 0x89). Connections that have not sent CONNECT yet are bounded too.
	MaxClients int `yaml:"max_clients"`
	// MaxPacketBytes bounds any packet a client sends, CONNECT included; a bigger one closes the connection.
	MaxPacketBytes int `yaml:"max_packet_bytes"`
	// ConnectTimeout is how long a new connection may take to complete TLS and send CONNECT.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ReceiveMaximum is the number of QoS 1/2 publishes a client may have unacknowledged
	// (announced to MQTT 5 clients, which are disconnected with 0x93 beyond it; a 3.1.1
	// client beyond it is simply not read from until acks catch up).
	ReceiveMaximum int `yaml:"receive_maximum"`
	// OutboundQueue bounds the packets waiting to be written to one client; beyond it
	// deliveries to that client are dropped (and counted).
	OutboundQueue int `yaml:"outbound_queue"`
	// PublishRate limits the publishes one connection may send, per second (burst of one
	// second's worth); 0 means unlimited. A client above it is paced: the broker stops
	// reading from it until it is within the rate again, so nothing is lost.
	PublishRate float64 `yaml:"publish_rate"`

	// MaxConnectBytes bounds the first packet of a connection, read before the client is
	// authenticated: it must be a CONNECT of at most this many bytes (remaining length), or the
	// connection is closed before anything is allocated for it. A CONNECT carries the device's
	// JWT as its password, so leave room for the tokens you issue. max_packet_bytes applies
	// too, when smaller.
	MaxConnectBytes int `yaml:"max_connect_bytes"`
	// MaxConnsPerIP bounds the connections open at once from one remote IP address, CONNECT
	// phase included; one more is closed at once. 0 means no limit (e.g. behind a proxy or NAT
	// that makes every client one address).
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
	// TopicAliasMax is the MQTT 5 Topic Alias Maximum announced in CONNACK: the aliases one
	// connection may register (0 = none). A PUBLISH naming an alias above it is a protocol
	// error: DISCONNECT 0x94 (topic alias invalid).
	TopicAliasMax int `yaml:"topic_alias_max"`
	// MaxRetained bounds the retained messages kept in all (in memory and in the store).
	MaxRetained int `yaml:"max_retained"`
	// MaxRetainedPerClient bounds the retained messages one sender (one client id of one
	// tenant) may hold.
	MaxRetainedPerClient int `yaml:"max_retained_per_client"`
	// MaxRetainedBytes bounds the bytes (topics and payloads) of all retained messages.
	MaxRetainedBytes int64 `yaml:"max_retained_bytes"`
	// MaxAwaitingRel bounds the inbound QoS 2 publishes of one client that were answered with
	// PUBREC and whose PUBREL has not arrived; one more disconnects the client (MQTT 5: 0x93).
	MaxAwaitingRel int `yaml:"max_awaiting_rel"`
	// Presence configures connect and disconnect events.
	Presence PresenceConfig `yaml:"presence"`
	// SessionQueueMax bounds each session's queue of unacknowledged QoS 1/2 messages. When a
	// new message would exceed it, the oldest queued messages are dropped to make room, and
	// each drop is an event on $events/queue/dropped/{client_id} (see queue.go).
	SessionQueueMax QueueMax `yaml:"session_queue_max"`
}

// DefaultConfig returns the embedded defaults.
func DefaultConfig() Config {
	return Config{
		Addr:           ":1883",
		MaxClients:     100000,
		MaxPacketBytes: 262144,
		ConnectTimeout: 10 * time.Second,
		ReceiveMaximum: 1024,
		OutboundQueue:  64,

		MaxConnectBytes:      8192,
		MaxConnsPerIP:        1000,
		TopicAliasMax:        10,
		MaxRetained:          100000,
		MaxRetainedPerClient: 100,
		MaxRetainedBytes:     256 << 20,
		MaxAwaitingRel:       100,
		Presence:             PresenceConfig{Enabled: true},
		SessionQueueMax:      QueueMax{Messages: 1000, Bytes: 1 << 20},
	}
}

// Validate reports every problem of c at once, each with its field path, wrapping ErrInvalidConfig.
func (c *Config) Validate() error {
	var probs []string
	add := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	checkAddr := func(field, v string) {
		if v == "" {
			return
		}
		if _, _, err := net.SplitHostPort(v); err != nil {
			add("mqtt.%s: %q is not host:port (%v)", field, v, err)
		}
	}
	checkAddr("addr", c.Addr)
	checkAddr("ws_addr", c.WSAddr)
	checkAddr("tls_addr", c.TLSAddr)
	if c.Addr == "" && c.WSAddr == "" && c.TLSAddr == "" {
		add("mqtt.addr: no listener configured: set addr, tls_addr or ws_addr")
	}
	if c.Addr != "" && c.Addr == c.WSAddr && !anyPort(c.Addr) {
		add("mqtt.ws_addr: same as mqtt.addr %q", c.Addr)
	}
	if c.TLSAddr != "" && !anyPort(c.TLSAddr) && (c.TLSAddr == c.Addr || c.TLSAddr == c.WSAddr) {
		add("mqtt.tls_addr: %q is already used by another mqtt listener", c.TLSAddr)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		add("mqtt.tls: cert_file and key_file must be set together")
	}
	if c.TLS.CertRole != "" && c.TLS.ClientCAFile == "" {
		add("mqtt.tls.cert_role: needs mqtt.tls.client_ca_file (only certificates from that CA may stand for a token)")
	}
	if c.TLS.ClientCAFile != "" && !c.TLS.Enabled() {
		add("mqtt.tls.client_ca_file: needs mqtt.tls.cert_file and key_file")
	}
	if c.TLSAddr != "" && !c.TLS.Enabled() {
		add("mqtt.tls_addr: needs mqtt.tls.cert_file and key_file")
	}
	if c.MaxClients <= 0 {
		add("mqtt.max_clients: must be > 0, got %d", c.MaxClients)
	}
	if c.MaxPacketBytes < 64 || c.MaxPacketBytes > 268435455 {
		add("mqtt.max_packet_bytes: must be in [64, 268435455], got %d", c.MaxPacketBytes)
	}
	if c.ConnectTimeout <= 0 {
		add("mqtt.connect_timeout: must be > 0, got %s", c.ConnectTimeout)
	}
	if c.ReceiveMaximum < 1 || c.ReceiveMaximum > 65535 {
		add("mqtt.receive_maximum: must be in [1, 65535], got %d", c.ReceiveMaximum)
	}
	if c.OutboundQueue < 1 || c.OutboundQueue > 1<<20 {
		add("mqtt.outbound_queue: must be in [1, 1048576], got %d", c.OutboundQueue)
	}
	if c.PublishRate < 0 {
		add("mqtt.publish_rate: must be >= 0 (0 = unlimited), got %g", c.PublishRate)
	}
	if c.MaxConnectBytes < 64 || c.MaxConnectBytes > 268435455 {
		add("mqtt.max_connect_bytes: must be in [64, 268435455], got %d", c.MaxConnectBytes)
	}
	if c.MaxConnsPerIP < 0 {
		add("mqtt.max_conns_per_ip: must be >= 0 (0 = no limit), got %d", c.MaxConnsPerIP)
	}
	if c.TopicAliasMax < 0 || c.TopicAliasMax > 65535 {
		add("mqtt.topic_alias_max: must be in [0, 65535], got %d", c.TopicAliasMax)
	}
	if c.MaxRetained < 0 {
		add("mqtt.max_retained: must be >= 0 (0 = no retained messages), got %d", c.MaxRetained)
	}
	if c.MaxRetainedPerClient < 0 {
		add("mqtt.max_retained_per_client: must be >= 0 (0 = devices may not retain), got %d", c.MaxRetainedPerClient)
	}
	if c.MaxRetainedBytes < 0 {
		add("mqtt.max_retained_bytes: must be >= 0 (0 = no retained messages), got %d", c.MaxRetainedBytes)
	}
	if c.MaxAwaitingRel < 1 || c.MaxAwaitingRel > 65535 {
		add("mqtt.max_awaiting_rel: must be in [1, 65535], got %d", c.MaxAwaitingRel)
	}
	if c.Presence.Grace < 0 {
		add("mqtt.presence.grace: must be >= 0 (0 = off), got %s", c.Presence.Grace)
	}
	if c.SessionQueueMax.Messages < 1 || c.SessionQueueMax.Messages > maxQueueMessages {
		add("mqtt.session_queue_max.messages: must be in [1, %d], got %d", maxQueueMessages, c.SessionQueueMax.Messages)
	}
	if c.SessionQueueMax.Bytes < 1 {
		add("mqtt.session_queue_max.bytes: must be > 0, got %d", c.SessionQueueMax.Bytes)
	}
	if len(probs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(probs, "; "))
}

// anyPort reports whether addr asks for a port chosen by the system (":0").
func anyPort(addr string) bool {
	_, port, err := net.SplitHostPort(addr)
	return err == nil && port == "0"
}
