package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// KV is the small durable key-value store rule versions live in (satisfied by *storage.Store).
type KV interface {
	Get(key string) (value []byte, found bool, err error)
	Put(key string, value []byte) error // durable
	Delete(key string) error
	Scan(prefix string, fn func(key string, value []byte) error) error // keys in ascending order
}

// versionPrefix is the KV key prefix of stored rule-set versions: versionPrefix + %020d.
const versionPrefix = "rules/v/"

// DefaultKeep is how many rule-set versions are kept when EngineOptions.Keep is zero.
const DefaultKeep = 10

func versionKey(v int) string { return fmt.Sprintf("%s%020d", versionPrefix, v) }

// storedVersion is the JSON kept in the KV for each rule-set version.
type storedVersion struct {
	Version   int       `json:"version"`
	AppliedAt time.Time `json:"applied_at"`
	Rules     []Rule    `json:"rules"`
	// RollbackOf is the version this one restored (0 for an ordinary apply).
	RollbackOf int `json:"rollback_of,omitempty"`
}

// EngineOptions configure NewEngine.
type EngineOptions struct {
	KV      KV
	Seed    []Rule // the config file's rules: version 1 when the KV holds no version yet
	Compile CompileOptions
	Keep    int // versions kept (0: DefaultKeep)
	// ResetToSeed replaces a stored rule set by Seed (as a new version; older ones are kept),
	// for a stored set that no longer validates, e.g. after a function was removed.
	ResetToSeed bool
	// Poll, when set, re-reads the stored versions this often and makes a newer one live: in
	// cluster mode the KV is shared, and a rule set applied on another node takes effect here.
	Poll    time.Duration
	Metrics *metrics.Set
	Logger  *slog.Logger
}

// RuleStats are a rule's counters since the process started.
type RuleStats struct {
	Matched uint64 `json:"matched"` // topic filter matched (enabled rules only)
	Passed  uint64 `json:"passed"`  // and when held: its functions were chosen
	Errors  uint64 `json:"errors"`  // evaluation errors (counted as no match)
}

type ruleStats struct {
	matched, passed, errors *metrics.Counter
}

func (s *ruleStats) incMatched() {
	if s != nil {
		s.matched.Inc()
	}
}

func (s *ruleStats) incPassed() {
	if s != nil {
		s.passed.Inc()
	}
}

func (s *ruleStats) incErrors() {
	if s != nil {
		s.errors.Inc()
	}
}

// instruments are the engine-wide counters a Set updates while matching.
type instruments struct {
	payloadParsed  *metrics.Counter
	payloadInvalid *metrics.Counter
}

func (in *instruments) parsed(ok bool) {
	if in == nil {
		return
	}
	in.payloadParsed.Inc()
	if !ok {
		in.payloadInvalid.Inc()
	}
}

// Stats returns the counters of the rule with the given id (zero for a set that does not
// belong to an Engine).
func (s *Set) Stats(id string) (RuleStats, bool) {
	i, ok := s.byID[id]
	if !ok {
		return RuleStats{}, false
	}
	st := s.compiled[i].stats
	if st == nil {
		return RuleStats{}, true
	}
	return RuleStats{Matched: st.matched.Get(), Passed: st.passed.Get(), Errors: st.errors.Get()}, true
}

type liveSet struct {
	set        *Set
	version    int
	appliedAt  time.Time
	rollbackOf int
}

// Engine holds the live rule set, keeps its versions in a KV and swaps edits in atomically:
// every Match sees one whole set, the old or the new, never a mix.
type Engine struct {
	kv   KV
	opts CompileOptions
	keep int
	ms   *metrics.Set
	log  *slog.Logger
	inst *instruments

	mu   sync.Mutex // serializes Apply and Delete
	live atomic.Pointer[liveSet]

	poll      bool
	stopWatch func()        // ends the KV watch (EngineOptions.Poll with a KV that can watch)
	stop      chan struct{} // closed by Close: ends the poll loop
	stopOnce  sync.Once
	pollDone  chan struct{}

	applied  *metrics.Counter
	rejected *metrics.Counter
	applyDur *metrics.PrometheusHistogram
}

