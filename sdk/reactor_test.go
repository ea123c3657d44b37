package sdk

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const batch = `[{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"dev1","data":{"temp":41}},
	{"specversion":"1.0","id":"b","source":"s","type":"t","data_base64":"AAE="}]`

func TestServeAnswers(t *testing.T) {
	t.Cleanup(func() { Register(nil) })
	f := func(h Handler, in, want string) {
		t.Helper()
		Register(h)
		buf := allocBatch(uint32(len(in)))
		copy(buf, in)
		if got := string(serve(buf)); got != want {
			t.Errorf("answer = %s, want %s", got, want)
		}
	}
	ok := func([]Event) (Result, error) { return Result{}, nil }
	f(ok, batch, "")
	f(func(ev []Event) (Result, error) {
		var r Result
		if string(ev[1].Payload()) != "\x00\x01" || ev[0].Subject != "dev1" {
			t.Errorf("events decoded as %+v", ev)
		}
		r.Fail(ev[1].ID)
		return r, r.Emit("devices/"+ev[0].Subject+"/alerts", map[string]int{"temp": 41}, 1)
	}, batch, `{"failed":["b"],"publish":[{"topic":"devices/dev1/alerts","payload":{"temp":41},"qos":1}]}`)
	f(func(ev []Event) (Result, error) {
		var r Result
		return r, r.Reply(ev[0].ID, "pong", 1)
	}, batch, `{"publish":[{"payload":"pong","qos":1,"reply":true,"id":"a"}]}`)
	f(func([]Event) (Result, error) { return Result{}, errors.New(`too "hot"`) }, batch, `{"error":"too \"hot\""}`)
	f(func([]Event) (Result, error) { panic("boom") }, batch, `{"error":"sdk: handler panicked: boom"}`)
	f(nil, batch, `{"error":"`+ErrNoHandler.Error()+`"}`)
	Register(ok)
	if a := string(serve([]byte(`{`))); !strings.Contains(a, `"error":"sdk: decoding batch`) {
		t.Errorf("bad batch answer = %s", a)
	}
}

func TestAllocBatchReusesItsBuffer(t *testing.T) {
	a := allocBatch(10)
	b := allocBatch(4000)
	if &a[0] != &b[0] || len(b) != 4000 {
		t.Fatal("a batch that fits must reuse the buffer")
	}
	c := allocBatch(10000)
	if len(c) != 10000 || cap(inBuf) < 10000 {
		t.Fatalf("buffer not grown: len %d cap %d", len(c), cap(inBuf))
	}
	if len(allocBatch(0)) != 0 || cap(inBuf) == 0 {
		t.Fatal("allocBatch(0) must still leave a buffer with an address")
	}
}

// FuzzServe: whatever the batch bytes, serve answers nothing, a result or an error object, and
// never panics.
func FuzzServe(f *testing.F) {
	f.Add([]byte(batch))
	f.Add([]byte(`[]`))
	f.Add([]byte(`[{"data_base64":"!!"}]`))
	Register(func(ev []Event) (Result, error) {
		var r Result
		for _, e := range ev {
			var v any
			if e.Decode(&v) != nil {
				r.Fail(e.ID)
			}
		}
		return r, nil
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		out := serve(in)
		if len(out) == 0 {
			return
		}
		var a struct {
			Error  *string `json:"error"`
			Failed []string
		}
		if err := json.Unmarshal(out, &a); err != nil {
			t.Fatalf("answer %q is not JSON: %v", out, err)
		}
	})
}
