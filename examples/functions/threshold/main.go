// Command threshold is an example fleetgate wasm function: for each event whose "temp"
// exceeds the THRESHOLD environment variable (default 50) it publishes the event's fields plus
// "alert":"overheat" to devices/<subject>/alerts. Build it as a reactor (one instance serves
// many batches) with
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o bin/functions/threshold.wasm ./examples/functions/threshold
//
// Built without -buildmode=c-shared it is a command module (one Go start per batch), which the
// gateway also runs, only slower.
package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/fleetgate/fleetgate/sdk"
)

// init registers the handler for the reactor ABI: a reactor never runs main.
func init() { sdk.Register(handle) }

// main serves one batch when the module is built as a command.
func main() { sdk.Run(handle) }

func handle(events []sdk.Event) (sdk.Result, error) {
	threshold := 50.0
	if s := os.Getenv("THRESHOLD"); s != "" {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return sdk.Result{}, fmt.Errorf("THRESHOLD=%q is not a number", s)
		}
		threshold = v
	}
	var res sdk.Result
	for i := range events {
		e := &events[i]
		var fields map[string]any
		if e.Decode(&fields) != nil || e.Subject == "" {
			continue // not a JSON object, or no sender to alert: nothing to do
		}
		temp, ok := fields["temp"].(float64)
		if !ok || temp <= threshold {
			continue
		}
		fields["alert"] = "overheat"
		if err := res.Emit("devices/"+e.Subject+"/alerts", fields, 1); err != nil {
			return sdk.Result{}, err
		}
	}
	return res, nil
}
