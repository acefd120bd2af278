"""The scheduler master in a real 3-replica metad cluster (``cistern meta``
processes), driven over its real proto by a scripted agent stream and a
framework stream, both through ``scheduler.client.MasterConnection``: no
fakes on the master's side. Timings are shortened with ``CISTERN_SCHED_*``
variables."""

from __future__ import annotations

import errno
import json
import queue
import subprocess
import threading
import time

import pytest

from cistern.metadata.proc_testing import MetaCluster, cistern_command
from cistern.scheduler.client import MasterConnection, master_status
from cistern.scheduler.proto import scheduler_pb2 as pb

pytestmark = [pytest.mark.timeout(180)]

ENV = {
    "CISTERN_SCHED_AGENT_HEARTBEAT_INTERVAL_S": "0.2",
    "CISTERN_SCHED_AGENT_UNREACHABLE_AFTER_S": "1.5",
    "CISTERN_SCHED_AGENT_REREGISTER_GRACE_S": "6",
    "CISTERN_SCHED_UPDATE_RESEND_INTERVAL_S": "1",
    "CISTERN_SCHED_FRAMEWORK_HEARTBEAT_INTERVAL_S": "0.5",
}
MiB = 1 << 20
WAIT_S = 20.0


@pytest.fixture
def cluster(tmp_path):
    with MetaCluster(tmp_path, 3, env=ENV) as c:
        yield c


