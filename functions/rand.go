package functions

import "crypto/rand"

// cryptoRand is the random source of wasm modules (WASI random_get).
type cryptoRand struct{}

func (cryptoRand) Read(p []byte) (int, error) { return rand.Read(p) }
