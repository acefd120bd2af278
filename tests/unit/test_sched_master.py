"""The master's decisions without gRPC or Raft: the pure helpers, and the
``Master`` driven event by event (its loop not running) over a fake replica
that applies writes at once to a real ``SchedState`` in a throwaway LMDB
store, with a manual clock. Events in (stream messages, clock ticks),
instructions out (the messages in each session's outbox)."""

from __future__ import annotations

import os
import queue
from concurrent.futures import Future

import pytest

from cistern.core.errors import CisternError, NotLeader
from cistern.metadata.store import Store
from cistern.scheduler import model
from cistern.scheduler.master import (Master, MasterConf, Session, due_removal, due_unreachable,
                                      plan_registration)
from cistern.scheduler.model import SchedOp, TaskState
from cistern.scheduler.proto import scheduler_pb2 as pb
from cistern.scheduler.state import SchedState

MiB = 1 << 20


# -- pure helpers ---------------------------------------------------------------

def _task(agent, state):
    return {"agent_id": agent, "state": int(state)}


def test_plan_registration_kills_what_the_master_gave_up_on_and_loses_what_the_agent_forgot():
    tasks = {"run": _task("a1", TaskState.TASK_RUNNING), "lost": _task("a1", TaskState.TASK_LOST),
             "elsewhere": _task("a2", TaskState.TASK_RUNNING), "forgot": _task("a1", TaskState.TASK_RUNNING),
             "unsent": _task("a1", TaskState.TASK_STAGING), "coming": _task("a1", TaskState.TASK_STAGING)}
    reported = {"run": TaskState.TASK_RUNNING, "lost": TaskState.TASK_RUNNING, "elsewhere": TaskState.TASK_RUNNING,
                "unknown": TaskState.TASK_STARTING, "ended": TaskState.TASK_FINISHED}
    plan = plan_registration("a1", reported, tasks, launching={"coming"})
    assert plan.kill == ("elsewhere", "lost", "unknown")
    assert plan.relaunch == ("unsent",)
    assert plan.lose == ("forgot",)


def test_timings_from_the_environment_are_checked():
    conf = MasterConf.from_env({"CISTERN_SCHED_AGENT_UNREACHABLE_AFTER_S": "2", "CISTERN_SCHED_X": "1"})
    assert conf.agent_unreachable_after_s == 2.0
    with pytest.raises(CisternError, match="not a number"):
        MasterConf.from_env({"CISTERN_SCHED_OFFER_TIMEOUT_S": "soon"})
    conf.agent_heartbeat_interval_s = 1.0
    with pytest.raises(CisternError, match="agent_heartbeat_interval_s \\* 3"):
        conf.validate()


def test_due_timers():
    assert due_unreachable({"a": 0.0, "b": 5.0}, 6.0, 5.0) == ["a"]
    assert due_removal({"f": (1.0, 2.0), "g": (1.0, 10.0)}, 3.0) == ["f"]


# -- the master, event by event ------------------------------------------------------

