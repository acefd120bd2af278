"""Healing decisions (pure): what the leader tells nodes to do, and which
replica-list changes it commits through Raft.

Inputs: files from the committed namespace (``FileBlocks``, as FSCK_SCAN
returns them: block ids, lengths, recorded replicas, replication factor),
freed blocks (FREED_SCAN), block owners (BLOCK_OWNERS) and the
``NodeRegistry`` (reported holders, live nodes, corrupt replicas,
replications in flight, deletes awaiting confirmation). Output: a ``Plan``
the shell carries out: ``replicate`` and ``delete`` go to the registry's
per-node queues (heartbeat replies), ``updates`` and ``clear_freed`` become
UPDATE_REPLICAS and CLEAR_FREED entries. The planner never mutates the
registry; ``apply_plan`` (still pure) queues the instructions.

Per block, with ``r`` its file's replication factor, ``good`` the live
holders minus corrupt ones, ``pending`` replications in flight to it:

* no good copy: *missing* (unless a recorded copy is unconfirmed, below);
  nothing can be done (a corrupt copy is kept).
* ``good + pending < want`` where ``want = min(r, good + pending + room)``
  (``room``: ready nodes without any copy of it and with space; so only 2
  live nodes means 2 copies and no impossible instruction):
  Replicate from the good holder with the fewest replications in flight to
  targets chosen by placement, each node in at most
  ``replications_per_node_max`` replications.
* else, when the registry is settled: corrupt copies are deleted once the
  good ones reach ``want`` (replace, then drop); copies beyond ``r`` are
  trimmed (copies the layout does not record first, such as those of a node
  that came back, then the fullest node's), only with nothing in flight.
* when settled, the recorded list is brought to the good holders
  (UPDATE_REPLICAS add/drop).
* a recorded replica on a ready node that has not reported it is
  *unconfirmed* (its incremental report may be on the way after a fresh
  commit) for ``report_grace_s`` after the planner first noticed it, and
  beyond until the node's heartbeats prove the report is not just late
  (``NodeRegistry.proven_absent``): counted like a pending replication and
  kept in the record meanwhile. Without ``now`` there is no grace.

Freed blocks (settled only): delete every reported copy; once no node holds
one and no delete awaits confirmation, forget it (CLEAR_FREED). Orphans:
reported blocks first seen more than ``orphan_grace_s`` ago that BLOCK_OWNERS
finds in no layout (unknown or freed) are deleted everywhere; owned ones are
never asked about again.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, NamedTuple

from cistern.metadata import limits, model
from cistern.metadata.nodes import NodeRegistry, Replicate
from cistern.metadata.placement import Candidate, choose_targets

__all__ = ["BlockRecord", "FileBlocks", "Plan", "apply_plan", "files_from_scan", "plan_files",
           "plan_freed", "plan_orphans"]


class BlockRecord(NamedTuple):
    block_id: bytes
    length: int
    recorded: tuple          # node ids the layout lists


class FileBlocks(NamedTuple):
    ino: int
    replication: int | None  # None: the cluster default
    blocks: tuple


def files_from_scan(page) -> list[FileBlocks]:
    """FSCK_SCAN's file list as FileBlocks."""
    return [FileBlocks(ino, replication, tuple(BlockRecord(b, n, tuple(nodes)) for b, n, nodes in blocks))
            for ino, replication, blocks in page]


@dataclasses.dataclass
class Plan:
    replicate: list = dataclasses.field(default_factory=list)    # [(target node, Replicate)]
    delete: list = dataclasses.field(default_factory=list)       # [(node, block id)]
    updates: list = dataclasses.field(default_factory=list)      # [[block id, [add], [drop]]]
    clear_freed: list = dataclasses.field(default_factory=list)  # [block id]
    unconfirmed: list = dataclasses.field(default_factory=list)  # [(block id, node)] noticed now
    under_replicated: int = 0
    missing: int = 0
    over_replicated: int = 0

    def extend(self, other: "Plan") -> None:
        for field in ("replicate", "delete", "updates", "clear_freed", "unconfirmed"):
            getattr(self, field).extend(getattr(other, field))
        self.under_replicated += other.under_replicated
        self.missing += other.missing
        self.over_replicated += other.over_replicated


class _Budget:
    """Replications each node may still take part in during this pass."""

    def __init__(self, registry: NodeRegistry, per_node_max: int):
        self._used = registry.replications_in_flight()
        self._max = per_node_max

    def has_room(self, node_id: str) -> bool:
        return self._used.get(node_id, 0) < self._max

    def take(self, source: str, target: str) -> None:
        self._used[source] = self._used.get(source, 0) + 1
        self._used[target] = self._used.get(target, 0) + 1

    def load(self, node_id: str) -> int:
        return self._used.get(node_id, 0)


def plan_files(files: Iterable[FileBlocks], registry: NodeRegistry, *,
               replication_default: int = limits.replication_default,
               replications_per_node_max: int = limits.replications_per_node_max,
               now: float | None = None, report_grace_s: float = 0.0) -> Plan:
    """Decisions for the blocks of ``files`` (one page of the namespace)."""
    plan = Plan()
    budget = _Budget(registry, replications_per_node_max)
    candidates = registry.candidates(ready_only=True)
    settled = registry.settled()
    grace = None if now is None else (now, report_grace_s, {c.node_id for c in candidates})
    for f in files:
        r = f.replication or replication_default
        for block in f.blocks:
            _plan_block(plan, block, r, registry, candidates, budget, settled, grace)
    return plan


