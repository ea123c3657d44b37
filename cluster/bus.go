package cluster

import (
	"strings"

	"github.com/nats-io/nats.go"
)

// The broker's message bus between nodes (broker.Cluster) is core NATS on the node's
// connection: downlink, retained messages, takeovers and session hand-overs cross nodes there.

// Node returns the node's name (broker.Cluster).
func (n *Node) Node() string { return n.Name() }

// Publish sends data on subject to every node (broker.Cluster).
func (n *Node) Publish(subject string, data []byte) error { return n.Conn().Publish(subject, data) }

// Subscribe calls fn, one message at a time, for every message on subject (broker.Cluster).
func (n *Node) Subscribe(subject string, fn func(data []byte)) (stop func(), err error) {
	sub, err := n.Conn().Subscribe(subject, func(m *nats.Msg) { fn(m.Data) })
	if err != nil {
		return nil, err
	}
	// A slow consumer must not lose downlink: let its buffer grow well past the defaults.
	_ = sub.SetPendingLimits(1<<20, 256<<20)
	return func() { _ = sub.Unsubscribe() }, nil
}

// PeersUp lists the peers this node's embedded NATS server has a route to (as of the last
// status check, at most half a second old); nil when it cannot tell (an external NATS,
// cluster.nats.url). A SIGKILLed node's routes close at once, so the broker takes its sessions
// over without waiting for heartbeats to go stale.
func (n *Node) PeersUp() []string {
	st := n.status.Load()
	if n.srv == nil || st == nil {
		return nil
	}
	out := make([]string, 0, len(st.connected))
	for _, c := range st.connected {
		name, _, _ := strings.Cut(c, "@")
		out = append(out, name)
	}
	return out
}
