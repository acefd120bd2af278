"""The scheduler master: the leader-only runtime around the replicated
state (``state.py``) and the allocator (``allocator.py``), hosted in every
metad and active only on the Raft leader (``replica.is_leader()``).

Threads and ownership
    One loop thread ("sched-master") owns every piece of in-memory state:
    the sessions (agent and framework streams), a mirror of the replicated
    tasks, the allocator, the timers. Everything else only posts events to
    it: the gRPC stream readers (``service.py``) post each message, and
    Raft commits post their results back (``replica.submit_write`` futures).
    So there are no locks around master state, and the decisions are plain
    code driven by events, with the pure pieces (``plan_registration``,
    ``spec_from_pb``, ``due_*``) unit-testable on their own.

Leadership (a leader change is a master failover)
    Every ``leader_check_interval_s`` the loop compares ``is_leader()`` with
    what it was. On gaining leadership it starts empty, reads the replicated
    frameworks, agents and tasks with linearizable reads (so every entry of
    earlier terms is applied), and: every registered agent gets
    ``agent_reregister_grace_s`` to open a stream and register again before
    it is declared unreachable; every framework counts as disconnected from
    now, so one that does not re-subscribe within its failover timeout is
    removed. On losing leadership every stream is ended (the service aborts
    it with the new leader's address) and the memory dropped.

What is committed through Raft before it is acted on
    framework subscribed/disconnected/removed, agent registered/unreachable,
    task launched (committed, THEN sent to the agent), every task status
    change (committed, THEN acked to the agent and sent to the framework),
    acknowledgements. Offers, filters and sessions are leader memory.

Agents
    ``register`` (first message on a stream) -> AGENT_REGISTER -> ``registered``;
    then the agent's report of what it runs is reconciled against the state
    (``plan_registration``): a reported task the master does not hold as
    active on that agent is killed (the master gave up on it: LOST, or its
    framework was removed); a STAGING task the agent does not report is
    launched again (its launch never reached the agent), and a started task
    it does not report is committed LOST ("agent restarted"). No heartbeat for
    ``agent_unreachable_after_s``: AGENT_UNREACHABLE (its active tasks LOST,
    "agent lost"), offers on it rescinded; if it comes back it registers
    again and is told to kill what it still runs of those tasks.
    Status updates: TASK_UPDATE committed, then ``ack`` to the agent (also
    for a late update of a task already terminal, which is not forwarded: a
    task is never reported terminal twice) and the update to its framework.

Frameworks
    ``subscribe`` (empty id: a new framework) -> FRAMEWORK_SUBSCRIBE ->
    ``subscribed``; then every unacknowledged update of its tasks is sent
    again. Offers every ``allocation_interval_s`` (DRF); ``accept`` is
    validated (subscribed, offers exist and are its own and on one agent,
    every spec well formed with a fresh task id, the tasks fit the offers),
    each task committed STAGING (TASK_LAUNCH) and then sent to the agent. A
    task refused before the commit gets a TASK_ERROR update with no uuid
    (nothing to acknowledge; never recorded) plus an ``error`` event; a
    wholly bad call gets an ``error`` event; the stream stays up.
    Unacknowledged updates are sent again every ``update_resend_interval_s``.
    Reconcile: explicit (the named tasks' latest states; an unknown task is
    TASK_LOST with reason "reconciliation") or implicit (every task of the
    framework not yet acknowledged as terminal); answers carry no uuid.
    A stream that ends: FRAMEWORK_DISCONNECT; after ``failover_timeout_s``
    without a new subscription, FRAMEWORK_REMOVE and its tasks are killed.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future

from prometheus_client import CollectorRegistry, Counter, Gauge

from cistern.core import config
from cistern.core.errors import CisternError, NotLeader
from cistern.scheduler import limits, model
from cistern.scheduler import state as state_mod
from cistern.scheduler.allocator import AllocError, Allocator
from cistern.scheduler.model import ACTIVE, TERMINAL, SchedOp, TaskState
from cistern.scheduler.proto import scheduler_pb2 as pb

log = logging.getLogger(__name__)

__all__ = ["Master", "MasterConf", "Session", "plan_registration", "spec_from_pb", "status_from_pb", "status_pb"]

_CLOSE = object()
list_page_tasks = 4096
events_per_pass_max = 512      # events run between two looks at the timers


@dataclasses.dataclass
class MasterConf:
    """The master's timings (defaults in limits.py); tests shorten them."""

    agent_heartbeat_interval_s: float = limits.agent_heartbeat_interval_s
    agent_unreachable_after_s: float = limits.agent_unreachable_after_s
    agent_reregister_grace_s: float = limits.agent_reregister_grace_s
    framework_heartbeat_interval_s: float = limits.framework_heartbeat_interval_s
    framework_failover_timeout_default_s: float = limits.framework_failover_timeout_default_s
    allocation_interval_s: float = limits.allocation_interval_s
    allocation_soon_s: float = limits.allocation_soon_s
    offer_timeout_s: float = limits.offer_timeout_s
    refuse_seconds_default: float = limits.refuse_seconds_default
    update_resend_interval_s: float = limits.update_resend_interval_s
    leader_check_interval_s: float = limits.leader_check_interval_s

    @classmethod
    def from_env(cls, environ=os.environ) -> "MasterConf":
        """Defaults overridden by ``CISTERN_SCHED_<FIELD>`` variables (e.g.
        CISTERN_SCHED_AGENT_UNREACHABLE_AFTER_S=3): metad takes no flags
        for these, and real-process tests shorten them this way."""
        return config.from_env(cls, "CISTERN_SCHED_", environ)

    def validate(self) -> None:
        """Raises CisternError(EINVAL) naming the first relation that does not hold."""
        for holds, relation in (
                (self.agent_heartbeat_interval_s * 3 < self.agent_unreachable_after_s,
                 "agent_heartbeat_interval_s * 3 < agent_unreachable_after_s"),
                (self.agent_unreachable_after_s <= self.agent_reregister_grace_s,
                 "agent_unreachable_after_s <= agent_reregister_grace_s"),
                (0 < self.allocation_soon_s <= self.allocation_interval_s < self.offer_timeout_s,
                 "0 < allocation_soon_s <= allocation_interval_s < offer_timeout_s"),
                (0 < self.leader_check_interval_s, "0 < leader_check_interval_s"),
                (0 < self.framework_failover_timeout_default_s <= limits.framework_failover_timeout_max_s,
                 "0 < framework_failover_timeout_default_s <= framework_failover_timeout_max_s"),
                (0 < self.update_resend_interval_s and 0 < self.framework_heartbeat_interval_s,
                 "positive resend and heartbeat intervals")):
            if not holds:
                raise CisternError(errno.EINVAL, f"scheduler master timings: need {relation}")


