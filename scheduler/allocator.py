"""The allocator: which framework is offered which agent's free resources.
Pure (no clock, no I/O, no randomness: the master passes ``now`` and the
offer id source), single-threaded (the master's loop owns it), leader memory
(a new master starts an empty one and rebuilds it from the replicated state).

Model
    An agent has ``total`` resources; ``used`` is what its active tasks (and
    launches being committed) hold; ``offered`` is what sits in outstanding
    offers. Free = total - used - offered. Offers are made per agent, of
    all its free resources, to one framework (as Mesos does), when free
    reaches ``offer_cpus_min`` and ``offer_mem_bytes_min``.

Fairness (DRF, Ghodsi et al. 2011)
    A framework's dominant share is the largest, over cpus, memory and disk,
    of (its tasks' resources + its outstanding offers) / the cluster total.
    Each agent's free resources go to the eligible framework with the lowest
    dominant share (ties: the framework subscribed first); shares are
    updated after every offer, so within one ``allocate`` the frameworks
    take turns.

Eligible
    A framework is eligible for an agent when it is active (subscribed and
    connected), not suppressed, and has no decline filter for that agent
    (``decline(..., refuse_s)`` refuses the agent for ``refuse_s`` seconds;
    ``revive`` clears the framework's filters and its suppression).

Offers end by ``accept`` (the launched tasks' resources become used, the
rest is free again, filtered only when ``refuse_s`` > 0), ``decline``, ``rescind``
(``expire`` after ``offer_timeout_s``, or a framework/agent going away), and
the caller tells the framework about every rescind it is handed.

Errors: ``accept`` raises ``AllocError(errno, message)`` and changes
nothing when an offer is unknown (or rescinded), another framework's, the
offers span agents, or the tasks need more than the offers hold.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools

from cistern.scheduler import limits

__all__ = ["AllocError", "Allocator", "Offer", "Resources", "fits", "add", "sub"]

Resources = tuple  # (cpus: float, mem_bytes: int, disk_bytes: int)
ZERO: Resources = (0.0, 0, 0)
_EPSILON = 1e-9


def add(a: Resources, b: Resources) -> Resources:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def sub(a: Resources, b: Resources) -> Resources:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def fits(need: Resources, have: Resources) -> bool:
    """``need`` fits in ``have`` (cpus compared with a rounding allowance)."""
    return need[0] <= have[0] + _EPSILON and need[1] <= have[1] and need[2] <= have[2]


def _clamp(r: Resources) -> Resources:
    return (max(0.0, round(r[0], 9)), max(0, r[1]), max(0, r[2]))


class AllocError(Exception):
    def __init__(self, err: int, message: str):
        super().__init__(err, message)
        self.errno = err
        self.message = message


@dataclasses.dataclass(frozen=True)
class Offer:
    offer_id: str
    framework_id: str
    agent_id: str
    node_id: str
    address: str
    resources: Resources
    made_at: float


@dataclasses.dataclass
class _Agent:
    agent_id: str
    node_id: str
    address: str
    total: Resources
    used: Resources = ZERO
    offered: Resources = ZERO
    active: bool = True      # connected: offered; a disconnected agent is not

    def free(self) -> Resources:
        return _clamp(sub(sub(self.total, self.used), self.offered))


@dataclasses.dataclass
class _Framework:
    framework_id: str
    order: int
    active: bool = True
    suppressed: bool = False
    used: Resources = ZERO
    offered: Resources = ZERO
    filters: dict = dataclasses.field(default_factory=dict)   # agent_id -> refused until (now units)


class Allocator:
    """See the module docstring. ``offer_ids`` yields fresh offer ids."""

    def __init__(self, *, offer_timeout_s: float = limits.offer_timeout_s,
                 refuse_seconds_default: float = limits.refuse_seconds_default, offer_ids=None):
        self.offer_timeout_s = offer_timeout_s
        self.refuse_seconds_default = refuse_seconds_default
        self._offer_ids = offer_ids if offer_ids is not None else (f"o{n}" for n in itertools.count(1))
        self._agents: dict[str, _Agent] = {}
        self._frameworks: dict[str, _Framework] = {}
        self._offers: dict[str, Offer] = {}
        self._order = itertools.count()

    # -- agents ------------------------------------------------------------------

    def add_agent(self, agent_id: str, node_id: str, address: str, total: Resources) -> list[Offer]:
        """Add or update an agent; returns offers rescinded because its
        resources or address changed (its outstanding offers). The same
        agent registering again unchanged keeps its offers."""
        agent = self._agents.get(agent_id)
        unchanged = agent is not None and (agent.node_id, agent.address, agent.total) == (node_id, address,
                                                                                           tuple(total))
        if agent is not None:
            agent.active = True
        if unchanged:
            return []
        rescinded = self._rescind_where(lambda o: o.agent_id == agent_id) if agent is not None else []
        if agent is None:
            self._agents[agent_id] = _Agent(agent_id, node_id, address, tuple(total))
        else:
            agent.node_id, agent.address, agent.total = node_id, address, tuple(total)
        return rescinded

    def remove_agent(self, agent_id: str) -> list[Offer]:
        """Forget an agent (unreachable); returns its rescinded offers.
        ``release`` its tasks before (their share leaves the frameworks')."""
        rescinded = self._rescind_where(lambda o: o.agent_id == agent_id)
        self._agents.pop(agent_id, None)
        for fw in self._frameworks.values():
            fw.filters.pop(agent_id, None)
        return rescinded

    def deactivate_agent(self, agent_id: str) -> list[Offer]:
        """Its stream ended: no offers on it until ``add_agent`` again (its
        tasks keep their resources); returns its rescinded offers."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return []
        agent.active = False
        return self._rescind_where(lambda o: o.agent_id == agent_id)

    def has_agent(self, agent_id: str) -> bool:
        return agent_id in self._agents

    # -- frameworks -------------------------------------------------------------------

    def add_framework(self, framework_id: str) -> None:
        """A framework subscribed (or re-subscribed): active, not suppressed."""
        fw = self._frameworks.get(framework_id)
        if fw is None:
            self._frameworks[framework_id] = _Framework(framework_id, next(self._order))
        else:
            fw.active, fw.suppressed = True, False

    def deactivate_framework(self, framework_id: str) -> list[Offer]:
        """Disconnected: no offers until it comes back; its offers are rescinded."""
        fw = self._frameworks.get(framework_id)
        if fw is None:
            return []
        fw.active = False
        return self._rescind_where(lambda o: o.framework_id == framework_id)

    def remove_framework(self, framework_id: str) -> list[Offer]:
        rescinded = self._rescind_where(lambda o: o.framework_id == framework_id)
        self._frameworks.pop(framework_id, None)
        return rescinded

    def suppress(self, framework_id: str) -> list[Offer]:
        """No more offers to this framework until ``revive``. Its
        outstanding offers are rescinded, so they can go elsewhere."""
        fw = self._frameworks.get(framework_id)
        if fw is None:
            return []
        fw.suppressed = True
        return self._rescind_where(lambda o: o.framework_id == framework_id)

    def revive(self, framework_id: str) -> None:
        fw = self._frameworks.get(framework_id)
        if fw is not None:
            fw.suppressed = False
            fw.filters.clear()

    # -- resources held by tasks ----------------------------------------------------------

    def hold(self, framework_id: str, agent_id: str, resources: Resources) -> None:
        """A task now holds ``resources`` on the agent (launched or found at
        registration). Only resources on a known agent are accounted (for
        the agent and the framework's share alike), so ``release`` after
        ``remove_agent`` does nothing: release a removed agent's tasks first."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        agent.used = add(agent.used, resources)
        fw = self._frameworks.get(framework_id)
        if fw is not None:
            fw.used = add(fw.used, resources)

    def release(self, framework_id: str, agent_id: str, resources: Resources) -> None:
        """A task ended (or its launch failed): its resources are free again."""
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        agent.used = _clamp(sub(agent.used, resources))
        fw = self._frameworks.get(framework_id)
        if fw is not None:
            fw.used = _clamp(sub(fw.used, resources))

    # -- offers --------------------------------------------------------------------------

    def offer(self, offer_id: str) -> Offer | None:
        return self._offers.get(offer_id)

    def outstanding(self) -> int:
        return len(self._offers)

    def allocate(self, now: float) -> list[Offer]:
        """Offer every agent's free resources to the eligible framework with
        the lowest dominant share; returns the new offers."""
        made = []
        totals = self._cluster_total()
        for agent in sorted(self._agents.values(), key=lambda a: a.agent_id):
            if not agent.active:
                continue
            free = agent.free()
            if free[0] < limits.offer_cpus_min or free[1] < limits.offer_mem_bytes_min:
                continue
            fw = self._pick(agent.agent_id, now, totals)
            if fw is None:
                continue
            offer = Offer(next(self._offer_ids), fw.framework_id, agent.agent_id, agent.node_id, agent.address,
                          free, now)
            self._offers[offer.offer_id] = offer
            agent.offered = add(agent.offered, free)
            fw.offered = add(fw.offered, free)
            made.append(offer)
        return made

    def _pick(self, agent_id: str, now: float, totals: Resources) -> _Framework | None:
        best, best_key = None, None
        for fw in self._frameworks.values():
            if not fw.active or fw.suppressed or fw.filters.get(agent_id, now) > now:
                continue
            key = (dominant_share(add(fw.used, fw.offered), totals), fw.order)
            if best_key is None or key < best_key:
                best, best_key = fw, key
        return best

    def _cluster_total(self) -> Resources:
        total = ZERO
        for agent in self._agents.values():
            total = add(total, agent.total)
        return total

    def shares(self) -> dict[str, float]:
        """Each framework's dominant share now (tests, status)."""
        totals = self._cluster_total()
        return {fid: dominant_share(add(fw.used, fw.offered), totals) for fid, fw in self._frameworks.items()}

    def decline(self, framework_id: str, offer_ids, refuse_s: float | None, now: float) -> list[str]:
        """Return offers unused; refuse their agents to this framework for
        ``refuse_s`` (None or 0: the default). Unknown ids are skipped (an
        offer may have been rescinded meanwhile); returns those declined."""
        refuse_s = self._refuse_s(refuse_s)
        declined = []
        for offer_id in offer_ids:
            offer = self._offers.get(offer_id)
            if offer is None or offer.framework_id != framework_id:
                continue
            self._drop(offer)
            self._filter(framework_id, offer.agent_id, now + refuse_s)
            declined.append(offer_id)
        return declined

    def accept(self, framework_id: str, offer_ids, needs: list[Resources], refuse_s: float | None,
               now: float) -> tuple[str, Resources]:
        """Use offers for tasks needing ``needs``: checks everything first
        (AllocError otherwise, nothing changed); then the offers are gone,
        the tasks' resources are held and the rest is free again: offered
        at the next ``allocate``, or after ``refuse_s`` when that is > 0
        (unlike a decline, no default filter: a busy framework would
        otherwise wait seconds for the rest of an agent it is filling).
        Returns (agent_id, what the offers held)."""
        offers = self._check_accept(framework_id, offer_ids, needs)
        agent_id = offers[0].agent_id
        held = ZERO
        for offer in offers:
            self._drop(offer)
            held = add(held, offer.resources)
        for need in needs:
            self.hold(framework_id, agent_id, need)
        if refuse_s and refuse_s > 0:
            self._filter(framework_id, agent_id, now + min(refuse_s, limits.refuse_seconds_max))
        return agent_id, held

    def _check_accept(self, framework_id: str, offer_ids, needs) -> list[Offer]:
        if not offer_ids:
            raise AllocError(errno.EINVAL, "accept names no offer")
        if len(set(offer_ids)) != len(offer_ids):
            raise AllocError(errno.EINVAL, "accept names an offer twice")
        offers = []
        for offer_id in offer_ids:
            offer = self._offers.get(offer_id)
            if offer is None:
                raise AllocError(errno.ENOENT, f"offer {offer_id} is unknown, used, declined or rescinded")
            if offer.framework_id != framework_id:
                raise AllocError(errno.EPERM, f"offer {offer_id} was made to another framework")
            offers.append(offer)
        if len({o.agent_id for o in offers}) != 1:
            raise AllocError(errno.EINVAL, "the offers of one accept must all be on one agent")
        held = ZERO
        for offer in offers:
            held = add(held, offer.resources)
        need = ZERO
        for one in needs:
            need = add(need, one)
        if not fits(need, held):
            raise AllocError(errno.EINVAL, f"tasks need {_show(need)} but the offers hold {_show(held)}")
        return offers

    def expire(self, now: float) -> list[Offer]:
        """Rescind offers older than ``offer_timeout_s``; returns them."""
        return self._rescind_where(lambda o: now - o.made_at >= self.offer_timeout_s)

    # -- internals ---------------------------------------------------------------------------

    def _refuse_s(self, refuse_s: float | None) -> float:
        if not refuse_s or refuse_s < 0:
            return self.refuse_seconds_default
        return min(refuse_s, limits.refuse_seconds_max)

    def _filter(self, framework_id: str, agent_id: str, until: float) -> None:
        fw = self._frameworks.get(framework_id)
        if fw is not None:
            fw.filters[agent_id] = max(until, fw.filters.get(agent_id, until))

    def _drop(self, offer: Offer) -> None:
        del self._offers[offer.offer_id]
        agent = self._agents.get(offer.agent_id)
        if agent is not None:
            agent.offered = _clamp(sub(agent.offered, offer.resources))
        fw = self._frameworks.get(offer.framework_id)
        if fw is not None:
            fw.offered = _clamp(sub(fw.offered, offer.resources))

    def _rescind_where(self, predicate) -> list[Offer]:
        gone = [o for o in self._offers.values() if predicate(o)]
        for offer in gone:
            self._drop(offer)
        return gone


def dominant_share(allocated: Resources, totals: Resources) -> float:
    """max over resource kinds of allocated / total (kinds with no total skipped)."""
    return max((a / t for a, t in zip(allocated, totals) if t > 0), default=0.0)


def _show(r: Resources) -> str:
    return f"{r[0]:g} cpus, {r[1] >> 20} MiB memory, {r[2] >> 20} MiB disk"
