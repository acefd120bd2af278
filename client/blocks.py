"""``DataPath``: the client's block I/O shell — placement, pipelined block
uploads, replica choice and failover for reads, bad-replica reports, the
write-lease renewer — over ``metadata.nodes_client.NodesClient`` and
``blockstore.client.BlockClient``. One per ``Client`` connection, shared by
its ``with_creds`` views and every open file.

Contract:

* Thread-safe. Uploads and read-ahead run on a small thread pool
  (``io_threads_max``); every call can also be made from any thread.
* Errors: ``OSError`` with an errno (EIO when no replica could serve a
  block or no pipeline took an upload; ENOSPC when no node has room;
  ETIMEDOUT when the metadata leader does not answer).
* Uploads (``upload``): a block is allocated by the leader and streamed down
  its pipeline; every node that acks has it fsynced. A stream of uploads
  takes its placements from the leader several at a time (``Placements``:
  1, 2, 4, ... up to ``allocate_ahead_blocks`` per Allocate while they are
  used up, each used within ``allocate_ahead_max_age_s`` of its Allocate or
  dropped; any failed upload drops them all). When a target fails,
  the block is allocated again excluding the failed nodes and sent again
  (``upload_attempts_max`` in all); if the last attempt reaches only some of
  its targets, the block is accepted with the nodes that acked (at least
  one) and only those are recorded: the leader's healing monitor brings it
  back to its replication factor. Nothing uploaded is visible to readers
  until the file's COMMIT_WRITE; an upload never committed is an orphan the
  leader deletes after its grace period.
* Reads (``read``): replicas are tried in ``order_replicas`` order — this
  host's node first (``node_id``, default ``$CISTERN_NODE_ID``), then the
  others with the fewest of this connection's reads in flight, rotated
  among equals, so read-ahead keeps several nodes' disks and CPUs busy at
  once and concurrent readers spread out. Bytes are verified per
  64 KiB sub-chunk by ``BlockClient`` (and whole blocks against the layout's
  xxh3-128); the node is asked not to check them too (``node_verifies``).
  Any error moves on to the next replica; a replica that answered
  with bad or missing data (EBADMSG, EIO, ENOENT) is reported to the leader
  as bad (in the background); an unreachable node is not reported (the
  leader notices dead nodes by their heartbeats). When every replica fails,
  the node table is refreshed once and the replicas tried again.
* Short-circuit local reads (HDFS's): when a node on this host holds a
  replica and its data directory is known (``local_data_dir`` of
  ``node_id``, default ``$CISTERN_NODE_DATA``, and ``local_data_dirs``, e.g.
  the loopback nodes of a local cluster's cluster.json), a whole-block read opens the block file directly
  (a block's first read lately with O_DIRECT, a repeat through the page
  cache: ``_read_local``)
  and checks it against the layout's xxh3-128; a missing or mismatching file
  falls back to the node's block service (whose copy, if corrupt, then
  fails the per-sub-chunk checks and is reported). Ranged reads always go
  through the service, and each 64 KiB sub-chunk is verified.
* Leases: ``hold_lease``/``drop_lease`` keep the set of files this
  connection holds write leases on (one writer per file per connection:
  ``Client.open`` refuses a second with EBUSY, as another client would be); while it is not empty a renewer thread sends one
  RENEW_LEASES for the connection's holder id every
  ``lease_renew_interval_s`` (leases are renewed per holder, as HDFS's lease
  renewer does).
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from cistern.core.errors import CisternError, to_oserror
from cistern.metadata import limits as meta_limits

log = logging.getLogger(__name__)

__all__ = ["DataPath", "Placements", "order_replicas", "new_holder_id"]

MiB = 1 << 20
block_size_default_bytes = 4 * MiB      # blockstore's default, when no node says otherwise
io_threads_max = 8                      # uploads and read-ahead in flight, per connection
upload_attempts_max = 3                 # allocations tried for one block before accepting fewer replicas
node_table_refresh_min_s = 1.0          # the live node table is fetched at most this often on a miss
report_errnos = frozenset((errno.EBADMSG, errno.EIO, errno.ENOENT))   # the replica's data is bad
# Placements one Allocate fetches at most for a stream of uploads, instead
# of one call per block (with the nodes' per-block reports, most of the
# metads' CPU per MiB written); the leader's reservations for unused ones
# lapse at the nodes' next heartbeat.
allocate_ahead_blocks = 8
allocate_ahead_max_age_s = 1.0          # a placement fetched ahead is used within this or dropped
NODE_ENV_VAR = "CISTERN_NODE_ID"
NODE_DATA_ENV_VAR = "CISTERN_NODE_DATA"


def new_holder_id() -> bytes:
    """A lease holder id unique to one client connection (host, pid, random)."""
    name = f"{socket.gethostname()[:100]}:{os.getpid()}:{os.urandom(8).hex()}"
    return name.encode()[:meta_limits.lease_holder_length_max_bytes]


def order_replicas(node_ids, local_node: str | None, turn: int, busy: dict | None = None) -> list:
    """The order to try a block's replicas in: the local node first, then
    the others with the fewest of this client's reads in flight (``busy``:
    node id -> count) first, ties starting at ``turn`` (mod their count), so
    concurrent reads (read-ahead) land on different nodes and successive
    ones rotate over the replicas. Pure."""
    ids = list(node_ids)
    first = [n for n in ids if local_node is not None and n == local_node]
    rest = [n for n in ids if n not in first]
    if rest:
        k = turn % len(rest)
        rest = rest[k:] + rest[:k]
        if busy:
            rest.sort(key=lambda n: busy.get(n, 0))   # stable: the rotation orders the ties
    return first + rest


class Placements:
    """Block placements ``(block_id, targets)`` fetched ahead, per key (the
    replication and block size asked for). ``take`` returns a fresh one or
    None (a miss); then ``count`` says how many the Allocate should ask for:
    1 for a key not fetched within ``max_age_s``, else twice the last
    count (up to ``ahead_max``) when the last batch was used up, and 1
    again once placements lapse unused. ``fetched`` queues what the
    Allocate brought beyond the one used now. Pure (the caller passes the
    time and holds the lock)."""

    def __init__(self, ahead_max: int = allocate_ahead_blocks, max_age_s: float = allocate_ahead_max_age_s):
        self.ahead_max, self.max_age_s = ahead_max, max_age_s
        self._queues: dict = {}        # key -> deque of (block_id, targets, fetched at)
        self._last: dict = {}          # key -> (count asked for, when) of its last Allocate

    def take(self, key, now: float):
        queue = self._queues.get(key)
        while queue and now - queue[0][2] > self.max_age_s:
            queue.popleft()
            self._last.pop(key, None)   # lapsed unused: start again at one
        return queue.popleft()[:2] if queue else None

    def count(self, key, now: float) -> int:
        last = self._last.get(key)
        if last is None or now - last[1] > self.max_age_s:
            return 1
        return min(self.ahead_max, 2 * last[0])

    def fetched(self, key, count: int, placements, now: float) -> None:
        """An Allocate asked for ``count``; ``placements`` (the ones not
        used at once) are queued."""
        self._last[key] = (count, now)
        if placements:
            self._queues.setdefault(key, collections.deque()).extend((b, t, now) for b, t in placements)

    def clear(self) -> None:
        """Forget every placement (a node failed: they may name it)."""
        self._queues.clear()
        self._last.clear()


def best_attempt(attempts: list, broken) -> list:
    """The layout entry to commit among a block's upload attempts (oldest
    first, each ``[block_id, length, checksum, acked node ids]``): the one
    with the most acks from nodes not since found broken, the latest on a
    tie. A node that acked one attempt and failed a later one is likely
    dead: an earlier attempt acked by it alone must not win over a later
    one on a live node. Pure."""
    return max(reversed(attempts), key=lambda a: sum(n not in broken for n in a[3]))


class DataPath:
    def __init__(self, meta_addresses, *, renew=None, block_size_bytes: int | None = None,
                 node_id: str | None = None, timeout_s: float = 30.0, nodes=None, blocks=None,
                 local_data_dir: str | None = None, local_data_dirs: dict | None = None):
        """``renew(holder)`` sends RENEW_LEASES (the Client passes a function
        over its metadata client). ``nodes``/``blocks`` replace the
        NodesClient/BlockClient (tests)."""
        self.meta_addresses = list(meta_addresses or ())
        self.holder = new_holder_id()
        self.node_id = node_id if node_id is not None else (os.environ.get(NODE_ENV_VAR) or None)
        self.local_data_dir = local_data_dir or os.environ.get(NODE_DATA_ENV_VAR) or None
        self._local_dirs = dict(local_data_dirs or {})        # node id -> data dir on this host
        if self.node_id and self.local_data_dir:
            self._local_dirs[self.node_id] = self.local_data_dir
        self._read_lately = None            # RecentReads of the local block files
        if self._local_dirs:
            from cistern.blockstore.store import RecentReads

            self._read_lately = RecentReads()
        self.timeout_s = timeout_s
        self._block_size = block_size_bytes
        self._renew = renew
        self._nodes = nodes
        self._blocks = blocks
        self._lock = threading.Lock()
        self._addresses: dict[str, str] = {}
        self._table_fetched = 0.0
        self._turn = itertools.count()
        self._busy: dict[str, int] = {}     # node id -> this connection's reads from it in flight
        self._placements = Placements()     # allocated ahead, guarded by _lock
        self._pool: ThreadPoolExecutor | None = None
        self._leases: set = set()
        self.lease_renew_interval_s = float(meta_limits.lease_renew_interval_s)
        self._lease_wake = threading.Event()
        self._renewer: threading.Thread | None = None
        self._closed = False

    # -- lazily made clients ------------------------------------------------

    @property
    def nodes(self):
        with self._lock:
            if self._nodes is None:
                from cistern.metadata.nodes_client import NodesClient

                if not self.meta_addresses:
                    raise to_oserror(errno.ENOSYS, "this client has no metadata addresses for the data path")
                self._nodes = NodesClient(self.meta_addresses, timeout_s=self.timeout_s)
            return self._nodes

    @property
    def blocks(self):
        with self._lock:
            if self._blocks is None:
                from cistern.blockstore.client import BlockClient

                self._blocks = BlockClient()
            return self._blocks

    @property
    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise to_oserror(errno.ESHUTDOWN, "client is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(io_threads_max, thread_name_prefix="cistern-data")
            return self._pool

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            nodes, blocks = self._nodes, self._blocks
            self._leases.clear()
        self._lease_wake.set()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for c in (nodes, blocks):
            if c is not None:
                c.close()

    # -- node table and block size ------------------------------------------

    def block_size_bytes(self) -> int:
        """The size of new blocks: as configured, else the smallest block
        size the live nodes report (a node refuses longer blocks), else 4 MiB."""
        if self._block_size is None:
            sizes = []
            try:
                entries = list(self.nodes.nodes().nodes)
            except CisternError as e:
                log.debug("block size discovery failed: %s", e)
                entries = []
            for entry in entries:
                self._learn(entry.node_id, entry.address)
                try:
                    sizes.append(int(self.blocks.stat(entry.address, timeout_s=5.0).get("block_size_bytes", 0)))
                except CisternError as e:    # a node starting or going: the others answer
                    log.debug("block size from %s: %s", entry.node_id, e)
            sizes = [s for s in sizes if s > 0]
            if not sizes:
                return block_size_default_bytes    # no node to ask yet: ask again next time
            self._block_size = min(sizes)
        return self._block_size

    def _learn(self, node_id: str, address: str) -> None:
        with self._lock:
            self._addresses[node_id] = address

    def refresh_nodes(self, force: bool = False) -> dict:
        """The live node table {node_id: address} (fetched at most every
        ``node_table_refresh_min_s`` unless forced)."""
        now = time.monotonic()
        if force or now - self._table_fetched >= node_table_refresh_min_s:
            self._table_fetched = now
            try:
                reply = self.nodes.nodes()
            except CisternError as e:
                raise to_oserror(e.errno, e.message) from None
            table = {entry.node_id: entry.address for entry in reply.nodes}
            with self._lock:
                self._addresses.update(table)
        with self._lock:
            return dict(self._addresses)

    def address(self, node_id: str) -> str | None:
        with self._lock:
            found = self._addresses.get(node_id)
        if found is None:
            found = self.refresh_nodes().get(node_id)
        return found

    # -- uploads ---------------------------------------------------------------

    def submit_upload(self, data: bytes, replication: int | None) -> Future:
        return self.pool.submit(self.upload, data, replication)

    def upload(self, data: bytes, replication: int | None) -> list:
        """Store ``data`` as a new block; its layout entry
        ``[block_id, length, xxh3-128, [node ids that acked]]``."""
        from cistern.blockstore.store import block_checksum

        checksum = block_checksum(data)
        exclude: set = set()
        reasons: list = []
        attempts: list = []     # layout entries of attempts some node acked, oldest first
        for _ in range(upload_attempts_max):
            try:
                block_id, targets = self._allocate(replication, exclude)
            except OSError:
                if not exclude:
                    raise
                break   # no node left beyond the failed ones: keep what acked, if anything did
            results = self.blocks.write_block_results([a for _, a in targets], block_id, data, checksum=checksum)
            acked = [node_id for (node_id, _), r in zip(targets, results) if r.ok]
            # Nodes after a failed one were never reached (ECANCELED): they may be fine.
            failed = [node_id for (node_id, _), r in zip(targets, results) if not r.ok]
            broken = [node_id for (node_id, _), r in zip(targets, results)
                      if not r.ok and r.errno != errno.ECANCELED]
            if acked:
                attempts.append([block_id, len(data), checksum, acked])
            if not failed:
                break
            with self._lock:
                self._placements.clear()
            log.info("block %s: %s failed (%s); allocating again without them", block_id.hex(), broken,
                     "; ".join(r.message for r in results if not r.ok)[:300])
            exclude.update(broken)
            reasons.extend(f"{t[0]}: {r.message}" for t, r in zip(targets, results) if not r.ok
                           and r.errno != errno.ECANCELED)
        if not attempts:
            raise to_oserror(errno.EIO, "no storage node took a block: " + "; ".join(reasons)[:400])
        return best_attempt(attempts, exclude)

    def _allocate(self, replication, exclude):
        """(block_id, targets) for one upload: fetched ahead unless some
        nodes are to be excluded (a retry)."""
        size = self.block_size_bytes()
        key = (replication or 0, size)
        count = 1
        if not exclude:
            with self._lock:
                now = time.monotonic()
                taken = self._placements.take(key, now)
                count = self._placements.count(key, now)
            if taken is not None:
                return taken
        try:
            allocated = self.nodes.allocate(count, replication=replication or 0, writer_node=self.node_id,
                                            exclude=sorted(exclude), block_size_bytes=size)
        except CisternError as e:
            raise to_oserror(e.errno, f"allocate: {e.message}") from None
        allocated = [(block_id, targets) for block_id, targets in allocated if targets]
        if not allocated:
            raise to_oserror(errno.ENOSPC, "allocate: no live storage node")
        for _, targets in allocated:
            for node_id, address in targets:
                self._learn(node_id, address)
        if not exclude:
            with self._lock:
                self._placements.fetched(key, count, allocated[1:], time.monotonic())
        return allocated[0]

    # -- reads -------------------------------------------------------------------

    def submit_read(self, block) -> Future:
        """A Future of ``read_whole(block)`` (read-ahead)."""
        return self.pool.submit(self.read_whole, block)

    def read(self, block, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes [offset, offset+length) of a layout block (the whole block
        when length is None), from the first replica that serves them
        verified."""
        data = self._read(block, offset, length)
        return data if isinstance(data, bytes) else bytes(data)

    def read_whole(self, block):
        """A whole layout block, verified, as sliceable bytes (bytes, or a
        ``BlockPieces`` that joins nothing until sliced)."""
        return self._read(block, 0, None)

    def _read(self, block, offset: int, length: int | None):
        block_id, block_length, checksum, node_ids = block
        failures = []
        if length is None and checksum and self._local_dirs:
            for node_id in node_ids:
                data_dir = self._local_dirs.get(node_id)
                if data_dir is not None:
                    data = self._read_local(data_dir, block_id, block_length, checksum)
                    if data is not None:
                        return data
        for attempt in range(2):
            with self._lock:
                order = order_replicas(node_ids, self.node_id, next(self._turn), self._busy)
            for node_id in order:
                address = self.address(node_id)
                if address is None:
                    failures.append(f"{node_id}: not live")
                    continue
                with self._lock:
                    self._busy[node_id] = self._busy.get(node_id, 0) + 1
                try:
                    return self._read_one(address, block_id, block_length, checksum, offset, length)
                except CisternError as e:
                    failures.append(f"{node_id}: {e.message}")
                    if e.errno in report_errnos:
                        self._report_bad(block_id, node_id, e.message)
                finally:
                    with self._lock:
                        self._busy[node_id] -= 1
            if attempt == 0:
                try:
                    self.refresh_nodes(force=True)
                except OSError:
                    break
        raise to_oserror(errno.EIO, f"block {bytes(block_id).hex()}: no replica could be read: "
                                    + "; ".join(failures)[:500])

    def _read_local(self, data_dir: str, block_id: bytes, block_length: int, checksum: bytes):
        """The block straight from a local node's block file (bytes, or a
        ``BlockPieces`` of one aligned buffer), or None. As the node reads
        for a stream (``BlockStore.read_chunks``), a block's first read
        lately comes from the disk with O_DIRECT and a repeat through the
        page cache, which then keeps it: one pass over a large file does not
        fill the page cache with a second copy of what the reader (the
        mount's page cache, a task's buffer) already holds. Measured through
        the mount: see ARCHITECTURE, "Short-circuit local reads"."""
        from cistern.blockstore.client import BlockPieces
        from cistern.blockstore.store import block_checksum, block_file, read_file_direct

        path = block_file(data_dir, block_id)
        try:
            data = read_file_direct(path, block_length + 1) if self._read_lately.first(block_id) else None
            if data is None:
                with open(path, "rb") as f:
                    data = f.read(block_length + 1)
        except OSError:
            return None
        if len(data) != block_length or block_checksum(data) != checksum:
            return None
        return data if type(data) is bytes else BlockPieces([data])

    def _read_one(self, address, block_id, block_length, checksum, offset, length) -> bytes:
        # The node need not check what it sends: every sub-chunk is checked
        # here, and a replica failing that is reported (_read).
        if length is None:
            data = self.blocks.read_pieces(address, block_id, checksum=checksum or None, node_verifies=False)[0]
            if len(data) != block_length:
                raise CisternError(errno.EBADMSG, f"{address}: block is {len(data)} bytes, not {block_length}")
            return data
        data = self.blocks.read_block(address, block_id, offset, length, node_verifies=False)
        if len(data) != length:
            raise CisternError(errno.EBADMSG, f"{address}: short read ({len(data)} of {length} bytes)")
        return data

    def _report_bad(self, block_id: bytes, node_id: str, reason: str) -> None:
        def report():
            try:
                self.nodes.report_bad_replica(block_id, node_id, self.holder.decode(errors="replace"), reason[:500])
            except Exception as e:   # a report is advice; the scrubber finds it anyway
                log.info("reporting bad replica %s on %s failed: %s", block_id.hex(), node_id, e)

        try:
            self.pool.submit(report)
        except (OSError, RuntimeError):
            pass

    # -- leases ------------------------------------------------------------------

    def hold_lease(self, key) -> bool:
        """Count a write lease (keyed by inode) as held; False when this
        connection holds it already (leases belong to the holder id, so a
        second writer on one connection would share the first one's lease)."""
        with self._lock:
            if key in self._leases:
                return False
            self._leases.add(key)
            start = self._renewer is None or not self._renewer.is_alive()
            if start:
                self._renewer = threading.Thread(target=self._renew_loop, name="cistern-lease-renewer",
                                                 daemon=True)
        if start:
            self._renewer.start()
        return True

    def drop_lease(self, key) -> None:
        with self._lock:
            self._leases.discard(key)

    def leases_held(self) -> int:
        with self._lock:
            return len(self._leases)

    def _renew_loop(self) -> None:
        while True:
            self._lease_wake.wait(self.lease_renew_interval_s)
            with self._lock:
                if not self._leases or self._closed:
                    self._renewer = None
                    return
            try:
                if self._renew is not None:
                    self._renew(self.holder)
            except Exception as e:    # the next turn tries again; the TTL is 6 turns long
                log.warning("lease renewal failed: %s", e)
