"""The storage nodes' gRPC face on the metadata leader, and the leader-side
healing monitor (the shell around nodes.py, placement.py, replication.py
and fsck.py; proto: metadata/proto/nodes.proto).

Wiring: ``add_to_server(grpc_server, replica, namespace_or_store, registry)``
registers the ``Nodes`` servicer on the metadata daemon's gRPC server and
starts the monitor thread; the returned ``NodesService`` has ``stop()``,
which the daemon calls before stopping the replica. ``registry`` is the
daemon's Prometheus ``CollectorRegistry`` (None: a private one).

Leadership: every RPC answers ``not_leader`` (with the leader's address) on
a replica that does not lead; nothing is recorded then. The node registry
is leader memory: when this replica becomes leader it starts an empty one,
and every node is told ``send_full_report`` on its first contact, so the
registry is rebuilt from heartbeats and full reports (nodes must send a
full report whenever a reply asks for one, including after switching to a
new leader).

The monitor, every ``monitor_interval_s`` on the leader only: ``tick``
(NodeLost -> NODE_LOST committed page by page), one FSCK_SCAN page of the
namespace (wrapping around) -> ``plan_files`` -> instructions queued for
heartbeat replies and UPDATE_REPLICAS committed, one FREED_SCAN page ->
deletes and CLEAR_FREED, orphan candidates -> BLOCK_OWNERS -> deletes.
Raft writes go through ``replica.submit_write`` under this service's own
client id (a fresh random id per service, increasing seq), so a write is
applied at most once; a failed write (not leader, timeout) is dropped and
the next pass plans again from the new state (every op is idempotent).

Threads: gRPC workers run the RPCs; one monitor thread. The registry is
guarded by one lock, held only for in-memory work (never across a Raft
round trip).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
import threading
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from cistern.core import config
from cistern.core.errors import CisternError, grpc_status_for
from cistern.metadata import fsck as fsck_mod
from cistern.metadata import limits, model
from cistern.metadata import replication as rep
from cistern.metadata.model import ROOT_CRED, Op
from cistern.metadata.nodes import Delete, NodeLost, NodeRegistry, Replicate
from cistern.metadata.placement import choose_targets
from cistern.metadata.proto import nodes_pb2 as pb
from cistern.metadata.proto import nodes_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

__all__ = ["NodesConf", "NodesService", "add_to_server"]

node_id_length_max_bytes = 255
address_length_max_bytes = 255
reason_length_max_bytes = 1024
block_size_default_bytes = 4 << 20      # the blockstore's default (metadata may not import it)
block_size_max_bytes = 64 << 20
raft_write_timeout_s = 10.0
fsck_walk_entries_max = 1_000_000       # directory entries one Fsck(path) walks at most
fsck_reads_in_flight_max = 256


@dataclasses.dataclass
class NodesConf:
    """Timings and bounds (defaults from limits.py); tests shorten them."""

    heartbeat_interval_s: float = limits.heartbeat_interval_s
    node_dead_after_s: float = limits.node_dead_after_s
    orphan_grace_s: float = limits.orphan_grace_s
    replication_timeout_s: float = limits.replication_timeout_s
    monitor_interval_s: float = limits.monitor_interval_s
    replication_default: int = limits.replication_default
    replications_per_node_max: int = limits.replications_per_node_max
    scan_files_per_pass: int = limits.fsck_scan_files_max
    freed_per_pass: int = limits.freed_scan_max
    orphan_checks_per_pass: int = limits.orphan_checks_per_pass_max
    block_size_bytes: int = block_size_default_bytes
    # A new leader trims and deletes nothing until nodes had this long to
    # heartbeat to it (None: 2 heartbeat intervals).
    quiet_s: float | None = None
    # A layout's replica that its node has not reported counts as present
    # this long (None: 3 heartbeat intervals): its report follows the write.
    report_grace_s: float | None = None

    @classmethod
    def from_env(cls, environ=os.environ) -> "NodesConf":
        """Defaults overridden by ``CISTERN_NODES_<FIELD>`` variables (e.g.
        CISTERN_NODES_NODE_DEAD_AFTER_S=2): the metad process takes no
        flags for these, and real-process tests shorten them this way."""
        return config.from_env(cls, "CISTERN_NODES_", environ)

    def validate(self) -> None:
        assert self.heartbeat_interval_s * 3 < self.node_dead_after_s
        assert 0 < self.monitor_interval_s < self.node_dead_after_s
        assert 1 <= self.replication_default <= limits.block_replicas_max
        assert 1 <= self.scan_files_per_pass <= limits.fsck_scan_files_max
        assert 1 <= self.freed_per_pass <= limits.freed_scan_max
        assert 1 <= self.orphan_checks_per_pass <= limits.block_owners_max
        assert 0 < self.block_size_bytes <= block_size_max_bytes


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.live = Gauge("cistern_nodes_live", "storage nodes heartbeating to this leader", registry=registry)
        self.under = Gauge("cistern_blocks_under_replicated", "blocks below their replication factor "
                           "(last full pass)", registry=registry)
        self.missing = Gauge("cistern_blocks_missing", "blocks with no good replica (last full pass)",
                             registry=registry)
        self.pending = Gauge("cistern_replications_pending", "replications in flight", registry=registry)
        self.orphans = Counter("cistern_orphan_blocks_deleted", "orphan replicas told to delete",
                               registry=registry)
        self.replications = Counter("cistern_replications_scheduled", "Replicate instructions queued",
                                    registry=registry)
        self.lost = Counter("cistern_nodes_lost", "nodes declared dead", registry=registry)


def _abort(context, err: int, message: str):
    context.abort(grpc_status_for(err), message)


def _check_text(context, value: str, what: str, max_bytes: int, *, empty_ok: bool = False) -> str:
    if (not value and not empty_ok) or len(value.encode()) > max_bytes:
        _abort(context, errno.EINVAL, f"bad {what}")
    return value


def _check_block_id(context, block_id: bytes) -> bytes:
    if len(block_id) != limits.block_id_length_bytes:
        _abort(context, errno.EINVAL, f"a block id is {limits.block_id_length_bytes} bytes, not {len(block_id)}")
    return block_id


def _instruction_pb(instruction) -> pb.Instruction:
    if isinstance(instruction, Replicate):
        return pb.Instruction(kind=pb.Instruction.REPLICATE, block_ids=[instruction.block_id],
                              source_node=instruction.source_node, source_address=instruction.source_address)
    assert isinstance(instruction, Delete)
    return pb.Instruction(kind=pb.Instruction.DELETE, block_ids=list(instruction.block_ids))


class NodesService(pb_grpc.NodesServicer):
    """See the module docstring."""

    def __init__(self, replica, *, conf: NodesConf | None = None, clock=time.monotonic,
                 registry: CollectorRegistry | None = None, client_id: bytes | None = None,
                 urandom=os.urandom):
        self._replica = replica
        self.conf = conf or NodesConf()
        self.conf.validate()
        self._clock = clock
        self._urandom = urandom
        self._client_id = client_id or urandom(16)
        self._seq = 0
        self._lock = threading.Lock()
        self._registry = self._new_registry()
        self._generation = 0           # bumped whenever this replica (re)gains leadership
        self._leading = False
        self._scan_after = 0
        self._freed_after = None
        self._round = {"under": 0, "missing": 0}
        self.stats = {"under_replicated": 0, "missing": 0, "orphans_deleted": 0, "replications": 0,
                      "nodes_lost": 0, "passes": 0}
        self._m = _Metrics(registry if registry is not None else CollectorRegistry())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._monitor_loop, name="metad-nodes-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the monitor (the gRPC server is the caller's). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=raft_write_timeout_s + 5)
            self._thread = None

    # -- leadership -----------------------------------------------------------------

    def _new_registry(self) -> NodeRegistry:
        quiet_s = 2 * self.conf.heartbeat_interval_s if self.conf.quiet_s is None else self.conf.quiet_s
        return NodeRegistry(dead_after_s=self.conf.node_dead_after_s, quiet_until=self._clock() + quiet_s)

    def _lead(self) -> bool:
        """Under the lock: True when leading; a fresh registry on gaining it."""
        leading = self._replica.is_leader()
        if leading and not self._leading:
            self._registry = self._new_registry()
            self._generation += 1
            self._scan_after, self._freed_after = 0, None
            self._round = {"under": 0, "missing": 0}
            log.info("nodes: leading; rebuilding the node registry from heartbeats and full reports")
        self._leading = leading
        return leading

    def _not_leader(self, reply_type):
        return reply_type(not_leader=True, leader=self._replica.leader_rpc_address())

    # -- RPCs ---------------------------------------------------------------------

    def Heartbeat(self, request, context):
        node_id = _check_text(context, request.node_id, "node_id", node_id_length_max_bytes)
        address = _check_text(context, request.rpc_address, "rpc_address", address_length_max_bytes)
        failed = [_check_block_id(context, b) for b in request.failed_block_ids]
        with self._lock:
            if not self._lead():
                return self._not_leader(pb.HeartbeatReply)
            instructions = self._registry.heartbeat(node_id, address, request.capacity_bytes, request.used_bytes,
                                                    request.block_count, self._clock(), failed,
                                                    reports_pending=request.reports_pending)
            full = self._registry.needs_full_report(node_id)
            self._m.live.set(len(self._registry.live_nodes()))
        return pb.HeartbeatReply(instructions=[_instruction_pb(i) for i in instructions], send_full_report=full,
                                 heartbeat_interval_s=self.conf.heartbeat_interval_s)

    def BlockReport(self, request, context):
        node_id = _check_text(context, request.node_id, "node_id", node_id_length_max_bytes)
        added = [(_check_block_id(context, b.block_id), b.length) for b in request.added]
        removed = [_check_block_id(context, b) for b in request.removed]
        with self._lock:
            if not self._lead():
                return self._not_leader(pb.BlockReportReply)
            taken = self._registry.block_report(node_id, request.full, added, removed, self._clock(),
                                                more=request.more)
        return pb.BlockReportReply(send_full_report=not taken)

    def Allocate(self, request, context):
        count = request.count or 1
        if count > limits.allocate_blocks_max:
            _abort(context, errno.EINVAL, f"count {count} exceeds {limits.allocate_blocks_max}")
        replication = min(request.replication or self.conf.replication_default, limits.block_replicas_max)
        size = request.block_size_bytes or self.conf.block_size_bytes
        if size > block_size_max_bytes:
            _abort(context, errno.EINVAL, f"block size {size} exceeds {block_size_max_bytes}")
        exclude = [_check_text(context, n, "exclude", node_id_length_max_bytes) for n in request.exclude]
        blocks = []
        with self._lock:
            if not self._lead():
                return self._not_leader(pb.AllocateReply)
            for _ in range(count):
                block_id = self._urandom(limits.block_id_length_bytes)
                targets = choose_targets(self._registry.candidates(), replication, writer_node=request.writer_node
                                         or None, exclude=exclude, block_size=size, seed=block_id)
                if not targets:
                    break
                for node_id in targets:
                    self._registry.reserve(node_id, size)
                blocks.append(pb.AllocatedBlock(block_id=block_id, targets=[
                    pb.Target(node_id=n, address=self._registry.address(n)) for n in targets]))
            settled = self._registry.settled()
        if not blocks and not settled:
            # A new leader knows no node until each heartbeats it: "none has
            # room" would be final to a writer, so say "not yet" (EAGAIN is
            # UNAVAILABLE, which clients retry until their deadline).
            _abort(context, errno.EAGAIN, "the leader is still hearing from the storage nodes; retry")
        if not blocks:
            _abort(context, errno.ENOSPC, "no live storage node has room for the block")
        return pb.AllocateReply(blocks=blocks)

    def ReportBadReplica(self, request, context):
        block_id = _check_block_id(context, request.block_id)
        node_id = _check_text(context, request.node_id, "node_id", node_id_length_max_bytes)
        _check_text(context, request.reason, "reason", reason_length_max_bytes, empty_ok=True)
        with self._lock:
            if not self._lead():
                return self._not_leader(pb.BadReplicaReply)
            self._registry.report_corrupt(block_id, node_id)
        log.warning("nodes: replica of %s on %s reported bad by %s: %s", block_id.hex(), node_id,
                    request.reporter or "?", request.reason)
        return pb.BadReplicaReply()

    def Nodes(self, request, context):
        with self._lock:
            if not self._lead():
                return self._not_leader(pb.NodesReply)
            now = self._clock()
            nodes = [pb.NodeEntry(node_id=n.node_id, address=n.rpc_address, capacity_bytes=n.capacity_bytes,
                                  used_bytes=n.used_bytes, block_count=n.block_count,
                                  last_heartbeat_s_ago=max(0.0, now - n.last_seen), full_report=n.full_report)
                     for n in self._registry.live_nodes()]
            return pb.NodesReply(nodes=nodes, under_replicated_blocks=self.stats["under_replicated"],
                                 missing_blocks=self.stats["missing"],
                                 pending_replications=self._registry.pending_replications(),
                                 settled=self._registry.settled())

    def Fsck(self, request, context):
        with self._lock:
            if not self._lead():
                return self._not_leader(pb.FsckReply)
        try:
            files, paths = self._fsck_files(request.path)
        except CisternError as e:
            _abort(context, e.errno, e.message)
        with self._lock:
            result = fsck_mod.check(files, self._registry, replication_default=self.conf.replication_default)
        reports = result.files[:request.files_max] if request.files_max else result.files
        return pb.FsckReply(files=[self._file_report_pb(r, paths.get(r.ino, "")) for r in reports],
                            at_risk=result.at_risk, complete=result.complete,
                            summary_json=json.dumps(result.summary, sort_keys=True))

    @staticmethod
    def _file_report_pb(report, path: str) -> pb.FileReport:
        return pb.FileReport(ino=report.ino, path=path, replication=report.replication, blocks=report.blocks,
                             at_risk=report.at_risk, problems=[
                                 pb.BlockProblem(index=p.index, block_id=p.block_id, states=list(p.states),
                                                 good_nodes=list(p.good_nodes), corrupt_nodes=list(p.corrupt_nodes),
                                                 recorded_nodes=[str(n) for n in p.recorded_nodes])
                                 for p in report.problems])

    # -- reading the namespace ---------------------------------------------------

    def _read(self, code: int, *args):
        return self._replica.submit_read(code, model.encode_args(ROOT_CRED, *args)).result(raft_write_timeout_s)

    def _scan_all(self) -> list:
        files, after = [], 0
        while True:
            page, done = self._read(Op.FSCK_SCAN, after, limits.fsck_scan_files_max)
            files.extend(rep.files_from_scan(page))
            if done or not page:
                return files
            after = page[-1][0]

    def _fsck_files(self, path: str):
        """FileBlocks to check for ``path`` and {ino: path} where known."""
        if path in ("", "/"):
            return self._scan_all(), {}
        raw = path.encode()
        attr = model.Attr(*self._read(Op.GETATTR, raw, True))
        if stat.S_ISDIR(attr.mode):
            named = self._walk(raw.rstrip(b"/"), attr.ino)
        elif stat.S_ISREG(attr.mode):
            named = [(path, attr.ino)]
        else:
            named = []
        return self._files_by_ino(named), {ino: p for p, ino in named}

    def _walk(self, prefix: bytes, ino: int) -> list:
        """(path, ino) of every regular file below directory ``ino``."""
        out, todo, seen = [], [(prefix, ino)], 0
        while todo:
            dir_path, dir_ino = todo.pop()
            after = None
            while True:
                entries, done = self._read(Op.READDIR, dir_ino, after, limits.readdir_page_entries_max)
                seen += len(entries)
                if seen > fsck_walk_entries_max:
                    raise CisternError(errno.E2BIG, f"more than {fsck_walk_entries_max} entries below {prefix!r}")
                for name, child, kind in entries:
                    child_path = dir_path + b"/" + name
                    if kind == model.KIND_DIR:
                        todo.append((child_path, child))
                    elif kind == model.KIND_REG:
                        out.append((child_path.decode("utf-8", "surrogateescape"), child))
                if done or not entries:
                    break
                after = entries[-1][0]
        return out

    def _files_by_ino(self, named) -> list:
        files = []
        for first in range(0, len(named), fsck_reads_in_flight_max):
            chunk = named[first:first + fsck_reads_in_flight_max]
            futures = [self._replica.submit_read(Op.FSCK_SCAN, model.encode_args(ROOT_CRED, ino - 1, 1))
                       for _, ino in chunk]
            for (_, ino), future in zip(chunk, futures):
                page, _ = future.result(raft_write_timeout_s)
                if page and page[0][0] == ino:
                    files.extend(rep.files_from_scan(page))
                else:
                    files.append(rep.FileBlocks(ino, None, ()))
        return files

    # -- the monitor ---------------------------------------------------------------

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.conf.monitor_interval_s):
            try:
                self.run_pass()
            except CisternError as e:
                log.info("nodes monitor: pass abandoned: %s", e)
            except Exception:
                log.exception("nodes monitor: pass failed")

    def run_pass(self) -> None:
        """One healing pass (the monitor thread calls it; tests may too)."""
        with self._lock:
            if not self._lead():
                return
            generation = self._generation
            now = self._clock()
            events = self._registry.tick(now, replication_timeout_s=self.conf.replication_timeout_s)
        for event in events:
            if isinstance(event, NodeLost):
                log.warning("nodes: %s silent for %.1fs: lost", event.node_id, self.conf.node_dead_after_s)
                self.stats["nodes_lost"] += 1
                self._m.lost.inc()
                self._commit_node_lost(event.node_id)
        self._heal_files(generation)
        self._heal_freed(generation)
        self._delete_orphans(generation)
        with self._lock:
            self._m.live.set(len(self._registry.live_nodes()))
            self._m.pending.set(self._registry.pending_replications())
        self.stats["passes"] += 1

    def _report_grace_s(self) -> float:
        c = self.conf
        return 3 * c.heartbeat_interval_s if c.report_grace_s is None else c.report_grace_s

    def _write(self, code: int, *args):
        self._seq += 1
        future = self._replica.submit_write(self._client_id, self._seq, self._seq, code,
                                            model.encode_args(ROOT_CRED, *args))
        return future.result(raft_write_timeout_s)

    def _commit_node_lost(self, node_id: str) -> None:
        after = 0
        while True:
            after, done, _ = self._write(Op.NODE_LOST, node_id, after, limits.node_lost_scan_files_max)
            if done:
                return

    def _planned(self, generation: int, plan_fn):
        """Run ``plan_fn(registry, now)`` under the lock, unless leadership
        changed since the pass began (the registry it read is gone)."""
        with self._lock:
            if self._generation != generation or not self._lead():
                return None
            return plan_fn(self._registry, self._clock())

    def _heal_files(self, generation: int) -> None:
        page, done = self._read(Op.FSCK_SCAN, self._scan_after, self.conf.scan_files_per_pass)
        files = rep.files_from_scan(page)

        def plan_fn(registry, now):
            for f in files:
                for block in f.blocks:
                    for node_id in block.recorded:
                        if isinstance(node_id, str):
                            registry.expect(node_id, now)
            plan = rep.plan_files(files, registry, replication_default=self.conf.replication_default,
                                  replications_per_node_max=self.conf.replications_per_node_max,
                                  now=now, report_grace_s=self._report_grace_s())
            rep.apply_plan(plan, registry, now)
            return plan

        plan = self._planned(generation, plan_fn)
        if plan is None:
            return
        self._scan_after = 0 if done or not page else page[-1][0]
        self._round["under"] += plan.under_replicated
        self._round["missing"] += plan.missing
        if done or not page:
            self.stats["under_replicated"], self.stats["missing"] = self._round["under"], self._round["missing"]
            self._m.under.set(self._round["under"])
            self._m.missing.set(self._round["missing"])
            self._round = {"under": 0, "missing": 0}
        self.stats["replications"] += len(plan.replicate)
        self._m.replications.inc(len(plan.replicate))
        for chunk in _chunks(plan.updates, limits.replica_updates_max):
            self._write(Op.UPDATE_REPLICAS, chunk)

    def _heal_freed(self, generation: int) -> None:
        page, done = self._read(Op.FREED_SCAN, self._freed_after, self.conf.freed_per_pass)

        def plan_fn(registry, now):
            for _, recorded in page:
                for node_id in recorded:
                    if isinstance(node_id, str):
                        registry.expect(node_id, now)
            plan = rep.plan_freed(page, registry)
            rep.apply_plan(plan, registry, now)
            return plan

        plan = self._planned(generation, plan_fn)
        if plan is None:
            return
        self._freed_after = None if done or not page else page[-1][0]
        for chunk in _chunks(plan.clear_freed, limits.clear_freed_max):
            self._write(Op.CLEAR_FREED, chunk)

    def _delete_orphans(self, generation: int) -> None:
        with self._lock:
            candidates = self._registry.orphan_candidates(self._clock(), self.conf.orphan_grace_s,
                                                          self.conf.orphan_checks_per_pass)
        if not candidates:
            return
        owners = dict(zip(candidates, self._read(Op.BLOCK_OWNERS, candidates)))

        def plan_fn(registry, now):
            plan, owned = rep.plan_orphans(owners, registry)
            for block_id in owned:
                registry.mark_owned(block_id)
            rep.apply_plan(plan, registry, now)
            return plan

        plan = self._planned(generation, plan_fn)
        if plan is not None and plan.delete:
            log.info("nodes: deleting %d orphan replicas", len(plan.delete))
            self.stats["orphans_deleted"] += len(plan.delete)
            self._m.orphans.inc(len(plan.delete))


def _chunks(items: list, count_max: int):
    """Runs of ``items`` that fit one operation: at most ``count_max`` items
    and half of ``op_args_bytes_max`` encoded (node ids may be long)."""
    chunk, size = [], 0
    for item in items:
        item_size = len(model.pack(item))
        if chunk and (len(chunk) >= count_max or size + item_size > limits.op_args_bytes_max // 2):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_size
    if chunk:
        yield chunk


def add_to_server(grpc_server, replica, namespace_or_store=None, registry: CollectorRegistry | None = None,
                  clock=time.monotonic, *, conf: NodesConf | None = None) -> NodesService:
    """Register the Nodes servicer on ``grpc_server`` and start the monitor.
    ``namespace_or_store`` is accepted for the daemon's convenience and not
    used: every namespace read goes through the replica (linearizable, on
    the leader). Returns the service; call its ``stop()`` before stopping
    the replica."""
    del namespace_or_store
    service = NodesService(replica, conf=conf or NodesConf.from_env(), clock=clock, registry=registry)
    pb_grpc.add_NodesServicer_to_server(service, grpc_server)
    service.start()
    return service