// NewEngine loads the latest rule-set version from the KV; if there is none, it compiles
// Seed and stores it as version 1. A stored version that no longer compiles (say a function
// it names was removed from the config) is an error naming every problem.
func NewEngine(opts EngineOptions) (*Engine, error) {
	if opts.KV == nil {
		return nil, fmt.Errorf("rules: %w", ErrNoKV)
	}
	e := &Engine{kv: opts.KV, opts: opts.Compile, keep: opts.Keep, ms: opts.Metrics, log: opts.Logger, poll: opts.Poll > 0}
	if e.keep <= 0 {
		e.keep = DefaultKeep
	}
	if e.ms == nil {
		e.ms = metrics.NewSet()
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	e.inst = &instruments{
		payloadParsed:  e.ms.GetOrCreateCounter("fleetgate_rules_payload_parsed_total"),
		payloadInvalid: e.ms.GetOrCreateCounter("fleetgate_rules_payload_invalid_total"),
	}
	e.applied = e.ms.GetOrCreateCounter("fleetgate_rules_applied_total")
	e.rejected = e.ms.GetOrCreateCounter("fleetgate_rules_rejected_total")
	e.applyDur = e.ms.GetOrCreatePrometheusHistogram("fleetgate_rules_apply_duration_seconds")

	latest, found, err := e.loadLatest()
	if err != nil {
		return nil, err
	}
	if found && opts.ResetToSeed {
		set, err := e.compile(opts.Seed)
		if err != nil {
			return nil, fmt.Errorf("rules: config rules: %w", err)
		}
		ls := &liveSet{set: set, version: latest.Version + 1, appliedAt: time.Now().UTC()}
		if err := e.store(ls); err != nil {
			return nil, err
		}
		e.live.Store(ls)
		e.log.Warn("stored rules replaced by the config's rules (--reset-rules)", "version", ls.version, "replaced_version", latest.Version, "rules", set.Len())
	} else if found {
		set, err := e.compile(latest.Rules)
		if err != nil {
			return nil, fmt.Errorf("rules: stored rule set version %d no longer validates with this config: add the missing functions back to the config, or start once with --reset-rules to replace the stored set with the config's rules: %w", latest.Version, err)
		}
		e.live.Store(&liveSet{set: set, version: latest.Version, appliedAt: latest.AppliedAt})
		e.log.Info("rules loaded", "version", latest.Version, "rules", set.Len())
	} else {
		set, err := e.compile(opts.Seed)
		if err != nil {
			return nil, fmt.Errorf("rules: config rules: %w", err)
		}
		ls := &liveSet{set: set, version: 1, appliedAt: time.Now().UTC()}
		err = e.store(ls)
		if errors.Is(err, ErrConflict) {
			// Another node of the cluster seeded version 1 first: use what it stored.
			// It may take a moment to be visible to a listing here (a replica catching up).
			var latest storedVersion
			found := false
			err = nil
			for try := 0; try < 50 && err == nil && !found; try++ {
				if try > 0 {
					time.Sleep(100 * time.Millisecond)
				}
				latest, found, err = e.loadLatest()
			}
			if err != nil {
				return nil, fmt.Errorf("rules: reading the version another node seeded: %w", err)
			}
			if !found {
				return nil, errors.New("rules: another node seeded version 1, but it cannot be read here after 5 s; start again")
			}
			if set, err = e.compile(latest.Rules); err != nil {
				return nil, fmt.Errorf("rules: the rule set another node seeded (version %d) does not validate with this config: %w", latest.Version, err)
			}
			ls = &liveSet{set: set, version: latest.Version, appliedAt: latest.AppliedAt}
		} else if err != nil {
			return nil, err
		}
		e.live.Store(ls)
		e.log.Info("rules seeded from config", "version", ls.version, "rules", set.Len())
	}
	e.ms.GetOrCreateGauge("fleetgate_rules_version", func() float64 { return float64(e.live.Load().version) })
	e.ms.GetOrCreateGauge("fleetgate_rules_count", func() float64 { return float64(e.live.Load().set.Len()) })
	e.stop, e.pollDone = make(chan struct{}), make(chan struct{})
	if opts.Poll > 0 {
		changed := make(chan struct{}, 1)
		if w, ok := opts.KV.(interface {
			Watch(prefix string, fn func()) (stop func(), err error)
		}); ok {
			// A shared KV that tells of changes: a new version is live here as soon as it is
			// stored; the poll stays as the fallback.
			stopWatch, err := w.Watch(versionPrefix, func() {
				select {
				case changed <- struct{}{}:
				default:
				}
			})
			if err != nil {
				e.log.Warn("rules: watching the stored versions failed; polling only", "err", err)
			} else {
				e.stopWatch = stopWatch
			}
		}
		go e.pollLoop(opts.Poll, changed)
	} else {
		close(e.pollDone)
	}
	return e, nil
}

// Close stops the poll loop (EngineOptions.Poll). The engine keeps matching.
func (e *Engine) Close() {
	e.stopOnce.Do(func() {
		if e.stopWatch != nil {
			e.stopWatch()
		}
		close(e.stop)
	})
	<-e.pollDone
}

// pollLoop makes the newest stored version live when another node stored it.
func (e *Engine) pollLoop(every time.Duration, changed <-chan struct{}) {
	defer close(e.pollDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		case <-changed:
		}
		if err := e.refresh(); err != nil {
			e.log.Warn("rules: reading the stored rule set", "err", err)
		}
	}
}