class FakeReplica:
    """Applies each write at once (one LMDB transaction) and answers reads
    from the applied state; leadership is a flag."""

    def __init__(self, path, clock):
        self.store = Store(str(path), sync=False)
        self.state = SchedState(self.store)
        self.clock = clock
        self.leader = True
        with self.store.env.begin(write=True) as txn:
            self.state.bootstrap(txn)

    def is_leader(self):
        return self.leader

    def leader_rpc_address(self):
        return "" if self.leader else "other:1"

    def submit_write(self, client_id, seq, acked_below, code, args):
        future = Future()
        if not self.leader:
            future.set_exception(NotLeader("other:1"))
            return future
        with self.store.env.begin(write=True) as txn:
            err, message, value = self.state.apply(txn, int(self.clock() * 1e9), code, model.unpack(args))
        future.set_exception(CisternError(err, message)) if err else future.set_result(value)
        return future

    def submit_read(self, code, args, linearizable=True):
        future = Future()
        with self.store.env.begin() as txn:
            err, message, value = self.state.read(txn, code, model.unpack(args))
        future.set_exception(CisternError(err, message)) if err else future.set_result(value)
        return future


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Harness:
    def __init__(self, path, replica=None, clock=None, urandom=None):
        self.clock = clock or Clock()
        self.replica = replica or FakeReplica(path, self.clock)
        self.master = Master(self.replica, conf=MasterConf(agent_unreachable_after_s=5.0,
                                                           agent_reregister_grace_s=10.0,
                                                           update_resend_interval_s=2.0),
                             clock=self.clock, wall=lambda: 1.7e9, urandom=urandom or os.urandom)

    def pump(self, advance_s: float = 0.0):
        """Run the queued events, advance the clock, run the timers and
        the events they caused."""
        self._events()
        self.clock.now += advance_s
        self.master._timers(self.clock.now)
        self._events()

    def _events(self):
        """What the master's loop does with its queue, without the waiting."""
        master = self.master
        while True:
            event, master._carried = master._carried, None
            if event is None:
                try:
                    event = master._events.get_nowait()
                except queue.Empty:
                    return
            master._run_events(event)

    def session(self, kind):
        session = self.master.open_session(kind)
        self.pump()
        return session

    def agent(self, node="n1", agent_id="", tasks=()):
        session = self.session("agent")
        self.master.agent_message(session, pb.AgentMessage(register=pb.AgentRegister(
            agent_id=agent_id, node_id=node, address=node + ":1",
            total=pb.Resources(cpus=4, mem_bytes=4096 * MiB), tasks=list(tasks))))
        self.pump()
        return session, drain(session, "registered")[0].agent_id

    def framework(self, framework_id="", timeout_s=30.0):
        session = self.session("framework")
        self.master.framework_call(session, pb.FrameworkCall(subscribe=pb.Subscribe(
            framework_id=framework_id, name="t", failover_timeout_s=timeout_s)))
        self.pump()
        return session, drain(session, "subscribed")[0].framework_id

    def read(self, code, *args):
        return self.replica.submit_read(code, model.sched_args(*args)).result()


def drain(session: Session, kind: str | None = None) -> list:
    """Take the messages (of one kind: their payloads) out of a session's
    outbox; messages of other kinds stay for a later call."""
    kept = session.__dict__.setdefault("kept", [])
    while True:
        try:
            message = session.outbox.get_nowait()
        except queue.Empty:
            break
        if isinstance(message, (pb.AgentCommand, pb.FrameworkEvent)):
            kept.append(message)
    taken = [m for m in kept if kind is None or m.WhichOneof("kind") == kind]
    kept[:] = [m for m in kept if m not in taken]
    return taken if kind is None else [getattr(m, kind) for m in taken]


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path / "s")
    harness.pump()
    assert harness.master.leading
    yield harness
    harness.replica.store.close()


def launch(h, fw, task_id="t1", cpus=1.0):
    h.pump(0.2)
    offer = drain(fw, "offers")[-1].offers[0]
    h.master.framework_call(fw, pb.FrameworkCall(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=[
        pb.TaskSpec(task_id=task_id, argv=["true"], resources=pb.Resources(cpus=cpus, mem_bytes=64 * MiB))])))
    h.pump()
    return offer


def test_a_launch_is_committed_before_it_is_sent(h):
    agent, agent_id = h.agent()
    fw, framework_id = h.framework()
    launch(h, fw)
    (sent,) = drain(agent, "launch")
    assert sent.task.task_id == "t1" and sent.framework_id == framework_id
    task = h.read(SchedOp.GET_TASK, "t1")
    assert task["state"] == TaskState.TASK_STAGING and task["agent_id"] == agent_id


def test_update_committed_then_acked_then_forwarded_and_resent_until_acknowledged(h):
    agent, agent_id = h.agent()
    fw, _ = h.framework()
    launch(h, fw)
    h.master.agent_message(agent, pb.AgentMessage(update=pb.StatusUpdate(status=pb.TaskStatus(
        task_id="t1", state=pb.TASK_RUNNING, uuid=b"r"))))
    h.pump()
    assert [a.uuid for a in drain(agent, "ack")] == [b"r"]   # only once the state has it:
    assert h.read(SchedOp.GET_TASK, "t1")["state"] == TaskState.TASK_RUNNING
    assert [u.status.uuid for u in drain(fw, "update")] == [b"r"]
    h.pump(1.0)
    assert drain(fw, "update") == []
    h.pump(1.5)
    assert [u.status.uuid for u in drain(fw, "update")] == [b"r"]        # resent: not acknowledged
    h.master.framework_call(fw, pb.FrameworkCall(acknowledge=pb.Acknowledge(task_id="t1", uuid=b"r")))
    h.master.agent_message(agent, pb.AgentMessage(heartbeat=pb.Heartbeat()))
    h.pump(3.0)
    assert drain(fw, "update") == []
    assert h.read(SchedOp.GET_TASK, "t1")["acked"]


