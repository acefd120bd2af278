"""The task agent against a real cluster: 3 metad (the master on the
leader), storage nodes with agents, real isolation (CI runs as root).

Most tests run the node and its agent in this process (``local_node`` plus
``Agent``) so they can look at the agent's metrics and restart it without
killing its tasks; the last one kills a whole ``cistern node`` process with
SIGKILL mid-task and starts it again.

In the restart tests the master waits 20 s before declaring a silent agent
unreachable, so a restart is a recovery, never a loss (losses are the fault
tests'); elsewhere it waits 2 s, and each test waits until the master has
given up on the agents it stopped, so no offer of theirs reaches the next.
"""

from __future__ import annotations

import os
import uuid

import pytest
from prometheus_client import generate_latest

from cistern.blockstore.testing import local_node
from cistern.scheduler import agent as agent_mod
from cistern.scheduler import cgroups, isolation
from cistern.scheduler.framework import Framework
from cistern.scheduler.testing import SchedCluster, wait_for, write_lines_file

pytestmark = [pytest.mark.timeout(240)]

BLOCK = 64 << 10
PATIENT_MASTER = {"CISTERN_SCHED_AGENT_UNREACHABLE_AFTER_S": "20", "CISTERN_SCHED_AGENT_REREGISTER_GRACE_S": "20"}
WC = ["sh", "-c", 'wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/words"']


def task_processes(task_id: str) -> list[int]:
    """Pids whose environment names ``task_id`` (every process of a task has it)."""
    needle = f"CISTERN_TASK_ID={task_id}".encode()
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            pass
    return found


def write_file(client, path: str, blocks: int, block_size: int, **kwargs) -> bytes:
    client.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    return write_lines_file(client, path, blocks, block_size, **kwargs)


