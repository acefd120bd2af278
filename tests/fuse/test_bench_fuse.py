"""`cistern bench fuse` as a user runs it, tiny: it starts a local cluster,
mounts it and the passthrough over tmpfs, measures both with 1 and 2
processes in two rounds, prints the ratio table, writes a JSON record of the documented
shape, and leaves no mount, process or scratch directory behind."""

import glob
import json
import os
import subprocess
import sys
import tempfile

import pytest

from cistern.bench import fuse_bench, report

CISTERN = os.path.join(os.path.dirname(sys.executable), "cistern")
pytestmark = pytest.mark.timeout(300)


def bench_mounts() -> list[str]:
    """The benchmark's mount points still mounted (its scratch directories' names)."""
    with open("/proc/mounts", encoding="utf-8") as f:
        return [line.split()[1] for line in f if "cistern-bench-fuse-" in line]


def test_tiny_run_measures_both_mounts_and_cleans_up(tmp_path):
    scratch = set(glob.glob(os.path.join(tempfile.gettempdir(), "cistern-bench-fuse-*")))
    shm = set(glob.glob("/dev/shm/cistern-bench-fuse-src-*"))
    out_json = tmp_path / "fuse.json"
    env = {k: v for k, v in os.environ.items() if k != "CISTERN_CLUSTER"}
    proc = subprocess.run([CISTERN, "bench", "fuse", "--files", "60", "--mib", "4", "--chunk-kib", "256",
                           "--procs", "1,2", "--rounds", "2", "--settle-s", "1.2", "--json", str(out_json), "--no-progress"],
                          capture_output=True, text=True, timeout=280, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert report.validate(doc, fuse_bench.SCHEMA) == []
    assert doc["config"]["procs"] == [1, 2] and doc["config"]["rounds"] == 2 and not doc["interrupted"]
    # The mounts take turns at each count, round after round.
    assert [(r["round"], r["target"], r["procs"]) for r in doc["results"]] == [
        (n, target, procs) for n in (0, 1) for procs in (1, 2) for target in ("passthrough", "cistern")]
    for r in doc["results"]:
        assert r["fs_type"] == f"fuse.{r['target']}"
        phases = {p["phase"]: p for p in r["phases"]}
        assert phases["file-create"]["ops"] == phases["stat"]["ops"] == 60
        assert phases["readdir"]["ops"] == r["procs"]                 # each process lists the directory once
        assert phases["readdir"]["verify"]["files"] == 60
        assert phases["seq-write"]["ops"] == phases["seq-read"]["ops"] == 16    # 4 MiB in 256 KiB calls
        assert all(p["errors"] == 0 for p in r["phases"])
    metrics = {(m["metric"], m["target"], m["procs"], m["round"]): m["value"] for m in doc["metrics"]}
    assert len(metrics) == 7 * 2 * 2 * 2
    # The mounts' CPU per GiB: measured in clock ticks, so a 4 MiB phase may show 0.
    assert all(v > 0 if not m.endswith("-cpu") else v >= 0 for (m, *_), v in metrics.items())
    assert {(c["metric"], c["procs"]) for c in doc["compare"]} == {
        (m, p) for m in fuse_bench.TARGETS for p in (1, 2)}
    for c in doc["compare"]:
        assert c["target_ratio"] == fuse_bench.TARGETS[c["metric"]] and len(c["ratios"]) == 2
        if not c["metric"].endswith("-cpu"):
            assert c["ratio"] > 0 and min(c["ratios"]) <= c["ratio"] <= max(c["ratios"])
    # The table a user reads: every metric at each count, with its target.
    for metric in ("creates ops/s", "stats ops/s", "readdir s", "seq-write MB/s", "seq-read MB/s",
                   "seq-write-cpu CPU-s/GiB", "seq-read-cpu CPU-s/GiB"):
        assert proc.stdout.count(metric) == 2, proc.stdout
    assert ">=50%" in proc.stdout and ">=60%" in proc.stdout and ">=40%" in proc.stdout
    # Nothing is left behind.
    assert bench_mounts() == []
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "cistern-bench-fuse-*"))) <= scratch
    assert set(glob.glob("/dev/shm/cistern-bench-fuse-src-*")) <= shm


def test_seq_only_measures_just_the_sequential_phases(tmp_path):
    out_json = tmp_path / "seq.json"
    env = {k: v for k, v in os.environ.items() if k != "CISTERN_CLUSTER"}
    proc = subprocess.run([CISTERN, "bench", "fuse", "--seq-only", "--mib", "4", "--chunk-kib", "256",
                           "--procs", "1", "--rounds", "1", "--json", str(out_json),
                           "--no-progress"],
                          capture_output=True, text=True, timeout=280, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert report.validate(doc, fuse_bench.SCHEMA) == []
    for r in doc["results"]:
        assert [p["phase"] for p in r["phases"]] == ["seq-write", "seq-read"]
        assert all(p["errors"] == 0 for p in r["phases"])
    assert {(c["metric"], c["procs"]) for c in doc["compare"]} == {
        ("seq-write", 1), ("seq-read", 1), ("seq-write-cpu", 1), ("seq-read-cpu", 1)}
    assert "creates" not in proc.stdout and "seq-read MB/s" in proc.stdout
    assert bench_mounts() == []


def test_bad_arguments_are_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([CISTERN, "bench", "fuse", "--procs", "0"], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 2 and "bad --procs" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([CISTERN, "bench", "fuse", "--rounds", "0"], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 2 and "--rounds" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
