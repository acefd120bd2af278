"""The os-like client against ``os`` itself.

Every scenario runs twice: on a ``Client`` over the in-process backend (the
real ``Namespace`` over a temporary LMDB store) and on the real ``os`` module
in a temporary directory, through ``Local``, which maps "/x" to "<tmp>/x"
and maps error filenames back. A scenario passes when both give the same
result, or the same exception class, errno and filename(s).
"""

import asyncio
import ctypes
import errno
import os
import pathlib
import stat
import time

import pytest

from cistern.client import Client, connect
from cistern.client.plans import ST_DEV
from cistern.client.testing import InProcessMetaClient, connect_in_process
from cistern.metadata.model import (
    COND_ABSENT,
    COND_EXISTS,
    COND_VERSION,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    Op,
)

UMASK = 0o022
# Which positional arguments of each call are paths (the rest pass through).
PATH_ARGS = {"symlink": (1,), "rename": (0, 1), "replace": (0, 1), "link": (0, 1), "rename2": (0, 1)}


class Local:
    """The os module, rooted at a temporary directory, with Client's names."""

    def __init__(self, root: str):
        self.root = root
        self.umask = UMASK

    def _map(self, path):
        path = os.fspath(path)
        if not path:
            return path   # "" stays invalid
        if isinstance(path, bytes):
            return os.fsencode(self.root) + (path if path.startswith(b"/") else b"/" + path)
        return self.root + (path if path.startswith("/") else "/" + path)

    def __getattr__(self, name):
        target = getattr(_LocalExtras, name, None)
        if target is None:
            target = getattr(os.path, name) if name in ("exists", "lexists", "isdir", "isfile", "islink") \
                else getattr(os, name)

        def call(*args, **kwargs):
            args = list(args)
            originals = {}
            for i in PATH_ARGS.get(name, (0,)):
                if i < len(args):
                    mapped = self._map(args[i])
                    originals[mapped] = os.fspath(args[i])
                    args[i] = mapped
            try:
                return target(*args, **kwargs)
            except OSError as e:
                e.filename = originals.get(e.filename, e.filename)
                e.filename2 = originals.get(e.filename2, e.filename2)
                raise
        return call

    def walk(self, top="/", **kwargs):
        for dirpath, dirs, files in os.walk(self._map(top), **kwargs):
            yield dirpath[len(self.root):] or "/", dirs, files


class _LocalExtras:
    """Client calls that ``os`` spells differently."""

    @staticmethod
    def create(path, mode=0o666, exclusive=False):
        flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if exclusive else 0)
        os.close(os.open(path, flags, mode))

    @staticmethod
    def touch(path, mode=0o666, exist_ok=True):
        pathlib.Path(os.fsdecode(path)).touch(mode, exist_ok)

    @staticmethod
    def rename2(src, dst, flags=0):
        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd = -100
        if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), src, None, dst)


@pytest.fixture
def client(tmp_path):
    c = connect_in_process(str(tmp_path / "meta"), umask=UMASK)
    yield c
    c.close()


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "local"
    root.mkdir()
    old = os.umask(UMASK)
    yield Local(str(root))
    os.umask(old)


@pytest.fixture
def both(client, local):
    """A small tree made the same way on both sides."""
    for fs in (client, local):
        fs.mkdir("/d")
        fs.create("/d/f")
        fs.create("/f")
        fs.mkdir("/e")
        fs.symlink("d", "/ld")
        fs.symlink("f", "/lf")
        fs.symlink("nowhere", "/broken")
    return client, local


def outcome(fn):
    try:
        return ("ok", fn())
    except OSError as e:
        return ("error", type(e).__name__, errno.errorcode.get(e.errno, e.errno), e.filename, e.filename2)


def same(both, fn, adjust=lambda outcome: outcome):
    client, local = both
    expected = adjust(outcome(lambda: fn(local)))
    got = adjust(outcome(lambda: fn(client)))
    assert got == expected
    return got


def _without_filenames(outcome):
    return outcome[:3]


# -- stat ----------------------------------------------------------------------


STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid")


def _fields(st, names=STAT_FIELDS):
    assert isinstance(st, os.stat_result)
    return {name: getattr(st, name) for name in names}


