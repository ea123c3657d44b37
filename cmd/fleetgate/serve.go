package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strings"
	"syscall"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/pprofhandler"

	"github.com/fleetgate/fleetgate/broker"
	"github.com/fleetgate/fleetgate/cluster"
	"github.com/fleetgate/fleetgate/console"
	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/functions"
	"github.com/fleetgate/fleetgate/ingest"
	"github.com/fleetgate/fleetgate/ingest/auth"
	"github.com/fleetgate/fleetgate/internal/gctune"
	"github.com/fleetgate/fleetgate/internal/procs"
	"github.com/fleetgate/fleetgate/rules"
	"github.com/fleetgate/fleetgate/shadow"
	"github.com/fleetgate/fleetgate/storage"
)

// serverFlags are the flags `serve` and `token` share: they override the config file.
type serverFlags struct {
	config, dataDir, mqttAddr, httpAddr string
	resetRules                          bool
}

func (f *serverFlags) register(fs *flag.FlagSet, listeners bool) {
	fs.StringVar(&f.config, "config", os.Getenv("FLEETGATE_CONFIG"), "config file (YAML; default $FLEETGATE_CONFIG, or the embedded defaults)")
	fs.StringVar(&f.dataDir, "data-dir", "", "data directory (overrides data_dir; default "+defaultDataDir+")")
	if listeners {
		fs.StringVar(&f.mqttAddr, "mqtt-addr", "", "MQTT listen address (overrides mqtt.addr; default :1883)")
		fs.StringVar(&f.httpAddr, "http-addr", "", "HTTP listen address (overrides http.addr; default :8080)")
		fs.BoolVar(&f.resetRules, "reset-rules", false, "replace the rule set stored in the data dir by the config's rules (a new version; history kept)")
	}
}

