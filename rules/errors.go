package rules

import "errors"

// ErrInvalidRules is wrapped by every *ValidationError: the rule set was refused whole and
// nothing changed.
var ErrInvalidRules = errors.New("invalid rule set")

// ErrNotFound means no rule with the given id exists in the live rule set.
var ErrNotFound = errors.New("rule not found")

// ErrNoKV means EngineOptions.KV was nil: the engine cannot keep rule versions.
var ErrNoKV = errors.New("no KV store for rule versions")

// ErrCorruptVersion means a stored rule-set version could not be decoded.
var ErrCorruptVersion = errors.New("stored rule set version is corrupt")

// ErrConflict means another node of the cluster stored the same version number first:
// nothing changed here; look at the live set and apply again.
var ErrConflict = errors.New("rule set changed concurrently")

// ErrNoVersion means the requested rule-set version is not stored (never applied, or older
// than the versions kept).
var ErrNoVersion = errors.New("no such rule set version")