# -- conversions between the wire and the state's records (pure) ---------------------

def _resources(r: pb.Resources) -> tuple:
    return (float(r.cpus), int(r.mem_bytes), int(r.disk_bytes))


def spec_from_pb(task: pb.TaskSpec) -> dict:
    """A TaskSpec as the state's spec map (unvalidated)."""
    return {"task_id": task.task_id, "name": task.name, "argv": list(task.argv), "env": dict(task.env),
            "resources": list(_resources(task.resources)),
            "inputs": [[i.block_id, i.path, i.file_offset, i.length] for i in task.inputs],
            "network": task.network, "output_dir": task.output_dir, "output_bytes_max": task.output_bytes_max}


def spec_pb(spec: dict, agent_id: str) -> pb.TaskSpec:
    cpus, mem, disk = spec["resources"]
    return pb.TaskSpec(task_id=spec["task_id"], name=spec["name"], argv=spec["argv"], env=spec["env"],
                       resources=pb.Resources(cpus=cpus, mem_bytes=mem, disk_bytes=disk),
                       inputs=[pb.InputBlock(block_id=b, path=p, file_offset=o, length=n)
                               for b, p, o, n in spec["inputs"]],
                       network=spec["network"], output_dir=spec["output_dir"],
                       output_bytes_max=spec["output_bytes_max"], agent_id=agent_id)


def status_from_pb(status: pb.TaskStatus) -> dict:
    """A TaskStatus as the state's status map (unvalidated)."""
    return {field: getattr(status, field) for field in model.STATUS_FIELDS}


def status_pb(status: dict, *, uuid: bytes | None = None) -> pb.TaskStatus:
    """The state's status map as a TaskStatus; ``uuid`` replaces its uuid
    (b"" for answers that need no acknowledgement)."""
    fields = {field: status[field] for field in model.STATUS_FIELDS if field in status}
    if uuid is not None:
        fields["uuid"] = uuid
    return pb.TaskStatus(**fields)


# -- pure decisions --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RegistrationPlan:
    kill: tuple          # task ids the agent runs that the master gave up on
    relaunch: tuple      # STAGING tasks the agent does not know: the launch never reached it
    lose: tuple          # started tasks the master holds active on the agent that the agent does not know


def plan_registration(agent_id: str, reported: dict, tasks: dict, launching: set) -> RegistrationPlan:
    """Reconcile an agent's report ``{task_id: state}`` with the master's
    tasks ``{task_id: task record}``; ``launching`` are task ids whose launch
    is still being committed (not yet sent, so not missing).

    A STAGING task the agent does not report never reached it (the stream
    that carried its launch died, e.g. with the old leader: an agent takes
    commands in order and re-registers only on a new stream), so sending the
    launch again cannot run it twice; a task that got further and is not
    reported was lost with the agent's memory of it."""
    kill = []
    for task_id, reported_state in sorted(reported.items()):
        task = tasks.get(task_id)
        if reported_state in TERMINAL:
            continue
        if task is None or task["agent_id"] != agent_id or task["state"] not in ACTIVE:
            kill.append(task_id)
    missing = [task_id for task_id, task in sorted(tasks.items())
               if task["agent_id"] == agent_id and task["state"] in ACTIVE
               and task_id not in reported and task_id not in launching]
    relaunch = tuple(t for t in missing if tasks[t]["state"] == TaskState.TASK_STAGING)
    lose = tuple(t for t in missing if tasks[t]["state"] != TaskState.TASK_STAGING)
    return RegistrationPlan(tuple(kill), relaunch, lose)


def due_unreachable(last_heard: dict, now: float, after_s: float) -> list[str]:
    """Agents not heard from for ``after_s`` (``last_heard``: id -> time)."""
    return sorted(agent_id for agent_id, at in last_heard.items() if now - at >= after_s)


def due_removal(disconnected: dict, now: float) -> list[str]:
    """Frameworks past their failover timeout (``disconnected``: id ->
    (disconnected at, failover timeout s))."""
    return sorted(fid for fid, (since, timeout_s) in disconnected.items() if now - since >= timeout_s)


# -- sessions ------------------------------------------------------------------------

class Session:
    """One stream (an agent's or a framework's): the service drains
    ``outbox``; the master puts messages in it. ``close(hint)`` ends the
    stream (``leader_hint`` set: the service aborts it with the leader's
    address)."""

    def __init__(self, kind: str, peer: str = ""):
        self.kind = kind
        self.peer = peer
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False
        self.leader_hint: str | None = None
        self.owner = ""           # agent id or framework id once registered/subscribed

    def send(self, message) -> None:
        if not self.closed:
            self.outbox.put(message)

    def close(self, leader_hint: str | None = None) -> None:
        if not self.closed:
            self.closed = True
            self.leader_hint = leader_hint
            self.outbox.put(_CLOSE)

    def messages(self, is_active, poll_s: float = 1.0):
        """The outgoing messages until closed (for the service's generator)."""
        while is_active():
            try:
                item = self.outbox.get(timeout=poll_s)
            except queue.Empty:
                continue
            if item is _CLOSE:
                return
            yield item


@dataclasses.dataclass
class _Agent:
    record: dict
    session: Session | None = None
    last_heard: float = 0.0
    unreachable_pending: bool = False
    kills: set = dataclasses.field(default_factory=set)   # (task id, framework id, reason) to send once connected


