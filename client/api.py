"""The ``os``-like client: ``connect()``, ``Client`` and its futures face.

Contract for every method of ``Client`` (and of its faces):

Errors
    Failures raise the ``OSError`` subclass ``os`` would raise, with the
    errno and ``filename`` (and ``filename2`` for two-path calls) set to the
    path(s) as passed (``os.fspath`` of them): FileNotFoundError for ENOENT,
    FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError
    (EACCES/EPERM), ``OSError`` with errno ENOTEMPTY, ENAMETOOLONG, ...
    When no metadata replica answers within the client's ``timeout_s``, the
    call raises ``TimeoutError`` (OSError, errno ETIMEDOUT). Bad argument
    types raise TypeError/ValueError, as ``os`` does.
Idempotency
    The metadata client retries through leader changes with the same
    request number, so each mutating metadata operation is applied exactly
    once even when retried. A method that needs several operations
    (``makedirs``, ``touch``, ``removedirs``, ``statvfs``, the
    ``follow_symlinks=False`` forms of chown/utime/xattrs, which resolve the
    link first) is not atomic as a whole; each step is applied once. Use
    ``txn`` when several changes must be all or nothing.
Durability
    When a mutating call returns, its change is committed in the Raft log on
    a majority of metadata replicas and survives any minority of failures.
Consistency
    Reads are linearizable (answered by the leader after a read barrier),
    unless the client was made with ``stale_reads=True``: then any replica
    may answer from its applied state, which can lag.
Threads
    A ``Client`` is thread-safe; concurrent calls from many threads share
    the metadata client's batches. ``with_creds`` views share the connection.

Paths: see ``cistern.client.paths`` (no working directory: relative paths
start at the root; trailing slashes follow the kernel's rules).

Three faces, one implementation: every operation is a plan (``plans.py``)
that the blocking ``Client``, the futures face (``client.futures``: each
method returns a ``concurrent.futures.Future`` at once) and the asyncio face
(``client.aio``, ``aio.py``) drive. The futures face advances a plan from the
metadata client's reply callbacks, so thousands of operations can be in
flight from one thread with no thread per operation; callbacks added to its
futures run on the metadata client's thread and must be short. ``scandir``
and ``walk`` (iterators) exist only on the blocking and asyncio faces,
``attrs`` (many answers at once) only on the blocking one.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat as stat_module
import threading
from concurrent.futures import Future

from cistern.core import cluster as cluster_module
from cistern.core.errors import CisternError, to_oserror
from cistern.metadata.model import READ_OPS, Op, encode_args

from . import paths
from .plans import Call, Plans, as_attr

__all__ = ["Client", "Futures", "DirEntry", "ScandirIterator", "connect"]

umask_default = 0o022


def connect(cluster: str | None = None, *, uid: int | None = None, gid: int | None = None,
            groups=None, timeout_s: float = 30.0, stale_reads: bool = False,
            umask: int = umask_default, block_size: int | None = None,
            node_id: str | None = None, local_data_dir: str | None = None,
            short_circuit: bool = True) -> "Client":
    """A ``Client`` for the cluster named by ``cluster`` (a cluster.json path
    or comma-separated metadata addresses; None reads $CISTERN_CLUSTER).
    Credentials default to this process's uid, gid and groups. Raises
    OSError (ENOENT, EINVAL) when the cluster cannot be found or parsed; does
    not wait for the cluster (the first call does, up to ``timeout_s``).
    ``block_size`` (bytes) is the size of blocks this client writes (default:
    the smallest the live nodes accept); ``node_id`` names the storage node
    on this host, read first (default ``$CISTERN_NODE_ID``), and
    ``local_data_dir`` its data directory, for short-circuit reads of whole
    blocks straight from its block files (default ``$CISTERN_NODE_DATA``).
    With ``short_circuit`` (the default) the nodes a cluster.json lists on
    this host (loopback addresses) are read that way too."""
    from cistern.metadata.client import MetaClient   # grpc loads only for real clusters

    try:
        spec = cluster_module.resolve(cluster)
    except CisternError as e:
        raise to_oserror(e.errno, e.message, cluster) from None
    meta = MetaClient(list(spec.meta_addresses), timeout_s=timeout_s)
    return Client(meta, uid=uid, gid=gid, groups=groups, stale_reads=stale_reads, umask=umask,
                  block_size=block_size, node_id=node_id, timeout_s=timeout_s, local_data_dir=local_data_dir,
                  local_data_dirs=spec.local_node_dirs() if short_circuit else None)


def _blocking(plan):
    @functools.wraps(plan)
    def method(self, *args, **kwargs):
        return self._run(plan(self, *args, **kwargs))
    return method


class Client:
    """The ``os``-like client (see the module docstring for the contract
    every method follows). Create with ``connect()``; ``close()`` it, or use
    it as a context manager."""

    def __init__(self, meta, *, uid: int | None = None, gid: int | None = None, groups=None,
                 stale_reads: bool = False, umask: int = umask_default, block_size: int | None = None,
                 node_id: str | None = None, timeout_s: float = 30.0, data=None,
                 local_data_dir: str | None = None, local_data_dirs: dict | None = None):
        """``meta`` is a ``MetaClient`` (or anything with its interface);
        the client owns it and closes it on ``close()``. The data path
        (``blocks.DataPath``, or ``data`` when given) talks to the Nodes
        service at ``meta.addresses`` (metad hosts it on the same port)."""
        from .blocks import DataPath

        self._meta = meta
        self._data = data or DataPath(getattr(meta, "addresses", ()), renew=self._renew_leases,
                                      block_size_bytes=block_size, node_id=node_id, timeout_s=timeout_s,
                                      local_data_dir=local_data_dir, local_data_dirs=local_data_dirs)
        self._cred = (
            os.getuid() if uid is None else int(uid),
            os.getgid() if gid is None else int(gid),
            list(os.getgroups() if groups is None else groups),
        )
        self._stale_reads = bool(stale_reads)
        self.umask = int(umask) & 0o777
        self._owner = True
        self._faces = {}

    # -- identity, lifetime, faces -----------------------------------------

    @property
    def cred(self) -> tuple[int, int, list[int]]:
        """(uid, gid, supplementary gids) sent with every operation."""
        return self._cred

    @property
    def meta(self):
        """The underlying metadata client (shared by every view)."""
        return self._meta

    def with_creds(self, uid: int, gid: int, groups=(), *, umask: int | None = None) -> "Client":
        """A view acting as ``uid``/``gid``/``groups`` (and ``umask``, default
        this client's) over the same connection: cheap (no I/O), thread-safe,
        and ``close()`` on a view does nothing. uid 0 passes every permission
        check, as on a local filesystem; the service trusts the credentials
        its callers send, as NFS with AUTH_SYS does."""
        return self._view(_cred=(int(uid), int(gid), [int(g) for g in groups]),
                          umask=self.umask if umask is None else int(umask) & 0o777)

    def _view(self, **changes) -> "Client":
        """A copy of this client with ``changes`` to its attributes, over
        the same connection: not its owner, with faces of its own."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__, **changes)
        view._owner = False
        view._faces = {}
        return view

    @property
    def serializable(self) -> "Client":
        """This view, but reads answered from the leader's applied state with
        no read barrier (etcd's serializable reads): about three times
        cheaper, and stale only while a deposed leader has not yet noticed
        (bounded by the election timeout). Writes are unchanged. Cached."""
        view = self._faces.get("serializable")
        if view is None:
            view = self._faces["serializable"] = self._view(_stale_reads=True)
        return view

    @property
    def futures(self) -> "Futures":
        """The futures face: the same methods, returning Futures."""
        face = self._faces.get("futures")
        if face is None:
            face = self._faces["futures"] = Futures(self)
        return face

    @property
    def aio(self):
        """The asyncio face (``cistern.client.aio.AsyncClient``)."""
        face = self._faces.get("aio")
        if face is None:
            from .aio import AsyncClient

            face = self._faces["aio"] = AsyncClient(self)
        return face

    def close(self) -> None:
        """Closes the connection (a view's close does nothing). Calls made
        after it fail with OSError(ESHUTDOWN)."""
        if self._owner:
            self._data.close()
            self._meta.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        uid, gid, _ = self._cred
        return f"<cistern.client.Client uid={uid} gid={gid} umask={self.umask:#o}>"

    # -- the driver ----------------------------------------------------------

    def _submit(self, call: Call) -> Future:
        # The metadata client itself recalls and retries an operation a
        # create delegation refused (another client, or this one, is
        # creating in that directory), so no caller sees the refusal and an
        # ordinary call costs no second future.
        stale = self._stale_reads and call.code in READ_OPS
        return self._meta.submit(call.code, encode_args(self._cred, *call.args), stale=stale)

    def _run(self, plan):
        """Drive a plan to completion, blocking on each operation."""
        value = error = None
        while True:
            try:
                call = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as stop:
                return stop.value
            finally:
                error = None   # do not keep the exception (and its frames) alive
            try:
                value = self._submit(call).result()
            except CisternError as e:
                value, error = None, call.oserror(e)

    # -- the os-like surface (contracts in plans.Plans) ---------------------

    attr = _blocking(Plans.attr)
    stat = _blocking(Plans.stat)
    lstat = _blocking(Plans.lstat)
    exists = _blocking(Plans.exists)
    lexists = _blocking(Plans.lexists)
    isdir = _blocking(Plans.isdir)
    isfile = _blocking(Plans.isfile)
    islink = _blocking(Plans.islink)
    access = _blocking(Plans.access)
    listdir = _blocking(Plans.listdir)
    readdir = _blocking(Plans.readdir)
    readdir_page = _blocking(Plans.readdir_page)
    readlink = _blocking(Plans.readlink)
    getxattr = _blocking(Plans.getxattr)
    listxattr = _blocking(Plans.listxattr)
    statvfs = _blocking(Plans.statvfs)
    statfs = statvfs
    mkdir = _blocking(Plans.mkdir)
    mkdir_attr = _blocking(Plans.mkdir_attr)
    makedirs = _blocking(Plans.makedirs)
    create = _blocking(Plans.create)
    touch = _blocking(Plans.touch)
    symlink = _blocking(Plans.symlink)
    symlink_attr = _blocking(Plans.symlink_attr)
    link = _blocking(Plans.link)
    unlink = _blocking(Plans.unlink)
    remove = unlink
    rmdir = _blocking(Plans.rmdir)
    removedirs = _blocking(Plans.removedirs)
    rename = _blocking(Plans.rename)
    replace = _blocking(Plans.replace)
    rename2 = _blocking(Plans.rename2)
    setattr = _blocking(Plans.setattr)
    chmod = _blocking(Plans.chmod)
    chown = _blocking(Plans.chown)
    lchown = _blocking(Plans.lchown)
    utime = _blocking(Plans.utime)
    _truncate_metadata = _blocking(Plans.truncate)
    setxattr = _blocking(Plans.setxattr)
    removexattr = _blocking(Plans.removexattr)
    txn = _blocking(Plans.txn)
    layout = _blocking(Plans.layout)

    # -- the data path (blocking only; contracts in files.py and blocks.py) --

    @property
    def data(self):
        """The connection's ``blocks.DataPath`` (shared by every view)."""
        return self._data

    def truncate(self, path, length) -> None:
        """``os.truncate``. Errors: EINVAL (negative), EISDIR, EACCES.

        Blocks are immutable, so a shrink that ends inside a block keeps that
        block whole and the size hides its tail. Growing such a file must not
        bring the tail back: that case goes through the data path, which
        rewrites the block's visible bytes first (so it needs read permission
        too, unlike truncate(2)). Every other size change is one metadata
        operation. Durable on a majority when it returns."""
        if self._grow_reveals_tail(path, length):
            self._truncate_through_data(path, length)
            return
        self._truncate_metadata(path, length)

    _grow_reveals_tail = _blocking(Plans.grow_reveals_tail)

    def _truncate_through_data(self, path, length: int) -> None:
        """The grow ``truncate`` hands to the data path (also the futures
        and asyncio faces', on a thread): the file object rewrites the kept
        block's visible bytes, then commits the new size."""
        with self.open(path, "r+b") as f:
            f.truncate(length)

    def open(self, path, mode="r", buffering=-1, encoding=None, errors=None, newline=None, *,
             replication: int | None = None, block_size: int | None = None):
        """``builtins.open`` for a Cistern file: a binary ``files.File``
        (an ``io.BufferedIOBase``) or, in text modes, an ``io.TextIOWrapper``
        over one. Modes r, w, a, x, + and b/t as builtins.open, with its
        ValueErrors. A writer holds the file's lease until it closes (EBUSY
        for a second writer); 'w' empties the file with its first commit,
        so readers keep the old contents until then. ``replication`` sets
        the file's replication factor (its xattr) for writers;
        ``block_size`` the size of the blocks this handle writes. Errors:
        FileNotFoundError, IsADirectoryError, FileExistsError (x),
        PermissionError, OSError(EBUSY)."""
        from . import extents

        om = extents.parse_mode(mode, encoding, errors, newline, buffering)
        given = paths.fspath(path, "open")
        raw = self._open_binary(given, om, mode, replication, block_size)
        if om.binary:
            return raw
        text = io.TextIOWrapper(raw, encoding, errors, newline, line_buffering=buffering == 1)
        text.mode = mode
        return text

    def reopen(self, ino: int, mode: str = "rb", *, name=None):
        """Opens the existing regular file with inode number ``ino`` (modes
        ``rb`` and ``r+b`` only: nothing is created or emptied), as ``open``
        does a path: the same permission checks, lease and errors. For the
        mount, which knows files by inode once looked up, so a rename between
        lookup and open cannot make it open another file. ``name`` names the
        file in errors and ``repr`` (default: the number)."""
        from . import extents

        om = extents.parse_mode(mode, None, None, None, -1)
        if not om.binary or om.create or om.truncate:
            raise ValueError(f"reopen: mode must be 'rb' or 'r+b', not {mode!r}")
        return self._open_binary(int(ino), om, mode, None, None, name=name)

    def _open_binary(self, ref, om, mode: str, replication, block_size, *, name=None):
        from . import files

        given = ref if name is None else name
        opened = self._run(Plans.open_file(self, ref, om, self._data.holder, replication))
        if om.writable and not self._data.hold_lease(opened.ino):
            # This connection writes the file already: the lease is that handle's to release.
            raise to_oserror(errno.EBUSY, "file is open for writing on this connection", given)
        try:
            size = block_size or (self._data.block_size_bytes() if om.writable else (4 << 20))
            return files.File(opened, self._data, self._commit_write, self._release_lease, name=given,
                              mode=mode, open_mode=om, block_size_bytes=int(size), replication=replication)
        except BaseException:
            if opened.lease_id is not None:
                self._data.drop_lease(opened.ino)
                self._release_lease(opened.ino, opened.lease_id)
            raise

    def read_file(self, path) -> bytes:
        """The whole contents of a file."""
        with self.open(path, "rb") as f:
            return f.read()

    def write_file(self, path, data, *, replication: int | None = None) -> int:
        """Replace a file's contents with ``data`` in one commit; its length."""
        with self.open(path, "wb", replication=replication) as f:
            return f.write(data)

    def block_locations(self, path) -> list[dict]:
        """HDFS's getFileBlockLocations: per block, ``{"offset", "length",
        "block_id", "nodes": [node ids], "addresses": [addresses of the live
        ones]}``; lengths stop at the file's size."""
        attr, layout, _ = self.layout(path)
        table = self._data.refresh_nodes() if layout else {}
        out, at = [], 0
        for block_id, length, _, nodes in layout:
            out.append({"offset": at, "length": min(length, attr.size - at), "block_id": block_id,
                        "nodes": list(nodes), "addresses": [table[n] for n in nodes if n in table]})
            at += length
        return out

    def _commit_write(self, ino: int, lease_id: int, layout: list, size: int):
        from cistern.metadata.model import TIME_NOW, Op

        call = Call(Op.COMMIT_WRITE, (ino, lease_id, layout, size, TIME_NOW))
        try:
            return self._submit(call).result()
        except CisternError as e:
            raise call.oserror(e) from None

    def _release_lease(self, ino: int, lease_id: int) -> None:
        from cistern.metadata.model import Op

        try:
            self._submit(Call(Op.RELEASE_LEASE, (ino, lease_id))).result()
        except CisternError:
            pass   # lapsed or gone: nothing is held either way

    def _renew_leases(self, holder: bytes) -> None:
        from cistern.metadata.model import Op

        self._submit(Call(Op.RENEW_LEASES, (holder,))).result()

    def scandir(self, path="/") -> "ScandirIterator":
        """``os.scandir``: an iterator of ``DirEntry`` (a context manager
        too). The listing is fetched when scandir is called (all pages), so
        errors (ENOENT, ENOTDIR, EACCES) raise here, not while iterating."""
        given = paths.fspath(path, "scandir")
        entries = self.readdir(given)
        return ScandirIterator([DirEntry(self, given, *entry) for entry in entries])

    def attrs(self, names, *, follow_symlinks=True) -> list:
        """``attr`` of many paths at once: a list with, for each of
        ``names`` in order, its ``Attr`` or the OSError ``attr`` would raise
        for it (a malformed path included). The GETATTRs are submitted
        together, so they ride the metadata client's batches (up to
        ``limits.batch_ops_max`` a message), and without a plan per path,
        which halves the client CPU of as many ``attr`` calls: for
        readdirplus-style prefetching (the mount's stat-ahead). Blocks until
        every answer is in (ETIMEDOUT items after ``timeout_s``). Blocking
        face only, as ``scandir``."""
        follow = bool(follow_symlinks)
        asked = []
        for name in names:
            try:
                t = paths.parse(name, function="stat")
            except OSError as e:
                asked.append((None, e))
                continue
            call = Call(Op.GETATTR, (t.wire, follow), t.given)
            asked.append((call, self._submit(call)))
        out = []
        for call, future in asked:
            if call is None:
                out.append(future)
                continue
            try:
                out.append(as_attr(future.result()))
            except CisternError as e:
                out.append(call.oserror(e))
        return out

    def walk(self, top="/", topdown=True, onerror=None, followlinks=False):
        """``os.walk``: yields ``(dirpath, dirnames, filenames)``; the same
        order, ``onerror`` and ``followlinks`` rules, and ``dirnames`` may be
        pruned in place when ``topdown``. Not a snapshot: a tree changing
        meanwhile is seen as it is when each directory is listed."""
        stack = [paths.fspath(top, "walk")]
        while stack:
            top = stack.pop()
            if isinstance(top, tuple):
                yield top
                continue
            try:
                entries = list(self.scandir(top))
            except OSError as error:
                if onerror is not None:
                    onerror(error)
                continue
            dirs, nondirs, walk_dirs, links = [], [], [], set()
            listed = {entry.name for entry in entries}
            for entry in entries:
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else nondirs).append(entry.name)
                if entry.is_symlink():
                    links.add(entry.name)
                if not topdown and is_dir and (followlinks or not entry.is_symlink()):
                    walk_dirs.append(entry.path)
            if topdown:
                yield top, dirs, nondirs
                for name in reversed(dirs):
                    new_path = os.path.join(top, name)
                    # A name the caller added to dirs is checked afresh.
                    is_link = name in links if name in listed else self.islink(new_path)
                    if followlinks or not is_link:
                        stack.append(new_path)
            else:
                stack.append((top, dirs, nondirs))
                stack.extend(reversed(walk_dirs))


