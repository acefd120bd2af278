"""Data-local jobs on a real cluster: 3 metad (the master on the leader), 3
``cistern node`` processes (blockd and the task agent), real isolation.

The word-count job runs through the ``cistern run`` command itself; bad
input reaches the master over a raw FrameworkStream (through
``MasterConnection``), as a buggy framework would send it.
"""

from __future__ import annotations

import json
import queue
import subprocess
import time

import pytest

from cistern.core.errors import CisternError
from cistern.metadata.proc_testing import cistern_command
from cistern.scheduler.client import MasterConnection
from cistern.scheduler.framework import Framework
from cistern.scheduler.proto import scheduler_pb2 as pb
from cistern.scheduler.testing import SchedCluster, wait_for, write_lines_file

pytestmark = [pytest.mark.timeout(240)]

BLOCK = 64 << 10
BLOCKS = 30
WC = ["sh", "-c", 'wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/words"']
JOB_KEYS = {"tasks", "locality_bytes_fraction", "tasks_total", "tasks_finished", "input_bytes", "bytes_local",
            "output_dir", "timed_out", "framework_id"}
TASK_KEYS = {"task", "task_id", "node", "state", "duration_s", "local", "input_bytes", "bytes_local",
             "bytes_remote", "attempts", "exit_code", "reason", "message", "stderr_tail", "output"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SchedCluster(tmp_path_factory.mktemp("sched_jobs"), block_size=BLOCK)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster):
    with cluster.client() as c:
        yield c


def cistern_run(cluster, *args, timeout_s=180):
    return subprocess.run(cistern_command() + ["run", "--cluster", cluster.addresses, *args],
                          capture_output=True, text=True, timeout=timeout_s)


def wc_words(data: bytes) -> int:
    return int(subprocess.run(["wc", "-w"], input=data, capture_output=True, check=True).stdout.split()[0])


def test_word_count_over_30_blocks_runs_every_task_on_a_node_holding_its_block(cluster, client):
    # One replica per block: a task is local only where delay scheduling put it.
    data = write_lines_file(client, "/wc/input.txt", BLOCKS, BLOCK, replication=1)
    holders = {b["block_id"]: set(b["nodes"]) for b in client.block_locations("/wc/input.txt")}
    assert len(holders) == BLOCKS and all(len(n) == 1 for n in holders.values())

    done = cistern_run(cluster, "--input", "/wc/input.txt", "--output", "/wc/out", "--json", "--", *WC)

    assert done.returncode == 0, done.stderr + cluster.logs_tail()
    summary = json.loads(done.stdout)
    assert set(summary) >= JOB_KEYS
    assert summary["tasks_total"] == summary["tasks_finished"] == BLOCKS
    for row in summary["tasks"]:
        assert set(row) == TASK_KEYS
        assert row["state"] == "TASK_FINISHED" and row["exit_code"] == 0 and row["attempts"] == 1
        assert row["node"] in {"n1", "n2", "n3"} and row["duration_s"] is not None
    assert summary["input_bytes"] == len(data)
    assert summary["locality_bytes_fraction"] >= 0.95, summary
    # the agents' own byte counts agree with where the blocks are
    assert sum(r["bytes_local"] + r["bytes_remote"] for r in summary["tasks"]) == len(data)
    total = sum(int(client.read_file(f"{row['output']}/words")) for row in summary["tasks"])
    assert total == wc_words(data)


def test_run_prints_a_table_with_node_state_duration_and_locality(cluster, client):
    write_lines_file(client, "/wc/small.txt", 3, BLOCK, seed=7)
    done = cistern_run(cluster, "--input", "/wc/small.txt", "--cpus", "0.25", "--mem", "64M", "--", "true")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:5] == ["TASK", "NODE", "STATE", "DURATION", "LOCAL"]
    assert sum("TASK_FINISHED" in line for line in lines) == 3
    assert lines[-1].startswith("3 of 3 tasks finished;") and "read locally" in lines[-1]


@pytest.mark.parametrize("args, code, text", [
    (["--input", "/no/such/file", "--", "true"], 1, "No such file or directory"),   # names the path too
    (["--input", "/wc", "--mem", "lots", "--", "true"], 2, "bad memory size 'lots'"),
    (["--input", "/wc", "--cpus", "0", "--", "true"], 2, "--cpus must be more than 0"),
    (["--input", "/wc"], 2, "no command given"),
])
def test_bad_run_input_is_one_line_and_a_non_zero_exit(cluster, client, args, code, text):
    client.makedirs("/wc", exist_ok=True)
    done = cistern_run(cluster, *args, timeout_s=60)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("cistern run: ") and ("/no/such/file" in done.stderr or code == 2)
    assert "Traceback" not in done.stderr


