"""The mount on a real cluster (3 metad + 3 storage nodes, real FUSE):
ordinary file operations through os and shutil, the errnos a local
filesystem gives, read-only mounts, two users kept apart, two mounts of one
cluster, and the metrics endpoint. Every mount is unmounted and every
process stopped by the fixtures, also when a test fails."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from cistern.fuse.testing import mounted_cluster

pytestmark = [pytest.mark.timeout(300)]

NOBODY = 65534


@pytest.fixture(scope="module")
def mc(tmp_path_factory):
    with mounted_cluster(tmp_path_factory.mktemp("mount"), metrics=True) as cluster:
        yield cluster


@pytest.fixture
def mnt(mc, request):
    """A fresh directory in the mount for each test."""
    path = mc.mount.path(request.node.name[:80])
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


def errno_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
    return None


def test_files_and_directories_behave_like_a_local_disk(mnt):
    data = os.urandom(3 * (1 << 20) + 12345)     # more than 3 blocks of 1 MiB
    path = os.path.join(mnt, "f.bin")
    with open(path, "wb") as f:
        f.write(data)
    assert os.path.getsize(path) == len(data)
    with open(path, "rb") as f:
        assert f.read() == data
        f.seek(len(data) - 100)
        assert f.read() == data[-100:]
    with open(path, "r+b") as f:                  # overwrite in the middle
        f.seek(1 << 20)
        f.write(b"X" * 10)
    data = data[:1 << 20] + b"X" * 10 + data[(1 << 20) + 10:]
    with open(path, "ab") as f:
        f.write(b"tail")
    data += b"tail"
    assert open(path, "rb").read() == data
    os.truncate(path, 5000)
    assert open(path, "rb").read() == data[:5000]
    with open(path, "r+b") as f:                  # ftruncate grows with zeros
        f.truncate(6000)
    assert open(path, "rb").read() == data[:5000] + bytes(1000)

    os.makedirs(os.path.join(mnt, "a", "b", "c"))
    for i in range(20):
        with open(os.path.join(mnt, "a", "b", f"n{i}"), "w") as f:
            f.write(f"file {i}\n")
    assert sorted(os.listdir(os.path.join(mnt, "a", "b"))) == sorted(["c"] + [f"n{i}" for i in range(20)])
    shutil.copytree(os.path.join(mnt, "a"), os.path.join(mnt, "a2"), symlinks=True)
    assert open(os.path.join(mnt, "a2", "b", "n7")).read() == "file 7\n"
    os.rename(os.path.join(mnt, "a2"), os.path.join(mnt, "a3"))
    assert not os.path.exists(os.path.join(mnt, "a2"))
    assert open(os.path.join(mnt, "a3", "b", "n19")).read() == "file 19\n"
    shutil.rmtree(os.path.join(mnt, "a3"))
    assert not os.path.exists(os.path.join(mnt, "a3"))

    os.symlink("a/b/n3", os.path.join(mnt, "link"))
    assert os.readlink(os.path.join(mnt, "link")) == "a/b/n3"
    assert open(os.path.join(mnt, "link")).read() == "file 3\n"
    assert stat.S_ISLNK(os.lstat(os.path.join(mnt, "link")).st_mode)

    os.link(os.path.join(mnt, "a", "b", "n1"), os.path.join(mnt, "hard"))
    s1, s2 = os.stat(os.path.join(mnt, "a", "b", "n1")), os.stat(os.path.join(mnt, "hard"))
    assert s1.st_ino == s2.st_ino and s2.st_nlink == 2
    os.unlink(os.path.join(mnt, "a", "b", "n1"))
    assert open(os.path.join(mnt, "hard")).read() == "file 1\n"

    os.setxattr(path, "user.colour", b"blue")
    assert os.getxattr(path, "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(path)
    os.removexattr(path, "user.colour")
    assert errno_of(os.getxattr, path, "user.colour") == "ENODATA"

    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.utime(path, ns=(1_000_000_000_123, 2_000_000_000_456))
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 5678)
    assert st.st_mtime_ns == 2_000_000_000_456 and st.st_atime_ns == 1_000_000_000_123

    names = bytes(range(1, 47)).replace(b"/", b"") + b"\xff\xfe"    # any byte but / and NUL
    odd = os.path.join(os.fsencode(mnt), names)
    with open(odd, "wb") as f:
        f.write(b"odd")
    assert names in os.listdir(os.fsencode(mnt))
    assert open(odd, "rb").read() == b"odd"

    vfs = os.statvfs(mnt)
    assert vfs.f_namemax == 255 and vfs.f_bavail > 0


def test_errnos_are_the_ones_a_local_filesystem_gives(mnt, tmp_path):
    def scenario(root):
        j = lambda *p: os.path.join(root, *p)   # noqa: E731
        os.mkdir(j("d"))
        os.mkdir(j("d", "sub"))
        open(j("file"), "w").close()
        out = {
            "name too long": errno_of(os.mkdir, j("x" * 256)),
            "create too long": errno_of(open, j("y" * 256), "w"),
            "dir into own subtree": errno_of(os.rename, j("d"), j("d", "sub", "inner")),
            "rmdir non-empty": errno_of(os.rmdir, j("d")),
            "mkdir existing": errno_of(os.mkdir, j("d")),
            "exclusive create existing": errno_of(os.open, j("file"), os.O_CREAT | os.O_EXCL | os.O_WRONLY),
            "open missing": errno_of(open, j("missing")),
            "write a directory": errno_of(open, j("d"), "w"),
            "mkdir under a file": errno_of(os.mkdir, j("file", "x")),
            "rmdir a file": errno_of(os.rmdir, j("file")),
            "unlink a directory": errno_of(os.unlink, j("d")),
            "rename dir over file": errno_of(os.rename, j("d"), j("file")),
            "rename file over dir": errno_of(os.rename, j("file"), j("d")),
            "link a directory": errno_of(os.link, j("d"), j("d2")),
            "readlink a file": errno_of(os.readlink, j("file")),
            "missing xattr": errno_of(os.getxattr, j("file"), "user.none"),
            "listdir a file": errno_of(os.listdir, j("file")),
        }
        return out

    local = scenario(str(tmp_path))
    assert scenario(mnt) == local
    assert local["rmdir non-empty"] == "ENOTEMPTY" and local["name too long"] == "ENAMETOOLONG"


def test_a_read_only_mount_refuses_changes_with_erofs(mc, mnt, tmp_path):
    with open(os.path.join(mnt, "kept"), "w") as f:
        f.write("kept\n")
    ro = mc.mount_again(tmp_path / "ro", options=mc.options + ("ro",))
    try:
        here = os.path.join(ro.mountpoint, os.path.basename(mnt))
        assert open(os.path.join(here, "kept")).read() == "kept\n"
        assert errno_of(open, os.path.join(here, "new"), "w") == "EROFS"
        assert errno_of(open, os.path.join(here, "kept"), "a") == "EROFS"
        assert errno_of(os.mkdir, os.path.join(here, "dir")) == "EROFS"
        assert errno_of(os.unlink, os.path.join(here, "kept")) == "EROFS"
        assert errno_of(os.chmod, os.path.join(here, "kept"), 0o600) == "EROFS"
        assert errno_of(os.setxattr, os.path.join(here, "kept"), "user.x", b"1") == "EROFS"
    finally:
        assert ro.stop() == 0
    assert not os.path.ismount(ro.mountpoint)


# A script run as another user (no venv: only the standard library), which
# prints the errno name of each step as JSON.
AS_OTHER_USER = r"""
import errno, json, os, sys
root = sys.argv[1]
def e(fn, *a):
    try:
        r = fn(*a)
        if hasattr(r, "close"): r.close()
    except OSError as x:
        return errno.errorcode.get(x.errno, x.errno)
    return None
