"""Asynchronous creates through real mounts (``async_create``, on by
default): two mounts of one cluster, one creating files in a directory in a
burst (answered at once under a delegation), the other listing and opening
them meanwhile; the creating mount SIGKILLed with creates not yet
committed; fsync of the directory across a metadata leader kill. Every
mount and process is stopped by the fixtures."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request

import pytest

from cistern.fuse.testing import mounted_cluster
from cistern.metadata import limits

pytestmark = [pytest.mark.timeout(300)]


def metric(mount, name: str) -> float:
    text = urllib.request.urlopen(f"http://{mount.metrics_address}/metrics", timeout=10).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def create_files(directory: str, names) -> None:
    for name in names:
        os.close(os.open(os.path.join(directory, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


def test_a_burst_of_creates_is_answered_at_once_and_seen_by_another_mount(tmp_path):
    with mounted_cluster(tmp_path, metrics=True) as mc:
        a = mc.mount
        b = mc.mount_again(tmp_path / "mnt-b", metrics=True)
        os.mkdir(a.path("d"))
        create_files(a.path("d"), [f"quiet{i}" for i in range(300)])
        assert metric(a, "cistern_fuse_async_creates") >= 250        # answered under the delegation
        assert metric(a, "cistern_fuse_async_create_batches") < 250  # and committed in batches
        assert sorted(os.listdir(b.path("d"))) == sorted(f"quiet{i}" for i in range(300))

        # Now B watches while A creates: every file whose create and close
        # returned on A is listed and opened on B.
        done = [0]
        failure = []

        def burst():
            try:
                for i in range(400):
                    create_files(a.path("d"), [f"busy{i}"])
                    done[0] = i + 1
            except BaseException as e:   # noqa: BLE001 - reported by the main thread
                failure.append(e)

        writer = threading.Thread(target=burst)
        writer.start()
        checks = 0
        while writer.is_alive() or checks == 0:
            n = done[0]
            listed = set(os.listdir(b.path("d")))
            missing = [f"busy{i}" for i in range(n) if f"busy{i}" not in listed]
            assert not missing, f"B does not list {missing[:5]} after A's create+close returned"
            if n:
                with open(b.path("d", f"busy{n - 1}"), "rb") as f:
                    assert f.read() == b""
            checks += 1
        writer.join()
        assert not failure, failure
        assert checks > 1
        assert len(os.listdir(b.path("d"))) == 700
        # B's own creates in the directory work, and A sees them.
        create_files(b.path("d"), ["from-b"])
        assert os.path.exists(a.path("d", "from-b"))


def test_the_creating_mount_killed_with_creates_pending_others_resume_within_a_term(tmp_path):
    with mounted_cluster(tmp_path) as mc:
        a = mc.mount
        b = mc.mount_again(tmp_path / "mnt-b")
        os.mkdir(a.path("d"))
        create_files(a.path("d"), [f"f{i:04d}" for i in range(2000)])
        a.proc.kill()                        # SIGKILL: whatever is queued dies with it
        a.proc.wait(timeout=30)
        started = time.monotonic()
        names = os.listdir(b.path("d"))
        waited = time.monotonic() - started
        assert waited < limits.delegation_term_s + 3.0, waited
        # Creates commit in the order they were answered: what survived is a prefix.
        assert sorted(names) == [f"f{i:04d}" for i in range(len(names))]
        for name in names[-3:]:
            assert os.stat(b.path("d", name)).st_size == 0
        create_files(b.path("d"), ["after"])
        assert "after" in os.listdir(b.path("d"))
        with mc.client() as c:
            assert sorted(c.listdir("/d")) == sorted(names + ["after"])


def test_fsync_of_the_directory_makes_creates_durable_across_a_leader_kill(tmp_path):
    with mounted_cluster(tmp_path, metrics=True) as mc:
        a = mc.mount
        os.mkdir(a.path("d"))
        names = [f"f{i}" for i in range(500)]
        create_files(a.path("d"), names)
        assert metric(a, "cistern_fuse_async_creates") > 0
        fd = os.open(a.path("d"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        meta = mc.cluster.meta
        leader = meta.wait_leader()
        meta.kill(leader)
        meta.wait_leader(exclude=leader)
        with mc.client() as c:
            assert sorted(c.listdir("/d")) == sorted(names)
        assert sorted(os.listdir(a.path("d"))) == sorted(names)
        # Without fsync too, when nobody else touches the directory meanwhile:
        # the batches the mount resends to the new leader still commit (a
        # delegation that lapsed during the election is taken back by its holder).
        meta.restart(leader)
        meta.wait_converged(timeout_s=60)
        more = [f"g{i}" for i in range(300)]
        create_files(a.path("d"), more)
        second = meta.wait_leader()
        meta.kill(second)
        meta.wait_leader(exclude=second)
        assert sorted(os.listdir(a.path("d"))) == sorted(names + more)
        with mc.client() as c:
            assert sorted(c.listdir("/d")) == sorted(names + more)
        # Every replica applied the delegation operations to the same state.
        meta.restart(second)
        statuses = meta.wait_converged(timeout_s=60)
        assert len({s.get("digest") for s in statuses}) == 1, statuses
