package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/internal/testutil"
	"github.com/fleetgate/fleetgate/storage"
)

// testNode is one node's config and logs, restartable with the same store dir and ports.
type testNode struct {
	cfg  Config
	dir  string
	logs *testutil.SyncBuffer
	set  *metrics.Set
}

func (tn *testNode) opts() Options {
	return Options{
		DataDir: tn.dir,
		Logger:  slog.New(slog.NewTextHandler(tn.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Metrics: tn.set,
	}
}

// threeNodes configures a three-node cluster on loopback (R3).
func threeNodes(t *testing.T) []*testNode {
	t.Helper()
	ports := testutil.FreePorts(t, 3)
	var nodes []*testNode
	for i := range 3 {
		var routes []string
		for j := range 3 {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[j]))
			}
		}
		nodes = append(nodes, &testNode{
			cfg: Config{
				Node:     fmt.Sprintf("gw-%d", i+1),
				Replicas: 3,
				NATS: NATSConfig{Embedded: &EmbeddedConfig{
					ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]),
					Routes:        routes,
				}},
			},
			dir:  filepath.Join(t.TempDir(), fmt.Sprintf("gw-%d", i+1)),
			logs: &testutil.SyncBuffer{},
			set:  metrics.NewSet(),
		})
	}
	return nodes
}

// startAll starts the nodes concurrently (Start of each waits for the others).
func startAll(t *testing.T, ctx context.Context, tns []*testNode) []*Node {
	t.Helper()
	out := make([]*Node, len(tns))
	errs := make([]error, len(tns))
	var wg sync.WaitGroup
	for i, tn := range tns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = Start(ctx, tn.cfg, tn.opts())
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, n := range out {
				if n != nil {
					n.Close()
				}
			}
			t.Fatalf("Start %s: %v\nlogs:\n%s", tns[i].cfg.Node, err, tns[i].logs)
		}
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s: %v", d, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func gaugeValue(set *metrics.Set, name string) string {
	var b strings.Builder
	set.WritePrometheus(&b)
	for line := range strings.SplitSeq(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return v
		}
	}
	return ""
}

