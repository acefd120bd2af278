"""The blocks of one storage node: immutable files plus an LMDB index.

Contract:

* A block is identified by a 16-byte id chosen by its writer. Its bytes live
  in ``DATA/blocks/<2 hex>/<32 hex>``, written once and never modified; the
  index (``DATA/index``, LMDB) holds per block its length, whole-block
  xxh3-128, one xxh3-64 per 64 KiB sub-chunk, its state (writing / final)
  and its creation time.
* Write: ``begin_write`` returns a ``BlockWriter``; its bytes go to a temp
  file (with O_DIRECT when the store syncs and the file system allows it:
  see ``FileAppender``) and every sub-chunk is checked against the checksum the client sent
  as soon as it is complete. ``commit()`` checks the length and the whole
  checksum, fsyncs the file, renames it into place, fsyncs the directory and
  records the block as final (index fsynced): only when ``commit()`` returns
  is the block durable and visible. Any mismatch raises CisternError(EBADMSG)
  and leaves nothing behind; so does ``abort()``.
* Read: ``read``/``read_chunks`` check every sub-chunk they touch against the
  index and raise CisternError(EBADMSG) on a mismatch (EIO when the file is
  shorter than its index entry), so a caller can fail over to another replica;
  only a stream whose reader verifies (and reports) itself skips the check.
  A ``transient`` read longer than one message (a block streamed to a
  reader) of a block not read lately reads with O_DIRECT into a reused
  staging buffer when the store writes with O_DIRECT: it neither fills nor
  copies out of the page cache. A block read again goes through the page
  cache (admitted on its second read, so one pass over cold data does not
  evict hot data, and data read repeatedly is served from memory).
* Errors: EINVAL for an id that is not 16 bytes or a bad range or header,
  ENOENT for an unknown block, EEXIST for a different block under an existing
  id, EBUSY while the same id is being written, E2BIG for a block longer than
  this node accepts.
* Crash safety: ``BlockStore()`` removes temp files, index entries still in
  state writing (and their files), block files without an index entry, and
  index entries whose file is gone. None of these was ever acknowledged,
  except the last, which is lost data the block report will show as missing.
* One store per data directory: a second ``BlockStore`` on it (in any
  process) raises CisternError(EBUSY) while the first is open.
* Threads: every method may be called from any thread. Writes of different
  blocks proceed in parallel; LMDB serializes the short index commits.
* Time: the caller passes the creation time in (``created_s``); the store
  never reads a clock.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import itertools
import logging
import mmap
import os
import struct
import threading
from dataclasses import dataclass

import lmdb
import xxhash

from cistern.blockstore import limits
from cistern.core.durable import fsync_dir
from cistern.core.errors import CisternError

log = logging.getLogger(__name__)

STATE_WRITING = 0
STATE_FINAL = 1
STATE_NAMES = {STATE_WRITING: "writing", STATE_FINAL: "final"}

_DB_BLOCKS = b"blocks"
_ENTRY = struct.Struct(">BQd16sI")   # state, length, created_s, xxh3-128, sub-chunk count


# -- checksums and ids (pure) -------------------------------------------------

def block_checksum(data) -> bytes:
    """The whole-block checksum: the xxh3-128 digest (16 bytes)."""
    return xxhash.xxh3_128_digest(data)


def block_file(data_dir: str, block_id: bytes) -> str:
    """Where a node with data directory ``data_dir`` keeps a block's file
    (``blocks/ab/abcdef...``); the client's short-circuit reads open it."""
    name = bytes(block_id).hex()
    return os.path.join(data_dir, "blocks", name[:limits.fanout_prefix_hex_chars], name)