j = lambda *p: os.path.join(root, *p)
out = {
    "read private dir": e(os.listdir, j("private")),
    "stat inside private dir": e(os.stat, j("private", "secret")),
    "read world-readable file": e(open, j("public")),
    "write root's file": e(open, j("public"), "a"),
    "truncate root's file": e(os.truncate, j("public"), 0),
    "chmod root's file": e(os.chmod, j("public"), 0o777),
    "chown root's file": e(os.chown, j("public"), os.getuid(), -1),
    "give own file away": None,
    "create in root's dir": e(open, j("rootdir", "mine"), "w"),
    "unlink others' file in sticky dir": e(os.unlink, j("sticky", "roots")),
    "rename others' file in sticky dir": e(os.rename, j("sticky", "roots"), j("sticky", "moved")),
    "create own in sticky dir": e(open, j("sticky", "mine"), "w"),
    "chmod own file": e(os.chmod, j("sticky", "mine"), 0o600),
    "remove own file in sticky dir": e(os.unlink, j("sticky", "mine")),
    "xattr on root's file": e(os.setxattr, j("public"), "user.x", b"1"),
    "utime explicit on root's file": e(os.utime, j("public"), (1, 1)),
    "touch group-writable file": e(os.utime, j("groupfile")),
    "append to a write-only file": e(open, j("writeonly"), "a"),
    "read a write-only file": e(open, j("writeonly")),
}
open(j("sticky", "mine2"), "w").close()
out["give own file away"] = e(os.chown, j("sticky", "mine2"), 0, -1)
print(json.dumps(out))
"""


def run_as(uid: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def open_dir():
    """A directory every user can reach (pytest's tmp_path is 0700 root's)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="cistern-fuse-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_another_user_is_kept_out_as_on_a_local_disk(mc, mnt, open_dir):
    def prepare(root):
        j = lambda *p: os.path.join(root, *p)   # noqa: E731
        os.chmod(root, 0o755)
        os.mkdir(j("private"), 0o700)
        open(j("private", "secret"), "w").close()
        with open(j("public"), "w") as f:
            f.write("public\n")
        os.chmod(j("public"), 0o644)
        os.mkdir(j("rootdir"), 0o755)
        os.mkdir(j("sticky"))
        os.chmod(j("sticky"), 0o1777)
        open(j("sticky", "roots"), "w").close()
        os.chmod(j("sticky", "roots"), 0o666)
        open(j("groupfile"), "w").close()
        os.chmod(j("groupfile"), 0o666)
        with open(j("writeonly"), "w") as f:
            f.write("secret\n")
        os.chmod(j("writeonly"), 0o622)

    local = os.path.join(open_dir, "local")
    os.mkdir(local)
    # A second mount where the other user can reach it.
    reachable = mc.mount_again(os.path.join(open_dir, "mnt"))
    try:
        results = {}
        for name, root in (("local", local), ("mount", os.path.join(reachable.mountpoint, os.path.basename(mnt)))):
            prepare(root)
            done = run_as(NOBODY, "/usr/bin/python3", "-I", "-c", AS_OTHER_USER, root)
            assert done.returncode == 0, done.stderr
            results[name] = json.loads(done.stdout)
    finally:
        assert reachable.stop() == 0
    assert results["mount"] == results["local"]
    assert results["local"]["read private dir"] == "EACCES"
    assert results["local"]["chmod root's file"] == "EPERM"
    assert results["local"]["unlink others' file in sticky dir"] == "EPERM"
    assert results["local"]["create own in sticky dir"] is None
    assert results["local"]["append to a write-only file"] is None
    assert results["local"]["read a write-only file"] == "EACCES"


