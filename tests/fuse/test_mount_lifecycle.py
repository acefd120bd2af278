"""The mount's life: ``cistern mount`` in the background and its one-line
errors, ``cistern umount`` in every state (busy, daemon killed, cluster
gone), calls on a mount of a dead cluster failing within a bounded time,
SIGTERM, and ``cistern up --mount``. Everything started here is stopped,
and every mount taken off, even when a test fails."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time

import pytest

from cistern.core import procs
from cistern.fuse.mount import is_mounted
from cistern.fuse.testing import Mounted, mounted_cluster
from cistern.metadata.proc_testing import cistern_command, free_port

pytestmark = [pytest.mark.timeout(300)]


def cistern(*args, timeout=120, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cistern_command() + list(args), capture_output=True, text=True, timeout=timeout,
                          env=procs.child_env(env), stdin=subprocess.DEVNULL)


@pytest.fixture
def cleanup_mounts():
    """Mountpoints a test mounts outside Mounted: taken off whatever happens."""
    points: list[str] = []
    yield points
    for point in points:
        for argv in (["fusermount", "-u", point], ["fusermount", "-uz", point], ["umount", "-l", point]):
            if not is_mounted(point):
                break
            subprocess.run(argv, capture_output=True, timeout=60)


def wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_background_mount_umount_and_one_line_errors(tmp_path, cleanup_mounts):
    with mounted_cluster(tmp_path / "c", nodes=1) as mc:
        mnt = tmp_path / "bg"
        mnt.mkdir()
        cleanup_mounts.append(str(mnt))
        done = cistern("mount", str(mnt), "--cluster", mc.cluster_json, "--log-file", str(tmp_path / "bg.log"))
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout.split("pid ")[1].split(",")[0])
        try:
            assert is_mounted(mnt)
            (mnt / "hello").write_text("hello\n")
            assert open(mc.mount.path("hello")).read() == "hello\n"   # the same cluster, another mount

            again = cistern("mount", str(mnt), "--cluster", mc.cluster_json)
            assert again.returncode == 1 and "already a mount point" in again.stderr
            assert len(again.stderr.strip().splitlines()) == 1
        finally:
            done = cistern("umount", str(mnt))
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mnt)
        assert wait_gone(pid), "the background mount process outlived its unmount"

        not_mounted = cistern("umount", str(mnt))
        assert not_mounted.returncode == 1 and "not mounted" in not_mounted.stderr

        missing = cistern("mount", str(tmp_path / "nowhere"), "--cluster", mc.cluster_json)
        assert missing.returncode == 1 and "No such file or directory" in missing.stderr
        assert len(missing.stderr.strip().splitlines()) == 1

    # A cluster nobody answers for: a clear line, no mount, no process left.
    dead = cistern("mount", str(mnt), "--cluster", f"127.0.0.1:{free_port()}", "-o", "timeout=2",
                   "--log-file", str(tmp_path / "dead.log"))
    assert dead.returncode == 1 and "cannot reach the cluster" in dead.stderr, dead.stderr
    assert len(dead.stderr.strip().splitlines()) == 1
    assert not is_mounted(mnt)

    bad = cistern("mount", str(mnt), "--cluster", f"127.0.0.1:{free_port()}", "-o", "timeout=soon")
    assert bad.returncode == 1 and "timeout" in bad.stderr


def test_a_dead_cluster_fails_calls_within_a_bounded_time_and_umount_still_works(tmp_path):
    with mounted_cluster(tmp_path, nodes=1, options=("timeout=3",)) as mc:
        kept = mc.mount.path("kept")
        with open(kept, "w") as f:
            f.write("kept\n")
        mc.cluster.stop()       # every metad and node gone

        start = time.monotonic()
        with pytest.raises(OSError) as failure:
            os.stat(mc.mount.path("never-seen"))
        assert failure.value.errno in (errno.EIO, errno.ETIMEDOUT)
        with pytest.raises(OSError) as failure:
            with open(mc.mount.path("new-file"), "w") as f:
                f.write("x")
        assert failure.value.errno in (errno.EIO, errno.ETIMEDOUT)
        assert time.monotonic() - start < 30, "calls on a dead cluster must fail in bounded time"

        # Unmount while a call is still waiting for the cluster.
        stuck = threading.Thread(target=lambda: _swallow(os.listdir, mc.mount.path()), daemon=True)
        stuck.start()
        time.sleep(0.5)
        done = cistern("umount", mc.mount.mountpoint)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mc.mount.mountpoint)
        stuck.join(30)
        assert not stuck.is_alive()
        assert mc.mount.stop() in (0, None) or not mc.mount.alive()


def _swallow(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass


def test_umount_works_after_the_mount_process_is_killed(tmp_path):
    with mounted_cluster(tmp_path, nodes=1) as mc:
        mc.mount.proc.send_signal(signal.SIGKILL)
        mc.mount.proc.wait(10)
        assert is_mounted(mc.mount.mountpoint)
        with pytest.raises(OSError) as failure:
            os.listdir(mc.mount.mountpoint)
        assert failure.value.errno == errno.ENOTCONN
        done = cistern("umount", mc.mount.mountpoint)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mc.mount.mountpoint)


def test_sigterm_unmounts_and_exits_zero(tmp_path):
    with mounted_cluster(tmp_path, nodes=1) as mc:
        other = Mounted(mc.cluster_json, tmp_path / "m2", options=("timeout=5",))
        with other:
            with open(other.path("f"), "w") as f:
                f.write("data")
            other.proc.send_signal(signal.SIGTERM)
            assert other.proc.wait(30) == 0
            assert not is_mounted(other.mountpoint)
        assert open(mc.mount.path("f")).read() == "data"


def test_cistern_up_mount_mounts_the_local_cluster_and_unmounts_on_exit(tmp_path, cleanup_mounts):
    mnt = tmp_path / "up-mnt"
    mnt.mkdir()
    cleanup_mounts.append(str(mnt))
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(cistern_command() + ["up", "--data", str(tmp_path / "data"), "--nodes", "1",
                                               "--mount", str(mnt)],
                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          env=procs.child_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "up.log").read_text().count("mounted at"):
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.1)
        assert is_mounted(mnt)
        os.mkdir(mnt / "d")
        assert os.listdir(mnt) == ["d"]
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, (tmp_path / "up.log").read_text()
        assert not is_mounted(mnt)
        assert "stopped" in (tmp_path / "up.log").read_text()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(30)
        log.close()


def test_a_metadata_leader_change_is_invisible_to_users_of_the_mount(tmp_path):
    with mounted_cluster(tmp_path, nodes=1) as mc:
        d = mc.mount.path("d")
        os.mkdir(d)
        errors: list[BaseException] = []
        written: list[str] = []

        def writer():
            try:
                for i in range(60):
                    name = os.path.join(d, f"f{i}")
                    with open(name, "w") as f:
                        f.write(f"content {i}\n")
                    written.append(name)
                    time.sleep(0.05)
            except BaseException as e:   # noqa: BLE001 - reported below
                errors.append(e)

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)
        leader = mc.cluster.meta.leader_index()
        assert leader is not None
        mc.cluster.meta.kill(leader)
        thread.join(120)
        assert not thread.is_alive() and not errors, errors
        assert len(written) == 60
        for i, name in enumerate(written):
            assert open(name).read() == f"content {i}\n"
        assert sorted(os.listdir(d)) == sorted(f"f{i}" for i in range(60))
