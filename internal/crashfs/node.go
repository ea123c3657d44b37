package crashfs

import (
	"context"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is a loopback node whose data changes are recorded for undo. go-fuse calls the node's
// Write, Fsync, Setattr and Allocate before the file handle's, so file handles stay plain
// loopback files.
type node struct {
	*fs.LoopbackNode
	fs *FS
}

var (
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeWriter         = (*node)(nil)
	_ fs.NodeWritever       = (*node)(nil)
	_ fs.NodeFsyncer        = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeAllocater      = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeUnlinker       = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
	_ fs.NodeCopyFileRanger = (*node)(nil)
)

// WrapChild makes every node of the tree a crashfs node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &node{LoopbackNode: ln, fs: n.fs}
	}
	return ops
}

func keyOf(in *fs.Inode) key {
	a := in.StableAttr()
	return key{a.Ino, a.Gen}
}

func (n *node) key() key { return keyOf(n.EmbeddedInode()) }

// backingPath is the node's path in the backing directory.
func (n *node) backingPath() string {
	return filepath.Join(n.fs.backing, n.Path(n.Root()))
}

// handleFd is the backing descriptor of a loopback file handle, or -1.
func handleFd(fh fs.FileHandle) int {
	if lf, ok := fh.(*fs.LoopbackFile); ok {
		if fd, ok := lf.PassthroughFd(); ok {
			return fd
		}
	}
	return -1
}

func (n *node) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return n.Writev(ctx, fh, [][]byte{data}, off)
}

func (n *node) Writev(ctx context.Context, fh fs.FileHandle, iov [][]byte, off int64) (uint32, syscall.Errno) {
	fd := handleFd(fh)
	if fd < 0 {
		return 0, syscall.EBADF
	}
	total := 0
	for _, b := range iov {
		total += len(b)
	}
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return uint32(total), 0 // the power is off: the write goes nowhere
	}
	fl, errno := n.fs.track(n.key(), fd, "")
	if errno != 0 {
		return 0, errno
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd >= 0 { // else the file has no name left: nothing to undo
		if errno := fl.save(off, off+int64(total)); errno != 0 {
			return 0, errno
		}
	}
	w, err := unix.Pwritev(fd, iov, off)
	return uint32(max(w, 0)), fs.ToErrno(err)
}

// Fsync makes the file's current content durable. Directories need nothing: names are
// durable at once.
func (n *node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed || n.IsDir() {
		return 0
	}
	if fl := n.fs.lookup(n.key()); fl != nil {
		return fl.fsynced()
	}
	return 0
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return n.LoopbackNode.Getattr(ctx, fh, out)
	}
	size, ok := in.GetSize()
	if !ok || n.IsDir() {
		return n.LoopbackNode.Setattr(ctx, fh, in, out)
	}
	fl, errno := n.fs.track(n.key(), handleFd(fh), n.backingPath())
	if errno != 0 {
		return errno
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd >= 0 {
		if errno := fl.truncating(int64(size)); errno != 0 {
			return errno
		}
	}
	return n.LoopbackNode.Setattr(ctx, fh, in, out)
}

func (n *node) Allocate(ctx context.Context, fh fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	a, ok := fh.(fs.FileAllocater)
	if !ok {
		return syscall.EBADF
	}
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return 0
	}
	fl, errno := n.fs.track(n.key(), handleFd(fh), n.backingPath())
	if errno != 0 {
		return errno
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd >= 0 {
		switch {
		case mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) != 0:
			errno = fl.save(int64(off), int64(off+size))
		case mode&(unix.FALLOC_FL_COLLAPSE_RANGE|unix.FALLOC_FL_INSERT_RANGE) != 0:
			errno = fl.saveSparse(int64(off), fl.synced) // everything after off moves
		}
		if errno != 0 {
			return errno
		}
	}
	return a.Allocate(ctx, off, size, mode)
}

