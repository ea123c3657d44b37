package functions

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/fleetgate/fleetgate/event"
	"github.com/fleetgate/fleetgate/storage"
)

// A rule's error function receives a copy of each event the rule's functions dead-letter, with
// the reason; the dead letters stay; the error function's own dead letters do not loop back,
// and max_hops stops the copies.
func TestErrorFunctionReceivesDeadLetters(t *testing.T) {
	strict := newFnServer(t, func(_ int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		ctx.SetStatusCode(422)
		ctx.SetBodyString("bad reading")
	})
	var mu sync.Mutex
	var got []map[string]any
	errs := newFnServer(t, func(_ int, _ []ceEvent, ctx *fasthttp.RequestCtx) {
		var evs []map[string]any
		if err := json.Unmarshal(ctx.PostBody(), &evs); err != nil {
			t.Error(err)
		}
		mu.Lock()
		got = append(got, evs...)
		mu.Unlock()
		ctx.SetStatusCode(422) // the error function fails too: its dead letters must not loop
	})
	st := openStore(t, t.TempDir())
	defer st.Close()
	def := httpDef("strict", strict.URL)
	def.Retry = fastRetry(2)
	def.MaxHops = 1
	edef := httpDef("errors", errs.URL)
	edef.Retry = fastRetry(1)
	startDispatcher(t, Options{Store: st, Definitions: []Definition{def, edef},
		ErrorFunction: func(rule string) string {
			if rule == "r1" {
				return "errors"
			}
			return ""
		}})
	ids := appendEvents(t, st, "strict", 0, 3, 3)
	// One more event that has already been through a function: past strict's max_hops of 1.
	hopped := &event.Event{ID: event.NewID(), Source: "fleetgate://functions/x", Type: "fleetgate.function.output", Subject: "dev9",
		Time: time.Now(), ContentType: "application/json", Data: []byte(`{"n":9}`), Topic: "devices/dev9/telemetry", Hops: 1}
	if err := st.Append(context.Background(), []*storage.Entry{{Event: hopped, Targets: []storage.Target{{Function: "strict", Rule: "r1"}}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "strict's dead letters", func() bool { return st.DeadLetterDepth("strict") == 4 })
	waitFor(t, 10*time.Second, "the error function's dead letters", func() bool { return st.DeadLetterDepth("errors") == 3 })
	waitFor(t, 5*time.Second, "queues empty", func() bool { return st.QueueDepth("strict") == 0 && st.QueueDepth("errors") == 0 })
	mu.Lock()
	defer mu.Unlock()
	byOrig := map[string]map[string]any{}
	for _, e := range got {
		byOrig[e["erroreventid"].(string)] = e
	}
	if len(byOrig) != 3 {
		t.Fatalf("error function received copies of %d events, want 3: %v", len(byOrig), got)
	}
	for _, id := range ids {
		e := byOrig[id]
		if e == nil {
			t.Fatalf("no copy of %s", id)
		}
		if e["type"] != ErrorEventType || e["id"] == id || e["errorfunction"] != "strict" || e["errorattempts"] != "2" ||
			e["erroreventtype"] != "fleetgate.mqtt.publish" || e["rule"] != "r1" || e["topic"] == nil || e["data"] == nil {
			t.Fatalf("copy = %v", e)
		}
		if r, _ := e["errorreason"].(string); !strings.Contains(r, "422") || !strings.Contains(r, "bad reading") {
			t.Fatalf("reason = %q", r)
		}
	}
	if byOrig[hopped.ID] != nil {
		t.Fatal("a copy was sent past max_hops")
	}
}