// load reads the config file, applies the flags and validates the result.
func (f *serverFlags) load() (Config, error) {
	cfg, err := f.read()
	if err != nil {
		return cfg, err
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// read reads the config file and applies the flags, without validating.
func (f *serverFlags) read() (Config, error) {
	cfg, err := loadConfig(f.config)
	if err != nil {
		return cfg, err
	}
	if f.dataDir != "" {
		cfg.DataDir = f.dataDir
	}
	if f.mqttAddr != "" {
		cfg.MQTT.Addr = f.mqttAddr
	}
	if f.httpAddr != "" {
		cfg.HTTP.Addr = f.httpAddr
	}
	return cfg, nil
}

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fleetgate serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serverFlags
	f.register(fs, true)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: fleetgate serve [--config FILE] [--data-dir DIR] [--mqtt-addr HOST:PORT] [--http-addr HOST:PORT]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := f.load()
	if err != nil {
		fmt.Fprintln(stderr, "fleetgate:", err)
		return 2
	}
	log := newLogger(cfg.Log, stderr)
	tuner := setMemoryLimit(cfg, log)
	defer tuner.Stop()
	g, err := startGateway(cfg, f.resetRules, log, stdout)
	if err != nil {
		log.Error("fleetgate failed to start", "err", err)
		return 1
	}
	mqttAddr := "off"
	for _, a := range []net.Addr{g.broker.Addr(), g.broker.TLSAddr(), g.broker.WSAddr()} {
		if a != nil {
			mqttAddr = a.String()
			break
		}
	}
	pc := startProcs(cfg, log, g.procs, g.work())
	fmt.Fprintf(stdout, "fleetgate ready: mqtt=%s http=%s data_dir=%s\n", mqttAddr, g.http.Addr(), cfg.DataDir)
	log.Info("ready", "mqtt", mqttAddr, "mqtt_tls", addrString(g.broker.TLSAddr()), "mqtt_ws", addrString(g.broker.WSAddr()),
		"http", g.http.Addr().String(), "data_dir", cfg.DataDir)

	// SIGHUP reloads the auth keys (key files, auth.jwks_file, auth.jwks_url) and the HTTP and
	// MQTT listeners' certificates (and mqtt.tls.client_ca_file) in place: connections stay up, tokens of removed keys are refused
	// from then on.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			log.Info("SIGHUP: reloading auth keys")
			if err := g.verifier.Reload(); err != nil {
				log.Error("SIGHUP: auth keys not (all) reloaded; the last good keys stay in use", "err", err)
			}
			if err := g.http.ReloadTLS(); err != nil {
				log.Error("SIGHUP: HTTP certificate not reloaded; the current one stays in use", "err", err)
			}
			if err := g.broker.ReloadTLS(); err != nil {
				log.Error("SIGHUP: MQTT certificate not reloaded; the current one stays in use", "err", err)
			}
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	s := <-sig
	log.Info("shutting down", "signal", s.String())
	go func() {
		<-sig
		log.Error("second signal: exiting now (acknowledged events are safe on disk)")
		os.Exit(1)
	}()
	pc.Stop() // all processors for the shutdown's flush
	if err := g.shutdown(cfg.HTTP.ShutdownTimeout); err != nil {
		log.Error("shutdown", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

const procsAutoLog = "procs: one processor while that saves CPU and holds no sender back, all of them otherwise"

// startProcs starts the processor controller (procs: auto, internal/procs) unless GOMAXPROCS
// is set; it returns nil then, with procs: all (the default), or on a one-CPU machine.
func startProcs(cfg Config, log *slog.Logger, changes *metrics.Counter, work func() uint64) *procs.Controller {
	if cfg.Procs != "auto" {
		return nil
	}
	if env := os.Getenv("GOMAXPROCS"); env != "" {
		log.Info("procs: GOMAXPROCS is set; the gateway runs on that many processors", "GOMAXPROCS", env)
		return nil
	}
	all := runtime.GOMAXPROCS(0)
	c := procs.Start(procs.Options{Max: all, Work: work, OnChange: func(n int, reason string) {
		changes.Inc()
		log.Debug("procs", "gomaxprocs", n, "reason", reason)
	}})
	if c != nil {
		log.Info(procsAutoLog, "max", all)
	}
	return c
}

// workCounters are the counters of what the senders have had done (events taken in, HTTP
// requests, MQTT connections): the processor controller's probe compares their rate.
var workCounters = []string{
	"fleetgate_ingest_events_accepted_total", "fleetgate_ingest_events_duplicate_total",
	"fleetgate_ingest_events_refused_total", "fleetgate_http_requests_total",
	`fleetgate_mqtt_connects_total{result="ok"}`,
}

// work counts what the senders have had done so far, for the processor controller's probe.
// TestWorkCountersAreRegistered checks that the components register every one of
// workCounters (a renamed metric would leave the probe counting nothing).
func (g *gateway) work() func() uint64 {
	var cs []*metrics.Counter
	for _, name := range workCounters {
		cs = append(cs, g.metrics.GetOrCreateCounter(name))
	}
	return func() uint64 {
		var n uint64
		for _, c := range cs {
			n += c.Get()
		}
		return n
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

// gateway is a running fleetgate: every component, wired.
type gateway struct {
	node        *cluster.Node   // cluster mode only
	store       storage.Backend // Badger (*storage.Store), or cluster mode's JetStream log
	verifier    *auth.Verifier
	revocations *auth.Revocations
	ingest      *ingest.Gateway
	rules       *rules.Engine
	dispatcher  *functions.Dispatcher
	broker      *broker.Broker
	shadows     *shadow.Service
	http        *ingest.Server
	metrics     *metrics.Set
	procs       *metrics.Counter // fleetgate_runtime_procs_changes_total
	log         *slog.Logger
}

// gatewayEvents lets the shadow service take events in through the ingest gateway.
type gatewayEvents struct{ g *ingest.Gateway }

func (e gatewayEvents) Accept(ctx context.Context, events []*event.Event) error {
	return e.g.Accept(ctx, events, ingest.AcceptOptions{})
}

var (
	_ shadow.KV      = storage.Backend(nil)
	_ shadow.Events  = gatewayEvents{}
	_ broker.Shadows = (*shadow.Service)(nil)
)

// rulesRouter routes events with the live rule set of the engine.
type rulesRouter struct{ e *rules.Engine }

func (r rulesRouter) Route(ev *event.Event, dst []storage.Target) []storage.Target {
	var buf [4]rules.Target
	set, version := r.e.Live() // the version is kept in the event's fate
	for _, t := range set.Match(ev, buf[:0]) {
		dst = append(dst, storage.Target{Function: t.Function, Rule: t.Rule, Data: t.Data, RuleVersion: version})
	}
	return dst
}

// startGateway builds every component, each from the ones it needs (storage, auth, rules,
// ingest, the broker, the functions, HTTP), then starts them; on error everything opened is
// closed.
func startGateway(cfg Config, resetRules bool, log *slog.Logger, logOut io.Writer) (g *gateway, err error) {
	g = &gateway{metrics: metrics.NewSet(), log: log}
	g.metrics.NewGauge("fleetgate_runtime_procs", func() float64 { return float64(runtime.GOMAXPROCS(0)) })
	g.procs = g.metrics.NewCounter("fleetgate_runtime_procs_changes_total")
	g.metrics.NewGauge("fleetgate_runtime_gc_percent", gcPercent)
	defer func() {
		if err != nil {
			g.shutdown(5 * time.Second)
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data_dir: %w", err)
	}
	if err := g.openStorage(cfg); err != nil {
		return g, err
	}
	g.revocations, err = auth.LoadRevocations(g.store, nil)
	if err != nil {
		return g, err
	}
	g.verifier, err = auth.New(cfg.Auth, auth.Options{
		DataDir: cfg.DataDir, Metrics: g.metrics, Logger: log.With("component", "auth"), Revocations: g.revocations,
	})
	if err != nil {
		return g, err
	}
	seed := cfg.Rules
	if len(seed) == 0 {
		seed = defaultRules()
	}
	ruleOpts := rules.EngineOptions{
		KV: g.store, Seed: seed, Compile: rules.CompileOptions{KnownFunction: functions.KnownIn(cfg.Functions)}, ResetToSeed: resetRules,
		Metrics: g.metrics, Logger: log.With("component", "rules"),
	}
	if g.node != nil {
		ruleOpts.Poll = time.Second // with the KV watch, rules applied on another node are live here at once; the poll is the fallback
	}
	g.rules, err = rules.NewEngine(ruleOpts)
	if err != nil {
		return g, err
	}
	g.ingest, err = ingest.New(ingest.Options{Store: g.store, Router: rulesRouter{g.rules}, Metrics: g.metrics, Logger: log})
	if err != nil {
		return g, err
	}
	bopts := broker.Options{
		Config: cfg.MQTT, Gateway: g.ingest, Auth: g.verifier, Store: g.store,
		// Device shadows publish their deltas through the broker they are built with.
		NewShadows: func(b *broker.Broker) (broker.Shadows, error) {
			var err error
			g.shadows, err = shadow.New(shadow.Options{
				KV: g.store, MaxBytes: cfg.Shadow.MaxBytes, Events: gatewayEvents{g.ingest}, Publisher: b,
				Metrics: g.metrics, Logger: log.With("component", "shadow"),
			})
			return g.shadows, err
		},
		Metrics: g.metrics, Logger: log.With("component", "mqtt"),
	}
	if g.node != nil {
		bopts.Cluster = g.node
		bopts.Node = g.node.Name() // presence events and the clients API name it
	}
	g.broker, err = broker.New(bopts)
	if err != nil {
		return g, err
	}
	g.dispatcher, err = functions.NewDispatcher(functions.Options{
		Store: g.store, Definitions: cfg.Functions, Publisher: g.broker,
		Reingest: func(ctx context.Context, events []*event.Event) error {
			return g.ingest.Accept(ctx, events, ingest.AcceptOptions{})
		},
		ErrorFunction: func(rule string) string {
			set, _ := g.rules.Live()
			return set.ErrorFunction(rule)
		},
		DataDir: cfg.DataDir, LogWriter: logOut, Metrics: g.metrics, Logger: log.With("component", "functions"),
	})
	if err != nil {
		return g, err
	}
	var consoleHandler fasthttp.RequestHandler
	if cfg.HTTP.Console {
		consoleHandler = console.Handler()
	}
	g.http, err = ingest.NewServer(ingest.ServerOptions{
		Config: cfg.HTTP, Gateway: g.ingest, Auth: g.verifier, Metrics: g.metrics, Logger: log.With("component", "http"),
		Console: consoleHandler,
		Ready:   g.ready,
	})
	if err != nil {
		return g, err
	}
	g.http.Mount(rules.AdminPrefix+"/", g.rules.AdminHandler())
	fh := g.dispatcher.AdminHandler()
	g.http.Mount("/admin/v1/functions/", fh)
	g.http.Mount("/admin/v1/dlq/", fh)
	g.http.Mount("/admin/v1/events/", fh)
	g.http.Mount("/admin/v1/publish/", g.broker.AdminHandler())
	g.http.Mount(broker.ClientsPath+"/", g.broker.ClientsHandler())
	if g.node != nil {
		g.http.Mount(cluster.AdminPath+"/", g.node.AdminHandler())
	} else {
		g.http.Mount(cluster.AdminPath+"/", cluster.NotClusteredHandler)
	}
	g.http.MountAPI(shadow.HTTPPrefix, g.shadows.Handler())
	g.http.Mount(ingest.RevocationsPath+"/", ingest.RevocationsHandler(g.revocations, g.broker, log.With("component", "auth")))
	// Go's profiler, for operators: curl -H "Authorization: Bearer $T" -o cpu.pprof http://HOST/admin/v1/debug/pprof/profile
	g.http.Mount("/admin/v1/debug/pprof/", func(ctx *fasthttp.RequestCtx) {
		ctx.Request.URI().SetPath(strings.TrimPrefix(string(ctx.Path()), "/admin/v1"))
		pprofhandler.PprofHandler(ctx)
	})

	// Everything is built: start, functions first (they catch up with what storage holds),
	// then the listeners.
	if err := g.dispatcher.Start(); err != nil {
		return g, err
	}
	if err := g.broker.Start(); err != nil {
		return g, err
	}
	if err := g.http.Start(); err != nil {
		return g, err
	}
	g.verifier.Start() // auth.jwks_url refresh
	return g, nil
}

// openStorage opens the durable log: Badger in data_dir, or in cluster mode the NATS node
// (embedded or external) and the JetStream log on it.
func (g *gateway) openStorage(cfg Config) error {
	fateTTL := cfg.Storage.FateTTL
	if fateTTL == 0 {
		fateTTL = -1 // storage.fate_ttl: 0 turns fates off (storage's own 0 means its default)
	}
	if !cfg.Cluster.Enabled() {
		mem := cfg.memoryPlan()
		st, err := storage.Open(storage.Options{
			Dir: filepath.Join(cfg.DataDir, "log"), MaxBytes: cfg.Storage.MaxBytes, MinFreeBytes: cfg.Storage.MinFreeBytes, MaxAge: cfg.Storage.MaxAge,
			IdempotencyTTL: cfg.Storage.IdempotencyTTL, FateTTL: fateTTL, CommitDelay: cfg.Storage.CommitDelay, AutoCommitDelay: cfg.Storage.AutoCommitDelay,
			MemTableBytes: mem.MemTableBytes, BlockCacheBytes: mem.BlockCacheBytes, MaxPendingBytes: mem.MaxPendingBytes,
			Metrics: g.metrics, Logger: g.log.With("component", "storage"),
		})
		if err != nil {
			return err
		}
		g.store = st
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	g.node, err = cluster.Start(ctx, cfg.Cluster, cluster.Options{DataDir: cfg.DataDir, Logger: g.log.With("component", "cluster"), Metrics: g.metrics})
	if err != nil {
		return err
	}
	cc := g.node.Config()
	names := []string{functions.LogFunction}
	for _, d := range cfg.Functions {
		names = append(names, d.Name)
	}
	lg, err := cluster.OpenLog(ctx, cluster.LogOptions{
		JS: g.node.JetStream(), Node: cc.Node, Replicas: cc.Replicas, Partitions: cc.Partitions, Failover: cc.Failover,
		Functions: names, IdempotencyTTL: cfg.Storage.IdempotencyTTL, Quorum: g.node.Quorum,
		Metrics: g.metrics, Logger: g.log.With("component", "cluster"),
	})
	if err != nil {
		return err
	}
	g.store = lg
	return nil
}

// ready is /readyz: storage answers and takes new events (disk not almost full, the log under
// storage.max_bytes, and in cluster mode a quorum of the replicas reachable).
func (g *gateway) ready() error {
	if _, _, err := g.store.Get("readyz"); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if err := g.store.Refusing(); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	return nil
}

// shutdown stops taking new work, lets in-flight appends and batches finish within timeout,
// and closes storage last.
func (g *gateway) shutdown(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	if g.http != nil {
		if err := g.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if g.broker != nil {
		if err := g.broker.Close(); err != nil {
			errs = append(errs, fmt.Errorf("mqtt: %w", err))
		}
	}
	if g.verifier != nil {
		g.verifier.Close()
	}
	if g.dispatcher != nil {
		if err := g.dispatcher.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("functions: %w", err))
		}
	}
	if g.store != nil {
		if err := g.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("storage: %w", err))
		}
	}
	if g.node != nil {
		if err := g.node.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cluster: %w", err))
		}
	}
	return errors.Join(errs...)
}

// setMemoryLimit sets the Go runtime's soft memory limit, unless GOMEMLIMIT is set (then
// memory_limit only sizes the log):
//   - memory_limit set: that limit, fixed (the operator's bound, e.g. under a container's);
//   - unset: a floor of storage.DefaultMemoryLimit that follows the live heap (twice it, see
//     softLimit), so that a small gateway returns the garbage of its bursts quickly, and a
//     large one (10 000 connections are about 160 MiB live) never has its collector running
//     all the time against a limit under its live memory.
//
// Unless GOGC is set, it also starts the GC tuner (internal/gctune), which sets GOGC from the
// allocation rate, giving the heap room for up to a quarter of the memory plan's limit of
// garbage; Stop it at shutdown.
func setMemoryLimit(cfg Config, log *slog.Logger) *gctune.Tuner {
	p := cfg.memoryPlan()
	var tuner *gctune.Tuner
	if env := os.Getenv("GOGC"); env != "" {
		log.Info("memory: GOGC is set; the collector runs at that setting", "GOGC", env)
	} else {
		tuner = gctune.Start(gctune.Options{MaxHeadroom: p.Limit / gcHeadroomShare})
	}
	if env := os.Getenv("GOMEMLIMIT"); env != "" {
		log.Info("memory: GOMEMLIMIT is set, memory_limit sizes only the log", "GOMEMLIMIT", env, "plan", p.String())
		return tuner
	}
	debug.SetMemoryLimit(p.Limit)
	if cfg.MemoryLimit != 0 {
		log.Info("memory", "plan", p.String())
		return tuner
	}
	log.Info("memory: no memory_limit; the log is sized as for the default, the soft limit follows the live heap", "plan", p.String())
	go func() {
		sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
		cur := p.Limit
		for range time.Tick(time.Second) {
			rtmetrics.Read(sample)
			if sample[0].Value.Kind() != rtmetrics.KindUint64 {
				return
			}
			if l := softLimit(p.Limit, int64(sample[0].Value.Uint64())); l != cur {
				debug.SetMemoryLimit(l)
				cur = l
			}
		}
	}()
	return tuner
}

// gcHeadroomShare: the GC tuner gives the heap room for at most 1/gcHeadroomShare of the memory
// plan's limit of garbage (32 MiB by default), however fast the gateway allocates. It replaced
// a ballast of a sixth of the limit (a never-touched block counted as live: 21 MiB), which
// gave every load 21 MiB more heap than its live memory called for: the gateway's peak RSS was
// 72–73 MB routing 10k MQTT messages/s to a function, 54 MB with the tuner (BENCHMARKS.md,
// issue 17's seventh round).
const gcHeadroomShare = 4

// gcPercent is the collector's GOGC setting (the GC tuner's, or GOGC's).
func gcPercent() float64 {
	s := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return float64(s[0].Value.Uint64())
}

// softLimit is the runtime's soft memory limit when memory_limit is unset: floor, or twice the
// live heap when that is more (the collector's own default target, GOGC=100).
func softLimit(floor, live int64) int64 { return max(floor, 2*live) }
