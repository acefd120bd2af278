"""The Raft log on disk: checksummed records appended in place over zeros.

``RecordLog(path)`` keeps a replica's log entries ``(command, index, term)``
in one file and in memory (pysyncobj reads entries by position; the log is
compacted by snapshots, so it stays small). Only the tick thread calls it.

Why not pysyncobj's ``FileJournal``: it writes through an mmap of a file it
grows sparse (``ftruncate``), and every ``add`` rewrites the last-record
offset in its first page. So each ``fdatasync`` wrote two pages plus the
block allocation of the one the record landed in. Here a record is one
``pwrite`` into blocks that are already written with zeros, so a sync
writes the record's page(s) and flushes, nothing else. Measured here, 2,000
syncs of a 300-byte append with three processes syncing at once on the one
disk: p50 0.27 ms for FileJournal's pattern, 0.18 ms for this one.

Format: a ``header_bytes`` header (magic, format version), then records
back to back::

    >I length of the payload | >Q xxh3_64(index, term, payload) | >Q index | >Q term | payload

and zeros after the last record: a zero length word ends the log.

Contracts
    * ``add`` writes (page cache) a non-empty command (pysyncobj's always
      start with a type byte); ``sync`` makes every write so far durable
      before it returns (fdatasync; a no-op when nothing changed since). A
      record is durable once a ``sync`` after its ``add`` returned.
    * Past the last record the file holds zeros up to ``_zeroed_to``: the log
      grows by writing zeros ahead (``grow_bytes_max`` at most at a time),
      removing the tail overwrites it with zeros, and opening overwrites
      whatever a torn append left past the last whole record.
    * Opening reads records while each is whole, its checksum matches and its
      index follows the previous one's; the first that does not ends the log
      (an append a crash tore was never synced, hence never acknowledged).
    * ``delete_to`` (compaction) and ``clear`` write the surviving records to
      a new file, sync it, rename it over the log and sync the directory: a
      crash leaves the old log or the new one, never a mix. (pysyncobj's
      FileJournal rewrites its file in place there.)
"""

from __future__ import annotations

import errno
import os
import struct

import xxhash

from cistern.core.durable import replace_durably

__all__ = ["RecordLog", "CorruptLog"]

MAGIC = b"CSTNWAL1"
header_bytes = 4096
grow_bytes_min = 1 << 20            # zeros written ahead of the tail, first step
grow_bytes_max = 8 << 20            # ... and at most per step (a step stalls the tick: ~5-10 ms)
_RECORD = struct.Struct(">IQQQ")
_CHECKED = struct.Struct(">QQ")     # index, term: hashed before the command
_WRITE_CHUNK = 1 << 20


class CorruptLog(Exception):
    """The file is not a log of this format."""


def _digest(command, index: int, term: int) -> int:
    h = xxhash.xxh3_64(_CHECKED.pack(index, term))
    h.update(command)
    return h.intdigest()


def _record_head(command: bytes, index: int, term: int) -> bytes:
    """The header of the record holding ``command`` (written before it: no
    copy of the command, which may be a batch of megabytes)."""
    if not command:
        raise ValueError("a log entry's command cannot be empty (a zero length ends the log)")
    return _RECORD.pack(len(command), _digest(command, index, term), index, term)


def _write_zeros(fd: int, start: int, end: int) -> None:
    zeros = bytes(min(_WRITE_CHUNK, max(0, end - start)))
    while start < end:
        start += os.pwrite(fd, memoryview(zeros)[:end - start], start)