def test_a_failing_command_fails_the_job_with_its_exit_code(cluster, client):
    write_lines_file(client, "/wc/one.txt", 1, BLOCK, seed=3)
    done = cistern_run(cluster, "--input", "/wc/one.txt", "--json", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert done.returncode == 1
    row = json.loads(done.stdout)["tasks"][0]
    assert row["state"] == "TASK_FAILED" and row["exit_code"] == 3, row
    assert row["stderr_tail"] == "oops\n"
    assert "1 of 1 tasks did not finish" in done.stderr


# -- bad calls on the wire: a clear error, and the master keeps serving ----------------


class RawFramework:
    """A framework speaking the wire directly, to send what the SDK never would."""

    def __init__(self, cluster, framework_id: str = "", name: str = "raw"):
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        subscribe = pb.FrameworkCall(subscribe=pb.Subscribe(framework_id=framework_id, name=name))
        self.conn = MasterConnection(cluster.meta.addresses, lambda stub, requests: stub.FrameworkStream(requests),
                                     on_connect=lambda address: [subscribe], on_message=self.events.put,
                                     name="raw-framework")

    def send(self, **call) -> None:
        assert self.conn.send(pb.FrameworkCall(**call))

    def next(self, kind: str, timeout_s: float = 30.0, where=lambda e: True):
        """The next event of ``kind`` that satisfies ``where`` (others skipped); acks updates."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} event within {timeout_s}s") from None
            if event.WhichOneof("kind") == "update" and event.update.status.uuid:
                status = event.update.status
                self.send(acknowledge=pb.Acknowledge(task_id=status.task_id, uuid=status.uuid))
            if event.WhichOneof("kind") == kind and where(getattr(event, kind)):
                return getattr(event, kind)

    def close(self) -> None:
        self.conn.send(pb.FrameworkCall(teardown=pb.Teardown()))
        time.sleep(0.2)
        self.conn.close()


def spec(task_id, argv, cpus=0.1, mem=32 << 20):
    return pb.TaskSpec(task_id=task_id, name=task_id, argv=argv,
                       resources=pb.Resources(cpus=cpus, mem_bytes=mem))


def final_update(raw, task_id, timeout_s=60.0):
    terminal = {pb.TASK_FINISHED, pb.TASK_FAILED, pb.TASK_KILLED, pb.TASK_LOST, pb.TASK_ERROR}
    return raw.next("update", timeout_s, lambda u: u.status.task_id == task_id and u.status.state in terminal).status


def refused(raw, task_id, timeout_s=30.0):
    """The master's answer to a bad launch: an error event or a TASK_ERROR update (its message)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        event = raw.events.get(timeout=max(0.01, deadline - time.monotonic()))
        kind = event.WhichOneof("kind")
        if kind == "error" and (event.error.task_id in ("", task_id)) and event.error.call == "accept":
            return event.error.message
        if kind == "update" and event.update.status.task_id == task_id:
            assert event.update.status.state == pb.TASK_ERROR, event
            return event.update.status.message
    raise AssertionError(f"no refusal of {task_id}")


def test_subscribing_with_an_unknown_framework_id_is_refused_clearly(cluster):
    fw = Framework(cluster.addresses, "ghost", framework_id="no-such-framework")
    try:
        with pytest.raises(CisternError) as refused_error:
            fw.wait_subscribed(30)
        assert "no-such-framework" in refused_error.value.message or "unknown" in refused_error.value.message.lower()
    finally:
        fw.close()
    assert_master_serves(cluster)


def test_launches_beyond_the_offer_on_a_used_offer_or_on_a_rescinded_one_are_refused(cluster):
    raw = RawFramework(cluster)
    try:
        raw.next("subscribed")
        offer = raw.next("offers").offers[0]
        too_big = spec("too-big", ["true"], cpus=offer.resources.cpus + 1)
        raw.send(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=[too_big]))
        message = refused(raw, "too-big")
        assert message and ("resource" in message.lower() or "offer" in message.lower()), message
        # the refused accept changed nothing: the offer may still be live or gone; take a fresh one
        raw.send(revive=pb.Revive())
        offer = raw.next("offers").offers[0]
        raw.send(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=[spec("first", ["true"])]))
        raw.send(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=[spec("second", ["true"])]))
        message = refused(raw, "second")
        assert offer.offer_id in message or "offer" in message.lower(), message
        assert final_update(raw, "first").state == pb.TASK_FINISHED
        # suppressing rescinds the offers we hold; a launch on a rescinded one is refused
        raw.send(revive=pb.Revive())
        offer = raw.next("offers").offers[0]
        raw.send(suppress=pb.Suppress())
        raw.next("rescind", where=lambda r: r.offer_id == offer.offer_id)
        raw.send(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=[spec("third", ["true"])]))
        message = refused(raw, "third")
        assert offer.offer_id in message or "rescind" in message.lower(), message
    finally:
        raw.close()
    assert_master_serves(cluster)


