// Package crashfs is a FUSE file system for power-loss tests: it mirrors a backing directory
// and, on Crash, undoes every write that was not fsynced, as a power cut would.
//
// Model: file data is durable once the file has been fsynced (fsync, fdatasync, or msync,
// which reaches a FUSE server as WRITE then FSYNC); until then crashfs keeps, in memory, the
// durable bytes of every 4 KiB page that was changed since and the file's size at its last
// fsync. Crash writes those pages back, truncates each file to its last-synced size (a file
// created and never fsynced comes back empty) and drops every later change. The caller then
// unmounts and mounts a fresh instance over the same backing directory, as a machine reboots.
//
// The model is lenient about names: create, rename, unlink, mkdir and rmdir are durable at
// once, whereas a real file system may lose them unless the directory is fsynced too. Data
// writes, truncates and fallocate punches are modelled exactly at page granularity. crashfs
// does not pass fsync on to the backing file system: the backing directory is a test's
// scratch space, and power loss is what crashfs itself simulates.
//
// Run the code under test in another process than the one serving the mount (re-exec the test
// binary): a page fault on a mapped file of the mount (Badger maps its files) waits for the
// server, and in the same Go process it can stall the runtime that has to answer it.
//
// Mounting needs /dev/fuse and either root (a direct mount) or a fusermount helper; Available
// says why it cannot be used, so that tests can skip with the reason.
package crashfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// pageSize is the granularity at which un-fsynced changes are undone.
const pageSize = 4096

// FS is one mounted crashfs instance. Its methods are safe for concurrent use.
type FS struct {
	backing, mountpoint string
	server              *fuse.Server

	// crashMu is held for reading by every operation that changes the backing directory and
	// for writing by Crash, so that each change is either undone or never made.
	crashMu sync.RWMutex
	crashed bool // guarded by crashMu

	mu    sync.Mutex
	files map[key]*file // files changed since the mount; a file absent here is durable as it is
}

// key names a backing inode (go-fuse's inode number and generation).
type key struct{ ino, gen uint64 }

// file is the undo record of one inode.
type file struct {
	mu     sync.Mutex
	fd     int              // the backing inode, opened read-write by crashfs
	synced int64            // size at the last fsync
	saved  map[int64][]byte // page index → its durable bytes (pages below synced only)
}

// Mount mounts a crashfs instance at mountpoint mirroring backing (both directories must
// exist). Everything in backing when it is mounted counts as durable.
func Mount(backing, mountpoint string) (*FS, error) {
	backing, err := filepath.Abs(backing)
	if err != nil {
		return nil, err
	}
	if mountpoint, err = filepath.Abs(mountpoint); err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(backing, &st); err != nil {
		return nil, fmt.Errorf("crashfs: backing directory: %w", err)
	}
	f := &FS{backing: backing, mountpoint: mountpoint, files: map[key]*file{}}
	root := &fs.LoopbackRoot{Path: backing, Dev: uint64(st.Dev)}
	rootNode := &node{LoopbackNode: &fs.LoopbackNode{RootData: root}, fs: f}
	root.RootNode = rootNode
	timeout := time.Second
	srv, err := fs.Mount(mountpoint, rootNode, &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			DirectMount: true, // as root; falls back to fusermount otherwise
			FsName:      "crashfs",
			Name:        "crashfs",
			// Passthrough would let the kernel write to the backing files directly, unseen.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("crashfs: mounting at %s: %w", mountpoint, err)
	}
	f.server = srv
	closeFuseOnExec()
	return f, nil
}

// closeFuseOnExec marks this process's /dev/fuse descriptors close-on-exec: go-fuse's direct
// mount opens the device without it, and a child process (a gateway under test) holding the
// connection would keep it alive, hung, if this process died.
func closeFuseOnExec() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			unix.CloseOnExec(fd)
		}
	}
}

