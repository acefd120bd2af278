"""The mount against a local directory, as a model: a hypothesis state
machine applies the same random file operations (create, write, append,
truncate, read, mkdir, rmdir, unlink, rename, link, symlink, chmod, listdir,
stat, readlink) to a directory in a real Cistern mount and to one on the
local disk, and asserts that both give the same results, the same errnos and
the same contents.

Compared: results and errno names; file contents; for stat/lstat the file
type, permission bits, sizes of files and symlinks and the link count of
files. Not compared: inode numbers, times, sizes and link counts of
directories (filesystems differ there and POSIX leaves them open). The
operations run as root, so mode bits never deny anything on either side.

One cluster and mount serve the whole run; each example works in fresh
directories, removed afterwards. Hypothesis prints the failing steps.

The mount runs with attr_timeout=0: under libfuse 2's high-level API the
kernel caches attributes per path, so for attr_timeout a hard link's other
name shows stale attributes (pinned by test_tools'
test_stat_of_a_hard_link_sees_a_change_through_its_other_name_at_once);
without the kernel's cache the model holds the mount to everything else exactly."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import random
import shutil
import stat

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from cistern.fuse.testing import mounted_cluster

pytestmark = pytest.mark.timeout(600)

block_bytes = 64 * 1024            # small blocks, so modest writes cross block boundaries
max_examples = 25
steps_per_example = 30

NAMES = ("a", "b", "c")
# Few names, so operations meet what earlier ones made (sampled uniformly:
# hypothesis' lists would favour the shortest and leave deep paths rare).
PATHS = [*NAMES, *(f"{x}/{y}" for x in "ab" for y in NAMES), "c/a", "a/b/a", "a/b/c", "b/a/a"]
paths = st.sampled_from(PATHS)
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o444, 0o000])
dir_modes = st.sampled_from([0o755, 0o700, 0o555])
offsets = st.sampled_from([0, 1, 4095, block_bytes - 1, block_bytes, 2 * block_bytes + 17])
sizes = st.sampled_from([0, 1, 100, 4096, block_bytes + 3])
lengths = st.sampled_from([0, 1, 50, block_bytes - 1, block_bytes + 1, 3 * block_bytes])
link_targets = st.sampled_from(["a", "b", "c", "../a", "a/b", "nowhere", "."])


def data_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def outcome(fn):
    """("ok", result) or ("err", errno name): what a caller can observe."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, str(e.errno)))


def describe(st_: os.stat_result) -> tuple:
    """The comparable part of a stat result."""
    kind = stat.S_IFMT(st_.st_mode)
    plain = stat.S_ISREG(st_.st_mode)
    return (kind, stat.S_IMODE(st_.st_mode), st_.st_size if plain or stat.S_ISLNK(st_.st_mode) else None,
            st_.st_nlink if plain else None)


def read_all(path: str) -> tuple:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    return len(data), hashlib.sha256(data).hexdigest()


