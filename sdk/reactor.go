package sdk

import (
	"encoding/json"
	"fmt"
)

// registered is the reactor's handler (see Register).
var registered Handler

// Reactor state. The gateway never calls into one instance concurrently, so plain globals do.
var (
	inBuf  []byte // the batch buffer handed out by fleetgate_alloc
	outBuf []byte // the last answer, alive until the next call
)

// allocBatch returns the batch buffer, grown to hold at least size bytes. It is reused from
// batch to batch and changes only here (the ABI: valid until the next fleetgate_alloc); events
// decoded from it never alias it (encoding/json copies).
func allocBatch(size uint32) []byte {
	if cap(inBuf) < int(size) || cap(inBuf) == 0 {
		inBuf = make([]byte, max(int(size), 4096))
	}
	return inBuf[:size]
}

// serve handles one batch for the reactor ABI and returns the answer: nothing when every event
// succeeded, a result object, or {"error":"..."} when the whole batch failed.
func serve(batch []byte) []byte {
	res, err := callHandler(registered, batch)
	if err != nil {
		return answerError(err)
	}
	if len(res.Failed) == 0 && len(res.Publish) == 0 {
		outBuf = outBuf[:0]
		return nil
	}
	b, err := json.Marshal(res)
	if err != nil {
		return answerError(fmt.Errorf("sdk: encoding result: %w", err))
	}
	outBuf = b
	return outBuf
}

// callHandler decodes batch and calls h, turning a panic into an error.
func callHandler(h Handler, batch []byte) (res Result, err error) {
	if h == nil {
		return Result{}, ErrNoHandler
	}
	events, err := decodeBatch(batch)
	if err != nil {
		return Result{}, fmt.Errorf("sdk: decoding batch: %w", err)
	}
	defer func() {
		if p := recover(); p != nil {
			res, err = Result{}, fmt.Errorf("sdk: handler panicked: %v", p)
		}
	}()
	return h(events)
}

func answerError(err error) []byte {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{err.Error()})
	outBuf = b
	return outBuf
}
