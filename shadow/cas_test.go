package shadow

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/storage"
)

// casKV is a shared KV with compare-and-set (as cluster mode's), where another gateway writes
// the document once, right between this gateway's read and its write.
type casKV struct {
	*memKV
	mu       sync.Mutex
	interfer func()
	races    int
}

func (k *casKV) CompareAndPut(key string, old []byte, found bool, value []byte) error {
	k.mu.Lock()
	if f := k.interfer; f != nil {
		k.interfer = nil
		k.races++
		f()
	}
	k.mu.Unlock()
	cur, ok, _ := k.Get(key)
	if ok != found || !bytes.Equal(cur, old) {
		return storage.ErrChanged
	}
	return k.Put(key, value)
}

// Two gateways sharing the KV never both accept an update of the same version: the one that
// loses the race computes again on the other's document, and a version check then answers 409.
func TestSharedKVUpdatesAreCompareAndSet(t *testing.T) {
	kv := &casKV{memKV: newMemKV()}
	other, err := New(Options{KV: kv.memKV, MaxBytes: 8192, Now: func() time.Time { return time.Unix(1000, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{KV: kv, MaxBytes: 8192, Now: func() time.Time { return time.Unix(1001, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Update(ctx, Sender{}, "t", "d", []byte(`{"state":{"reported":{"temp":20}}}`)); err != nil {
		t.Fatal(err)
	}
	// Without a version: retried on top of the other gateway's document, both changes kept.
	kv.interfer = func() {
		if _, err := other.Update(ctx, Sender{}, "t", "d", []byte(`{"state":{"desired":{"fan":2}}}`)); err != nil {
			t.Error(err)
		}
	}
	doc, err := s.Update(ctx, Sender{}, "t", "d", []byte(`{"state":{"reported":{"temp":21}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if kv.races != 1 || doc.Version != 3 || jsonOf(t, doc.State.Reported) != `{"temp":21}` || jsonOf(t, doc.State.Desired) != `{"fan":2}` {
		t.Fatalf("after a race: races %d, document %s", kv.races, jsonOf(t, doc))
	}
	// With the version it read: the other gateway's update makes it stale, 409.
	kv.interfer = func() {
		if _, err := other.Update(ctx, Sender{}, "t", "d", []byte(`{"state":{"desired":{"fan":3}}}`)); err != nil {
			t.Error(err)
		}
	}
	_, err = s.Update(ctx, Sender{}, "t", "d", []byte(`{"state":{"desired":{"fan":1}},"version":3}`))
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Current != 4 {
		t.Fatalf("update of version 3 after another gateway made 4 = %v, want a conflict naming version 4", err)
	}
}
