//go:build race

package functions

// raceEnabled: under the race detector wazero compiles a Go-built module (3.5 MB) about ten
// times slower, so tests that need the threshold example skip themselves.
const raceEnabled = true
