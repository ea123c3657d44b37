package main

import (
	"strings"
	"testing"

	"github.com/fleetgate/fleetgate/storage"
)

func TestMemoryLimitSizesTheLog(t *testing.T) {
	f := func(yaml string, memtable, cache int64, wantErr string) {
		t.Helper()
		cfg := DefaultConfig()
		if err := decodeConfig([]byte(yaml), &cfg); err != nil {
			t.Fatalf("%q: %v", yaml, err)
		}
		err := cfg.Validate()
		if wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("%q: Validate = %v, want an error naming %q", yaml, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q: %v", yaml, err)
		}
		p := cfg.memoryPlan()
		if p.MemTableBytes != memtable || p.BlockCacheBytes != cache {
			t.Fatalf("%q: plan %s, want memtables of %d and a block cache of %d", yaml, p, memtable, cache)
		}
	}
	f("", 16<<20, 4<<20, "") // the default: 128 MiB
	f("memory_limit: 67108864", 8<<20, 2<<20, "")
	f("memory_limit: 67108864\nstorage: {memtable_bytes: 33554432}", 32<<20, 2<<20, "")
	f("memory_limit: 1073741824", 64<<20, 32<<20, "")
	f("memory_limit: 16777216", 0, 0, "memory_limit: at least")
	f("storage: {memtable_bytes: 1048576}", 0, 0, "storage.memtable_bytes: at least")
	f("storage: {commit_delay: 2ms}", 16<<20, 4<<20, "")
	f("storage: {commit_delay: 1s}", 0, 0, "storage.commit_delay: 0 to 100ms")
	f("storage: {commit_delay: -1ms}", 0, 0, "storage.commit_delay: 0 to 100ms")
	if DefaultConfig().MemoryLimit != 0 {
		t.Fatal("DefaultConfig sets a memory_limit: the runtime's soft limit must be opt-in")
	}
	def := DefaultConfig()
	if p := def.memoryPlan(); p.Limit != storage.DefaultMemoryLimit {
		t.Fatalf("the default plan is for %d, want storage.DefaultMemoryLimit", p.Limit)
	}
}
