package main

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestHandlerAnswersFailedIDs(t *testing.T) {
	srv := httptest.NewServer(handler("Bearer s3cret", quiet()))
	defer srv.Close()
	batch := `[{"specversion":"1.0","id":"a","source":"mqtt","type":"fleetgate.event","subject":"d1","topic":"devices/d1/telemetry","data":{"temp":20}},
	           {"specversion":"1.0","id":"b","source":"mqtt","type":"fleetgate.event","data":{"fail":true}},
	           {"specversion":"1.0","id":"c","data_base64":"AAE="}]`
	post := func(auth string) *http.Response {
		req, _ := http.NewRequest("POST", srv.URL+"/", strings.NewReader(batch))
		req.Header.Set("Content-Type", "application/cloudevents-batch+json")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := post("")
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no auth: HTTP %d, want 401", resp.StatusCode)
	}
	resp = post("Bearer s3cret")
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d, want 200", resp.StatusCode)
	}
	var a answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	if len(a.Failed) != 1 || a.Failed[0] != "b" {
		t.Fatalf("failed = %v, want [b]", a.Failed)
	}

	h, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	h.Body.Close()
	if h.StatusCode != http.StatusOK {
		t.Fatalf("healthz: HTTP %d", h.StatusCode)
	}
}

func TestHandleBatchRefusesNonArrays(t *testing.T) {
	for _, body := range []string{``, `{}`, `[1,2]`, `not json`} {
		if _, err := handleBatch([]byte(body), quiet()); !errors.Is(err, errBadBatch) {
			t.Errorf("%q: got %v, want errBadBatch", body, err)
		}
	}
}

// FuzzHandleBatch: any body is either a batch or errBadBatch, and only ids of the batch fail.
func FuzzHandleBatch(f *testing.F) {
	f.Add([]byte(`[{"id":"x","data":{"fail":true}}]`))
	f.Add([]byte(`[{"id":"y","data":"text"},{"id":"z","data":null}]`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := handleBatch(body, quiet())
		if err != nil {
			if !errors.Is(err, errBadBatch) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		var events []cloudEvent
		if err := json.Unmarshal(body, &events); err != nil {
			t.Fatalf("handled a body encoding/json refuses: %v", err)
		}
		if len(a.Failed) > len(events) {
			t.Fatalf("%d failed ids for %d events", len(a.Failed), len(events))
		}
	})
}
