package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetgate/fleetgate/storage"
)

// Timings of the node runtime.
const (
	// quorumRefresh is how often the background loop refreshes what Quorum returns.
	quorumRefresh = 500 * time.Millisecond
	// waitLogEvery is how often Start logs what it still waits for.
	waitLogEvery = 5 * time.Second
	// routePing is the route ping interval of the embedded server: a peer that stops answering
	// (network partition, frozen host) is dropped after routeMaxPingsOut missed pings.
	routePing        = 2 * time.Second
	routeMaxPingsOut = 3
	// urlInfoTimeout bounds the JetStream account-info request that probes an external cluster.
	urlInfoTimeout = 2 * time.Second
)

// The embedded server's users: appUser (no credentials needed) and sysUser (in-process only).
const (
	appUser = "fleetgate"
	sysUser = "fleetgate-system"
	// routeUser is the user routes present, with cluster.nats.embedded.secret_file's secret.
	routeUser = "fleetgate-route"
)

func randomToken() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// Options are what Start needs besides the config.
type Options struct {
	// DataDir is the gateway's data_dir: the default store dir is <DataDir>/nats.
	DataDir string
	// Logger receives the node's and the embedded NATS server's logs (nil: slog.Default()).
	Logger *slog.Logger
	// Metrics receives fleetgate_cluster_quorum, fleetgate_cluster_peers and
	// fleetgate_cluster_routes_connected (nil: none).
	Metrics *metrics.Set
}

