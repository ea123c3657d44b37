// Command echo-function is the example HTTP function of the compose setup: it receives
// fleetgate's CloudEvents batches (POST, application/cloudevents-batch+json), logs one line per
// event, and answers 200. An event whose data holds "fail": true is reported back as failed, so
// the gateway retries it and finally moves it to the function's dead letters (a way to try
// `fleetgate dlq list|replay`). With FUNCTION_AUTH set, requests must carry that exact
// Authorization header.
//
// It uses the standard library only, so its Dockerfile builds it without the fleetgate module.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"
)

// maxBody bounds a batch; fleetgate's default batch max_bytes is 1 MiB, plus envelopes.
const maxBody = 8 << 20

// cloudEvent holds the attributes of a CloudEvent this function looks at.
type cloudEvent struct {
	ID      string          `json:"id"`
	Source  string          `json:"source"`
	Type    string          `json:"type"`
	Subject string          `json:"subject"`
	Topic   string          `json:"topic"`
	Rule    string          `json:"rule"`
	Data    json.RawMessage `json:"data"`
}

// answer is the function's reply: the ids of events it could not handle.
type answer struct {
	Failed []string `json:"failed,omitempty"`
}

var errBadBatch = errors.New("bad batch")

// handleBatch decodes a batch and returns the ids of the events asking to fail.
func handleBatch(body []byte, log *slog.Logger) (answer, error) {
	var events []cloudEvent
	if err := json.Unmarshal(body, &events); err != nil {
		return answer{}, fmt.Errorf("%w: %v", errBadBatch, err)
	}
	var a answer
	for _, e := range events {
		var data struct {
			Fail bool `json:"fail"`
		}
		_ = json.Unmarshal(e.Data, &data) // data need not be an object
		log.Info("event", "id", e.ID, "topic", e.Topic, "rule", e.Rule, "subject", e.Subject, "type", e.Type, "data", string(e.Data), "fail", data.Fail)
		if data.Fail {
			a.Failed = append(a.Failed, e.ID)
		}
	}
	return a, nil
}

func handler(auth string, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		if auth != "" && r.Header.Get("Authorization") != auth {
			http.Error(w, `{"error":"bad authorization"}`, http.StatusUnauthorized)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			http.Error(w, `{"error":"body too large"}`, http.StatusRequestEntityTooLarge)
			return
		}
		a, err := handleBatch(body, log)
		if err != nil {
			log.Warn("refused batch", "err", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a)
	})
	return mux
}

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, nil))
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = ":9000"
	}
	srv := &http.Server{Addr: addr, Handler: handler(os.Getenv("FUNCTION_AUTH"), log), ReadHeaderTimeout: 10 * time.Second}
	log.Info("echo-function listening", "addr", addr)
	if err := srv.ListenAndServe(); err != nil {
		log.Error("serve", "err", err)
		os.Exit(1)
	}
}
