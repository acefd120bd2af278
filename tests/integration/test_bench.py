"""`cistern bench meta` as a user runs it: every target (a fresh local
cluster through the client library, a tmpfs directory through os calls, the
Raft state machine and a 3-replica group without RPC) and every phase gives a
table, a JSON record of the documented shape and a PNG; the counts are what
was asked; errors are counted, never hidden; --compare prints ratios; --sweep
gives one point per value; Ctrl-C leaves a partial report."""

import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import pytest

from cistern.bench import report
from cistern.bench.workloads import PHASES

CISTERN = os.path.join(os.path.dirname(sys.executable), "cistern")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def shm():
    """A scratch directory on tmpfs (/dev/shm), removed afterwards."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="cistern-test-bench-", dir=base)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def bench(tmp_path, *args, env=None):
    """Run `cistern bench meta ARGS --json --plot`; (exit code, stdout, stderr, JSON doc, png path)."""
    out_json = str(tmp_path / "bench.json")
    out_png = str(tmp_path / "bench.png")
    environment = {k: v for k, v in os.environ.items() if k != "CISTERN_CLUSTER"}
    environment.update(env or {})
    proc = subprocess.run([CISTERN, "bench", "meta", *args, "--json", out_json, "--plot", out_png],
                          capture_output=True, text=True, timeout=110, cwd=str(tmp_path), env=environment)
    doc = json.load(open(out_json)) if os.path.exists(out_json) else None
    return proc.returncode, proc.stdout, proc.stderr, doc, out_png


def assert_valid(doc):
    assert report.validate(doc) == [], report.validate(doc)[:5]


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000


def timed_phases(result):
    return {p["phase"]: p for p in result["phases"] if p["timed"]}


def assert_clean_run(result, clients, files):
    phases = timed_phases(result)
    assert list(phases) == list(PHASES)
    for name in ("file-create", "stat", "open-close", "rename", "file-remove"):
        assert phases[name]["ops"] == phases[name]["expected_ops"] == clients * files, name
    for p in phases.values():
        assert p["errors"] == 0, (p["phase"], p["first_error"])
        assert p["ops_per_s"] > 0 and p["latency_us"]["p50"] > 0
        assert p["latency_us"]["p50"] <= p["latency_us"]["p99"] <= p["latency_us"]["p999"]
        assert p["verify"]["ok"], p          # the harness's own check of the namespace


def test_path_mode_every_phase_with_the_bare_loop(tmp_path, shm):
    code, out, err, doc, png = bench(tmp_path, "--via", f"path:{shm}", "--clients", "2",
                                     "--files-per-client", "3000", "--depth", "2", "--fanout", "3",
                                     "--baseline-loop", "--seed", "3")
    assert code == 0, err
    assert_valid(doc)
    main = [r for r in doc["results"] if r["role"] == "main"]
    assert len(main) == 1 and main[0]["fs_type"] == "tmpfs"
    assert_clean_run(main[0], 2, 3000)
    assert timed_phases(main[0])["dir-create"]["ops"] == 2 * (3 + 9)
    for phase in PHASES:
        assert phase in out
    assert "harness vs bare loop" in out
    # The harness must not be the bottleneck: against a bare loop of the same
    # os calls (taking turns in the same processes), per-file phases keep
    # >= 70% of its rate (median, since single phases on a shared machine jitter).
    ratios = {h["phase"]: h["ratio"] for h in doc["harness_vs_bare"]}
    assert set(ratios) == set(PHASES)
    file_phases = [ratios[p] for p in ("file-create", "stat", "open-close", "rename", "file-remove")]
    assert statistics.median(file_phases) >= 0.7, ratios
    assert_png(png)
    assert os.listdir(shm) == []     # everything it made is gone


def test_api_mode_on_a_fresh_local_cluster_compared_with_tmpfs(tmp_path, shm):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "cistern-bench-cluster-*")))
    code, out, err, doc, png = bench(tmp_path, "--via", "api", "--clients", "2", "--files-per-client", "15",
                                     "--inflight", "4", "--compare", f"path:{shm}")
    assert code == 0, err
    assert_valid(doc)
    [main] = [r for r in doc["results"] if r["role"] == "main"]
    [base] = [r for r in doc["results"] if r["role"] == "compare"]
    assert main["target"] == "api" and base["target"] == f"path:{shm}"
    assert_clean_run(main, 2, 15)
    assert_clean_run(base, 2, 15)
    assert {c["phase"] for c in doc["compare"]} == set(PHASES)
    assert all(c["ratio"] > 0 for c in doc["compare"])
    assert "ratios" in out and f"api / path:{shm}" in out
    assert doc["versions"]["grpcio"] != "absent" and doc["machine"]["cpu_count"] >= 1
    assert_png(png)
    # The temporary cluster is stopped and removed.
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "cistern-bench-cluster-*")))
    assert after <= before


def test_raft_modes_state_machine_and_group(tmp_path):
    code, out, err, doc, png = bench(tmp_path, "--via", "raft", "--clients", "2", "--files-per-client", "40",
                                     "--inflight", "8")
    assert code == 0, err
    assert_valid(doc)
    assert [r["target"] for r in doc["results"]] == ["raft:state", "raft:group"]
    for result in doc["results"]:
        assert_clean_run(result, 2, 40)
    assert "== raft:state" in out and "== raft:group" in out
    assert_png(png)


def test_errors_are_counted_on_a_prepopulated_directory(tmp_path, shm):
    code, _, err, _, _ = bench(tmp_path, "--via", f"path:{shm}", "--clients", "2", "--files-per-client", "25",
                               "--seed", "7", "--keep", "--phases", "file-create")
    assert code == 0, err
    assert len(os.listdir(os.path.join(shm, "bench-7", "c1", "d2"))) > 0     # --keep kept the tree
    # The same run again finds every file (and directory) already there.
    code, out, err, doc, _ = bench(tmp_path, "--via", f"path:{shm}", "--clients", "2", "--files-per-client", "25",
                                   "--seed", "7", "--phases", "file-create,stat")
    assert code == 1
    assert_valid(doc)
    phases = {p["phase"]: p for p in doc["results"][0]["phases"]}
    assert phases["file-create"]["ops"] == 50 and phases["file-create"]["errors"] == 50
    assert "File exists" in phases["file-create"]["first_error"]
    assert phases["dir-create"]["errors"] == 8 and not phases["dir-create"]["timed"]
    assert phases["stat"]["errors"] == 0
    assert "file-create: 50 errors" in err
    assert "File exists" in out


def test_sweep_gives_one_point_per_value_in_shared_directory_mode(tmp_path, shm):
    code, out, err, doc, png = bench(tmp_path, "--via", f"path:{shm}", "--sweep", "clients=1,3",
                                     "--files-per-client", "20", "--shared-dir", "--depth", "2", "--fanout", "2",
                                     "--phases", "dir-create,file-create,readdir,dir-remove")
    assert code == 0, err
    assert_valid(doc)
    assert doc["config"]["sweep"] == {"param": "clients", "values": [1, 3]}
    assert [(r["sweep_value"], r["clients"]) for r in doc["results"]] == [(1, 1), (3, 3)]
    for r in doc["results"]:
        phases = timed_phases(r)
        assert phases["file-create"]["ops"] == r["clients"] * 20
        assert phases["dir-create"]["ops"] == 2 + 4          # one shared tree, split among the clients
        assert phases["readdir"]["ops"] == r["clients"] * 4
        assert all(p["verify"]["ok"] and not p["errors"] for p in r["phases"])
    assert "clients=3" in out
    assert_png(png)


def test_mount_mode_needs_a_mount_point(tmp_path, shm):
    proc = subprocess.run([CISTERN, "bench", "meta", "--via", f"mount:{shm}"], capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    assert proc.returncode != 0 and "not a mount point" in proc.stderr


def test_ctrl_c_stops_cleanly_with_a_partial_report(tmp_path, shm):
    out_json = str(tmp_path / "partial.json")
    proc = subprocess.Popen([CISTERN, "bench", "meta", "--via", f"path:{shm}", "--clients", "2",
                             "--files-per-client", "200000", "--seed", "5", "--json", out_json],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
    leaf = os.path.join(shm, "bench-5", "c0", "d0")
    deadline = time.monotonic() + 60
    while not (os.path.isdir(leaf) and len(os.listdir(leaf)) > 100):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "INTERRUPTED" in out and "partial" in err
    doc = json.load(open(out_json))
    assert_valid(doc)
    assert doc["interrupted"] is True
    create = {p["phase"]: p for p in doc["results"][0]["phases"]}["file-create"]
    assert 0 < create["ops"] < create["expected_ops"] == 400000
    # No client process is left behind.
    time.sleep(0.5)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children == []


def test_block_bench_prints_the_writes_cpu_per_mib_as_data_bench_does(tmp_path, capsys):
    """block_bench and data_bench are compared by CPU per MiB written (MB/s
    swing with the shared host's load): block_bench prints the client's and
    the three nodes' figure, every group measured (not zero)."""
    import re

    from cistern.bench import block_bench

    assert block_bench.main(["--mib", "8", "--rounds", "1", "--inflight", "2", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    found = re.search(r"CPU ms/MiB, write\s*: client\s+([\d.]+), nodes\s+([\d.]+); all", out)
    assert found, out
    assert float(found.group(2)) > 0, out      # the nodes hashed, wrote and fsynced every block
