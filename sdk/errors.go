package sdk

import "errors"

var (
	// ErrNoHandler fails every batch of a reactor module whose package init never called Register.
	ErrNoHandler = errors.New("sdk: no handler registered: call sdk.Register from an init function")
	// ErrBadBuffer fails a fleetgate_handle call whose batch is not inside the buffer that
	// fleetgate_alloc returned (a host that does not follow the ABI).
	ErrBadBuffer = errors.New("sdk: fleetgate_handle: the batch must be written at the address fleetgate_alloc returned, within its size")
)