// Open handles O_TRUNC itself, as a recorded truncate (the kernel normally sends a separate
// SETATTR instead).
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fuseFlags, errno := n.LoopbackNode.Open(ctx, flags&^syscall.O_TRUNC)
	if errno != 0 || flags&syscall.O_TRUNC == 0 || n.IsDir() {
		return fh, fuseFlags, errno
	}
	if errno := n.truncateAll(fh); errno != 0 {
		if r, ok := fh.(fs.FileReleaser); ok {
			r.Release(ctx)
		}
		return nil, 0, errno
	}
	return fh, fuseFlags, 0
}

// truncateAll empties the file as O_TRUNC does, recorded for undo.
func (n *node) truncateAll(fh fs.FileHandle) syscall.Errno {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return syscall.EIO
	}
	fl, errno := n.fs.track(n.key(), handleFd(fh), n.backingPath())
	if errno != 0 {
		return errno
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.fd < 0 {
		return 0
	}
	if errno := fl.truncating(0); errno != 0 {
		return errno
	}
	return fs.ToErrno(unix.Ftruncate(fl.fd, 0))
}

// Create records a new file as empty until its first fsync.
func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.fs.crashMu.RLock()
	crashed := n.fs.crashed
	var st unix.Stat_t
	existed := unix.Lstat(filepath.Join(n.backingPath(), name), &st) == nil
	trunc := existed && flags&syscall.O_TRUNC != 0
	if existed {
		flags &^= syscall.O_TRUNC // done below, recorded
	}
	var ch *fs.Inode
	var fh fs.FileHandle
	var fuseFlags uint32
	errno := syscall.EIO
	if !crashed {
		ch, fh, fuseFlags, errno = n.LoopbackNode.Create(ctx, name, flags, mode, out)
		if errno == 0 && !existed {
			errno = n.fs.created(keyOf(ch), handleFd(fh))
		}
	}
	n.fs.crashMu.RUnlock()
	if errno == 0 && trunc {
		if cn, ok := ch.Operations().(*node); ok {
			errno = cn.truncateAll(fh)
		}
	}
	if errno != 0 {
		if r, ok := fh.(fs.FileReleaser); ok {
			r.Release(ctx)
		}
		return nil, nil, 0, errno
	}
	return ch, fh, fuseFlags, 0
}

// Unlink is durable at once; a file whose last name goes needs no undo record any more.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return syscall.EIO
	}
	ch := n.GetChild(name)
	var st unix.Stat_t
	lerr := unix.Lstat(filepath.Join(n.backingPath(), name), &st)
	if errno := n.LoopbackNode.Unlink(ctx, name); errno != 0 {
		return errno
	}
	if ch != nil && lerr == nil && st.Nlink <= 1 {
		n.fs.forget(keyOf(ch))
	}
	return 0
}

// Rename is durable at once; a file it replaces loses its record like an unlinked one.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return syscall.EIO
	}
	var replaced *fs.Inode
	var st unix.Stat_t
	if np, ok := newParent.(*node); ok && flags&unix.RENAME_EXCHANGE == 0 {
		if replaced = np.GetChild(newName); replaced != nil {
			if unix.Lstat(filepath.Join(np.backingPath(), newName), &st) != nil || st.Nlink > 1 || replaced.IsDir() {
				replaced = nil
			}
		}
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		return errno
	}
	if replaced != nil {
		n.fs.forget(keyOf(replaced))
	}
	return 0
}

// The remaining namespace changes fail once the power is off.

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return nil, syscall.EIO
	}
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return syscall.EIO
	}
	return n.LoopbackNode.Rmdir(ctx, name)
}

func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return nil, syscall.EIO
	}
	return n.LoopbackNode.Link(ctx, target, name, out)
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return nil, syscall.EIO
	}
	return n.LoopbackNode.Symlink(ctx, target, name, out)
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.crashMu.RLock()
	defer n.fs.crashMu.RUnlock()
	if n.fs.crashed {
		return nil, syscall.EIO
	}
	return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
}

// Tmpfile is refused: an O_TMPFILE file linked in later would escape the undo records.
func (n *node) Tmpfile(ctx context.Context, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// CopyFileRange is refused, so the kernel copies with reads and (recorded) writes.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}