@pytest.mark.parametrize("path", ["/d", "/d/f", "/f", "/e", "/ld", "/lf", "/ld/f", "/d/", "/ld/"])
def test_stat_and_lstat_match_os(both, path):
    same(both, lambda fs: _fields(fs.stat(path)))
    same(both, lambda fs: _fields(fs.lstat(path)))
    same(both, lambda fs: _fields(fs.stat(path, follow_symlinks=False)))


def test_stat_of_files_and_symlinks_reports_size_like_os(both):
    same(both, lambda fs: fs.stat("/f").st_size)
    same(both, lambda fs: fs.lstat("/lf").st_size)    # a symlink's size is its target's length
    same(both, lambda fs: fs.lstat("/broken").st_size)


def test_stat_result_is_complete_and_consistent(client):
    client.create("/x")
    st = client.stat("/x")
    assert st.st_dev == ST_DEV and st.st_ino > 1 and st.st_ino == client.attr("/x").ino
    assert st.st_mtime_ns == st[stat.ST_MTIME] * 10**9 + st.st_mtime_ns % 10**9
    assert abs(st.st_mtime - time.time()) < 60
    assert st.st_blocks == 0 and st.st_blksize > 0
    assert client.stat("/").st_ino == 1 and stat.S_ISDIR(client.stat("/").st_mode)


@pytest.mark.parametrize("path", ["/missing", "/f/x", "/f/", "/lf/", "/broken", "/d/missing/x", ""])
def test_stat_errors_match_os(both, path):
    result = same(both, lambda fs: _fields(fs.stat(path)))
    assert result[0] == "error"


# -- predicates ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/d", "/d/f", "/f", "/ld", "/lf", "/broken", "/missing", "/f/", "/d/",
                                  "/lf/", "a\0b"])
@pytest.mark.parametrize("predicate", ["exists", "lexists", "isdir", "isfile", "islink"])
def test_path_predicates_match_os_path(both, predicate, path):
    same(both, lambda fs: getattr(fs, predicate)(path))


@pytest.mark.parametrize("path", ["/d", "/f", "/missing", "/f/x", "/ld"])
@pytest.mark.parametrize("mode", [os.F_OK, os.R_OK, os.W_OK, os.X_OK, os.R_OK | os.W_OK | os.X_OK])
def test_access_matches_os_for_the_owner(both, path, mode):
    same(both, lambda fs: fs.access(path, mode))


# -- directories -----------------------------------------------------------------


def test_mkdir_applies_the_umask_like_os(both):
    for i, mode in enumerate([0o777, 0o700, 0o755, 0o1777, 0o2775]):
        same(both, lambda fs: (fs.mkdir(f"/m{i}", mode), stat.S_IMODE(fs.stat(f"/m{i}").st_mode)))


def test_client_umask_is_configurable(client):
    client.umask = 0o077
    client.mkdir("/private")
    client.create("/secret")
    assert stat.S_IMODE(client.stat("/private").st_mode) == 0o700
    assert stat.S_IMODE(client.stat("/secret").st_mode) == 0o600


@pytest.mark.parametrize("path", ["/d", "/missing/x", "/f/x", "/f/", "/", "/ld", "x" * 256, "/d/."])
def test_mkdir_errors_match_os(both, path):
    assert same(both, lambda fs: fs.mkdir(path))[0] == "error"


def test_listdir_matches_os_with_str_and_bytes(both):
    same(both, lambda fs: sorted(fs.listdir("/")))
    same(both, lambda fs: sorted(fs.listdir(b"/")))
    same(both, lambda fs: sorted(fs.listdir("/d/")))
    same(both, lambda fs: sorted(fs.listdir("/ld")))
    same(both, lambda fs: sorted(fs.listdir(pathlib.PurePosixPath("/d"))))
    assert same(both, lambda fs: fs.listdir("/e")) == ("ok", [])


@pytest.mark.parametrize("path", ["/f", "/missing", "/lf", "/broken", "/f/"])
def test_listdir_errors_match_os(both, path):
    assert same(both, lambda fs: fs.listdir(path))[0] == "error"


def test_listdir_pages_through_large_directories(client, monkeypatch):
    from cistern.metadata import limits

    monkeypatch.setattr(limits, "readdir_page_entries_max", 7)
    names = {f"n{i:03}" for i in range(50)}
    client.mkdir("/big")
    for f in [client.futures.create(f"/big/{n}") for n in names]:
        f.result()
    assert set(client.listdir("/big")) == names
    assert len(client.listdir("/big")) == 50


