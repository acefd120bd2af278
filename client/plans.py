"""Every client operation, written once as a *plan*: a generator that yields
the metadata operations it needs and gets their values back.

A plan does no I/O. It yields ``Call(code, args, filename, filename2)``
(``args`` without the credentials, which belong to whoever drives the plan)
and receives the decoded value, or has an ``OSError`` thrown in at the yield
(already carrying the errno and the filenames the ``os`` module would put
there). What the plan returns is the operation's result. Three drivers run
the same plans (``api.Client`` blocking, ``api.Futures`` with
``concurrent.futures``, ``aio.AsyncClient`` with asyncio), so the three faces
cannot drift apart, and a plan can be tested by feeding it values.

Plans are methods of ``Plans`` so their signatures read as the public ones;
``self`` is the face driving them, and a plan reads only ``self.umask`` from it.
"""

from __future__ import annotations

import errno
import math
import os
import stat as stat_module
from typing import NamedTuple

from cistern.core.errors import CisternError, to_oserror
from cistern.metadata import limits
from cistern.metadata.model import REPLICATION_XATTR, TIME_NOW, Attr, Op

from . import paths
from .paths import Target

__all__ = ["Call", "Plans", "stat_result", "statvfs_result", "ST_DEV"]

# st_dev of every Cistern inode: one namespace, one device number. Any
# constant works; this one spells "Cist" so it is recognisable in a dump.
ST_DEV = 0x43697374
stat_block_size_bytes = 4 * 1024 * 1024      # st_blksize: the default block size
statfs_block_size_bytes = 4096               # f_bsize/f_frsize in statvfs
# Until the service reports capacity, statvfs reports this much free space
# (df would otherwise show a full filesystem and some tools refuse to write).
statfs_nominal_free_bytes = 1 << 50
statfs_nominal_free_inodes = 1 << 32
_NS_PER_S = 1_000_000_000
# Errors that mean "no answer", not "no such path": predicates raise them.
_NO_ANSWER = frozenset((errno.ETIMEDOUT, errno.ESHUTDOWN, errno.EIO))
# Operations whose value is an Attr (see model.Op).
_ATTR_OPS = frozenset((Op.GETATTR, Op.LOOKUP, Op.MKDIR, Op.CREATE, Op.SYMLINK, Op.LINK,
                       Op.SETATTR, Op.COMMIT_WRITE))


class Call(NamedTuple):
    """One metadata operation a plan asks for."""

    code: int
    args: tuple
    filename: object = None
    filename2: object = None

    def oserror(self, error: CisternError) -> OSError:
        """The exception ``os`` would raise, naming this call's paths."""
        return to_oserror(error.errno, error.message, self.filename, self.filename2)


def as_attr(value) -> Attr:
    return value if isinstance(value, Attr) else Attr(*value)


