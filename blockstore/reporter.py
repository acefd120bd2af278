"""The node's side of the Nodes protocol (metadata/proto/nodes.proto):
heartbeats, full and incremental block reports, bad-replica reports, and
carrying out the leader's instructions (REPLICATE, DELETE).

Protocol, as the leader expects it (metadata/nodes_service.py):

1. A heartbeat every ``heartbeat_interval_s`` (the leader's reply says how
   often; counted from the last reply). ``NodesClient`` follows
   ``not_leader`` hints, so a leader change costs at most one slow beat.
2. A full block report on start (after the first heartbeat registers the
   node) and whenever a reply says ``send_full_report``; a large one is split
   (first message ``full``, all but the last ``more``).
3. Incremental reports: ``added`` once a block becomes final (the service
   calls ``block_stored`` after Write or Copy), ``removed`` for every
   deletion or quarantine; a lone event goes after ``incremental_delay_s``,
   a stream of them in one report per ``incremental_interval_s`` (so a
   just-committed block may reach the leader that much later: fsck and
   healing count a recorded but unreported replica on a live node as
   present until heartbeats prove it absent, metadata/nodes.py).
4. REPLICATE: the block service's Copy from the source, then report it
   added; on failure the id rides the next heartbeat's ``failed_block_ids``.
5. DELETE: delete every id (missing is fine) and report all of them removed
   (the leader forgets freed blocks only after that confirmation).
6. A corrupt block (scrubber or read) -> ReportBadReplica(reporter = own
   id), then report it removed.

Design: the pure parts are ``PendingReports`` (the incremental events not
yet taken by the leader: the latest event per block wins, a failed send
puts them back), ``split_full_report`` and ``decide`` (instructions ->
``CopyBlock`` / ``DeleteBlocks`` actions, or ids that failed outright).
``Reporter`` is the shell: one thread ("blockd-reporter") talks to the
leader; instructions run on a small pool so a slow Copy never delays a
heartbeat (a node whose heartbeats stall is declared dead).

Race with a full report: pending incremental events are cleared *before*
the store is listed. An event whose hook ran before the clear had already
changed the store, so the listing shows it; an event after the clear is
sent after the full report. Reports are idempotent on the leader (adding a
held block or removing an absent one changes nothing), so a duplicate is
harmless; a lost event is not, and cannot happen this way.

Threads: the hooks (``block_stored``, ``blocks_deleted``, ``block_corrupt``)
are called from gRPC and scrubber threads; they only record under a lock
and wake the reporter thread, never block on the network.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cistern.blockstore import limits
from cistern.core import rpc
from cistern.core.errors import CisternError
from cistern.metadata.nodes_client import NodesClient
from cistern.metadata.proto import nodes_pb2 as npb

log = logging.getLogger(__name__)

reason_length_max_chars = 512      # the leader takes at most 1024 bytes of reason

__all__ = ["CopyBlock", "DeleteBlocks", "PendingReports", "Reporter", "ReporterConf", "decide",
           "split_full_report"]


@dataclasses.dataclass
class ReporterConf:
    """Timings and bounds of the reporter (the leader's reply overrides the
    heartbeat interval)."""

    heartbeat_interval_s: float = 3.0          # until the leader says otherwise
    rpc_timeout_s: float = 5.0                 # one call to the leader, through elections
    report_blocks_per_message_max: int = 20_000  # ~0.5 MiB of (id, length) per message
    incremental_delay_s: float = 0.01          # let a burst of events share one report
    # Incremental reports go at most this often: under a stream of writes a
    # node stores a 4 MiB block every 10-15 ms, and one report per block (a
    # gRPC call here and on the leader) was a quarter of a node's Python
    # and, with one Allocate per block, most of the metads' CPU per MiB
    # written. A lone event still goes after ``incremental_delay_s``.
    # Capped at a quarter of the heartbeat interval (see ``_wait_until``).
    incremental_interval_s: float = 0.25
    instruction_workers_max: int = 4           # Copies and Deletes carried out at once
    copy_timeout_s: float = limits.copy_call_timeout_s
    retry_backoff_max_s: float = 2.0           # after a failed call to the leader

    def validate(self) -> None:
        assert self.heartbeat_interval_s > 0 and self.rpc_timeout_s > 0
        assert self.report_blocks_per_message_max >= 1
        assert self.instruction_workers_max >= 1
        assert 0 <= self.incremental_delay_s < self.heartbeat_interval_s
        assert self.incremental_interval_s >= 0


# -- the pure parts -------------------------------------------------------------------

class PendingReports:
    """Incremental events not yet taken by the leader: block id -> length
    (added) or None (removed). The latest event per block wins, so a block
    quarantined and then copied back is reported added. Not thread-safe: the
    Reporter guards it."""

    def __init__(self):
        self._events: dict[bytes, int | None] = {}

    def __len__(self) -> int:
        return len(self._events)

    def added(self, block_id: bytes, length: int) -> None:
        self._events.pop(block_id, None)     # re-inserted last: events keep their order
        self._events[block_id] = int(length)

    def removed(self, block_id: bytes) -> None:
        self._events.pop(block_id, None)
        self._events[block_id] = None

    def clear(self) -> None:
        self._events.clear()

    def take(self, count_max: int) -> tuple[list[tuple[bytes, int]], list[bytes]]:
        """Remove and return up to count_max events as (added, removed)."""
        taken = []
        for block_id in list(self._events)[:count_max]:
            taken.append((block_id, self._events.pop(block_id)))
        return ([(b, n) for b, n in taken if n is not None], [b for b, n in taken if n is None])

    def restore(self, added, removed) -> None:
        """Put back events whose send failed, unless a newer event for the
        same block arrived meanwhile."""
        for block_id, length in added:
            self._events.setdefault(block_id, length)
        for block_id in removed:
            self._events.setdefault(block_id, None)


@dataclasses.dataclass(frozen=True)
class ReportPart:
    full: bool
    more: bool
    added: tuple


def split_full_report(blocks: list[tuple[bytes, int]], per_message_max: int) -> list[ReportPart]:
    """One full report as messages: the first has full set, all but the last
    more set. An empty store is one empty full message."""
    assert per_message_max >= 1
    chunks = [tuple(blocks[i:i + per_message_max]) for i in range(0, len(blocks), per_message_max)] or [()]
    return [ReportPart(full=i == 0, more=i < len(chunks) - 1, added=chunk) for i, chunk in enumerate(chunks)]


@dataclasses.dataclass(frozen=True)
class CopyBlock:
    """Fetch block_id from source_address into this node."""

    block_id: bytes
    source_address: str


@dataclasses.dataclass(frozen=True)
class DeleteBlocks:
    block_ids: tuple


def decide(instructions) -> tuple[list, list[bytes]]:
    """The leader's instructions as actions, and the block ids of REPLICATE
    instructions that cannot even be tried (reported failed at once).
    Unknown kinds are skipped: a newer leader may send what we do not know."""
    actions, failed = [], []
    for ins in instructions:
        ids = [bytes(b) for b in ins.block_ids if len(b) == limits.block_id_length_bytes]
        if ins.kind == npb.Instruction.REPLICATE:
            if not ins.block_ids:
                continue
            if len(ids) != 1 or len(ins.block_ids) != 1 or not ins.source_address:
                failed.extend(bytes(b) for b in ins.block_ids[:1])
                continue
            actions.append(CopyBlock(ids[0], ins.source_address))
        elif ins.kind == npb.Instruction.DELETE:
            for first in range(0, len(ids), limits.delete_ids_max):
                actions.append(DeleteBlocks(tuple(ids[first:first + limits.delete_ids_max])))
        else:
            log.warning("reporter: unknown instruction kind %d skipped", ins.kind)
    return actions, failed


def capacity_for_heartbeat(capacity: dict) -> tuple[int, int]:
    """(capacity_bytes, used_bytes) for a heartbeat: the leader places by
    capacity - used, which must be the disk's real free space (the disk may
    hold more than our blocks), so capacity is our used bytes plus free."""
    used = int(capacity["used_bytes"])
    return used + int(capacity["free_bytes"]), used


# -- the shell ----------------------------------------------------------------------

class Reporter:
    """See the module docstring. ``store`` and ``block_client`` may be None
    until ``start(node)``, which takes the node's store and peer client."""

    def __init__(self, node_id: str, rpc_address: str, meta_addresses, store=None, block_client=None, *,
                 conf: ReporterConf | None = None, nodes_client: NodesClient | None = None):
        self.node_id = node_id
        self.rpc_address = rpc_address
        self.meta_addresses = list(meta_addresses)
        self.store = store
        self.block_client = block_client
        self.conf = conf or ReporterConf()
        self.conf.validate()
        self._nodes = nodes_client
        self._cond = threading.Condition(threading.Lock())
        self._pending = PendingReports()
        self._bad: list[tuple[bytes, str]] = []      # corrupt replicas to report
        self._failed: list[bytes] = []               # REPLICATEs that failed, for the next heartbeat
        self._need_full = True                       # on start, after the first heartbeat
        self._registered = False
        self._interval_s = self.conf.heartbeat_interval_s
        self._last_incremental = float("-inf")      # monotonic time of the last incremental report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._busy: set[bytes] = set()               # blocks with a Copy under way
        self.stats = {"heartbeats": 0, "full_reports": 0, "incremental_reports": 0, "copies": 0,
                      "copies_failed": 0, "deleted": 0, "bad_replicas": 0, "errors": 0}

    # -- the seam (service.NullReporter's hooks) ---------------------------------------

    def start(self, node=None) -> None:
        if node is not None:
            self.store = self.store or node.store
            self.block_client = self.block_client or node.service.peers
        assert self.store is not None and self.block_client is not None
        if self._nodes is None:
            self._nodes = NodesClient(self.meta_addresses, timeout_s=self.conf.rpc_timeout_s)
        self._pool = ThreadPoolExecutor(self.conf.instruction_workers_max, thread_name_prefix="blockd-instr")
        self._thread = threading.Thread(target=self._run, name="blockd-reporter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop talking to the leader; Copies under way finish or are abandoned. Idempotent."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.conf.rpc_timeout_s + 5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._nodes is not None:
            self._nodes.close()

    def block_stored(self, block_id: bytes, length: int) -> None:
        with self._cond:
            self._pending.added(bytes(block_id), length)
            self._cond.notify_all()

    def blocks_deleted(self, block_ids) -> None:
        with self._cond:
            for block_id in block_ids:
                self._pending.removed(bytes(block_id))
            self._cond.notify_all()

    def block_corrupt(self, block_id: bytes, message: str) -> None:
        with self._cond:
            self._bad.append((bytes(block_id), message[:reason_length_max_chars]))
            self._pending.removed(bytes(block_id))
            self._cond.notify_all()

    # -- the reporter thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = rpc.Backoff(initial_s=0.05, max_s=self.conf.retry_backoff_max_s)
        next_beat = time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + self._interval_s
                if self._registered and self._need_full:
                    self._full_report()
                self._send_bad_replicas()
                self._send_incremental()
                backoff.reset()
            except Exception as e:
                self.stats["errors"] += 1
                if isinstance(e, CisternError):
                    log.info("reporter %s: %s", self.node_id, e)
                else:
                    log.exception("reporter %s: unexpected failure", self.node_id)
                # Pause before anything is retried (a leader that refuses a
                # report must not be hammered), then heartbeat first.
                self._stop.wait(backoff.next_delay_s())
                next_beat = min(next_beat, time.monotonic())
                continue
            self._wait_until(next_beat)

    def _wait_until(self, next_beat: float) -> None:
        # Nothing to send before the heartbeat?
        if not self._wait(lambda: not self._bad and not (self._registered and (self._pending or self._need_full)),
                          next_beat):
            return
        # A burst of writes (a pipeline, a multi-block file) shares one report,
        self._stop.wait(self.conf.incremental_delay_s)
        # and a stream of them one report per incremental_interval_s (at most
        # a quarter of the heartbeat interval: the leader's grace for
        # unreported replicas is three heartbeats). A bad replica, a full
        # report owed or a heartbeat due ends the wait.
        interval = min(self.conf.incremental_interval_s, self._interval_s / 4)
        self._wait(lambda: not self._bad and not self._need_full and self._pending and self._registered,
                   min(self._last_incremental + interval, next_beat))

    def _wait(self, waiting, deadline: float) -> bool:
        """Wait on the condition while ``waiting()`` holds and the reporter
        runs; False when ``deadline`` (monotonic) came first."""
        with self._cond:
            while not self._stop.is_set() and waiting():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _heartbeat(self) -> None:
        capacity = self.store.capacity()
        capacity_bytes, used_bytes = capacity_for_heartbeat(capacity)
        with self._cond:
            failed, self._failed = self._failed, []
            # Counted after the store was read: an event this misses was
            # recorded after this heartbeat's snapshot (see nodes.proto).
            pending = len(self._pending) + int(self._need_full or not self._registered)
        try:
            reply = self._nodes.heartbeat(self.node_id, self.rpc_address, capacity_bytes, used_bytes,
                                          capacity["block_count"], failed, reports_pending=pending)
        except CisternError:
            with self._cond:
                self._failed = failed + self._failed
            raise
        self.stats["heartbeats"] += 1
        self._registered = True
        if reply.heartbeat_interval_s > 0:
            self._interval_s = reply.heartbeat_interval_s
        if reply.send_full_report:
            self._need_full = True
        self._carry_out(reply.instructions)

    def _full_report(self) -> None:
        with self._cond:
            self._pending.clear()   # before listing: see the module docstring
            self._need_full = False
        try:
            parts = split_full_report(self.store.list(), self.conf.report_blocks_per_message_max)
            for part in parts:
                reply = self._nodes.block_report(self.node_id, part.full, part.added, (), more=part.more)
                if reply.send_full_report:
                    raise CisternError(errno.EAGAIN, "the leader asked for the full report again")
        except BaseException:
            self._need_full = True
            raise
        self.stats["full_reports"] += 1
        log.info("reporter %s: full report of %d blocks sent", self.node_id,
                 sum(len(p.added) for p in parts))

    def _send_incremental(self) -> None:
        while self._registered and not self._need_full:
            with self._cond:
                added, removed = self._pending.take(self.conf.report_blocks_per_message_max)
            if not added and not removed:
                return
            try:
                reply = self._nodes.block_report(self.node_id, False, added, removed)
            except BaseException:
                with self._cond:
                    self._pending.restore(added, removed)
                raise
            self.stats["incremental_reports"] += 1
            self._last_incremental = time.monotonic()
            if reply.send_full_report:
                # Not taken: the full report that follows covers these events.
                self._need_full = True
                return

    def _send_bad_replicas(self) -> None:
        while True:
            with self._cond:
                if not self._bad:
                    return
                block_id, reason = self._bad[0]
            self._nodes.report_bad_replica(block_id, self.node_id, self.node_id, reason)
            self.stats["bad_replicas"] += 1
            with self._cond:
                self._bad.pop(0)

    # -- instructions ---------------------------------------------------------------------

    def _carry_out(self, instructions) -> None:
        actions, failed = decide(instructions)
        if failed:
            with self._cond:
                self._failed.extend(failed)
        for action in actions:
            if isinstance(action, CopyBlock):
                with self._cond:
                    if action.block_id in self._busy:
                        continue
                    self._busy.add(action.block_id)
            self._pool.submit(self._run_action, action)

    def _run_action(self, action) -> None:
        try:
            if isinstance(action, CopyBlock):
                self._copy(action)
            else:
                self._delete(action)
        except Exception:
            log.exception("reporter %s: %s failed", self.node_id, action)

    def _copy(self, action: CopyBlock) -> None:
        try:
            result = self.block_client.copy(self.rpc_address, action.block_id, action.source_address,
                                            timeout_s=self.conf.copy_timeout_s)
        except CisternError as e:
            log.warning("reporter %s: copy of %s from %s failed: %s", self.node_id, action.block_id.hex(),
                        action.source_address, e)
            self.stats["copies_failed"] += 1
            with self._cond:
                self._failed.append(action.block_id)
                self._busy.discard(action.block_id)
            return
        self.stats["copies"] += 1
        # The service reports a stored copy itself; one already present it
        # does not, and the leader must hear of it either way.
        self.block_stored(action.block_id, result["length"])
        with self._cond:
            self._busy.discard(action.block_id)

    def _delete(self, action: DeleteBlocks) -> None:
        self.store.delete_many(action.block_ids)
        self.stats["deleted"] += len(action.block_ids)
        # Every id, present or not: the leader waits for this confirmation.
        self.blocks_deleted(action.block_ids)