def test_readdir_page_bounds_one_round_trip_and_pages_on(client, monkeypatch):
    from cistern.metadata import limits

    monkeypatch.setattr(limits, "readdir_page_entries_max", 7)
    client.mkdir("/pg")
    for f in [client.futures.create(f"/pg/n{i:02}") for i in range(10)]:
        f.result()
    first, done = client.readdir_page("/pg", None, 4)
    assert [e[0] for e in first] == [b"n00", b"n01", b"n02", b"n03"] and not done
    rest, done = client.readdir_page("/pg", first[-1][0], 100)     # clamped to one reply (7)
    assert [e[0] for e in rest] == [f"n{i:02}".encode() for i in range(4, 10)] and done
    assert rest[0] == tuple(client.readdir("/pg")[4])
    with pytest.raises(FileNotFoundError):
        client.readdir_page("/nowhere")


def test_attrs_answers_each_path_like_attr_in_order(client):
    client.mkdir("/at")
    client.create("/at/f")
    client.symlink("f", "/at/l")
    got = client.attrs(["/at/f", "/at/l", "/at/missing", "/at/f/under", "/at/l"], follow_symlinks=False)
    assert got[0] == client.attr("/at/f") and got[1] == client.attr("/at/l", follow_symlinks=False)
    assert isinstance(got[2], FileNotFoundError) and got[2].filename == "/at/missing"
    assert isinstance(got[3], NotADirectoryError)
    assert got[4] == got[1]
    assert client.attrs(["/at/l"])[0] == client.attr("/at/f")       # follows by default
    assert client.attrs([]) == []


def _scan(fs, path):
    with fs.scandir(path) as it:
        return sorted(
            (e.name, e.path, e.is_dir(), e.is_file(), e.is_symlink(),
             e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False),
             stat.S_IFMT(e.stat(follow_symlinks=False).st_mode),
             os.fspath(e) == e.path)
            for e in it)


def test_scandir_matches_os(both, local):
    client, _ = both
    got = _scan(client, "/")
    with os.scandir(local.root + "/") as it:
        names = sorted(e.name for e in it)
    assert [row[0] for row in got] == names
    # The same entries and answers, with paths as os builds them from the argument.
    for top in ["d", "/d/", b"/"]:
        expected = [(name, os.path.join(top, name), *rest)
                    for name, _, *rest in _scan(local, top)]
        assert _scan(client, top) == expected


def test_scandir_entries_know_their_inode_and_follow_symlinks_on_stat(client):
    client.mkdir("/d")
    client.symlink("d", "/l")
    entries = {e.name: e for e in client.scandir("/")}
    assert entries["d"].inode() == client.stat("/d").st_ino
    assert entries["l"].inode() == client.lstat("/l").st_ino
    assert stat.S_ISDIR(entries["l"].stat().st_mode)
    assert stat.S_ISLNK(entries["l"].stat(follow_symlinks=False).st_mode)
    assert repr(entries["d"]) == "<DirEntry 'd'>"


def _walk(fs, top, **kwargs):
    return sorted((dirpath, sorted(dirs), sorted(files)) for dirpath, dirs, files in fs.walk(top, **kwargs))


def test_walk_matches_os_walk(both):
    client, local = both
    for fs in both:
        fs.makedirs("/d/a/b/c")
        fs.create("/d/a/b/c/f1")
        fs.create("/d/a/f2")
        fs.symlink("../e", "/d/a/le")
    for kwargs in [{}, {"topdown": False}, {"followlinks": True}]:
        assert _walk(client, "/", **kwargs) == _walk(local, "/", **kwargs)
    order = [p for p, _, _ in client.walk("/d", topdown=False)]
    assert order.index("/d/a/b/c") < order.index("/d/a/b") < order.index("/d/a") < order.index("/d")


def test_walk_prunes_when_the_caller_edits_dirnames(client):
    client.makedirs("/w/keep/x")
    client.makedirs("/w/skip/y")
    seen = []
    for dirpath, dirs, _ in client.walk("/w"):
        seen.append(dirpath)
        dirs[:] = [d for d in dirs if d != "skip"]
    assert seen == ["/w", "/w/keep", "/w/keep/x"]