class ScandirIterator:
    """What ``scandir`` returns: iterate it, or use it in ``with``."""

    def __init__(self, entries: list):
        self._it = iter(entries)

    def __iter__(self):
        return self

    def __next__(self) -> "DirEntry":
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DirEntry:
    """``os.DirEntry``: ``name``, ``path`` (the scandir argument joined with
    the name, in its type), ``inode()``, ``is_dir``/``is_file``/
    ``is_symlink`` (free unless following a symlink), ``stat()`` (cached,
    one round trip the first time)."""

    __slots__ = ("name", "path", "_client", "_ino", "_kind", "_stat", "_lstat")

    def __init__(self, client: Client, top, name: bytes, ino: int, kind: int):
        self._client = client
        self.name = paths.decode_like(top, name)
        self.path = os.path.join(top, self.name)
        self._ino = ino
        self._kind = kind
        self._stat = None
        self._lstat = None

    def inode(self) -> int:
        return self._ino

    def is_symlink(self) -> bool:
        return self._kind == stat_module.S_IFLNK

    def is_junction(self) -> bool:
        return False

    def _is_kind(self, kind: int, follow_symlinks: bool) -> bool:
        if follow_symlinks and self.is_symlink():
            try:
                return stat_module.S_IFMT(self.stat().st_mode) == kind
            except FileNotFoundError:
                return False
        return self._kind == kind

    def is_dir(self, *, follow_symlinks=True) -> bool:
        return self._is_kind(stat_module.S_IFDIR, follow_symlinks)

    def is_file(self, *, follow_symlinks=True) -> bool:
        return self._is_kind(stat_module.S_IFREG, follow_symlinks)

    def stat(self, *, follow_symlinks=True) -> os.stat_result:
        if follow_symlinks and self.is_symlink():
            if self._stat is None:
                self._stat = self._client.stat(self.path)
            return self._stat
        if self._lstat is None:
            self._lstat = self._client.lstat(self.path)
        return self._lstat

    def __fspath__(self):
        return self.path

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"


