"""fusepy callbacks -> ``cistern.client`` calls: the mount's filesystem
behaviour is the client's; this module translates, keeps the kernel's file
handles, and caches a little.

Contract (what the mount promises, and how):

* Identity: every request acts as its caller. ``fusepy.fuse_get_context()``
  gives (uid, gid, pid); supplementary groups come from /proc/<pid>/status
  (cached ``groups_cache_s``). Each (uid, gid, groups) gets one
  ``Client.with_creds`` view of the one shared client (umask 0: the kernel
  has applied the caller's umask already), so the metadata service checks
  owner, group, mode bits and sticky directories on every call. The mount
  also runs with ``default_permissions`` (mount.py; ``-o
  no_default_permissions`` drops it), so the kernel checks the same rules
  from its cached attributes first: without that, a name the kernel has
  cached is reached without a lookup, through a directory its caller may
  not search. Both checks agree, so two users of one mount get the errnos
  they would on a local disk.
* Errors: an ``OSError`` from the client becomes its errno; anything else is
  logged and becomes EIO. A bad request never takes the mount down. A lost
  cluster fails calls with ETIMEDOUT (metadata) or EIO (blocks) after the
  client's ``timeout_s``; a leader change is retried inside the client.
* Files: the kernel's file handle is a number in a table of ``Handle``s;
  the handles of one inode share one ``Node``, which has at most one
  writable ``files.File`` (the client allows one writer per file per
  connection, the lease one per cluster). Writes from every handle land in
  it at their offsets (``File.pwrite``), and reads of a file this mount is
  writing come from it too, so within the mount a reader sees each write at
  once, as on a local disk. Reads of a file no handle of this mount writes
  take no lock of the mount's: the kernel's concurrent read-ahead requests
  are served at once (``File.pread`` overlaps them). Writes are buffered
  per block and published by one COMMIT_WRITE on flush (every close),
  fsync, ftruncate and release: a small file costs one commit, not one per
  write(). A file this mount has just created takes its lease at its
  first write (``touch`` costs no lease round trips) and may be written
  whatever its mode (open(2) with O_CREAT and mode 0444 returns a writable
  descriptor).
* Asynchronous creates (``Settings.async_create``, ``-o async_create=0``
  turns them off): after two creates within a second in one directory the
  mount asks for a create delegation on it (``client/async_create.py``);
  while it holds one, a lookup of a name the directory lacks is answered
  ENOENT here, and a create is checked here as the service would check it
  and answered at once with a reserved inode number; the creates are
  committed in batches. Every other operation on a pending file or in that
  directory is ordered after them (``_settle``: committed first, and the
  delegation given back first for a listing, a new name made otherwise, or
  a change to the directory itself); fsync of the file or of the directory
  (fsyncdir) makes them durable; unmounting commits them. Other mounts and
  clients never see a name missing that a create answered here made: the
  service refuses their look at the directory until this mount has
  committed and given the delegation back. A create whose commit fails
  (the delegation was lost while this mount was cut off) is logged, and its
  file answers EIO here.
* Close-to-open: a read-only handle reads the layout it opened with
  (``Client.reopen`` fetches it at open), refreshed when a writer of this
  mount has committed since. What another mount wrote and closed is read
  whole by a handle opened afterwards, once the kernel's cached attributes
  of that file have expired (``attr_timeout``; a file never looked at here
  has none).
* Unlinked while open: a file this mount has open stays readable and
  writable through its handles after unlink, as POSIX wants, and is
  removed at the last close (``_hide``: moved to ``HIDDEN_DIR``, which the
  root's listing leaves out). fstat of it fails ENOENT (libfuse 2 looks the
  name up before asking us). A file replaced by rename while open here is
  not kept: its handles read it until the nodes drop its blocks, and its
  writes fail ESTALE.
* Times: utimens gets UTIME_NOW/UTIME_OMIT as given (``flag_utime_omit_ok``),
  so ``touch`` needs only write permission and ``touch -m`` changes mtime
  alone; times set on a file this mount is writing publish its writes first,
  so they outlive the close.
* Hard links: libfuse 2's high-level API gives every name its own kernel
  inode, so the kernel's cached size of one name goes stale when the file
  is written through another. Handles of a file with several links bypass
  the page cache (``direct_io``): reads go to the true end, O_APPEND writes
  land at the true end. ``stat`` of the other name may show the old size
  and mode for up to ``attr_timeout``.
* getattr answers from a short per-caller attribute cache
  (``attr_cache_s``) filled by replies that carry attributes; by opendir,
  which has the attributes of every entry (up to ``prefetch_entries_max``)
  fetched in batches on the stat-ahead thread without waiting, as a
  readdirplus would; and by stat-ahead (``statahead.py``, Lustre's
  statahead): when a caller's stats miss ``trigger_misses`` times in a row
  in one directory, the stat-ahead thread lists that directory a page at a
  time and fetches the attributes of up to ``statahead_entries`` entries
  in batches (``Client.attrs``), so ``ls -l``, ``find`` or an mdtest-style
  sweep pays a few round trips, not one per entry; an unused pass backs it
  off, and random access stops it for that directory. Consistency (the
  kernel's attr_timeout contract): a cached answer is served at most
  ``attr_cache_s`` after it was *asked for*, so a change made elsewhere is
  seen through this mount within ``attr_cache_s`` plus the kernel's
  ``attr_timeout``; this mount's own changes empty the cache and bump its
  epoch, and an answer (stat-ahead's included) asked for before a change
  is dropped, so it never shadows the change. A file this mount is writing
  reports the writer's size and last write time, so the kernel never cuts
  a buffered write short.
* Read-only mounts answer EROFS to every change.
* Locks: the mount has no ``lock`` op (fusepy's high-level API has no
  flock, and a POSIX lock op would need a cluster-wide lock table): the
  kernel then keeps POSIX and flock locks itself, which excludes processes
  using this mount, not processes on other mounts.
* Not supported: renameat2 flags (libfuse 2's high-level rename carries
  none; the kernel answers EINVAL), mknod (devices, fifos, sockets:
  EPERM), file capabilities and SELinux labels (``security.capability``
  and ``security.selinux`` read ENODATA and cannot be set: the kernel asks
  for the first before every write, ls -l for the second on every file).
"""