def test_walk_reports_errors_through_onerror(client):
    errors = []
    assert list(client.walk("/missing", onerror=errors.append)) == []
    assert isinstance(errors[0], FileNotFoundError) and errors[0].filename == "/missing"


def test_makedirs_matches_os(both):
    same(both, lambda fs: fs.makedirs("/p/q/r"))
    same(both, lambda fs: _walk(fs, "/p"))
    same(both, lambda fs: fs.makedirs("/p/q/r"))                        # FileExistsError
    same(both, lambda fs: fs.makedirs("/p/q/r", exist_ok=True))
    same(both, lambda fs: fs.makedirs("/p/q/r/", exist_ok=True))
    same(both, lambda fs: fs.makedirs("/f", exist_ok=True))             # a file is there
    same(both, lambda fs: fs.makedirs("/p/s", 0o700))
    same(both, lambda fs: stat.S_IMODE(fs.stat("/p/s").st_mode))
    same(both, lambda fs: fs.makedirs("/n1/n2", 0o700))
    same(both, lambda fs: [stat.S_IMODE(fs.stat(p).st_mode) for p in ("/n1", "/n1/n2")])


def test_rmdir_and_removedirs_match_os(both):
    for path in ["/d", "/f", "/missing", "/ld/", "/e/", "/d/.", "/d/.."]:
        same(both, lambda fs: fs.rmdir(path))
    same(both, lambda fs: fs.makedirs("/r1/r2/r3"))
    same(both, lambda fs: fs.removedirs("/r1/r2/r3"))
    same(both, lambda fs: fs.exists("/r1"))


# -- names -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/f", "/d/f", "/lf", "/broken", "/d", "/d/", "/f/", "/missing", "/ld/", "/e"])
def test_unlink_and_remove_match_os(both, path):
    same(both, lambda fs: fs.unlink(path))
    same(both, lambda fs: fs.lexists(path.rstrip("/")))


def test_remove_is_unlink(both):
    same(both, lambda fs: fs.remove("/f"))
    same(both, lambda fs: fs.remove("/f"))


@pytest.mark.parametrize("src, dst", [
    ("/f", "/g"), ("/f", "/d/f"), ("/d", "/e"), ("/e", "/d"), ("/f", "/e"), ("/d", "/f"),
    ("/d", "/d/sub"), ("/missing", "/x"), ("/f", "/new/"), ("/lf/", "/x"), ("/ld/", "/x"),
    ("/d/", "/x/"), ("/f", "/f"), ("/ld", "/renamed-link"), ("/f", "/missing/x"), ("/d/f", "/d/.."),
])
def test_rename_matches_os(both, src, dst):
    same(both, lambda fs: fs.rename(src, dst))
    same(both, lambda fs: sorted(fs.listdir("/")))
    same(both, lambda fs: sorted(fs.listdir("/d")))


def test_replace_matches_os(both):
    same(both, lambda fs: fs.replace("/f", "/d/f"))
    same(both, lambda fs: (fs.exists("/f"), fs.exists("/d/f")))


@pytest.mark.parametrize("flags, src, dst", [
    (RENAME_NOREPLACE, "/f", "/d/f"), (RENAME_NOREPLACE, "/f", "/g"),
    (RENAME_EXCHANGE, "/f", "/d"), (RENAME_EXCHANGE, "/f", "/missing"), (0, "/f", "/d/f"),
])
def test_rename2_matches_renameat2(both, flags, src, dst):
    same(both, lambda fs: fs.rename2(src, dst, flags))
    same(both, lambda fs: [(n, stat.S_IFMT(fs.lstat("/" + n).st_mode)) for n in sorted(fs.listdir("/"))])


@pytest.mark.parametrize("src, dst", [
    ("/f", "/g"), ("/f", "/d/f"), ("/d", "/x"), ("/f", "/x/"), ("/f/", "/x"), ("/missing", "/x"),
    ("/lf", "/hard-to-link"), ("/f", "/missing/x"),
])
def test_link_matches_os(both, src, dst):
    same(both, lambda fs: fs.link(src, dst))
    same(both, lambda fs: fs.lstat(src.rstrip("/")).st_nlink)