def _future_face(plan):
    @functools.wraps(plan)
    def method(self, *args, **kwargs):
        return self._start(plan(self, *args, **kwargs))
    method.__doc__ = "Returns a concurrent.futures.Future of: " + (plan.__doc__ or "")
    return method


class Futures:
    """The futures face of a ``Client``: each method starts the operation
    and returns a ``concurrent.futures.Future`` of what the blocking method
    would return or raise. Submitting never blocks; a multi-step operation
    advances in the metadata client's reply callbacks."""

    def __init__(self, client: Client):
        self.client = client

    @property
    def umask(self) -> int:
        return self.client.umask

    def _start(self, plan) -> Future:
        out: Future = Future()
        out.set_running_or_notify_cancel()
        self._advance(plan, out, None, None)
        return out

    def _advance(self, plan, out: Future, value, error) -> None:
        # Loops while replies are already there, so a long plan (paging a big
        # directory) does not recurse once per operation.
        while True:
            try:
                call = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as stop:
                out.set_result(stop.value)
                return
            except BaseException as e:
                out.set_exception(e)
                return
            future = self.client._submit(call)
            if not future.done():
                future.add_done_callback(lambda f, call=call: self._resume(plan, out, call, f))
                return
            value, error = _outcome(call, future)

    def _resume(self, plan, out: Future, call: Call, future: Future) -> None:
        value, error = _outcome(call, future)
        self._advance(plan, out, value, error)

    attr = _future_face(Plans.attr)
    stat = _future_face(Plans.stat)
    lstat = _future_face(Plans.lstat)
    exists = _future_face(Plans.exists)
    lexists = _future_face(Plans.lexists)
    isdir = _future_face(Plans.isdir)
    isfile = _future_face(Plans.isfile)
    islink = _future_face(Plans.islink)
    access = _future_face(Plans.access)
    listdir = _future_face(Plans.listdir)
    readdir = _future_face(Plans.readdir)
    readdir_page = _future_face(Plans.readdir_page)
    readlink = _future_face(Plans.readlink)
    getxattr = _future_face(Plans.getxattr)
    listxattr = _future_face(Plans.listxattr)
    statvfs = _future_face(Plans.statvfs)
    statfs = statvfs
    mkdir = _future_face(Plans.mkdir)
    mkdir_attr = _future_face(Plans.mkdir_attr)
    makedirs = _future_face(Plans.makedirs)
    create = _future_face(Plans.create)
    touch = _future_face(Plans.touch)
    symlink = _future_face(Plans.symlink)
    symlink_attr = _future_face(Plans.symlink_attr)
    link = _future_face(Plans.link)
    unlink = _future_face(Plans.unlink)
    remove = unlink
    rmdir = _future_face(Plans.rmdir)
    removedirs = _future_face(Plans.removedirs)
    rename = _future_face(Plans.rename)
    replace = _future_face(Plans.replace)
    rename2 = _future_face(Plans.rename2)
    setattr = _future_face(Plans.setattr)
    chmod = _future_face(Plans.chmod)
    chown = _future_face(Plans.chown)
    lchown = _future_face(Plans.lchown)
    utime = _future_face(Plans.utime)
    setxattr = _future_face(Plans.setxattr)
    removexattr = _future_face(Plans.removexattr)
    txn = _future_face(Plans.txn)

    def truncate(self, path, length) -> Future:
        """Returns a concurrent.futures.Future of ``Client.truncate``. A
        grow that would bring back the tail of a block a shrink kept runs
        the blocking data path on a thread of its own; every other size
        change is one metadata operation, driven by reply callbacks."""
        out: Future = Future()
        out.set_running_or_notify_cancel()

        def decided(check: Future) -> None:
            error = check.exception()
            if error is not None:
                out.set_exception(error)
            elif check.result():
                threading.Thread(target=_settle, args=(out, self.client._truncate_through_data, path, length),
                                 name="cistern-truncate", daemon=True).start()
            else:
                _chain(self._start(Plans.truncate(self, path, length)), out)

        self._start(Plans.grow_reveals_tail(self, path, length)).add_done_callback(decided)
        return out


def _settle(out: Future, function, *args) -> None:
    """Runs ``function(*args)`` and puts its result or exception in ``out``."""
    try:
        out.set_result(function(*args))
    except BaseException as e:
        out.set_exception(e)


def _chain(source: Future, out: Future) -> None:
    """``out`` gets ``source``'s result or exception when it has one."""
    def copy(done: Future) -> None:
        error = done.exception()
        if error is not None:
            out.set_exception(error)
        else:
            out.set_result(done.result())
    source.add_done_callback(copy)


def _outcome(call: Call, future: Future):
    """(value, None) or (None, the OSError to throw into the plan)."""
    try:
        return future.result(), None
    except CisternError as e:
        return None, call.oserror(e)
    except BaseException as e:
        return None, e
