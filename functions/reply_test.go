package functions

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/internal/testutil"
	"github.com/fleetgate/fleetgate/storage"
)

// captureReplier records replies; it refuses those to topics starting with "forbidden/".
type captureReplier struct {
	capturePublisher
	mu      sync.Mutex
	replies []string // "<event id> <response topic> <payload>"
}

func (p *captureReplier) PublishReply(req *event.Event, payload []byte, qos byte) error {
	topic := req.Meta[MetaResponseTopic]
	if strings.HasPrefix(topic, "forbidden/") {
		return errors.Join(ErrReplyRefused, errors.New("not allowed"))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.replies = append(p.replies, req.ID+" "+topic+" "+string(payload))
	return nil
}

func (p *captureReplier) got() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.replies...)
}

// replyRegistry has a type "replier": for each event, a reply whose id is the event's data
// "id" member ("" when absent, "self" for the event's own id).
func replyRegistry() *Registry {
	reg := DefaultRegistry()
	reg.Register("replier", func(Definition, Env) (Invoker, error) {
		return InvokerFunc(func(_ context.Context, b *Batch) (Result, error) {
			var r Result
			for _, it := range b.Items {
				var d struct{ ID string }
				_ = json.Unmarshal(it.Event.Data, &d)
				if d.ID == "self" {
					d.ID = it.Event.ID
				}
				r.Publish = append(r.Publish, Output{Reply: true, ID: d.ID, Payload: json.RawMessage(`"pong"`), QoS: 1})
			}
			return r, nil
		}), nil
	})
	return reg
}

func appendRequests(t *testing.T, st *storage.Store, fn string, reqs ...[2]string) []string {
	t.Helper()
	var ids []string
	var entries []*storage.Entry
	for i, r := range reqs { // r: data, response topic
		e := &event.Event{ID: event.NewID(), Subject: "dev" + string(rune('a'+i)), Time: time.Now(), Data: []byte(r[0]),
			Protocol: event.ProtocolMQTT, Topic: "devices/x/req", Meta: map[string]string{}}
		if r[1] != "" {
			e.Meta[MetaResponseTopic] = r[1]
		}
		ids = append(ids, e.ID)
		entries = append(entries, &storage.Entry{Event: e, Targets: []storage.Target{{Function: fn, Rule: "r"}}})
	}
	if err := st.Append(context.Background(), entries); err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestReplyOutputs(t *testing.T) {
	st := openStore(t, "")
	defer st.Close()
	pub := &captureReplier{}
	set := metrics.NewSet()
	startDispatcher(t, Options{Store: st, Registry: replyRegistry(), Publisher: pub, Metrics: set, Definitions: []Definition{
		{Name: "rr", Type: "replier", Retry: fastRetry(3), Batch: BatchPolicy{MaxEvents: 2, MaxWait: time.Hour}},
	}})
	refused := func() float64 {
		return testutil.MetricValue(t, set, `fleetgate_function_outputs_total{function="rr",result="refused"}`)
	}

	// A batch of two: one reply names its event, one does not (refused: ambiguous).
	ids := appendRequests(t, st, "rr", [2]string{`{"id":"self"}`, "devices/a/responses"}, [2]string{`{}`, "devices/b/responses"})
	waitFor(t, 5*time.Second, "batch of two done", func() bool { return st.QueueDepth("rr") == 0 })
	if got := pub.got(); len(got) != 1 || got[0] != ids[0]+" devices/a/responses pong" {
		t.Fatalf("replies %q", got)
	}
	if v := refused(); v != 1 {
		t.Fatalf("refused %v, want 1", v)
	}
	// A batch of two where neither may go: an id not in the batch, a forbidden response topic.
	appendRequests(t, st, "rr", [2]string{`{"id":"nope"}`, "devices/c/responses"}, [2]string{`{"id":"self"}`, "forbidden/x"})
	waitFor(t, 5*time.Second, "refused replies counted", func() bool { return refused() == 3 })
	// An event without a response topic cannot be answered; nor a publisher that cannot reply.
	appendRequests(t, st, "rr", [2]string{`{"id":"self"}`, ""}, [2]string{`{"id":"self"}`, ""})
	waitFor(t, 5*time.Second, "no response topic", func() bool { return refused() == 5 })
	if len(pub.got()) != 1 || len(pub.all()) != 0 {
		t.Fatalf("replies %q, publishes %v", pub.got(), pub.all())
	}
	if v := testutil.MetricValue(t, set, `fleetgate_function_outputs_total{function="rr",result="dropped"}`); v != 0 {
		t.Fatalf("dropped %v: refused replies are not retried", v)
	}
}

func TestReplyWithoutReplier(t *testing.T) {
	st := openStore(t, "")
	defer st.Close()
	set := metrics.NewSet()
	startDispatcher(t, Options{Store: st, Registry: replyRegistry(), Publisher: &capturePublisher{}, Metrics: set, Definitions: []Definition{
		{Name: "rr", Type: "replier", Batch: BatchPolicy{MaxEvents: 1}},
	}})
	appendRequests(t, st, "rr", [2]string{`{}`, "devices/a/responses"})
	waitFor(t, 5*time.Second, "refused", func() bool {
		return testutil.MetricValue(t, set, `fleetgate_function_outputs_total{function="rr",result="refused"}`) == 1
	})
}

func TestParseResultReply(t *testing.T) {
	r, err := ParseResult([]byte(`{"publish":[{"reply":true,"id":"01J","payload":{"ok":1},"qos":1},{"reply":true,"payload":"x"}]}`))
	if err != nil || len(r.Publish) != 2 || !r.Publish[0].Reply || r.Publish[0].ID != "01J" || r.Publish[1].ID != "" {
		t.Fatalf("%+v %v", r, err)
	}
	for _, bad := range []string{
		`{"publish":[{"reply":true,"topic":"a/b","payload":1}]}`,
		`{"publish":[{"reply":true,"retain":true,"payload":1}]}`,
		`{"publish":[{"reply":true,"qos":3,"payload":1}]}`,
		`{"publish":[{"id":"01J","topic":"a/b","payload":1}]}`,
	} {
		if _, err := ParseResult([]byte(bad)); !errors.Is(err, ErrBadResponse) {
			t.Errorf("ParseResult(%s): %v, want ErrBadResponse", bad, err)
		}
	}
}
