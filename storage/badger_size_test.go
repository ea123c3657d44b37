package storage

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dgraph-io/badger/v4"
)

// TestGetValueSize: patched Badger's Txn.GetValueSize (what an acknowledgement's delete reads)
// says what Get and Item.ValueSize say, wherever the value is: a memtable, a table, the value
// log (a value pointer), the transaction's own writes; and ErrKeyNotFound for a key never
// written, deleted, or expired.
func TestGetValueSize(t *testing.T) {
	db, err := badger.Open(badger.DefaultOptions(t.TempDir()).WithLogger(nil).WithValueThreshold(1024))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	small, big := bytes.Repeat([]byte("s"), 300), bytes.Repeat([]byte("b"), 5000) // big: value log
	set := func(kvs map[string][]byte, del ...string) {
		t.Helper()
		err := db.Update(func(txn *badger.Txn) error {
			for k, v := range kvs {
				if err := txn.Set([]byte(k), v); err != nil {
					return err
				}
			}
			for _, k := range del {
				if err := txn.Delete([]byte(k)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	check := func(where string) {
		t.Helper()
		err := db.View(func(txn *badger.Txn) error {
			for _, k := range []string{"table/small", "table/big", "mem/small", "mem/big", "mem/empty"} {
				item, err := txn.Get([]byte(k))
				if err != nil {
					t.Fatalf("%s: Get %s: %v", where, k, err)
				}
				size, err := txn.GetValueSize([]byte(k))
				if err != nil || size != item.ValueSize() {
					t.Fatalf("%s: GetValueSize(%s) = %d, %v; Item.ValueSize says %d", where, k, size, err, item.ValueSize())
				}
			}
			for _, k := range []string{"never", "table/deleted", "mem/deleted"} {
				if size, err := txn.GetValueSize([]byte(k)); !errors.Is(err, badger.ErrKeyNotFound) {
					t.Fatalf("%s: GetValueSize(%s) = %d, %v; want ErrKeyNotFound", where, k, size, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	set(map[string][]byte{"table/small": small, "table/big": big, "table/deleted": small})
	set(nil, "table/deleted")
	if err := db.Flatten(1); err != nil {
		t.Fatal(err)
	}
	if err := db.DropPrefix([]byte("nothing")); err != nil { // flushes the memtable into a table
		t.Fatal(err)
	}
	set(map[string][]byte{"mem/small": small, "mem/big": big, "mem/empty": {}, "mem/deleted": small})
	set(nil, "mem/deleted")
	check("committed")

	// A transaction's own writes, and the conflict a read through it stands for.
	txn := db.NewTransaction(true)
	defer txn.Discard()
	if err := txn.Set([]byte("pending"), small[:7]); err != nil {
		t.Fatal(err)
	}
	if err := txn.Delete([]byte("mem/small")); err != nil {
		t.Fatal(err)
	}
	if size, err := txn.GetValueSize([]byte("pending")); err != nil || size != 7 {
		t.Fatalf("GetValueSize of the transaction's own write = %d, %v; want 7", size, err)
	}
	if _, err := txn.GetValueSize([]byte("mem/small")); !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("GetValueSize of a key the transaction deleted: %v, want ErrKeyNotFound", err)
	}
	if _, err := txn.GetValueSize([]byte("table/small")); err != nil {
		t.Fatal(err)
	}
	set(map[string][]byte{"table/small": big}) // written by another transaction meanwhile
	if err := txn.Commit(); !errors.Is(err, badger.ErrConflict) {
		t.Fatalf("commit after GetValueSize of a key another commit changed: %v, want ErrConflict", err)
	}
}