// Node is a running cluster node: an embedded NATS server (or a connection to an external NATS
// cluster), a client connection to it and the background loop that tracks the quorum.
type Node struct {
	cfg  Config
	log  *slog.Logger
	srv  *server.Server // nil with cluster.nats.url
	nc   *nats.Conn
	js   jetstream.JetStream
	nlog *natsLogger
	// natsLog receives the embedded server's log lines.
	natsLog *slog.Logger
	// sysPass is the password of sysUser on the embedded server.
	sysPass string
	set     *metrics.Set
	gauges  []string

	status atomic.Pointer[status]

	stop      chan struct{}
	loopDone  chan struct{}
	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// status is one look at the node's cluster state.
type status struct {
	err       error    // nil: quorum; else wraps storage.ErrNoQuorum
	peers     int      // peers of the meta group seen online, this node included
	routes    int      // distinct peers with a connected route
	connected []string // names (and addresses) of the peers with a route
	waiting   []string // configured route URLs without a connected route
	leader    string   // meta leader ("" when none)
	size      int      // meta group size
}

// Start starts the embedded NATS server (or connects to cfg.NATS.URL) and waits until JetStream
// is usable (meta leader known and a quorum of peers), logging every 5 s what it still waits
// for, or until ctx ends. It returns a connected Node.
func Start(ctx context.Context, cfg Config, opts Options) (*Node, error) {
	if !cfg.Enabled() {
		return nil, errors.New("cluster: no cluster section (cluster.node is required)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	n := &Node{
		cfg:      cfg,
		log:      log.With("component", "cluster", "node", cfg.Node),
		natsLog:  log.With("component", "nats", "node", cfg.Node),
		set:      opts.Metrics,
		stop:     make(chan struct{}),
		loopDone: make(chan struct{}),
	}
	n.status.Store(&status{err: fmt.Errorf("%w: node starting", storage.ErrNoQuorum)})

	var err error
	if e := cfg.NATS.Embedded; e != nil {
		err = n.startEmbedded(e, opts.DataDir)
	} else {
		err = n.connectURL(ctx)
	}
	if err != nil {
		n.shutdown()
		return nil, err
	}
	if n.js, err = jetstream.New(n.nc); err != nil {
		n.shutdown()
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}

	n.registerMetrics() // while waiting too: fleetgate_cluster_quorum 0, peers and routes as seen
	if err := n.waitReady(ctx); err != nil {
		n.unregisterMetrics()
		n.shutdown()
		return nil, err
	}
	go n.loop()
	return n, nil
}

// startEmbedded runs the NATS server in this process and connects to it in process.
func (n *Node) startEmbedded(e *EmbeddedConfig, dataDir string) error {
	cfg := n.cfg
	storeDir := e.StoreDir
	if storeDir == "" {
		if dataDir == "" {
			return errors.New("cluster: cluster.nats.embedded.store_dir or data_dir is required")
		}
		storeDir = filepath.Join(dataDir, "nats")
	}
	// Clients without credentials (the gateway's in-process connection, the nats CLI on the
	// client port) are the user "fleetgate" of the global account: no client auth, the client
	// listener, when enabled, must be protected by the network (docs/operations.md, "Ports to
	// protect"). One more user, in the system account, with a password made up at every start
	// and never shown, lets this process send system requests (RemovePeer).
	sysAcc := server.NewAccount(server.DEFAULT_SYSTEM_ACCOUNT)
	n.sysPass = randomToken()
	o := &server.Options{
		ServerName:    cfg.Node,
		JetStream:     true,
		StoreDir:      storeDir,
		MaxPayload:    MaxPayload,
		NoSigs:        true,
		Accounts:      []*server.Account{sysAcc},
		SystemAccount: server.DEFAULT_SYSTEM_ACCOUNT,
		Users: []*server.User{
			{Username: appUser, Password: randomToken()},
			{Username: sysUser, Password: n.sysPass, Account: sysAcc},
		},
		NoAuthUser: appUser,
	}
	if cfg.Sync == SyncAlways {
		o.SyncAlways = true
	} else {
		o.SyncInterval = SyncIntervalPeriod
	}
	switch {
	case e.Listen == "" && e.ClusterListen == "":
		o.DontListen = true
	case e.Listen == "":
		// nats-server starts routing only once its client listener is up (with DontListen
		// the routes never start): a random loopback port stands in for "no listener".
		o.Host, o.Port = "127.0.0.1", server.RANDOM_PORT
	default:
		o.Host, o.Port = splitHostPort(e.Listen)
		if ip := net.ParseIP(o.Host); o.Host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			n.log.Warn("cluster: cluster.nats.embedded.listen is not a loopback address: NATS clients need no credentials there and can read and delete every stream; firewall it (docs/operations.md, \"Ports to protect\")", "listen", e.Listen)
		}
	}
	if e.ClusterListen != "" {
		o.Cluster.Name = cfg.Name
		o.Cluster.Host, o.Cluster.Port = splitHostPort(e.ClusterListen)
		o.Cluster.PingInterval = routePing
		o.Cluster.MaxPingsOut = routeMaxPingsOut
		secret, tc, err := e.routeSecurity()
		if err != nil {
			return fmt.Errorf("cluster: %w", err)
		}
		if secret != "" {
			// Routes present user routeUser with the secret; one without is refused.
			o.Cluster.Username, o.Cluster.Password = routeUser, secret
		}
		if tc != nil {
			o.Cluster.TLSConfig, o.Cluster.TLSTimeout = tc, 5
		}
		if secret == "" && tc == nil {
			n.log.Warn("cluster: routes without secret_file or tls: anything that reaches cluster_listen with the cluster's name joins the cluster and reads every stream; set cluster.nats.embedded.secret_file (docs/operations.md, \"Ports to protect\")",
				"cluster_listen", e.ClusterListen)
		}
		for _, r := range e.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return fmt.Errorf("cluster: route %q: %w", r, err)
			}
			if u.Scheme == "nats-route" {
				u.Scheme = "nats"
			}
			if secret != "" {
				u.User = url.UserPassword(routeUser, secret)
			}
			o.Routes = append(o.Routes, u)
		}
	}
	srv, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("cluster: embedded NATS: %w", err)
	}
	n.nlog = &natsLogger{log: n.natsLog}
	srv.SetLogger(n.nlog, false, false)
	n.srv = srv
	srv.Start()
	// A listener error (port taken) is logged through Fatalf: stop waiting at once then.
	ready := false
	for deadline := time.Now().Add(10 * time.Second); !ready && time.Now().Before(deadline) && n.nlog.lastFatal() == ""; {
		ready = srv.ReadyForConnections(100 * time.Millisecond)
	}
	if !ready {
		msg := n.nlog.lastFatal()
		if msg == "" {
			msg = "not ready for connections after 10s"
		}
		return fmt.Errorf("cluster: embedded NATS (listen %q, cluster_listen %q): %s", e.Listen, e.ClusterListen, msg)
	}
	nc, err := nats.Connect("", nats.InProcessServer(srv), nats.Name("fleetgate "+cfg.Node),
		nats.MaxReconnects(-1), n.connHandlers())
	if err != nil {
		return fmt.Errorf("cluster: in-process NATS connection: %w", err)
	}
	n.nc = nc
	return nil
}