// refresh makes the newest stored version live if it is newer than the live one (a rule set
// applied on another node of a cluster).
func (e *Engine) refresh() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refreshLocked()
}

func (e *Engine) refreshLocked() error {
	latest, found, err := e.loadLatest()
	if err != nil || !found || latest.Version <= e.live.Load().version {
		return err
	}
	set, err := e.compile(latest.Rules)
	if err != nil {
		return fmt.Errorf("rules: version %d, applied on another node, does not validate here (are the nodes' function configs the same?): %w", latest.Version, err)
	}
	old := e.live.Swap(&liveSet{set: set, version: latest.Version, appliedAt: latest.AppliedAt})
	e.forgetRemoved(old.set, set)
	e.log.Info("rules: a newer version applied elsewhere is live", "version", latest.Version, "rules", set.Len())
	return nil
}

func (e *Engine) loadLatest() (storedVersion, bool, error) {
	var lastKey string
	var last []byte
	err := e.kv.Scan(versionPrefix, func(key string, value []byte) error {
		lastKey, last = key, append(last[:0], value...)
		return nil
	})
	if err != nil {
		return storedVersion{}, false, fmt.Errorf("rules: reading stored versions: %w", err)
	}
	if lastKey == "" {
		return storedVersion{}, false, nil
	}
	var sv storedVersion
	if err := json.Unmarshal(last, &sv); err != nil {
		return storedVersion{}, false, fmt.Errorf("rules: %w: %s: %v", ErrCorruptVersion, lastKey, err)
	}
	if n, err := strconv.Atoi(strings.TrimPrefix(lastKey, versionPrefix)); err != nil || n != sv.Version {
		return storedVersion{}, false, fmt.Errorf("rules: %w: key %s holds version %d", ErrCorruptVersion, lastKey, sv.Version)
	}
	return sv, true, nil
}

// compile compiles rules and binds the engine's counters to them.
func (e *Engine) compile(rules []Rule) (*Set, error) {
	set, err := Compile(rules, e.opts)
	if err != nil {
		return nil, err
	}
	set.inst = e.inst
	for _, cr := range set.compiled {
		cr.stats = &ruleStats{
			matched: e.ms.GetOrCreateCounter(ruleMetric("fleetgate_rule_matched_total", cr.id)),
			passed:  e.ms.GetOrCreateCounter(ruleMetric("fleetgate_rule_passed_total", cr.id)),
			errors:  e.ms.GetOrCreateCounter(ruleMetric("fleetgate_rule_eval_errors_total", cr.id)),
		}
	}
	return set, nil
}

