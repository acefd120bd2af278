"""Faults under a real mount: the metadata leader is killed (SIGKILL) while
``cp -r`` copies a tree into the mount. The user sees nothing: the copy
exits 0 and ``diff -r`` finds the copy identical (the client retries against
the new leader, and its retries are applied once)."""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from cistern.fuse.testing import mounted_cluster

pytestmark = pytest.mark.timeout(300)

block_bytes = 64 * 1024


def make_tree(root, *, seed: int, dirs: int, files_per_dir: int) -> int:
    """dirs directories of files_per_dir files of varied sizes (a few span
    several blocks); returns the number of files."""
    rng = random.Random(seed)
    for d in range(dirs):
        sub = os.path.join(root, f"d{d % 5}", f"e{d}")
        os.makedirs(sub, exist_ok=True)
        for f in range(files_per_dir):
            with open(os.path.join(sub, f"f{f}"), "wb") as out:
                out.write(rng.randbytes(rng.choice([0, 100, 3000, 20_000, 3 * block_bytes + 1])))
    return dirs * files_per_dir


def count_files(root) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def test_leader_killed_during_cp_r_into_the_mount_the_copy_completes_identical(tmp_path):
    src = tmp_path / "src"
    total = make_tree(src, seed=11, dirs=20, files_per_dir=20)
    with mounted_cluster(tmp_path, block_size=block_bytes) as mc:
        meta = mc.cluster.meta
        leader = meta.wait_leader()
        dst = os.path.join(mc.mount.mountpoint, "copy")
        log = open(tmp_path / "cp.log", "w+")
        cp = subprocess.Popen(["cp", "-r", str(src), dst], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (os.path.isdir(dst) and count_files(dst) >= total // 5):
                assert cp.poll() is None, "cp ended before the leader could be killed"
                assert time.monotonic() < deadline, "cp made no progress"
                time.sleep(0.05)
            assert cp.poll() is None, "cp ended before the leader could be killed"
            meta.kill(leader)
            killed_at = count_files(dst)
            assert cp.wait(timeout=240) == 0, open(tmp_path / "cp.log").read()
        finally:
            if cp.poll() is None:
                cp.kill()
                cp.wait()
        assert killed_at < total                     # the kill fell inside the copy
        assert meta.wait_leader(exclude=leader) != leader
        diff = subprocess.run(["diff", "-r", str(src), dst], capture_output=True, text=True, timeout=120)
        assert diff.returncode == 0, diff.stdout[-3000:] + diff.stderr[-1000:]
        assert count_files(dst) == total
        # The killed replica comes back and catches up with the same state.
        meta.restart(leader)
        statuses = meta.wait_converged(timeout_s=60)
        assert len({s.get("digest") for s in statuses}) == 1, statuses
