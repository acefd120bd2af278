"""``File``: the binary file object ``Client.open`` returns (text modes wrap
it in ``io.TextIOWrapper``), over the pure ``extents.Extents`` and the
``blocks.DataPath`` shell.

Contract:

* An ``io.BufferedIOBase``: read, read1, readinto, readinto1, peek,
  readline/iteration, write, seek, tell, truncate, flush, close, fsync,
  readable/writable/seekable, context manager. ``fileno()`` raises
  ``io.UnsupportedOperation``. Thread-safe (one lock per file); ``pread``
  holds it only to plan a read, so concurrent preads (a FUSE mount's
  threads) wait for their blocks at the same time.
* Consistency is close-to-open: a handle reads the layout it opened with
  (plus its own writes); another client's writes appear to handles opened
  after that client's commit.
* Writes are buffered per block in this process. ``flush()``, ``fsync()``,
  ``truncate()`` and ``close()`` upload what is buffered and publish the new
  layout, size and mtime in one metadata COMMIT_WRITE under the handle's
  lease: readers see all of a commit or none of it. Nothing written is
  visible (or durable) before that; a writer that dies leaves the last
  committed contents intact. After ``flush()`` returns, the data is on every
  node that acked its blocks (fsynced) and the commit is in the Raft log of
  a majority of metadata replicas.
* Errors are ``OSError``: EIO when no replica could serve a block or no node
  took an upload (a failed upload stays buffered and the next flush tries
  again), ESTALE when the lease was lost (the file was removed, or the
  writer was silent longer than the lease TTL and another writer took it).
* Read-ahead: a read that continues where the previous one ended, or
  starts within ``read_ahead_slack_blocks`` blocks' length of it (a FUSE mount's
  threads hand the kernel's read-ahead requests over slightly out of
  order), fetches whole blocks and prefetches the next
  ``read_ahead_blocks`` in the background; any other read fetches just the
  byte range it needs (or slices a block already fetched). Memory: at most
  ``read_ahead_blocks + 2`` blocks are held per open file, and blocks are
  fetched ahead only while all the process's files together hold at most
  ``limits.read_ahead_bytes_max`` (``readahead.budget``).
"""

from __future__ import annotations

import collections
import errno
import io
import threading

from . import readahead
from .extents import Extent, Extents

__all__ = ["BufferPool", "File", "Opened"]

# Whole blocks fetched ahead of a sequential reader. 8 against 4, four
# interleaved data_bench runs each: remote reads 1,028-1,224 MB/s against
# 996-1,075 (the nodes' cold reads overlap more); the price is up to 10
# blocks (40 MiB at the default block size) held per file read sequentially.
read_ahead_blocks = 8
read_ahead_slack_blocks = 1      # a read starting this close to the last one's end still counts as sequential
# Block uploads in flight per file; also bounds the file's buffered memory
# to about this many blocks more (24 MiB at the default block size). 6
# against 3, data_bench --mib 512 A/B, interleaved, same hour: 280, 297,
# 220, 254, 301, 294 against 278, 243, 151, 248, 297, 264 MB/s (the later
# uploads keep the disk busy while one waits for its flushes), CPU per MiB
# unchanged.
uploads_in_flight_max = 6
idle_block_buffers_max = 4       # uploaded blocks' buffers kept for reuse, over all files of the process
zero_fill_piece_bytes = 1 << 20  # a hole written over is filled this much at a time
peek_bytes_max = 64 << 10        # peek (readline) returns at most this much unless asked for more


class BufferPool:
    """Block buffers (bytearrays) for reuse. A new one is zeroed by
    ``bytearray(n)`` and faulted in page by page as it fills, each under
    the GIL: about a tenth of a writing FUSE mount's CPU. ``File`` gives a
    buffer back once its upload has finished and no extent holds it; at
    most ``idle_max`` are kept (the memory stays with the process).
    Thread-safe (deque operations are atomic)."""

    def __init__(self, idle_max: int):
        self.idle_max = idle_max
        self._idle: collections.deque = collections.deque()

    def take(self, n: int) -> bytearray:
        """A bytearray of n bytes, contents unspecified."""
        try:
            buf = self._idle.pop()
        except IndexError:
            return bytearray(n)
        return buf if len(buf) == n else bytearray(n)   # another block size: dropped

    def give(self, buf: bytearray) -> None:
        if len(self._idle) < self.idle_max:
            self._idle.append(buf)