// ruleMetric names a per-rule metric; ids are validated to [A-Za-z0-9_.:-], safe in a label.
func ruleMetric(name, id string) string { return name + `{rule="` + id + `"}` }

func (e *Engine) store(ls *liveSet) error {
	b, err := json.Marshal(storedVersion{Version: ls.version, AppliedAt: ls.appliedAt, Rules: ls.set.rules, RollbackOf: ls.rollbackOf})
	if err != nil {
		return fmt.Errorf("rules: encoding version %d: %w", ls.version, err)
	}
	put := e.kv.Put
	if c, ok := e.kv.(interface{ Create(string, []byte) error }); ok {
		put = c.Create // a shared KV (cluster): two nodes never store the same version number
	}
	if err := put(versionKey(ls.version), b); err != nil {
		if errors.Is(err, storage.ErrExists) {
			return fmt.Errorf("rules: version %d was just applied on another node: %w; look at it and apply again", ls.version, ErrConflict)
		}
		return fmt.Errorf("rules: storing version %d: %w", ls.version, err)
	}
	return nil
}

// Match appends the targets the live rule set chooses for ev (see Set.Match). It is safe for
// concurrent use and takes no lock.
func (e *Engine) Match(ev *event.Event, dst []Target) []Target {
	return e.live.Load().set.Match(ev, dst)
}

// Live returns the live rule set and its version.
func (e *Engine) Live() (set *Set, version int) {
	ls := e.live.Load()
	return ls.set, ls.version
}

// Apply validates and compiles rules, stores them durably as the next version, then makes
// them live in one atomic swap. On any error (a *ValidationError listing every problem, or a
// storage error) the live set and the stored versions are unchanged.
func (e *Engine) Apply(rules []Rule) (version int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.applyLocked(rules, 0)
}

func (e *Engine) applyLocked(rules []Rule, rollbackOf int) (int, error) {
	start := time.Now()
	set, err := e.compile(rules)
	if err != nil {
		e.rejected.Inc()
		return 0, err
	}
	if e.poll {
		// Another node may have applied a version not yet polled: number after it.
		if err := e.refreshLocked(); err != nil {
			e.log.Warn("rules: reading the stored rule set before applying", "err", err)
		}
	}
	old := e.live.Load()
	ls := &liveSet{set: set, version: old.version + 1, appliedAt: time.Now().UTC(), rollbackOf: rollbackOf}
	if err := e.store(ls); err != nil {
		e.rejected.Inc()
		return 0, err
	}
	e.live.Store(ls)
	e.applied.Inc()
	e.applyDur.UpdateDuration(start)
	e.forgetRemoved(old.set, set)
	e.prune(ls.version)
	if rollbackOf > 0 {
		e.log.Info("rules rolled back", "version", ls.version, "rollback_of", rollbackOf, "rules", set.Len())
	} else {
		e.log.Info("rules applied", "version", ls.version, "rules", set.Len())
	}
	return ls.version, nil
}

// forgetRemoved unregisters the counters of rules that are gone.
func (e *Engine) forgetRemoved(old, cur *Set) {
	for id := range old.byID {
		if _, ok := cur.byID[id]; ok {
			continue
		}
		for _, name := range []string{"fleetgate_rule_matched_total", "fleetgate_rule_passed_total", "fleetgate_rule_eval_errors_total"} {
			e.ms.UnregisterMetric(ruleMetric(name, id))
		}
	}
}

// prune deletes stored versions older than the last e.keep. Failing to prune is logged, not
// returned: the new version is already durable and live.
func (e *Engine) prune(latest int) {
	var stale []string
	oldest := versionKey(latest - e.keep + 1)
	err := e.kv.Scan(versionPrefix, func(key string, _ []byte) error {
		if key < oldest {
			stale = append(stale, key)
		}
		return nil
	})
	if err != nil {
		e.log.Warn("rules: listing old versions", "err", err)
		return
	}
	for _, k := range stale {
		if err := e.kv.Delete(k); err != nil {
			e.log.Warn("rules: deleting old version", "key", k, "err", err)
			return
		}
	}
}