def test_silent_agent_loses_its_tasks_and_is_told_to_kill_them_on_return(h):
    agent, agent_id = h.agent()
    fw, _ = h.framework()
    launch(h, fw)                         # 0.2 s after the agent's last word
    h.pump(4.7)
    assert drain(fw, "update") == []
    h.pump(0.2)
    (lost,) = drain(fw, "update")
    assert lost.status.state == pb.TASK_LOST and lost.status.reason == "agent lost"
    assert h.read(SchedOp.GET_AGENT, agent_id)["state"] == model.AGENT_UNREACHABLE
    again, _ = h.agent(agent_id=agent_id, tasks=[pb.TaskStatus(task_id="t1", state=pb.TASK_RUNNING)])
    assert [k.task_id for k in drain(again, "kill")] == ["t1"]


def test_a_launch_that_never_reached_the_agent_is_sent_again_a_forgotten_running_task_is_lost(h):
    agent, agent_id = h.agent()
    fw, _ = h.framework()
    launch(h, fw, "t1")
    launch(h, fw, "t2")
    h.master.agent_message(agent, pb.AgentMessage(update=pb.StatusUpdate(status=pb.TaskStatus(
        task_id="t2", state=pb.TASK_RUNNING, uuid=b"r"))))
    h.pump()
    drain(fw, "update")
    again, _ = h.agent(agent_id=agent_id, tasks=[])        # a new stream; it knows neither task
    assert drain(again, "kill") == []
    assert [m.task.task_id for m in drain(again, "launch")] == ["t1"]
    (lost,) = drain(fw, "update")
    assert lost.status.task_id == "t2" and lost.status.state == pb.TASK_LOST
    assert lost.status.reason == "agent restarted"


def test_an_agent_whose_stream_ended_is_not_offered_until_it_registers_again(h):
    agent, agent_id = h.agent()
    fw, _ = h.framework()
    h.pump(0.2)
    (offer,) = drain(fw, "offers")[-1].offers
    h.master.session_ended(agent)
    h.pump(0.2)
    assert [r.offer_id for r in drain(fw, "rescind")] == [offer.offer_id]
    assert drain(fw, "offers") == []
    h.agent(agent_id=agent_id)
    h.pump(0.2)
    assert [o.agent_id for o in drain(fw, "offers")[-1].offers] == [agent_id]


def test_framework_past_its_failover_timeout_is_removed_and_its_tasks_killed(h):
    agent, _ = h.agent()
    fw, framework_id = h.framework(timeout_s=3.0)
    launch(h, fw)
    h.master.session_ended(fw)
    h.pump(2.9)
    assert h.read(SchedOp.GET_FRAMEWORK, framework_id)["connected"] is False
    assert drain(agent, "kill") == []
    h.pump(0.2)
    assert [(k.task_id, k.reason) for k in drain(agent, "kill")] == [("t1", "framework removed")]
    assert h.read(SchedOp.GET_FRAMEWORK, framework_id) is None


def test_a_new_master_loads_the_state_and_gives_agents_a_grace_period(tmp_path):
    first = Harness(tmp_path / "s")
    first.pump()
    agent, agent_id = first.agent()
    fw, framework_id = first.framework()
    launch(first, fw)
    # Another replica's master takes over the same replicated state.
    second = Harness(None, replica=first.replica, clock=first.clock)
    second.pump()
    status = second.master._status()
    assert status["tasks_by_state"] == {"TASK_STAGING": 1}
    assert [f["framework_id"] for f in status["frameworks"]] == [framework_id]
    second.pump(9.0)                      # within the grace period: still registered
    assert second.read(SchedOp.GET_AGENT, agent_id)["state"] == model.AGENT_REGISTERED
    fw2 = second.session("framework")
    second.master.framework_call(fw2, pb.FrameworkCall(subscribe=pb.Subscribe(framework_id=framework_id)))
    second.pump(1.2)                      # past it: unreachable, the task LOST and reported
    assert second.read(SchedOp.GET_AGENT, agent_id)["state"] == model.AGENT_UNREACHABLE
    updates = drain(fw2, "update")
    assert [(u.status.task_id, u.status.state) for u in updates] == [("t1", pb.TASK_LOST)]
    first.replica.store.close()


