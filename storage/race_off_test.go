//go:build !race

package storage

// raceEnabled: the race detector allocates on its own, so allocation counts are checked in the
// run without it (make test runs those tests both ways).
const raceEnabled = false
