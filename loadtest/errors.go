package loadtest

import "errors"

var (
	// ErrInvalidConfig is returned (wrapped, with every problem listed) by the Validate
	// methods when a run's configuration cannot work.
	ErrInvalidConfig = errors.New("invalid load test configuration")

	// ErrConnect is returned when a load-generating client cannot connect to the target.
	ErrConnect = errors.New("cannot connect")

	// ErrNoAcks is returned when a run finished without a single acknowledged message:
	// the target refused or ignored everything.
	ErrNoAcks = errors.New("nothing was acknowledged")
)