def chunk_count(length: int, chunk_size_bytes: int = limits.chunk_size_bytes) -> int:
    return -(-length // chunk_size_bytes)


def chunk_checksums(data, chunk_size_bytes: int = limits.chunk_size_bytes) -> list[int]:
    """One xxh3-64 per ``chunk_size_bytes`` of data (the last may be short)."""
    view = memoryview(data)
    return [xxhash.xxh3_64_intdigest(view[i:i + chunk_size_bytes])
            for i in range(0, len(view), chunk_size_bytes)]


def check_block_id(block_id) -> bytes:
    """The id as bytes; CisternError(EINVAL) unless it is 16 bytes."""
    if not isinstance(block_id, (bytes, bytearray)) or len(block_id) != limits.block_id_length_bytes:
        shown = block_id.hex() if isinstance(block_id, (bytes, bytearray)) else repr(block_id)
        raise CisternError(errno.EINVAL, f"block id {shown[:80]!r} is not {limits.block_id_length_bytes} bytes")
    return bytes(block_id)


def aligned_range(offset: int, length: int, chunk_size_bytes: int = limits.chunk_size_bytes) -> tuple[int, int]:
    """The sub-chunk-aligned [start, end) covering [offset, offset+length)."""
    start = offset - offset % chunk_size_bytes
    if length == 0:
        return start, start
    end = -(-(offset + length) // chunk_size_bytes) * chunk_size_bytes
    return start, end


@dataclass(frozen=True)
class BlockInfo:
    block_id: bytes
    length: int
    checksum: bytes                 # xxh3-128 of the whole block
    chunk_checksums: tuple          # xxh3-64 per sub-chunk
    state: int
    created_s: float

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]


def encode_entry(info: BlockInfo) -> bytes:
    sums = info.chunk_checksums
    return _ENTRY.pack(info.state, info.length, info.created_s, info.checksum, len(sums)) + \
        struct.pack(f">{len(sums)}Q", *sums)


def decode_entry(block_id: bytes, raw: bytes) -> BlockInfo:
    state, length, created_s, checksum, n = _ENTRY.unpack_from(raw)
    sums = struct.unpack_from(f">{n}Q", raw, _ENTRY.size)
    return BlockInfo(block_id, length, checksum, sums, state, created_s)


# -- the store ------------------------------------------------------------------

class BlockStore:
    def __init__(self, data_dir: str, *, sync: bool = True, direct_io: bool | None = None,
                 block_size_max_bytes: int = limits.block_size_max_bytes,
                 map_size_bytes: int = limits.index_map_size_bytes):
        """``direct_io`` (default: ``sync``) writes block files with O_DIRECT
        where the file system supports it."""
        assert limits.chunk_size_bytes <= block_size_max_bytes <= limits.block_size_max_bytes
        self.data_dir = os.path.abspath(data_dir)
        self.sync = sync
        self.stages = StagePool() if (sync if direct_io is None else direct_io) else None
        # Cold streamed reads stage through huge pages of their own (see _DirectReader).
        self._read_stages = None if self.stages is None else StagePool(limits.direct_read_stage_bytes,
                                                                        huge_pages=True)
        self.block_size_max_bytes = block_size_max_bytes
        self.blocks_dir = os.path.join(self.data_dir, "blocks")
        self.tmp_dir = os.path.join(self.data_dir, "tmp")
        self.quarantine_dir = os.path.join(self.data_dir, "quarantine")
        for d in (self.data_dir, self.blocks_dir, self.tmp_dir, self.quarantine_dir):
            os.makedirs(d, exist_ok=True)
        self._lock_fd = _lock_data_dir(self.data_dir)
        # The index commits unsynced (a writing-state entry need not survive a
        # crash); a final entry is followed by an explicit env.sync().
        self.env = lmdb.open(os.path.join(self.data_dir, "index"), map_size=map_size_bytes,
                             max_dbs=2, max_readers=limits.index_readers_max, sync=False,
                             metasync=False)
        self.db = self.env.open_db(_DB_BLOCKS)
        self._lock = threading.Lock()      # guards _writing and the counters
        self._writing: set[bytes] = set()
        self._tmp_seq = itertools.count()
        self._read_lately = RecentReads()
        self.block_count = 0
        self.used_bytes = 0
        self.checksum_failures = 0
        self.recovered = self._recover()

    def close(self) -> None:
        self.env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None

    # -- paths ---------------------------------------------------------------

    def block_path(self, block_id: bytes) -> str:
        return block_file(self.data_dir, block_id)

    # -- open-time recovery ------------------------------------------------------

    def _recover(self) -> dict:
        """Drop whatever a crash left half-done; returns what was dropped."""
        dropped = {"tmp_files": 0, "writing_entries": 0, "unindexed_files": 0, "missing_files": 0}
        for name in os.listdir(self.tmp_dir):
            os.unlink(os.path.join(self.tmp_dir, name))
            dropped["tmp_files"] += 1
        indexed = set()
        with self.env.begin(write=True, db=self.db) as txn:
            for key, raw in list(txn.cursor()):
                info = decode_entry(bytes(key), bytes(raw))
                path = self.block_path(info.block_id)
                if info.state != STATE_FINAL:
                    txn.delete(key)
                    _unlink_quietly(path)
                    dropped["writing_entries"] += 1
                elif not os.path.exists(path):
                    txn.delete(key)
                    dropped["missing_files"] += 1
                    log.error("block %s is indexed but its file is gone; dropped", info.block_id.hex())
                else:
                    indexed.add(info.block_id.hex())
                    self.block_count += 1
                    self.used_bytes += info.length
        dropped["unindexed_files"] = self._remove_unindexed_files(indexed)
        self._sync_index()
        if any(dropped.values()):
            log.warning("block store %s recovered from a crash: %s", self.data_dir, dropped)
        return dropped

    def _remove_unindexed_files(self, indexed: set) -> int:
        removed = 0
        for prefix in os.listdir(self.blocks_dir):
            sub = os.path.join(self.blocks_dir, prefix)
            for name in os.listdir(sub):
                if name not in indexed:
                    os.unlink(os.path.join(sub, name))
                    removed += 1
        return removed

    def _sync_index(self) -> None:
        if self.sync:
            self.env.sync(True)

    # -- writing ----------------------------------------------------------------

    def begin_write(self, block_id, length: int, checksum: bytes, chunk_sums, *,
                    created_s: float) -> "BlockWriter":
        """Start writing a block whose client-computed checksums are given.

        Raises EINVAL (bad id or header), E2BIG (too long), EEXIST (another
        block under this id), EBUSY (the id is being written now). Writing a
        block that is already stored with the same checksum is allowed: the
        bytes are verified and the commit is a no-op (a retried write)."""
        block_id = check_block_id(block_id)
        chunk_sums = tuple(int(s) for s in chunk_sums)
        self._check_header(length, checksum, chunk_sums)
        with self._lock:
            if block_id in self._writing:
                raise CisternError(errno.EBUSY, f"block {block_id.hex()} is being written")
            self._writing.add(block_id)
        info = BlockInfo(block_id, length, bytes(checksum), chunk_sums, STATE_WRITING, float(created_s))
        existing = None
        try:
            # Checked only once the id is ours, so no other writer can publish
            # under it between this check and our commit.
            existing = self.info(block_id, missing_ok=True)
            if existing is not None and (existing.length, existing.checksum) != (length, info.checksum):
                raise CisternError(errno.EEXIST, f"block {block_id.hex()} exists with other contents")
            if existing is None:
                with self.env.begin(write=True, db=self.db) as txn:
                    txn.put(block_id, encode_entry(info))
            tmp = os.path.join(self.tmp_dir, f"{block_id.hex()}.{os.getpid()}.{next(self._tmp_seq)}")
            return BlockWriter(self, info, tmp, duplicate=existing is not None, stages=self.stages)
        except BaseException:
            self._end_write(block_id, drop_entry=existing is None)
            raise

    def _check_header(self, length: int, checksum, chunk_sums: tuple) -> None:
        if not isinstance(length, int) or length < 0:
            raise CisternError(errno.EINVAL, f"bad block length {length!r}")
        if length > self.block_size_max_bytes:
            raise CisternError(errno.E2BIG, f"block of {length} bytes exceeds this node's "
                                            f"block size limit {self.block_size_max_bytes}")
        if len(checksum) != limits.checksum_length_bytes:
            raise CisternError(errno.EINVAL, f"block checksum is {len(checksum)} bytes, "
                                             f"expected {limits.checksum_length_bytes} (xxh3-128)")
        if len(chunk_sums) != chunk_count(length):
            raise CisternError(errno.EINVAL, f"{len(chunk_sums)} sub-chunk checksums for {length} bytes, "
                                             f"expected {chunk_count(length)} (one per {limits.chunk_size_bytes})")

    def _end_write(self, block_id: bytes, *, drop_entry: bool) -> None:
        if drop_entry:
            with self.env.begin(write=True, db=self.db) as txn:
                raw = txn.get(block_id)
                if raw is not None and decode_entry(block_id, raw).state == STATE_WRITING:
                    txn.delete(block_id)
        with self._lock:
            self._writing.discard(block_id)

    def _publish(self, info: BlockInfo, tmp_path: str) -> None:
        """Rename a verified, fsynced temp file into place and index it final."""
        path = self.block_path(info.block_id)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        os.rename(tmp_path, path)
        if self.sync:
            fsync_dir(directory)
        final = BlockInfo(info.block_id, info.length, info.checksum, info.chunk_checksums,
                          STATE_FINAL, info.created_s)
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(info.block_id, encode_entry(final))
        self._sync_index()
        with self._lock:
            self.block_count += 1
            self.used_bytes += info.length

    def put(self, block_id, data, *, created_s: float, checksum: bytes | None = None,
            chunk_sums=None) -> BlockInfo:
        """Write a whole block at once (checksums computed here unless given)."""
        checksum = block_checksum(data) if checksum is None else checksum
        chunk_sums = chunk_checksums(data) if chunk_sums is None else chunk_sums
        writer = self.begin_write(block_id, len(data), checksum, chunk_sums, created_s=created_s)
        with writer:
            view = memoryview(data)
            for i in range(0, len(view), limits.message_data_max_bytes):
                writer.write(view[i:i + limits.message_data_max_bytes])
            writer.commit()
        return self.info(block_id)

    # -- reading -------------------------------------------------------------------

    def info(self, block_id, *, missing_ok: bool = False) -> BlockInfo | None:
        """The index entry of a final block; ENOENT (or None) when unknown."""
        block_id = check_block_id(block_id)
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(block_id)
            info = decode_entry(block_id, bytes(raw)) if raw is not None else None
        if info is None or info.state != STATE_FINAL:
            if missing_ok:
                return None
            raise CisternError(errno.ENOENT, f"no block {block_id.hex()}")
        return info

    def read_chunks(self, block_id, offset: int = 0, length: int | None = None,
                    message_bytes: int = limits.message_data_max_bytes, *, transient: bool = False,
                    verify: bool = True):
        """(info, iterator of (start, data, sums)) covering [offset, offset+length)
        in whole, verified sub-chunks: ``start`` is sub-chunk aligned and the
        caller trims. ``length`` None (or past the end) reads to the block's
        end. Raises ENOENT, EINVAL (offset past the end); the iterator raises
        EBADMSG on a checksum mismatch and EIO on a short file.

        ``verify`` False skips the checksums (never the length check): for
        a stream whose reader checks every sub-chunk against ``sums`` itself
        and reports a bad replica (hashing it here too was 13-18% of a
        node's CPU per MiB read).

        With ``transient`` a piece's ``data`` may be a view that is valid
        only until the next piece is asked for (a caller that sends each
        piece before asking for the next, as both read streams do); a read
        longer than one message, of a block not among the last
        ``limits.direct_read_recent_blocks`` read so, then comes from the
        disk with O_DIRECT (``_DirectReader``) where the store writes that
        way: a cold read costs the node no page-cache fill and no copy out
        of it (about 0.3 against 0.07 ms of CPU per MiB measured here), and
        one pass over cold blocks does not push hot pages out of the cache.
        A block read again is read through the page cache, which keeps it:
        repeated reads are served from memory (2.4 against 1.3 GB/s here)."""
        assert message_bytes % limits.chunk_size_bytes == 0 and message_bytes > 0
        info = self.info(block_id)
        if offset < 0 or (length is not None and length < 0) or offset > info.length:
            raise CisternError(errno.EINVAL, f"range {offset}+{length} is outside block "
                                             f"{info.block_id.hex()} of {info.length} bytes")
        end = info.length if length is None else min(info.length, offset + length)
        try:
            fd = os.open(self.block_path(info.block_id), os.O_RDONLY)
        except FileNotFoundError:
            raise CisternError(errno.ENOENT, f"no block {info.block_id.hex()} (deleted)") from None
        return info, self._chunks(fd, info, offset, end, message_bytes, transient, verify)

    def _chunks(self, fd: int, info: BlockInfo, offset: int, end: int, message_bytes: int, transient: bool,
                verify: bool):
        direct = None
        try:
            start, stop = aligned_range(offset, end - offset)
            stop = min(stop, info.length)
            if (transient and stop - start > message_bytes and self._read_stages is not None
                    and message_bytes <= self._read_stages.stage_bytes and self._read_lately.first(info.block_id)):
                direct = _DirectReader.open(self.block_path(info.block_id), fd, self._read_stages)
            if direct is None and stop - start > message_bytes:
                # Let the kernel read the rest ahead while the first piece is
                # verified and sent: a cold read then streams at disk speed.
                os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)
            for at in range(start, stop, message_bytes):
                want = min(message_bytes, stop - at)
                try:
                    data = direct.pread(want, at, stop) if direct is not None else os.pread(fd, want, at)
                except OSError as e:   # a failing disk: this replica is as bad as a corrupt one
                    self._count_failure()
                    raise CisternError(errno.EIO, f"block {info.block_id.hex()}: reading at {at}: "
                                                  f"{e.strerror or e}") from None
                if len(data) != want:
                    self._count_failure()
                    raise CisternError(errno.EIO, f"block {info.block_id.hex()} file is short at "
                                                  f"{at + len(data)} (index says {info.length} bytes)")
                first = at // limits.chunk_size_bytes
                sums = info.chunk_checksums[first:first + chunk_count(want)]
                if verify:
                    self._verify_chunks(info, first, data, sums)
                yield at, data, sums
        finally:
            if direct is not None:
                direct.close()
            os.close(fd)

    def _verify_chunks(self, info: BlockInfo, first: int, data: bytes, sums) -> None:
        for i, (actual, expected) in enumerate(zip(chunk_checksums(data), sums)):
            if actual != expected:
                self._count_failure()
                raise CisternError(errno.EBADMSG, f"block {info.block_id.hex()} sub-chunk {first + i} "
                                                  f"(bytes {(first + i) * limits.chunk_size_bytes}+) fails its checksum")

    def _count_failure(self) -> None:
        with self._lock:
            self.checksum_failures += 1

    def read(self, block_id, offset: int = 0, length: int | None = None) -> bytes:
        """The verified bytes [offset, offset+length) of a block (see read_chunks)."""
        _, chunks = self.read_chunks(block_id, offset, length)
        parts = [(start, data) for start, data, _ in chunks]
        if not parts:
            return b""
        joined = b"".join(data for _, data in parts)
        skip = offset - parts[0][0]
        want = len(joined) - skip if length is None else length
        return joined[skip:skip + want]

    def verify(self, block_id) -> str:
        """'' when the block's file matches its index entry in full, else
        what is wrong (a one-line description). Raises ENOENT when unknown,
        EINVAL for a bad id."""
        try:
            info, chunks = self.read_chunks(block_id)
            hasher = xxhash.xxh3_128()
            size = 0
            for _, data, _ in chunks:
                hasher.update(data)
                size += len(data)
        except CisternError as e:
            if e.errno not in (errno.EBADMSG, errno.EIO):
                raise
            return e.message
        if size != info.length or os.path.getsize(self.block_path(info.block_id)) != info.length:
            self._count_failure()
            return f"block {info.block_id.hex()} file size differs from its index entry ({info.length})"
        if hasher.digest() != info.checksum:
            self._count_failure()
            return f"block {info.block_id.hex()} fails its whole-block checksum"
        return ""

    def list(self):
        """(block_id, length) of every final block, in id order (for block reports)."""
        with self.env.begin(db=self.db) as txn:
            out = []
            for key, raw in txn.cursor():
                state, length = _ENTRY.unpack_from(raw)[:2]
                if state == STATE_FINAL:
                    out.append((bytes(key), length))
        return out

    # -- removal ----------------------------------------------------------------------

    def delete(self, block_id) -> bool:
        """Forget a block and remove its file; False when it was not there.
        Idempotent. The index entry goes first, so a crash in between leaves
        an unindexed file that the next open removes."""
        return bool(self.delete_many([block_id]))

    def delete_many(self, block_ids) -> list[bytes]:
        """``delete`` for several blocks with one index commit and one index
        sync (not one per block: a removed 512 MiB file made each node sync
        its index 128 times, while the next file's writes waited on the
        same disk's flushes); the ids that were there. EINVAL, and nothing
        deleted, when any id is not valid."""
        ids = [check_block_id(b) for b in block_ids]
        dropped = self._drop_entries(ids)
        for info in dropped:
            _unlink_quietly(self.block_path(info.block_id))
        return [info.block_id for info in dropped]

    def quarantine(self, block_id) -> str | None:
        """Move a (corrupt) block's file aside into quarantine/ and forget it;
        returns the new path, or None when the block was not there."""
        info = self._drop_entry(check_block_id(block_id))
        if info is None:
            return None
        target = os.path.join(self.quarantine_dir, f"{info.block_id.hex()}.{os.getpid()}.{next(self._tmp_seq)}")
        try:
            os.rename(self.block_path(info.block_id), target)
        except FileNotFoundError:
            return None
        log.warning("block %s quarantined to %s", info.block_id.hex(), target)
        return target

    def _drop_entry(self, block_id: bytes) -> BlockInfo | None:
        dropped = self._drop_entries([block_id])
        return dropped[0] if dropped else None

    def _drop_entries(self, block_ids) -> list[BlockInfo]:
        """Remove the final index entries of ``block_ids`` (others are left
        alone) in one transaction, synced; the entries removed."""
        dropped = []
        with self.env.begin(write=True, db=self.db) as txn:
            for block_id in block_ids:
                raw = txn.get(block_id)
                if raw is None:
                    continue
                info = decode_entry(block_id, bytes(raw))
                if info.state == STATE_FINAL:
                    txn.delete(block_id)
                    dropped.append(info)
        if dropped:
            self._sync_index()
        with self._lock:
            self.block_count -= len(dropped)
            self.used_bytes -= sum(info.length for info in dropped)
        return dropped

    # -- capacity -------------------------------------------------------------------

    def capacity(self) -> dict:
        """capacity_bytes, free_bytes (of the data directory's file system),
        used_bytes and block_count (of this store)."""
        st = os.statvfs(self.data_dir)
        with self._lock:
            return {"capacity_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize,
                    "used_bytes": self.used_bytes, "block_count": self.block_count}