from __future__ import annotations

import codecs
import ctypes
import errno
import functools
import itertools
import logging
import os
import stat as stat_module
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import fuse as fusepy

from cistern.client import TIME_NOW
from cistern.client.async_create import AsyncCreates
from cistern.client.plans import stat_block_size_bytes
from cistern.core.metrics import new_registry

from . import statahead, threadstate

__all__ = ["FUSE", "Operations", "Settings", "FS_ENCODING"]

log = logging.getLogger(__name__)

# Names are bytes end to end: fusepy decodes and encodes paths with this
# codec (UTF-8 with surrogateescape, i.e. os.fsdecode), and the client
# encodes them back with os.fsencode, so any byte string round-trips.
FS_ENCODING = "cistern-fsnames"


def _find_codec(name: str):
    if name != FS_ENCODING.replace("-", "_") and name != FS_ENCODING:
        return None
    return codecs.CodecInfo(
        name=FS_ENCODING,
        encode=lambda text, errors="strict": (text.encode("utf-8", "surrogateescape"), len(text)),
        decode=lambda data, errors="strict": (bytes(data).decode("utf-8", "surrogateescape"), len(data)))


codecs.register(_find_codec)

# What the kernel sends for utimensat's UTIME_NOW / UTIME_OMIT (tv_sec 0).
_UTIME_NOW = (1 << 30) - 1
_UTIME_OMIT = (1 << 30) - 2
# Where files unlinked while open wait for their last close (see Operations._hide).
HIDDEN_DIR = "/.cistern-unlinked"
_HIDDEN_NAME = HIDDEN_DIR[1:].encode()
# opendir prefetches the attributes of at most this many entries.
prefetch_entries_max = 4096
# Attributes fetched ahead (prefetch, stat-ahead) per Client.attrs call: the
# answers of one chunk are cached together. The first chunk is small, so the
# caller finds its next entries soon; each next one is 4 times larger.
fetch_chunk_entries = 256
fetch_first_chunk_entries = 64
# xattrs answered without a round trip (see the module docstring).
# The kernel asks for security.capability before every write, ls -l for
# security.selinux on every file: a round trip each for an answer that is
# always "none", since the mount stores neither (no file capabilities, no
# SELinux labels).
_UNSTORED_XATTRS = frozenset(("security.capability", "security.selinux"))


# A read-only memoryview over C memory, no copy (PyBUF_READ).
_memory_view = ctypes.pythonapi.PyMemoryView_FromMemory
_memory_view.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int)
_memory_view.restype = ctypes.py_object
_PYBUF_READ = 0x100
_UNSTORED_XATTR_NAMES = frozenset(name.encode() for name in _UNSTORED_XATTRS)


class FUSE(fusepy.FUSE):
    """fusepy's ``FUSE`` with two callbacks made cheaper; mount with it.

    * ``write`` hands ``Operations.write`` a read-only memoryview of
      libfuse's request buffer instead of a bytes copy (``string_at``):
      the data is then copied once, into the file's block buffer. The view
      is valid only during the call: ``write`` must copy what it keeps
      (``File.pwrite`` does, before it returns).
    * ``getxattr`` of ``security.capability`` and ``security.selinux``
      answers ENODATA without entering Python's operation layer: the kernel
      asks for the first before every write(2) (about one request in nine
      of a 1 MiB write). These answers are not counted in the metrics.
    """

    def write(self, path, buf, size, offset, fip):
        data = _memory_view(ctypes.cast(buf, ctypes.c_void_p).value, size, _PYBUF_READ)
        return self.operations("write", self._decode_optional_path(path), data, offset,
                               fip.contents if self.raw_fi else fip.contents.fh)

    def getxattr(self, path, name, value, size, *args):
        if name in _UNSTORED_XATTR_NAMES:
            return -errno.ENODATA
        return super().getxattr(path, name, value, size, *args)


class Settings:
    """The mount's own knobs (the kernel's are FUSE options, see mount.py)."""

    def __init__(self, *, read_only: bool = False, attr_cache_s: float = 1.0, groups_cache_s: float = 1.0,
                 linearizable_attrs: bool = False, statahead_entries: int = statahead.window_default,
                 async_create: bool = True):
        self.read_only = bool(read_only)
        # Creates in a directory this mount holds a create delegation on are
        # answered at once and committed in batches (async_create.py).
        self.async_create = bool(async_create)
        # Entries one stat-ahead pass fetches at most (0: no stat-ahead).
        self.statahead_entries = max(0, int(statahead_entries))
        # Attribute lookups (getattr, the kernel's lookups) read the leader's
        # applied state without a read barrier unless asked: the kernel and
        # our cache already serve attributes up to attr_timeout old, and
        # open() stays linearizable (close-to-open).
        self.linearizable_attrs = bool(linearizable_attrs)
        self.attr_cache_s = float(attr_cache_s)
        self.groups_cache_s = float(groups_cache_s)