class Scripted:
    """One stream to the master whose incoming messages land in a queue."""

    kind = ""

    def __init__(self, addresses):
        self.inbox: queue.Queue = queue.Queue()
        self.connects = 0
        self.conn = MasterConnection(addresses, self.open_stream, on_connect=self._on_connect,
                                     on_message=lambda m: self.inbox.put((self.connects, m)), name=self.kind)

    def _on_connect(self, address):
        self.connects += 1
        return self.first_messages()

    def expect(self, kind: str, where=lambda m: True, timeout_s: float = WAIT_S):
        """The next incoming message of ``kind`` satisfying ``where``
        (others are skipped)."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            try:
                stream, message = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            got = message.WhichOneof("kind")
            seen.append(got)
            if got == "offers" and stream != self.connects:
                continue              # made by a master (or on a stream) that is gone
            if got == kind and where(getattr(message, kind)):
                return getattr(message, kind)
        raise AssertionError(f"{self.kind}: no {kind} within {timeout_s}s (saw {seen[-20:]})")

    def close(self):
        self.conn.close()


class Agent(Scripted):
    """A scripted agent: registers with what it 'runs', heartbeats."""

    kind = "agent"

    def __init__(self, addresses, node_id="n1", cpus=4.0, mem=4096 * MiB):
        self.node_id, self.cpus, self.mem = node_id, cpus, mem
        self.agent_id = ""
        self.running: dict[str, int] = {}          # task id -> state, reported on (re)register
        self.beating = threading.Event()
        self.beating.set()
        self._stop = threading.Event()
        super().__init__(addresses)
        self._beat = threading.Thread(target=self._heartbeats, daemon=True)
        self._beat.start()

    def open_stream(self, stub, requests):
        return stub.AgentStream(requests)

    def first_messages(self):
        return [pb.AgentMessage(register=pb.AgentRegister(
            agent_id=self.agent_id, node_id=self.node_id, address=f"{self.node_id}:9",
            total=pb.Resources(cpus=self.cpus, mem_bytes=self.mem),
            tasks=[pb.TaskStatus(task_id=t, state=s) for t, s in self.running.items()]))]

    def registered(self):
        reply = self.expect("registered")
        self.agent_id = reply.agent_id
        return reply

    def _heartbeats(self):
        while not self._stop.wait(0.2):
            if self.beating.is_set():
                self.conn.send(pb.AgentMessage(heartbeat=pb.Heartbeat()))

    def update(self, task_id, state, uuid, **fields):
        self.running[task_id] = state
        self.conn.send(pb.AgentMessage(update=pb.StatusUpdate(status=pb.TaskStatus(
            task_id=task_id, state=state, uuid=uuid, agent_id=self.agent_id, **fields))))

    def close(self):
        self._stop.set()
        super().close()


class Framework(Scripted):
    kind = "framework"

    def __init__(self, addresses, name="test", failover_timeout_s=60.0):
        self.name, self.failover_timeout_s = name, failover_timeout_s
        self.framework_id = ""
        super().__init__(addresses)

    def open_stream(self, stub, requests):
        return stub.FrameworkStream(requests)

    def first_messages(self):
        return [pb.FrameworkCall(subscribe=pb.Subscribe(framework_id=self.framework_id, name=self.name,
                                                        failover_timeout_s=self.failover_timeout_s))]

    def subscribed(self):
        reply = self.expect("subscribed")
        self.framework_id = reply.framework_id
        return reply

    def call(self, **kw):
        assert self.conn.send(pb.FrameworkCall(**kw))

    def offer(self, agent_id=None):
        offers = self.expect("offers", lambda o: any(agent_id in (None, x.agent_id) for x in o.offers))
        return [x for x in offers.offers if agent_id in (None, x.agent_id)][0]

    def launch(self, offer, task_id, argv=("/bin/true",), cpus=0.5, mem=64 * MiB):
        task = pb.TaskSpec(task_id=task_id, argv=list(argv), resources=pb.Resources(cpus=cpus, mem_bytes=mem))
        self.call(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=[task]))


class Unknown(Framework):
    """A framework that claims an id the master never gave out."""

    def first_messages(self):
        return [pb.FrameworkCall(subscribe=pb.Subscribe(framework_id="fw-does-not-exist", name="x"))]


def task_update(framework, task_id, state, timeout_s: float = WAIT_S):
    return framework.expect("update", lambda u: u.status.task_id == task_id and u.status.state == state,
                            timeout_s=timeout_s)


def test_offer_accept_launch_update_ack_end_to_end(cluster):
    agent = Agent(cluster.addresses)
    fw = Framework(cluster.addresses)
    try:
        registered = agent.registered()
        assert registered.agent_id.startswith("n1-") and registered.heartbeat_interval_s == pytest.approx(0.2)
        fw.subscribed()
        offer = fw.offer()
        assert offer.agent_id == agent.agent_id and offer.node_id == "n1" and offer.address == "n1:9"
        assert offer.resources.cpus == pytest.approx(4.0) and offer.resources.mem_bytes == 4096 * MiB

        fw.launch(offer, "t1", argv=["wc", "-l"])
        launch = agent.expect("launch")
        assert launch.framework_id == fw.framework_id and launch.task.task_id == "t1"
        assert list(launch.task.argv) == ["wc", "-l"] and launch.task.agent_id == agent.agent_id

        agent.update("t1", pb.TASK_RUNNING, b"u-running")
        ack = agent.expect("ack")
        assert (ack.task_id, ack.uuid) == ("t1", b"u-running")      # acked once committed
        running = task_update(fw, "t1", pb.TASK_RUNNING).status
        assert running.uuid == b"u-running" and running.agent_id == agent.agent_id and running.node_id == "n1"
        fw.call(acknowledge=pb.Acknowledge(task_id="t1", uuid=running.uuid))

        agent.update("t1", pb.TASK_FINISHED, b"u-done", exit_code=0, stdout_tail=b"3\n")
        agent.expect("ack", lambda a: a.uuid == b"u-done")
        done = task_update(fw, "t1", pb.TASK_FINISHED).status
        assert done.stdout_tail == b"3\n"
        fw.call(acknowledge=pb.Acknowledge(task_id="t1", uuid=done.uuid))

        status = _wait_status(cluster, lambda s: s.tasks_by_state.get("TASK_FINISHED") == 1)
        assert [a.agent_id for a in status.agents] == [agent.agent_id] and status.agents[0].tasks == 0
        assert [f.framework_id for f in status.frameworks] == [fw.framework_id]
        # `cistern status` shows the scheduler's line.
        out = subprocess.run(cistern_command() + ["status", "--json", "--cluster", ",".join(cluster.addresses)],
                             capture_output=True, text=True, timeout=60)
        sched = json.loads(out.stdout)["scheduler"]
        assert sched["tasks_by_state"] == {"TASK_FINISHED": 1} and sched["agents"][0]["state"] == "registered"
        # The acknowledged, finished task still answers an explicit reconcile.
        fw.call(reconcile=pb.Reconcile(task_ids=["t1", "never"]))
        assert task_update(fw, "t1", pb.TASK_FINISHED).status.uuid == b""
        unknown = task_update(fw, "never", pb.TASK_LOST).status
        assert unknown.reason == "reconciliation" and unknown.uuid == b""
    finally:
        agent.close()
        fw.close()


def test_bad_input_gets_a_clear_error_and_the_master_keeps_serving(cluster):
    agent = Agent(cluster.addresses)
    fw = Framework(cluster.addresses)
    try:
        agent.registered()
        fw.subscribed()

        # An unknown framework id is refused; the stream stays up.
        lone = Unknown(cluster.addresses)
        error = lone.expect("error")
        assert error.errno == errno.ENOENT and "unknown framework" in error.message
        lone.call(kill=pb.Kill(task_id="x"))
        error = lone.expect("error")
        assert error.errno == errno.EINVAL and "subscribe first" in error.message
        lone.close()

        offer = fw.offer()
        # Resources larger than the offer.
        fw.launch(offer, "big", cpus=64.0)
        error = fw.expect("error", lambda e: e.call == "accept")
        assert error.errno == errno.EINVAL and "offers hold" in error.message
        assert task_update(fw, "big", pb.TASK_ERROR).status.uuid == b""
        # Empty argv: refused before anything is committed.
        offer = fw.offer()
        fw.launch(offer, "empty", argv=[])
        error = fw.expect("error", lambda e: e.task_id == "empty")
        assert error.errno == errno.EINVAL and "argv is empty" in error.message
        task_update(fw, "empty", pb.TASK_ERROR)
        # A declined (so no longer valid) offer, and an offer that never was.
        offer = fw.offer()
        fw.call(decline=pb.Decline(offer_ids=[offer.offer_id], refuse_seconds=0.2))
        fw.launch(offer, "late")
        error = fw.expect("error", lambda e: e.call == "accept")
        assert error.errno == errno.ENOENT and "rescinded" in error.message
        task_update(fw, "late", pb.TASK_ERROR)
        # An offer id that never existed is no better.
        fw.call(accept=pb.Accept(offer_ids=["made-up"], tasks=[]))
        assert fw.expect("error", lambda e: e.call == "accept").errno == errno.ENOENT

        # The master still serves: a good launch works, and a duplicate id is refused.
        offer = fw.offer()
        fw.launch(offer, "good")
        assert agent.expect("launch").task.task_id == "good"
        offer = fw.offer()
        fw.launch(offer, "good")
        error = fw.expect("error", lambda e: e.task_id == "good")
        assert error.errno == errno.EEXIST
        agent.update("good", pb.TASK_RUNNING, b"g1")
        task_update(fw, "good", pb.TASK_RUNNING)
        # An update for a task the master does not know: acked (so not retried
        # forever) and the agent is told to kill it.
        agent.update("ghost", pb.TASK_RUNNING, b"gh")
        agent.expect("ack", lambda a: a.task_id == "ghost")
        assert agent.expect("kill").task_id == "ghost"
    finally:
        agent.close()
        fw.close()


def test_silent_agent_is_unreachable_its_tasks_lost_and_killed_when_it_returns(cluster):
    agent = Agent(cluster.addresses)
    fw = Framework(cluster.addresses)
    try:
        agent.registered()
        fw.subscribed()
        fw.launch(fw.offer(), "t1")
        agent.expect("launch")
        agent.update("t1", pb.TASK_RUNNING, b"r1")
        running = task_update(fw, "t1", pb.TASK_RUNNING).status
        fw.call(acknowledge=pb.Acknowledge(task_id="t1", uuid=running.uuid))

        agent.beating.clear()                 # a partitioned agent: the stream is up but silent
        lost = task_update(fw, "t1", pb.TASK_LOST).status
        assert lost.reason == "agent lost" and lost.uuid
        fw.call(acknowledge=pb.Acknowledge(task_id="t1", uuid=lost.uuid))

        # It comes back, still running t1: told to kill it, and a late
        # FINISHED is acknowledged but never reaches the framework.
        agent.beating.set()
        agent.conn.close()
        agent = _reconnect(agent, cluster.addresses)
        assert agent.expect("kill").task_id == "t1"
        agent.update("t1", pb.TASK_FINISHED, b"late")
        agent.expect("ack", lambda a: a.uuid == b"late")
        with pytest.raises(AssertionError):
            task_update(fw, "t1", pb.TASK_FINISHED, timeout_s=3.0)
    finally:
        agent.close()
        fw.close()


def test_framework_gone_past_its_failover_timeout_has_its_tasks_killed(cluster):
    agent = Agent(cluster.addresses)
    fw = Framework(cluster.addresses, failover_timeout_s=1.0)
    try:
        agent.registered()
        fw.subscribed()
        fw.launch(fw.offer(), "t1")
        agent.expect("launch")
        agent.update("t1", pb.TASK_RUNNING, b"r1")
        agent.expect("ack")
        fw.close()
        kill = agent.expect("kill", timeout_s=10)
        assert kill.task_id == "t1" and kill.reason == "framework removed"
        status = _wait_status(cluster, lambda s: not s.frameworks)
        assert status.tasks_by_state.get("TASK_RUNNING", 0) == 0
    finally:
        agent.close()


def test_leader_killed_new_master_keeps_tasks_and_resends_unacknowledged_updates(cluster):
    agent = Agent(cluster.addresses)
    fw = Framework(cluster.addresses)
    try:
        agent.registered()
        fw.subscribed()
        fw.launch(fw.offer(), "t1")
        agent.expect("launch")
        agent.update("t1", pb.TASK_RUNNING, b"r1")
        agent.expect("ack")
        task_update(fw, "t1", pb.TASK_RUNNING)          # deliberately not acknowledged
        connects = (agent.connects, fw.connects)

        leader = cluster.leader_index()
        cluster.kill(leader)
        cluster.wait_leader(exclude=leader)

        # Both reconnect to the new master and register/subscribe again.
        resent = task_update(fw, "t1", pb.TASK_RUNNING).status
        assert resent.uuid == b"r1"                       # the same update, resent until acknowledged
        assert agent.connects > connects[0] and fw.connects > connects[1]
        fw.call(acknowledge=pb.Acknowledge(task_id="t1", uuid=resent.uuid))
        status = _wait_status(cluster, lambda s: s.tasks_by_state.get("TASK_RUNNING") == 1
                              and any(a.connected for a in s.agents))
        assert [f.framework_id for f in status.frameworks] == [fw.framework_id]
        # The new master launches too, and the task finishes exactly once.
        fw.launch(fw.offer(), "t2")
        assert agent.expect("launch").task.task_id == "t2"
        agent.update("t1", pb.TASK_FINISHED, b"f1")
        done = task_update(fw, "t1", pb.TASK_FINISHED).status
        fw.call(acknowledge=pb.Acknowledge(task_id="t1", uuid=done.uuid))
        fw.call(reconcile=pb.Reconcile())
        assert task_update(fw, "t2", pb.TASK_STAGING).status.uuid == b""
    finally:
        agent.close()
        fw.close()


def test_followers_refuse_with_the_leader_address_and_clients_follow_it(cluster):
    leader = cluster.leader_index()
    followers = [cluster.addresses[i] for i in range(3) if i != leader]
    # One follower alone: Status names the leader, and master_status follows it.
    status = master_status([followers[0]], timeout_s=10)
    assert status.json and not status.agents
    agent = Agent(followers)           # never given the leader's address
    try:
        agent.registered()
        assert agent.conn.address == cluster.addresses[leader]
    finally:
        agent.close()


def _reconnect(agent: Agent, addresses) -> Agent:
    fresh = Agent.__new__(Agent)
    fresh.node_id, fresh.cpus, fresh.mem = agent.node_id, agent.cpus, agent.mem
    fresh.agent_id, fresh.running = agent.agent_id, dict(agent.running)
    fresh.beating, fresh._stop = threading.Event(), threading.Event()
    fresh.beating.set()
    Scripted.__init__(fresh, addresses)
    fresh._beat = threading.Thread(target=fresh._heartbeats, daemon=True)
    fresh._beat.start()
    agent.close()
    fresh.registered()
    return fresh


def _wait_status(cluster, predicate, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        try:
            status = master_status(cluster.addresses, timeout_s=2.0)
        except OSError:
            status = None
        if status is not None and predicate(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"master status never matched: {status}")
