"""Delay scheduling: which pending tasks a framework launches on the offers
it holds (pure).

``place(pending, offers, *, now_s, live_nodes, locality_wait_s,
local_progress_s)`` returns a
``Placement``: for each offer the tasks to launch on it (each marked local
or not), and for each offer left unused how long to decline it: briefly
(``refuse_preferred_s``) when a task still waits for that very node, else
until the first left-over task becomes willing to take any node, so no
filter delays a task that could run.

The rules (Zaharia et al., "Delay scheduling", EuroSys 2010; their wait is
per job and restarts whenever the job launches a local task; here it is per
task and restarts whenever a node holding the task's input makes local
progress for us: one of our tasks placed there locally is launched or
changes state):

1. A task is *local* to an offer when the offer's node holds one of its
   input blocks (``PendingTask.preferred``). Local tasks are placed first,
   on every offer, before any task is placed away from its data.
2. A task takes a non-local offer only once it has waited
   ``locality_wait_s`` since it was submitted (or last re-queued) AND
   since a node holding its input last made local progress for us
   (``local_progress_s[node]``): while its holders keep working through
   our local work they will soon reach it, so short tasks queued on one
   node stay local; when they stall (long tasks, a full node) it goes
   elsewhere after the wait. It goes at once when no live node holds its input (or it has
   none): waiting could never make it local, and the cluster must not sit
   idle meanwhile.
3. Tasks are taken oldest first, and an offer takes as many as its
   resources fit (first fit; a task too big for what is left is skipped,
   smaller ones behind it may still fit).
4. A task local to several offered nodes goes to the one with the most
   cpus left, so local work spreads over the replicas' nodes.

Deterministic: the caller passes the clock (``now_s``, any monotonic
seconds, the same clock as ``PendingTask.waiting_since_s``) and the set of
live nodes; nothing here reads a clock or does I/O. Resources are anything
with ``cpus``, ``mem_bytes`` and ``disk_bytes`` attributes (``Resources``
below, or the protobuf message of the same name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Mapping, NamedTuple, Sequence

__all__ = ["Resources", "PendingTask", "OfferView", "Placement", "place", "fits",
           "locality_wait_default_s", "refuse_min_s", "refuse_max_s", "refuse_preferred_s"]

locality_wait_default_s = 1.0     # the bound: locality within a wait of at most 1 s
refuse_min_s = 0.05               # never ask the master to re-offer faster than this
refuse_max_s = 5.0                # Mesos's default decline filter: nothing pending soon
refuse_preferred_s = 0.1          # a node some waiting task wants: ask again soon (it may free up)
cpus_epsilon = 1e-9               # float sums of cpu shares: 4 x 0.25 must fit 1.0


class Resources(NamedTuple):
    cpus: float = 0.0
    mem_bytes: int = 0
    disk_bytes: int = 0


class PendingTask(NamedTuple):
    """A task waiting for an offer."""

    task_id: str
    preferred: frozenset          # node ids holding its input blocks (empty: no input)
    waiting_since_s: float        # when it was submitted (or re-queued after LOST)
    resources: Resources


class OfferView(NamedTuple):
    offer_id: str
    node_id: str
    resources: Resources


@dataclass
class Placement:
    """``launch[offer_id]`` = [(task_id, local), ...] in launch order (offers
    that launch nothing are absent: decline them); ``refuse_s[offer_id]`` =
    the decline filter for every offer, for the whole offer when it
    launches nothing, for what is left of it otherwise."""

    launch: dict = field(default_factory=dict)
    refuse_s: dict = field(default_factory=dict)

    @property
    def decline(self) -> dict:
        """{offer_id: refuse seconds} of the offers that launch nothing."""
        return {o: s for o, s in self.refuse_s.items() if o not in self.launch}

    def task_ids(self) -> list:
        return [task_id for tasks in self.launch.values() for task_id, _ in tasks]


def fits(need, free) -> bool:
    """Whether ``need`` fits into ``free`` (both Resources-like)."""
    return (need.cpus <= free.cpus + cpus_epsilon and need.mem_bytes <= free.mem_bytes
            and need.disk_bytes <= free.disk_bytes)


def _minus(free, need) -> Resources:
    return Resources(free.cpus - need.cpus, free.mem_bytes - need.mem_bytes, free.disk_bytes - need.disk_bytes)


def _wait_started_s(task: PendingTask, local_progress_s) -> float:
    """When the task's current wait began: its queueing, or the last local
    progress on one of its holders, whichever is later."""
    return max([task.waiting_since_s] + [local_progress_s[n] for n in task.preferred if n in local_progress_s])


def _may_go_anywhere(task: PendingTask, now_s: float, live_nodes, locality_wait_s: float, local_progress_s) -> bool:
    if not (task.preferred & live_nodes):
        return True      # no live holder: waiting cannot make it local
    return now_s - _wait_started_s(task, local_progress_s) >= locality_wait_s


def place(pending: Sequence[PendingTask], offers: Sequence[OfferView], *, now_s: float,
          live_nodes: Collection[str], locality_wait_s: float = locality_wait_default_s,
          local_progress_s: Mapping[str, float] | None = None) -> Placement:
    """Choose tasks for ``offers`` (see the module docstring). Every task id
    appears at most once in the result; ``pending`` is not changed.
    ``local_progress_s``: {node id: when one of our tasks placed there
    locally was last launched or changed state} (the caller keeps it)."""
    local_progress_s = local_progress_s or {}
    assert locality_wait_s >= 0
    live = frozenset(live_nodes)
    free = {offer.offer_id: Resources(*_triple(offer.resources)) for offer in offers}
    placement = Placement()
    placed: set = set()
    queue = sorted(pending, key=lambda t: (t.waiting_since_s, t.task_id))
    by_node: dict = {}
    for offer in offers:
        by_node.setdefault(offer.node_id, []).append(offer)
    for task in queue:                                       # rule 1: local first, everywhere
        candidates = [o for node in sorted(task.preferred) for o in by_node.get(node, ())
                      if fits(task.resources, free[o.offer_id])]
        if candidates:
            best = max(candidates, key=lambda o: (free[o.offer_id].cpus, o.offer_id))
            _take(placement, free, placed, best.offer_id, task, True)
    for task in queue:                                       # rule 2: the rest, once allowed
        if task.task_id in placed or not _may_go_anywhere(task, now_s, live, locality_wait_s, local_progress_s):
            continue
        for offer in offers:
            if fits(task.resources, free[offer.offer_id]):
                _take(placement, free, placed, offer.offer_id, task, offer.node_id in task.preferred)
                break
    left = [t for t in queue if t.task_id not in placed]
    wanted = {node for t in left for node in t.preferred}
    refuse_s = _refuse_s(left, now_s, live, locality_wait_s, local_progress_s)
    for offer in offers:
        placement.refuse_s[offer.offer_id] = min(refuse_s, refuse_preferred_s) if offer.node_id in wanted else refuse_s
    return placement


def _triple(resources) -> tuple:
    return (float(resources.cpus), int(resources.mem_bytes), int(resources.disk_bytes))


def _take(placement: Placement, free: dict, placed: set, offer_id: str, task: PendingTask, local: bool) -> None:
    free[offer_id] = _minus(free[offer_id], task.resources)
    placement.launch.setdefault(offer_id, []).append((task.task_id, local))
    placed.add(task.task_id)


def _refuse_s(left: list, now_s: float, live: frozenset, locality_wait_s: float, local_progress_s) -> float:
    """Until the first left-over task may go anywhere (a task that already
    may, but fit nowhere, wants offers again soon: ``refuse_min_s``)."""
    if not left:
        return refuse_max_s
    soonest = min(0.0 if not (t.preferred & live) else _wait_started_s(t, local_progress_s) + locality_wait_s - now_s
                  for t in left)
    return min(refuse_max_s, max(refuse_min_s, soonest))
