package sdk_test

import (
	"fmt"
	"os"
	"strings"

	"github.com/fleetgate/fleetgate/sdk"
)

// A handler alerting on hot readings, run natively on one batch the way the gateway runs it.
func Example() {
	handle := func(events []sdk.Event) (sdk.Result, error) {
		var res sdk.Result
		for _, e := range events {
			var reading struct{ Temp float64 }
			if err := e.Decode(&reading); err != nil {
				res.Fail(e.ID) // retried, alone
				continue
			}
			if reading.Temp > 50 {
				if err := res.Emit("devices/"+e.Subject+"/alerts", map[string]any{"temp": reading.Temp}, 1); err != nil {
					return sdk.Result{}, err // fails the whole batch
				}
			}
		}
		return res, nil
	}
	// In a module: func init() { sdk.Register(handle) } and func main() { sdk.Run(handle) }.
	batch := `[{"specversion":"1.0","id":"a","source":"mqtt://d1","type":"t","subject":"d1","data":{"temp":71}},
	           {"specversion":"1.0","id":"b","source":"mqtt://d2","type":"t","subject":"d2","data_base64":"AAE="}]`
	if err := sdk.Handle(strings.NewReader(batch), os.Stdout, handle); err != nil {
		fmt.Println(err)
	}
	// Output: {"failed":["b"],"publish":[{"topic":"devices/d1/alerts","payload":{"temp":71},"qos":1}]}
}