def test_events_run_in_order_in_bounded_passes(h):
    from cistern.scheduler import master as master_mod

    seen = []
    for i in range(master_mod.events_per_pass_max * 2 + 5):
        h.master.post(seen.append, i)
    h.master._run_events(h.master._events.get_nowait())
    assert seen == list(range(master_mod.events_per_pass_max))     # then the timers get a look in
    h.pump()
    assert seen == list(range(master_mod.events_per_pass_max * 2 + 5))


def test_losing_leadership_ends_every_stream_with_the_leader_hint(h):
    agent, _ = h.agent()
    fw, _ = h.framework()
    h.replica.leader = False
    h.pump(0.2)
    assert not h.master.leading
    assert agent.closed and fw.closed and agent.leader_hint == "other:1"
    assert h.master.open_session("agent") is None


# -- a seeded simulation: agents, frameworks and masters that fail -------------------

class SimAgent:
    """An agent that runs launched tasks, finishes them at random, and
    retries every update until acked; it may go silent or reconnect."""

    def __init__(self, node):
        self.node = node
        self.agent_id = ""
        self.session = None
        self.running: dict[str, int] = {}     # task id -> state
        self.unacked: dict[str, tuple] = {}   # task id -> (state, uuid) of its latest update
        self.silent = False
        self.n = 0

    def connect(self, h):
        session = h.master.open_session("agent")
        if session is None:
            self.session = None
            return
        h.pump()
        h.master.agent_message(session, pb.AgentMessage(register=pb.AgentRegister(
            agent_id=self.agent_id, node_id=self.node, address=self.node + ":1",
            total=pb.Resources(cpus=2, mem_bytes=2048 * MiB),
            tasks=[pb.TaskStatus(task_id=t, state=s) for t, s in self.running.items()])))
        self.session = session

    def step(self, h, rng):
        if self.session is None or self.session.closed:
            self.session = None
            return
        for message in drain(self.session):
            kind = message.WhichOneof("kind")
            if kind == "registered":
                self.agent_id = message.registered.agent_id
            elif kind == "launch":
                self.report(message.launch.task.task_id, pb.TASK_RUNNING)
            elif kind == "kill":
                if message.kill.task_id in self.running:
                    self.report(message.kill.task_id, pb.TASK_KILLED)
            elif kind == "ack":
                if self.unacked.get(message.ack.task_id, (0, b""))[1] == message.ack.uuid:
                    del self.unacked[message.ack.task_id]
        for task_id in list(self.running):
            if self.running[task_id] == pb.TASK_RUNNING and rng.random() < 0.2:
                self.report(task_id, rng.choice([pb.TASK_FINISHED, pb.TASK_FAILED]))
        if self.agent_id and not self.silent:
            h.master.agent_message(self.session, pb.AgentMessage(heartbeat=pb.Heartbeat()))
            for task_id, (state, uuid) in sorted(self.unacked.items()):
                h.master.agent_message(self.session, pb.AgentMessage(update=pb.StatusUpdate(
                    status=pb.TaskStatus(task_id=task_id, state=state, uuid=uuid))))

    def report(self, task_id, state):
        self.n += 1
        self.running[task_id] = state
        self.unacked[task_id] = (state, f"{self.node}-{self.n}".encode())
        if state not in (pb.TASK_STAGING, pb.TASK_STARTING, pb.TASK_RUNNING):
            del self.running[task_id]