// Crash simulates a power cut: every change not covered by an fsync is undone in the backing
// directory, and every later change is dropped (the kernel may still flush dirty pages until
// the unmount). Call Unmount next; a fresh Mount over the same backing directory then sees
// exactly what was durable.
func (f *FS) Crash() error {
	f.crashMu.Lock()
	defer f.crashMu.Unlock()
	if f.crashed {
		return nil
	}
	f.crashed = true
	f.mu.Lock()
	files := f.files
	f.files = map[key]*file{}
	f.mu.Unlock()
	var errs []error
	for _, fl := range files {
		if err := fl.restore(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Unmount unmounts the file system. Without a Crash before, every change stays, as after a
// clean shutdown.
func (f *FS) Unmount() error {
	err := f.server.Unmount()
	if err != nil {
		// Busy (a process still has a file open): detach it; the server exits when it is gone.
		if derr := syscall.Unmount(f.mountpoint, syscall.MNT_DETACH); derr == nil {
			err = nil
		}
	}
	f.mu.Lock()
	for k, fl := range f.files {
		fl.close()
		delete(f.files, k)
	}
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("crashfs: unmounting %s: %w", f.mountpoint, err)
	}
	return nil
}

// PowerCycle is Crash, Unmount and a fresh Mount over the same directories: the returned
// instance sees exactly what was durable. Every process using the mount must be gone.
func (f *FS) PowerCycle() (*FS, error) {
	if err := f.Crash(); err != nil {
		f.Unmount()
		return nil, err
	}
	if err := f.Unmount(); err != nil {
		return nil, err
	}
	return Mount(f.backing, f.mountpoint)
}

// Mountpoint is the directory where the file system is mounted.
func (f *FS) Mountpoint() string { return f.mountpoint }

var (
	availableOnce sync.Once
	availableErr  error
)

// Available reports whether crashfs can be mounted here; if not, the error says why (no
// /dev/fuse, not root and no fusermount, or the kernel refused the mount). It mounts a probe
// instance once per process.
func Available() error {
	availableOnce.Do(func() { availableErr = probe() })
	return availableErr
}

func probe() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("crashfs: FUSE unavailable: %v (load the fuse kernel module, or give the container the device /dev/fuse)", err)
	}
	if os.Geteuid() != 0 {
		_, err3 := exec.LookPath("fusermount3")
		_, err2 := exec.LookPath("fusermount")
		if err3 != nil && err2 != nil {
			return fmt.Errorf("crashfs: FUSE unavailable: not root (uid %d) and neither fusermount3 nor fusermount is installed (install fuse3)", os.Geteuid())
		}
	}
	dir, err := os.MkdirTemp("", "crashfs-probe")
	if err != nil {
		return fmt.Errorf("crashfs: probe: %w", err)
	}
	defer os.RemoveAll(dir)
	backing, mnt := filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("crashfs: probe: %w", err)
		}
	}
	f, err := Mount(backing, mnt)
	if err != nil {
		return fmt.Errorf("crashfs: FUSE unavailable: the mount was refused (a direct mount needs root with CAP_SYS_ADMIN, otherwise fusermount): %w", err)
	}
	werr := os.WriteFile(filepath.Join(mnt, "probe"), []byte("probe"), 0o600)
	if err := f.Unmount(); err != nil {
		return err
	}
	if werr != nil {
		return fmt.Errorf("crashfs: FUSE unavailable: writing through the probe mount: %w", werr)
	}
	return nil
}

// track returns the undo record of k, creating it for a durable file: fd (if ≥ 0) is an open
// descriptor of the inode, else path names it in the backing directory.
func (f *FS) track(k key, fd int, path string) (*file, syscall.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.files[k]; fl != nil {
		return fl, 0
	}
	own, errno := reopen(fd, path)
	if errno != 0 {
		return nil, errno
	}
	var st unix.Stat_t
	if err := unix.Fstat(own, &st); err != nil {
		unix.Close(own)
		return nil, fs.ToErrno(err)
	}
	fl := &file{fd: own, synced: st.Size, saved: map[int64][]byte{}}
	f.files[k] = fl
	return fl, 0
}