def stat_result(attr: Attr) -> os.stat_result:
    """An ``os.stat_result`` for ``attr``; times as ``os.stat`` computes them."""
    extra = {"st_blksize": stat_block_size_bytes, "st_rdev": 0,
             "st_blocks": (attr.size + 511) // 512 if stat_module.S_ISREG(attr.mode) else 0}
    seconds = []
    for field, ns in (("atime", attr.atime_ns), ("mtime", attr.mtime_ns), ("ctime", attr.ctime_ns)):
        sec, nsec = divmod(ns, _NS_PER_S)
        seconds.append(sec)
        extra[f"st_{field}"] = sec + nsec * 1e-9    # the same float os.stat builds
        extra[f"st_{field}_ns"] = ns
    return os.stat_result(
        (attr.mode, attr.ino, ST_DEV, attr.nlink, attr.uid, attr.gid, attr.size, *seconds), extra)


def statvfs_result(value: dict) -> os.statvfs_result:
    bsize = statfs_block_size_bytes
    used_blocks = -(-int(value.get("bytes", 0)) // bsize)
    free_bytes = value.get("free_bytes", statfs_nominal_free_bytes)
    free_blocks = int(free_bytes) // bsize
    inodes_free = int(value.get("inodes_free", statfs_nominal_free_inodes))
    inodes_used = int(value.get("files", 0)) + int(value.get("dirs", 0))
    return os.statvfs_result(
        (bsize, bsize, used_blocks + free_blocks, free_blocks, free_blocks,
         inodes_used + inodes_free, inodes_free, inodes_free, 0, limits.name_length_max_bytes),
        {"f_fsid": ST_DEV})


def time_to_ns(t, function: str = "utime") -> int:
    """Seconds (int or float) to ns, rounding down as ``os.utime`` does."""
    if isinstance(t, int):
        return t * _NS_PER_S
    if not isinstance(t, float):
        raise TypeError(f"{function}: time must be int or float, not {type(t).__name__}")
    frac, whole = math.modf(t)
    nsec = math.floor(frac * 1e9)
    if nsec >= _NS_PER_S:
        nsec -= _NS_PER_S
        whole += 1.0
    elif nsec < 0:
        nsec += _NS_PER_S
        whole -= 1.0
    return int(whole) * _NS_PER_S + int(nsec)


def _names(attribute, function: str) -> bytes:
    if isinstance(attribute, str):
        return os.fsencode(attribute)
    if isinstance(attribute, bytes):
        return attribute
    return os.fsencode(paths.fspath(attribute, function))


def _wire_arg(arg):
    """TXN arguments: paths and names as the state machine takes them."""
    if isinstance(arg, (str, os.PathLike)):
        return paths.parse(arg, function="txn").wire
    return arg


class Plans:
    """The operations. Each method is a generator (see the module docstring);
    the faces wrap them, so the docstrings here are the public contracts."""

    umask: int

    # -- reads -----------------------------------------------------------

    def attr(self, path, *, follow_symlinks=True) -> Attr:
        """The inode's attributes as the service keeps them (``model.Attr``).
        Errors: ENOENT, ENOTDIR, EACCES (search permission), ELOOP."""
        t = paths.parse(path, function="stat")
        return (yield from _getattr(t, follow_symlinks))

    def stat(self, path, *, follow_symlinks=True) -> os.stat_result:
        """``os.stat``: an ``os.stat_result`` (st_dev is the constant
        ``ST_DEV``; st_blksize the block size; st_blocks 512-byte units).
        Errors as ``attr``."""
        t = paths.parse(path, function="stat")
        return stat_result((yield from _getattr(t, follow_symlinks)))

    def lstat(self, path) -> os.stat_result:
        """``os.lstat``: ``stat`` without following a final symlink."""
        t = paths.parse(path, function="lstat")
        return stat_result((yield from _getattr(t, False)))

    def exists(self, path) -> bool:
        """``os.path.exists``: False when the path cannot be resolved (any
        errno from the namespace). Unlike ``os.path`` it does raise when the
        service gives no answer (ETIMEDOUT, ESHUTDOWN, EIO): "unreachable"
        must not read as "absent"."""
        return (yield from _probe(path, True, lambda a: True))

    def lexists(self, path) -> bool:
        """``os.path.lexists``: True for a broken symlink too."""
        return (yield from _probe(path, False, lambda a: True))

    def isdir(self, path) -> bool:
        """``os.path.isdir`` (follows symlinks)."""
        return (yield from _probe(path, True, lambda a: stat_module.S_ISDIR(a.mode)))

    def isfile(self, path) -> bool:
        """``os.path.isfile`` (follows symlinks)."""
        return (yield from _probe(path, True, lambda a: stat_module.S_ISREG(a.mode)))

    def islink(self, path) -> bool:
        """``os.path.islink``."""
        return (yield from _probe(path, False, lambda a: stat_module.S_ISLNK(a.mode)))

    def access(self, path, mode) -> bool:
        """``os.access`` with the client's credentials (real = effective
        here): True when every bit of ``mode`` (R_OK|W_OK|X_OK, or F_OK) is
        granted; False on any namespace error. Raises only when the service
        gives no answer, as ``exists`` does."""
        try:
            t = paths.parse(path, function="access")
        except (OSError, ValueError):
            return False
        try:
            yield Call(Op.ACCESS, (t.wire, int(mode)), t.given)
        except OSError as e:
            if e.errno in _NO_ANSWER:
                raise
            return False
        return True

    def listdir(self, path="/") -> list:
        """``os.listdir``: the names in a directory in the service's order,
        without ``.`` and ``..``; str names for a str path, bytes for bytes.
        Pages through READDIR, so a huge directory costs several round trips
        and is not a snapshot (entries changed meanwhile may or may not
        appear). Errors: ENOENT, ENOTDIR, EACCES."""
        t = paths.parse(path, function="listdir")
        entries = yield from _readdir(t)
        return [paths.decode_like(t.as_bytes, name) for name, _, _ in entries]

    def readdir(self, path="/") -> list:
        """Raw directory entries ``[(name bytes, ino, kind), ...]`` where kind
        is ``model.KIND_DIR/KIND_REG/KIND_LNK`` (the S_IFMT bits). For scandir
        and the mount. Errors as ``listdir``."""
        t = paths.parse(path, function="scandir")
        return [tuple(entry) for entry in (yield from _readdir(t))]

    def readdir_page(self, path="/", after=None, limit=None) -> tuple:
        """One page of ``readdir``: ``(entries, done)``, the entries (as
        ``readdir`` gives them) whose names follow ``after`` (bytes, None
        for the start) in the service's order, at most ``limit`` of them
        (default and ceiling: one READDIR reply, ``limits.readdir_page_entries_max``);
        ``done`` when none follow. One round trip, so a caller can bound its
        work in a huge directory (the mount's stat-ahead). Errors as ``listdir``."""
        t = paths.parse(path, function="scandir")
        limit = limits.readdir_page_entries_max if limit is None else max(1, min(int(limit),
                                                                             limits.readdir_page_entries_max))
        page, done = yield Call(Op.READDIR, (t.wire, None if after is None else bytes(after), limit), t.given)
        return [tuple(entry) for entry in page], bool(done)

    def readlink(self, path):
        """``os.readlink``: the target as stored, str for a str path.
        Errors: ENOENT, EINVAL (not a symlink), ENOTDIR, EACCES."""
        t = paths.parse(path, function="readlink")
        target = yield Call(Op.READLINK, (t.wire,), t.given)
        return paths.decode_like(t.as_bytes, target)

    def getxattr(self, path, attribute, *, follow_symlinks=True) -> bytes:
        """``os.getxattr``: the value (bytes). Errors: ENODATA, ENOENT, EACCES."""
        t = paths.parse(path, function="getxattr")
        ref = yield from _ref(t, follow_symlinks)
        return (yield Call(Op.GETXATTR, (ref, _names(attribute, "getxattr")), t.given))

    def listxattr(self, path, *, follow_symlinks=True) -> list[str]:
        """``os.listxattr``: names as str (always, as ``os`` does)."""
        t = paths.parse(path, function="listxattr")
        ref = yield from _ref(t, follow_symlinks)
        names = yield Call(Op.LISTXATTR, (ref,), t.given)
        return [os.fsdecode(name) for name in names]

    def statvfs(self, path="/") -> os.statvfs_result:
        """``os.statvfs``: the whole namespace's counts (one filesystem, so
        ``path`` only has to exist). f_namemax is 255; space counts use
        ``statfs_block_size_bytes`` units."""
        t = paths.parse(path, function="statvfs")
        yield from _getattr(t, True)
        return statvfs_result((yield Call(Op.STATFS, (), t.given)))

    statfs = statvfs

    # -- writes ----------------------------------------------------------

    def mkdir(self, path, mode=0o777) -> None:
        """``os.mkdir``: creates a directory with ``mode & ~umask``.
        Errors: EEXIST, ENOENT (parent missing), ENOTDIR, EACCES, ENAMETOOLONG."""
        yield from Plans.mkdir_attr(self, path, mode)

    def mkdir_attr(self, path, mode=0o777) -> Attr:
        """``mkdir`` returning the new directory's attributes (the mount
        caches them instead of asking again)."""
        t = paths.parse(path, function="mkdir")
        return as_attr((yield Call(Op.MKDIR, (t.wire, mode & ~self.umask & 0o7777), t.given)))

    def makedirs(self, path, mode=0o777, exist_ok=False) -> None:
        """``os.makedirs``: creates missing parents (mode 0o777 & ~umask)
        then the leaf (``mode``). Tries the leaf first, so an existing parent
        costs one round trip. EEXIST unless ``exist_ok`` and a directory is
        there."""
        given = paths.fspath(path, "makedirs")
        t = paths.parse(given, function="makedirs")
        try:
            yield Call(Op.MKDIR, (t.wire, mode & ~self.umask & 0o7777), given)
        except FileNotFoundError:
            head, tail = paths.split(given)
            if not head or head == given or tail in ("", b""):
                raise
            try:
                yield from Plans.makedirs(self, head, exist_ok=True)
            except FileExistsError:
                pass   # a file where a parent should be: the leaf's mkdir says ENOTDIR
            if tail in (".", b"."):
                return
            try:
                yield Call(Op.MKDIR, (t.wire, mode & ~self.umask & 0o7777), given)
            except FileExistsError:
                if not exist_ok or not (yield from Plans.isdir(self, t.wire)):
                    raise
        except FileExistsError:
            if not exist_ok or not (yield from Plans.isdir(self, t.wire)):
                raise

    def create(self, path, mode=0o666, exclusive=False) -> Attr:
        """Creates an empty regular file with ``mode & ~umask`` and returns its
        attributes; when it exists already, returns the existing file's
        attributes unchanged (EEXIST if ``exclusive``, as O_EXCL). Errors:
        EISDIR (a directory is there, or a trailing slash), ENOENT, ENOTDIR,
        EACCES."""
        t = paths.parse(path, function="open")
        if t.dir_only:
            raise to_oserror(errno.EISDIR, "", t.given)
        value = yield Call(Op.CREATE, (t.wire, mode & ~self.umask & 0o7777, bool(exclusive)), t.given)
        return as_attr(value)

    def touch(self, path, mode=0o666, exist_ok=True) -> Attr:
        """``pathlib.Path.touch``: sets atime and mtime to now if the path
        exists (FileExistsError unless ``exist_ok``), else creates an empty
        file. Two round trips when it creates."""
        t = paths.parse(path, function="touch")
        if exist_ok:
            try:
                value = yield Call(Op.SETATTR, (t.wire, {"atime": TIME_NOW, "mtime": TIME_NOW}), t.given)
                return as_attr(value)
            except FileNotFoundError:
                pass
        return (yield from Plans.create(self, path, mode, exclusive=not exist_ok))

    def symlink(self, src, dst, target_is_directory=False) -> None:
        """``os.symlink(src, dst)``: creates ``dst`` pointing at ``src`` (the
        target is stored as given, never resolved). Errors name both, as
        ``os`` does: EEXIST, ENOENT, ENOTDIR, EACCES, ENAMETOOLONG."""
        yield from Plans.symlink_attr(self, src, dst)

    def symlink_attr(self, src, dst) -> Attr:
        """``symlink`` returning the new link's attributes (for the mount)."""
        target = src if isinstance(src, bytes) else os.fsencode(paths.fspath(src, "symlink"))
        if b"\0" in target:
            raise ValueError("symlink: embedded null character in src")
        if len(target) > limits.symlink_target_length_max_bytes:
            raise to_oserror(errno.ENAMETOOLONG, "", os.fspath(src), os.fspath(dst))
        t = _parse_second(src, dst, "symlink")
        names = (os.fspath(src), t.given)
        return as_attr((yield Call(Op.SYMLINK, (t.wire, target), *names)))

    def link(self, src, dst) -> None:
        """``os.link``: a new name ``dst`` for the inode at ``src`` (a final
        symlink in ``src`` is not followed, as Linux's link(2)). Errors name
        both: EEXIST, ENOENT, ENOTDIR, EPERM (a directory, or
        protected_hardlinks), EACCES."""
        s, d = _parse_pair(src, dst, "link")
        names = (s.given, d.given)
        yield Call(Op.LINK, (s.wire, d.wire), *names)

    def unlink(self, path) -> None:
        """``os.unlink``: removes a non-directory name; the inode goes with
        its last name. Errors: ENOENT, EISDIR, ENOTDIR, EACCES, EPERM (sticky)."""
        t = paths.parse(path, function="unlink")
        yield Call(Op.UNLINK, (t.wire,), t.given)

    remove = unlink

    def rmdir(self, path) -> None:
        """``os.rmdir``: removes an empty directory. Errors: ENOENT,
        ENOTEMPTY, ENOTDIR, EBUSY (the root), EINVAL (``.``), EACCES."""
        t = paths.parse(path, function="rmdir")
        yield Call(Op.RMDIR, (t.wire,), t.given)

    def removedirs(self, name) -> None:
        """``os.removedirs``: rmdir the leaf, then each parent until one
        fails (that failure is swallowed, as ``os`` does)."""
        given = paths.fspath(name, "removedirs")
        yield from Plans.rmdir(self, given)
        head, tail = paths.split(given)
        if not tail:
            head, tail = paths.split(head)
        while head and tail and head not in ("/", b"/"):
            try:
                yield from Plans.rmdir(self, head)
            except OSError:
                break
            head, tail = paths.split(head)

    def rename(self, src, dst) -> None:
        """``os.rename`` (POSIX rename(2)): atomically moves ``src`` to
        ``dst``, replacing a file, or an empty directory with a directory.
        Errors name both: ENOENT, EEXIST/ENOTEMPTY, EISDIR, ENOTDIR, EINVAL
        (into its own subtree), EACCES, EBUSY."""
        return (yield from Plans.rename2(self, src, dst, 0, _function="rename"))

    def replace(self, src, dst) -> None:
        """``os.replace``: the same as ``rename`` on POSIX."""
        return (yield from Plans.rename2(self, src, dst, 0, _function="replace"))

    def rename2(self, src, dst, flags=0, *, _function="rename2") -> None:
        """renameat2(2): ``flags`` is 0, ``RENAME_NOREPLACE`` (EEXIST when
        ``dst`` exists) or ``RENAME_EXCHANGE`` (swap two existing names)."""
        s, d = _parse_pair(src, dst, _function)
        names = (s.given, d.given)
        yield Call(Op.RENAME, (s.wire, d.wire, int(flags)), *names)

    def setattr(self, path, *, mode=None, uid=None, gid=None, size=None,
                atime_ns=None, mtime_ns=None, follow_symlinks=True) -> Attr:
        """Sets any of the attributes at once (one round trip, one change)
        and returns the new attributes. ``model.TIME_NOW`` stamps the
        service's time. Permission rules as chmod/chown/utime/truncate."""
        t = paths.parse(path, function="setattr")
        fields = {k: v for k, v in (("mode", mode), ("uid", uid), ("gid", gid), ("size", size),
                                    ("atime", atime_ns), ("mtime", mtime_ns)) if v is not None}
        return (yield from _setattr(t, fields, follow_symlinks))

    def chmod(self, path, mode, *, follow_symlinks=True) -> None:
        """``os.chmod``: owner or root only (EPERM). The umask does not apply."""
        t = paths.parse(path, function="chmod")
        yield from _setattr(t, {"mode": int(mode) & 0o7777}, follow_symlinks)

    def chown(self, path, uid, gid, *, follow_symlinks=True) -> None:
        """``os.chown``: -1 leaves an id unchanged. Errors: EPERM."""
        t = paths.parse(path, function="chown")
        fields = {k: int(v) for k, v in (("uid", uid), ("gid", gid)) if int(v) != -1}
        yield from _setattr(t, fields, follow_symlinks)

    def lchown(self, path, uid, gid) -> None:
        """``os.lchown``: chown without following a final symlink."""
        return (yield from Plans.chown(self, path, uid, gid, follow_symlinks=False))

    def utime(self, path, times=None, *, ns=None, follow_symlinks=True) -> None:
        """``os.utime``: ``times=(atime, mtime)`` in seconds or ``ns=(atime_ns,
        mtime_ns)``; neither sets both to the service's current time (which
        needs only write permission, as on Linux)."""
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is not None:
            if not isinstance(times, tuple) or len(times) != 2:
                raise TypeError("utime: 'times' must be either a tuple of two ints or None")
            fields = {"atime": time_to_ns(times[0]), "mtime": time_to_ns(times[1])}
        elif ns is not None:
            if not isinstance(ns, tuple) or len(ns) != 2 or not all(isinstance(x, int) for x in ns):
                raise TypeError("utime: 'ns' must be a tuple of two ints")
            fields = {"atime": ns[0], "mtime": ns[1]}
        else:
            fields = {"atime": TIME_NOW, "mtime": TIME_NOW}
        t = paths.parse(path, function="utime")
        yield from _setattr(t, fields, follow_symlinks)

    def truncate(self, path, length) -> None:
        """``os.truncate``: sets the size (metadata: a shrink drops the
        blocks beyond ``length``). Errors: EINVAL (negative), EISDIR, EACCES."""
        t = paths.parse(path, function="truncate")
        if length < 0:
            raise to_oserror(errno.EINVAL, "", t.given)
        yield from _setattr(t, {"size": int(length)}, True)

    def grow_reveals_tail(self, path, length) -> bool:
        """Whether ``truncate(path, length)`` must take the data path: it
        grows a file whose last block reaches past its size (a shrink that
        ends inside a block keeps the block whole, the size hiding its
        tail), so a metadata-only grow would bring that tail back instead
        of zeros. False when ``length`` is no int or ``path`` is not a
        readable regular file: the metadata truncate reports the error."""
        if not isinstance(length, int):
            return False
        try:
            attr, layout, _ = yield from Plans.layout(self, path)
        except OSError:
            return False
        return length > attr.size and sum(block[1] for block in layout) > attr.size

    def setxattr(self, path, attribute, value, flags=0, *, follow_symlinks=True) -> None:
        """``os.setxattr``: ``flags`` 0, XATTR_CREATE (EEXIST if set) or
        XATTR_REPLACE (ENODATA if not). Errors: E2BIG, ERANGE, ENOSPC."""
        t = paths.parse(path, function="setxattr")
        ref = yield from _ref(t, follow_symlinks)
        yield Call(Op.SETXATTR, (ref, _names(attribute, "setxattr"), bytes(value), int(flags)), t.given)

    def removexattr(self, path, attribute, *, follow_symlinks=True) -> None:
        """``os.removexattr``. Errors: ENODATA when absent."""
        t = paths.parse(path, function="removexattr")
        ref = yield from _ref(t, follow_symlinks)
        yield Call(Op.REMOVEXATTR, (ref, _names(attribute, "removexattr")), t.given)

    def txn(self, conditions, ops) -> list:
        """All-or-nothing transaction, as etcd's Txn (see ``metadata.model``).

        ``conditions``: ``[(kind, ref, value), ...]`` with kind
        ``model.COND_EXISTS`` / ``COND_ABSENT`` / ``COND_VERSION`` (value: an
        ``Attr.version``). ``ops``: ``[(code, arg, ...), ...]`` with the
        arguments of that ``model.Op`` minus the credentials. str and PathLike
        arguments are parsed as paths (relative to the root, trailing slash
        dropped); bytes and ints pass through. Returns each op's value, in
        order. Raises the first failing condition's or op's error; then
        nothing was applied (a false condition is ECANCELED). Modes are sent
        as given (no umask). Values that are attributes come back as
        ``model.Attr``."""
        wire_conditions = [[kind, _wire_arg(ref), value] for kind, ref, value in conditions]
        wire_ops = [[int(op[0]), [_wire_arg(a) for a in op[1:]]] for op in ops]
        if len(wire_ops) > limits.txn_ops_max or len(wire_conditions) > limits.txn_conditions_max:
            raise to_oserror(errno.E2BIG, "too many operations or conditions in one txn")
        values = yield Call(Op.TXN, (wire_conditions, wire_ops))
        return [as_attr(v) if code in _ATTR_OPS and v is not None else v
                for (code, _), v in zip(wire_ops, values)]

    def open(self, path, mode="r", *args, **kwargs):
        """File contents move over the blocking data path only: the futures
        and asyncio faces raise OSError(ENOSYS); use ``Client.open``."""
        raise to_oserror(errno.ENOSYS, "open() is blocking-only: use Client.open", os.fspath(path))
        yield  # a generator like every plan

    def open_file(self, path, om, holder: bytes, replication=None):
        """The metadata half of ``Client.open`` for an ``extents.OpenMode``:
        creates the file (w, a, x; EEXIST for x), takes the write lease
        under ``holder`` (EBUSY while another writer holds it), sets the
        replication xattr when ``replication`` is given, and reads the layout
        (GET_LAYOUT: read permission); without ``replication`` all of it is
        one TXN (one round trip). Returns ``files.Opened``. A failure after
        the lease was taken releases it."""
        from .files import Opened

        if isinstance(path, int):   # an inode number (Client.reopen): nothing to create
            assert not om.create, "an inode number names an existing file"
            t = Target(path, False, path, False)
        else:
            t = paths.parse(path, function="open")
        if not om.writable:
            attr, layout, factor = yield Call(Op.GET_LAYOUT, (t.wire,), t.given)
            return Opened(as_attr(attr).ino, None, as_attr(attr), layout, factor)
        if om.create and t.dir_only:
            raise to_oserror(errno.EISDIR, "", t.given)
        create = [[int(Op.CREATE), [t.wire, 0o666 & ~self.umask, bool(om.exclusive)]]] if om.create else []
        if replication is None:
            # Create, lease and layout in one round trip (one all-or-nothing txn).
            try:
                values = yield Call(Op.TXN, ([], create + [[int(Op.OPEN_LEASE), [t.wire, holder]],
                                                           [int(Op.GET_LAYOUT), [t.wire]]]), t.given)
            except PermissionError:
                if not om.truncate:
                    raise
                # 'w' on a write-only file: step by step below (nothing to read).
            else:
                (ino, lease_id), (attr, layout, factor) = values[-2], values[-1]
                return Opened(ino, lease_id, as_attr(attr), layout, factor)
        if create:
            yield Call(Op.CREATE, tuple(create[0][1]), t.given)
        ino, lease_id = yield Call(Op.OPEN_LEASE, (t.wire, holder), t.given)
        try:
            if replication is not None:
                yield Call(Op.SETXATTR, (ino, REPLICATION_XATTR, str(int(replication)).encode(), 0), t.given)
            try:
                attr, layout, factor = yield Call(Op.GET_LAYOUT, (ino,), t.given)
            except PermissionError:
                if not om.truncate:
                    raise
                # 'w' on a write-only file: nothing to read, only the size to reset.
                attr, layout, factor = (yield from _getattr(t, True)), [], replication
            return Opened(ino, lease_id, as_attr(attr), layout, factor)
        except BaseException:
            try:
                yield Call(Op.RELEASE_LEASE, (ino, lease_id), t.given)
            except OSError:
                pass
            raise

    def layout(self, path) -> list:
        """``[attr, layout, replication]`` of a regular file (GET_LAYOUT):
        the layout is ``[[block_id, length, checksum, [node ids]], ...]``.
        Errors: ENOENT, EISDIR, EACCES (read permission)."""
        t = paths.parse(path, function="open")
        attr, layout, factor = yield Call(Op.GET_LAYOUT, (t.wire,), t.given)
        return [as_attr(attr), layout, factor]


# -- helpers shared by the plans ----------------------------------------------


def _parse_pair(src, dst, function: str) -> tuple[Target, Target]:
    """Both paths of a two-path call; a bad one is reported naming both, as
    ``os`` does."""
    try:
        s = paths.parse(src, function=function)
    except OSError as e:
        raise to_oserror(e.errno, "", os.fspath(src), os.fspath(dst)) from None
    return s, _parse_second(src, dst, function)


def _parse_second(src, dst, function: str) -> Target:
    try:
        return paths.parse(dst, function=function)
    except OSError as e:
        raise to_oserror(e.errno, "", os.fspath(src), os.fspath(dst)) from None


def _getattr(t: Target, follow: bool, names=None):
    names = names or (t.given,)
    value = yield Call(Op.GETATTR, (t.wire, bool(follow)), *names)
    return as_attr(value)


def _probe(path, follow: bool, predicate):
    try:
        t = paths.parse(path, function="stat")
    except (OSError, ValueError):
        return False
    try:
        return predicate((yield from _getattr(t, follow)))
    except OSError as e:
        if e.errno in _NO_ANSWER:
            raise
        return False


def _readdir(t: Target):
    entries = []
    after = None
    while True:
        page, done = yield Call(Op.READDIR, (t.wire, after, limits.readdir_page_entries_max), t.given)
        entries.extend(page)
        if done or not page:
            return entries
        after = page[-1][0]


# Whether SETATTR/GETXATTR/... follow a final symlink in a path ref. The state
# machine follows (as chmod, getxattr do); an inode number follows nothing,
# so the no-follow forms resolve the path with lstat first.
def _ref(t: Target, follow: bool):
    if follow or t.dir_only:
        return t.wire
    a = yield from _getattr(t, False)
    return a.ino


def _setattr(t: Target, fields: dict, follow: bool):
    ref = yield from _ref(t, follow)
    return as_attr((yield Call(Op.SETATTR, (ref, fields), t.given)))
