package shadow

import "errors"

var (
	// ErrNotFound means the device has no shadow yet (HTTP 404).
	ErrNotFound = errors.New("shadow: no shadow for this device")
	// ErrVersionConflict means an update named a version that is not the shadow's current one
	// (HTTP 409): read the shadow again, and retry with its version. Nothing was changed.
	ErrVersionConflict = errors.New("shadow: version conflict")
	// ErrTooLarge means the shadow would exceed shadow.max_bytes after the update (HTTP 413).
	// Nothing was changed.
	ErrTooLarge = errors.New("shadow: document too large")
	// ErrInvalid means the update is not a valid shadow update (HTTP 400). Nothing was changed.
	ErrInvalid = errors.New("shadow: invalid update")
	// ErrInvalidDevice means the device id cannot name a shadow (empty, wildcards, '/', '$').
	ErrInvalidDevice = errors.New("shadow: invalid device id")
)