class SimFramework:
    """Launches tasks on its offers and acknowledges every update; records
    the terminal updates it is told of (never two per task)."""

    def __init__(self, name, tasks_max):
        self.name = name
        self.framework_id = ""
        self.session = None
        self.tasks_max = tasks_max
        self.launched = 0
        self.accepted: set[str] = set()
        self.terminal: dict[str, tuple] = {}

    def connect(self, h):
        session = h.master.open_session("framework")
        if session is None:
            self.session = None
            return
        h.pump()
        h.master.framework_call(session, pb.FrameworkCall(subscribe=pb.Subscribe(
            framework_id=self.framework_id, name=self.name, failover_timeout_s=1e5)))
        self.session = session

    def step(self, h, rng):
        if self.session is None or self.session.closed:
            self.session = None
            return
        for message in drain(self.session):
            kind = message.WhichOneof("kind")
            if kind == "subscribed":
                self.framework_id = message.subscribed.framework_id
                # An accept may have died with the old master: ask about every open task.
                unsettled = sorted(self.accepted - set(self.terminal) - _refused(self))
                h.master.framework_call(self.session, pb.FrameworkCall(reconcile=pb.Reconcile(task_ids=unsettled)))
            elif kind == "offers":
                for offer in message.offers.offers:
                    self.use(h, offer, rng)
            elif kind == "update":
                self.updated(h, message.update.status)
            elif kind == "error":
                assert message.error.call == "accept", message.error

    def use(self, h, offer, rng):
        retry = _refused(self)
        count = min(rng.randint(0, 3), self.tasks_max - self.launched + len(retry))
        tasks = []
        for _ in range(count):
            if retry:                            # refused before any commit: submit it again
                task_id = retry.pop()
            else:
                self.launched += 1
                task_id = f"{self.name}-{self.launched}"
            self.accepted.add(task_id)
            tasks.append(pb.TaskSpec(task_id=task_id, argv=["x"], resources=pb.Resources(cpus=0.5, mem_bytes=MiB * 64)))
        h.master.framework_call(self.session, pb.FrameworkCall(accept=pb.Accept(offer_ids=[offer.offer_id],
                                                                                tasks=tasks)))

    def updated(self, h, status):
        if status.uuid:
            h.master.framework_call(self.session, pb.FrameworkCall(acknowledge=pb.Acknowledge(
                task_id=status.task_id, uuid=status.uuid)))
        if status.state == pb.TASK_ERROR and not status.uuid:
            _refused(self).add(status.task_id)      # refused before any commit (a stale offer)
        if status.state == pb.TASK_LOST and status.reason == "reconciliation" and status.task_id not in self.terminal:
            _refused(self).add(status.task_id)      # the master never heard of it: its accept was lost
        if status.state in (pb.TASK_FINISHED, pb.TASK_FAILED, pb.TASK_KILLED, pb.TASK_LOST) and status.uuid:
            seen = self.terminal.setdefault(status.task_id, (status.state, status.uuid))
            assert seen == (status.state, status.uuid), f"{status.task_id} terminal twice: {seen} then {status}"


@pytest.mark.parametrize("seed", range(6))
def test_seeded_simulation_no_task_is_terminal_twice_or_forgotten(tmp_path, seed):
    import random

    rng = random.Random(seed)
    h = Harness(tmp_path / "s", urandom=rng.randbytes)
    h.pump()
    agents = [SimAgent(f"n{i}") for i in range(3)]
    frameworks = [SimFramework(f"f{i}", 25) for i in range(2)]
    for actor in agents + frameworks:
        actor.connect(h)
    for step in range(400):
        event = rng.random()
        if event < 0.01:                        # master failover: the streams break, a new master takes over
            for actor in agents + frameworks:
                actor.session = None
            h = Harness(None, replica=h.replica, clock=h.clock, urandom=rng.randbytes)
            h.pump()
        elif event < 0.03:
            agent = rng.choice(agents)          # its stream broke
            if agent.session is not None:
                h.master.session_ended(agent.session)
            agent.session = None
        elif event < 0.04:
            agent = rng.choice(agents)
            agent.silent = not agent.silent
        for actor in agents + frameworks:
            if actor.session is None and not getattr(actor, "silent", False):
                actor.connect(h)
            actor.step(h, rng)
        h.pump(0.3)
        with h.replica.store.env.begin() as txn:
            from cistern.scheduler.state import check_invariants
            check_invariants(h.replica.state, txn)
    # Heal: everyone talks again until every task has ended and been acknowledged.
    for agent in agents:
        agent.silent = False
    for _ in range(300):
        for actor in agents + frameworks:
            if actor.session is None:
                actor.connect(h)
            actor.step(h, rng)
        h.pump(0.3)
        if all(len(f.terminal) == f.tasks_max for f in frameworks) and \
                not any(a.running or a.unacked for a in agents):
            break
    for fw in frameworks:
        assert fw.accepted <= set(fw.terminal) | _refused(fw), f"seed {seed}: tasks never ended"
        assert len(fw.terminal) == fw.tasks_max, f"seed {seed}: not every task ran ({sorted(fw.terminal)})"
    assert not any(a.running for a in agents), f"seed {seed}: agents still run tasks the master forgot"
    counts = h.read(SchedOp.COUNTS)["tasks_by_state"]
    assert not {"TASK_STAGING", "TASK_STARTING", "TASK_RUNNING"} & set(counts), counts
    h.replica.store.close()


def _refused(fw: SimFramework) -> set:
    """Tasks to submit again: refused before any commit (TASK_ERROR, no
    uuid: a stale offer), or unknown to the master (the accept was lost)."""
    return fw.__dict__.setdefault("refused", set())
