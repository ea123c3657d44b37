package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetgate/fleetgate/storage"
	"github.com/fleetgate/fleetgate/storage/storagetest"
)

// startJS starts a one-server JetStream in dir, reachable in process only.
func startJS(t *testing.T, dir string) (*server.Server, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	s, err := server.NewServer(&server.Options{ServerName: "t1", JetStream: true, StoreDir: dir, DontListen: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	nc, err := nats.Connect("", nats.InProcessServer(s))
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return s, nc, js
}

// The JetStream log passes the backend conformance suite (one server, R1; the 3-node tests
// are in cmd/fleetgate).
func TestLogConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) (storage.Backend, func(storage.Backend) storage.Backend) {
		dir := t.TempDir()
		var srv *server.Server
		var nc *nats.Conn
		open := func() storage.Backend {
			var js jetstream.JetStream
			srv, nc, js = startJS(t, dir)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			l, err := OpenLog(ctx, LogOptions{JS: js, Node: "t1", Replicas: 1, Partitions: 4, Failover: 3 * time.Second, Functions: []string{"f", "g"}})
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		t.Cleanup(func() {
			if nc != nil {
				nc.Close()
			}
			if srv != nil {
				srv.Shutdown()
			}
		})
		return open(), func(b storage.Backend) storage.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			nc.Close()
			srv.Shutdown()
			srv.WaitForShutdown()
			return open()
		}
	}, storagetest.Options{PackRedelivery: true})
}

// A node configured with other replicas than the cluster's streams is refused with a clear
// error instead of acknowledging on fewer replicas than its operator expects.
func TestLogRefusesOtherReplicas(t *testing.T) {
	srv, nc, js := startJS(t, t.TempDir())
	defer srv.Shutdown()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := OpenLog(ctx, LogOptions{JS: js, Node: "t1", Replicas: 1, Partitions: 2, Functions: []string{"f"}})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	_, err = OpenLog(ctx, LogOptions{JS: js, Node: "t1", Replicas: 3, Partitions: 2, Functions: []string{"f"}})
	if err == nil || !strings.Contains(err.Error(), "has 1 replicas but this node is configured with cluster.replicas 3") {
		t.Fatalf("OpenLog with other replicas = %v", err)
	}
}

// CompareAndPut is a compare-and-set across the cluster: the write happens only if the key
// still holds what the caller read.
func TestCompareAndPut(t *testing.T) {
	srv, nc, js := startJS(t, t.TempDir())
	defer srv.Shutdown()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := OpenLog(ctx, LogOptions{JS: js, Node: "t1", Replicas: 1, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	k := "shadows/t1/dev 1"
	if err := l.CompareAndPut(k, nil, false, []byte("v1")); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := l.CompareAndPut(k, nil, false, []byte("other")); !errors.Is(err, storage.ErrChanged) {
		t.Fatalf("create over an existing key = %v, want ErrChanged", err)
	}
	if err := l.CompareAndPut(k, []byte("stale"), true, []byte("v2")); !errors.Is(err, storage.ErrChanged) {
		t.Fatalf("update from a stale read = %v, want ErrChanged", err)
	}
	if err := l.CompareAndPut(k, []byte("v1"), true, []byte("v2")); err != nil {
		t.Fatalf("update from the current value: %v", err)
	}
	if v, _, _ := l.Get(k); string(v) != "v2" {
		t.Fatalf("value = %q, want v2", v)
	}
}