def test_link_count_follows_links_and_unlinks(both):
    same(both, lambda fs: fs.link("/f", "/g"))
    same(both, lambda fs: (fs.stat("/f").st_nlink, fs.stat("/f").st_ino == fs.stat("/g").st_ino))
    same(both, lambda fs: fs.unlink("/f"))
    same(both, lambda fs: fs.stat("/g").st_nlink)


@pytest.mark.parametrize("target, path", [
    ("t", "/s"), ("t", "/f"), ("t", "/x/"), ("t", "/d/"), ("t", "/missing/x"), ("../d/f", "/d/up"),
    ("", "/empty"),
])
def test_symlink_matches_os(both, target, path):
    same(both, lambda fs: fs.symlink(target, path))
    same(both, lambda fs: fs.readlink(path.rstrip("/")) if fs.islink(path.rstrip("/")) else None)


@pytest.mark.parametrize("path", ["/ld", "/lf", "/broken", "/f", "/d", "/ld/", "/missing", b"/ld",
                                  pathlib.PurePosixPath("/lf")])
def test_readlink_matches_os(both, path):
    same(both, lambda fs: fs.readlink(path))


def test_symlinks_are_followed_in_the_middle_of_paths(both):
    same(both, lambda fs: (fs.create("/ld/via-link"), None)[1])
    same(both, lambda fs: sorted(fs.listdir("/d")))
    same(both, lambda fs: fs.symlink("/d", "/abs"))
    same(both, lambda fs: fs.readlink("/abs"))


# -- files and attributes -------------------------------------------------------------


def test_create_and_touch_match_os(both):
    same(both, lambda fs: (fs.create("/c", 0o640), stat.S_IMODE(fs.stat("/c").st_mode))[1])
    same(both, lambda fs: fs.create("/c", exclusive=True))
    same(both, lambda fs: fs.create("/d", exclusive=False))
    same(both, lambda fs: fs.create("/c/"))
    same(both, lambda fs: fs.create("/x/"))
    same(both, lambda fs: fs.create("/missing/x"))
    same(both, lambda fs: (fs.touch("/t"), stat.S_IMODE(fs.stat("/t").st_mode))[1])
    same(both, lambda fs: fs.touch("/t", exist_ok=False))
    same(both, lambda fs: fs.touch("/missing/t"))


def test_create_returns_attributes_and_touch_updates_times(client):
    attr = client.create("/new", 0o600)
    assert attr.ino == client.stat("/new").st_ino and stat.S_IMODE(attr.mode) == 0o600
    assert client.create("/new").ino == attr.ino          # not exclusive: the existing file
    client.utime("/new", ns=(1, 2))
    client.touch("/new")
    st = client.stat("/new")
    assert st.st_mtime_ns > 10**18 and st.st_atime_ns > 10**18


@pytest.mark.parametrize("mode", [0o600, 0o755, 0o4755, 0o1777, 0o0])
def test_chmod_matches_os(both, mode):
    for path in ["/f", "/d", "/ld"]:
        same(both, lambda fs: (fs.chmod(path, mode), stat.S_IMODE(fs.stat(path).st_mode))[1])
        same(both, lambda fs: stat.S_IMODE(fs.lstat(path).st_mode))


def test_chown_matches_os(both):
    same(both, lambda fs: (fs.chown("/f", 1234, 5678), fs.stat("/f").st_uid, fs.stat("/f").st_gid)[1:])
    same(both, lambda fs: (fs.chown("/f", -1, 42), fs.stat("/f").st_uid, fs.stat("/f").st_gid)[1:])
    same(both, lambda fs: (fs.chown("/ld", 7, 7), fs.stat("/d").st_uid, fs.lstat("/ld").st_uid)[1:])
    same(both, lambda fs: (fs.lchown("/lf", 9, 9), fs.stat("/f").st_uid, fs.lstat("/lf").st_uid)[1:])
    same(both, lambda fs: fs.chown("/missing", 1, 1))


@pytest.mark.parametrize("kwargs", [
    {"times": (1.5, 2.25)}, {"times": (1700000000.123456789, 0.000000999)}, {"times": (-1.5, 3)},
    {"ns": (123456789012345678, 5)}, {"times": (10, 20)},
])
def test_utime_matches_os(both, kwargs):
    same(both, lambda fs: (fs.utime("/f", **kwargs),
                           fs.stat("/f").st_atime_ns, fs.stat("/f").st_mtime_ns,
                           fs.stat("/f").st_atime, fs.stat("/f").st_mtime)[1:])