def test_a_command_that_does_not_exist_fails_with_a_clear_message(cluster):
    with Framework(cluster.addresses, "bad-command") as fw:
        task = fw.submit("nope", ["/no/such/program", "arg"], cpus=0.1, mem_bytes=32 << 20)
        assert fw.wait(60)
        assert task.state in ("TASK_FAILED", "TASK_ERROR"), task
        assert task.reason == "bad command", (task.reason, task.message)
        assert "/no/such/program" in task.message
    assert_master_serves(cluster)


def assert_master_serves(cluster):
    """A new framework still gets offers and runs a task to its end."""
    with Framework(cluster.addresses, "after") as fw:
        task = fw.submit("ok", ["true"], cpus=0.1, mem_bytes=32 << 20)
        assert fw.wait(60), fw.statistics()
        assert task.state == "TASK_FINISHED", (task, task.message)
    wait_for(lambda: cluster.agents(), "master status")


def test_a_directory_input_runs_one_task_per_block_of_each_file(cluster, client):
    write_lines_file(client, "/dir/a.txt", 2, BLOCK, seed=11)
    write_lines_file(client, "/dir/b.txt", 1, BLOCK, seed=12)
    client.makedirs("/dir/sub", exist_ok=True)          # not an input: the walk is one level
    done = cistern_run(cluster, "--input", "/dir", "--json", "--", "true")
    assert done.returncode == 0, done.stderr
    tasks = json.loads(done.stdout)["tasks"]
    assert sorted(t["task"] for t in tasks) == ["a.txt.00000", "a.txt.00001", "b.txt.00000"]


def test_a_block_whose_holders_run_no_agent_is_run_elsewhere_at_once(tmp_path):
    # n3 serves blocks but runs no agent: its blocks can never be read locally, so
    # delay scheduling must not wait for it even with a long wait.
    with SchedCluster(tmp_path, block_size=BLOCK, agentless={"n3"}).start() as cluster, \
            cluster.client(node_id="n3") as client:
        # written "from n3": a writer's own node takes the only replica of every block
        data = write_lines_file(client, "/solo/input.txt", 6, BLOCK, replication=1, seed=5)
        on_n3 = sum(1 for b in client.block_locations("/solo/input.txt") if b["nodes"] == ["n3"])
        assert on_n3 == 6
        started = time.monotonic()
        done = cistern_run(cluster, "--input", "/solo/input.txt", "--locality-wait", "60", "--output", "/solo/out",
                           "--json", "--", *WC)
        took_s = time.monotonic() - started
        assert done.returncode == 0, done.stderr + cluster.logs_tail()
        summary = json.loads(done.stdout)
        assert took_s < 60, took_s
        remote = [r for r in summary["tasks"] if r["bytes_remote"]]
        assert len(remote) == on_n3 and all(r["node"] in ("n1", "n2") and not r["local"] for r in remote)
        assert sum(int(client.read_file(f"{r['output']}/words")) for r in summary["tasks"]) == wc_words(data)


def test_wait_gives_up_kills_what_still_runs_and_fails(cluster, client):
    write_lines_file(client, "/wc/slow.txt", 2, BLOCK, seed=9)
    started = time.monotonic()
    done = cistern_run(cluster, "--input", "/wc/slow.txt", "--wait", "3", "--json", "--", "sleep", "120")
    assert done.returncode == 1 and time.monotonic() - started < 60
    assert "2 of 2 tasks did not finish; gave up waiting" in done.stderr
    summary = json.loads(done.stdout)
    assert summary["timed_out"] and summary["tasks_finished"] == 0
    wait_for(lambda: sum(a.tasks for a in cluster.agents().values()) == 0, "the job's tasks killed", 30)


def test_a_new_framework_process_takes_over_by_framework_id(cluster):
    first = Framework(cluster.addresses, "handover", failover_timeout_s=60)
    task = first.submit("long", ["sleep", "4"], cpus=0.1, mem_bytes=32 << 20)
    wait_for(lambda: task.state == "TASK_RUNNING", "the task running", 60)
    framework_id, task_id = first.framework_id, task.task_id
    first.close(teardown=False)                          # the program "dies"; its task runs on

    with Framework(cluster.addresses, "handover", framework_id=framework_id) as second:
        assert second.wait_subscribed(30) == framework_id
        second.reconcile()                               # implicit: every task the master holds for us
        states = lambda: {s for a, s, *_ in second.update_log if a == task_id}   # noqa: E731
        wait_for(lambda: "TASK_RUNNING" in states() or "TASK_FINISHED" in states(), "the task reconciled", 30)
        wait_for(lambda: "TASK_FINISHED" in states(), "the task's end reported to the new framework", 60)
