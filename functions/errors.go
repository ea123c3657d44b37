package functions

import (
	"errors"
	"time"
)

var (
	// ErrInvalidConfig is returned (wrapped, with every problem listed) by ValidateDefinitions
	// and NewDispatcher for function definitions that cannot be used.
	ErrInvalidConfig = errors.New("functions: invalid configuration")
	// ErrUnknownType is returned when a definition names a type no registered factory provides.
	ErrUnknownType = errors.New("functions: unknown function type")
	// ErrUnknownFunction is returned by admin and dead-letter calls for a name that is not configured.
	ErrUnknownFunction = errors.New("functions: unknown function")
	// ErrStopped is returned by calls made after Stop has begun.
	ErrStopped = errors.New("functions: dispatcher stopped")
	// ErrNoPublisher is returned by a republish function, or for publish outputs, when the
	// dispatcher has no Publisher to hand them to.
	ErrNoPublisher = errors.New("functions: no publisher configured")
	// ErrReplyRefused is returned (wrapped) for a reply output that cannot go: its event is not
	// in the batch or has no response topic, the publisher cannot reply, or the requester may
	// not subscribe to its response topic. Such a reply is not retried.
	ErrReplyRefused = errors.New("functions: reply refused")
	// ErrHopLimit is returned when a re-ingested output would exceed its function's max_hops.
	ErrHopLimit = errors.New("functions: output exceeds max_hops")
	// ErrBadResponse is returned (wrapped) when a function's answer is not the documented JSON shape.
	ErrBadResponse = errors.New("functions: malformed function response")
	// ErrRetryable marks an invocation failure worth retrying soon (timeouts, 429, 5xx, traps).
	ErrRetryable = errors.New("functions: retryable failure")
	// ErrUnavailable marks an invocation failure that says the function's endpoint could not
	// take the batch (no connection, a timeout, 429, 502, 503, 504): it is never charged to the
	// batch's events, and it counts towards opening the function's circuit.
	ErrUnavailable = errors.New("functions: function unavailable")
	// ErrRejected marks an invocation the function refused (4xx other than 429); it is still
	// retried up to max_attempts, then dead-lettered with the function's answer as the reason.
	ErrRejected = errors.New("functions: rejected by function")
)

// UnavailableError is an invocation failure of an endpoint that could not take the batch. It
// matches ErrUnavailable and ErrRetryable. RetryAfter, when positive, is the least time the
// endpoint asked to be left alone (an HTTP Retry-After): no batch is sent to the function
// before it has passed.
type UnavailableError struct {
	RetryAfter time.Duration
	Err        error
}

func (e *UnavailableError) Error() string { return e.Err.Error() }

// Unwrap returns ErrUnavailable, ErrRetryable and the cause.
func (e *UnavailableError) Unwrap() []error { return []error{ErrUnavailable, ErrRetryable, e.Err} }

// retryAfterOf returns the Retry-After carried by err, or 0.
func retryAfterOf(err error) time.Duration {
	var u *UnavailableError
	if errors.As(err, &u) {
		return u.RetryAfter
	}
	return 0
}
