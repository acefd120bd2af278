"""The leader's view of the storage nodes (pure; leader memory, not Raft).

``NodeRegistry`` takes the events nodes send and the time, and keeps what
the leader knows: which nodes are live, their capacity, which blocks each
holds (from block reports), corrupt replicas reported by readers or
scrubbers, instructions queued for each node, replications in flight and
deletes awaiting confirmation. Nothing here survives a leader change: a new
leader starts empty and rebuilds it from heartbeats and full block reports
(every node is told ``send_full_report`` on its first contact).

Events in
    ``heartbeat(node_id, rpc_address, capacity_bytes, used_bytes,
    block_count, now, failed=())`` -> the instructions for that node (its
    queue, up to ``instructions_per_heartbeat_max``; deletes coalesced);
    ``block_report(node_id, full, added, removed, now, more=False)``;
    ``report_corrupt(block_id, node_id)``; ``tick(now)`` -> ``[NodeLost]``.
    Times are seconds on one monotonic clock chosen by the shell.
Instructions out (to a node, in its heartbeat reply)
    ``Replicate(block_id, source_node, source_address)``: fetch the block
    from the source and keep it (the receiving node pulls, with the block
    service's Copy); ``Delete(block_ids)``.

Rules:

* A node is live from its first heartbeat until it is silent for more than
  ``dead_after_s``; then ``tick`` forgets its blocks, queue and in-flight
  work and returns ``NodeLost``. A lost node that heartbeats again is a new
  registration (``NodeReturned`` from ``tick``) and must send a full report.
* ``expect(node_id, now)`` names a node the namespace records (a replica
  list) that has not been heard from: it counts as unsettled until it
  heartbeats or is declared lost ``dead_after_s`` later.
* ``settled()``: the quiet period after the registry was created is over
  (``quiet_until``: nodes had time to heartbeat to a new leader), every
  expected node has been heard from and every live node has completed a
  full report. The healing planner trims and deletes only then (absence of
  a report proves nothing before).
* Unconfirmed replicas: a layout may record a replica whose node has not
  reported it yet (the write was acknowledged just before the commit and
  the node's incremental report is on its way). ``note_unconfirmed`` keeps
  the time the planner first saw that, so it can wait ``report_grace_s``
  before treating the replica as absent, and ``proven_absent`` tells when
  the node's heartbeats prove its report is not merely late (a slow report
  once cost a fresh block two of its three recorded replicas).
  ``unreported`` names, for fsck, the recorded replicas that may still be
  present on those grounds (a late report is not an absent copy). A note
  lasts while it is asked about (``unconfirmed_since``, ``proven_absent``):
  it is forgotten when the node reports the block or is lost, or once no
  query touched it for ``dead_after_s`` (its block left the layouts), so a
  proof of absence holds for as long as the layout still names the replica.
* A full report may span messages: the first has ``full=True``, every one
  but the last ``more=True``; the node is fully reported after the last.
* ``queue_delete`` removes the replica from the holdings at once (so the
  next pass does not count it) and remembers it as *deleting* until the node
  reports it removed (or a full report without it, or the node is lost):
  freed blocks are forgotten only after that confirmation.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable

from cistern.metadata import limits
from cistern.metadata.placement import Candidate

__all__ = ["Delete", "NodeInfo", "NodeLost", "NodeRegistry", "NodeReturned", "Replicate"]


@dataclasses.dataclass(frozen=True)
class Replicate:
    """To the target node: copy ``block_id`` from ``source_address``."""

    block_id: bytes
    source_node: str
    source_address: str


@dataclasses.dataclass(frozen=True)
class Delete:
    """To a node: delete these blocks (a missing one is not an error)."""

    block_ids: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class NodeLost:
    node_id: str


@dataclasses.dataclass(frozen=True)
class NodeReturned:
    node_id: str


@dataclasses.dataclass
class NodeInfo:
    node_id: str
    rpc_address: str = ""
    capacity_bytes: int = 0
    used_bytes: int = 0
    block_count: int = 0
    last_seen: float = 0.0
    reserved_bytes: int = 0          # allocated to writers since the last heartbeat
    heard: bool = False              # False: only expected (named by a layout)
    full_report: bool = False        # a complete full report arrived
    reporting: bool = False          # a multi-message full report is under way
    beats: int = 0                   # heartbeats received
    clean_beat: int = 0              # the latest of them sent with no report pending
    blocks: dict = dataclasses.field(default_factory=dict)     # block id -> length
    queue: collections.deque = dataclasses.field(default_factory=collections.deque)

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.used_bytes - self.reserved_bytes)


class NodeRegistry:
    """See the module docstring. Not thread-safe: the shell serializes calls."""

    def __init__(self, *, dead_after_s: float = limits.node_dead_after_s,
                 instructions_per_heartbeat_max: int = limits.instructions_per_heartbeat_max,
                 delete_ids_per_instruction_max: int = limits.delete_ids_per_instruction_max,
                 nodes_max: int = limits.registry_nodes_max, quiet_until: float = float("-inf")):
        assert dead_after_s > 0 and instructions_per_heartbeat_max > 0 and delete_ids_per_instruction_max > 0
        self.dead_after_s = dead_after_s
        self._per_heartbeat = instructions_per_heartbeat_max
        self._ids_per_delete = delete_ids_per_instruction_max
        self._nodes_max = nodes_max
        self._nodes: dict[str, NodeInfo] = {}
        self._holders: dict[bytes, set[str]] = {}
        self._first_seen: dict[bytes, float] = {}      # unverified blocks: first report time
        self._corrupt: dict[bytes, set[str]] = {}
        self._deleting: dict[bytes, set[str]] = {}
        self._in_flight: dict[tuple[bytes, str], tuple[str, float]] = {}   # (block, target) -> (source, started)
        self._events: list = []
        self._lost: set[str] = set()                   # declared lost, not heard from since
        self._quiet_until = quiet_until
        self._now = float("-inf")                      # the latest time any event carried
        # (block, recorded node) -> [first noticed, the node's heartbeats
        # received by then, the latest event time when it was last asked about]
        self._unconfirmed: dict[tuple[bytes, str], list] = {}

    # -- events in ------------------------------------------------------------

    def heartbeat(self, node_id: str, rpc_address: str, capacity_bytes: int, used_bytes: int,
                  block_count: int, now: float, failed: Iterable[bytes] = (), reports_pending: int = 0) -> list:
        """Record a heartbeat; return the node's queued instructions.
        A node beyond ``nodes_max`` is not registered (returns []).
        ``reports_pending``: report events the node had not delivered yet."""
        node = self._nodes.get(node_id)
        if node is None:
            if len(self._nodes) >= self._nodes_max:
                return []
            node = self._nodes[node_id] = NodeInfo(node_id)
            if node_id in self._lost:
                self._lost.discard(node_id)
                self._events.append(NodeReturned(node_id))
        if not node.heard:
            node.heard = True
            node.full_report = node.reporting = False
        node.rpc_address = rpc_address
        node.capacity_bytes, node.used_bytes, node.block_count = capacity_bytes, used_bytes, block_count
        node.last_seen = now
        self._now = max(self._now, now)
        node.reserved_bytes = 0
        node.beats += 1
        if reports_pending == 0:
            node.clean_beat = node.beats
        for block_id in failed:
            self._in_flight.pop((block_id, node_id), None)
        return self._take_instructions(node)

    def needs_full_report(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is None or not (node.full_report or node.reporting)

    def block_report(self, node_id: str, full: bool, added: Iterable[tuple[bytes, int]],
                     removed: Iterable[bytes], now: float, *, more: bool = False) -> bool:
        """Record a block report; False when the node is not registered
        (it must heartbeat first, then send a full report)."""
        node = self._nodes.get(node_id)
        if node is None or not node.heard:
            return False
        if full:
            previous = set(node.blocks)
            for block_id in previous:
                self._drop_holding(node, block_id)
            self._confirm_deletes(node_id, previous)
            node.reporting = True
        for block_id, length in added:
            self._add_holding(node, block_id, length, now)
        for block_id in removed:
            self._drop_holding(node, block_id)
            self._confirm_deletes(node_id, (block_id,))
        if node.reporting and not more:
            node.reporting = False
            node.full_report = True
            self._confirm_deletes(node_id, [b for b, nodes in self._deleting.items()
                                            if node_id in nodes and b not in node.blocks])
        return True

    def report_corrupt(self, block_id: bytes, node_id: str) -> None:
        """A reader or the node's scrubber found this replica corrupt
        (ignored unless the node is known to hold the block)."""
        if node_id not in self._holders.get(block_id, ()):
            return
        if sum(len(s) for s in self._corrupt.values()) >= limits.corrupt_reports_max:
            return
        self._corrupt.setdefault(block_id, set()).add(node_id)

    def expect(self, node_id: str, now: float) -> None:
        """A node the namespace records; it must be heard from or be lost."""
        self._now = max(self._now, now)
        if node_id not in self._nodes and node_id not in self._lost and len(self._nodes) < self._nodes_max:
            self._nodes[node_id] = NodeInfo(node_id, last_seen=now)

    def tick(self, now: float, *, replication_timeout_s: float = limits.replication_timeout_s) -> list:
        """Declare silent nodes lost and expire stale replications; return
        the events since the last tick (NodeReturned, NodeLost)."""
        events, self._events = self._events, []
        self._now = max(self._now, now)
        for key, (_, _, asked) in list(self._unconfirmed.items()):
            if now - asked > self.dead_after_s:
                del self._unconfirmed[key]
        for node in sorted(self._nodes.values(), key=lambda n: n.node_id):
            if now - node.last_seen > self.dead_after_s:
                self._forget(node)
                events.append(NodeLost(node.node_id))
        for key, (_, started) in list(self._in_flight.items()):
            if now - started > replication_timeout_s:
                del self._in_flight[key]
        return events

    # -- the planner's and the shell's actions ----------------------------------

    def queue_replicate(self, target: str, instruction: Replicate, now: float) -> None:
        node = self._nodes[target]
        node.queue.append(instruction)
        self._in_flight[(instruction.block_id, target)] = (instruction.source_node, now)

    def queue_delete(self, node_id: str, block_id: bytes) -> None:
        node = self._nodes[node_id]
        self._drop_holding(node, block_id)
        self._deleting.setdefault(block_id, set()).add(node_id)
        node.queue.append(Delete((block_id,)))

    def reserve(self, node_id: str, size_bytes: int) -> None:
        """Count bytes just allocated to a writer until the next heartbeat."""
        node = self._nodes.get(node_id)
        if node is not None:
            node.reserved_bytes += size_bytes

    def mark_owned(self, block_id: bytes) -> None:
        """The block is in a layout: it is no orphan candidate any more."""
        self._first_seen.pop(block_id, None)

    # -- queries -----------------------------------------------------------------

    def node(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def live_nodes(self) -> list[NodeInfo]:
        return [n for n in sorted(self._nodes.values(), key=lambda n: n.node_id) if n.heard]

    def ready_nodes(self) -> list[NodeInfo]:
        """Live nodes whose full report is complete."""
        return [n for n in self.live_nodes() if n.full_report]

    def candidates(self, *, ready_only: bool = False) -> list[Candidate]:
        nodes = self.ready_nodes() if ready_only else self.live_nodes()
        return [Candidate(n.node_id, n.capacity_bytes, n.free_bytes) for n in nodes]

    def settled(self) -> bool:
        return self._now >= self._quiet_until and all(n.heard and n.full_report for n in self._nodes.values())

    def note_unconfirmed(self, block_id: bytes, node_id: str, now: float) -> None:
        node = self._nodes.get(node_id)
        self._unconfirmed.setdefault((block_id, node_id), [now, node.beats if node is not None else 0, now])

    def unconfirmed_since(self, block_id: bytes, node_id: str) -> float | None:
        noted = self._noted(block_id, node_id)
        return None if noted is None else noted[0]

    def proven_absent(self, block_id: bytes, node_id: str) -> bool:
        """Whether the node has shown that it does not hold an unconfirmed
        replica: a heartbeat sent with no report pending, and sent after the
        replica was noticed. The first heartbeat received after the notice
        may have left the node before the block was stored; the one after it
        left once the node had the leader's reply to that one. The reporter
        sends heartbeats and reports from one thread, so nothing pending then
        means the block's report, had there been one, was taken already."""
        noted = self._noted(block_id, node_id)
        node = self._nodes.get(node_id)
        return noted is not None and node is not None and node.clean_beat >= noted[1] + 2

    def unreported(self, block_id: bytes, recorded: Iterable[str]) -> frozenset:
        """The nodes of ``recorded`` (a layout's replica list) that may hold
        ``block_id`` though they have not reported it: live, not a reported
        holder, not told to delete it, and not ``proven_absent``. A block
        whose write was just committed is in this state until its nodes'
        incremental reports arrive; a replica a node's reports have shown
        gone (noted by the planner, then two clean heartbeats) is not."""
        holders, deleting = self._holders.get(block_id, ()), self._deleting.get(block_id, ())
        return frozenset(n for n in recorded
                         if n not in holders and n not in deleting and self._is_live(n)
                         and not self.proven_absent(block_id, n))

    def address(self, node_id: str) -> str:
        node = self._nodes.get(node_id)
        return node.rpc_address if node is not None else ""

    def holders(self, block_id: bytes) -> frozenset:
        return frozenset(self._holders.get(block_id, ()))

    def corrupt(self, block_id: bytes) -> frozenset:
        return frozenset(self._corrupt.get(block_id, ()))

    def deleting(self, block_id: bytes) -> frozenset:
        return frozenset(self._deleting.get(block_id, ()))

    def pending_targets(self, block_id: bytes) -> frozenset:
        return frozenset(t for (b, t) in self._in_flight if b == block_id)

    def replications_in_flight(self) -> dict[str, int]:
        """Per node, replications it takes part in (as source or target)."""
        counts: dict[str, int] = {}
        for (_, target), (source, _) in self._in_flight.items():
            counts[target] = counts.get(target, 0) + 1
            counts[source] = counts.get(source, 0) + 1
        return counts

    def pending_replications(self) -> int:
        return len(self._in_flight)

    def orphan_candidates(self, now: float, grace_s: float, limit: int) -> list[bytes]:
        """Reported blocks not known to be in a layout, first reported more
        than ``grace_s`` ago (oldest first)."""
        out = []
        for block_id, first in self._first_seen.items():
            if now - first <= grace_s or len(out) >= limit:
                break
            out.append(block_id)
        return out

    def block_ids(self) -> list[bytes]:
        return list(self._holders)

    # -- internals -------------------------------------------------------------------

    def _noted(self, block_id: bytes, node_id: str) -> list | None:
        """The note on an unconfirmed replica, kept alive by this use."""
        noted = self._unconfirmed.get((block_id, node_id))
        if noted is not None:
            noted[2] = max(noted[2], self._now)
        return noted

    def _is_live(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.heard

    def _take_instructions(self, node: NodeInfo) -> list:
        out: list = []
        deletes: list[bytes] = []
        while node.queue:
            item = node.queue[0]
            if isinstance(item, Delete):
                if not deletes and len(out) >= self._per_heartbeat:
                    break
                node.queue.popleft()
                deletes.extend(item.block_ids)
                if len(deletes) >= self._ids_per_delete:
                    out.append(Delete(tuple(deletes)))
                    deletes = []
            else:
                if len(out) + (1 if deletes else 0) >= self._per_heartbeat:
                    break
                out.append(node.queue.popleft())
        if deletes:
            out.append(Delete(tuple(deletes)))
        return out

    def _add_holding(self, node: NodeInfo, block_id: bytes, length: int, now: float) -> None:
        node.blocks[block_id] = length
        holders = self._holders.setdefault(block_id, set())
        if not holders and block_id not in self._first_seen:
            self._first_seen[block_id] = now
        holders.add(node.node_id)
        self._in_flight.pop((block_id, node.node_id), None)
        self._unconfirmed.pop((block_id, node.node_id), None)

    def _drop_holding(self, node: NodeInfo, block_id: bytes) -> None:
        node.blocks.pop(block_id, None)
        holders = self._holders.get(block_id)
        if holders is not None:
            holders.discard(node.node_id)
            if not holders:
                del self._holders[block_id]
                self._first_seen.pop(block_id, None)
        corrupt = self._corrupt.get(block_id)
        if corrupt is not None:
            corrupt.discard(node.node_id)
            if not corrupt:
                del self._corrupt[block_id]

    def _confirm_deletes(self, node_id: str, block_ids) -> None:
        for block_id in block_ids:
            nodes = self._deleting.get(block_id)
            if nodes is not None:
                nodes.discard(node_id)
                if not nodes:
                    del self._deleting[block_id]

    def _forget(self, node: NodeInfo) -> None:
        for block_id in list(node.blocks):
            self._drop_holding(node, block_id)
        self._confirm_deletes(node.node_id, [b for b, s in self._deleting.items() if node.node_id in s])
        for key, (source, _) in list(self._in_flight.items()):
            if node.node_id in (key[1], source):
                del self._in_flight[key]
        for key in [k for k in self._unconfirmed if k[1] == node.node_id]:
            del self._unconfirmed[key]
        for block_id in [b for b, s in self._corrupt.items() if node.node_id in s]:
            self._corrupt[block_id].discard(node.node_id)
            if not self._corrupt[block_id]:
                del self._corrupt[block_id]
        del self._nodes[node.node_id]
        self._lost.add(node.node_id)