// Delete removes one rule by id as a new version (see Apply). ErrNotFound if there is none.
func (e *Engine) Delete(id string) (version int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur := e.live.Load().set
	i, ok := cur.byID[id]
	if !ok {
		return 0, fmt.Errorf("rules: deleting %q: %w", id, ErrNotFound)
	}
	rules := make([]Rule, 0, len(cur.rules)-1)
	rules = append(rules, cur.rules[:i]...)
	rules = append(rules, cur.rules[i+1:]...)
	return e.applyLocked(rules, 0)
}

// Versions lists the stored rule-set versions, oldest first.
func (e *Engine) Versions() ([]int, error) {
	var out []int
	err := e.kv.Scan(versionPrefix, func(key string, _ []byte) error {
		if n, err := strconv.Atoi(strings.TrimPrefix(key, versionPrefix)); err == nil {
			out = append(out, n)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rules: listing versions: %w", err)
	}
	return out, nil
}

// Validate checks rules as Apply would (a *ValidationError listing every problem), without
// storing them or touching any counter.
func (e *Engine) Validate(rules []Rule) error {
	_, err := Compile(rules, e.opts)
	return err
}

// VersionInfo describes one stored rule-set version (see Engine.History).
type VersionInfo struct {
	Version    int       `json:"version"`
	AppliedAt  time.Time `json:"applied_at"`
	RuleCount  int       `json:"rule_count"`            // how many rules it holds
	RollbackOf int       `json:"rollback_of,omitempty"` // the version it restored, if a rollback
	Live       bool      `json:"live"`                  // the live set
}

// StoredVersion is one stored rule-set version with its rules (see Engine.Version).
type StoredVersion struct {
	VersionInfo
	Rules []Rule `json:"rules"`
}

// History lists the stored rule-set versions (the last EngineOptions.Keep), newest first.
func (e *Engine) History() ([]VersionInfo, error) {
	_, live := e.Live()
	var out []VersionInfo
	err := e.kv.Scan(versionPrefix, func(key string, value []byte) error {
		var sv storedVersion
		if err := json.Unmarshal(value, &sv); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrCorruptVersion, key, err)
		}
		out = append(out, VersionInfo{Version: sv.Version, AppliedAt: sv.AppliedAt, RuleCount: len(sv.Rules),
			RollbackOf: sv.RollbackOf, Live: sv.Version == live})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("rules: listing versions: %w", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// Version returns a stored rule-set version with its rules; ErrNoVersion if it is not kept.
func (e *Engine) Version(version int) (StoredVersion, error) {
	sv, err := e.loadVersion(version)
	if err != nil {
		return StoredVersion{}, err
	}
	_, live := e.Live()
	return StoredVersion{
		VersionInfo: VersionInfo{Version: sv.Version, AppliedAt: sv.AppliedAt, RuleCount: len(sv.Rules), RollbackOf: sv.RollbackOf, Live: sv.Version == live},
		Rules:       sv.Rules,
	}, nil
}

func (e *Engine) loadVersion(version int) (storedVersion, error) {
	if version <= 0 {
		return storedVersion{}, fmt.Errorf("rules: version %d: %w", version, ErrNoVersion)
	}
	b, found, err := e.kv.Get(versionKey(version))
	if err != nil {
		return storedVersion{}, fmt.Errorf("rules: reading version %d: %w", version, err)
	}
	if !found {
		return storedVersion{}, fmt.Errorf("rules: version %d: %w", version, ErrNoVersion)
	}
	var sv storedVersion
	if err := json.Unmarshal(b, &sv); err != nil {
		return storedVersion{}, fmt.Errorf("rules: %w: version %d: %v", ErrCorruptVersion, version, err)
	}
	return sv, nil
}

// Rollback makes the rules of a stored version live again, as a new version (history only
// grows; the new version records which one it restored). Like Apply, the rules are validated
// against the current functions first: on any error nothing changes.
func (e *Engine) Rollback(version int) (newVersion int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sv, err := e.loadVersion(version)
	if err != nil {
		return 0, err
	}
	return e.applyLocked(sv.Rules, sv.Version)
}
