package loadtest

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// FsyncResult is the latency of a small append made durable with fdatasync, in a directory:
// the physical floor of a durable acknowledgement on that disk (a commit of the gateway's
// write-ahead log is one such append), which bench-peers prints beside its results.
type FsyncResult struct {
	Dir     string  `json:"-"` // not in the JSON: it is a path of this machine
	Size    int     `json:"size"`
	Seconds float64 `json:"seconds"`
	Latency Latency `json:"fdatasync_latency_ms"`
	// BusyCores, when not 0, is how many cores a second round of the same appends kept busy
	// (a spinning thread each), and BusyLatency that round's latency. On a machine whose
	// servers and load generator share the cores, this is the floor a loaded gateway meets: on
	// some virtual machines an fdatasync takes twice as long while another core is busy.
	BusyCores   int      `json:"busy_cores,omitempty"`
	BusyLatency *Latency `json:"busy_fdatasync_latency_ms,omitempty"`
}

// MeasureFsync appends size bytes to a new file in dir and fdatasyncs it, count times, and
// returns the latency of each append and its fdatasync; with busy > 0, it does so again while
// busy threads spin. The file is removed.
func MeasureFsync(dir string, count, size, busy int) (*FsyncResult, error) {
	if count < 1 || size < 1 || busy < 0 {
		return nil, errors.New("fsync: count and size must be at least 1, busy at least 0")
	}
	f, err := os.CreateTemp(dir, "fleetgate-loadtest-fsync-*")
	if err != nil {
		return nil, fmt.Errorf("fsync: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	start := time.Now()
	idle, err := appendSynced(f, count, size)
	if err != nil {
		return nil, err
	}
	res := &FsyncResult{Dir: dir, Size: size, Seconds: time.Since(start).Seconds(), Latency: idle}
	if busy > 0 {
		var stop atomic.Bool
		var wg sync.WaitGroup
		for range busy {
			wg.Add(1)
			go func() {
				defer wg.Done()
				runtime.LockOSThread()
				for !stop.Load() {
				}
			}()
		}
		loaded, err := appendSynced(f, count, size)
		stop.Store(true)
		wg.Wait()
		if err != nil {
			return nil, err
		}
		res.BusyCores, res.BusyLatency = busy, &loaded
	}
	return res, nil
}

func appendSynced(f *os.File, count, size int) (Latency, error) {
	buf := make([]byte, size)
	h := newHist()
	for range count {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return Latency{}, fmt.Errorf("fsync: writing: %w", err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return Latency{}, fmt.Errorf("fsync: fdatasync: %w", err)
		}
		recordDur(h, time.Since(t))
	}
	return latencyOf(h), nil
}
