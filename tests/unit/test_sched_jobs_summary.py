"""The pure parts of `cistern run` and the SDK: memory sizes, the job
summary and its table, a task's preferred nodes, argv and resource checks."""

import pytest

from cistern.scheduler import framework, jobs
from cistern.scheduler.framework import Task
from cistern.scheduler.locality import Resources

MiB = 1 << 20


@pytest.mark.parametrize("text, size", [("256M", 256 * MiB), ("1G", 1 << 30), ("512MiB", 512 * MiB),
                                        ("64k", 64 << 10), ("1048576", MiB), ("1.5G", 3 << 29)])
def test_memory_sizes_are_powers_of_1024(text, size):
    assert jobs.parse_mem(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1M", "0", "12Q", "M"])
def test_bad_memory_sizes_say_so(text):
    with pytest.raises(ValueError, match="bad memory size"):
        jobs.parse_mem(text)


def test_job_spec_refuses_what_no_cluster_could_run():
    for spec, message in [(jobs.JobSpec("/f", []), "no command"), (jobs.JobSpec("/f", ["x"], cpus=0), "--cpus"),
                          (jobs.JobSpec("/f", ["x"], wait_s=0), "--wait")]:
        with pytest.raises(ValueError, match=message):
            spec.check()


def done_task(name, node, local, length, state="TASK_FINISHED", counted=None):
    inputs = [{"block_id": b"\x01" * 16, "path": "/f", "offset": 0, "length": length, "nodes": ["n1"]}]
    t = Task(name, ["true"], inputs, frozenset({"n1"}), Resources(0.5, 256 * MiB, 0), "/out", {}, False)
    t.task_id, t.attempts, t.state, t.node_id, t.local, t.final = f"{name}-id", [f"{name}-id"], state, node, local, True
    t.started_at, t.finished_at, t.exit_code = 100.0, 100.25, 0 if state == "TASK_FINISHED" else 1
    if counted is not None:
        t.bytes_local, t.bytes_remote = counted
    return t


def test_summary_counts_local_bytes_as_the_agents_counted_them():
    tasks = [done_task("a", "n1", True, 100, counted=(100, 0)), done_task("b", "n2", False, 100, counted=(0, 100)),
             done_task("c", "n1", True, 200, counted=(150, 50))]
    summary = jobs.summarize(tasks, "/out")
    assert summary["input_bytes"] == 400 and summary["bytes_local"] == 250
    assert summary["locality_bytes_fraction"] == 0.625
    assert summary["tasks_finished"] == summary["tasks_total"] == 3
    assert summary["tasks"][0] == {
        "task": "a", "task_id": "a-id", "node": "n1", "state": "TASK_FINISHED", "duration_s": 0.25, "local": True,
        "input_bytes": 100, "bytes_local": 100, "bytes_remote": 0, "attempts": 1, "exit_code": 0, "reason": None,
        "message": None, "stderr_tail": None, "output": "/out/a-id"}


def test_summary_falls_back_to_placement_only_for_finished_uncounted_tasks():
    tasks = [done_task("a", "n1", True, 100), done_task("b", "n1", True, 100, state="TASK_FAILED")]
    summary = jobs.summarize(tasks)
    assert [r["bytes_local"] for r in summary["tasks"]] == [100, 0]
    assert summary["tasks"][1]["output"] is None and summary["output_dir"] is None


def test_an_empty_job_is_wholly_local_and_finished():
    assert jobs.summarize([]) == {"tasks": [], "tasks_total": 0, "tasks_finished": 0, "input_bytes": 0,
                                  "bytes_local": 0, "locality_bytes_fraction": 1.0, "output_dir": None}


def test_table_has_a_row_per_task_and_the_totals():
    failed = done_task("b", "n2", False, 100, state="TASK_FAILED", counted=(0, 100))
    failed.reason, failed.message, failed.stderr_tail = "non-zero exit", "exit status 1", b"x\nno such word\n\n"
    lines = jobs.table(jobs.summarize([done_task("a", "n1", True, 100, counted=(100, 0)), failed])).splitlines()
    assert lines[0].split() == ["TASK", "NODE", "STATE", "DURATION", "LOCAL", "INPUT", "ATT", "NOTE"]
    assert lines[1].split() == ["a", "n1", "TASK_FINISHED", "0.25s", "yes", "100", "1"]
    assert lines[2].split() == ["b", "n2", "TASK_FAILED", "0.25s", "no", "100", "1", "non-zero", "exit", "exit",
                                "status", "1", "|", "no", "such", "word"]
    assert lines[3] == "1 of 2 tasks finished; 50.0% of 200 input bytes read locally"


def test_a_task_prefers_the_nodes_holding_most_of_its_input():
    inputs = [{"length": 100, "nodes": ["n1", "n2"]}, {"length": 50, "nodes": ["n2", "n3"]}]
    assert framework._preferred(inputs) == frozenset({"n2"})
    assert framework._preferred([{"length": 10, "nodes": ["n1", "n3"]}]) == frozenset({"n1", "n3"})
    assert framework._preferred([]) == frozenset()


def test_attempt_ids_are_fresh_and_safe():
    ids = {framework._attempt_id("word count/1") for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("word_count_1-") and len(i) <= 128 for i in ids)


@pytest.mark.parametrize("argv", ["ls -l", [], [""], None])
def test_argv_must_be_a_non_empty_list(argv):
    with pytest.raises(ValueError):
        framework._check_argv(argv)


def test_resources_default_and_must_be_positive():
    assert framework._resources(None, None, None, 0) == Resources(0.5, 256 * MiB, 0)
    assert framework._resources(Resources(1.0, MiB, 0), None, None, 0) == Resources(1.0, MiB, 0)
    with pytest.raises(ValueError):
        framework._resources(None, 0.0, None, 0)
    with pytest.raises(ValueError):
        framework._resources(None, None, -1, 0)