def test_utime_now_and_bad_arguments(both):
    client, _ = both
    before = time.time_ns()
    client.utime("/f", ns=(1, 1))
    client.utime("/f")
    st = client.stat("/f")
    assert st.st_atime_ns >= before - 10**9 and st.st_mtime_ns >= before - 10**9
    with pytest.raises(ValueError):
        client.utime("/f", (1, 2), ns=(1, 2))
    with pytest.raises(TypeError):
        client.utime("/f", ns=(1.0, 2))
    same(both, lambda fs: fs.utime("/missing"), _without_filenames)   # os.utime names no file


def test_utime_does_not_follow_with_follow_symlinks_false(both):
    same(both, lambda fs: (fs.utime("/lf", ns=(5, 6), follow_symlinks=False),
                           fs.lstat("/lf").st_mtime_ns, fs.stat("/f").st_mtime_ns == 6)[1:])


@pytest.mark.parametrize("path, length", [("/f", 100), ("/f", 0), ("/d", 1), ("/missing", 1), ("/f", -1),
                                          ("/lf", 7)])
def test_truncate_matches_os(both, path, length):
    same(both, lambda fs: (fs.truncate(path, length), fs.stat(path).st_size)[1])


def test_xattrs_match_os(both):
    same(both, lambda fs: fs.setxattr("/f", "user.a", b"1"))
    same(both, lambda fs: fs.setxattr("/f", b"user.b", b"\x00\xff"))
    same(both, lambda fs: fs.getxattr("/f", "user.a"))
    same(both, lambda fs: fs.getxattr("/f", b"user.b"))
    same(both, lambda fs: sorted(fs.listxattr("/f")))
    same(both, lambda fs: fs.getxattr("/lf", "user.a"))                # follows the link
    same(both, lambda fs: fs.setxattr("/f", "user.a", b"2", XATTR_CREATE))
    same(both, lambda fs: fs.setxattr("/f", "user.c", b"2", XATTR_REPLACE))
    same(both, lambda fs: fs.setxattr("/f", "user.a", b"3", XATTR_REPLACE))
    same(both, lambda fs: fs.getxattr("/f", "user.a"))
    same(both, lambda fs: fs.getxattr("/f", "user.missing"))
    same(both, lambda fs: fs.removexattr("/f", "user.a"))
    same(both, lambda fs: fs.removexattr("/f", "user.a"))
    same(both, lambda fs: sorted(fs.listxattr("/f")))
    same(both, lambda fs: fs.listxattr("/missing"))
    same(both, lambda fs: fs.getxattr("/f/", "user.b"))


def test_statvfs_counts_the_namespace(client):
    client.makedirs("/s/t")
    client.create("/s/t/f")
    st = client.statvfs("/")
    assert isinstance(st, os.statvfs_result)
    assert st.f_namemax == 255 and st.f_bsize > 0 and st.f_files - st.f_ffree >= 4
    assert st.f_bavail <= st.f_bfree <= st.f_blocks
    assert client.statfs("/s") == client.statvfs("/s")
    with pytest.raises(FileNotFoundError):
        client.statvfs("/missing")


def test_the_root_cannot_be_removed_or_renamed(client):
    for call in (lambda: client.rmdir("/"), lambda: client.rename("/", "/x"), lambda: client.unlink("/")):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno in (errno.EBUSY, errno.EISDIR)
    assert client.stat("/").st_ino == 1


def test_txn_is_all_or_nothing(client):
    client.mkdir("/tx")
    version = client.attr("/tx").version
    made, created = client.txn([(COND_ABSENT, "/tx/a", None), (COND_VERSION, "/tx", version)],
                               [(Op.MKDIR, "/tx/a", 0o750), (Op.CREATE, "tx/a/f", 0o640, True)])
    assert isinstance(made, Attr) and stat.S_ISDIR(made.mode) and stat.S_IMODE(made.mode) == 0o750
    assert created.ino == client.stat("/tx/a/f").st_ino
    with pytest.raises(OSError) as exc:      # the version moved: nothing happens
        client.txn([(COND_VERSION, "/tx", version)], [(Op.MKDIR, "/tx/b", 0o755)])
    assert exc.value.errno == errno.ECANCELED and not client.exists("/tx/b")
    with pytest.raises(FileExistsError):     # the second op fails: the first is undone
        client.txn([], [(Op.MKDIR, "/tx/c", 0o755), (Op.MKDIR, "/tx/a", 0o755)])
    assert not client.exists("/tx/c")
    assert client.txn([(COND_EXISTS, b"/tx/a/f", None)], [(Op.UNLINK, "/tx/a/f")]) == [None]
    assert client.listdir("/tx/a") == []