// connectURL connects to an existing NATS cluster.
func (n *Node) connectURL(ctx context.Context) error {
	var last error
	for {
		nc, err := nats.Connect(n.cfg.NATS.URL, nats.Name("fleetgate "+n.cfg.Node),
			nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false), n.connHandlers())
		if err == nil {
			n.nc = nc
			return nil
		}
		if last == nil || last.Error() != err.Error() {
			n.log.Warn("cluster: cannot connect to NATS, retrying", "url", n.cfg.NATS.URL, "err", err)
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: node %s could not connect to cluster.nats.url %s: %v: %w", n.cfg.Node, n.cfg.NATS.URL, err, ctx.Err())
		case <-time.After(time.Second):
		}
	}
}

func (n *Node) connHandlers() nats.Option {
	return func(o *nats.Options) error {
		o.DisconnectedErrCB = func(_ *nats.Conn, err error) {
			if !n.closing.Load() {
				n.log.Warn("cluster: NATS connection lost", "err", err)
			}
		}
		o.ReconnectedCB = func(c *nats.Conn) { n.log.Info("cluster: NATS connection back", "server", c.ConnectedUrlRedacted()) }
		return nil
	}
}

// waitReady waits until the node has a quorum, logging every waitLogEvery what is missing.
func (n *Node) waitReady(ctx context.Context) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	nextLog := start.Add(waitLogEvery)
	for {
		st := n.check()
		n.status.Store(st)
		if st.err == nil {
			n.log.Info("cluster: JetStream ready", "cluster", n.cfg.Name, "meta_leader", st.leader,
				"peers", st.peers, "routes_connected", st.connected, "waited", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if now := time.Now(); !now.Before(nextLog) {
			nextLog = now.Add(waitLogEvery)
			n.log.Warn("cluster: waiting for the JetStream quorum", n.waitAttrs(st, time.Since(start))...)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: node %s gave up waiting for the JetStream quorum after %s: %w%s: %w",
				n.cfg.Node, time.Since(start).Round(time.Millisecond), st.err, n.describe(st), ctx.Err())
		case <-tick.C:
		}
	}
}

func (n *Node) waitAttrs(st *status, waited time.Duration) []any {
	attrs := []any{"cluster", n.cfg.Name, "waited", waited.Round(time.Second), "reason", st.err}
	if n.srv != nil {
		attrs = append(attrs, "waiting_for_routes", st.waiting, "routes_connected", st.connected,
			"meta_leader", st.leader, "peers_online", st.peers)
		if c := n.nlog.lastConflict(); c != "" {
			attrs = append(attrs, "cluster_name_check", c)
		}
	} else {
		attrs = append(attrs, "url", n.cfg.NATS.URL)
	}
	return attrs
}

// describe adds to a status's error the routes waited for and a cluster name conflict.
func (n *Node) describe(st *status) string {
	var b strings.Builder
	if n.srv != nil {
		if e := n.cfg.NATS.Embedded; e != nil && len(e.Routes) > 0 {
			fmt.Fprintf(&b, "; waiting for routes [%s]; connected [%s]",
				strings.Join(st.waiting, " "), strings.Join(st.connected, " "))
		}
		if c := n.nlog.lastConflict(); c != "" {
			fmt.Fprintf(&b, "; cluster name check failed (cluster.name must be %q on every node): %s", n.cfg.Name, c)
		}
	} else {
		fmt.Fprintf(&b, "; url %s", n.cfg.NATS.URL)
	}
	return b.String()
}

