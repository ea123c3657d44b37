package storage_test

import (
	"testing"

	"github.com/fleetgate/fleetgate/storage"
	"github.com/fleetgate/fleetgate/storage/storagetest"
)

// The Badger store passes the backend conformance suite (cluster/log_test.go runs it on
// JetStream).
func TestBackendConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) (storage.Backend, func(storage.Backend) storage.Backend) {
		dir := t.TempDir()
		open := func() storage.Backend {
			s, err := storage.Open(storage.Options{Dir: dir, MinFreeBytes: -1})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
		return open(), func(b storage.Backend) storage.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			return open()
		}
	})
}
