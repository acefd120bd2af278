"""A minimal fusepy passthrough filesystem: the FUSE benchmark's ceiling.

    python -m cistern.fuse.passthrough SRC MNT [-o big_writes,max_write=131072,...]

Mounts SRC at MNT in the foreground, multi-threaded, every callback one os
call on SRC (file handles are SRC's file descriptors). It costs what fusepy
and the kernel's FUSE round trip cost and nothing more, so "Cistern mount /
passthrough" says how much of the remaining time is Cistern's. For a fair
comparison it takes its options exactly as ``cistern mount`` does
(``mount.parse_options``: the same kernel FUSE defaults, big writes, attr and
entry timeouts, use_ino, and the same 4 MiB kernel read-ahead), then any
``-o`` given; the mount's own options (``timeout``, ``attr_cache``,
``block_size``) mean nothing here. SIGTERM or SIGINT unmounts and exits 0
(libfuse's own handlers), as does ``fusermount -u MNT``.

Not for users: no permission checks of its own beyond the kernel's
``default_permissions``, files created as the user running it.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import threading

import fuse as fusepy

from cistern.core import procs
from cistern.core.errors import CisternError

from . import mount

_STAT_FIELDS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_rdev")
_STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                   "f_flag", "f_namemax")


def _attrs(st: os.stat_result) -> dict:
    out = {k: getattr(st, k) for k in _STAT_FIELDS}
    out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
    return out


class Passthrough(fusepy.Operations):
    """Each callback maps a path under the mount to the same path under
    ``root``; OSErrors pass through (fusepy returns their errno)."""

    use_ns = True       # times in integer nanoseconds, as os.stat gives them

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def _p(self, path: str) -> str:
        return self.root + path

    # -- attributes -----------------------------------------------------------
    def getattr(self, path, fh=None):
        return _attrs(os.fstat(fh) if fh is not None else os.lstat(self._p(path)))

    def access(self, path, amode):
        if not os.access(self._p(path), amode):
            raise fusepy.FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._p(path), uid, gid, follow_symlinks=False)

    def utimens(self, path, times=None):
        os.utime(self._p(path), ns=times, follow_symlinks=False)

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in _STATVFS_FIELDS}

    # -- the namespace -----------------------------------------------------------
    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._p(path))]

    def mkdir(self, path, mode):
        os.mkdir(self._p(path), mode)

    def rmdir(self, path):
        os.rmdir(self._p(path))

    def mknod(self, path, mode, dev):
        os.mknod(self._p(path), mode, dev)

    def unlink(self, path):
        os.unlink(self._p(path))

    def rename(self, old, new):
        os.rename(self._p(old), self._p(new))

    def link(self, target, source):
        os.link(self._p(source), self._p(target))

    def symlink(self, target, source):
        os.symlink(source, self._p(target))

    def readlink(self, path):
        return os.readlink(self._p(path))

    # -- file data -------------------------------------------------------------------
    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_RDWR | os.O_CREAT, mode)

    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        (os.fdatasync if datasync else os.fsync)(fh)

    def release(self, path, fh):
        os.close(fh)

    # -- extended attributes ---------------------------------------------------------
    def getxattr(self, path, name, position=0):
        return os.getxattr(self._p(path), name, follow_symlinks=False)

    def listxattr(self, path):
        return os.listxattr(self._p(path), follow_symlinks=False)

    def setxattr(self, path, name, value, options, position=0):
        os.setxattr(self._p(path), name, value, options, follow_symlinks=False)

    def removexattr(self, path, name):
        os.removexattr(self._p(path), name, follow_symlinks=False)


def main(argv=None) -> int:
    procs.die_with_parent_if_asked()
    parser = argparse.ArgumentParser(prog="python -m cistern.fuse.passthrough",
                                     description="Mount SRC at MNT through a minimal fusepy passthrough "
                                                 "(foreground, multi-threaded).")
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("mountpoint", metavar="MNT")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        help="mount options, comma-separated, as cistern mount takes them")
    args = parser.parse_args(argv)
    for path in (args.source, args.mountpoint):
        if not os.path.isdir(path):
            print(f"passthrough: {path}: not a directory", file=sys.stderr)
            return 2
    try:
        options, own = mount.parse_options(["fsname=passthrough,subtype=passthrough", *args.options])
    except CisternError as e:
        print(f"passthrough: {e.message}", file=sys.stderr)
        return 2
    if own["read_ahead_kb"]:
        threading.Thread(target=mount._set_read_ahead, args=(os.path.abspath(args.mountpoint), own["read_ahead_kb"]),
                         daemon=True).start()
    fusepy.FUSE(Passthrough(args.source), args.mountpoint, foreground=True, nothreads=False, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