class RecordLog:
    """Entries ``(command, index, term)`` in log order, durable on ``sync``."""

    def __init__(self, path: str, *, durable: bool = True, entries=None):
        """Open the log at ``path``; create it when missing, or, given
        ``entries``, (re)create it holding them."""
        self.path = path
        self._durable = durable
        self.entries: list = []         # (command, index, term)
        self._offsets: list = []        # file offset of each entry's record
        self._gen = 0                   # writes so far
        self._synced_gen = 0
        self.syncs = 0
        if entries is not None or not os.path.exists(path):
            self._fd = self._create(path, entries or ())
        else:
            self._fd = os.open(path, os.O_RDWR)
            self._load()

    # -- opening -----------------------------------------------------------

    def _create(self, path: str, entries) -> int:
        """A synced new log at ``path`` holding ``entries``; its fd."""
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            parts = [MAGIC.ljust(header_bytes, b"\0")]
            offsets, end = [], header_bytes
            for command, index, term in entries:
                offsets.append(end)
                parts += (_record_head(command, index, term), command)
                end += _RECORD.size + len(command)
            data = b"".join(parts)
            zeroed_to = end + max(grow_bytes_min, min(end, grow_bytes_max))
            os.pwrite(fd, data, 0)
            _write_zeros(fd, end, zeroed_to)
            os.fsync(fd)
            replace_durably(tmp, path)
        except BaseException:
            os.close(fd)
            raise
        self.entries = list(entries)
        self._offsets = offsets
        self._end = end
        self._zeroed_to = zeroed_to
        return fd

    def _load(self) -> None:
        size = os.fstat(self._fd).st_size
        with open(self.path, "rb", buffering=0) as f:
            data = f.read()
        if data[:len(MAGIC)] != MAGIC:
            raise CorruptLog(f"{self.path}: not a Cistern Raft log")
        view = memoryview(data)
        off, prev = header_bytes, None
        while off + _RECORD.size <= len(data):
            length, digest, index, term = _RECORD.unpack_from(data, off)
            body = off + _RECORD.size
            if length == 0 or body + length > len(data):
                break
            if prev is not None and index != prev + 1:
                break
            command = view[body:body + length]
            if _digest(command, index, term) != digest:
                break
            self.entries.append((bytes(command), index, term))
            self._offsets.append(off)
            prev = index
            off = body + length
        self._end = off
        # What a torn append left past the last whole record becomes zeros
        # again, so a later, shorter record is never followed by its remains.
        tail = data[off:]
        dirty = len(tail.rstrip(b"\0"))
        if dirty:
            _write_zeros(self._fd, off, off + dirty)
            self._gen += 1
            self.sync()
        self._zeroed_to = size

    # -- pysyncobj's journal operations --------------------------------------

    def add(self, command: bytes, index: int, term: int) -> None:
        head = _record_head(command, index, term)
        end = self._end + len(head) + len(command)
        if end > self._zeroed_to:
            grow = max(end - self._zeroed_to, min(max(self._zeroed_to, grow_bytes_min), grow_bytes_max))
            _write_zeros(self._fd, self._zeroed_to, self._zeroed_to + grow)
            self._zeroed_to += grow
        if os.pwritev(self._fd, (head, command), self._end) != end - self._end:
            # A regular file writes short only when the disk is full; the
            # partial record fails its checksum on the next open.
            raise OSError(errno.ENOSPC, f"{self.path}: short write of a log record")
        self.entries.append((command, index, term))
        self._offsets.append(self._end)
        self._end = end
        self._gen += 1

    def delete_from(self, position: int) -> None:
        """Drop the entries from ``position`` (a list position) on; their bytes become zeros."""
        if position >= len(self.entries):
            return
        start = self._offsets[position]
        _write_zeros(self._fd, start, self._end)
        del self.entries[position:]
        del self._offsets[position:]
        self._end = start
        self._gen += 1

    def delete_to(self, position: int) -> None:
        """Drop the entries before ``position``: a new file, swapped in atomically and synced."""
        self._rewrite(self.entries[position:])

    def clear(self) -> None:
        self._rewrite([])

    def _rewrite(self, entries) -> None:
        fd = self._create(self.path, entries)
        os.close(self._fd)
        self._fd = fd
        self._gen += 1
        self._synced_gen = self._gen        # _create synced it all

    def sync(self) -> None:
        """Every write so far is on disk when this returns."""
        gen = self._gen
        if gen > self._synced_gen:
            if self._durable:
                os.fdatasync(self._fd)
                self.syncs += 1
            self._synced_gen = gen

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
