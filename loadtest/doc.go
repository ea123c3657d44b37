// Package loadtest drives a fleetgate gateway (or any MQTT broker or HTTP endpoint) with a
// bounded, reproducible load and measures throughput, acknowledgement latency and, with a
// Sink, end-to-end latency from acknowledgement to function invocation, loss and duplicates.
package loadtest
