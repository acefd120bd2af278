"""The FUSE benchmark's verdict: per metric and process count, the median of
the rounds' Cistern/passthrough ratios, each ratio taken from two figures
measured back to back (the machine is shared, so a ratio of medians could
pair a fast minute on one side with a slow one on the other)."""

import os

from cistern.bench import fuse_bench


def metric(name, target, procs, round_no, value):
    return {"metric": name, "target": target, "procs": procs, "round": round_no, "value": value,
            "unit": fuse_bench.UNITS[name]}


def test_the_verdict_is_the_median_of_the_rounds_ratios():
    # Round 1's passthrough ran fast: its ratio is the outlier the median drops.
    metrics = [metric("seq-read", "passthrough", 1, 0, 1000.0), metric("seq-read", "cistern", 1, 0, 700.0),
               metric("seq-read", "passthrough", 1, 1, 2000.0), metric("seq-read", "cistern", 1, 1, 500.0),
               metric("seq-read", "passthrough", 1, 2, 900.0), metric("seq-read", "cistern", 1, 2, 600.0)]
    [c] = fuse_bench.compare(metrics)
    assert c["ratios"] == [0.7, 0.25, round(600 / 900, 4)]
    assert c["ratio"] == round(600 / 900, 4) and c["met"] is True
    assert (c["cistern"], c["passthrough"]) == (600.0, 1000.0)      # each side's median, for the table
    # A ratio of those medians would have said 60%; the rounds' ratios say 67%.


def test_a_time_is_compared_inverted_and_half_measured_rounds_do_not_count():
    metrics = [metric("readdir", "passthrough", 4, 0, 0.1), metric("readdir", "cistern", 4, 0, 0.4),
               metric("readdir", "passthrough", 4, 1, 0.2)]        # interrupted before Cistern's turn
    [c] = fuse_bench.compare(metrics)
    assert c["ratios"] == [0.25] and c["ratio"] == 0.25 and c["met"] is None


def test_a_mounts_cpu_per_gib_is_a_cost_compared_inverted_without_a_target():
    metrics = [metric("seq-read-cpu", "passthrough", 4, 0, 1.0), metric("seq-read-cpu", "cistern", 4, 0, 1.6),
               metric("seq-read-cpu", "passthrough", 4, 1, 0.0), metric("seq-read-cpu", "cistern", 4, 1, 2.0)]
    [c] = fuse_bench.compare(metrics)
    assert c["ratios"] == [0.625, 0.0] and c["met"] is None
    table = fuse_bench.table({"config": {"files": 1, "mib": 1, "chunk_kib": 1, "procs": [4], "rounds": 2},
                              "compare": [c], "results": []})
    assert "seq-read-cpu CPU-s/GiB" in table and "1.80" in table and "0.50" in table


def test_a_missed_target_is_reported_as_missed():
    metrics = [metric("seq-write", t, 4, n, v) for n, (p, m) in enumerate([(700, 230), (500, 210), (600, 220)])
               for t, v in (("passthrough", p), ("cistern", m))]
    [c] = fuse_bench.compare(metrics)
    assert c["ratio"] == round(220 / 600, 4) and c["met"] is False


def test_the_cpu_of_a_mount_that_is_gone_is_not_measured_and_not_an_error():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert fuse_bench._mount_cpu_s(proc.pid) is None and fuse_bench._mount_cpu_s(None) is None
    assert fuse_bench._mount_cpu_s(os.getpid()) > 0