def _unconfirmed(plan: Plan, block: BlockRecord, holders, deleting, registry: NodeRegistry, grace) -> frozenset:
    if grace is None:
        return frozenset()
    now, grace_s, ready = grace
    out = set()
    for node_id in block.recorded:
        if node_id in ready and node_id not in holders and node_id not in deleting:
            since = registry.unconfirmed_since(block.block_id, node_id)
            if since is None:
                since = now
                plan.unconfirmed.append((block.block_id, node_id))
            if now - since < grace_s or not registry.proven_absent(block.block_id, node_id):
                out.add(node_id)
    return frozenset(out)


def _plan_block(plan: Plan, block: BlockRecord, r: int, registry: NodeRegistry,
                candidates: list[Candidate], budget: _Budget, settled: bool, grace) -> None:
    bid = block.block_id
    holders, corrupt, deleting = registry.holders(bid), registry.corrupt(bid), registry.deleting(bid)
    good = holders - corrupt
    unconfirmed = _unconfirmed(plan, block, holders, deleting, registry, grace)
    pending = registry.pending_targets(bid) | unconfirmed
    busy = holders | pending | deleting
    room = [c for c in candidates if c.node_id not in busy and c.free_bytes >= block.length]
    want = min(r, len(good) + len(pending) + len(room))
    if not good:
        plan.missing += not unconfirmed     # copies whose reports may be on the way are not missing yet
    elif len(good) + len(pending) < want:
        plan.under_replicated += 1
        _replicate(plan, bid, good, want - len(good) - len(pending), room, block.length, registry, budget)
    elif settled:
        if len(good) < r:
            plan.under_replicated += 1
        _drop_extras(plan, block, r, want, good, corrupt, pending, registry)
    if settled and good:
        _reconcile(plan, block, good, pending)


def _replicate(plan: Plan, bid: bytes, good, need: int, room: list[Candidate], length: int,
               registry: NodeRegistry, budget: _Budget) -> None:
    sources = sorted((n for n in good if budget.has_room(n)), key=lambda n: (budget.load(n), n))
    targets = choose_targets([c for c in room if budget.has_room(c.node_id)], need, block_size=length)
    for target in targets:
        sources = [n for n in sources if budget.has_room(n)]
        if not sources:
            return
        source = min(sources, key=lambda n: (budget.load(n), n))
        budget.take(source, target)
        plan.replicate.append((target, Replicate(bid, source, registry.address(source))))


def _drop_extras(plan: Plan, block: BlockRecord, r: int, want: int, good, corrupt, pending,
                 registry: NodeRegistry) -> None:
    bid = block.block_id
    if len(good) >= want:
        for node_id in sorted(corrupt):
            plan.delete.append((node_id, bid))
    extra = len(good) - r
    if extra <= 0 or pending:
        return
    plan.over_replicated += 1

    def victim_order(node_id: str):
        node = registry.node(node_id)
        used = 1 - node.free_bytes / node.capacity_bytes if node.capacity_bytes else 1.0
        return (node_id in block.recorded, -used, node_id)

    for node_id in sorted(good, key=victim_order)[:extra]:
        plan.delete.append((node_id, bid))


def _reconcile(plan: Plan, block: BlockRecord, good, pending) -> None:
    """Bring the recorded replica list to the good holders (after this
    pass's deletes, which apply_plan makes take effect at once); recorded
    replicas still unconfirmed stay."""
    deleted = {n for n, b in plan.delete if b == block.block_id}
    keep = good - deleted
    add = sorted(keep - set(block.recorded))
    drop = sorted(set(block.recorded) - keep - pending)
    if add or drop:
        plan.updates.append([block.block_id, add, drop])


def plan_freed(freed: Iterable, registry: NodeRegistry) -> Plan:
    """``freed``: FREED_SCAN entries ``[block id, recorded nodes]``."""
    plan = Plan()
    if not registry.settled():
        return plan
    for bid, _recorded in freed:
        holders = registry.holders(bid)
        for node_id in sorted(holders):
            plan.delete.append((node_id, bid))
        if not holders and not registry.deleting(bid):
            plan.clear_freed.append(bid)
    return plan


def plan_orphans(owners: dict, registry: NodeRegistry) -> tuple[Plan, list[bytes]]:
    """``owners``: block id -> BLOCK_OWNERS answer for orphan candidates.
    Returns the deletes and the block ids found in a layout (mark_owned)."""
    plan = Plan()
    owned = []
    for bid, owner in owners.items():
        if owner is not None and owner != model.BLOCK_FREED:
            owned.append(bid)
            continue
        for node_id in sorted(registry.holders(bid)):
            plan.delete.append((node_id, bid))
    return plan, owned


def apply_plan(plan: Plan, registry: NodeRegistry, now: float) -> None:
    """Queue the plan's instructions in the registry (Raft ops are the shell's)."""
    for target, instruction in plan.replicate:
        registry.queue_replicate(target, instruction, now)
    for node_id, bid in plan.delete:
        if registry.node(node_id) is not None:
            registry.queue_delete(node_id, bid)
    for bid, node_id in plan.unconfirmed:
        registry.note_unconfirmed(bid, node_id, now)