class Metrics:
    """Prometheus metrics of one mount, on its own registry."""

    def __init__(self, registry=None):
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry if registry is not None else new_registry()
        kw = {"registry": self.registry}
        self.ops = Counter("cistern_fuse_operations", "FUSE operations served, by type", ["op"], **kw)
        self.errors = Counter("cistern_fuse_errors", "FUSE operations that failed, by type and errno",
                              ["op", "errno"], **kw)
        self.latency = Histogram("cistern_fuse_operation_seconds", "FUSE operation latency, by type", ["op"],
                                 buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
                                          1.0, 2.0, 5.0, 10.0, 30.0), **kw)
        self.cache = Counter("cistern_fuse_attr_cache", "getattr answers from the mount's attribute cache",
                             ["result"], **kw)
        self.bytes_read = Counter("cistern_fuse_read_bytes", "bytes returned by read", **kw)
        self.bytes_written = Counter("cistern_fuse_written_bytes", "bytes accepted by write", **kw)
        self.open_handles = Gauge("cistern_fuse_open_handles", "open file handles", **kw)
        self.statahead_passes = Counter("cistern_fuse_statahead_passes",
                                        "stat-ahead passes run (a traversal of a directory was seen)", **kw)
        self.statahead_entries = Counter("cistern_fuse_statahead_entries",
                                         "attributes stat-ahead asked for ahead of the caller", **kw)
        # The metadata client's request batches: its round trips (set by Operations).
        # Creates answered under a delegation, and their commits (set by Operations).
        self.async_creates = Gauge("cistern_fuse_async_creates",
                                   "creates answered at once under a directory delegation", **kw)
        self.async_create_batches = Gauge("cistern_fuse_async_create_batches",
                                          "batches of asynchronous creates committed", **kw)
        self.metadata_batches = Gauge("cistern_fuse_metadata_batches_sent",
                                      "request batches (round trips) the mount's metadata client has sent", **kw)
        self.thread_states = Gauge("cistern_fuse_thread_states",
                                   "Python thread states kept for libfuse's worker threads (threadstate.py)", **kw)
        self.thread_states.set_function(threadstate.kept)
        self.hit = self.cache.labels("hit")
        self.miss = self.cache.labels("miss")
        self._per_op: dict[str, tuple] = {}

    def op(self, name: str):
        found = self._per_op.get(name)
        if found is None:
            found = self._per_op[name] = (self.ops.labels(name), self.latency.labels(name))
        return found