@dataclasses.dataclass
class _Framework:
    record: dict
    session: Session | None = None
    disconnected_at: float | None = None
    removal_pending: bool = False
    last_heartbeat: float = 0.0


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.tasks = Gauge("cistern_sched_tasks", "tasks the master holds, by state", ["state"], registry=registry)
        self.agents = Gauge("cistern_sched_agents", "agents by state", ["state"], registry=registry)
        self.frameworks = Gauge("cistern_sched_frameworks_connected", "frameworks with a stream", registry=registry)
        self.offers = Gauge("cistern_sched_offers_outstanding", "offers made and not yet used", registry=registry)
        self.launches = Counter("cistern_sched_tasks_launched", "launches committed", registry=registry)
        self.leading = Gauge("cistern_sched_master_leading", "1 on the leader's master", registry=registry)


# -- the master ------------------------------------------------------------------------

class Master:
    """See the module docstring. ``replica``: metadata/replica.py's Replica
    (``submit_write``, ``submit_read``, ``is_leader``, ``leader_rpc_address``)."""

    def __init__(self, replica, *, conf: MasterConf | None = None, clock=time.monotonic, wall=time.time,
                 urandom=os.urandom, registry: CollectorRegistry | None = None):
        self._replica = replica
        self.conf = conf or MasterConf()
        self.conf.validate()
        self._clock = clock
        self._wall = wall
        self._urandom = urandom
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._carried = None          # an event taken from the queue and not yet run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._m = _Metrics(registry if registry is not None else CollectorRegistry())
        self.leading = False          # read by service threads: refuse streams when False
        self._generation = 0
        self._reset_memory()

    def _reset_memory(self) -> None:
        self._agents: dict[str, _Agent] = {}
        self._frameworks: dict[str, _Framework] = {}
        self._tasks: dict[str, dict] = {}          # active or not yet acknowledged, by id
        self._launching: dict[str, tuple] = {}     # task id -> (framework id, agent id, resources)
        self._last_sent: dict[str, float] = {}     # task id -> when its unacked update last went out
        self._sessions: set[Session] = set()
        self._offers_by_fw: dict[str, set] = collections.defaultdict(set)
        self._allocator = Allocator(offer_timeout_s=self.conf.offer_timeout_s,
                                    refuse_seconds_default=self.conf.refuse_seconds_default,
                                    offer_ids=self._offer_ids())
        self._client_id = self._urandom(16)
        self._seq = 0
        self._outstanding: set[int] = set()
        self._next_allocation = 0.0
        self._last_allocation = 0.0
        self._next_leader_check = 0.0
        self._next_resend = 0.0

    def _offer_ids(self):
        prefix = self._urandom(4).hex()
        n = 0
        while True:
            n += 1
            yield f"{prefix}-o{n}"

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sched-master", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End every stream and stop the loop. Idempotent."""
        self._stop.set()
        self._events.put(None)
        if self._thread is not None:
            self._thread.join(timeout=limits.raft_write_timeout_s + 5)
            self._thread = None
        for session in list(self._sessions):
            session.close("")

    # -- the service's entry points (any thread) -----------------------------------------

    def open_session(self, kind: str, peer: str = "") -> Session | None:
        """A new stream's session, or None when this replica does not lead."""
        if not self.leading or self._stop.is_set():
            return None
        session = Session(kind, peer)
        self.post(self._add_session, session)
        return session

    def _add_session(self, session: Session) -> None:
        if self.leading:
            self._sessions.add(session)
        else:   # leadership ended between open_session and now
            session.close(self._replica.leader_rpc_address())

    def leader_address(self) -> str:
        return self._replica.leader_rpc_address() if not self.leading else ""

    def post(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the master's loop thread."""
        self._events.put((fn, args))

    def agent_message(self, session: Session, message: pb.AgentMessage) -> None:
        self.post(self._on_agent_message, session, message)

    def framework_call(self, session: Session, call: pb.FrameworkCall) -> None:
        self.post(self._on_framework_call, session, call)

    def session_ended(self, session: Session) -> None:
        self.post(self._on_session_ended, session)

    def status(self, timeout_s: float = 5.0) -> dict:
        """The master's view (for Status and tests); CisternError(EAGAIN)
        when not leading."""
        future: Future = Future()

        def collect():
            if not self.leading:
                future.set_exception(NotLeader(self._replica.leader_rpc_address()))
            else:
                future.set_result(self._status())
        self.post(collect)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            raise CisternError(errno.ETIMEDOUT, "the scheduler master did not answer in time") from None

    # -- the loop --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            try:
                self._timers(now)
            except Exception:
                log.exception("scheduler master: timer pass failed")
            wake = min(self._next_allocation, self._next_leader_check) if self.leading else self._next_leader_check
            timeout = max(0.0, wake - self._clock())
            event, self._carried = self._carried, None
            if event is None:
                try:
                    event = self._events.get(timeout=timeout)
                except queue.Empty:
                    continue
            self._run_events(event)

    def _run_events(self, event) -> None:
        """Run one event and what is already queued behind it, at most
        ``events_per_pass_max`` (so timers still run under a steady stream)."""
        for _ in range(events_per_pass_max):
            if event is None:
                return
            fn, args = event
            try:
                fn(*args)
            except Exception:
                log.exception("scheduler master: event %s failed", getattr(fn, "__name__", fn))
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
        self._carried = event      # run first on the next pass, so the order of events holds

    def _timers(self, now: float) -> None:
        if now >= self._next_leader_check:
            self._next_leader_check = now + self.conf.leader_check_interval_s
            self._check_leadership()
        if not self.leading or now < self._next_allocation:
            return
        self._next_allocation = now + self.conf.allocation_interval_s
        self._last_allocation = now
        self._check_agents(now)
        self._check_frameworks(now)
        self._rescind(self._allocator.expire(now))
        self._allocate(now)
        if now >= self._next_resend:
            self._next_resend = now + min(1.0, self.conf.update_resend_interval_s / 2)
            self._resend_updates(now)
        self._heartbeat_frameworks(now)
        self._update_gauges()

    # -- leadership -----------------------------------------------------------------

    def _check_leadership(self) -> None:
        leading = self._replica.is_leader()
        if leading and not self.leading:
            self._become_leader()
        elif not leading and self.leading:
            self._step_down()

    def _become_leader(self) -> None:
        self._reset_memory()
        self._generation += 1
        try:
            frameworks = self._read(SchedOp.LIST_FRAMEWORKS)
            agents = self._read(SchedOp.LIST_AGENTS)
            tasks = self._read_all_tasks()
        except (CisternError, TimeoutError) as e:
            log.info("scheduler master: cannot load the state yet (%s); retrying", e or "timeout")
            return
        now = self._clock()
        for record in frameworks:
            self._frameworks[record["id"]] = _Framework(record, disconnected_at=now)
            self._allocator.add_framework(record["id"])
            self._allocator.deactivate_framework(record["id"])
        # An agent is offered again only once it registers with this master
        # (as Mesos): its tasks' resources are held from then on.
        grace = self.conf.agent_reregister_grace_s - self.conf.agent_unreachable_after_s
        for record in agents:
            self._agents[record["id"]] = _Agent(record, last_heard=now + grace)
        for task in tasks:
            if task["state"] in ACTIVE or not task["acked"]:
                self._tasks[task["id"]] = task
        self.leading = True
        self._m.leading.set(1)
        log.info("scheduler master: leading with %d frameworks, %d agents, %d open tasks; agents have "
                 "%.1fs to register again", len(frameworks), len(agents), len(self._tasks),
                 self.conf.agent_reregister_grace_s)

    def _step_down(self) -> None:
        hint = self._replica.leader_rpc_address()
        log.info("scheduler master: no longer leading (leader: %s); ending %d streams", hint or "unknown",
                 len(self._sessions))
        self.leading = False
        self._m.leading.set(0)
        for session in list(self._sessions):
            session.close(hint)
        self._generation += 1
        self._reset_memory()

    def _read(self, code: int, *args, linearizable: bool = True):
        return self._replica.submit_read(code, model.sched_args(*args),
                                         linearizable=linearizable).result(limits.raft_write_timeout_s)

    def _read_all_tasks(self) -> list:
        tasks, after = [], None
        while True:
            page, done = self._read(SchedOp.LIST_TASKS, None, None, after, list_page_tasks)
            tasks.extend(page)
            if done or not page:
                return tasks
            after = page[-1]["id"]

    # -- committing -----------------------------------------------------------------

    def _commit(self, code: int, args: list, on_done) -> None:
        """Submit one write; ``on_done((errno, message, value))`` runs on the
        loop thread, unless leadership changed meanwhile (then the new
        master's state decides; nothing is acted on)."""
        self._seq += 1
        seq = self._seq
        self._outstanding.add(seq)
        generation = self._generation
        future = self._replica.submit_write(self._client_id, seq, min(self._outstanding), code,
                                            model.sched_args(*args))

        def finished(f):
            self.post(self._committed, generation, seq, f, on_done)
        future.add_done_callback(finished)

    def _committed(self, generation: int, seq: int, future, on_done) -> None:
        self._outstanding.discard(seq)
        if generation != self._generation:
            return
        try:
            result = (0, "", future.result())
        except CisternError as e:
            result = (e.errno, e.message, None)
        except Exception as e:   # a bug in the replica: report, do not act
            log.exception("scheduler master: commit failed unexpectedly")
            result = (errno.EIO, f"{type(e).__name__}: {e}", None)
        on_done(result)

    # -- sessions ---------------------------------------------------------------------

    def _on_session_ended(self, session: Session) -> None:
        self._sessions.discard(session)
        session.close()
        if not self.leading or not session.owner:
            return
        if session.kind == "agent":
            agent = self._agents.get(session.owner)
            if agent is not None and agent.session is session:
                agent.session = None       # it has until its heartbeat timeout to come back
                self._rescind(self._allocator.deactivate_agent(session.owner))
        else:
            self._framework_disconnected(session)

    # -- agents ----------------------------------------------------------------------

    def _on_agent_message(self, session: Session, message: pb.AgentMessage) -> None:
        if not self.leading or session.closed:
            return
        kind = message.WhichOneof("kind")
        if kind == "register":
            self._agent_register(session, message.register)
        elif not session.owner:
            self._agent_error(session, errno.EINVAL, "register first", kind or "")
        elif kind == "heartbeat":
            self._heard(session)
        elif kind == "update":
            self._heard(session)
            self._agent_update(session, message.update.status)

    def _heard(self, session: Session) -> None:
        agent = self._agents.get(session.owner)
        if agent is not None and agent.session is session:
            agent.last_heard = self._clock()

    def _agent_error(self, session: Session, err: int, message: str, call: str, task_id: str = "") -> None:
        session.send(pb.AgentCommand(error=pb.Error(errno=err, message=message, call=call, task_id=task_id)))

    def _agent_register(self, session: Session, reg: pb.AgentRegister) -> None:
        total = _resources(reg.total)
        problem = _check_register(reg, total)
        if problem:
            self._agent_error(session, errno.EINVAL, problem, "register")
            return
        agent_id = reg.agent_id or f"{reg.node_id}-{self._urandom(4).hex()}"
        reported = {t.task_id: t.state for t in reg.tasks if t.task_id}
        frameworks = {t.task_id: t.framework_id for t in reg.tasks if t.task_id}
        session.owner = agent_id

        def done(result):
            err, message, record = result
            if err:
                self._agent_error(session, err, f"registration failed: {message}", "register")
                session.close(self._replica.leader_rpc_address() if err == errno.EAGAIN else None)
                return
            self._agent_registered(session, record, reported, frameworks)
        self._commit(SchedOp.AGENT_REGISTER, [agent_id, reg.node_id, reg.address, list(total)], done)

    def _agent_registered(self, session: Session, record: dict, reported: dict, frameworks: dict) -> None:
        agent_id = record["id"]
        agent = self._agents.get(agent_id)
        if agent is None:
            agent = self._agents[agent_id] = _Agent(record)
        elif agent.session is not None and agent.session is not session:
            agent.session.close()         # a newer stream of the same agent replaces it
        was_known = self._allocator.has_agent(agent_id)
        agent.record, agent.last_heard = record, self._clock()
        agent.session = None if session.closed else session
        agent.unreachable_pending = False
        self._rescind(self._allocator.add_agent(agent_id, record["node_id"], record["address"],
                                                tuple(record["resources"])))
        if not was_known:       # new to this master (or back from unreachable, with nothing active)
            for task in self._tasks.values():
                if task["agent_id"] == agent_id and task["state"] in ACTIVE:
                    self._allocator.hold(task["framework_id"], agent_id, tuple(task["spec"]["resources"]))
        session.send(pb.AgentCommand(registered=pb.AgentRegistered(
            agent_id=agent_id, heartbeat_interval_s=self.conf.agent_heartbeat_interval_s)))
        plan = plan_registration(agent_id, reported, self._tasks, set(self._launching))
        kills = {(task_id, frameworks.get(task_id, ""), model.REASON_GAVE_UP) for task_id in plan.kill}
        for task_id, framework_id, reason in sorted(kills | agent.kills):
            if reported.get(task_id) not in TERMINAL:
                session.send(pb.AgentCommand(kill=pb.KillTask(task_id=task_id, reason=reason,
                                                              framework_id=framework_id)))
        agent.kills.clear()
        for task_id in plan.relaunch:
            self._send_launch(self._tasks[task_id])
        for task_id in plan.lose:
            self._master_update(task_id, TaskState.TASK_LOST, model.REASON_AGENT_RESTARTED,
                                f"agent {agent_id} does not know this task")
        log.info("scheduler master: agent %s (%s) registered: %d tasks reported, %d killed, %d relaunched, "
                 "%d lost", agent_id, record["node_id"], len(reported), len(plan.kill), len(plan.relaunch),
                 len(plan.lose))

    def _agent_update(self, session: Session, status: pb.TaskStatus) -> None:
        if not status.uuid or not status.task_id:
            self._agent_error(session, errno.EINVAL, "a status update needs a task id and a uuid", "update",
                              status.task_id)
            return
        update = status_from_pb(status)
        update["agent_id"] = session.owner
        reported_state = status.state

        def done(result):
            err, message, value = result
            if err in (errno.EAGAIN, errno.ETIMEDOUT, errno.EIO):
                return                      # not recorded: the agent resends it
            session.send(pb.AgentCommand(ack=pb.AckUpdate(task_id=status.task_id, uuid=status.uuid)))
            if err:
                if err != errno.ESTALE:
                    self._agent_error(session, err, message, "update", status.task_id)
                if reported_state not in TERMINAL:
                    session.send(pb.AgentCommand(kill=pb.KillTask(task_id=status.task_id, reason=model.REASON_GAVE_UP,
                                                                  framework_id=status.framework_id)))
                return
            task, changed = value
            if changed:
                self._task_changed(task)
        self._commit(SchedOp.TASK_UPDATE, [update], done)

    def _master_update(self, task_id: str, state: TaskState, reason: str, message: str) -> None:
        """Commit a status the master makes up (LOST, KILLED) for a task."""
        status = {"task_id": task_id, "state": int(state), "reason": reason, "message": message,
                  "uuid": self._urandom(16), "timestamp": self._wall()}

        def done(result):
            err, message_, value = result
            if not err and value[1]:
                self._task_changed(value[0])
        self._commit(SchedOp.TASK_UPDATE, [status], done)

    def _task_changed(self, task: dict) -> None:
        """A committed status change: account resources, tell the framework."""
        old = self._tasks.get(task["id"])
        self._tasks[task["id"]] = task
        if task["state"] in TERMINAL and (old is None or old["state"] in ACTIVE):
            self._allocator.release(task["framework_id"], task["agent_id"], tuple(task["spec"]["resources"]))
            self._allocate_soon()
        self._forward(task)

    def _forward(self, task: dict) -> None:
        fw = self._frameworks.get(task["framework_id"])
        if fw is not None and fw.session is not None and not task["acked"]:
            fw.session.send(pb.FrameworkEvent(update=pb.StatusUpdate(status=status_pb(task["status"]))))
            self._last_sent[task["id"]] = self._clock()

    def _check_agents(self, now: float) -> None:
        last_heard = {a: ag.last_heard for a, ag in self._agents.items()
                      if ag.record["state"] == model.AGENT_REGISTERED and not ag.unreachable_pending}
        for agent_id in due_unreachable(last_heard, now, self.conf.agent_unreachable_after_s):
            self._mark_unreachable(agent_id)

    def _mark_unreachable(self, agent_id: str) -> None:
        agent = self._agents[agent_id]
        agent.unreachable_pending = True
        log.warning("scheduler master: agent %s silent for %.1fs: unreachable, its tasks LOST", agent_id,
                    self.conf.agent_unreachable_after_s)

        def done(result):
            err, message, statuses = result
            agent.unreachable_pending = False
            if err:
                log.info("scheduler master: marking %s unreachable failed: %s", agent_id, message)
                return
            agent.record = dict(agent.record, state=model.AGENT_UNREACHABLE)
            if agent.session is not None:
                agent.session.close()
                agent.session = None
            for status in statuses:
                task = self._tasks.get(status["task_id"])
                if task is not None:
                    self._task_changed(dict(task, state=status["state"], status=status, acked=False))
            self._rescind(self._allocator.remove_agent(agent_id))
        self._commit(SchedOp.AGENT_UNREACHABLE, [agent_id, self._urandom(16)], done)

    def _send_kill(self, task_id: str, agent_id: str, framework_id: str, reason: str) -> None:
        agent = self._agents.get(agent_id)
        if agent is None:
            return
        if agent.session is not None:
            agent.session.send(pb.AgentCommand(kill=pb.KillTask(task_id=task_id, reason=reason,
                                                                framework_id=framework_id)))
        else:
            agent.kills.add((task_id, framework_id, reason))     # sent when it registers again

    # -- frameworks -----------------------------------------------------------------------

    def _on_framework_call(self, session: Session, call: pb.FrameworkCall) -> None:
        if not self.leading or session.closed:
            return
        kind = call.WhichOneof("kind")
        if kind == "subscribe":
            self._subscribe(session, call.subscribe)
            return
        fw = self._frameworks.get(session.owner) if session.owner else None
        if fw is None or fw.session is not session:
            self._fw_error(session, errno.EINVAL, "subscribe first (or again: another stream took over "
                                                  "this framework)", kind or "")
            return
        handler = {"accept": self._accept, "decline": self._decline, "kill": self._kill,
                   "acknowledge": self._acknowledge, "reconcile": self._reconcile, "suppress": self._suppress,
                   "revive": self._revive, "teardown": self._teardown}.get(kind)
        if handler is None:
            self._fw_error(session, errno.EINVAL, "empty call", "")
            return
        handler(fw, getattr(call, kind))

    def _fw_error(self, session: Session, err: int, message: str, call: str, *, task_id: str = "",
                  offer_ids=()) -> None:
        session.send(pb.FrameworkEvent(error=pb.Error(errno=err, message=message, call=call, task_id=task_id,
                                                      offer_ids=list(offer_ids))))

    def _subscribe(self, session: Session, sub: pb.Subscribe) -> None:
        if session.owner:
            self._fw_error(session, errno.EINVAL, f"this stream already subscribed as {session.owner}",
                           "subscribe")
            return
        new = not sub.framework_id
        framework_id = sub.framework_id or f"fw-{self._urandom(8).hex()}"
        timeout_s = sub.failover_timeout_s or self.conf.framework_failover_timeout_default_s
        if not 0 < timeout_s <= limits.framework_failover_timeout_max_s:
            self._fw_error(session, errno.EINVAL, f"failover_timeout_s must be in (0, "
                                                  f"{limits.framework_failover_timeout_max_s}]", "subscribe")
            return
        session.owner = framework_id

        def done(result):
            err, message, record = result
            if err:
                session.owner = ""
                self._fw_error(session, err, f"subscribe refused: {message}", "subscribe")
                return
            self._subscribed(session, record)
        self._commit(SchedOp.FRAMEWORK_SUBSCRIBE, [framework_id, sub.name, timeout_s, new], done)

    def _subscribed(self, session: Session, record: dict) -> None:
        fw = self._frameworks.get(record["id"])
        if fw is None:
            fw = self._frameworks[record["id"]] = _Framework(record)
        if session.closed:         # the stream ended while the subscription was committed
            if fw.session is None:
                fw.record, fw.disconnected_at = record, self._clock()
                self._allocator.add_framework(record["id"])
                self._allocator.deactivate_framework(record["id"])
                self._commit(SchedOp.FRAMEWORK_DISCONNECT, [record["id"]], lambda result: None)
            return
        elif fw.session is not None and fw.session is not session:
            self._fw_error(fw.session, errno.EBUSY, "another stream subscribed as this framework", "subscribe")
            fw.session.close()
        fw.record, fw.session, fw.disconnected_at = record, session, None
        fw.removal_pending = False
        self._allocator.add_framework(record["id"])
        session.send(pb.FrameworkEvent(subscribed=pb.Subscribed(
            framework_id=record["id"], heartbeat_interval_s=self.conf.framework_heartbeat_interval_s)))
        fw.last_heartbeat = self._clock()
        for task in sorted(self._tasks.values(), key=lambda t: t["id"]):
            if task["framework_id"] == record["id"]:
                self._forward(task)       # every unacknowledged update, again
        log.info("scheduler master: framework %s (%s) subscribed", record["id"], record["name"])
        self._next_allocation = 0.0       # offers now, not at the next tick

    def _framework_disconnected(self, session: Session) -> None:
        framework_id = session.owner
        fw = self._frameworks.get(framework_id)
        if fw is None or fw.session is not session:
            return
        fw.session = None
        fw.disconnected_at = self._clock()
        self._drop_offers(framework_id, self._allocator.deactivate_framework(framework_id))
        self._commit(SchedOp.FRAMEWORK_DISCONNECT, [framework_id], lambda result: None)
        log.info("scheduler master: framework %s disconnected; failover timeout %.1fs", framework_id,
                 fw.record["failover_timeout_s"])

    def _check_frameworks(self, now: float) -> None:
        disconnected = {fid: (fw.disconnected_at, fw.record["failover_timeout_s"])
                        for fid, fw in self._frameworks.items()
                        if fw.session is None and fw.disconnected_at is not None and not fw.removal_pending}
        for framework_id in due_removal(disconnected, now):
            log.warning("scheduler master: framework %s did not come back within its failover timeout: "
                        "removing it and killing its tasks", framework_id)
            self._remove_framework(framework_id, model.REASON_FRAMEWORK_REMOVED)

    def _remove_framework(self, framework_id: str, reason: str, session: Session | None = None) -> None:
        fw = self._frameworks[framework_id]
        fw.removal_pending = True

        def done(result):
            err, message, to_kill = result
            fw.removal_pending = False
            if err and err != errno.ENOENT:
                if session is not None:
                    self._fw_error(session, err, f"teardown failed: {message}", "teardown")
                return
            for task_id, agent_id in to_kill or []:
                self._send_kill(task_id, agent_id, framework_id, reason)
            for task_id in [t for t, task in self._tasks.items() if task["framework_id"] == framework_id]:
                task = self._tasks.pop(task_id)
                if task["state"] in ACTIVE:
                    self._allocator.release(framework_id, task["agent_id"], tuple(task["spec"]["resources"]))
            self._allocator.remove_framework(framework_id)
            self._offers_by_fw.pop(framework_id, None)
            self._frameworks.pop(framework_id, None)
            if session is not None:
                session.close()
        self._commit(SchedOp.FRAMEWORK_REMOVE, [framework_id], done)

    def _teardown(self, fw: _Framework, _call) -> None:
        self._remove_framework(fw.record["id"], model.REASON_FRAMEWORK_REMOVED, fw.session)

    def _suppress(self, fw: _Framework, _call) -> None:
        self._rescind(self._allocator.suppress(fw.record["id"]))

    def _revive(self, fw: _Framework, _call) -> None:
        self._allocator.revive(fw.record["id"])
        self._next_allocation = 0.0

    def _decline(self, fw: _Framework, call: pb.Decline) -> None:
        framework_id = fw.record["id"]
        declined = self._allocator.decline(framework_id, list(call.offer_ids), call.refuse_seconds, self._clock())
        self._offers_by_fw[framework_id].difference_update(declined)

    def _kill(self, fw: _Framework, call: pb.Kill) -> None:
        task = self._tasks.get(call.task_id)
        if task is None or task["framework_id"] != fw.record["id"]:
            if call.task_id in self._launching:
                self._fw_error(fw.session, errno.EAGAIN, "the task's launch is being committed; kill it again",
                               "kill", task_id=call.task_id)
            else:
                self._fw_error(fw.session, errno.ENOENT, f"no active task {call.task_id!r} of this framework",
                               "kill", task_id=call.task_id)
            return
        if task["state"] in ACTIVE:
            self._send_kill(task["id"], task["agent_id"], task["framework_id"], model.REASON_KILLED_BY_FRAMEWORK)

    def _acknowledge(self, fw: _Framework, call: pb.Acknowledge) -> None:
        task = self._tasks.get(call.task_id)
        if task is None or task["acked"] or task["status"]["uuid"] != call.uuid or not call.uuid:
            return                  # a duplicate or an old update's ack: nothing to do

        def done(result):
            err, message, record = result
            if err:
                if err not in (errno.ESTALE, errno.ENOENT, errno.EAGAIN):
                    self._fw_error(fw.session, err, message, "acknowledge", task_id=call.task_id)
                return
            current = self._tasks.get(record["id"])
            if current is None or current["status"]["uuid"] != record["status"]["uuid"]:
                return
            if record["state"] in TERMINAL:
                self._tasks.pop(record["id"], None)
                self._last_sent.pop(record["id"], None)
            else:
                self._tasks[record["id"]] = record
        self._commit(SchedOp.TASK_ACK, [fw.record["id"], call.task_id, bytes(call.uuid)], done)

    def _reconcile(self, fw: _Framework, call: pb.Reconcile) -> None:
        framework_id = fw.record["id"]
        if len(call.task_ids) > limits.reconcile_tasks_max:
            self._fw_error(fw.session, errno.EINVAL, f"more than {limits.reconcile_tasks_max} task ids",
                           "reconcile")
            return
        if not call.task_ids:
            statuses = [t["status"] for t in sorted(self._tasks.values(), key=lambda t: t["id"])
                        if t["framework_id"] == framework_id]
        else:
            statuses = [self._reconcile_one(framework_id, task_id) for task_id in call.task_ids]
        for status in statuses:
            fw.session.send(pb.FrameworkEvent(update=pb.StatusUpdate(status=status_pb(status, uuid=b""))))

    def _reconcile_one(self, framework_id: str, task_id: str) -> dict:
        task = self._tasks.get(task_id)
        if task is None and task_id not in self._launching:
            try:    # a completed task the master no longer keeps in memory
                task = self._read(SchedOp.GET_TASK, task_id, linearizable=False)
            except (CisternError, ValueError):
                task = None
        if task_id in self._launching and task is None:
            return {"task_id": task_id, "framework_id": framework_id, "state": int(TaskState.TASK_STAGING),
                    "reason": model.REASON_RECONCILIATION, "message": "launch being committed",
                    "timestamp": self._wall()}
        if task is None or task["framework_id"] != framework_id:
            return {"task_id": task_id, "framework_id": framework_id, "state": int(TaskState.TASK_LOST),
                    "reason": model.REASON_RECONCILIATION, "message": "unknown task", "timestamp": self._wall()}
        return task["status"]

    # -- accept -> launch ------------------------------------------------------------------

    def _accept(self, fw: _Framework, call: pb.Accept) -> None:
        framework_id = fw.record["id"]
        offer_ids = list(call.offer_ids)
        if len(call.tasks) > limits.tasks_per_accept_max:
            self._fw_error(fw.session, errno.EINVAL, f"more than {limits.tasks_per_accept_max} tasks in one accept",
                           "accept", offer_ids=offer_ids)
            return
        good, seen = [], set()
        for task in call.tasks:
            spec = spec_from_pb(task)
            err, message = self._check_task(spec, seen, task.agent_id, offer_ids)
            seen.add(task.task_id)
            if err:
                self._refuse_task(fw, spec, err, message, offer_ids)
            else:
                good.append(spec)
        try:
            agent_id, _ = self._allocator.accept(framework_id, offer_ids,
                                                 [tuple(s["resources"]) for s in good],
                                                 call.refuse_seconds, self._clock())
        except AllocError as e:
            self._fw_error(fw.session, e.errno, f"accept refused: {e.message}", "accept", offer_ids=offer_ids)
            for spec in good:
                self._refuse_task(fw, spec, e.errno, e.message, offer_ids, event=False)
            return
        self._offers_by_fw[framework_id].difference_update(offer_ids)
        for spec in good:
            self._launch(fw, agent_id, spec)
        self._allocate_soon()       # what the tasks left of the offers

    def _check_task(self, spec: dict, seen: set, agent_id: str, offer_ids) -> tuple[int, str]:
        err, message = state_mod.check_spec(spec)
        if err:
            return err, message
        task_id = spec["task_id"]
        if task_id in seen or task_id in self._tasks or task_id in self._launching:
            return errno.EEXIST, f"task id {task_id!r} is taken"
        offer = self._allocator.offer(offer_ids[0]) if offer_ids else None
        if agent_id and offer is not None and agent_id != offer.agent_id:
            return errno.EINVAL, f"task names agent {agent_id!r} but the offer is on {offer.agent_id!r}"
        return 0, ""

    def _refuse_task(self, fw: _Framework, spec: dict, err: int, message: str, offer_ids, *,
                     event: bool = True) -> None:
        task_id = spec.get("task_id", "")
        if event:
            self._fw_error(fw.session, err, f"task {task_id!r} refused: {message}", "accept", task_id=task_id,
                           offer_ids=offer_ids)
        status = {"task_id": task_id, "framework_id": fw.record["id"], "state": int(TaskState.TASK_ERROR),
                  "reason": model.REASON_INVALID_LAUNCH, "message": message, "timestamp": self._wall()}
        fw.session.send(pb.FrameworkEvent(update=pb.StatusUpdate(status=status_pb(status, uuid=b""))))

    def _launch(self, fw: _Framework, agent_id: str, spec: dict) -> None:
        framework_id = fw.record["id"]
        task_id = spec["task_id"]
        resources = tuple(spec["resources"])
        self._launching[task_id] = (framework_id, agent_id, resources)

        def done(result):
            err, message, task = result
            self._launching.pop(task_id, None)
            if err:
                self._allocator.release(framework_id, agent_id, resources)
                if fw.session is not None:
                    self._refuse_task(fw, spec, err, message, [])
                return
            self._m.launches.inc()
            self._tasks[task_id] = task
            self._send_launch(task)
        self._commit(SchedOp.TASK_LAUNCH, [framework_id, agent_id, spec, self._urandom(16)], done)

    def _send_launch(self, task: dict) -> None:
        """Send a committed launch to its agent; if the agent has no stream
        now, it gets the launch when it registers again (``plan_registration``)."""
        agent = self._agents.get(task["agent_id"])
        if agent is not None and agent.session is not None:
            agent.session.send(pb.AgentCommand(launch=pb.LaunchTask(
                framework_id=task["framework_id"], task=spec_pb(task["spec"], task["agent_id"]))))

    # -- offers and timers ---------------------------------------------------------------

    def _allocate(self, now: float) -> None:
        by_fw: dict[str, list] = collections.defaultdict(list)
        for offer in self._allocator.allocate(now):
            by_fw[offer.framework_id].append(offer)
        for framework_id, offers in by_fw.items():
            fw = self._frameworks.get(framework_id)
            if fw is None or fw.session is None:
                self._allocator.decline(framework_id, [o.offer_id for o in offers], 0.001, now)
                continue
            self._offers_by_fw[framework_id].update(o.offer_id for o in offers)
            fw.session.send(pb.FrameworkEvent(offers=pb.Offers(offers=[
                pb.Offer(offer_id=o.offer_id, agent_id=o.agent_id, node_id=o.node_id, address=o.address,
                         resources=pb.Resources(cpus=o.resources[0], mem_bytes=o.resources[1],
                                                disk_bytes=o.resources[2]))
                for o in offers])))

    def _allocate_soon(self) -> None:
        """Resources came free: offer them within ``allocation_soon_s`` of
        the last allocation instead of waiting a whole interval (the batch
        still bounds how often offers go out)."""
        self._next_allocation = min(self._next_allocation, self._last_allocation + self.conf.allocation_soon_s)

    def _rescind(self, offers) -> None:
        for offer in offers:
            self._offers_by_fw[offer.framework_id].discard(offer.offer_id)
            fw = self._frameworks.get(offer.framework_id)
            if fw is not None and fw.session is not None:
                fw.session.send(pb.FrameworkEvent(rescind=pb.Rescind(offer_id=offer.offer_id)))

    def _drop_offers(self, framework_id: str, offers) -> None:
        for offer in offers:
            self._offers_by_fw[framework_id].discard(offer.offer_id)

    def _resend_updates(self, now: float) -> None:
        for task in self._tasks.values():
            if not task["acked"] and now - self._last_sent.get(task["id"], 0.0) >= self.conf.update_resend_interval_s:
                self._forward(task)

    def _heartbeat_frameworks(self, now: float) -> None:
        for fw in self._frameworks.values():
            if fw.session is not None and now - fw.last_heartbeat >= self.conf.framework_heartbeat_interval_s:
                fw.last_heartbeat = now
                fw.session.send(pb.FrameworkEvent(heartbeat=pb.Heartbeat()))

    # -- status ----------------------------------------------------------------------

    def _status(self) -> dict:
        counts = self._read(SchedOp.COUNTS, linearizable=False)
        # One pass over the open tasks (this runs on the loop thread).
        used_by_agent: dict[str, tuple] = {}
        tasks_by_agent: collections.Counter = collections.Counter()
        tasks_by_framework: collections.Counter = collections.Counter()
        for task in self._tasks.values():
            if task["state"] in ACTIVE:
                cpus, mem, disk = task["spec"]["resources"]
                used = used_by_agent.get(task["agent_id"], (0.0, 0, 0))
                used_by_agent[task["agent_id"]] = (used[0] + cpus, used[1] + mem, used[2] + disk)
                tasks_by_agent[task["agent_id"]] += 1
                tasks_by_framework[task["framework_id"]] += 1
        agents = []
        for agent_id, agent in sorted(self._agents.items()):
            r = agent.record
            agents.append({"agent_id": agent_id, "node_id": r["node_id"], "address": r["address"],
                           "state": r["state"], "total": list(r["resources"]),
                           "used": list(used_by_agent.get(agent_id, (0.0, 0, 0))),
                           "tasks": tasks_by_agent[agent_id], "connected": agent.session is not None})
        frameworks = [{"framework_id": fid, "name": fw.record["name"], "connected": fw.session is not None,
                       "tasks": tasks_by_framework[fid],
                       "failover_timeout_s": fw.record["failover_timeout_s"]}
                      for fid, fw in sorted(self._frameworks.items())]
        return {"tasks_by_state": counts["tasks_by_state"], "completed_remembered": counts["completed"],
                "agents": agents, "frameworks": frameworks, "offers_outstanding": self._allocator.outstanding(),
                "launching": len(self._launching)}

    def _update_gauges(self) -> None:
        by_state = collections.Counter(TaskState(t["state"]).name for t in self._tasks.values())
        for state in TaskState:
            self._m.tasks.labels(state.name).set(by_state.get(state.name, 0))
        by_agent_state = collections.Counter(a.record["state"] for a in self._agents.values())
        for state in (model.AGENT_REGISTERED, model.AGENT_UNREACHABLE):
            self._m.agents.labels(state).set(by_agent_state.get(state, 0))
        self._m.frameworks.set(sum(1 for fw in self._frameworks.values() if fw.session is not None))
        self._m.offers.set(self._allocator.outstanding())


def _check_register(reg: pb.AgentRegister, total: tuple) -> str:
    """'' when a registration is acceptable, else why not."""
    if not reg.node_id:
        return "register needs the node id"
    if not reg.address:
        return "register needs the node's address"
    if max(len(reg.agent_id.encode()), len(reg.node_id.encode())) > limits.id_length_max_bytes:
        return "agent or node id too long"
    if total[0] <= 0 or total[1] <= 0 or total[2] < 0:
        return "register needs positive cpus and memory"
    return ""