func TestThreeNodesQuorumLostAndRegained(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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

	for i, n := range nodes {
		if err := n.Quorum(); err != nil {
			t.Fatalf("%s: Quorum after Start: %v", n.Name(), err)
		}
		if n.Name() != tns[i].cfg.Node || n.Config().Name != DefaultName || n.Config().Sync != SyncAlways {
			t.Fatalf("Name/Config: %q %+v", n.Name(), n.Config())
		}
		if !n.Server().JetStreamIsClustered() {
			t.Fatalf("%s: JetStream not clustered", n.Name())
		}
	}
	waitFor(t, 5*time.Second, "metrics on every node", func() error {
		for i, tn := range tns {
			if q, p, r := gaugeValue(tn.set, "fleetgate_cluster_quorum"), gaugeValue(tn.set, "fleetgate_cluster_peers"),
				gaugeValue(tn.set, "fleetgate_cluster_routes_connected"); q != "1" || p != "3" || r != "2" {
				return fmt.Errorf("node %d: quorum %q peers %q routes %q", i, q, p, r)
			}
		}
		return nil
	})

	// An R3 stream, created through node 1, written through every node.
	js := nodes[0].JetStream()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatalf("create R3 stream: %v", err)
	}
	for i, n := range nodes {
		// Right after its creation the stream may still be electing its leader: "no response
		// from stream" (nothing stored) is retried for a few seconds, any other error fails.
		var ack *jetstream.PubAck
		waitFor(t, 10*time.Second, "a publish through "+n.Name(), func() error {
			var err error
			ack, err = n.JetStream().Publish(ctx, "t.x", []byte(fmt.Sprint(i)))
			if errors.Is(err, jetstream.ErrNoStreamResponse) {
				return err
			}
			if err != nil {
				t.Fatalf("publish through %s: %v", n.Name(), err)
			}
			return nil
		})
		if ack.Sequence != uint64(i+1) {
			t.Fatalf("publish through %s: seq %d", n.Name(), ack.Sequence)
		}
	}

	// Two nodes stop: the last one loses the quorum and refuses.
	for _, i := range []int{1, 2} {
		if err := nodes[i].Close(); err != nil {
			t.Fatalf("close %s: %v", nodes[i].Name(), err)
		}
		nodes[i] = nil
	}
	last := nodes[0]
	waitFor(t, 5*time.Second, "quorum lost on the last node", func() error {
		if err := last.Quorum(); err == nil {
			return errors.New("still has a quorum")
		} else if !errors.Is(err, storage.ErrNoQuorum) {
			t.Fatalf("Quorum error does not wrap storage.ErrNoQuorum: %v", err)
		}
		return nil
	})
	t.Logf("quorum error: %v", last.Quorum())
	if v := gaugeValue(tns[0].set, "fleetgate_cluster_quorum"); v != "0" {
		t.Fatalf("fleetgate_cluster_quorum %q after quorum loss", v)
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := last.JetStream().Publish(pctx, "t.x", []byte("lost")); err == nil {
		t.Fatal("publish to the R3 stream succeeded without a quorum")
	}
	pcancel()
	waitFor(t, 5*time.Second, "quorum-lost log", func() error {
		if !strings.Contains(tns[0].logs.String(), "quorum lost") {
			return errors.New("no 'quorum lost' in the log")
		}
		return nil
	})

	// They come back with their store dirs: the quorum does too, and the data is there.
	restarted := startAll(t, ctx, tns[1:])
	nodes[1], nodes[2] = restarted[0], restarted[1]
	waitFor(t, 15*time.Second, "quorum regained on every node", func() error {
		for _, n := range nodes {
			if err := n.Quorum(); err != nil {
				return fmt.Errorf("%s: %w", n.Name(), err)
			}
		}
		return nil
	})
	waitFor(t, 15*time.Second, "publish after recovery", func() error {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err := last.JetStream().Publish(pctx, "t.x", []byte("back"))
		return err
	})
	st, err := nodes[2].JetStream().Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(ctx); err != nil || info.State.Msgs < 4 {
		t.Fatalf("stream after recovery: %+v %v", info, err)
	}
	if !strings.Contains(tns[0].logs.String(), "quorum regained") {
		t.Fatalf("no 'quorum regained' in the log:\n%s", tns[0].logs)
	}
}

func TestUnreachableRoutesNamedWhileWaiting(t *testing.T) {
	t.Parallel()
	ports := testutil.FreePorts(t, 3) // nothing listens on ports[1] and ports[2]
	r1, r2 := fmt.Sprintf("nats://127.0.0.1:%d", ports[1]), fmt.Sprintf("nats://127.0.0.1:%d", ports[2])
	logs := &testutil.SyncBuffer{}
	cfg := Config{
		Node: "lonely",
		NATS: NATSConfig{Embedded: &EmbeddedConfig{
			ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[0]),
			Routes:        []string{r1, r2},
		}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	start := time.Now()
	n, err := Start(ctx, cfg, Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err == nil {
		n.Close()
		t.Fatal("Start returned a node without any peer")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("Start took %s with a 6s context", time.Since(start))
	}
	t.Logf("Start error: %v", err)
	for _, want := range []string{r1, r2, "lonely", "waiting for routes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Start error does not name %q: %v", want, err)
		}
	}
	if !errors.Is(err, storage.ErrNoQuorum) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Start error wraps neither ErrNoQuorum nor DeadlineExceeded: %v", err)
	}
	out := logs.String()
	var waitLine string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.Contains(line, "waiting for the JetStream quorum") {
			waitLine = line
		}
	}
	if waitLine == "" {
		t.Fatalf("no waiting log line:\n%s", out)
	}
	t.Logf("log: %s", waitLine)
	for _, want := range []string{r1, r2} {
		if !strings.Contains(waitLine, want) {
			t.Errorf("waiting log line does not name %s: %s", want, waitLine)
		}
	}
}

