package storage

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/fleetgate/fleetgate/event"
)

// BenchmarkAppend measures durable (fsynced) appends of 256-byte events, one event per Append
// call, from 1, 8 and 64 concurrent writers sharing group commits.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 8, 64} {
		for _, linger := range []bool{true, false} {
			b.Run(fmt.Sprintf("writers=%d/linger=%v", writers, linger), func(b *testing.B) {
				defer func(was bool) { lingerEnabled = was }(lingerEnabled)
				lingerEnabled = linger
				benchAppend(b, writers)
			})
		}
	}
}

// BenchmarkAppendBatched measures 64 writers that append 10 or 100 events per call, as an
// HTTP request with a JSON array does.
func BenchmarkAppendBatched(b *testing.B) {
	for _, per := range []int{10, 100} {
		b.Run(fmt.Sprintf("writers=64/events_per_call=%d", per), func(b *testing.B) {
			benchAppendN(b, 64, per)
		})
	}
}

func benchAppend(b *testing.B, writers int) { benchAppendN(b, writers, 1) }

func benchAppendN(b *testing.B, writers, per int, mod ...func(*Options)) {
	benchAppendIDs(b, writers, per, true, mod...)
}

// benchAppendIDs is benchAppendN where senderIDs says whether events carry their own ids (as a
// sender may choose) or get them from the log (as most do).
func benchAppendIDs(b *testing.B, writers, per int, senderIDs bool, mod ...func(*Options)) {
	s := openTest(b, b.TempDir(), mod...)
	payload := []byte(strings.Repeat("x", 256))
	b.SetBytes(256)
	b.ReportAllocs()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(int64(per)) <= int64(b.N) {
				entries := make([]*Entry, per)
				for i := range entries {
					var id string
					if senderIDs {
						id = event.NewID()
					}
					entries[i] = &Entry{Event: &event.Event{ID: id, Subject: "dev", Topic: "devices/dev/t", Protocol: "mqtt", Data: payload},
						Targets: []Target{{Function: "log", Rule: "default"}}}
				}
				if err := s.Append(context.Background(), entries); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/event")
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	commits := float64(max(s.m.commits.Get(), 1))
	b.ReportMetric(float64(b.N)/commits, "events/commit")
	b.ReportMetric(float64(s.totalCommitNanos.Load())/commits/1e6, "ms/commit")
}

// BenchmarkBadgerBaseline is the peer: Badger alone, fsynced transactions of 1000 entries of
// 256 bytes from one goroutine.
func BenchmarkBadgerBaseline(b *testing.B) {
	db, err := badger.Open(badger.DefaultOptions(b.TempDir()).WithSyncWrites(true).WithLogger(nil).WithDetectConflicts(false))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	payload := []byte(strings.Repeat("x", 256))
	b.SetBytes(256)
	start := time.Now()
	var key [8]byte
	n := 0
	for n < b.N {
		txn := db.NewTransaction(true)
		for i := 0; i < 1000 && n < b.N; i++ {
			n++
			key[0], key[1], key[2], key[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
			if err := txn.Set(append([]byte(nil), key[:]...), payload); err != nil {
				b.Fatal(err)
			}
		}
		if err := txn.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "entries/s")
}

// processCPU is the CPU time the whole test process used so far (user + system): less
// disturbed by other load on the machine than ns/op.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
