package main

import (
	"testing"
)

// FuzzConfig feeds arbitrary YAML to the config loader and validator: any input gives a
// config or an error, never a panic.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("data_dir: x\nhttp: {addr: ':1', max_body_bytes: 10}\n"))
	f.Add([]byte("functions:\n  - {name: a, type: http, url: 'http://x', batch: {max_events: -1, max_wait: 0s}}\nrules:\n  - {id: r, topic: 'a/#', functions: [a], when: 'payload.x > 1'}\n"))
	f.Add([]byte("auth: {keys: [{id: k, alg: HS256, secret: short}], policies: {device: {publish: ['devices/${sub}/#']}}}\n"))
	f.Add([]byte("mqtt: {max_clients: -1, connect_timeout: 1h, publish_rate: -3}\nlog: {level: loud}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := DefaultConfig()
		if err := decodeConfig(data, &cfg); err != nil {
			return
		}
		_ = cfg.Validate()
	})
}
