package broker

import (
	"errors"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestDefaultConfigIsValid(t *testing.T) {
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Addr != ":1883" || c.MaxClients != 100000 || c.MaxPacketBytes != 262144 {
		t.Fatalf("defaults %+v", c)
	}
}

func TestConfigValidateReportsEverything(t *testing.T) {
	c := Config{
		Addr: "nope", MaxClients: 0, MaxPacketBytes: 10, ConnectTimeout: 0, ReceiveMaximum: 70000,
		OutboundQueue: 0, PublishRate: -1, TLSAddr: ":8883", TLS: TLSConfig{ClientCAFile: "ca.pem"},
	}
	err := c.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("%v", err)
	}
	for _, want := range []string{"mqtt.addr", "mqtt.max_clients", "mqtt.max_packet_bytes", "mqtt.connect_timeout",
		"mqtt.receive_maximum", "mqtt.outbound_queue", "mqtt.publish_rate", "mqtt.tls_addr", "mqtt.tls.client_ca_file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
	c = DefaultConfig()
	c.TLS.KeyFile = "k.pem"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "mqtt.tls: cert_file and key_file") {
		t.Errorf("key without cert: %v", err)
	}
}

func TestConfigYAML(t *testing.T) {
	c := DefaultConfig()
	src := `{addr: "127.0.0.1:1884", ws_addr: ":8083", connect_timeout: 3s, publish_rate: 2.5,
  tls: {cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem}, tls_addr: ":8883", outbound_queue: 32}`
	if err := yaml.Unmarshal([]byte(src), &c); err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:1884" || c.WSAddr != ":8083" || c.ConnectTimeout.String() != "3s" || c.PublishRate != 2.5 ||
		c.TLS.ClientCAFile != "ca.pem" || c.TLSAddr != ":8883" || c.OutboundQueue != 32 || c.MaxClients != 100000 {
		t.Fatalf("parsed %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidateHostileLimits(t *testing.T) {
	c := DefaultConfig()
	if c.MaxConnectBytes != 8192 || c.MaxConnsPerIP != 1000 || c.TopicAliasMax != 10 || c.MaxRetained != 100000 ||
		c.MaxRetainedPerClient != 100 || c.MaxRetainedBytes != 256<<20 || c.MaxAwaitingRel != 100 {
		t.Fatalf("defaults %+v", c)
	}
	c.MaxConnectBytes, c.MaxConnsPerIP, c.TopicAliasMax = 10, -1, 70000
	c.MaxRetained, c.MaxRetainedPerClient, c.MaxRetainedBytes, c.MaxAwaitingRel = -1, -1, -1, 0
	err := c.Validate()
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("%v", err)
	}
	for _, want := range []string{"mqtt.max_connect_bytes", "mqtt.max_conns_per_ip", "mqtt.topic_alias_max", "mqtt.max_retained:",
		"mqtt.max_retained_per_client", "mqtt.max_retained_bytes", "mqtt.max_awaiting_rel"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}

func TestConfigPresenceAndQueues(t *testing.T) {
	c := DefaultConfig()
	if !c.Presence.Enabled || c.Presence.Grace != 0 || c.SessionQueueMax != (QueueMax{Messages: 1000, Bytes: 1 << 20}) {
		t.Fatalf("defaults %+v %+v", c.Presence, c.SessionQueueMax)
	}
	// Keys left out of the file keep their defaults.
	if err := yaml.Unmarshal([]byte(`{presence: {grace: 5s}, session_queue_max: {messages: 10}}`), &c); err != nil {
		t.Fatal(err)
	}
	if !c.Presence.Enabled || c.Presence.Grace.String() != "5s" || c.SessionQueueMax != (QueueMax{Messages: 10, Bytes: 1 << 20}) {
		t.Fatalf("parsed %+v %+v", c.Presence, c.SessionQueueMax)
	}
	c.Presence.Grace, c.SessionQueueMax = -1, QueueMax{Messages: 70000, Bytes: 0}
	err := c.Validate()
	for _, want := range []string{"mqtt.presence.grace", "mqtt.session_queue_max.messages", "mqtt.session_queue_max.bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s: %v", want, err)
		}
	}
}