def _operation(fn):
    """Count and time the op; OSError -> its errno, anything else -> EIO."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self, *args):
        count, latency = self.metrics.op(name)
        start = time.perf_counter()
        try:
            return fn(self, *args)
        except OSError as e:
            err = e.errno if isinstance(e.errno, int) and e.errno > 0 else errno.EIO
            if err == errno.EIO or err == errno.ETIMEDOUT:
                log.warning("%s %r: %s", name, args[:1], e)
            self.metrics.errors.labels(name, errno.errorcode.get(err, str(err))).inc()
            raise fusepy.FuseOSError(err) from None
        except Exception:
            log.exception("%s %r failed", name, args[:1])
            self.metrics.errors.labels(name, "EIO").inc()
            raise fusepy.FuseOSError(errno.EIO) from None
        finally:
            count.inc()
            latency.observe(time.perf_counter() - start)
    return wrapper


def _changes(fn):
    """An operation that changes the namespace: EROFS on a read-only mount."""
    @functools.wraps(fn)
    def wrapper(self, *args):
        if self.settings.read_only:
            raise fusepy.FuseOSError(errno.EROFS)
        return fn(self, *args)
    return wrapper


class AttrCache:
    """path -> {credentials: (Attr, expiry)}, plus ino -> paths so a change
    to an inode forgets every name it was cached under. Thread-safe."""

    max_entries = 200_000

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._by_path: dict[str, dict] = {}
        self._paths_of: dict[int, set] = {}
        self._lock = threading.Lock()
        # Bumped by every forget: an answer asked for before a forget may
        # predate the change that caused it, so put(..., epoch) drops it.
        self.epoch = 0

    def get(self, cred, path: str):
        entry = self._by_path.get(path)
        if entry is None:
            return None
        found = entry.get(cred)
        if found is None or found[1] < time.monotonic():
            return None
        return found[0]

    def put(self, cred, path: str, attr, epoch: int | None = None, asked: float | None = None) -> None:
        """Cache ``attr``; with ``epoch`` (read before asking), only if
        nothing was forgotten meanwhile. It expires ``ttl_s`` after
        ``asked`` (the ``time.monotonic()`` at which it was asked for;
        default now), so no answer is served older than ``ttl_s``."""
        if self.ttl_s <= 0:
            return
        expiry = (time.monotonic() if asked is None else asked) + self.ttl_s
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            if len(self._by_path) >= self.max_entries:
                self._by_path.clear()
                self._paths_of.clear()
            self._by_path.setdefault(path, {})[cred] = (attr, expiry)
            self._paths_of.setdefault(attr.ino, set()).add(path)

    def put_many(self, cred, items, epoch: int, asked: float) -> int:
        """``put`` of many ``(path, attr)`` at once (one lock); how many."""
        if self.ttl_s <= 0:
            return 0
        expiry = asked + self.ttl_s
        with self._lock:
            if epoch != self.epoch:
                return 0
            if len(self._by_path) + len(items) >= self.max_entries:
                self._by_path.clear()
                self._paths_of.clear()
            for path, attr in items:
                self._by_path.setdefault(path, {})[cred] = (attr, expiry)
                self._paths_of.setdefault(attr.ino, set()).add(path)
        return len(items)

    def forget(self, *paths: str) -> None:
        with self._lock:
            self.epoch += 1
            for path in paths:
                entry = self._by_path.pop(path, None)
                if entry:
                    for attr, _ in entry.values():
                        names = self._paths_of.get(attr.ino)
                        if names is not None:
                            names.discard(path)

    def child_made(self, path: str, child, nlink_delta: int = 0) -> None:
        """``child`` (its attributes) was just made at ``path``: the parent's
        cached entries take the change time as their mtime and ctime (the
        service stamps both with that one time), and ``nlink_delta``."""
        parent = _parent(path)
        with self._lock:
            entry = self._by_path.get(parent)
            if not entry:
                return
            for cred, (attr, expiry) in list(entry.items()):
                entry[cred] = (attr._replace(mtime_ns=child.ctime_ns, ctime_ns=child.ctime_ns,
                                             nlink=attr.nlink + nlink_delta), expiry)

    def forget_ino(self, ino: int) -> None:
        with self._lock:
            self.epoch += 1
            for path in self._paths_of.pop(ino, ()):
                self._by_path.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._by_path.clear()
            self._paths_of.clear()


class Node:
    """One inode with open handles in this mount."""

    __slots__ = ("ino", "lock", "writer", "pending_writer", "handles", "writers", "version", "written_ns",
                 "hidden")

    def __init__(self, ino: int):
        self.ino = ino
        self.lock = threading.RLock()
        self.writer = None            # the shared writable File, once opened
        self.pending_writer = None    # a view to open it with at the first write (files created here)
        self.handles = 0
        self.writers = 0
        self.version = 0              # bumped by every commit through this mount
        self.written_ns = 0           # wall time of the last write, for getattr
        self.hidden = None            # unlinked while open: where it waits for its last close


class Handle:
    __slots__ = ("node", "readable", "writable", "view", "reader", "reader_version", "path", "append")

    def __init__(self, node: Node, view, readable: bool, writable: bool, path: str, reader=None,
                 append: bool = False):
        self.node, self.view, self.path = node, view, path
        self.readable, self.writable = readable, writable
        self.reader = reader
        self.reader_version = node.version
        # O_APPEND on a page-cache-less handle: the kernel's offset comes from
        # a size that may be stale (see _direct_if_linked), so write at the end.
        self.append = append


def _parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"


def _stat_dict(attr, size: int | None = None, mtime_ns: int | None = None) -> dict:
    size = attr.size if size is None else size
    mtime_ns = attr.mtime_ns if mtime_ns is None else mtime_ns
    regular = stat_module.S_ISREG(attr.mode)
    return {"st_mode": attr.mode, "st_ino": attr.ino, "st_nlink": attr.nlink, "st_uid": attr.uid,
            "st_gid": attr.gid, "st_size": size, "st_atime": attr.atime_ns, "st_mtime": mtime_ns,
            "st_ctime": attr.ctime_ns, "st_blksize": stat_block_size_bytes,
            "st_blocks": (size + 511) // 512 if regular else 0}


class Operations(fusepy.Operations):
    """The fusepy operations over one ``cistern.client.Client`` (the mount
    closes it in ``destroy``). Use with ``fusepy.FUSE(..., raw_fi=True,
    encoding=FS_ENCODING)``."""

    use_ns = True   # times in integer nanoseconds, both ways

    def __call__(self, op, *args):
        threadstate.keep()     # libfuse's threads keep their Python state between requests
        return super().__call__(op, *args)

    # Open files whose name is gone reach read/write/flush/release with path
    # None instead of failing ENOENT inside libfuse (see _hide).
    flag_nullpath_ok = 1
    # No ioctl op: the kernel answers ENOTTY itself (fusepy's default op
    # cannot take the path None of an unlinked open file).
    ioctl = None
    # fusepy copies this into libfuse's fuse_operations: utimens then gets
    # UTIME_NOW/UTIME_OMIT as the caller gave them. Without it libfuse 2
    # drops a change of one time alone (touch -m, tar's mtimes) and turns
    # "now" into explicit times, which only the owner may set.
    flag_utime_omit_ok = 1

    def __init__(self, client, settings: Settings | None = None, metrics: Metrics | None = None):
        self.client = client
        self.settings = settings or Settings()
        self.metrics = metrics or Metrics()
        self.root = client.with_creds(0, 0, [], umask=0)
        self._views: dict[tuple, object] = {}
        self._groups: dict[int, tuple] = {}
        self._cache = AttrCache(self.settings.attr_cache_s)
        # Attributes asked for ahead of callers (opendir's prefetch, stat-ahead)
        # are fetched on one thread of their own: off without a cache to fill.
        self._ahead = None
        self._ahead_runner = None
        if self.settings.attr_cache_s > 0:
            self._ahead_runner = ThreadPoolExecutor(1, thread_name_prefix="cistern-statahead")
            if self.settings.statahead_entries:
                self._ahead = statahead.Detector(expiry_s=self.settings.attr_cache_s)
        batches = getattr(getattr(client, "meta", None), "batches_sent", None)
        if isinstance(batches, int):
            self.metrics.metadata_batches.set_function(lambda: client.meta.batches_sent)
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, list] = {}
        self._nodes: dict[int, Node] = {}
        self._nodes_lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._mount_id = f"{os.uname().nodename}~{os.getpid()}~{time.time_ns() % 10**9}"
        self._async = None
        if self.settings.async_create and not self.settings.read_only:
            self._async = AsyncCreates(self.root)
            stats = self._async.statistics
            self.metrics.async_creates.set_function(lambda: stats["async"])
            self.metrics.async_create_batches.set_function(lambda: stats["batches"])

    # -- who is asking --------------------------------------------------------

    def _caller(self):
        uid, gid, pid = fusepy.fuse_get_context()
        groups = self._supplementary_groups(pid) if uid != 0 else ()
        key = (uid, gid, groups)
        view = self._views.get(key)
        if view is None:
            if len(self._views) > 4096:
                self._views.clear()
            view = self._views[key] = self.client.with_creds(uid, gid, groups, umask=0)
        return view

    def _supplementary_groups(self, pid: int) -> tuple:
        now = time.monotonic()
        found = self._groups.get(pid)
        if found is not None and found[1] > now:
            return found[0]
        groups: tuple = ()
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Groups:"):
                        groups = tuple(sorted(int(g) for g in line.split()[1:]))
                        break
        except (OSError, ValueError):
            pass   # the caller is gone (or pid 0): no supplementary groups
        if len(self._groups) > 4096:
            self._groups.clear()
        self._groups[pid] = (groups, now + self.settings.groups_cache_s)
        return groups

    @staticmethod
    def _cred(view) -> tuple:
        uid, gid, groups = view.cred
        return uid, gid, tuple(groups)

    # -- attributes ---------------------------------------------------------

    def _reader(self, view):
        """The view attribute reads go through (see Settings.linearizable_attrs)."""
        return view if self.settings.linearizable_attrs else view.serializable

    def _lstat(self, view, path: str, traversal: bool = False):
        """The attributes of ``path`` (no symlink follow), from the cache or
        one round trip. ``traversal``: a caller's stat (getattr), which
        stat-ahead watches for traversals of one directory."""
        cred = self._cred(view)
        attr = self._cache.get(cred, path)
        if attr is not None:
            self.metrics.hit.inc()
            if traversal and self._ahead is not None and self._ahead.active():
                self._ahead.hit(cred, _parent(path))
            return attr
        self.metrics.miss.inc()
        if self._async is not None:
            # A name missing from a directory this mount holds a delegation
            # on is known missing, and a file created here and not yet
            # committed has the attributes it was created with.
            err, attr = self._async.lookup(path, cred)
            if err:
                raise OSError(err, os.strerror(err), path)
            if attr is not None:
                return attr
        epoch = self._cache.epoch
        asked = time.monotonic()
        attr = self._reader(view).attr(path, follow_symlinks=False)
        self._cache.put(cred, path, attr, epoch, asked)
        if traversal and self._ahead is not None:
            parent, _, name = path.rpartition("/")
            found = self._ahead.miss(cred, parent or "/", os.fsencode(name))
            if found is not None:
                self._ahead_runner.submit(self._stat_ahead, view, found)
        return attr

    def _prefetch(self, view, path: str, entries) -> None:
        """Ask for the attributes of a listed directory's entries (on the
        stat-ahead thread: opendir does not wait), so the lookups of ``ls
        -l`` or ``find`` that follow find them cached: readdirplus."""
        if self._ahead_runner is None or not entries or len(entries) > prefetch_entries_max:
            return
        self._ahead_runner.submit(self._fetch_attrs, view, self._cred(view), path, entries, self._cache.epoch)

    def _fetch_attrs(self, view, cred, path: str, entries, epoch: int) -> int:
        """Fetch the attributes of those of ``path``'s ``entries`` the cache
        lacks, in ``Client.attrs`` chunks (batched round trips; the first
        small, growing to ``fetch_chunk_entries``), and cache them unless this mount changed anything
        since ``epoch`` (then stop). Each expires ``attr_cache_s`` after it
        was asked for. How many were asked for."""
        base = path.rstrip("/")
        reader = self._reader(view)
        children = [f"{base}/{os.fsdecode(name)}" for name, _, _ in entries
                    if not (base == "" and name == _HIDDEN_NAME)]
        children = [child for child in children if self._cache.get(cred, child) is None]
        asked_for, at, size = 0, 0, fetch_first_chunk_entries
        while at < len(children) and self._cache.epoch == epoch:
            chunk = children[at:at + size]
            at, size = at + size, min(size * 4, fetch_chunk_entries)
            asked = time.monotonic()
            answers = reader.attrs(chunk, follow_symlinks=False)
            asked_for += len(chunk)
            # A name gone meanwhile is left out: its lookup will say so.
            self._cache.put_many(cred, [(child, attr) for child, attr in zip(chunk, answers)
                                        if not isinstance(attr, BaseException)], epoch, asked)
        return asked_for

    def _stat_ahead(self, view, found: statahead.Pass) -> None:
        """One stat-ahead pass (on the stat-ahead thread): list ``found``'s
        directory page by page from its cursor and fetch the attributes of
        up to ``statahead_entries`` entries the cache lacks (``_fetch_attrs``).
        It stops early once this mount changes anything (its answers would
        be dropped)."""
        fetched, cursor, failed = 0, found.cursor, False
        try:
            epoch = self._cache.epoch
            reader = self._reader(view)
            left = self.settings.statahead_entries
            window = []
            while left > 0:
                entries, done = reader.readdir_page(found.directory, cursor, left)
                left -= len(entries)
                window += entries
                cursor = None if done or not entries else entries[-1][0]
                if cursor is None:
                    break
            # From the callers' names on, numbered names in number order (f2
            # before f10): the order they were made in, which sweeps of them
            # (mdtest, frames, logs) follow, where the listing's byte order
            # scatters them; the names they have passed come last.
            window = statahead.ahead_of(window, found.starts)
            fetched = self._fetch_attrs(view, found.who, found.directory, window, epoch)
        except OSError as e:     # the directory went away, or the caller may not list it
            log.debug("stat-ahead of %s stopped: %s", found.directory, e)
            failed = True
        except Exception:   # noqa: BLE001 - a failed pass only costs the caller round trips
            log.exception("stat-ahead of %s failed", found.directory)
            failed = True
        finally:
            self.metrics.statahead_passes.inc()
            self.metrics.statahead_entries.inc(fetched)
            self._ahead.finished(found, fetched, cursor, failed)

    def _remember(self, view, path: str, attr) -> None:
        self._cache.forget_ino(attr.ino)
        self._cache.put(self._cred(view), path, attr)

    def _settle(self, path, adds_name: bool = False) -> None:
        """Order an operation on ``path`` after this mount's asynchronous
        creates: a directory delegated here is given back first (the
        service would refuse the operation on it), and the creates answered
        in its parent are committed first (given back too when the
        operation adds a name there)."""
        if self._async is None or path is None:
            return
        if self._async.delegated(path):
            self._async.release_dir(path)
        parent = _parent(path)
        if self._async.delegated(parent):
            if adds_name:
                self._async.release_dir(parent)
            else:
                self._async.flush_dir(parent)

    def _not_failed(self, ino: int) -> None:
        """Order a use of inode ``ino`` after its asynchronous create; EIO
        when that create failed at commit."""
        if self._async is not None:
            self._async.flush_ino(ino)
            if ino in self._async.failed:
                raise OSError(errno.EIO, "its asynchronous create failed")

    def _changed(self, *paths: str) -> None:
        """This mount changed these names (and so their parents' times)."""
        self._cache.forget(*paths, *{_parent(p) for p in paths})

    def _made(self, view, path: str, attr, parent_links: int = 0) -> None:
        """A name this mount just made: its attributes are known, and so is
        what changed in its parent's (the kernel asks for both next)."""
        self._cache.forget(path)
        self._cache.put(self._cred(view), path, attr)
        self._cache.child_made(path, attr, parent_links)

    def _is_symlink(self, view, path: str) -> bool:
        return stat_module.S_ISLNK(self._lstat(view, path).mode)

    @_operation
    def getattr(self, path, fi=None):
        handle = self._handles.get(fi.fh) if fi else None
        if handle is not None and handle.node.hidden is not None:
            # Unlinked while open (fstat): the attributes of the hidden file.
            attr = self._lstat(self.root, handle.node.hidden)
            return self._overlay(attr._replace(nlink=0))
        if path is None:
            raise OSError(errno.ENOENT, "no such file")
        return self._overlay(self._lstat(self._caller(), path, True))

    def _overlay(self, attr) -> dict:
        node = self._nodes.get(attr.ino)
        writer = node.writer if node is not None else None
        if writer is not None and not writer.closed:
            mtime = max(attr.mtime_ns, node.written_ns) if writer.uncommitted else None
            return _stat_dict(attr, writer.size, mtime)
        return _stat_dict(attr)

    @_operation
    def access(self, path, amode):
        self._settle(path)
        view = self._caller()
        if amode == os.F_OK:
            self._lstat(view, path)
        elif not view.access(path, amode):
            raise OSError(errno.EACCES, "access denied")
        return 0

    @_operation
    def readlink(self, path):
        self._settle(path)
        return self._caller().readlink(path)

    @_operation
    def statfs(self, path):
        st = self._caller().statvfs("/")
        return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                   "f_files", "f_ffree", "f_favail", "f_namemax")}

    # -- directories -------------------------------------------------------

    @_operation
    def opendir(self, path):
        # Listing here checks read permission at opendir, as a local disk does.
        self._settle(path)
        view = self._caller()
        entries = view.readdir(path)
        self._prefetch(view, path, entries)
        number = next(self._numbers)
        self._dirs[number] = [path, entries]
        return number

    @_operation
    def readdir(self, path, fh):
        state = self._dirs.get(fh)
        if state is None:
            raise OSError(errno.EBADF, "bad directory handle")
        entries = state[1]
        path = state[0] if path is None else path
        if entries is None:    # a rewinddir: list afresh
            self._settle(path)
            entries = self._caller().readdir(path)
        state[1] = None
        out = [".", ".."]
        at_root = path == "/"
        for name, ino, kind in entries:
            if at_root and name == _HIDDEN_NAME:
                continue
            out.append((os.fsdecode(name), {"st_ino": ino, "st_mode": kind}, 0))
        return out

    @_operation
    def releasedir(self, path, fh):
        self._dirs.pop(fh, None)
        return 0

    @_operation
    @_changes
    def mkdir(self, path, mode):
        self._settle(path, adds_name=True)
        view = self._caller()
        attr = view.mkdir_attr(path, mode & 0o7777)
        self._made(view, path, attr, 1)
        return 0

    @_operation
    @_changes
    def rmdir(self, path):
        self._settle(path)
        self._caller().rmdir(path)
        self._changed(path)
        return 0

    # -- names ---------------------------------------------------------------

    @_operation
    @_changes
    def unlink(self, path):
        self._settle(path)
        view = self._caller()
        attr = self._lstat(view, path)
        node = self._nodes.get(attr.ino)
        if node is not None and node.hidden is None and attr.nlink == 1 and stat_module.S_ISREG(attr.mode):
            self._hide(view, path, node)
        else:
            view.unlink(path)
        self._cache.forget_ino(attr.ino)
        self._changed(path)
        return 0

    def _hide(self, view, path: str, node: Node) -> None:
        """Unlink a file this mount still has open, as POSIX wants it: gone
        from its directory, readable and writable through the open handles
        until the last close. NFS's "silly rename", but out of the way: the
        caller renames it (the same permission checks as unlink: write and
        search on the directory, the sticky rule) into ``HIDDEN_DIR`` (1777,
        made on demand, left out of the root's listing), and the last
        release removes it. A mount that dies first leaves it there."""
        hidden = f"{HIDDEN_DIR}/{self._mount_id}~{node.ino}~{next(self._numbers)}"
        try:
            view.rename(path, hidden)
        except FileNotFoundError:
            if not self.root.isdir(HIDDEN_DIR):
                try:
                    self.root.mkdir(HIDDEN_DIR, 0o1777)
                except FileExistsError:
                    pass
                self.root.chmod(HIDDEN_DIR, 0o1777)
            view.rename(path, hidden)
        node.hidden = hidden

    @_operation
    @_changes
    def rename(self, old, new):
        if self._async is not None:
            self._async.release_all()    # a renamed directory takes its delegated paths with it
        self._caller().rename(old, new)
        self._cache.clear()     # a directory's whole subtree changed names
        if self._ahead is not None:
            self._ahead.forget()
        return 0

    @_operation
    @_changes
    def link(self, target, source):
        # fusepy's order: ``ln source target`` makes the new name target.
        self._settle(source)
        self._settle(target, adds_name=True)
        view = self._caller()
        view.link(source, target)
        self._cache.forget(source)
        self._changed(target)
        return 0

    @_operation
    @_changes
    def symlink(self, target, source):
        # fusepy's order: ``ln -s source target`` makes target point at source.
        self._settle(target, adds_name=True)
        view = self._caller()
        self._made(view, target, view.symlink_attr(source, target))
        return 0

    @_operation
    @_changes
    def mknod(self, path, mode, dev):
        raise OSError(errno.EPERM, "only regular files, directories and symlinks")

    # -- attributes that change ---------------------------------------------

    @_operation
    @_changes
    def chmod(self, path, mode):
        self._settle(path)
        view = self._caller()
        self._remember(view, path, view.setattr(path, mode=mode & 0o7777))
        if stat_module.S_ISDIR(mode):
            self._cache.clear()   # search permission below it may have changed
        return 0

    @_operation
    @_changes
    def chown(self, path, uid, gid):
        self._settle(path)
        view = self._caller()
        fields = {k: v for k, v in (("uid", uid), ("gid", gid)) if v != -1}
        follow = not self._is_symlink(view, path)
        attr = view.setattr(path, follow_symlinks=follow, **fields)
        self._remember(view, path, attr)
        if stat_module.S_ISDIR(attr.mode):
            self._cache.clear()
        return 0

    @_operation
    @_changes
    def utimens(self, path, times=None):
        self._settle(path)
        view = self._caller()
        atime, mtime = times if times is not None else (_UTIME_NOW, _UTIME_NOW)
        fields = {}
        for key, value in (("atime_ns", atime), ("mtime_ns", mtime)):
            if value == _UTIME_NOW:
                fields[key] = TIME_NOW
            elif value != _UTIME_OMIT:
                fields[key] = int(value)
        if not fields:
            return 0
        lstat = self._lstat(view, path)
        node = self._nodes.get(lstat.ino)
        writer = node.writer if node is not None else None
        if writer is not None and writer.uncommitted:
            # Times set while this mount writes the file (cp -a, tar, rsync
            # set them before close) must outlive the close: publish the
            # writes first, so the close has nothing left to stamp. (Checked
            # before locking: a release in progress holds the lock for a
            # round trip, and has nothing left to publish.)
            with node.lock:
                if node.writer is not None and node.writer.uncommitted:
                    node.writer.flush()
                    self._committed(node)
        attr = view.setattr(path, follow_symlinks=not stat_module.S_ISLNK(lstat.mode), **fields)
        self._remember(view, path, attr)
        return 0

    @_operation
    @_changes
    def truncate(self, path, length, fi=None):
        self._settle(path)
        view = self._caller()
        handle = self._handles.get(fi.fh) if fi else None
        if handle is not None:
            if not handle.writable:
                raise OSError(errno.EBADF if path is None else errno.EINVAL, "not open for writing")
            node = handle.node
        else:
            node = self._nodes.get(self._lstat(view, path).ino)
            if node is not None and (node.writer or node.pending_writer) and not view.access(path, os.W_OK):
                raise OSError(errno.EACCES, "truncate")
        if node is not None and (node.writer or node.pending_writer):
            with node.lock:
                self._writer(node, path).truncate(length)
                self._committed(node)
        else:
            view.truncate(path, length)
            self._changed(path)
        return 0

    # -- xattrs --------------------------------------------------------------

    @_operation
    def getxattr(self, path, name, position=0):
        if name in _UNSTORED_XATTRS:
            raise OSError(errno.ENODATA, "not stored on this mount")
        self._settle(path)
        view = self._caller()
        return view.getxattr(path, name, follow_symlinks=not self._is_symlink(view, path))

    @_operation
    def listxattr(self, path):
        self._settle(path)
        view = self._caller()
        return view.listxattr(path, follow_symlinks=not self._is_symlink(view, path))

    @_operation
    @_changes
    def setxattr(self, path, name, value, options, position=0):
        if name in _UNSTORED_XATTRS:
            raise OSError(errno.ENOTSUP, "not stored on this mount")
        self._settle(path)
        view = self._caller()
        view.setxattr(path, name, value, options, follow_symlinks=not self._is_symlink(view, path))
        self._cache.forget(path)
        return 0

    @_operation
    @_changes
    def removexattr(self, path, name):
        self._settle(path)
        view = self._caller()
        view.removexattr(path, name, follow_symlinks=not self._is_symlink(view, path))
        self._cache.forget(path)
        return 0

    # -- open files ----------------------------------------------------------

    def _node(self, ino: int) -> Node:
        with self._nodes_lock:
            node = self._nodes.get(ino)
            if node is None:
                node = self._nodes[ino] = Node(ino)
            node.handles += 1
            return node

    def _drop_node(self, node: Node) -> None:
        with self._nodes_lock:
            node.handles -= 1
            last = node.handles <= 0
            if last and self._nodes.get(node.ino) is node:
                del self._nodes[node.ino]
        if last and node.hidden is not None:
            hidden, node.hidden = node.hidden, None
            try:
                self.root.unlink(hidden)   # unlinked while open: now it goes
            except OSError as e:
                log.warning("could not remove %s (unlinked while open): %s", hidden, e)

    def _new_handle(self, fi, handle: Handle) -> int:
        number = next(self._numbers)
        self._handles[number] = handle
        fi.fh = number
        self.metrics.open_handles.inc()
        return 0

    def _handle(self, fi) -> Handle:
        handle = self._handles.get(fi.fh) if fi else None
        if handle is None:
            raise OSError(errno.EBADF, "bad file handle")
        return handle

    def _writer(self, node: Node, path):
        """The node's writable File (node.lock held), opened now if this
        mount created the file and has not written it yet."""
        if node.writer is None:
            view = node.pending_writer
            if view is None:
                raise OSError(errno.EBADF, "not open for writing")
            self._not_failed(node.ino)
            node.writer = view.reopen(node.ino, "r+b", name=path)
            node.pending_writer = None
        return node.writer

    def _committed(self, node: Node) -> None:
        node.version += 1
        self._cache.forget_ino(node.ino)

    @staticmethod
    def _modes(flags: int) -> tuple[bool, bool]:
        access = flags & os.O_ACCMODE
        return access != os.O_WRONLY, access != os.O_RDONLY

    @_operation
    def open(self, path, fi):
        readable, writable = self._modes(fi.flags)
        if writable and self.settings.read_only:
            raise OSError(errno.EROFS, "read-only mount")
        self._settle(path)     # a file created here is committed before it is opened by name
        view = self._caller()
        if not writable:
            reader = view.open(path, "rb")
            self._direct_if_linked(fi, reader.attr)
            node = self._node(reader.ino)
            return self._new_handle(fi, Handle(node, view, True, False, path, reader))
        attr = self._lstat(view, path)
        self._direct_if_linked(fi, attr)
        ino = attr.ino
        node = self._node(ino)
        try:
            with node.lock:
                if node.writer is None and node.pending_writer is None:
                    node.writer = self._open_writer(view, ino, path, readable)
                elif not view.access(path, os.W_OK | (os.R_OK if readable else 0)):
                    raise OSError(errno.EACCES, "open for writing")
                node.writers += 1
        except BaseException:
            self._drop_node(node)
            raise
        return self._new_handle(fi, Handle(node, view, readable, True, path,
                                           append=bool(fi.direct_io and fi.flags & os.O_APPEND)))

    def _open_writer(self, view, ino: int, path: str, readable: bool):
        try:
            return view.reopen(ino, "r+b", name=path)
        except PermissionError:
            # Allowed to write but not to read (mode 0200, o+w only): the
            # writer still reads the layout (and partial blocks it rewrites),
            # so the mount opens it once the caller's right to write is
            # checked. Nothing read this way reaches the caller.
            if readable or not view.access(path, os.W_OK):
                raise
            return self.root.reopen(ino, "r+b", name=path)

    @staticmethod
    def _direct_if_linked(fi, attr) -> None:
        """libfuse 2's high-level API gives each name its own kernel inode,
        so the kernel's cached size of one name of a hard-linked file goes
        stale when it is written through another, and page-cache reads stop
        at that size: such files bypass the page cache (reads go to EOF)."""
        if attr.nlink > 1:
            fi.direct_io = 1

    @_operation
    def create(self, path, mode, fi):
        if self.settings.read_only:
            raise OSError(errno.EROFS, "read-only mount")
        view = self._caller()
        try:
            attr = self._async.create(path, mode & 0o7777, self._cred(view)) if self._async else None
            if attr is None:
                attr = view.create(path, mode & 0o7777, exclusive=True)
        except FileExistsError:
            if fi.flags & os.O_EXCL:
                raise
            return self.open(path, fi)   # it exists: an open, with its permission checks
        self._made(view, path, attr)
        readable, writable = self._modes(fi.flags)
        node = self._node(attr.ino)
        with node.lock:
            if node.writer is None and node.pending_writer is None:
                # Created here: the creator may write it whatever its mode.
                node.pending_writer = self.root
            node.writers += 1
        return self._new_handle(fi, Handle(node, view, readable, True, path))

    @_operation
    def read(self, path, size, offset, fi):
        handle = self._handle(fi)
        if not handle.readable:
            raise OSError(errno.EBADF, "not open for reading")
        node = handle.node
        reader = handle.reader
        if node.writer is None and reader is not None and handle.reader_version == node.version:
            # The common case, without the node's lock: a read-only File
            # serves concurrent preads (the kernel's read-ahead) at once.
            data = reader.pread(size, offset)
        else:
            with node.lock:
                data = self._read_file(node, handle, path).pread(size, offset)
        self.metrics.bytes_read.inc(len(data))
        return data

    def _read_file(self, node: Node, handle: Handle, path):
        """What a read through ``handle`` reads (node.lock held): the node's
        writer, else the handle's read-only File, opened again when a writer
        of this mount has committed since. A replaced reader is not closed:
        another thread may be reading from it (it holds no lease; it is
        freed with its last reference)."""
        if node.writer is not None:
            return node.writer
        if handle.reader is None or handle.reader_version != node.version:
            opener = node.pending_writer or handle.view
            self._not_failed(node.ino)
            handle.reader = opener.reopen(node.ino, "rb", name=path)
            handle.reader_version = node.version
        return handle.reader

    @_operation
    def write(self, path, data, offset, fi):
        handle = self._handle(fi)
        if not handle.writable:
            raise OSError(errno.EBADF, "not open for writing")
        node = handle.node
        with node.lock:
            writer = self._writer(node, path)
            writer.pwrite(data, writer.size if handle.append else offset)
            node.written_ns = time.time_ns()
        self.metrics.bytes_written.inc(len(data))
        return len(data)

    def _publish(self, handle: Handle) -> None:
        node = handle.node
        if not handle.writable or node.writer is None:
            return
        with node.lock:
            if node.writer is not None and node.writer.uncommitted:
                node.writer.flush()
                self._committed(node)

    @_operation
    def flush(self, path, fi):
        self._publish(self._handle(fi))
        return 0

    @_operation
    def fsync(self, path, datasync, fi):
        handle = self._handle(fi)
        self._not_failed(handle.node.ino)    # a create answered here is durable once committed
        self._publish(handle)
        return 0

    @_operation
    def fsyncdir(self, path, datasync, fh):
        # The directory's entries made here are durable once committed.
        if self._async is not None and path is not None:
            self._async.flush_dir(path)
        return 0

    @_operation
    def release(self, path, fi):
        handle = self._handles.pop(fi.fh, None)
        if handle is None:
            return 0
        self.metrics.open_handles.dec()
        node = handle.node
        try:
            with node.lock:
                if handle.reader is not None:
                    handle.reader.close()
                if handle.writable:
                    node.writers -= 1
                    if node.writers <= 0:
                        node.pending_writer = None
                        writer, node.writer = node.writer, None
                        if writer is not None:
                            try:
                                writer.close()   # publishes what is left, releases the lease
                            finally:
                                self._committed(node)
        finally:
            self._drop_node(node)
        return 0

    # -- lifetime ------------------------------------------------------------

    def remove_leftovers(self) -> int:
        """Remove what mounts on this host that died with files unlinked
        while open left in ``HIDDEN_DIR`` (their process is gone); how many.
        Called before mounting."""
        try:
            names = self.root.listdir(HIDDEN_DIR)
        except FileNotFoundError:
            return 0
        removed = 0
        host = os.uname().nodename
        for name in names:
            parts = name.split("~")
            if len(parts) != 5 or parts[0] != host or not parts[1].isdigit():
                continue
            try:
                os.kill(int(parts[1]), 0)
                continue            # that mount is still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                self.root.unlink(f"{HIDDEN_DIR}/{name}")
                removed += 1
            except OSError:
                pass
        return removed

    def destroy(self, path):
        """Unmounting: publish and close what is still open (the mount
        closes the client after)."""
        if self._ahead_runner is not None:
            self._ahead_runner.shutdown(wait=False, cancel_futures=True)
        if self._async is not None:
            self._async.close()      # commit and give back every delegation
        for number in list(self._handles):
            handle = self._handles.pop(number, None)
            if handle is None:
                continue
            for f in (handle.reader, handle.node.writer):
                try:
                    if f is not None:
                        f.close()
                except Exception:   # noqa: BLE001 - unmounting goes on whatever one file says
                    log.exception("closing %s at unmount", handle.path)
            try:
                self._drop_node(handle.node)    # removes a file unlinked while open
            except Exception:   # noqa: BLE001
                log.exception("releasing %s at unmount", handle.path)
