"""Faults under a running job, with real processes: an agent (its whole
``cistern node`` process) killed with SIGKILL mid-task and restarted, and
the metadata leader (which hosts the master) killed with SIGKILL while a
job runs.

What a user would check: the job still finishes with every task done
once; a task on the dead node is reported LOST and re-run elsewhere; the
stale copy left running on the dead node is killed when the node comes back
and is never reported finished; no task runs twice after a master failover,
and the framework's view of every task agrees with the master's.
"""

from __future__ import annotations

import os

import pytest

from cistern.scheduler.framework import Framework
from cistern.scheduler.testing import SchedCluster, wait_for, write_lines_file

pytestmark = [pytest.mark.timeout(300)]

BLOCK = 64 << 10


def task_processes(task_id: str) -> list[int]:
    """Pids of processes whose environment names ``task_id`` (a task's
    processes carry CISTERN_TASK_ID, whatever sandbox they run in)."""
    needle = f"CISTERN_TASK_ID={task_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:
            continue
    return found


def finished_updates(fw, task_id: str) -> int:
    return sum(1 for attempt, state, *_ in fw.update_log if attempt == task_id and state == "TASK_FINISHED")


@pytest.fixture
def cluster(tmp_path):
    c = SchedCluster(tmp_path, block_size=BLOCK)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_agent_killed_mid_task_loses_it_the_job_reruns_it_and_the_stale_copy_dies_on_restart(cluster):
    with cluster.client() as client:
        write_lines_file(client, "/f/input.txt", 3, BLOCK, replication=2)
        with Framework(cluster.addresses, "survivor", client=client) as fw:
            sleepy = ["sh", "-c", 'sleep 12; wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/words"']
            tasks = [fw.submit(f"t{i}", sleepy, input_path="/f/input.txt", block_index=i, cpus=0.25,
                               mem_bytes=64 << 20, output_dir="/f/out") for i in range(3)]
            wait_for(lambda: all(t.state == "TASK_RUNNING" for t in tasks), "every task running", 60)
            victim = tasks[0]
            dead_node, first_attempt = victim.node_id, victim.task_id
            assert task_processes(first_attempt), "a running task has processes"

            cluster.kill_node(dead_node)

            wait_for(lambda: len(victim.attempts) == 2, f"{first_attempt} lost and re-run", 60)
            assert (first_attempt, "TASK_LOST") in {(a, s) for a, s, *_ in fw.update_log}
            lost_reason = [r for a, s, r, *_ in fw.update_log if a == first_attempt and s == "TASK_LOST"][0]
            assert lost_reason == "agent lost", lost_reason
            # The stale copy is still running on the dead node's host: tasks outlive their agent.
            assert task_processes(first_attempt)

            cluster.start_node(dead_node)
            wait_for(lambda: not task_processes(first_attempt), f"stale {first_attempt} killed after restart", 60)

            assert fw.wait(120), [(t.name, t.state, t.message) for t in tasks]
            assert [t.state for t in tasks] == ["TASK_FINISHED"] * 3
            assert victim.task_id != first_attempt and victim.node_id != dead_node
            assert finished_updates(fw, first_attempt) == 0
            for t in tasks:
                assert finished_updates(fw, t.task_id) >= 1
            # exactly one output per task: the stale attempt stored nothing
            outputs = sorted(client.listdir("/f/out"))
            assert outputs == sorted(t.task_id for t in tasks)
            # the master still holds the stale attempt as LOST, and every re-run as FINISHED
            answers = reconciled(fw, [first_attempt] + [t.task_id for t in tasks])
            assert answers == {first_attempt: "TASK_LOST", **{t.task_id: "TASK_FINISHED" for t in tasks}}


def test_metadata_leader_killed_mid_job_loses_no_task_and_launches_none_twice(cluster):
    with cluster.client() as client:
        write_lines_file(client, "/g/input.txt", 9, BLOCK, replication=3)
        with Framework(cluster.addresses, "steady", client=client) as fw:
            slow = ["sh", "-c", 'sleep 2; wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/words"']
            tasks = [fw.submit(f"g{i}", slow, input_path="/g/input.txt", block_index=i, cpus=0.5,
                               mem_bytes=64 << 20, output_dir="/g/out") for i in range(9)]
            wait_for(lambda: any(t.state == "TASK_RUNNING" for t in tasks), "a task running", 60)
            leader = cluster.meta.leader_index()
            assert leader is not None
            framework_id = fw.framework_id
            cluster.meta.kill(leader)
            cluster.meta.wait_leader(60, exclude=leader)

            assert fw.wait(180), [(t.name, t.state, t.message) for t in tasks]
            assert [t.state for t in tasks] == ["TASK_FINISHED"] * 9, [(t.name, t.state, t.message) for t in tasks]
            # none lost, and one attempt of each ran (a launch refused for its offer never ran)
            assert not [e for e in fw.update_log if e[1] == "TASK_LOST"], list(fw.update_log)
            ran = {t.task_id: {a for a, s, *_ in fw.update_log if s in ("TASK_RUNNING", "TASK_FINISHED")
                               and a in t.attempts} for t in tasks}
            assert all(len(attempts) == 1 for attempts in ran.values()), ran
            assert fw.statistics()["subscriptions"] >= 2, "the framework re-subscribed to the new master"
            assert fw.framework_id == framework_id
            # launched once each: one output directory per task, one launch per task in the agents' view
            assert sorted(client.listdir("/g/out")) == sorted(t.task_id for t in tasks)
            launches = launches_per_task(cluster, [t.task_id for t in tasks])
            assert all(n == 1 for n in launches.values()), launches
            # reconciliation agrees: what the framework believes is what the master holds
            answers = reconciled(fw, [t.task_id for t in tasks])
            assert answers == {t.task_id: t.state for t in tasks}
        cluster.meta.restart(leader)


def reconciled(fw, task_ids, timeout_s: float = 30.0) -> dict:
    """{attempt id: state} as the master answers an explicit reconciliation."""
    seen = len(fw.update_log)
    fw.reconcile(task_ids)
    answers: dict = {}

    def all_answered():
        for attempt, state, _, _, uuid in list(fw.update_log)[seen:]:
            if not uuid and attempt in task_ids:
                answers[attempt] = state
        return set(answers) == set(task_ids)
    wait_for(all_answered, f"reconciliation answers for {task_ids}", timeout_s)
    return answers


def launches_per_task(cluster, task_ids) -> dict:
    """How many times each task was launched, counted in every node's log
    (the agent logs each launch it starts with the task id)."""
    logs = "".join(cluster.node_log(node_id) for node_id in cluster.nodes)
    return {task_id: sum(1 for line in logs.splitlines() if f"task {task_id}: launch of" in line)
            for task_id in task_ids}
