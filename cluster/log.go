package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// Names of the JetStream objects behind the log.
const (
	eventsStream  = "FLEETGATE_EVENTS" // subjects fg.ev.<partition>: every accepted event, once
	deadStream    = "FLEETGATE_DLQ"    // subjects fg.dlq.<function token>: dead letters
	kvBucket      = "FLEETGATE_KV"     // the small KV (rules, sessions, retained, revocations, shadows)
	eventsSubject = "fg.ev."
	// untargetedSubject takes the events no rule chose a function for: stored like the others
	// (acknowledged once a quorum has them, their idempotency key remembered), and gone at once
	// as no queue is interested in them (the stream keeps messages while a queue wants them).
	untargetedSubject = "fg.none"
	deadSubject       = "fg.dlq."
	priorityGroup     = "fleetgate"
	consumerPre       = "fn_"
)

// LogOptions configure OpenLog.
type LogOptions struct {
	JS         jetstream.JetStream
	Node       string
	Replicas   int           // of every stream and bucket (default 3)
	Partitions int           // sender partitions of each function's queue (default 8)
	Failover   time.Duration // how long a silent node keeps its work before another takes it (default 15s)
	// Functions are the configured functions (the built-in "log" included): their queues
	// exist from the start, so no event accepted before the dispatcher runs is missed.
	Functions      []string
	IdempotencyTTL time.Duration // JetStream's duplicate window (default 24h)
	// Quorum reports whether this node can write (nil: always assumed); writes are refused
	// with its error, which wraps storage.ErrNoQuorum.
	Quorum  func() error
	Metrics *metrics.Set
	Logger  *slog.Logger
}

