"""`cistern bench sched` as a user runs it, tiny: a fresh local cluster with
agents, every phase's tasks finish, the figures and targets are printed and
recorded (the figures themselves are the lead's to judge, not asserted)."""

import json
import os
import subprocess
import sys

import pytest

CISTERN = os.path.join(os.path.dirname(sys.executable), "cistern")
pytestmark = pytest.mark.timeout(240)


def test_bench_sched_runs_every_phase_and_reports_against_the_targets(tmp_path):
    out = tmp_path / "sched.json"
    done = subprocess.run([CISTERN, "bench", "sched", "--latency-tasks", "3", "--throughput-tasks", "10",
                           "--blocks", "3", "--json", str(out)], capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "cistern.bench.sched/1" and doc["failures"] == []
    assert doc["latency"]["measured"] == 3 and doc["latency"]["p50_ms"] > 0
    assert doc["throughput"]["finished"] == 10 and doc["throughput"]["tasks_per_s"] > 0
    assert doc["throughput"]["cpu_ms_per_task"] > 0 and "ms of machine cpu per task" in done.stdout
    assert doc["locality"]["blocks"] == 3 and 0 <= doc["locality"]["fraction"] <= 1
    assert "target p50 < 100 ms" in done.stdout and "target >= 50/s" in done.stdout
    assert "target >= 95%" in done.stdout