func TestMismatchedClusterNameDoesNotJoin(t *testing.T) {
	t.Parallel()
	ports := testutil.FreePorts(t, 2)
	a, b := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	mk := func(node, name, listen, route string) Config {
		return Config{Node: node, Name: name, Replicas: 2, NATS: NATSConfig{Embedded: &EmbeddedConfig{
			ClusterListen: listen, Routes: []string{"nats://" + route},
		}}}
	}
	logsA, logsB := &testutil.SyncBuffer{}, &testutil.SyncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var errA, errB error
	wg.Add(2)
	go func() {
		defer wg.Done()
		n, err := Start(ctx, mk("gw-a", "fleet-a", a, b), Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logsA, nil))})
		if n != nil {
			n.Close()
		}
		errA = err
	}()
	go func() {
		defer wg.Done()
		n, err := Start(ctx, mk("gw-b", "fleet-b", b, a), Options{DataDir: t.TempDir(), Logger: slog.New(slog.NewTextHandler(logsB, nil))})
		if n != nil {
			n.Close()
		}
		errB = err
	}()
	wg.Wait()
	for _, c := range []struct {
		err  error
		logs *testutil.SyncBuffer
	}{{errA, logsA}, {errB, logsB}} {
		if c.err == nil {
			t.Fatal("a node joined a cluster of another name")
		}
		t.Logf("Start error: %v", c.err)
		if !strings.Contains(c.err.Error(), "cluster name check failed") {
			t.Errorf("Start error does not mention the cluster name check: %v\nlogs:\n%s", c.err, c.logs)
		}
	}
}