def test_setattr_attr_and_readdir_give_the_raw_records(client):
    client.mkdir("/r")
    client.create("/r/f")
    attr = client.setattr("/r/f", mode=0o600, uid=7, size=10, mtime_ns=5)
    assert isinstance(attr, Attr) and (stat.S_IMODE(attr.mode), attr.uid, attr.size, attr.mtime_ns) == (0o600, 7, 10, 5)
    assert client.attr("/r/f") == attr
    assert client.readdir("/r") == [(b"f", attr.ino, stat.S_IFREG)]


def test_long_names_fail_like_os(both):
    long_name = "/" + "n" * 256
    for call in (lambda fs: fs.mkdir(long_name), lambda fs: fs.create(long_name),
                 lambda fs: fs.stat(long_name), lambda fs: fs.symlink("t", long_name)):
        result = same(both, call)
        assert result[2] == "ENAMETOOLONG"


# -- credentials -------------------------------------------------------------------


def test_other_credentials_are_checked_like_a_local_filesystem(client):
    client.makedirs("/home/alice")
    client.chown("/home/alice", 1000, 1000)
    client.create("/rootfile", 0o644)
    client.mkdir("/vault", 0o700)
    client.create("/vault/x")
    alice = client.with_creds(1000, 1000, [1000])
    bob = client.with_creds(1001, 1001)

    alice.mkdir("/home/alice/docs")
    assert client.stat("/home/alice/docs").st_uid == 1000
    assert client.stat("/home/alice/docs").st_gid == 1000
    with pytest.raises(PermissionError) as exc:
        bob.mkdir("/home/alice/evil")
    assert exc.value.errno == errno.EACCES and exc.value.filename == "/home/alice/evil"
    with pytest.raises(PermissionError) as exc:
        alice.chmod("/rootfile", 0o777)
    assert exc.value.errno == errno.EPERM and exc.value.filename == "/rootfile"
    with pytest.raises(PermissionError) as exc:
        alice.stat("/vault/x")
    assert exc.value.errno == errno.EACCES
    with pytest.raises(PermissionError):
        alice.listdir("/vault")
    with pytest.raises(PermissionError):
        alice.unlink("/rootfile")
    with pytest.raises(PermissionError):
        alice.chown("/home/alice/docs", 1001, 1001)
    assert alice.access("/rootfile", os.R_OK) and not alice.access("/rootfile", os.W_OK)
    assert not alice.access("/vault/x", os.F_OK)
    assert client.access("/vault/x", os.W_OK)     # root passes every check


def test_with_creds_is_a_view_sharing_the_connection(client):
    view = client.with_creds(1000, 1000, [], umask=0o077)
    assert view.meta is client.meta and view.cred == (1000, 1000, [])
    assert client.umask == UMASK
    client.chmod("/", 0o777)
    view.mkdir("/mine")
    assert stat.S_IMODE(client.stat("/mine").st_mode) == 0o700
    view.close()                   # a view's close leaves the connection open
    assert client.exists("/mine")


def test_default_credentials_are_the_process_ones(client):
    assert client.cred == (os.getuid(), os.getgid(), list(os.getgroups()))
    client.mkdir("/mine")
    assert (client.stat("/mine").st_uid, client.stat("/mine").st_gid) == (os.getuid(), os.getgid())


# -- faces: futures and asyncio -----------------------------------------------------------


def test_futures_run_many_operations_from_one_thread(client):
    client.mkdir("/many")
    futures = [client.futures.create(f"/many/{i}") for i in range(300)]
    attrs = [f.result(timeout=30) for f in futures]
    assert len({a.ino for a in attrs}) == 300
    assert len(client.listdir("/many")) == 300
    assert client.meta.statistics()["batch_ops_max"] > 1   # they were in flight together
    failed = client.futures.create("/many/0", exclusive=True)
    with pytest.raises(FileExistsError) as exc:
        failed.result(timeout=30)
    assert exc.value.filename == "/many/0"
    assert client.futures.makedirs("/many/a/b/c").result(timeout=30) is None
    assert client.futures.isdir("/many/a/b/c").result(timeout=30) is True