// loop refreshes the status every quorumRefresh and logs quorum changes.
func (n *Node) loop() {
	defer close(n.loopDone)
	t := time.NewTicker(quorumRefresh)
	defer t.Stop()
	had := n.status.Load().err == nil
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		st := n.check()
		n.status.Store(st)
		has := st.err == nil
		switch {
		case had && !has:
			n.log.Warn("cluster: quorum lost: new events are refused", "reason", st.err,
				"peers_online", st.peers, "routes_connected", st.connected, "meta_leader", st.leader)
		case !had && has:
			n.log.Info("cluster: quorum regained", "peers_online", st.peers, "meta_leader", st.leader)
		}
		had = has
	}
}

// check looks at the cluster state now.
func (n *Node) check() *status {
	if n.srv != nil {
		return n.checkEmbedded()
	}
	return n.checkURL()
}

func noQuorum(format string, args ...any) error {
	return fmt.Errorf("%w: %s", storage.ErrNoQuorum, fmt.Sprintf(format, args...))
}

func (n *Node) checkEmbedded() *status {
	st := &status{}
	// Routes: distinct peers (a route pool has several connections per peer).
	byName := map[string]string{}
	if rz, err := n.srv.Routez(nil); err == nil {
		for _, r := range rz.Routes {
			if r.RemoteName == "" {
				continue
			}
			if _, ok := byName[r.RemoteName]; !ok || r.DidSolicit || r.IsConfigured {
				byName[r.RemoteName] = net.JoinHostPort(r.IP, fmt.Sprint(r.Port))
			}
		}
	}
	ips := map[string]bool{}
	for name, addr := range byName {
		st.connected = append(st.connected, name+"@"+addr)
		ips[addr] = true
	}
	sort.Strings(st.connected)
	st.routes = len(byName)
	// A peer may have connected to us (an inbound route, from an ephemeral port): when as many
	// peers are connected as routes are configured, nothing is waited for. Else name the
	// routes whose address no connected route has.
	if e := n.cfg.NATS.Embedded; e != nil && st.routes < otherRoutes(e) {
		for _, r := range e.Routes {
			u, err := url.Parse(r)
			if err != nil || (e.ClusterListen != "" && sameAddr(u.Host, e.ClusterListen)) {
				continue
			}
			if !routeConnected(u.Host, ips) {
				st.waiting = append(st.waiting, r)
			}
		}
	}

	if !n.srv.JetStreamEnabled() {
		st.err = noQuorum("JetStream is not enabled on the embedded server")
		return st
	}
	if n.nc == nil || !n.nc.IsConnected() {
		st.err = noQuorum("not connected to the embedded NATS server")
		return st
	}
	if !n.srv.JetStreamIsClustered() {
		// One node, JetStream not clustered: it is its own quorum.
		st.peers, st.leader, st.size = 1, n.cfg.Node, 1
		return st
	}
	jsi, err := n.srv.Jsz(&server.JSzOptions{})
	if err != nil {
		st.err = noQuorum("JetStream state: %v", err)
		return st
	}
	if jsi.Meta == nil {
		st.err = noQuorum("the JetStream meta group has not started")
		return st
	}
	m := jsi.Meta
	st.leader, st.size = m.Leader, m.Size
	st.peers = 1
	for _, p := range m.Replicas {
		// A peer counts when JetStream has not marked it offline and a route to it is up (the
		// route drops at once when a peer dies, long before Raft notices).
		if !p.Offline && byName[p.Name] != "" {
			st.peers++
		}
	}
	need := m.QuorumNeeded
	if need == 0 {
		need = m.Size/2 + 1
	}
	switch {
	case m.Leader == "":
		st.err = noQuorum("no JetStream meta leader in cluster %q (%d peers online of the %d the meta group knows, quorum needs %d)", n.cfg.Name, st.peers, m.Size, need)
	case st.peers < need:
		st.err = noQuorum("%d of %d peers online in cluster %q, quorum needs %d", st.peers, m.Size, n.cfg.Name, need)
	case m.Size < n.cfg.Replicas:
		// The meta group grows as peers join: streams of cluster.replicas cannot be placed yet.
		st.err = noQuorum("the JetStream cluster %q has %d nodes, cluster.replicas %d needs %d", n.cfg.Name, m.Size, n.cfg.Replicas, n.cfg.Replicas)
	}
	return st
}