// created records a new, empty, never-fsynced file (any record of an older inode with the same
// number is dropped).
func (f *FS) created(k key, fd int) syscall.Errno {
	own, errno := reopen(fd, "")
	if errno != 0 {
		return errno
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.files[k]; old != nil {
		old.close()
	}
	f.files[k] = &file{fd: own, synced: 0, saved: map[int64][]byte{}}
	return 0
}

// forget drops the record of an inode whose last name is gone (names are durable at once).
func (f *FS) forget(k key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.files[k]; fl != nil {
		fl.close()
		delete(f.files, k)
	}
}

func (f *FS) lookup(k key) *file {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.files[k]
}

// reopen opens the inode behind fd (or path) read-write for crashfs's own use; through
// /proc/self/fd it works for an unlinked file and for a descriptor opened write-only.
func reopen(fd int, path string) (int, syscall.Errno) {
	if fd >= 0 {
		path = "/proc/self/fd/" + strconv.Itoa(fd)
	}
	own, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fs.ToErrno(err)
	}
	return own, 0
}

// save records the durable bytes of the pages overlapping [from, to) that are below the
// last-synced size and not saved yet. Bytes past the end of the backing file count as zeros:
// they were cut by a truncate that saved them first, or were a hole. Call with fl.mu held.
func (fl *file) save(from, to int64) syscall.Errno {
	to = min(to, fl.synced)
	for p := from / pageSize; p*pageSize < to; p++ {
		if _, ok := fl.saved[p]; ok {
			continue
		}
		buf := make([]byte, min(pageSize, fl.synced-p*pageSize))
		for n := 0; n < len(buf); {
			k, err := unix.Pread(fl.fd, buf[n:], p*pageSize+int64(n))
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return fs.ToErrno(err)
			}
			if k == 0 {
				break
			}
			n += k
		}
		fl.saved[p] = buf
	}
	return 0
}

// saveSparse is save over a range that may be mostly holes (a sparse file being truncated):
// only pages holding data are read.
func (fl *file) saveSparse(from, to int64) syscall.Errno {
	to = min(to, fl.synced)
	for off := from; off < to; {
		data, err := unix.Seek(fl.fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return 0 // no data after off
		}
		if err != nil {
			return fl.save(off, to) // no hole support: save everything
		}
		if data >= to {
			return 0
		}
		hole, err := unix.Seek(fl.fd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = to
		}
		end := min(hole, to)
		if errno := fl.save(data, end); errno != 0 {
			return errno
		}
		off = end
	}
	return 0
}

// truncating saves what a truncate to size would cut. Call with fl.mu held.
func (fl *file) truncating(size int64) syscall.Errno {
	var st unix.Stat_t
	if err := unix.Fstat(fl.fd, &st); err != nil {
		return fs.ToErrno(err)
	}
	if size >= st.Size {
		return 0
	}
	return fl.saveSparse(size, st.Size)
}

// fsynced marks the current content durable.
func (fl *file) fsynced() syscall.Errno {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd < 0 {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(fl.fd, &st); err != nil {
		return fs.ToErrno(err)
	}
	fl.synced = st.Size
	clear(fl.saved)
	return 0
}

// restore puts back the durable content and closes the record.
func (fl *file) restore() error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd < 0 {
		return nil
	}
	var errs []error
	for p, b := range fl.saved {
		if _, err := unix.Pwrite(fl.fd, b, p*pageSize); err != nil {
			errs = append(errs, fmt.Errorf("crashfs: restoring page %d: %w", p, err))
		}
	}
	if err := unix.Ftruncate(fl.fd, fl.synced); err != nil {
		errs = append(errs, fmt.Errorf("crashfs: restoring size %d: %w", fl.synced, err))
	}
	unix.Close(fl.fd)
	fl.fd = -1
	return errors.Join(errs...)
}

func (fl *file) close() {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd >= 0 {
		unix.Close(fl.fd)
		fl.fd = -1
	}
}