def tree(root: str) -> dict:
    """Everything below root: {path: (stat description, contents digest or link target)}."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            extra = (read_all(path) if stat.S_ISREG(st_.st_mode)
                     else os.readlink(path) if stat.S_ISLNK(st_.st_mode) else None)
            out[os.path.relpath(path, root)] = (describe(st_), extra)
    return out


def assert_same_tree(roots) -> None:
    mounted, local = (tree(root) for root in roots)
    differing = {p: (mounted.get(p), local.get(p)) for p in set(mounted) | set(local) if mounted.get(p) != local.get(p)}
    assert not differing, f"(mount, local) differ: {differing}"


class MountAgainstLocal(RuleBasedStateMachine):
    """Each rule runs one operation on both roots and compares."""

    mount_root: str = ""
    local_root: str = ""
    counter = itertools.count()

    def __init__(self):
        super().__init__()
        name = f"ex{next(self.counter)}"
        self.roots = (os.path.join(self.mount_root, name), os.path.join(self.local_root, name))
        for root in self.roots:
            os.mkdir(root)

    @initialize(seed=st.integers(0, 1000))
    def start_tree(self, seed):
        """Both roots start with a few directories and files, so most of
        the paths the rules pick lead somewhere."""
        for root in self.roots:
            for d in ("a", "b", "a/b"):
                os.mkdir(os.path.join(root, d))
            for f, size in (("c", 10), ("a/a", block_bytes + 5), ("b/c", 3000)):
                with open(os.path.join(root, f), "wb") as out:
                    out.write(data_of(size, seed))

    def both(self, op, *rel_paths):
        """op(*absolute paths) on the mount and on the local directory; the
        two outcomes must be equal. Returns the outcome."""
        got = [outcome(lambda root=root: op(*[os.path.join(root, p) for p in rel_paths])) for root in self.roots]
        assert got[0] == got[1], f"mount {got[0]!r} != local {got[1]!r} for {op.__name__}{rel_paths}"
        return got[0]

    # -- files --------------------------------------------------------------------------
    @rule(path=paths, mode=file_modes, exclusive=st.booleans(), trunc=st.booleans())
    def create(self, path, mode, exclusive, trunc):
        flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else 0) | (os.O_TRUNC if trunc else 0)

        def create(p):
            os.close(os.open(p, flags, mode))
        self.both(create, path)

    @rule(path=paths, offset=offsets, size=sizes, seed=st.integers(0, 1000))
    def write(self, path, offset, size, seed):
        data = data_of(size, seed)

        def write(p):
            fd = os.open(p, os.O_WRONLY)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.both(write, path)

    @rule(path=paths, size=sizes, seed=st.integers(0, 1000))
    def append(self, path, size, seed):
        data = data_of(size, seed)

        def append(p):
            fd = os.open(p, os.O_WRONLY | os.O_APPEND)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)
        self.both(append, path)

    @rule(path=paths, length=lengths)
    def truncate(self, path, length):
        self.both(lambda p: os.truncate(p, length), path)

    @rule(path=paths)
    def read(self, path):
        self.both(read_all, path)

    @rule(path=paths, offset=offsets, size=sizes)
    def read_at(self, path, offset, size):
        def read_at(p):
            fd = os.open(p, os.O_RDONLY)
            try:
                return hashlib.sha256(os.pread(fd, size, offset)).hexdigest()
            finally:
                os.close(fd)
        self.both(read_at, path)

    @rule(path=paths)
    def unlink(self, path):
        self.both(os.unlink, path)

    # -- directories ------------------------------------------------------------------------
    @rule(path=paths, mode=dir_modes)
    def mkdir(self, path, mode):
        self.both(lambda p: os.mkdir(p, mode), path)

    @rule(path=paths)
    def rmdir(self, path):
        self.both(os.rmdir, path)

    @rule(path=st.one_of(st.just(""), paths))
    def listdir(self, path):
        self.both(lambda p: sorted(os.listdir(p)), path)

    # -- names --------------------------------------------------------------------------------
    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self.both(os.rename, src, dst)

    @rule(src=paths, dst=paths)
    def link(self, src, dst):
        self.both(os.link, src, dst)

    @rule(contents=link_targets, path=paths)
    def symlink(self, contents, path):
        self.both(lambda p: os.symlink(contents, p), path)

    @rule(path=paths)
    def readlink(self, path):
        self.both(os.readlink, path)

    # -- attributes --------------------------------------------------------------------------------
    @rule(path=paths, mode=st.one_of(file_modes, dir_modes))
    def chmod(self, path, mode):
        self.both(lambda p: os.chmod(p, mode), path)

    @rule(path=paths)
    def stat(self, path):
        self.both(lambda p: describe(os.stat(p)), path)

    @rule(path=paths)
    def lstat(self, path):
        self.both(lambda p: describe(os.lstat(p)), path)

    @rule()
    def whole_tree(self):
        assert_same_tree(self.roots)

    def teardown(self):
        try:
            assert_same_tree(self.roots)
        finally:
            for root in self.roots:
                shutil.rmtree(root)             # as root: the modes inside do not stop it


@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    with mounted_cluster(tmp_path_factory.mktemp("model"), block_size=block_bytes,
                         options=("attr_timeout=0",)) as mc:
        yield mc


def test_random_operations_on_the_mount_match_a_local_directory(mounted, tmp_path):
    class Machine(MountAgainstLocal):
        mount_root = mounted.mount.mountpoint
        local_root = str(tmp_path)

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=max_examples, stateful_step_count=steps_per_example, deadline=None, database=None,
        print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    assert os.listdir(mounted.mount.mountpoint) == []          # every example cleaned up after itself
