package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// The promise in a cluster: Append returns only once a quorum of the R3 replicas stored the
// event. With two of three nodes gone, an append through the last one must fail (no quorum)
// rather than succeed, even with the node's quorum check out of the way (LogOptions.Quorum nil),
// so that it is JetStream's stored-on-a-quorum answer the log waits for.
func TestAppendWaitsForQuorumStore(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tns := threeNodes(t)
	nodes := startAll(t, ctx, tns)
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	l, err := OpenLog(ctx, LogOptions{JS: nodes[0].JetStream(), Node: nodes[0].Name(), Replicas: 3, Partitions: 2, Failover: 3 * time.Second, Functions: []string{"f"}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ev := func(i int) []*storage.Entry {
		return []*storage.Entry{{Event: &event.Event{Topic: "t", Subject: "d1", Data: []byte{byte('0' + i)}},
			Targets: []storage.Target{{Function: "f", Rule: "r"}}}}
	}
	if err := l.Append(ctx, ev(1)); err != nil {
		t.Fatalf("append with all nodes up: %v", err)
	}
	for _, i := range []int{1, 2} {
		nodes[i].Close()
		nodes[i] = nil
	}
	actx, acancel := context.WithTimeout(ctx, 30*time.Second)
	defer acancel()
	err = l.Append(actx, ev(2))
	if err == nil {
		t.Fatal("an append with 2 of 3 replicas gone was acknowledged: the log did not wait for a quorum store")
	}
	if !errors.Is(err, storage.ErrNoQuorum) {
		t.Fatalf("append without a quorum = %v, want an error wrapping storage.ErrNoQuorum", err)
	}
}
