"""The scheduler benchmark (issue 5): on a 3-node cluster with agents,

* launch latency: submission to TASK_RUNNING (as the framework sees it),
  p50 and p99, of no-op tasks submitted one at a time (each waits for the
  previous one to run, so no queueing is counted);
* throughput: no-op tasks completed per second, many submitted at once;
* locality: the fraction of input bytes read on the node running the task
  (as the agents counted them), one task per block of a file whose blocks
  have one replica each, with delay scheduling's 1 s wait.

Printed against the issue's targets: p50 < 100 ms, >= 50 tasks/s, locality
>= 95%. A benchmark, not a test: the figures depend on the machine.

bench may not import the scheduler (the layout's one-way arrows), so the
caller passes in what it needs: ``make_framework(name, locality_wait_s)``
returning a framework with the SDK's ``submit``/``wait``/``close`` and task
handles (``cistern.scheduler.framework``), and a client for the input file.
``cistern bench sched`` (cli/bench_sched.py) composes them and starts a local
cluster when none is given.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from cistern.bench import report

__all__ = ["Config", "run", "text", "TARGETS"]

TARGETS = {"launch_p50_ms_max": 100.0, "tasks_per_s_min": 50.0, "locality_fraction_min": 0.95}
NOOP = ["true"]
poll_interval_s = 0.002          # how often the latency phase looks for RUNNING
task_timeout_s = 120.0           # one task in the latency phase, at most
phase_timeout_s = 600.0          # the throughput and locality phases, at most


@dataclass
class Config:
    latency_tasks: int = 50
    throughput_tasks: int = 200
    locality_blocks: int = 30
    block_size: int = 64 << 10
    locality_wait_s: float = 1.0
    cpus_per_task: float = 0.1
    mem_bytes_per_task: int = 32 << 20

    def check(self) -> None:
        if min(self.latency_tasks, self.throughput_tasks, self.locality_blocks) < 1:
            raise ValueError("each phase needs at least one task")
        if self.cpus_per_task <= 0 or self.mem_bytes_per_task <= 0:
            raise ValueError("tasks need cpus > 0 and memory > 0")


def run(config: Config, make_framework, client, *, progress=lambda text: None) -> dict:
    """Every phase; the JSON-ready record (see ``text`` for its figures)."""
    config.check()
    started = time.time()
    doc = {"schema": "cistern.bench.sched/1", "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "config": dict(config.__dict__), "targets": dict(TARGETS), "machine": report.machine(), "failures": []}
    progress("launch latency")
    doc["latency"] = _latency(config, make_framework, doc["failures"])
    progress("throughput")
    doc["throughput"] = _throughput(config, make_framework, doc["failures"])
    progress("locality")
    doc["locality"] = _locality(config, make_framework, client, doc["failures"])
    doc["duration_s"] = round(time.time() - started, 2)
    return doc


def _latency(config: Config, make_framework, failures: list) -> dict:
    fw = make_framework("bench-latency", config.locality_wait_s)
    latencies_ns = []
    try:
        for i in range(config.latency_tasks):
            task = fw.submit(f"lat-{i}", NOOP, cpus=config.cpus_per_task, mem_bytes=config.mem_bytes_per_task)
            deadline = time.monotonic() + task_timeout_s
            while task.running_mono is None and not task.done() and time.monotonic() < deadline:
                time.sleep(poll_interval_s)
            if task.running_mono is None:
                failures.append(f"latency: {task.name} never reported RUNNING ({task.state} {task.message})")
                continue
            latencies_ns.append(int((task.running_mono - task.submitted_mono) * 1e9))
        if not fw.wait(task_timeout_s):
            failures.append("latency: tasks still not finished")
        _count_failed(fw.tasks(), "latency", failures)
    finally:
        fw.close()
    summary = report.latency_summary(report.histogram(latencies_ns), sum(latencies_ns), max(latencies_ns, default=0))
    return {"tasks": config.latency_tasks, "measured": len(latencies_ns),
            "p50_ms": summary and round(summary["p50"] / 1e3, 2), "p99_ms": summary and round(summary["p99"] / 1e3, 2),
            "mean_ms": summary and round(summary["mean"] / 1e3, 2)}


def _throughput(config: Config, make_framework, failures: list) -> dict:
    fw = make_framework("bench-throughput", config.locality_wait_s)
    try:
        busy_before = _busy_cpu_s()
        started = time.monotonic()
        tasks = [fw.submit(f"noop-{i}", NOOP, cpus=config.cpus_per_task, mem_bytes=config.mem_bytes_per_task)
                 for i in range(config.throughput_tasks)]
        if not fw.wait(phase_timeout_s):
            failures.append("throughput: tasks still not finished")
        elapsed = time.monotonic() - started
        busy_s = _busy_cpu_s() - busy_before
        finished = _count_failed(tasks, "throughput", failures)
    finally:
        fw.close()
    return {"tasks": len(tasks), "finished": finished, "elapsed_s": round(elapsed, 3),
            "tasks_per_s": round(finished / elapsed, 1) if elapsed > 0 else None,
            "busy_cpu_s": round(busy_s, 2),
            "cpu_ms_per_task": round(busy_s * 1e3 / len(tasks), 1) if tasks else None}


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy since boot (every cpu of
    /proc/stat but idle and iowait): over a phase, divided by its tasks, a
    cost per task that does not depend on how loaded the machine was (it
    counts every process, so run on a quiet machine)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    busy = sum(fields[:8]) - fields[3] - fields[4]      # user..steal, without idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def _locality(config: Config, make_framework, client, failures: list) -> dict:
    path = f"/bench-sched-{int(time.time() * 1000)}.txt"
    payload = bytes(range(256)) * (config.block_size // 256) + b"\n" * (config.block_size % 256)
    client.write_file(path, payload * config.locality_blocks, replication=1)
    try:
        blocks = len(client.block_locations(path))
        fw = make_framework("bench-locality", config.locality_wait_s)
        try:
            tasks = [fw.submit(f"blk-{i}", ["sh", "-c", 'wc -c < "$CISTERN_INPUT" > /dev/null'], input_path=path,
                               block_index=i, cpus=config.cpus_per_task, mem_bytes=config.mem_bytes_per_task)
                     for i in range(blocks)]
            if not fw.wait(phase_timeout_s):
                failures.append("locality: tasks still not finished")
            _count_failed(tasks, "locality", failures)
        finally:
            fw.close()
    finally:
        client.remove(path)
    total = sum(t.input_bytes for t in tasks)
    counted = sum(t.bytes_local + t.bytes_remote for t in tasks)
    local = sum(t.bytes_local for t in tasks)
    placed_local = sum(1 for t in tasks if t.local)
    return {"blocks": blocks, "block_size": config.block_size, "input_bytes": total, "bytes_counted": counted,
            "bytes_local": local, "fraction": round(local / total, 4) if total else None,
            "tasks_placed_local": placed_local, "locality_wait_s": config.locality_wait_s}


def _count_failed(tasks, phase: str, failures: list) -> int:
    """How many finished; a line in ``failures`` for the first that did not."""
    bad = [t for t in tasks if t.state != "TASK_FINISHED"]
    if bad:
        failures.append(f"{phase}: {len(bad)} tasks did not finish, e.g. {bad[0].name}: {bad[0].state} "
                        f"{bad[0].reason} {bad[0].message}".rstrip())
    return len(tasks) - len(bad)


def _verdict(ok) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


def text(doc: dict) -> str:
    """The figures against the targets, one line each."""
    lat, thr, loc, tg = doc["latency"], doc["throughput"], doc["locality"], doc["targets"]
    p50_ok = None if lat["p50_ms"] is None else lat["p50_ms"] < tg["launch_p50_ms_max"]
    thr_ok = None if thr["tasks_per_s"] is None else thr["tasks_per_s"] >= tg["tasks_per_s_min"]
    loc_ok = None if loc["fraction"] is None else loc["fraction"] >= tg["locality_fraction_min"]
    machine = doc["machine"]
    where = doc["config"].get("cluster") or "a cluster"
    lines = [f"scheduler benchmark on {where}: {machine.get('cpu_count')} cpus ({machine.get('cpu_model')})",
             f"  launch latency, submit -> RUNNING ({lat['measured']} tasks one at a time): "
             f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms   "
             f"[target p50 < {tg['launch_p50_ms_max']:.0f} ms: {_verdict(p50_ok)}]",
             f"  no-op tasks completed per second ({thr['tasks']} at once): {thr['tasks_per_s']} /s "
             f"in {thr['elapsed_s']} s, {thr.get('cpu_ms_per_task')} ms of machine cpu per task   "
             f"[target >= {tg['tasks_per_s_min']:.0f}/s: {_verdict(thr_ok)}]",
             f"  locality ({loc['blocks']} blocks x {loc['block_size'] // 1024} KiB, 1 replica, "
             f"{loc['locality_wait_s']:g} s wait): "
             + ("-" if loc["fraction"] is None else f"{loc['fraction']:.1%}")
             + f" of input bytes read locally, {loc['tasks_placed_local']}/{loc['blocks']} tasks placed local   "
             f"[target >= {tg['locality_fraction_min']:.0%}: {_verdict(loc_ok)}]"]
    lines += [f"  failure: {f}" for f in doc["failures"]]
    return "\n".join(lines)