// otherRoutes counts the configured routes that are not this node itself.
func otherRoutes(e *EmbeddedConfig) int {
	k := 0
	for _, r := range e.Routes {
		u, err := url.Parse(r)
		if err == nil && !(e.ClusterListen != "" && sameAddr(u.Host, e.ClusterListen)) {
			k++
		}
	}
	return k
}

// routeConnected reports whether host:port (a route URL's) resolves to an address in ips.
func routeConnected(hostport string, ips map[string]bool) bool {
	if ips[hostport] {
		return true
	}
	h, p, err := net.SplitHostPort(hostport)
	if err != nil || len(ips) == 0 {
		return false
	}
	addrs, err := net.LookupHost(h)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(addrs, func(a string) bool { return ips[net.JoinHostPort(a, p)] })
}

func (n *Node) checkURL() *status {
	st := &status{}
	if n.nc == nil || !n.nc.IsConnected() {
		st.err = noQuorum("not connected to NATS at %s", n.cfg.NATS.URL)
		return st
	}
	ctx, cancel := context.WithTimeout(context.Background(), urlInfoTimeout)
	defer cancel()
	if _, err := n.js.AccountInfo(ctx); err != nil {
		st.err = noQuorum("JetStream at %s does not answer: %v", n.cfg.NATS.URL, err)
		return st
	}
	st.peers = 1 + len(n.nc.DiscoveredServers())
	return st
}

func (n *Node) registerMetrics() {
	if n.set == nil {
		return
	}
	gauge := func(name string, f func(*status) float64) {
		n.set.GetOrCreateGauge(name, func() float64 {
			if st := n.status.Load(); st != nil {
				return f(st)
			}
			return 0
		})
		n.gauges = append(n.gauges, name)
	}
	gauge("fleetgate_cluster_quorum", func(st *status) float64 {
		if st.err == nil {
			return 1
		}
		return 0
	})
	gauge("fleetgate_cluster_peers", func(st *status) float64 { return float64(st.peers) })
	gauge("fleetgate_cluster_routes_connected", func(st *status) float64 { return float64(st.routes) })
}

func (n *Node) unregisterMetrics() {
	if n.set != nil {
		for _, g := range n.gauges {
			n.set.UnregisterMetric(g)
		}
	}
	n.gauges = nil
}

// Conn is the node's NATS connection (in process with the embedded server).
func (n *Node) Conn() *nats.Conn { return n.nc }

// JetStream is the JetStream context on Conn.
func (n *Node) JetStream() jetstream.JetStream { return n.js }

// Name is cluster.node.
func (n *Node) Name() string { return n.cfg.Node }

// Config is the cluster section with the defaults filled in.
func (n *Node) Config() Config { return n.cfg }

// Server is the embedded NATS server (nil with cluster.nats.url).
func (n *Node) Server() *server.Server { return n.srv }