block_buffers = BufferPool(idle_block_buffers_max)


class Opened:
    """What the open plan found: the inode, the lease (writers), the
    attributes, layout and replication factor the handle starts from."""

    __slots__ = ("ino", "lease_id", "attr", "layout", "replication")

    def __init__(self, ino, lease_id, attr, layout, replication):
        self.ino, self.lease_id, self.attr = ino, lease_id, attr
        self.layout, self.replication = layout, replication


class File(io.BufferedIOBase):
    def __init__(self, opened: Opened, data, commit, release, *, name, mode: str, open_mode,
                 block_size_bytes: int, replication: int | None):
        """``commit(ino, lease_id, layout, size)`` and ``release(ino,
        lease_id)`` are the Client's metadata calls; ``data`` a DataPath on
        which a writer's caller has already counted the lease
        (``hold_lease(ino)``); close drops it."""
        super().__init__()
        self.name = name
        self.mode = mode
        self._om = open_mode
        self._opened = opened
        self._data = data
        self._commit = commit
        self._release = release
        self._replication = replication or opened.replication
        layout = [] if open_mode.truncate else opened.layout
        size = 0 if open_mode.truncate else opened.attr.size
        self._x = Extents(layout, size, block_size_bytes, block_buffers.take)
        self._pos = 0
        self._lock = threading.RLock()
        self._uncommitted = bool(open_mode.truncate)   # 'w' truncates with its first commit
        self._uploads: collections.deque = collections.deque()
        self._cache = readahead.BlockCache(readahead.budget, read_ahead_blocks + 2)   # block id -> Future of bytes
        self._read_end = 0      # where the last read ended: a read starting here is sequential
        self._ahead_done = None  # the extent whose read-ahead window is all fetched
        self._closing = False

    # -- io.BufferedIOBase ---------------------------------------------------

    def readable(self) -> bool:
        self._check_open()
        return self._om.readable

    def writable(self) -> bool:
        self._check_open()
        return self._om.writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a Cistern file has no file descriptor")

    def isatty(self) -> bool:
        self._check_open()
        return False

    def detach(self):
        raise io.UnsupportedOperation("detach")

    @property
    def raw(self):
        return self

    @property
    def size(self) -> int:
        """The file's size as this handle sees it (its own writes included)."""
        return self._x.size

    @property
    def ino(self) -> int:
        """The file's inode number."""
        return self._opened.ino

    @property
    def attr(self):
        """The file's ``model.Attr`` as of the open or this handle's last commit."""
        return self._opened.attr

    @property
    def uncommitted(self) -> bool:
        """Whether this handle holds writes (or a truncation) not yet published."""
        return self._uncommitted

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def _check(self, readable: bool) -> None:
        self._check_open()
        if readable and not self._om.readable:
            raise io.UnsupportedOperation("read")
        if not readable and not self._om.writable:
            raise io.UnsupportedOperation("write")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        offset = offset.__index__()
        with self._lock:
            self._check_open()
            if whence == io.SEEK_SET:
                pos = offset
            elif whence == io.SEEK_CUR:
                pos = self._pos + offset
            elif whence == io.SEEK_END:
                pos = self._x.size + offset
            else:
                raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
            if pos < 0:
                raise OSError(errno.EINVAL, "Invalid argument") if whence != io.SEEK_SET \
                    else ValueError(f"negative seek position {offset}")
            self._pos = pos
            return pos

    def tell(self) -> int:
        with self._lock:
            self._check_open()
            return self._pos

    # -- reading ---------------------------------------------------------------

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            self._check(True)
            n = self._x.size - self._pos if size is None or size < 0 else size
            data = self._read_at(self._pos, n)
            self._pos += len(data)
            return data

    read1 = read

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    readinto1 = readinto

    def peek(self, size: int = 0) -> bytes:
        """Bytes from the position to the end of its extent (at least one
        unless at the end), without moving."""
        with self._lock:
            self._check(True)
            pieces = self._x.pieces(self._pos, max(size, 1))
            if not pieces:
                return b""
            first = pieces[0]
            n = first.length if first.extent is None else first.extent.end - self._pos
            return self._read_at(self._pos, max(min(n, peek_bytes_max), size), track=False)

    def _read_at(self, pos: int, n: int, track: bool = True) -> bytes:
        return self._gather(self._plan_read(pos, n, track))

    def _plan_read(self, pos: int, n: int, track: bool = True) -> list:
        """What a read of n bytes at pos takes (the lock held): its parts in
        order, each bytes (holes, buffered writes: copied now) or a stored
        block's ``(future or None, block, offset, length)``, which
        ``_gather`` turns into bytes without the lock (blocks are
        immutable). Starts the read-ahead."""
        sequential = self._near_read_end(pos)
        parts, end = [], pos
        for piece in self._x.pieces(pos, n):
            parts.append(self._part(piece, sequential))
            end += piece.length
        if track:
            # Reordered sequential reads keep the furthest end, so the one
            # that comes late does not look like a jump backwards.
            self._read_end = max(self._read_end, end) if sequential else end
            if sequential and end > pos:
                self._read_ahead(self._read_end)
        return parts

    def _near_read_end(self, pos: int) -> bool:
        """Whether a read at pos continues the last one: it starts where
        that ended, or within ``read_ahead_slack_blocks`` of the length of
        the block at pos."""
        gap = abs(pos - self._read_end)
        if gap == 0:
            return True
        if pos >= self._x.end:
            return False
        e = self._x.items[self._x.index(pos)]
        return gap <= read_ahead_slack_blocks * (e.block[1] if e.stored else e.length)

    def _part(self, piece, sequential: bool):
        e, offset, length = piece
        if e is None:
            return bytes(length)
        if not e.stored:
            return bytes(e.data[offset:offset + length])
        cached = self._cache.get(e.block[0])
        if cached is None and sequential:
            cached = self._fetch_ahead(e, demand=True)
        return cached, e.block, offset, length

    def _gather(self, parts: list) -> bytes:
        """The bytes of ``_plan_read``'s parts (waits for blocks; no lock needed)."""
        out = []
        for part in parts:
            if type(part) is bytes:
                out.append(part)
                continue
            future, block, offset, length = part
            if future is None:
                out.append(self._data.read(block, offset, length))
            else:
                out.append(self._result(future)[offset:offset + length])
        return out[0] if len(out) == 1 else b"".join(out)

    @staticmethod
    def _result(future) -> bytes:
        try:
            return future.result()
        except OSError as err:
            raise err from None

    def _fetch_ahead(self, e: Extent, demand: bool = False):
        """The Future of a stored block, fetched once per file; None when it
        is fetched ahead (not ``demand``) and the read-ahead budget is spent."""
        return self._cache.fetch(e.block[0], e.block[1], lambda: self._data.submit_read(e.block), demand)

    def _read_ahead(self, pos: int) -> None:
        """Fetch the blocks from pos's on, ``read_ahead_blocks`` past it,
        as the budget admits them; give back the blocks more than
        ``read_ahead_slack_blocks`` behind it. Once a block's window is all
        fetched, reads within that block skip this."""
        if pos >= self._x.end:
            return
        i = self._x.index(pos)
        if self._x.items[i] is self._ahead_done:
            return
        behind = max(0, i - read_ahead_slack_blocks)
        window = self._x.items[behind:i + read_ahead_blocks + 1]
        self._cache.trim({e.block[0] for e in window if e.stored})
        for e in window[i - behind:]:
            if e.stored and self._fetch_ahead(e) is None:
                return      # over the budget: tried again at the next read
        self._ahead_done = self._x.items[i]

    def _load(self, e: Extent) -> bytes:
        """A stored extent's bytes, for a read-modify-write."""
        future = self._cache.pop(e.block[0], None)
        data = self._result(future) if future is not None else self._data.read(e.block)
        return data[:e.length]

    # -- writing ---------------------------------------------------------------

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        with self._lock:
            self._check(False)
            if self._om.append:
                self._pos = self._x.size
            self._pos = self._write_at(self._pos, view)
            return len(view)

    def pread(self, size: int, offset: int) -> bytes:
        """``os.pread``: up to ``size`` bytes at ``offset`` (short at the
        end), without moving the position. Reads continuing where the last
        one ended count as sequential (read-ahead), as for ``read``.
        Concurrent preads overlap: the file's lock is held while the read
        is planned (and read-ahead started), not while its blocks arrive."""
        with self._lock:
            self._check(True)
            if offset < 0 or size < 0:
                raise OSError(errno.EINVAL, "Invalid argument")
            parts = self._plan_read(offset, max(0, min(size, self._x.size - offset)))
        return self._gather(parts)

    def pwrite(self, data, offset: int) -> int:
        """``os.pwrite``: writes ``data`` at ``offset`` whatever the mode (the
        caller chose the offset, as the kernel does for a FUSE write),
        without moving the position; returns its length. Buffered and
        published like ``write``."""
        view = memoryview(data).cast("B")
        with self._lock:
            self._check(False)
            if offset < 0:
                raise OSError(errno.EINVAL, "Invalid argument")
            self._write_at(offset, view)
            return len(view)

    def _write_at(self, pos: int, view) -> int:
        n = len(view)
        self._fill_hole(pos)
        step = self._x.block_size_bytes
        for i in range(0, n, step):
            self._x.write(pos, view[i:i + step], self._load)
            pos += min(step, n - i)
            self._pump_at(pos, final=False)
        self._uncommitted = True
        return pos

    def _fill_hole(self, pos: int) -> None:
        while self._x.end < pos:
            n = min(pos - self._x.end, zero_fill_piece_bytes)
            self._x.write(self._x.end, bytes(n), self._load)
            self._pump_at(self._x.end, final=False)

    def _pump(self, final: bool) -> None:
        self._pump_at(self._pos, final)

    def _pump_at(self, pos: int, final: bool) -> None:
        """Upload the dirty blocks that are done: all when ``final``, else
        the complete ones the writer (now at ``pos``) has left."""
        for e in self._x.to_upload(pos, final):
            handle = object()
            buffer = e.data
            payload = self._x.uploading(e, handle)
            self._uploads.append((e, handle, self._data.submit_upload(payload, self._replication), buffer))
        while len(self._uploads) > (0 if final else uploads_in_flight_max):
            self._settle(*self._uploads.popleft())

    def _settle(self, e: Extent, handle, future, buffer) -> None:
        try:
            block = future.result()
        except OSError as err:
            self._x.upload_failed(e, handle)
            self._recycle(e, buffer)
            self._fail_pending()
            raise err from None
        self._x.uploaded(e, handle, block)
        self._recycle(e, buffer)

    def _recycle(self, e: Extent, buffer) -> None:
        """The upload that read ``buffer`` has finished: reuse a whole block's
        buffer unless the extent still holds it (uploaded, failed and
        copied, or rewritten meanwhile: it does not); a caller's bytes kept
        by reference (extents.py) is no buffer of ours."""
        if e.data is not buffer and len(buffer) == self._x.block_size_bytes and isinstance(buffer, bytearray):
            block_buffers.give(buffer)

    def _fail_pending(self) -> None:
        """After one failed upload, the rest finish but nothing is assumed."""
        while self._uploads:
            e, handle, future, buffer = self._uploads.popleft()
            try:
                self._x.uploaded(e, handle, future.result())
            except OSError:
                self._x.upload_failed(e, handle)
            self._recycle(e, buffer)

    def truncate(self, size: int | None = None) -> int:
        with self._lock:
            self._check(False)
            size = self._pos if size is None else size.__index__()
            if size < 0:
                raise OSError(errno.EINVAL, "Invalid argument")
            self._x.truncate(min(size, self._x.size))
            self._x.size = size
            self._uncommitted = True
            self._flush()
            return size

    def flush(self) -> None:
        with self._lock:
            if self.closed or self._closing:
                return
            self._flush()

    def fsync(self) -> None:
        """``os.fsync``: the same as flush (a commit is durable when it returns)."""
        self.flush()

    def _flush(self) -> None:
        if not self._om.writable or not self._uncommitted:
            return
        for e in self._x.stale():
            self._x.make_dirty(e, self._load)
        self._pump(final=True)
        attr = self._commit(self._opened.ino, self._opened.lease_id, self._x.layout(), self._x.size)
        self._opened.attr = attr
        self._uncommitted = False

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self._closing = True
            try:
                self._flush()
            finally:
                try:
                    if self._om.writable:
                        self._data.drop_lease(self._opened.ino)
                        self._release(self._opened.ino, self._opened.lease_id)
                finally:
                    self._cache.clear()
                    super().close()

    def __repr__(self) -> str:
        return f"<cistern.client.File name={self.name!r} mode={self.mode!r}>"

