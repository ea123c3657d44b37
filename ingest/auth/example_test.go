package auth_test

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/fleetgate/fleetgate/ingest/auth"
)

// A gateway with no keys configured signs and verifies with its generated HS256 key;
// the default device policy lets a device publish only under devices/<its sub>/.
func Example() {
	dataDir, _ := os.MkdirTemp("", "auth-example")
	defer os.RemoveAll(dataDir)

	v, err := auth.New(auth.DefaultConfig(), auth.Options{DataDir: dataDir})
	if err != nil {
		fmt.Println(err)
		return
	}
	token, _ := v.Sign(auth.MintClaims("sensor-7", "acme", "device", nil, time.Hour, time.Now()))

	p, err := v.Verify(token)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Subject, p.Tenant, p.Role)
	fmt.Println(p.CanPublish("devices/sensor-7/telemetry"))
	fmt.Println(p.CanPublish("devices/sensor-8/telemetry"))
	fmt.Println(p.CanSubscribe("devices/sensor-7/commands/#"))
	fmt.Println(p.ClientIDAllowed("sensor-7"))

	expired, _ := v.Sign(auth.MintClaims("sensor-7", "", "device", nil, time.Hour, time.Now().Add(-3*time.Hour)))
	_, err = v.Verify(expired)
	fmt.Println(errors.Is(err, auth.ErrExpired))
	// Output:
	// sensor-7 acme device
	// true
	// false
	// true
	// true
	// true
}