func TestExternalNATSByURL(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// An "existing NATS" with JetStream: a one-node embedded server with a client port.
	port := testutil.FreePorts(t, 1)[0]
	natsCfg := Config{Node: "nats-1", Replicas: 1, NATS: NATSConfig{Embedded: &EmbeddedConfig{
		Listen: fmt.Sprintf("127.0.0.1:%d", port),
	}}}
	srv, err := Start(ctx, natsCfg, Options{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Quorum() != nil || srv.Server().JetStreamIsClustered() {
		t.Fatalf("one-node embedded: quorum %v, clustered %v", srv.Quorum(), srv.Server().JetStreamIsClustered())
	}
	defer srv.Close()

	logs := &testutil.SyncBuffer{}
	set := metrics.NewSet()
	cfg := Config{Node: "gw-1", Replicas: 1, NATS: NATSConfig{URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}}
	n, err := Start(ctx, cfg, Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Metrics: set})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.Quorum(); err != nil {
		t.Fatal(err)
	}
	if n.Server() != nil {
		t.Fatal("a URL node runs no server")
	}
	if _, err := n.JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "U", Subjects: []string{"u.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.JetStream().Publish(ctx, "u.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if v := gaugeValue(set, "fleetgate_cluster_quorum"); v != "1" {
		t.Fatalf("fleetgate_cluster_quorum %q", v)
	}

	// NATS goes away: no quorum, said in the log and the metric.
	srv.Close()
	waitFor(t, 5*time.Second, "quorum lost without NATS", func() error {
		if err := n.Quorum(); !errors.Is(err, storage.ErrNoQuorum) {
			return fmt.Errorf("Quorum: %v", err)
		}
		return nil
	})
	waitFor(t, 5*time.Second, "quorum-lost log and metric", func() error {
		if !strings.Contains(logs.String(), "quorum lost") || gaugeValue(set, "fleetgate_cluster_quorum") != "0" {
			return errors.New("not yet")
		}
		return nil
	})
	n.Close()
	if v := gaugeValue(set, "fleetgate_cluster_quorum"); v != "" {
		t.Fatalf("gauge still registered after Close: %q", v)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := Start(context.Background(), Config{}, Options{}); err == nil {
		t.Fatal("Start without a cluster section")
	}
	_, err := Start(context.Background(), Config{Node: "a", Sync: "sometimes", Replicas: 1}, Options{DataDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "cluster.sync") {
		t.Fatalf("Start with a bad config: %v", err)
	}
	// The cluster port already taken: a clear error, not a hang.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = Start(ctx, Config{Node: "a", Replicas: 1, NATS: NATSConfig{Embedded: &EmbeddedConfig{Listen: l.Addr().String()}}},
		Options{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("Start on a taken port: %v", err)
	}
	t.Logf("taken port: %v", err)

	// The same for the route port.
	_, err = Start(ctx, Config{Node: "a", Replicas: 1, NATS: NATSConfig{Embedded: &EmbeddedConfig{
		ClusterListen: l.Addr().String(), Routes: []string{"nats://127.0.0.1:1"}}}},
		Options{DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), l.Addr().String()) {
		t.Fatalf("Start on a taken route port: %v", err)
	}
	t.Logf("taken route port: %v", err)
}

// TestRemovePeer shrinks a cluster through the admin API (what `fleetgate cluster status` and
// `fleetgate cluster remove-peer` call): a running peer, this node and an unknown name are
// refused; a stopped peer is removed and the meta group, and so its quorum, shrink.
func TestRemovePeer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tns := threeNodes(t)
	for _, tn := range tns {
		tn.cfg.Replicas = 2
	}
	nodes := startAll(t, ctx, tns)
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()
	base := serveAdmin(t, nodes[0])
	status := func() StatusView {
		var st StatusView
		if code := adminCall(t, "GET", base+AdminPath, &st); code != 200 {
			t.Fatalf("GET %s: %d", AdminPath, code)
		}
		return st
	}
	online := func(st StatusView) (names []string) {
		for _, p := range st.Peers {
			if p.Online {
				names = append(names, p.Name)
			}
		}
		return names
	}
	waitFor(t, 10*time.Second, "meta group of 3, all online", func() error {
		if st := status(); st.MetaSize != 3 || !st.Quorum || len(online(st)) != 3 {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	for _, c := range []struct {
		peer string
		want int
	}{{"gw-1", 400}, {"gw-2", 409}, {"nobody", 404}} {
		var e struct{ Error, Code string }
		if code := adminCall(t, "DELETE", base+AdminPath+"/peers/"+c.peer, &e); code != c.want {
			t.Fatalf("DELETE peers/%s: %d %+v, want %d", c.peer, code, e, c.want)
		} else {
			t.Logf("DELETE peers/%s: %d %s: %s", c.peer, code, e.Code, e.Error)
		}
	}

	// gw-3 leaves for good: stopped, then removed; the meta group shrinks to 2 and the two
	// others keep their quorum (2 of 2).
	nodes[2].Close()
	waitFor(t, 10*time.Second, "gw-3 seen offline", func() error {
		if on := online(status()); len(on) != 2 {
			return fmt.Errorf("online %v", on)
		}
		return nil
	})
	// gw-3 may have been the meta leader: the removal asks again until a new one answers.
	if code := adminCall(t, "DELETE", base+AdminPath+"/peers/gw-3", nil); code != 200 {
		t.Fatalf("DELETE peers/gw-3 once stopped: %d", code)
	}
	waitFor(t, 10*time.Second, "meta group of 2 on both nodes", func() error {
		for _, n := range nodes[:2] {
			if st := n.Status(); st.MetaSize != 2 || !st.Quorum {
				return fmt.Errorf("%s: %+v", n.Name(), st)
			}
		}
		return nil
	})
	if _, err := nodes[1].JetStream().CreateStream(ctx, jetstream.StreamConfig{Name: "R2", Subjects: []string{"r2.>"}, Replicas: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[1].JetStream().Publish(ctx, "r2.x", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// serveAdmin serves n's admin API on a real loopback listener and returns its base URL.
func serveAdmin(t *testing.T, n *Node) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: n.AdminHandler()}
	go srv.Serve(ln) //nolint:errcheck // returns when the listener closes
	t.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func adminCall(t *testing.T, method, url string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
	return resp.StatusCode
}