def test_async_form_runs_many_operations_concurrently(client):
    aio = client.aio

    async def scenario():
        await aio.mkdir("/async")
        await asyncio.gather(*(aio.mkdir(f"/async/{i}") for i in range(200)))
        await asyncio.gather(*(aio.create(f"/async/{i}/f") for i in range(200)))
        names = await aio.listdir("/async")
        stats = await asyncio.gather(*(aio.stat(f"/async/{i}/f") for i in range(200)))
        with pytest.raises(FileNotFoundError) as exc:
            await aio.stat("/async/missing")
        assert exc.value.filename == "/async/missing"
        walked = [(top, sorted(d), sorted(f)) async for top, d, f in aio.walk("/async/1")]
        entries = await aio.scandir("/async")
        return names, stats, walked, entries

    names, stats, walked, entries = asyncio.run(scenario())
    assert sorted(names, key=int) == [str(i) for i in range(200)]
    assert all(stat.S_ISREG(st.st_mode) for st in stats)
    assert walked == [("/async/1", [], ["f"])]
    assert len(entries) == 200 and all(e.is_dir() for e in entries)
    assert client.meta.statistics()["batch_ops_max"] > 1


def test_async_makedirs_and_errors_match_the_blocking_form(client):
    async def scenario():
        await client.aio.makedirs("/x/y/z")
        with pytest.raises(FileExistsError):
            await client.aio.makedirs("/x/y/z")
        await client.aio.makedirs("/x/y/z", exist_ok=True)
        return await client.aio.isdir("/x/y/z")

    assert asyncio.run(scenario()) is True


def test_client_is_thread_safe(client):
    import threading

    client.mkdir("/t")
    errors = []

    def worker(n):
        try:
            for i in range(30):
                client.create(f"/t/{n}-{i}")
                client.stat(f"/t/{n}-{i}")
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(client.listdir("/t")) == 240


# -- connecting ----------------------------------------------------------------------


def test_connect_without_a_cluster_is_einval(monkeypatch):
    monkeypatch.delenv("CISTERN_CLUSTER", raising=False)
    with pytest.raises(OSError) as exc:
        connect()
    assert exc.value.errno == errno.EINVAL


def test_unavailable_cluster_times_out_with_etimedout():
    from cistern.metadata.proc_testing import free_port

    with connect(f"127.0.0.1:{free_port()}", timeout_s=0.5) as c:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as exc:
            c.stat("/")
        assert exc.value.errno == errno.ETIMEDOUT and exc.value.filename == "/"
        assert 0.4 < time.monotonic() - started < 5
        with pytest.raises(TimeoutError):   # unreachable is not "absent"
            c.exists("/")


def test_client_works_as_a_context_manager(tmp_path):
    with Client(InProcessMetaClient(str(tmp_path / "m"))) as c:
        c.mkdir("/x")
        assert c.listdir() == ["x"]
    with pytest.raises(OSError) as exc:
        c.stat("/x")
    assert exc.value.errno == errno.ESHUTDOWN
    with pytest.raises(OSError):
        c.isdir("/x")


def test_a_serializable_view_asks_for_stale_reads_and_changes_nothing_else():
    with connect_in_process(uid=0, gid=0, groups=[]) as fs:
        seen = []
        submit = fs.meta.submit

        def recording(code, args, *, stale=False, timeout_s=None):
            seen.append(stale)
            return submit(code, args, stale=stale, timeout_s=timeout_s)

        fs.meta.submit = recording
        fs.mkdir("/d")
        view = fs.with_creds(1000, 1000, []).serializable
        assert view.cred == (1000, 1000, []) and view.serializable is view.serializable
        seen.clear()
        assert view.stat("/d").st_uid == 0
        assert seen and all(seen)                        # every read of the stat skipped the barrier
        seen.clear()
        fs.stat("/d")
        assert seen and not any(seen)                    # the view it came from is untouched
        with pytest.raises(PermissionError):
            view.mkdir("/d/x")                           # still acts as uid 1000 (0755 dir owned by root)
        view.close()                                     # a view's close leaves the connection open
        assert fs.stat("/d").st_uid == 0