def test_a_file_written_and_closed_on_one_mount_is_read_whole_on_another(mc, mnt, tmp_path):
    other = mc.mount_again(tmp_path / "second")
    try:
        name = os.path.basename(mnt)
        there = os.path.join(other.mountpoint, name, "shared.bin")
        first = os.urandom(2 * (1 << 20) + 77)
        with open(os.path.join(mnt, "shared.bin"), "wb") as f:
            f.write(first)
        assert open(there, "rb").read() == first
        # Rewritten (longer) on the first mount after the second has looked:
        # once the second's cached attributes expire, a new open reads it whole.
        second = os.urandom(3 * (1 << 20) + 5)
        with open(os.path.join(mnt, "shared.bin"), "wb") as f:
            f.write(second)
        time.sleep(1.5)     # attr_timeout (1 s)
        assert open(there, "rb").read() == second
        # ... and the other way round.
        with open(os.path.join(other.mountpoint, name, "back.txt"), "w") as f:
            f.write("from the second mount\n")
        assert open(os.path.join(mnt, "back.txt")).read() == "from the second mount\n"
    finally:
        assert other.stop() == 0


def _uncached(fd: int) -> int:
    """Drop the kernel's pages of a file in the mount, so reads reach the mount."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def test_concurrent_readers_of_one_file_get_the_right_bytes_and_see_this_mounts_writes(mnt):
    """Readers on many threads, through one descriptor and several, at
    scattered offsets: every byte right (reads of one file overlap in the
    mount). A descriptor opened before another one of this mount writes
    reads the new bytes once they are written, and after the writer closes."""
    data = os.urandom(6 * (1 << 20) + 4321)      # 7 blocks of 1 MiB
    path = os.path.join(mnt, "shared.bin")
    with open(path, "wb") as f:
        f.write(data)
    piece = 128 << 10
    shared = _uncached(os.open(path, os.O_RDONLY))
    try:
        def read_all(k: int) -> list:
            fd = shared if k % 2 else _uncached(os.open(path, os.O_RDONLY))
            try:
                offsets = list(range(0, len(data), piece))
                offsets = offsets[k::2] + offsets[:k:2] + offsets[1::3]    # every thread its own order
                return [at for at in offsets if os.pread(fd, piece, at) != data[at:at + piece]]
            finally:
                if fd != shared:
                    os.close(fd)

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(read_all, range(8))) == [[]] * 8

        # A writer of this mount: the reader opened before it sees its writes.
        patch = os.urandom(1000)
        at = 3 * (1 << 20) - 500                         # across a block boundary
        writer = os.open(path, os.O_RDWR)
        try:
            os.pwrite(writer, patch, at)
            assert os.pread(_uncached(shared), len(patch), at) == patch
        finally:
            os.close(writer)
        expected = data[:at] + patch + data[at + len(patch):]
        assert os.pread(_uncached(shared), len(expected), 0) == expected
    finally:
        os.close(shared)


def test_libfuse_threads_keep_their_python_state_and_the_mount_survives_their_churn(mc, mnt):
    """fuse/threadstate.py: after bursts of parallel requests (libfuse
    starts workers for them and ends the idle ones after), the mount keeps a
    Python thread state per worker, bounded by its threads, and still serves
    every request right."""
    data = os.urandom(2 * (1 << 20))
    path = os.path.join(mnt, "churn.bin")
    with open(path, "wb") as f:
        f.write(data)

    def burst(k: int) -> bool:
        fd = _uncached(os.open(path, os.O_RDONLY))
        try:
            return all(os.pread(fd, 4096, at) == data[at:at + 4096] and os.stat(path).st_size == len(data)
                       for at in range(k * 4096, len(data), 16 * 4096))
        finally:
            os.close(fd)

    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            assert all(pool.map(burst, range(16)))
        time.sleep(0.3)
    text = urllib.request.urlopen(f"http://{mc.mount.metrics_address}/metrics", timeout=10).read().decode()
    kept = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("cistern_fuse_thread_states ")]
    # Live threads, plus workers that ended since the last new one (reaped by the next).
    threads = len(os.listdir(f"/proc/{mc.mount.proc.pid}/task"))
    assert kept and 1 <= kept[0] <= threads + 16, (kept, threads)
    assert open(path, "rb").read() == data


def test_the_metrics_endpoint_counts_operations_by_type(mc, mnt):
    for i in range(5):
        with open(os.path.join(mnt, f"m{i}"), "w") as f:
            f.write("x" * 100)
        os.stat(os.path.join(mnt, f"m{i}"))
    text = urllib.request.urlopen(f"http://{mc.mount.metrics_address}/metrics", timeout=10).read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("cistern_fuse_operations_total{"):
            op = line.split('op="')[1].split('"')[0]
            counts[op] = float(line.rsplit(" ", 1)[1])
    assert counts.get("create", 0) >= 5 and counts.get("write", 0) >= 5 and counts.get("getattr", 0) >= 5
    assert "cistern_fuse_operation_seconds_bucket" in text
    assert 'cistern_fuse_attr_cache_total{result="hit"}' in text
    assert "cistern_fuse_written_bytes_total" in text


def test_times_hard_links_and_appends_behave_as_on_a_local_disk(mnt):
    path = os.path.join(mnt, "t")
    open(path, "w").close()
    subprocess.run(["touch", "-m", "-d", "2001-02-03 04:05:06.789", path], check=True)   # mtime alone
    assert os.stat(path).st_mtime_ns == 981173106_789000000
    subprocess.run(["touch", "-a", "-d", "2002-02-03 04:05:06.5", path], check=True)     # atime alone
    st = os.stat(path)
    assert st.st_atime_ns == 1012709106_500000000 and st.st_mtime_ns == 981173106_789000000

    # Times set before close (cp -a, tar) outlive the close.
    fd = os.open(os.path.join(mnt, "g"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"hello")
        os.utime(fd, ns=(10**18, 10**18 + 5))
        assert os.fstat(fd).st_mtime_ns == 10**18 + 5
    finally:
        os.close(fd)
    time.sleep(1.2)       # past attr_timeout: the cluster's answer
    assert os.stat(os.path.join(mnt, "g")).st_mtime_ns == 10**18 + 5

    # Written through one name, read (and appended) through the other at once.
    a, b = os.path.join(mnt, "a"), os.path.join(mnt, "b")
    with open(a, "wb") as f:
        f.write(b"first\n")
    os.link(a, b)
    os.stat(a), os.stat(b)          # both names' attributes now cached in the kernel
    with open(b, "ab") as f:
        f.write(b"second\n")
    with open(a, "ab") as f:
        f.write(b"third\n")
    assert open(a, "rb").read() == open(b, "rb").read() == b"first\nsecond\nthird\n"


def test_a_file_unlinked_while_open_stays_usable_until_its_last_close(mc, mnt):
    d = os.path.join(mnt, "d")
    os.mkdir(d)
    path = os.path.join(d, "f")
    with open(path, "w+b") as f:
        f.write(b"before\n")
        f.flush()
        os.unlink(path)
        assert os.listdir(d) == [] and not os.path.exists(path)
        os.rmdir(d)                                   # its directory can go too
        f.write(b"after\n")
        f.flush()
        f.seek(0)
        assert f.read() == b"before\nafter\n"
    assert ".cistern-unlinked" not in os.listdir(mc.mount.mountpoint)
    with mc.client() as c:
        # Removed at the last close: the kernel sends RELEASE after close()
        # returns (FUSE releases are asynchronous), so it may take a moment.
        deadline = time.monotonic() + 10
        while c.listdir("/.cistern-unlinked") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.listdir("/.cistern-unlinked") == []
    import tempfile
    with tempfile.TemporaryFile(dir=mnt) as t:        # create, unlink, then use
        t.write(b"x" * 300_000)
        t.seek(0)
        assert t.read() == b"x" * 300_000
    assert os.listdir(mnt) == []


def test_files_a_dead_mount_left_unlinked_while_open_are_removed_by_the_next(mc, tmp_path):
    other = mc.mount_again(tmp_path / "dying")
    try:
        fd = os.open(other.path("doomed"), os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, b"x")
        os.unlink(other.path("doomed"))
        with mc.client() as c:
            assert len(c.listdir("/.cistern-unlinked")) == 1
        other.proc.kill()                     # dies with the file still open
        other.proc.wait(30)
        with pytest.raises(OSError):
            os.close(fd)                      # ENOTCONN: the daemon is gone
    finally:
        other.stop()
    again = mc.mount_again(tmp_path / "next")
    try:
        with mc.client() as c:
            assert c.listdir("/.cistern-unlinked") == []
    finally:
        assert again.stop() == 0