class BlockWriter:
    """One block being written; use as a context manager (abort unless
    committed). Not thread-safe: one writer is fed by one thread."""

    def __init__(self, store: BlockStore, info: BlockInfo, tmp_path: str, *, duplicate: bool,
                 stages: "StagePool | None" = None):
        self.store = store
        self.info = info
        self.tmp_path = tmp_path
        self.duplicate = duplicate       # the same block is already stored: verify only
        self.received_bytes = 0
        self._hasher = xxhash.xxh3_128()
        self._partial = bytearray()      # the bytes of the current, incomplete sub-chunk
        self._next_chunk = 0
        self._done = False
        self._file = None if duplicate else FileAppender(tmp_path, stages)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._done:
            self.abort()

    def write(self, data) -> None:
        """Append data; raises EINVAL past the announced length and EBADMSG
        as soon as a completed sub-chunk fails its checksum (then aborts)."""
        assert not self._done
        view = memoryview(data)
        if self.received_bytes + len(view) > self.info.length:
            self.abort()
            raise CisternError(errno.EINVAL, f"more than the announced {self.info.length} bytes "
                                             f"for block {self.info.block_id.hex()}")
        try:
            if self._file is not None:
                self._file.write(view)
            self._hasher.update(view)
            self.received_bytes += len(view)
            self._check_chunks(view)
        except BaseException:
            self.abort()
            raise

    def _check_chunks(self, view: memoryview) -> None:
        size = limits.chunk_size_bytes
        if self._partial:
            take = min(len(view), size - len(self._partial))
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) == size:
                self._check_one(self._partial)
                self._partial = bytearray()
        whole = len(view) - len(view) % size
        for i in range(0, whole, size):
            self._check_one(view[i:i + size])
        self._partial += view[whole:]

    def _check_one(self, chunk) -> None:
        i = self._next_chunk
        if xxhash.xxh3_64_intdigest(chunk) != self.info.chunk_checksums[i]:
            self.store._count_failure()
            raise CisternError(errno.EBADMSG, f"block {self.info.block_id.hex()} sub-chunk {i} "
                                              f"does not match the checksum sent")
        self._next_chunk += 1

    def commit(self) -> BlockInfo:
        """Verify length and whole checksum, make the block durable and
        visible. Raises EINVAL (fewer bytes than announced) or EBADMSG; in
        every failure the block is left absent."""
        assert not self._done
        try:
            if self.received_bytes != self.info.length:
                raise CisternError(errno.EINVAL, f"stream ended after {self.received_bytes} of "
                                                 f"{self.info.length} bytes of block {self.info.block_id.hex()}")
            if self._partial:
                self._check_one(self._partial)
            if self._hasher.digest() != self.info.checksum:
                self.store._count_failure()
                raise CisternError(errno.EBADMSG, f"block {self.info.block_id.hex()} does not match "
                                                  f"the whole-block checksum sent")
            if not self.duplicate:
                self._file.finish(fsync=self.store.sync)
                self._file = None
                self.store._publish(self.info, self.tmp_path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.store._end_write(self.info.block_id, drop_entry=False)
        return self.store.info(self.info.block_id)

    def abort(self) -> None:
        """Drop everything written so far. Idempotent."""
        if self._done:
            return
        self._done = True
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.duplicate:
            _unlink_quietly(self.tmp_path)
        self.store._end_write(self.info.block_id, drop_entry=not self.duplicate)


class StagePool:
    """Page-aligned staging buffers (anonymous mmaps) for O_DIRECT writes,
    reused because a fresh one costs a page fault and a zeroed page per
    4 KiB. At most one is in use per block being written; at most
    ``kept_max`` idle ones are kept. Thread-safe.

    With ``huge_pages`` a buffer is a private mapping advised
    MADV_HUGEPAGE: where the kernel aligns it to a huge page (Linux 6.7
    on aligns anonymous mappings of whole huge pages) and has one free,
    pinning it for O_DIRECT is one page-table entry instead of one per
    4 KiB; elsewhere it is a plain buffer."""

    def __init__(self, stage_bytes: int = limits.direct_io_stage_bytes,
                 kept_max: int = limits.direct_io_stages_kept_max, *, huge_pages: bool = False):
        assert stage_bytes > 0 and stage_bytes % limits.direct_io_align_bytes == 0
        self.stage_bytes = stage_bytes
        self.kept_max = kept_max
        self.huge_pages = huge_pages
        self._idle: list = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if not self.huge_pages:
            return mmap.mmap(-1, self.stage_bytes)
        stage = mmap.mmap(-1, self.stage_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            stage.madvise(mmap.MADV_HUGEPAGE)
        except (AttributeError, OSError):   # no transparent huge pages here: 4 KiB pages
            pass
        return stage

    def give(self, stage: mmap.mmap) -> None:
        with self._lock:
            if len(self._idle) < self.kept_max:
                self._idle.append(stage)
                return
        try:
            stage.close()
        except BufferError:   # a reader still holds a view of it: unmapped when that goes
            pass


class FileAppender:
    """Appends to a new file (created exclusively), then ``finish`` (optional
    fsync) or ``close`` (abandon). With ``stages`` the bytes are gathered in
    an aligned staging buffer and written with O_DIRECT, skipping the page
    cache copy; the unaligned tail goes through the page cache. A file
    system that refuses O_DIRECT (tmpfs, some FUSE) gets plain writes. Not
    thread-safe."""

    def __init__(self, path: str, stages: StagePool | None):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._stages = stages
        self._stage = None
        self._staged = 0
        if stages is not None:
            stage = stages.take()
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self._stage = stage
                return
            except OSError as e:
                stages.give(stage)
                if e.errno != errno.EINVAL:
                    raise
                _unlink_quietly(path)   # some file systems create the file before refusing
        self.fd = os.open(path, flags, 0o644)

    @property
    def direct(self) -> bool:
        return self._stage is not None

    def write(self, view: memoryview) -> None:
        if self._stage is None:
            _write_all(self.fd, view)
            return
        if not self._staged:
            view = self._write_in_place(view)
        size = len(self._stage)
        while view:
            take = min(len(view), size - self._staged)
            self._stage[self._staged:self._staged + take] = view[:take]
            self._staged += take
            view = view[take:]
            if self._staged == size:
                self._drain(size)

    def _write_in_place(self, view: memoryview) -> memoryview:
        """With nothing staged (the file's end is aligned), write the
        aligned part of a page-aligned, writable ``view`` with O_DIRECT
        straight from it, no staging copy; the rest is returned to be
        staged. Anything else (bytes, an unaligned view, a refusal) is
        returned whole. A node's transfer port receives write messages so
        that their data lands page-aligned (``transfer._Scratch``)."""
        align = limits.direct_io_align_bytes
        n = len(view) - len(view) % align
        if not n or _address(view) % align:
            return view
        with view[:n] as out:
            try:
                _write_all(self.fd, out)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                return view      # refused from this memory: staged instead
        return view[n:]

    def _drain(self, n: int) -> None:
        """Write the first n (aligned) staged bytes with O_DIRECT."""
        assert n % limits.direct_io_align_bytes == 0
        with memoryview(self._stage) as whole, whole[:n] as out:
            try:
                _write_all(self.fd, out)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self._buffered()   # O_DIRECT accepted at open, refused at write
                _write_all(self.fd, out)
        self._staged = 0

    def _buffered(self) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)

    def finish(self, *, fsync: bool) -> None:
        """Write what is staged, fsync if asked, close."""
        if self._stage is not None and self._staged:
            aligned = self._staged - self._staged % limits.direct_io_align_bytes
            tail = self._stage[aligned:self._staged]
            if aligned:
                self._drain(aligned)
            if tail:
                self._buffered()
                _write_all(self.fd, memoryview(tail))
        if fsync:
            os.fsync(self.fd)
        self.close()

    def close(self) -> None:
        """Close the file and give the staging buffer back. Idempotent."""
        if self._stage is not None:
            self._stages.give(self._stage)
            self._stage = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _address(view: memoryview) -> int:
    """The address of a writable buffer's first byte; 1 (never aligned) for
    a read-only or empty one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return 1


class RecentReads:
    """The ids of the blocks read lately with the cold-read policy, at most
    ``limits.direct_read_recent_blocks`` (the least recent forgotten first).
    ``first`` tells whether a read is a block's first lately: read it from
    the disk with O_DIRECT (no page cache fill); a repeat goes through the
    page cache, which then keeps the block. Thread-safe."""

    def __init__(self):
        self._ids: collections.OrderedDict = collections.OrderedDict()   # block id -> None, oldest first
        self._lock = threading.Lock()

    def first(self, block_id: bytes) -> bool:
        """Whether this read of ``block_id`` is its first lately (recording it)."""
        with self._lock:
            if block_id in self._ids:
                self._ids.move_to_end(block_id)
                return False
            self._ids[block_id] = None
            if len(self._ids) > limits.direct_read_recent_blocks:
                self._ids.popitem(last=False)
            return True


def read_file_direct(path: str, max_bytes: int) -> memoryview | None:
    """Up to ``max_bytes`` of the file at ``path`` (fewer only at its end),
    read from the disk with O_DIRECT into a fresh page-aligned buffer: a
    view of a bytearray, which it keeps alive. The read neither fills the
    page cache nor copies out of it (the kernel writes back dirty pages of
    the file first, so the bytes are current). None where the file system
    refuses O_DIRECT (EINVAL): read it through the page cache instead.
    OSError as ``os.open`` and ``os.preadv`` raise it otherwise.

    Why: a whole-block read through the page cache costs a page-cache fill
    plus a copy out of it, and on a virtual machine that hands free memory
    back to its host (ours) a fresh page-cache page is also a slow first
    touch; see ARCHITECTURE, "Fresh memory on this host"."""
    align = limits.direct_io_align_bytes
    want = -(-max_bytes // align) * align
    buf = bytearray(want + align)
    skip = -_address(memoryview(buf)) % align
    view = memoryview(buf)[skip:skip + want]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        try:
            return view[:_preadv_direct(fd, view, max_bytes, 0)]
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno == errno.EINVAL:          # O_DIRECT refused, at open or at read
            return None
        raise


def _preadv_direct(direct_fd: int, view: memoryview, n: int, at: int, fallback_fd: int | None = None) -> int:
    """Read up to ``n`` bytes at ``at`` into ``view`` (page-aligned, whole
    pages past ``n``) through ``direct_fd`` (opened with O_DIRECT), until
    ``n`` or the end of the file; the bytes read. Where O_DIRECT is refused
    at read time (EINVAL) the rest comes through ``fallback_fd``, or,
    without one, the EINVAL is raised. OSError as ``os.preadv`` raises it."""
    align = limits.direct_io_align_bytes
    want = -(-n // align) * align       # O_DIRECT reads whole pages (the buffer has them)
    got = 0
    while got < n:
        try:
            more = os.preadv(direct_fd, [view[got:want]], at + got)
        except OSError as e:
            if e.errno != errno.EINVAL or fallback_fd is None:
                raise
            more = os.preadv(fallback_fd, [view[got:n]], at + got)
        got += more
        if more == 0 or got % align:    # the end of the file
            break
    return min(got, n)


class _DirectReader:
    """Reads of one block file for a transient read, with O_DIRECT into a
    staging buffer of ``stages`` (coherent with the page cache: the kernel
    writes back dirty pages of the range first); each piece is a view of
    that buffer, valid until the next piece is asked for. One disk read
    fills the whole buffer (up to the range's end), so a 2 MiB huge-page
    stage serves two 1 MiB messages per read. Pages the cache holds are not
    used: ``RWF_NOWAIT`` would tell, but a buffered read with it still
    starts the page cache's read-ahead on a miss, the cost avoided here.
    Not thread-safe."""

    def __init__(self, fd: int, direct_fd: int, stage: mmap.mmap, stages: StagePool):
        self._fd, self._direct_fd, self._stage, self._stages = fd, direct_fd, stage, stages
        self._view = memoryview(stage)
        self._at, self._got = 0, 0       # the file's bytes [_at, _at + _got) are in the stage

    @classmethod
    def open(cls, path: str, fd: int, stages: StagePool):
        """A reader, or None (read through ``fd``) where the file cannot be
        opened with O_DIRECT (a file system refusing it: EINVAL)."""
        stage = stages.take()
        try:
            direct_fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            stages.give(stage)
            return None
        return cls(fd, direct_fd, stage, stages)

    def pread(self, n: int, at: int, end: int) -> memoryview:
        """Up to n bytes at ``at`` (fewer only at the end of the file), read
        from the disk, when not in the stage already, together with what
        follows up to ``end`` (the read's end) as the stage holds; OSError
        as ``os.pread`` raises it."""
        if not (self._at <= at and at + n <= self._at + self._got):
            want = max(n, min(len(self._view), end - at))
            self._at, self._got = at, _preadv_direct(self._direct_fd, self._view, want, at, fallback_fd=self._fd)
        lo = at - self._at
        return self._view[lo:lo + max(0, min(n, self._got - lo))]

    def close(self) -> None:
        self._view.release()
        os.close(self._direct_fd)
        self._stages.give(self._stage)


def _lock_data_dir(data_dir: str) -> int:
    """An exclusive flock on DATA/LOCK for as long as the store is open: two
    nodes on one data directory would delete each other's temp files."""
    fd = os.open(os.path.join(data_dir, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CisternError(errno.EBUSY, f"data directory {data_dir} is in use by another block store") from None
    return fd


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
