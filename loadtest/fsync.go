package loadtest

import (
	"errors"
	"fmt"
	"os"
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
}

// MeasureFsync appends size bytes to a new file in dir and fdatasyncs it, count times, and
// returns the latency of each append and its fdatasync. The file is removed.
func MeasureFsync(dir string, count, size int) (*FsyncResult, error) {
	if count < 1 || size < 1 {
		return nil, errors.New("fsync: count and size must be at least 1")
	}
	f, err := os.CreateTemp(dir, "fleetgate-loadtest-fsync-*")
	if err != nil {
		return nil, fmt.Errorf("fsync: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, size)
	h := newHist()
	start := time.Now()
	for range count {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return nil, fmt.Errorf("fsync: writing: %w", err)
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return nil, fmt.Errorf("fsync: fdatasync: %w", err)
		}
		recordDur(h, time.Since(t))
	}
	return &FsyncResult{Dir: dir, Size: size, Seconds: time.Since(start).Seconds(), Latency: latencyOf(h)}, nil
}
