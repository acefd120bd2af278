"""The namespace state machine against the real kernel.

A hypothesis state machine applies the same random operations to a
Namespace (over a temporary LMDB) and to a real directory on /dev/shm
(tmpfs), and checks that both agree on success or errno of every operation,
on what reads return, and on the final tree (names, types, sizes, nlink,
modes, symlink targets, user xattrs); the namespace invariants are checked
after every step.

The real side runs in a forked child that chroot()s into its directory, so
absolute symlink targets and '..' at the top behave exactly as they do in
the Namespace (whose root is '/'). Everything runs as root, so permission
checks are bypassed on both sides; the unit tests cover non-root errnos.
Hypothesis prints a failing sequence and the seed to replay it.
"""

import ctypes
import errno as E
import os
import pickle
import shutil
import stat
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cistern.metadata import model
from cistern.metadata.model import Op
from cistern.metadata.testing import NamespaceHarness

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.isdir("/dev/shm"),
                                reason="needs root (chroot) and /dev/shm")

AT_FDCWD = -100


def _renameat2(src: bytes, dst: bytes, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _create(path, mode, exclusive):
    flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else 0)
    os.close(os.open(path, flags, mode))


def _stat(path, follow):
    st_ = os.stat(path, follow_symlinks=follow)
    kind = stat.S_IFMT(st_.st_mode)
    return (kind, st_.st_size if kind != stat.S_IFDIR else None, st_.st_nlink, stat.S_IMODE(st_.st_mode))


def _tree():
    out = {}
    for dirpath, dirnames, filenames in os.walk(b"/"):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st_ = os.lstat(full)
            kind = stat.S_IFMT(st_.st_mode)
            target = os.readlink(full) if kind == stat.S_IFLNK else None
            size = st_.st_size if kind == stat.S_IFREG else None
            xattrs = None if kind == stat.S_IFLNK else sorted(
                (n.encode(), os.getxattr(full, n, follow_symlinks=False))
                for n in os.listxattr(full, follow_symlinks=False) if n.startswith("user."))
            out[full] = (kind, size, st_.st_nlink, stat.S_IMODE(st_.st_mode), target, xattrs)
    return out


REAL_OPS = {
    "mkdir": os.mkdir,
    "create": _create,
    "symlink": lambda path, target: os.symlink(target, path),
    "link": lambda old, new: os.link(old, new, follow_symlinks=False),
    "unlink": os.unlink,
    "rmdir": os.rmdir,
    "rename": _renameat2,
    "chmod": os.chmod,
    "truncate": os.truncate,
    "setxattr": os.setxattr,
    "getxattr": os.getxattr,
    "removexattr": os.removexattr,
    "stat": _stat,
    "readlink": os.readlink,
    "listdir": lambda path: sorted(os.listdir(path)),
    "tree": _tree,
}


def _send(fd, obj):
    data = pickle.dumps(obj)
    os.write(fd, struct.pack(">I", len(data)) + data)


def _recv(fd):
    head = _read_exactly(fd, 4)
    if not head:
        return None
    return pickle.loads(_read_exactly(fd, struct.unpack(">I", head)[0]))