class LocalNode:
    """blockd and its agent in this process, on a data dir that survives
    ``restart_agent``."""

    def __init__(self, cluster, tmp, node_id: str):
        self.cluster = cluster
        self.node_id = node_id
        self.server = local_node(str(tmp / node_id), node_id, meta_addresses=cluster.meta.addresses,
                                 block_size_bytes=BLOCK)
        self.agent = None
        self.start_agent()

    def start_agent(self):
        self.agent = agent_mod.Agent(self.node_id, self.server.rpc_address, self.server.data_dir,
                                     self.cluster.meta.addresses, store=lambda: self.server.store,
                                     registry=self.server.registry, cpus=2, mem_bytes=1 << 30)
        self.agent.start()
        assert self.agent.wait_registered(30), "the agent did not register"
        return self.agent

    def metric(self, name: str, **labels) -> float:
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in generate_latest(self.server.registry).decode().splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self):
        run_dir = self.agent.run_dir if self.agent is not None else None
        if self.agent is not None:
            self.agent.stop()
        self.server.stop()
        # An agent stopped without killing its tasks (a failed test) leaves them to its successor: none comes.
        if run_dir is not None:
            isolation.sweep(self.node_id, run_dir)
        isolation.remove_runtime_dir(os.path.join(self.server.data_dir, "agent"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 metad with the test timings (a silent agent is unreachable after 2 s)."""
    c = SchedCluster(tmp_path_factory.mktemp("agent"), nodes=0, block_size=BLOCK)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def patient_cluster(tmp_path):
    """3 metad whose master gives a silent agent 20 s (a restart is a recovery)."""
    c = SchedCluster(tmp_path / "patient", nodes=0, block_size=BLOCK, env=PATIENT_MASTER)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def wait_agent_gone(cluster, node_id: str) -> None:
    """Until the master no longer counts ``node_id``'s agent as registered
    (it would otherwise still offer its resources)."""
    wait_for(lambda: cluster.agents().get(node_id) is None or cluster.agents()[node_id].state != "registered",
             f"agent {node_id} unreachable", 30)


class Nodes:
    """In-process nodes of one cluster; ``close`` stops them and checks
    that nothing of their tasks is left."""

    def __init__(self, cluster, tmp, *, settle: bool = True):
        self.cluster, self.tmp, self.started, self.settle = cluster, tmp, [], settle

    def __call__(self, n: int = 1) -> list:
        out = [LocalNode(self.cluster, self.tmp, f"x{uuid.uuid4().hex[:6]}") for _ in range(n)]
        self.started += out
        self.cluster.wait_nodes([node.node_id for node in out])
        return out

    def close(self) -> None:
        for node in self.started:
            node.stop()
        layout = cgroups.detect()
        for node in self.started:
            assert not any(os.path.exists(d) for d in cgroups.agent_dirs(layout, "cistern", node.node_id))
            assert os.listdir(os.path.join(node.server.data_dir, "agent", "checkpoints")) == []
        for node in self.started if self.settle else ():
            wait_agent_gone(self.cluster, node.node_id)   # the next test's offers come from its own nodes


@pytest.fixture
def nodes(cluster, tmp_path):
    """Start in-process nodes by calling the fixture: ``nodes(2)``."""
    started = Nodes(cluster, tmp_path)
    yield started
    started.close()


def test_a_task_reads_its_local_block_in_isolation_and_its_output_is_stored(cluster, nodes):
    (node,) = nodes(1)
    agents = cluster.agents()
    assert (agents[node.node_id].total.cpus, agents[node.node_id].total.mem_bytes) == (2, 1 << 30)
    assert agents[node.node_id].address == node.server.rpc_address
    with cluster.client() as client:
        data = write_file(client, "/a/local.txt", 2, BLOCK, replication=1)
        with Framework(cluster.addresses, "local", client=client) as fw:
            script = 'wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/words"; id -u; echo oops >&2'
            tasks = [fw.submit(f"wc{i}", ["sh", "-c", script], input_path="/a/local.txt", block_index=i,
                               cpus=0.5, mem_bytes=64 << 20, output_dir="/a/out") for i in range(2)]
            assert fw.wait(60), [(t.state, t.message) for t in tasks]
        for i, t in enumerate(tasks):
            assert (t.state, t.exit_code, t.node_id) == ("TASK_FINISHED", 0, node.node_id), t.message
            assert (t.bytes_local, t.bytes_remote) == (BLOCK, 0)
            assert (t.stdout_tail, t.stderr_tail) == (b"65534\n", b"oops\n")
            words = int(client.read_file(f"/a/out/{t.task_id}/words"))
            assert words == len(data[i * BLOCK:(i + 1) * BLOCK].split())
            assert "stored 1 file(s)" in t.message
            states = [state for task_id, state, *_ in fw.update_log if task_id == t.task_id]
            assert states[:2] == ["TASK_STARTING", "TASK_RUNNING"], states     # STARTING: inputs were staged
    assert node.metric("cistern_agent_tasks_ended_total", state="TASK_FINISHED") == 2
    assert node.metric("cistern_agent_launch_latency_seconds_count") == 2
    assert node.metric("cistern_agent_input_bytes_total", locality="local") == 2 * BLOCK
    assert node.metric("cistern_agent_tasks", state="TASK_RUNNING") == 0
    assert node.metric("cistern_agent_cpus_total") == 2
    wait_for(lambda: node.agent.tasks() == {}, "every update acknowledged and forgotten", 20)
    assert node.agent.run_dir.startswith("/dev/shm/cistern-agent-")       # task files on tmpfs
    assert os.listdir(os.path.join(node.agent.run_dir, "sandboxes")) == []


def test_an_input_held_by_another_node_is_read_through_the_client(cluster, nodes):
    (holder,) = nodes(1)
    with cluster.client() as client:
        data = write_file(client, "/b/remote.txt", 1, BLOCK, replication=1, seed=7)
        # An agent that never launched a task made no runtime dir (a killed one leaves nothing on tmpfs).
        assert holder.agent.run_dir == os.path.join(holder.server.data_dir, "agent")
        assert not os.path.exists(os.path.join(holder.server.data_dir, "agent", "runtime_dir"))
        holder.agent.stop()              # only `runner` offers: the task must run away from its data
        wait_agent_gone(cluster, holder.node_id)
        (runner,) = nodes(1)
        (location,) = client.block_locations("/b/remote.txt")
        assert location["nodes"] == [holder.node_id]
        with Framework(cluster.addresses, "remote", client=client, locality_wait_s=0.2) as fw:
            t = fw.submit("wc", WC, input_path="/b/remote.txt", block_index=0, cpus=0.5, mem_bytes=64 << 20,
                          output_dir="/b/out")
            assert fw.wait(60), t.message
        assert (t.state, t.node_id, t.local) == ("TASK_FINISHED", runner.node_id, False), t.message
        assert (t.bytes_local, t.bytes_remote) == (0, BLOCK)
        assert int(client.read_file(f"/b/out/{t.task_id}/words")) == len(data.split())
    assert runner.metric("cistern_agent_input_bytes_total", locality="remote") == BLOCK


def test_a_framework_kill_ends_every_process_of_the_task(cluster, nodes):
    (node,) = nodes(1)
    with cluster.client() as client, Framework(cluster.addresses, "killer", client=client) as fw:
        t = fw.submit("sleepy", ["sh", "-c", "(sleep 300 & sleep 301 & wait) & sleep 302; wait"], cpus=0.25,
                      mem_bytes=32 << 20, output_dir="/c/out")
        wait_for(lambda: t.state == "TASK_RUNNING", "the task running", 60)
        wait_for(lambda: len(task_processes(t.task_id)) >= 5, "the task's processes", 20)
        # No inputs, nothing to stage: no STARTING. Its RUNNING is acknowledged
        # late (it stays the latest update), and exactly once.
        assert [s for task_id, s, *_ in fw.update_log if task_id == t.task_id] == ["TASK_RUNNING"]
        wait_for(lambda: fw.statistics()["acks"] == 1, "the running update acknowledged", 20)
        fw.kill(t)
        assert t.wait(30) and (t.state, t.reason) == ("TASK_KILLED", "killed by framework"), (t.state, t.reason)
        assert task_processes(t.task_id) == []
        assert not client.exists(f"/c/out/{t.task_id}")           # a killed task stores nothing
    assert node.metric("cistern_agent_tasks_ended_total", state="TASK_KILLED") == 1


def test_failures_reach_the_framework_with_their_reasons(cluster, nodes):
    nodes(1)
    with cluster.client() as client, Framework(cluster.addresses, "failing", client=client) as fw:
        hog = fw.submit("hog", ["/usr/bin/python3", "-c", "x = [b'x' * (8 << 20) for _ in range(64)]"],
                        cpus=0.5, mem_bytes=48 << 20)
        bad = fw.submit("bad", ["/no/such/program"], cpus=0.1, mem_bytes=16 << 20)
        exit3 = fw.submit("exit3", ["sh", "-c", "echo bye; exit 3"], cpus=0.1, mem_bytes=16 << 20)
        assert fw.wait(60)
    assert (hog.state, hog.reason) == ("TASK_FAILED", "memory limit"), hog.message
    assert (bad.state, bad.reason, bad.exit_code) == ("TASK_FAILED", "bad command", 127), bad.message
    assert (exit3.state, exit3.reason, exit3.exit_code, exit3.stdout_tail) == \
        ("TASK_FAILED", "non-zero exit", 3, b"bye\n")


def test_a_restarted_agent_recovers_its_tasks_from_checkpoints(patient_cluster, tmp_path):
    """The agent goes away without killing its tasks; while it is away one
    task ends and one keeps running. The new agent (same data dir) reports
    the first, re-attaches the second, and each ends exactly once."""
    cluster = patient_cluster
    nodes = Nodes(cluster, tmp_path, settle=False)     # the cluster goes with the test
    try:
        _restart_scenario(cluster, nodes)
    finally:
        nodes.close()


def _restart_scenario(cluster, nodes) -> None:
    (node,) = nodes(1)
    with cluster.client() as client, Framework(cluster.addresses, "recovery", client=client) as fw:
        quick = fw.submit("quick", ["sh", "-c", 'sleep 1; echo quick > "$CISTERN_OUTPUT/r"'], cpus=0.25,
                          mem_bytes=32 << 20, output_dir="/d/out")
        slow = fw.submit("slow", ["sh", "-c", 'sleep 10; echo slow > "$CISTERN_OUTPUT/r"'], cpus=0.25,
                         mem_bytes=32 << 20, output_dir="/d/out")
        wait_for(lambda: quick.state == slow.state == "TASK_RUNNING", "both running", 60)
        run_dir = node.agent.run_dir
        assert os.path.isdir(os.path.join(run_dir, "sandboxes", slow.task_id))
        node.agent.stop(kill_tasks=False)
        wait_for(lambda: not task_processes(quick.task_id), "quick ended while no agent watched", 20)
        assert task_processes(slow.task_id), "slow kept running without its agent"
        assert quick.state == "TASK_RUNNING"                      # nobody could tell yet
        agent = node.start_agent()
        assert agent.run_dir == run_dir                           # found again through its record
        assert fw.wait(60), [(t.state, t.message) for t in (quick, slow)]
        for t, word in ((quick, b"quick\n"), (slow, b"slow\n")):
            assert t.state == "TASK_FINISHED" and len(t.attempts) == 1, (t.state, t.message, list(fw.update_log))
            assert client.read_file(f"/d/out/{t.task_id}/r") == word
            finished = [u for u in fw.update_log if u[0] == t.task_id and u[1] == "TASK_FINISHED" and u[4]]
            assert len({u[4] for u in finished}) == 1, finished     # one terminal update (maybe delivered twice)
        wait_for(lambda: agent.tasks() == {}, "every update acknowledged", 20)


def test_a_node_killed_mid_task_and_restarted_reattaches_and_finishes_it(tmp_path):
    with SchedCluster(tmp_path, nodes=1, block_size=BLOCK, env=PATIENT_MASTER) as c:
        c.start()
        with c.client() as client:
            data = write_file(client, "/e/in.txt", 1, BLOCK, replication=1, seed=3)
            with Framework(c.addresses, "crash", client=client) as fw:
                t = fw.submit("wc", ["sh", "-c", 'sleep 4; wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/words"'],
                              input_path="/e/in.txt", block_index=0, cpus=0.25, mem_bytes=32 << 20,
                              output_dir="/e/out")
                wait_for(lambda: t.state == "TASK_RUNNING", "the task running", 60)
                c.kill_node("n1")
                assert task_processes(t.task_id), "the task died with its agent"
                c.start_node("n1")
                assert fw.wait(90), (t.state, t.message, c.node_log("n1")[-2000:])
            assert (t.state, len(t.attempts), t.bytes_local) == ("TASK_FINISHED", 1, BLOCK), t.message
            assert int(client.read_file(f"/e/out/{t.task_id}/words")) == len(data.split())
        log = c.node_log("n1")
        assert sum(1 for line in log.splitlines() if t.task_id in line and "launch" in line.lower()) == 1
        assert f"task {t.task_id}: re-attached" in log
        assert task_processes(t.task_id) == []


def test_a_launch_naming_a_hostile_task_id_is_refused_without_touching_a_path(cluster, nodes):
    (node,) = nodes(1)
    spec = agent_mod.pb.TaskSpec(task_id="../../escape", argv=["true"],
                                 resources=agent_mod.pb.Resources(cpus=0.1, mem_bytes=16 << 20))
    node.agent._on_message(agent_mod.pb.AgentCommand(launch=agent_mod.pb.LaunchTask(framework_id="fw", task=spec)))
    wait_for(lambda: node.metric("cistern_agent_tasks_ended_total", state="TASK_ERROR") == 1, "the refusal", 20)
    wait_for(lambda: node.agent.tasks() == {}, "the refusal acknowledged", 20)
    data_dir = node.server.data_dir
    assert not os.path.exists(os.path.join(data_dir, "escape")) and not os.path.exists(os.path.join(data_dir, "agent", "escape"))