func (o *LogOptions) setDefaults() {
	if o.Replicas <= 0 {
		o.Replicas = 3
	}
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	if o.Failover <= 0 {
		o.Failover = 15 * time.Second
	}
	if o.IdempotencyTTL <= 0 {
		o.IdempotencyTTL = 24 * time.Hour
	}
	if o.Metrics == nil {
		o.Metrics = metrics.NewSet()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Log is the durable log of cluster mode: storage.Backend on NATS JetStream.
//
//   - Every event is one message on FLEETGATE_EVENTS (subject fg.ev.<p>, p a hash of the
//     sender), stored on a quorum of Replicas before Append returns; its idempotency key is
//     the message id, so duplicates are refused cluster-wide within IdempotencyTTL. A request
//     of several events is one atomic batch: all stored, or none.
//   - Each function has one durable consumer per partition, pinned to one node at a time
//     (JetStream's pinned-client priority group): every batch is invoked by exactly one node,
//     and a sender's events stay in order. A node that stops pulling (dies) loses the pin
//     after Failover; its unacknowledged messages are redelivered, first, to the next node.
//   - Dead letters are messages on FLEETGATE_DLQ, one subject per function.
//   - The KV is the bucket FLEETGATE_KV.
//
// Items handed to the dispatcher carry a per-function sequence of this node's deliveries (Seq),
// so the dispatcher's ordering logic works unchanged.
type Log struct {
	opts   LogOptions
	js     jetstream.JetStream
	events jetstream.Stream
	dead   jetstream.Stream
	kv     jetstream.KeyValue
	log    *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	mu       sync.Mutex
	onCommit atomic.Pointer[func([]*storage.Entry)]
	fns      map[string]*fnQueue

	depthMu sync.Mutex
	depths  map[string]depth // cached, refreshed at most once a second

	appended, duplicates, refused *metrics.Counter
	groupSize                     *metrics.Histogram

	appendCh chan *appendReq // appends waiting for the committer
}

type depth struct {
	queued, dead int64
	at           time.Time
}

// OpenLog creates (or checks) the streams, consumers and bucket and returns the log. An
// existing stream with other replicas is refused: every node must be configured alike.
func OpenLog(ctx context.Context, opts LogOptions) (*Log, error) {
	opts.setDefaults()
	if opts.JS == nil {
		return nil, errors.New("cluster log: no JetStream")
	}
	l := &Log{opts: opts, js: opts.JS, log: opts.Logger, fns: map[string]*fnQueue{}, depths: map[string]depth{}}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	// At a cluster's first start every node creates the same streams at once, and the meta
	// group may still be settling: retry what times out, saying so, until ctx ends.
	err := l.retry(ctx, "creating the streams", func(ctx context.Context) (err error) {
		l.events, err = l.ensureStream(ctx, jetstream.StreamConfig{
			Name: eventsStream, Description: "fleetgate: accepted events",
			Subjects: []string{eventsSubject + "*", untargetedSubject}, Retention: jetstream.InterestPolicy, Storage: jetstream.FileStorage,
			Replicas: opts.Replicas, Duplicates: opts.IdempotencyTTL, AllowAtomicPublish: true,
			MaxMsgSize: 16 << 20,
		})
		if err != nil {
			return err
		}
		l.dead, err = l.ensureStream(ctx, jetstream.StreamConfig{
			Name: deadStream, Description: "fleetgate: dead letters",
			Subjects: []string{deadSubject + "*"}, Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			Replicas: opts.Replicas, MaxMsgSize: 16 << 20,
		})
		if err != nil {
			return err
		}
		l.kv, err = l.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: kvBucket, Description: "fleetgate: rules, sessions, retained messages, revocations, device state",
			History: 1, Storage: jetstream.FileStorage, Replicas: opts.Replicas,
		})
		if err != nil {
			return l.wrap("creating the KV bucket "+kvBucket, err)
		}
		for _, fn := range opts.Functions {
			if err := l.ensureConsumers(ctx, fn); err != nil {
				return err
			}
		}
		// Not ready before the streams can take writes: a stream just created (or whose
		// leader's node is gone) elects its leader first.
		for _, st := range []jetstream.Stream{l.events, l.dead} {
			info, err := st.Info(ctx)
			if err != nil {
				return l.wrap("reading stream "+st.CachedInfo().Config.Name, err)
			}
			if info.Cluster != nil && info.Cluster.Leader == "" {
				return fmt.Errorf("stream %s: %w (its leader is not elected yet)", info.Config.Name, storage.ErrNoQuorum)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s := opts.Metrics
	l.appended = s.GetOrCreateCounter(`fleetgate_cluster_log_appended_total`)
	l.duplicates = s.GetOrCreateCounter(`fleetgate_cluster_log_duplicates_total`)
	l.refused = s.GetOrCreateCounter(`fleetgate_cluster_log_refused_total`)
	l.groupSize = s.GetOrCreateHistogram(`fleetgate_cluster_log_group_events`)
	l.appendCh = make(chan *appendReq, 4096)
	l.wg.Add(2)
	go l.keepAlive()
	go l.committer()
	return l, nil
}

// retry runs fn until it succeeds, fails with something other than a timeout, or ctx ends.
func (l *Log) retry(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(actx)
		cancel()
		if err == nil || !errors.Is(err, storage.ErrNoQuorum) || ctx.Err() != nil {
			return err
		}
		l.log.Warn("cluster: "+what+": JetStream did not answer in time; trying again", "attempt", attempt,
			"waited", time.Since(start).Round(time.Second), "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(min(time.Duration(attempt)*500*time.Millisecond, 5*time.Second)):
		}
	}
}

// ensureStream creates the stream or checks the existing one agrees on what must not differ.
func (l *Log) ensureStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	st, err := l.js.Stream(ctx, cfg.Name)
	if err == nil {
		have := st.CachedInfo().Config
		if have.Replicas != cfg.Replicas {
			return nil, fmt.Errorf("cluster: stream %s has %d replicas but this node is configured with cluster.replicas %d: "+
				"every node must use the same replicas (or change the stream's replicas with the nats CLI first)",
				cfg.Name, have.Replicas, cfg.Replicas)
		}
		return st, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, l.wrap("looking up stream "+cfg.Name, err)
	}
	st, err = l.js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return l.ensureStream(ctx, cfg) // another node created it meanwhile
	}
	if err != nil {
		return nil, l.wrap("creating stream "+cfg.Name, err)
	}
	return st, nil
}

// fnToken is a subject token and name part for a function (names are any strings).
func fnToken(fn string) string {
	h := sha256.Sum256([]byte(fn))
	return hex.EncodeToString(h[:10])
}

func consumerName(fn string, p int) string { return consumerPre + fnToken(fn) + "_" + strconv.Itoa(p) }

func (l *Log) ensureConsumers(ctx context.Context, fn string) error {
	ackWait := l.ackWait()
	for p := 0; p < l.opts.Partitions; p++ {
		_, err := l.events.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable: consumerName(fn, p), Description: "fleetgate function " + fn,
			FilterSubject: eventsSubject + strconv.Itoa(p), AckPolicy: jetstream.AckExplicitPolicy,
			AckWait: ackWait, MaxDeliver: -1, MaxAckPending: 4096, DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas: l.opts.Replicas, Metadata: map[string]string{"function": fn, "partition": strconv.Itoa(p)},
			PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{priorityGroup}, PinnedTTL: l.opts.Failover,
		})
		if err != nil {
			return l.wrap("creating the queue of function "+fn, err)
		}
	}
	return nil
}

// ackWait is how long a delivered message may go without a sign of life before JetStream
// redelivers it: shorter than the pin's TTL, so that a dead node's messages are due again
// before the next node is pinned and are redelivered ahead of newer ones (per-sender order).
func (l *Log) ackWait() time.Duration { return l.opts.Failover * 2 / 3 }

// partition of an event: all of one sender's events share one.
func (l *Log) partition(ev *event.Event) int {
	h := fnv.New32a()
	h.Write([]byte(ev.Tenant))
	h.Write([]byte{0})
	h.Write([]byte(ev.Subject))
	return int(h.Sum32() % uint32(l.opts.Partitions))
}