def _read_exactly(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return buf
        buf += chunk
    return buf


class RealFs:
    """A forked child chroot()ed into ``root`` that runs os calls for us."""

    def __init__(self, root: str):
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            try:
                os.close(req_w)
                os.close(rep_r)
                os.chroot(root)
                os.chdir("/")
                os.umask(0)
                self._serve(req_r, rep_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(rep_w)
        self._w, self._r = req_w, rep_r

    @staticmethod
    def _serve(rfd, wfd):
        while (request := _recv(rfd)) is not None:
            name, args = request
            try:
                _send(wfd, (0, REAL_OPS[name](*args)))
            except OSError as exc:
                _send(wfd, (exc.errno, None))

    def call(self, name, *args):
        _send(self._w, (name, args))
        return _recv(self._r)

    def close(self):
        os.close(self._w)
        os.close(self._r)
        os.waitpid(self.pid, 0)


NAMES = [b"a", b"b", b"c"]
# Mostly plain names, so operations collide; sometimes '.', '..' or a trailing slash.
paths = st.builds(
    lambda comps, trailing: b"/" + b"/".join(comps) + (b"/" if trailing else b""),
    st.lists(st.sampled_from(NAMES * 3 + [b".", b".."]), min_size=1, max_size=3),
    st.sampled_from([False] * 6 + [True]),
)
targets = st.builds(
    lambda absolute, comps: (b"/" if absolute else b"") + b"/".join(comps),
    st.booleans(),
    st.lists(st.sampled_from(NAMES * 2 + [b".", b".."]), min_size=1, max_size=3),
)
modes = st.sampled_from([0o755, 0o700, 0o644, 0o1777, 0o2755, 0o4755, 0o000, 0o777])
xattr_names = st.sampled_from([b"user.x", b"user.y"])


class NamespaceVsPosix(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(dir="/dev/shm", prefix="cistern-sim-")
        os.mkdir(os.path.join(self.dir, "real"))
        self.h = NamespaceHarness(os.path.join(self.dir, "lmdb"))
        self.real = RealFs(os.path.join(self.dir, "real"))

    def teardown(self):
        self.real.close()
        self.h.close()
        shutil.rmtree(self.dir)

    def both(self, code, real_name, args, real_args=None):
        mine = self.h.write(code, *args) if code not in model.READ_OPS else self.h.read(code, *args)
        theirs = self.real.call(real_name, *(args if real_args is None else real_args))
        assert mine[0] == theirs[0], (real_name, args, mine, E.errorcode.get(theirs[0], theirs[0]))
        return mine, theirs

    @rule(path=paths, mode=modes)
    def mkdir(self, path, mode):
        self.both(Op.MKDIR, "mkdir", (path, mode))

    @rule(path=paths, mode=modes, exclusive=st.booleans())
    def create(self, path, mode, exclusive):
        self.both(Op.CREATE, "create", (path, mode, exclusive))

    @rule(path=paths, link_target=targets)
    def symlink(self, path, link_target):
        self.both(Op.SYMLINK, "symlink", (path, link_target))

    @rule(old=paths, new=paths)
    def link(self, old, new):
        self.both(Op.LINK, "link", (old, new))

    @rule(path=paths)
    def unlink(self, path):
        self.both(Op.UNLINK, "unlink", (path,))

    @rule(path=paths)
    def rmdir(self, path):
        self.both(Op.RMDIR, "rmdir", (path,))

    @rule(src=paths, dst=paths, flags=st.sampled_from([0, 0, 0, model.RENAME_NOREPLACE, model.RENAME_EXCHANGE]))
    def rename(self, src, dst, flags):
        self.both(Op.RENAME, "rename", (src, dst, flags))

    @rule(path=paths, mode=modes)
    def chmod(self, path, mode):
        self.both(Op.SETATTR, "chmod", (path, {"mode": mode}), (path, mode))

    @rule(path=paths, size=st.sampled_from([0, 1, 100, 5000]))
    def truncate(self, path, size):
        self.both(Op.SETATTR, "truncate", (path, {"size": size}), (path, size))

    @rule(path=paths, name=xattr_names, value=st.sampled_from([b"", b"v1", b"v2"]),
          flags=st.sampled_from([0, model.XATTR_CREATE, model.XATTR_REPLACE]))
    def setxattr(self, path, name, value, flags):
        self.both(Op.SETXATTR, "setxattr", (path, name, value, flags))

    @rule(path=paths, name=xattr_names)
    def getxattr(self, path, name):
        mine, theirs = self.both(Op.GETXATTR, "getxattr", (path, name))
        assert mine[2] == theirs[1]

    @rule(path=paths, name=xattr_names)
    def removexattr(self, path, name):
        self.both(Op.REMOVEXATTR, "removexattr", (path, name))

    @rule(path=paths, follow=st.booleans())
    def stat(self, path, follow):
        mine, theirs = self.both(Op.GETATTR, "stat", (path, follow))
        if mine[0] == 0:
            attr = mine[2]
            kind = stat.S_IFMT(attr.mode)
            assert (kind, attr.size if kind != stat.S_IFDIR else None, attr.nlink,
                    stat.S_IMODE(attr.mode)) == theirs[1]

    @rule(path=paths)
    def readlink(self, path):
        mine, theirs = self.both(Op.READLINK, "readlink", (path,))
        assert mine[2] == theirs[1]

    @rule(path=paths)
    def listdir(self, path):
        mine = self.h.read(Op.READDIR, path, None, 1000)
        theirs = self.real.call("listdir", path)
        assert mine[0] == theirs[0], (path, mine, theirs)
        if mine[0] == 0:
            assert sorted(e[0] for e in mine[2][0]) == theirs[1]

    @invariant()
    def trees_agree(self):
        self.h.check()
        mine = self.h.tree()
        for path, entry in mine.items():
            xattrs = None
            if entry[0] != stat.S_IFLNK:
                xattrs = sorted((n, self.h.ok(Op.GETXATTR, path, n))
                                for n in self.h.ok(Op.LISTXATTR, path) if n.startswith(b"user."))
            mine[path] = entry + (xattrs,)
        status, theirs = self.real.call("tree")
        assert status == 0
        assert mine == theirs


NamespaceVsPosix.TestCase.settings = settings(
    # CISTERN_SIM_EXAMPLES raises the count for a soak run.
    max_examples=int(os.environ.get("CISTERN_SIM_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_namespace_matches_linux = NamespaceVsPosix.TestCase
