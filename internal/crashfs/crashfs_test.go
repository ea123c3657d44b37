package crashfs

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// machine is a crashfs mount over a backing directory that a test can power-cycle.
type machine struct {
	t            testing.TB
	backing, mnt string
	fs           *FS
}

func newMachine(t testing.TB) *machine {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	m := &machine{t: t, backing: filepath.Join(dir, "backing"), mnt: filepath.Join(dir, "mnt")}
	for _, d := range []string{m.backing, m.mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	m.mount()
	t.Cleanup(func() {
		if m.fs != nil {
			m.fs.Unmount()
		}
	})
	return m
}

func (m *machine) mount() {
	m.t.Helper()
	f, err := Mount(m.backing, m.mnt)
	if err != nil {
		m.t.Fatal(err)
	}
	m.fs = f
}

// powerCycle crashes, unmounts and mounts a fresh instance.
func (m *machine) powerCycle() {
	m.t.Helper()
	if err := m.fs.Crash(); err != nil {
		m.t.Fatalf("Crash: %v", err)
	}
	if err := m.fs.Unmount(); err != nil {
		m.t.Fatalf("Unmount: %v", err)
	}
	m.fs = nil
	m.mount()
}

func (m *machine) path(name string) string { return filepath.Join(m.mnt, name) }

func (m *machine) read(name string) []byte {
	m.t.Helper()
	b, err := os.ReadFile(m.path(name))
	if err != nil {
		m.t.Fatal(err)
	}
	return b
}

// writeFile creates name with content and fsyncs it (and its directory, as a careful writer does).
func (m *machine) writeFile(name string, content []byte) {
	m.t.Helper()
	f, err := os.OpenFile(m.path(name), os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := f.Write(content); err != nil {
		m.t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		m.t.Fatal(err)
	}
	f.Close()
	d, err := os.Open(m.mnt)
	if err != nil {
		m.t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		m.t.Fatalf("directory fsync: %v", err)
	}
	d.Close()
}

func pattern(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func TestWrites(t *testing.T) {
	m := newMachine(t)
	durable := append(pattern(5000, 'a'), pattern(3000, 'b')...)
	m.writeFile("synced", durable)

	f, err := os.OpenFile(m.path("synced"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Fsynced: overwrite inside page 0.
	if _, err := f.WriteAt([]byte("SYNCED"), 10); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	copy(durable[10:], "SYNCED")
	// Not fsynced: overwrite across pages 0 and 1, and append past the end.
	if _, err := f.WriteAt(pattern(200, 'x'), 4000); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(pattern(10000, 'y'), 7000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, _ := os.ReadFile(filepath.Join(m.backing, "synced")); len(b) != 17000 {
		t.Fatalf("un-fsynced writes did not reach the backing file (%d bytes): passthrough?", len(b))
	}

	// A new file, written and never fsynced, comes back empty.
	if err := os.WriteFile(m.path("new"), []byte("never synced"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Names are durable at once, content only with fsync.
	m.writeFile("old-name", []byte("renamed"))
	if err := os.Rename(m.path("old-name"), m.path("new-name")); err != nil {
		t.Fatal(err)
	}

	m.powerCycle()
	if got := m.read("synced"); !bytes.Equal(got, durable) {
		t.Fatalf("after the crash: %d bytes, want the %d fsynced ones", len(got), len(durable))
	}
	if got := m.read("new"); len(got) != 0 {
		t.Fatalf("never-fsynced new file came back with %q", got)
	}
	if got := m.read("new-name"); string(got) != "renamed" {
		t.Fatalf("renamed file = %q", got)
	}
}

func TestWritesAfterCrashAreDropped(t *testing.T) {
	m := newMachine(t)
	m.writeFile("f", []byte("durable"))
	f, err := os.OpenFile(m.path("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.fs.Crash(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("LATE"), 0); err != nil {
		t.Fatal(err)
	}
	_ = f.Sync()
	f.Close()
	if err := m.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	m.mount()
	if got := m.read("f"); string(got) != "durable" {
		t.Fatalf("a write after the crash changed the file: %q", got)
	}
}

func TestTruncate(t *testing.T) {
	m := newMachine(t)
	durable := append(pattern(4096, 'a'), append(pattern(4096, 'b'), pattern(100, 'c')...)...)
	m.writeFile("shrunk", durable)
	m.writeFile("grown", []byte("short"))
	m.writeFile("shrunk-synced", durable)

	if err := os.Truncate(m.path("shrunk"), 10); err != nil {
		t.Fatal(err)
	}
	// Shrink then write again over the cut part: the cut bytes must still come back.
	if err := os.Truncate(m.path("shrunk"), 6000); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path("shrunk"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("zzz"), 5000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(m.path("grown"), 1<<20); err != nil {
		t.Fatal(err)
	}
	f, err = os.OpenFile(m.path("shrunk-synced"), os.O_RDWR|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	m.powerCycle()
	if got := m.read("shrunk"); !bytes.Equal(got, durable) {
		t.Fatalf("truncated file: %d bytes back, want the %d durable ones", len(got), len(durable))
	}
	if got := m.read("grown"); string(got) != "short" {
		t.Fatalf("extended file: %d bytes back, want 5", len(got))
	}
	if got := m.read("shrunk-synced"); len(got) != 0 {
		t.Fatalf("fsynced O_TRUNC undone: %d bytes", len(got))
	}
}

// TestMmap writes through a shared mapping in a child process (the process serving a FUSE
// mount must not take page faults on it: the Go runtime could stall while the fault waits for
// its own server).
func TestMmap(t *testing.T) {
	if os.Getenv(mmapChildEnv) != "" {
		t.Skip("child mode")
	}
	m := newMachine(t)
	durable := append(pattern(4096, 'a'), pattern(4096, 'b')...)
	m.writeFile("mapped", durable)
	copy(durable[100:], "MSYNCED")

	cmd := exec.Command(os.Args[0], "-test.run=^TestMmapChild$")
	cmd.Env = append(os.Environ(), mmapChildEnv+"="+m.path("mapped"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	ready := false
	for !ready && sc.Scan() {
		ready = sc.Text() == "READY"
	}
	if !ready {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("mmap child failed:\n%s", stderr.String())
	}
	if b, _ := os.ReadFile(filepath.Join(m.backing, "mapped")); !bytes.Contains(b, []byte("LOST")) {
		t.Fatal("the mmap write did not reach the file system")
	}
	// The child still has "DIRTY" in its mapping, never written back.
	if err := m.fs.Crash(); err != nil {
		t.Fatal(err)
	}
	stdin.Close() // the child exits; the kernel writes its dirty page back, into the void
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mmap child: %v\n%s", err, stderr.String())
	}
	if err := m.fs.Unmount(); err != nil {
		t.Fatal(err)
	}
	m.mount()
	if got := m.read("mapped"); !bytes.Equal(got, durable) {
		t.Fatalf("after the crash: msynced=%v lost=%v dirty=%v, want only the msynced write",
			bytes.Contains(got, []byte("MSYNCED")), bytes.Contains(got, []byte("LOST")), bytes.Contains(got, []byte("DIRTY")))
	}
}

const mmapChildEnv = "CRASHFS_MMAP_CHILD"

// TestMmapChild is TestMmap's child: it maps the file named by its environment, writes page 0
// and msyncs it, writes page 1 and pushes it out to the file system without an fsync (as the
// kernel's writeback would), dirties page 1 again, prints READY and waits for stdin to close.
func TestMmapChild(t *testing.T) {
	path := os.Getenv(mmapChildEnv)
	if path == "" {
		t.Skip("runs only as the child of TestMmap")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, 2*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	copy(data[100:], "MSYNCED")
	if err := unix.Msync(data[:pageSize], unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	copy(data[5000:], "LOST")
	if err := unix.SyncFileRange(int(f.Fd()), pageSize, pageSize, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER); err != nil {
		t.Fatal(err)
	}
	copy(data[6000:], "DIRTY")
	fmt.Println("READY")
	io.Copy(io.Discard, os.Stdin)
}

func TestAvailableSaysWhy(t *testing.T) {
	if err := Available(); err != nil {
		if !bytes.Contains([]byte(err.Error()), []byte("FUSE unavailable")) {
			t.Fatalf("Available error does not say FUSE is unavailable: %v", err)
		}
		t.Skip(err)
	}
}