// wrap turns JetStream's errors into storage's: no quorum, closed, or as is.
func (l *Log) wrap(what string, err error) error {
	switch {
	case l.closed.Load():
		return fmt.Errorf("%s: %w", what, storage.ErrClosed)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, jetstream.ErrNoHeartbeat), errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoStreamResponse):
		return fmt.Errorf("%s: %w (%v)", what, storage.ErrNoQuorum, err)
	}
	var apiErr *jetstream.APIError
	// 10005: no suitable peers for placement (a peer not yet, or no longer, seen online).
	if errors.As(err, &apiErr) && (apiErr.Code == 503 || apiErr.ErrorCode == jetstream.JSErrCodeJetStreamNotEnabledForAccount ||
		apiErr.ErrorCode == 10005) {
		return fmt.Errorf("%s: %w (%v)", what, storage.ErrNoQuorum, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// writable is nil when this node may write.
func (l *Log) writable() error {
	if l.closed.Load() {
		return storage.ErrClosed
	}
	if l.opts.Quorum != nil {
		return l.opts.Quorum()
	}
	return nil
}

// Refusing implements storage.Backend.
func (l *Log) Refusing() error { return l.writable() }

// Append implements storage.Backend.
func (l *Log) Append(ctx context.Context, entries []*storage.Entry) error {
	done := make(chan error, 1)
	l.AppendAsync(entries, func(err error) { done <- err })
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// appendTimeout bounds how long an append waits for JetStream's "stored on a quorum": past it
// the sender is refused (503 / 0x97) and retries, on another node if it likes.
const appendTimeout = 5 * time.Second

// Group commit: appends that arrive while one is being stored are stored together, as one
// JetStream atomic batch, which JetStream fsyncs once (with sync: always a message alone is
// one fsync each). One committer keeps the order of appends, so one sender's events are stored
// in the order it sent them.
const (
	maxGroupEvents = maxAtomicBatch
	maxGroupBytes  = 4 << 20
)

type appendReq struct {
	entries []*storage.Entry
	bytes   int
	done    func(error)
}

// AppendAsync implements storage.Backend.
func (l *Log) AppendAsync(entries []*storage.Entry, done func(error)) {
	if len(entries) == 0 {
		done(nil)
		return
	}
	if err := l.writable(); err != nil {
		l.refused.Add(len(entries))
		done(err)
		return
	}
	size := 0
	for _, e := range entries {
		if e.Event == nil {
			done(fmt.Errorf("appending: %w: entry without event", storage.ErrInvalid))
			return
		}
		if e.Event.ID == "" {
			e.Event.ID = event.NewID()
		}
		size += e.Event.Size()
	}
	if size > maxGroupBytes/2 {
		done(fmt.Errorf("appending %d bytes: %w", size, storage.ErrTooLarge))
		return
	}
	select {
	case l.appendCh <- &appendReq{entries: entries, bytes: size, done: done}:
	case <-l.ctx.Done():
		done(storage.ErrClosed)
	}
}

// committer stores the queued appends, group by group.
func (l *Log) committer() {
	defer l.wg.Done()
	var next *appendReq
	for {
		r := next
		next = nil
		if r == nil {
			select {
			case r = <-l.appendCh:
			case <-l.ctx.Done():
				l.failQueued()
				return
			}
		}
		group := []*appendReq{r}
		n, size := len(r.entries), r.bytes
	collect:
		for n < maxGroupEvents {
			select {
			case r2 := <-l.appendCh:
				if n+len(r2.entries) > maxGroupEvents || size+r2.bytes > maxGroupBytes {
					next = r2
					break collect
				}
				group = append(group, r2)
				n, size = n+len(r2.entries), size+r2.bytes
			default:
				break collect
			}
		}
		l.commit(group, n)
	}
}

func (l *Log) failQueued() {
	for {
		select {
		case r := <-l.appendCh:
			r.done(storage.ErrClosed)
		default:
			return
		}
	}
}

func (l *Log) commit(group []*appendReq, n int) {
	all := group[0].entries
	if len(group) > 1 {
		all = make([]*storage.Entry, 0, n)
		for _, r := range group {
			all = append(all, r.entries...)
		}
	}
	ctx, cancel := context.WithTimeout(l.ctx, appendTimeout)
	var err error
	if len(all) == 1 {
		err = l.publishOne(ctx, all[0])
	} else {
		err = l.publishBatch(ctx, all)
	}
	cancel()
	if err != nil {
		l.refused.Add(len(all))
	} else {
		for _, e := range all {
			if e.Duplicate {
				l.duplicates.Inc()
			} else {
				l.appended.Inc()
			}
		}
	}
	l.groupSize.Update(float64(len(all)))
	for _, r := range group {
		r.done(err)
	}
}

func (l *Log) message(e *storage.Entry) *nats.Msg {
	subj := untargetedSubject // stored (and its id remembered), but no queue reads it
	if len(e.Targets) > 0 {
		subj = eventsSubject + strconv.Itoa(l.partition(e.Event))
	}
	m := nats.NewMsg(subj)
	m.Data = storage.AppendEntry(nil, e)
	if e.IdempotencyKey != "" {
		m.Header.Set(jetstream.MsgIDHeader, e.IdempotencyKey)
	}
	return m
}

func (l *Log) publishOne(ctx context.Context, e *storage.Entry) error {
	ack, err := l.js.PublishMsg(ctx, l.message(e))
	if err != nil {
		return l.wrap("appending an event", err)
	}
	return l.acked(ctx, e, ack.Sequence, ack.Duplicate)
}

// acked records the stream sequence of e; a duplicate takes the id of the event stored first.
func (l *Log) acked(ctx context.Context, e *storage.Entry, seq uint64, dup bool) error {
	e.Seq = seq
	if !dup {
		return nil
	}
	e.Duplicate = true
	if m, err := l.events.GetMsg(ctx, seq); err == nil {
		if first, err := storage.DecodeEntry(m.Data); err == nil {
			e.Event.ID = first.Event.ID
		}
	} // else: the first is delivered and gone; the ids given for this copy stand
	return nil
}

// maxAtomicBatch is JetStream's default limit of messages in one atomic batch.
const maxAtomicBatch = 1000

// packBytes bounds one packed message (an external NATS has a 1 MiB max_payload by default).
const packBytes = 256 << 10

// pack turns entries into messages: an entry with an idempotency key is a message of its own
// (its key is JetStream's message id, checked cluster-wide); the others are packed, those of one
// subject (partition) together, in order. A subject's order is kept: its pack is closed before
// a keyed entry of that subject, and later entries go to a new pack after it. owner[i] is the
// message index of entries[i].
func (l *Log) pack(entries []*storage.Entry) (msgs []*nats.Msg, owner []int) {
	type open struct {
		idx     int
		entries []*storage.Entry
		bytes   int
	}
	packs := map[string]*open{}
	var members [][]*storage.Entry
	owner = make([]int, len(entries))
	for i, e := range entries {
		m := l.message(e)
		if e.IdempotencyKey != "" {
			delete(packs, m.Subject)
			owner[i] = len(msgs)
			msgs = append(msgs, m)
			members = append(members, nil)
			continue
		}
		size := e.Event.Size()
		op := packs[m.Subject]
		if op == nil || op.bytes+size > packBytes {
			op = &open{idx: len(msgs)}
			packs[m.Subject] = op
			msgs = append(msgs, m)
			members = append(members, nil)
		}
		op.entries = append(op.entries, e)
		op.bytes += size
		members[op.idx] = op.entries
		owner[i] = op.idx
	}
	for i, es := range members {
		if len(es) > 1 {
			msgs[i].Data = storage.AppendPack(nil, es)
		}
	}
	return msgs, owner
}

// publishBatch stores entries as one JetStream atomic batch of packed messages: all or
// nothing. A batch with an idempotency key seen before is refused whole by JetStream; it is
// then stored event by event, each one idempotent on its own.
func (l *Log) publishBatch(ctx context.Context, entries []*storage.Entry) error {
	msgs, owner := l.pack(entries)
	if len(msgs) > maxAtomicBatch {
		return l.publishEach(ctx, entries)
	}
	if len(msgs) == 1 {
		ack, err := l.js.PublishMsg(ctx, msgs[0])
		if err != nil {
			return l.wrap("appending a batch", err)
		}
		for _, e := range entries {
			e.Seq = ack.Sequence
		}
		return nil
	}
	id := nats.NewInbox()[len(nats.InboxPrefix):]
	nc := l.js.Conn()
	var reply *nats.Msg
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := nc.PublishMsg(m); err != nil {
				return l.wrap("appending a batch", err)
			}
			continue
		}
		m.Header.Set("Nats-Batch-Commit", "1")
		var err error
		if reply, err = nc.RequestMsgWithContext(ctx, m); err != nil {
			return l.wrap("appending a batch", err)
		}
	}
	var ack struct {
		Sequence  uint64              `json:"seq"`
		BatchSize int                 `json:"count"`
		Error     *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return l.wrap("appending a batch", err)
	}
	if ack.Error != nil {
		if strings.Contains(strings.ToLower(ack.Error.Description), "duplicate") {
			return l.publishEach(ctx, entries)
		}
		return l.wrap("appending a batch", ack.Error)
	}
	if ack.BatchSize != len(msgs) {
		return l.wrap("appending a batch", fmt.Errorf("JetStream stored %d of %d messages", ack.BatchSize, len(msgs)))
	}
	// The commit's ack names the last message's sequence; a batch is stored contiguously.
	first := ack.Sequence - uint64(len(msgs)) + 1
	for i, e := range entries {
		e.Seq = first + uint64(owner[i])
	}
	return nil
}

func (l *Log) publishEach(ctx context.Context, entries []*storage.Entry) error {
	for _, e := range entries {
		if err := l.publishOne(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// SetOnCommit implements storage.Backend.
func (l *Log) SetOnCommit(fn func(committed []*storage.Entry)) {
	if fn == nil {
		l.onCommit.Store(nil)
		return
	}
	l.onCommit.Store(&fn)
}

// hook is the dispatcher's hook, or nil; read on every delivery, so without a lock.
func (l *Log) hook() func([]*storage.Entry) {
	if fn := l.onCommit.Load(); fn != nil {
		return *fn
	}
	return nil
}

// fnQueue is this node's side of one function's queue: the messages delivered to it (by the
// partitions pinned to it) and not yet acknowledged, by local Seq.
type fnQueue struct {
	l    *Log
	name string

	// handMu makes handing items to the dispatcher one at a time: an item's Seq is taken and
	// the hook called under it, so the hook sees this queue's Seqs in increasing order (the
	// dispatcher skips an item whose Seq is not above the last it saw, as already read). The
	// partitions' handlers run concurrently: without it, a later Seq could reach the hook
	// first and the earlier one be skipped, held here (and kept alive) forever.
	handMu sync.Mutex
	mu     sync.Mutex
	seq    uint64
	held   map[uint64]*heldItem
	cons   []jetstream.ConsumeContext
	parts  []*partState
}

// heldItem is one item handed to the dispatcher; ref is its message, shared by the items of
// one pack.
type heldItem struct {
	item storage.Item
	ref  *heldMsg
}

// heldMsg is a message this node holds: acknowledged once every item of it for this function
// is finished.
type heldMsg struct {
	msg     jetstream.Msg
	left    int       // items of it not yet finished
	touched time.Time // delivered, or last told "in progress"
	part    int
}

// queue returns the function's queue on this node, consuming its partitions from now on.
func (l *Log) queue(fn string) (*fnQueue, error) {
	l.mu.Lock()
	q := l.fns[fn]
	if q != nil {
		l.mu.Unlock()
		return q, nil
	}
	q = &fnQueue{l: l, name: fn, held: map[uint64]*heldItem{}, parts: make([]*partState, l.opts.Partitions)}
	for p := range q.parts {
		q.parts[p] = &partState{}
	}
	l.fns[fn] = q
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(l.ctx, 2*kvTimeout)
	defer cancel()
	if err := l.ensureConsumers(ctx, fn); err != nil {
		l.mu.Lock()
		delete(l.fns, fn)
		l.mu.Unlock()
		return nil, err
	}
	for p := 0; p < l.opts.Partitions; p++ {
		c, err := l.events.Consumer(ctx, consumerName(fn, p))
		if err != nil {
			return nil, l.wrap("opening the queue of "+fn, err)
		}
		q.mu.Lock()
		q.parts[p].cons = c
		q.mu.Unlock()
		cc, err := c.Consume(q.deliverTo(p), jetstream.PullPriorityGroup(priorityGroup), jetstream.PullMaxMessages(256),
			jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
				if !l.closed.Load() && !errors.Is(err, jetstream.ErrPinIDMismatch) {
					l.log.Debug("cluster: pulling a queue", "function", fn, "err", err)
				}
			}))
		if err != nil {
			return nil, l.wrap("consuming the queue of "+fn, err)
		}
		q.mu.Lock()
		q.cons = append(q.cons, cc)
		q.mu.Unlock()
	}
	return q, nil
}

// partState is this node's view of one partition of a function's queue.
type partState struct {
	cons jetstream.Consumer
	last time.Time // when the last message arrived
	// gating: this node has just started receiving the partition (at start, or taking it over
	// from a node that went silent). Messages the previous holder had and did not acknowledge
	// are redelivered to us, but JetStream may send newer ones first (a new consumer leader
	// restarts its redelivery timers): until every unacknowledged message of the partition is
	// here, arrivals wait in buffer and are then handed over in stream order, so that a
	// sender's events keep their order across a failover.
	gating bool
	buffer []jetstream.Msg
	held   int // messages of this partition in q.held
}

// deliverTo returns the message handler of partition p.
func (q *fnQueue) deliverTo(p int) jetstream.MessageHandler {
	return func(m jetstream.Msg) {
		q.mu.Lock()
		ps := q.parts[p]
		now := time.Now()
		if !ps.gating && (ps.last.IsZero() || now.Sub(ps.last) > q.l.ackWait()) {
			ps.gating = true
			q.l.wg.Add(1)
			go q.gate(p)
		}
		ps.last = now
		if ps.gating {
			ps.buffer = append(ps.buffer, m)
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		q.accept(p, m)
	}
}

// gate waits until every unacknowledged message of partition p is on this node, then hands
// the buffered ones over in stream order. The partition stays gated until its buffer is
// empty: a message arriving meanwhile joins the buffer rather than overtaking older ones.
func (q *fnQueue) gate(p int) {
	defer q.l.wg.Done()
	ps := q.parts[p]
	deadline := time.Now().Add(2 * q.l.opts.Failover)
	for {
		select {
		case <-q.l.ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(q.l.ctx, 2*time.Second)
		info, err := ps.cons.Info(ctx)
		cancel()
		q.mu.Lock()
		here := ps.held + len(ps.buffer)
		if err == nil && info.NumAckPending > here && time.Now().Before(deadline) {
			q.mu.Unlock()
			continue
		}
		if err != nil || info.NumAckPending > here {
			q.l.log.Warn("cluster: a partition's earlier messages did not all come back in time; going on (order of their senders may differ)",
				"function", q.name, "partition", p, "err", err)
		}
		q.mu.Unlock()
		q.release(p)
		return
	}
}

// release hands partition p's buffered messages over in stream order, then ungates it.
func (q *fnQueue) release(p int) {
	ps := q.parts[p]
	for {
		q.mu.Lock()
		buf := ps.buffer
		ps.buffer = nil
		if len(buf) == 0 {
			ps.gating = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		slices.SortFunc(buf, func(a, b jetstream.Msg) int {
			return cmp.Compare(streamSeq(a), streamSeq(b))
		})
		for _, m := range buf {
			q.accept(p, m)
		}
	}
}

func streamSeq(m jetstream.Msg) uint64 {
	md, err := m.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

// accept hands the events of one message of partition p to the dispatcher, or acknowledges
// the message when none is for this function.
func (q *fnQueue) accept(p int, m jetstream.Msg) {
	entries, err := storage.DecodeEntries(m.Data())
	if err != nil {
		q.l.log.Error("cluster: unreadable event skipped", "function", q.name, "err", err)
		_ = m.Term()
		return
	}
	var hot []*storage.Entry
	ref := &heldMsg{msg: m, touched: time.Now(), part: p}
	q.handMu.Lock()
	defer q.handMu.Unlock()
	q.mu.Lock()
	for _, e := range entries {
		var t *storage.Target
		for i := range e.Targets {
			if e.Targets[i].Function == q.name {
				t = &e.Targets[i] // the last one, as one node's store keeps one entry per function
			}
		}
		if t == nil {
			continue
		}
		q.seq++
		it := storage.ItemFromEntry(e, *t)
		it.Seq = q.seq
		q.held[it.Seq] = &heldItem{item: it, ref: ref}
		ref.left++
		hot = append(hot, &storage.Entry{Event: e.Event, Targets: []storage.Target{*t}, Seq: it.Seq})
	}
	if len(hot) > 0 {
		q.parts[p].held++
	}
	q.mu.Unlock()
	// From here on ref is take's (under q.mu): a Delivered may already be finishing these items.
	if len(hot) == 0 {
		_ = m.Ack() // not for this function
		return
	}
	if fn := q.l.hook(); fn != nil {
		fn(hot)
	}
}

// take finishes the held items of seqs and returns the messages that have no item left.
func (q *fnQueue) take(seqs []uint64) []jetstream.Msg {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]jetstream.Msg, 0, len(seqs))
	for _, s := range seqs {
		h := q.held[s]
		if h == nil {
			continue
		}
		delete(q.held, s)
		if h.ref.left--; h.ref.left == 0 {
			out = append(out, h.ref.msg)
			q.parts[h.ref.part].held--
		}
	}
	return out
}

// keepAlive tells JetStream, for every message held on this node, that it is still being worked
// on, so that only a node that stops (dies) has its messages redelivered.
func (l *Log) keepAlive() {
	defer l.wg.Done()
	t := time.NewTicker(max(l.ackWait()/6, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
		}
		l.mu.Lock()
		qs := make([]*fnQueue, 0, len(l.fns))
		for _, q := range l.fns {
			qs = append(qs, q)
		}
		l.mu.Unlock()
		// Only messages held for a third of the ack wait need it: most are acknowledged long
		// before, and are never touched.
		old := time.Now().Add(-l.ackWait() / 3)
		for _, q := range qs {
			q.mu.Lock()
			var msgs []jetstream.Msg
			for _, h := range q.held {
				if h.ref.touched.Before(old) {
					msgs = append(msgs, h.ref.msg)
					h.ref.touched = time.Now()
				}
			}
			for _, ps := range q.parts {
				msgs = append(msgs, ps.buffer...) // waiting at a gate: short, touched each tick
			}
			q.mu.Unlock()
			for _, m := range msgs {
				_ = m.InProgress()
			}
		}
	}
}

// ReadQueue implements storage.Backend: the items held on this node for function.
func (l *Log) ReadQueue(function string, afterSeq uint64, max int) ([]storage.Item, error) {
	if l.closed.Load() {
		return nil, storage.ErrClosed
	}
	q, err := l.queue(function)
	if err != nil {
		return nil, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var seqs []uint64
	for s := range q.held {
		if s > afterSeq {
			seqs = append(seqs, s)
		}
	}
	slices.Sort(seqs)
	if max > 0 && len(seqs) > max {
		seqs = seqs[:max]
	}
	out := make([]storage.Item, len(seqs))
	for i, s := range seqs {
		out[i] = q.held[s].item
	}
	return out, nil
}

// Delivered implements storage.Backend: the messages are acknowledged to JetStream.
func (l *Log) Delivered(function string, items []storage.Item) error {
	q, err := l.queue(function)
	if err != nil {
		return err
	}
	seqs := make([]uint64, len(items))
	for i, it := range items {
		seqs[i] = it.Seq
	}
	var errs []error
	for _, m := range q.take(seqs) {
		if err := m.Ack(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// Not acknowledged: JetStream delivers them again (at least once).
		return l.wrap("acknowledging deliveries of "+function, errors.Join(errs...))
	}
	return nil
}

// DeadLetter implements storage.Backend: each letter is stored on FLEETGATE_DLQ, then its
// event acknowledged (a failure in between delivers it again: at least once).
func (l *Log) DeadLetter(function string, letters []storage.DeadLetter) error {
	q, err := l.queue(function)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*kvTimeout)
	defer cancel()
	for _, dl := range letters {
		q.mu.Lock()
		h := q.held[dl.Seq]
		q.mu.Unlock()
		if h == nil {
			continue
		}
		it := dl.Item
		if it.Event == nil {
			it = h.item
		}
		dl.Item = it
		if _, err := l.js.Publish(ctx, deadSubject+fnToken(function), storage.AppendDeadLetter(nil, dl)); err != nil {
			return l.wrap("dead-lettering an event of "+function, err)
		}
		for _, m := range q.take([]uint64{dl.Seq}) {
			_ = m.Ack()
		}
	}
	l.forgetDepth(function)
	return nil
}

// deadMsgs reads function's dead letters with stream sequence > after (up to max; 0: all).
func (l *Log) deadMsgs(ctx context.Context, function string, after uint64, max int) ([]storage.DeadLetter, error) {
	subj := deadSubject + fnToken(function)
	lastMsg, err := l.dead.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, l.wrap("reading dead letters of "+function, err)
	}
	lastSeq := lastMsg.Sequence
	if lastSeq <= after {
		return nil, nil
	}
	c, err := l.dead.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subj}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: after + 1,
	})
	if err != nil {
		return nil, l.wrap("reading dead letters of "+function, err)
	}
	var out []storage.DeadLetter
	slow := false // a fetch that found nothing yet: wait a little once before giving up
	last := after // the last stream sequence read
	for {
		want := 256
		if max > 0 {
			want = min(want, max-len(out))
		}
		if want <= 0 {
			break
		}
		var batch jetstream.MessageBatch
		if slow {
			batch, err = c.Fetch(want, jetstream.FetchMaxWait(500*time.Millisecond))
		} else {
			batch, err = c.FetchNoWait(want)
		}
		if err != nil {
			return nil, l.wrap("reading dead letters of "+function, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			last = md.Sequence.Stream
			dl, err := storage.DecodeDeadLetter(m.Data())
			if err != nil {
				l.log.Error("cluster: unreadable dead letter skipped", "function", function, "seq", last, "err", err)
				continue
			}
			dl.Seq = last
			out = append(out, dl)
		}
		if last >= lastSeq || (n == 0 && slow) {
			break
		}
		slow = n == 0
	}
	return out, nil
}

// lettersOf returns function's dead letters: all of them (seqs nil), or those of seqs, each
// read by its sequence, in ascending order. Sequences that are not function's dead letters (or
// no longer exist) are left out.
func (l *Log) lettersOf(ctx context.Context, function string, seqs []uint64) ([]storage.DeadLetter, error) {
	if seqs == nil {
		return l.deadMsgs(ctx, function, 0, 0)
	}
	subj := deadSubject + fnToken(function)
	seqs = slices.Clone(seqs)
	slices.Sort(seqs)
	var out []storage.DeadLetter
	for _, seq := range slices.Compact(seqs) {
		m, err := l.dead.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, l.wrap("reading dead letters of "+function, err)
		}
		if m.Subject != subj {
			continue // another function's
		}
		dl, err := storage.DecodeDeadLetter(m.Data)
		if err != nil {
			l.log.Error("cluster: unreadable dead letter skipped", "function", function, "seq", seq, "err", err)
			continue
		}
		dl.Seq = seq
		out = append(out, dl)
	}
	return out, nil
}

// DeadLetters implements storage.Backend.
func (l *Log) DeadLetters(function string, afterSeq uint64, max int) ([]storage.DeadLetter, error) {
	if l.closed.Load() {
		return nil, storage.ErrClosed
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*kvTimeout)
	defer cancel()
	return l.deadMsgs(ctx, function, afterSeq, max)
}

// Replay implements storage.Backend: each dead letter goes back on the shared queue, as an
// event for function alone, then leaves the dead letters. The items come back with Seq 0:
// they arrive through the queue, on whichever node holds its partition.
func (l *Log) Replay(function string, seqs []uint64) ([]storage.Item, error) {
	if err := l.writable(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*kvTimeout)
	defer cancel()
	letters, err := l.lettersOf(ctx, function, seqs)
	if err != nil {
		return nil, err
	}
	var out []storage.Item
	for _, dl := range letters {
		it := dl.Item
		t := storage.Target{Function: function, Rule: it.Rule, RuleVersion: it.RuleVersion}
		if !sameData(it) {
			t.Data = it.Data
		}
		e := &storage.Entry{Event: it.Event, Targets: []storage.Target{t}}
		if err := l.publishOne(ctx, e); err != nil {
			return out, err
		}
		if err := l.dead.DeleteMsg(ctx, dl.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, l.wrap("replaying a dead letter of "+function, err)
		}
		it.Seq = 0
		out = append(out, it)
	}
	l.forgetDepth(function)
	return out, nil
}

func sameData(it storage.Item) bool {
	return it.Event != nil && string(it.Data) == string(it.Event.Data)
}

// PurgeDeadLetters implements storage.Backend.
func (l *Log) PurgeDeadLetters(function string, before time.Time, seqs []uint64) (int, error) {
	if err := l.writable(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*kvTimeout)
	defer cancel()
	if before.IsZero() && seqs == nil {
		info, err := l.dead.Info(ctx, jetstream.WithSubjectFilter(deadSubject+fnToken(function)))
		if err != nil {
			return 0, l.wrap("purging dead letters of "+function, err)
		}
		n := info.State.Subjects[deadSubject+fnToken(function)]
		if err := l.dead.Purge(ctx, jetstream.WithPurgeSubject(deadSubject+fnToken(function))); err != nil {
			return 0, l.wrap("purging dead letters of "+function, err)
		}
		l.forgetDepth(function)
		return int(n), nil
	}
	letters, err := l.lettersOf(ctx, function, seqs)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, dl := range letters {
		if !before.IsZero() && !dl.At.Before(before) {
			continue
		}
		if err := l.dead.DeleteMsg(ctx, dl.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return n, l.wrap("purging dead letters of "+function, err)
		}
		n++
	}
	l.forgetDepth(function)
	return n, nil
}

// DropQueue implements storage.Backend: the function's consumers and dead letters are deleted.
func (l *Log) DropQueue(function string) (queued, dead int, err error) {
	if err := l.writable(); err != nil {
		return 0, 0, err
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*kvTimeout)
	defer cancel()
	queued = int(l.QueueDepth(function))
	for p := 0; p < l.opts.Partitions; p++ {
		if err := l.events.DeleteConsumer(ctx, consumerName(function, p)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return 0, 0, l.wrap("dropping the queue of "+function, err)
		}
	}
	dead, err = l.PurgeDeadLetters(function, time.Time{}, nil)
	l.log.Warn("cluster: queue dropped", "function", function, "queued", queued, "dead_letters", dead)
	return queued, dead, err
}

func (l *Log) forgetDepth(function string) {
	l.depthMu.Lock()
	delete(l.depths, function)
	l.depthMu.Unlock()
}

// depth returns function's cached depths, refreshed when older than a second. The queue depth
// counts the events of its partitions not yet acknowledged by it, including events that were
// not for it and are skipped when read: in cluster mode it is an upper bound.
func (l *Log) depth(function string) depth {
	l.depthMu.Lock()
	d, ok := l.depths[function]
	l.depthMu.Unlock()
	if ok && time.Since(d.at) < time.Second || l.closed.Load() {
		return d
	}
	ctx, cancel := context.WithTimeout(l.ctx, 2*time.Second)
	defer cancel()
	d = depth{at: time.Now()}
	for p := 0; p < l.opts.Partitions; p++ {
		c, err := l.events.Consumer(ctx, consumerName(function, p))
		if err != nil {
			continue
		}
		info := c.CachedInfo()
		if fresh, err := c.Info(ctx); err == nil {
			info = fresh
		}
		d.queued += int64(info.NumPending) + int64(info.NumAckPending)
	}
	subj := deadSubject + fnToken(function)
	if info, err := l.dead.Info(ctx, jetstream.WithSubjectFilter(subj)); err == nil {
		d.dead = int64(info.State.Subjects[subj])
	}
	l.depthMu.Lock()
	l.depths[function] = d
	l.depthMu.Unlock()
	return d
}

// QueueDepth implements storage.Backend.
func (l *Log) QueueDepth(function string) int64 { return l.depth(function).queued }

// DeadLetterDepth implements storage.Backend.
func (l *Log) DeadLetterDepth(function string) int64 { return l.depth(function).dead }

// Functions implements storage.Backend: the functions with a queue in the cluster.
func (l *Log) Functions() []string {
	ctx, cancel := context.WithTimeout(l.ctx, 5*time.Second)
	defer cancel()
	seen := map[string]bool{}
	lister := l.events.ListConsumers(ctx)
	for info := range lister.Info() {
		if fn := info.Config.Metadata["function"]; fn != "" && strings.HasPrefix(info.Name, consumerPre) {
			seen[fn] = true
		}
	}
	out := make([]string, 0, len(seen))
	for fn := range seen {
		out = append(out, fn)
	}
	sort.Strings(out)
	return out
}

// Fate implements storage.Backend: cluster mode keeps no per-event fate records.
func (l *Log) Fate(id string) (storage.Fate, error) {
	return storage.Fate{}, fmt.Errorf("event fates: %w in cluster mode (JetStream keeps no per-event index)", storage.ErrUnsupported)
}

// Close stops consuming (held messages are redelivered after the ack wait, to this node
// after a restart or to another) and closes the log. The NATS connection is the caller's.
func (l *Log) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	l.mu.Lock()
	qs := make([]*fnQueue, 0, len(l.fns))
	for _, q := range l.fns {
		qs = append(qs, q)
	}
	l.mu.Unlock()
	for _, q := range qs {
		q.mu.Lock()
		for _, c := range q.cons {
			c.Stop()
		}
		// Give back what was not started: NAK lets another node take them at once.
		naked := map[*heldMsg]bool{}
		for _, h := range q.held {
			if !naked[h.ref] {
				naked[h.ref] = true
				_ = h.ref.msg.Nak()
			}
		}
		for _, ps := range q.parts {
			for _, m := range ps.buffer {
				_ = m.Nak()
			}
			ps.buffer = nil
		}
		q.held = map[uint64]*heldItem{}
		q.mu.Unlock()
	}
	// The acknowledgements and NAKs sent so far reach the server before the caller closes the
	// connection: a graceful stop redelivers nothing that was delivered.
	_ = l.js.Conn().FlushTimeout(2 * time.Second)
	l.cancel()
	l.wg.Wait()
	return nil
}

var _ storage.Backend = (*Log)(nil)
