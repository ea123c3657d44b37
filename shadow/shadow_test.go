package shadow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

func newService(t *testing.T, maxBytes int) (*Service, *recorder) {
	t.Helper()
	rec := &recorder{}
	s, err := New(Options{KV: newMemKV(), MaxBytes: maxBytes, Events: rec, Publisher: rec, Now: func() time.Time { return time.Unix(1000, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	return s, rec
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMergeDeltaAndMetadata(t *testing.T) {
	f := func(steps []string, wantState, wantMeta string) {
		t.Helper()
		doc := Empty()
		for i, body := range steps {
			u, err := ParseUpdate([]byte(body))
			if err != nil {
				t.Fatalf("step %d %s: %v", i, body, err)
			}
			doc = Apply(doc, u, int64(10+i))
		}
		if got := jsonOf(t, doc.State); got != wantState {
			t.Errorf("%v:\nstate %s\nwant  %s", steps, got, wantState)
		}
		if got := jsonOf(t, doc.Metadata); wantMeta != "" && got != wantMeta {
			t.Errorf("%v:\nmetadata %s\nwant     %s", steps, got, wantMeta)
		}
		if doc.Version != int64(len(steps)) {
			t.Errorf("version %d after %d updates", doc.Version, len(steps))
		}
	}
	f([]string{`{"state":{"reported":{"temp":21,"fan":1}}}`},
		`{"reported":{"fan":1,"temp":21},"desired":{},"delta":{}}`,
		`{"reported":{"fan":{"timestamp":10},"temp":{"timestamp":10}},"desired":{}}`)
	f([]string{`{"state":{"reported":{"fan":1}}}`, `{"state":{"desired":{"fan":3}}}`},
		`{"reported":{"fan":1},"desired":{"fan":3},"delta":{"fan":3}}`, "")
	// Equal values leave no delta; nested objects compare field by field.
	f([]string{`{"state":{"reported":{"led":{"r":1,"g":2}},"desired":{"led":{"r":1,"g":5}}}}`},
		`{"reported":{"led":{"g":2,"r":1}},"desired":{"led":{"g":5,"r":1}},"delta":{"led":{"g":5}}}`, "")
	// null deletes a field (and its metadata); a null section clears it.
	f([]string{`{"state":{"reported":{"a":1,"b":2}}}`, `{"state":{"reported":{"a":null}}}`},
		`{"reported":{"b":2},"desired":{},"delta":{}}`,
		`{"reported":{"b":{"timestamp":10}},"desired":{}}`)
	f([]string{`{"state":{"desired":{"a":1}}}`, `{"state":{"desired":null}}`},
		`{"reported":{},"desired":{},"delta":{}}`, "")
	// A leaf replaced by an object, and back; arrays are leaves.
	f([]string{`{"state":{"reported":{"x":1}}}`, `{"state":{"reported":{"x":{"y":2}}}}`, `{"state":{"reported":{"x":[1,2]}}}`},
		`{"reported":{"x":[1,2]},"desired":{},"delta":{}}`,
		`{"reported":{"x":{"timestamp":12}},"desired":{}}`)
	// Numbers keep their text.
	f([]string{`{"state":{"reported":{"big":12345678901234567890}}}`},
		`{"reported":{"big":12345678901234567890},"desired":{},"delta":{}}`, "")
}

func TestParseUpdateRefusals(t *testing.T) {
	for _, body := range []string{
		``, `null`, `[]`, `{}`, `{"state":{}}`, `{"state":null}`, `{"state":[]}`, `{"state":{"reported":1}}`,
		`{"state":{"reported":[]}}`, `{"state":{"delta":{}}}`, `{"state":{"other":{}}}`, `{"state":{"reported":{}},"x":1}`,
		`{"state":{"reported":{}},"version":0}`, `{"state":{"reported":{}},"version":-1}`, `{"state":{"reported":{}},"version":1.5}`,
		`{"state":{"reported":{}},"version":"1"}`, `{"state":{"reported":{}}} {}`, `{"state":{"reported":{"a":` + strings.Repeat(`{"a":`, 20) + `1` + strings.Repeat(`}`, 21) + `}}`,
	} {
		if _, err := ParseUpdate([]byte(body)); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseUpdate(%q) = %v, want ErrInvalid", body, err)
		}
	}
}

func TestUpdateVersionSizeAndAnnouncements(t *testing.T) {
	s, rec := newService(t, 512)
	ctx := context.Background()
	from := Sender{Subject: "dev-1", Protocol: "mqtt", Source: "mqtt://dev-1"}
	if _, err := s.Get("", "dev-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of nothing: %v", err)
	}
	if _, err := s.Update(ctx, from, "", "dev-1", []byte(`{"state":{"reported":{"fan":1}}}`)); err != nil {
		t.Fatal(err)
	}
	doc, err := s.Update(ctx, from, "", "dev-1", []byte(`{"state":{"desired":{"fan":3}},"version":1}`))
	if err != nil || doc.Version != 2 {
		t.Fatalf("update with the current version: %v %v", doc, err)
	}
	_, err = s.Update(ctx, from, "", "dev-1", []byte(`{"state":{"desired":{"fan":4}},"version":1}`))
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Current != 2 || !errors.Is(err, ErrVersionConflict) {
		t.Fatalf("stale version: %v", err)
	}
	_, err = s.Update(ctx, from, "", "dev-1", []byte(`{"state":{"desired":{"blob":"`+strings.Repeat("x", 600)+`"}}}`))
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "shadow.max_bytes") {
		t.Fatalf("too large: %v", err)
	}
	if doc, _ := s.Get("", "dev-1"); doc.Version != 2 || doc.State.Desired["fan"] != json.Number("3") {
		t.Fatalf("a refused update changed the shadow: %+v", doc)
	}
	// Tenants do not share shadows.
	if _, err := s.Get("other", "dev-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another tenant's shadow: %v", err)
	}
	if len(rec.events) != 2 || rec.events[0].Topic != "$shadow/dev-1/update/accepted" || rec.events[1].Subject != "dev-1" {
		t.Fatalf("events: %+v", rec.events)
	}
	if d := rec.pubs["$shadow/dev-1/delta"]; len(d) != 1 || d[0] != `{"state":{"fan":3},"version":2,"timestamp":1000}` {
		t.Fatalf("delta messages: %q", d)
	}
	if len(rec.pubs["$shadow/dev-1/update/accepted"]) != 2 {
		t.Fatalf("accepted messages: %q", rec.pubs)
	}
	// A device's refusal goes to .../update/rejected.
	s.UpdateFromDevice(ctx, from, "", "dev-1", []byte(`{"state":{"reported":{"fan":2}},"version":9}`))
	if r := rec.pubs["$shadow/dev-1/update/rejected"]; len(r) != 1 || !strings.Contains(r[0], `"code":"version_conflict","version":2`) {
		t.Fatalf("rejected: %q", r)
	}
	s.GetForDevice("", "dev-1")
	s.GetForDevice("", "dev-9")
	if a, r := rec.pubs["$shadow/dev-1/get/accepted"], rec.pubs["$shadow/dev-9/get/rejected"]; len(a) != 1 || !strings.Contains(a[0], `"version":2`) ||
		len(r) != 1 || !strings.Contains(r[0], `"code":"not_found"`) {
		t.Fatalf("get answers: %q %q", a, r)
	}
	for _, d := range []string{"", "a/b", "+", "#", "$x", "a\x00"} {
		if _, err := s.Update(ctx, from, "", d, []byte(`{"state":{"reported":{}}}`)); !errors.Is(err, ErrInvalidDevice) {
			t.Errorf("device %q: %v", d, err)
		}
	}
}

// Concurrent updates of one device with the version they read: exactly one wins each round,
// and the version counts every accepted update.
func TestConcurrentUpdatesAreSerialized(t *testing.T) {
	s, _ := newService(t, 8192)
	ctx := context.Background()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				_, err := s.Update(ctx, Sender{}, "", "d", []byte(fmt.Sprintf(`{"state":{"reported":{"w%d":%d}}}`, i, j)))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	doc, err := s.Get("", "d")
	if err != nil || doc.Version != int64(wins) || len(doc.State.Reported) != 16 {
		t.Fatalf("after %d updates: version %d, %d fields, %v", wins, doc.Version, len(doc.State.Reported), err)
	}
}
