package storage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fleetgate/fleetgate/internal/crashfs"
)

// TestPowerLossDuringAppends runs a child process that appends on a crashfs mount and prints
// every acknowledged event, SIGKILLs it mid-stream, cuts the power (crashfs undoes everything
// not fsynced), reopens the store on what was durable and checks that every acknowledged event
// is in its queue. SIGKILL alone keeps the page cache; the power cut is what catches a missing
// fsync.
//
// Checked to fail without fsync: before the store's write-ahead log (wal.go), with `var
// syncWrites = false` in store.go, `go test -run 'PowerLoss/fsync' ./storage/` failed with
// "reopening after the power cut: opening storage in ".../backing": while opening memtables
// err: while opening fid: 1 err: Create a new file" (Badger's memtable log was never synced,
// so it came back empty). With the write-ahead log, skipping its fdatasync in wal.append (an
// ack before the durable write) fails "fsync" with "acknowledged event 7-0 lost in the power
// cut (2000 acknowledged, 0 found)", and a checkpoint that deletes segments without first
// syncing Badger's logs fails "fsync-checkpoints" with "acknowledged event 7-1453 lost in the
// power cut (12000 acknowledged, 11570 found)". The "no-fsync" subtest keeps the first check:
// it runs the child with syncWrites off and requires the acknowledged events to be gone.
func TestPowerLossDuringAppends(t *testing.T) {
	if os.Getenv(powerLossChildEnv) != "" {
		t.Skip("child mode")
	}
	if err := crashfs.Available(); err != nil {
		t.Skip(err)
	}
	for _, checkpoints := range []bool{false, true} {
		name := "fsync"
		if checkpoints {
			name = "fsync-checkpoints"
		}
		t.Run(name, func(t *testing.T) {
			acked, found, err := powerLossRun(t, true, checkpoints)
			if err != nil {
				t.Fatalf("reopening after the power cut: %v", err)
			}
			for _, id := range acked {
				if !found[id] {
					t.Fatalf("acknowledged event %s lost in the power cut (%d acknowledged, %d found)", id, len(acked), len(found))
				}
			}
			t.Logf("%d acknowledged, %d found after the power cut", len(acked), len(found))
		})
	}
	// Negative control: with fsync off the same run must lose acknowledged events, or the
	// harness cannot see a missing fsync.
	t.Run("no-fsync", func(t *testing.T) {
		acked, found, err := powerLossRun(t, false, false)
		if err != nil {
			// Badger's memtable file was never synced either: it came back empty.
			t.Logf("fsync off: the store does not even open after the power cut (%v): all %d acknowledged events lost, as expected", err, len(acked))
			return
		}
		lost := 0
		for _, id := range acked {
			if !found[id] {
				lost++
			}
		}
		if lost == 0 {
			t.Fatalf("fsync off, yet all %d acknowledged events survived the power cut: the harness does not see a missing fsync", len(acked))
		}
		t.Logf("fsync off: %d of %d acknowledged events lost, as expected", lost, len(acked))
	})
}

const (
	powerLossChildEnv = "FLEETGATE_POWERLOSS_CHILD" // the child's data dir
	powerLossSyncEnv  = "FLEETGATE_POWERLOSS_SYNC"  // "off": the child runs with syncWrites off
	// "on": the child writes small write-ahead log segments, checkpoints them often and fills
	// small memtables, so that the power cut finds segments deleted, memtables being flushed and
	// Badger's own logs written but not synced.
	powerLossCheckpointEnv = "FLEETGATE_POWERLOSS_CHECKPOINTS"
	powerLossAcks          = 2000
)

// powerLossRun runs the child on a fresh crashfs mount until powerLossAcks appends are
// acknowledged, kills it, cuts the power and returns the acknowledged ids and the ids found in
// the reopened store, or why it did not open.
func powerLossRun(t *testing.T, fsync, checkpoints bool) (acked []string, found map[string]bool, openErr error) {
	dir := t.TempDir()
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	fsys, err := crashfs.Mount(backing, mnt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Unmount() })

	cmd := exec.Command(os.Args[0], "-test.run=^TestChildPowerLossAppender$", "-test.v")
	cmd.Env = append(os.Environ(), powerLossChildEnv+"="+mnt)
	if !fsync {
		cmd.Env = append(cmd.Env, powerLossSyncEnv+"=off")
	}
	want := powerLossAcks
	if checkpoints {
		cmd.Env = append(cmd.Env, powerLossCheckpointEnv+"=on")
		want = 6 * powerLossAcks
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The deadline bounds a child that stops acknowledging.
	timer := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
	defer timer.Stop()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			acked = append(acked, id)
			if len(acked) == want {
				_ = cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
	}
	_ = cmd.Wait()
	if len(acked) < want {
		t.Fatalf("child acknowledged only %d appends\n%s", len(acked), stderr.String())
	}

	// The power cut, then the reboot: the backing directory now holds exactly what was
	// durable, as a fresh mount would show it. The store is opened there directly because
	// this process serves the mount: Badger's mmap page faults on its own FUSE mount could
	// stall the Go runtime that has to answer them.
	if err := fsys.Crash(); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Unmount(); err != nil {
		t.Fatal(err)
	}
	if checkpoints {
		// The run must have checkpointed (deleted the first segment, whose groups went into a
		// table), or the power cut tests no checkpoint.
		if _, err := os.Stat(filepath.Join(backing, walDirName, walSegmentName(1))); err == nil {
			t.Fatalf("the first write-ahead log segment is still there: no checkpoint ran before the power cut")
		}
	}
	s, err := Open(Options{Dir: backing, SweepInterval: time.Hour, GCInterval: time.Hour})
	if err != nil {
		return acked, nil, err
	}
	defer s.Close()
	found = map[string]bool{}
	var after uint64
	for {
		items, err := s.ReadQueue("f", after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) == 0 {
			break
		}
		for _, it := range items {
			found[it.Event.ID] = true
		}
		after = items[len(items)-1].Seq
	}
	return acked, found, nil
}

// TestChildPowerLossAppender is the child of TestPowerLossDuringAppends; it only runs in
// child mode. It prints "ACK <id>" for every event once Append has returned nil.
func TestChildPowerLossAppender(t *testing.T) {
	dir := os.Getenv(powerLossChildEnv)
	if dir == "" {
		t.Skip("runs only as the child of TestPowerLossDuringAppends")
	}
	if os.Getenv(powerLossSyncEnv) == "off" {
		syncWrites = false
	}
	opts, payload := Options{Dir: dir, SweepInterval: time.Hour, GCInterval: time.Hour}, 200
	if os.Getenv(powerLossCheckpointEnv) == "on" {
		walSegmentBytes, walCheckpointInterval = 256<<10, 20*time.Millisecond
		opts.MemTableBytes, payload = MinMemTableBytes, 2000
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if err := s.Append(context.Background(), []*Entry{newEntry(id, strings.Repeat("p", payload), "f")}); err != nil {
					fmt.Fprintln(os.Stderr, "append:", err)
					return
				}
				mu.Lock()
				fmt.Println("ACK " + id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}