// RemovePeer removes a node for good from the JetStream meta group (the NATS system request
// $JS.API.SERVER.REMOVE, which `nats server raft peer-remove` sends): its size, and so its
// quorum, no longer count it. Stop the node first and move its stream replicas away (see
// docs/operations.md, "Shrinking the cluster"). Only with the embedded server: with
// cluster.nats.url, use your NATS system user.
func (n *Node) RemovePeer(ctx context.Context, node string) error {
	if n.srv == nil {
		return errors.New("cluster: RemovePeer needs the embedded NATS server; with cluster.nats.url run `nats server raft peer-remove` with your NATS system user")
	}
	if node == "" || node == n.cfg.Node {
		return fmt.Errorf("cluster: RemovePeer %q: name another node", node)
	}
	nc, err := nats.Connect("", nats.InProcessServer(n.srv), nats.UserInfo(sysUser, n.sysPass),
		nats.Name("fleetgate "+n.cfg.Node+" system"))
	if err != nil {
		return fmt.Errorf("cluster: system connection: %w", err)
	}
	defer nc.Close()
	req, _ := json.Marshal(server.JSApiMetaServerRemoveRequest{Server: node})
	// Only the meta leader answers: while it changes (e.g. the removed node just stopped and
	// was the leader), a request goes unanswered; ask again until ctx ends.
	var msg *nats.Msg
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		msg, err = nc.RequestWithContext(rctx, server.JSApiRemoveServer, req)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders)) {
			return fmt.Errorf("cluster: remove peer %s (is there a JetStream meta leader? %v): %w", node, n.Quorum(), err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	var resp server.JSApiMetaServerRemoveResponse
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("cluster: remove peer %s: bad response %q: %w", node, msg.Data, err)
	}
	if resp.Error != nil {
		return fmt.Errorf("cluster: remove peer %s: %s", node, resp.Error.Description)
	}
	if !resp.Success {
		return fmt.Errorf("cluster: remove peer %s: not done (%s)", node, msg.Data)
	}
	n.log.Warn("cluster: peer removed from the JetStream meta group", "peer", node)
	return nil
}

// Quorum returns nil when this node can write to JetStream (connected, meta leader known, a
// quorum of peers online), else an error wrapping storage.ErrNoQuorum that says what is
// missing. It is cached and refreshed every 500 ms in the background.
func (n *Node) Quorum() error {
	return n.status.Load().err
}

// Close drains the connection, shuts the embedded server down and waits for it.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		close(n.stop)
		<-n.loopDone
		n.unregisterMetrics()
		n.closeErr = n.shutdown()
	})
	return n.closeErr
}

// shutdown drains the connection and stops the embedded server.
func (n *Node) shutdown() error {
	n.closing.Store(true)
	var err error
	if n.nc != nil && !n.nc.IsClosed() {
		closed := make(chan struct{})
		var once sync.Once
		n.nc.SetClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) })
		if derr := n.nc.Drain(); derr != nil {
			n.nc.Close() // not connected: nothing to drain
		} else {
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				n.nc.Close()
				err = errors.New("cluster: NATS connection drain timed out")
			}
		}
	}
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
	}
	return err
}

// natsLogger sends the embedded server's logs to slog and remembers the messages that explain
// why the node cannot start or join (a listener error, a cluster name conflict).
type natsLogger struct {
	log        *slog.Logger
	mu         sync.Mutex
	fatal      string
	conflict   string
	conflictAt time.Time
}

// conflictRecent is how long a cluster name conflict seen in the log is reported.
const conflictRecent = 30 * time.Second

func (l *natsLogger) Noticef(format string, v ...any) { l.emit(slog.LevelInfo, format, v) }
func (l *natsLogger) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l *natsLogger) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l *natsLogger) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l *natsLogger) Tracef(format string, v ...any)  {}

// Fatalf logs at error level: the server calls it on a listener error and stops that listener;
// the process itself does not exit (Start reports the error).
func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.mu.Lock()
	l.fatal = msg
	l.mu.Unlock()
	l.log.Error("nats: " + msg)
}

func (l *natsLogger) emit(level slog.Level, format string, v []any) {
	msg := fmt.Sprintf(format, v...)
	low := strings.ToLower(msg)
	// The two sides of a name mismatch say "Rejecting connection, cluster name "x" does not
	// match "y"" and "cluster name from remote server conflicts" (and close the route with
	// reason "Cluster Name Conflict").
	if strings.Contains(low, "cluster name") && (strings.Contains(low, "conflict") || strings.Contains(low, "does not match")) {
		l.mu.Lock()
		l.conflict, l.conflictAt = msg, time.Now()
		l.mu.Unlock()
		if level < slog.LevelWarn {
			level = slog.LevelWarn
		}
	}
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.log.Log(context.Background(), level, "nats: "+msg)
}

func (l *natsLogger) lastFatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}

func (l *natsLogger) lastConflict() string {
	if l == nil {
		return ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.conflictAt) > conflictRecent {
		return ""
	}
	return l.conflict
}
