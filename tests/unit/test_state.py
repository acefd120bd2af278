"""Exact-result tests of the namespace state machine (metadata/state.py):
every operation, its errnos as Linux gives them, permissions with non-root
credentials, and the all-or-nothing rule. The harness checks the namespace
invariants after every write and fails on the last-resort EIO path."""

import errno as E
import stat

import pytest

from cistern.metadata import limits, model
from cistern.metadata.model import Op, TIME_NOW
from cistern.metadata.testing import NamespaceHarness

ALICE = (1000, 1000, [])
BOB = (1001, 1001, [])
CAROL_IN_ALICES_GROUP = (1002, 1002, [1000])
SEC = 1_000_000_000


@pytest.fixture
def h(tmp_path):
    harness = NamespaceHarness(tmp_path / "ns")
    yield harness
    harness.close()


def names(h, path):
    entries, done = h.ok(Op.READDIR, path, None, limits.readdir_page_entries_max)
    assert done
    return [e[0] for e in entries]


# -- bootstrap and the root -----------------------------------------------------

def test_bootstrap_makes_root_and_is_idempotent(h):
    root = h.stat(b"/")
    assert (root.ino, root.mode, root.nlink, root.uid, root.gid) == (1, stat.S_IFDIR | 0o755, 2, 0, 0)
    assert (root.atime_ns, root.mtime_ns, root.ctime_ns) == (0, 0, 0)
    with h.store.env.begin(write=True) as txn:
        h.ns.bootstrap(txn)
    assert h.stat(b"/") == root
    assert h.ok(Op.STATFS) == {"files": 0, "dirs": 1, "bytes": 0, "inodes_free": limits.inodes_max - 1}


# -- mkdir ---------------------------------------------------------------------

def test_mkdir_sets_attrs_and_touches_parent(h):
    h.now = 7 * SEC
    attr = h.ok(Op.MKDIR, b"/a", 0o7755)
    assert attr.mode == stat.S_IFDIR | 0o1755  # mkdir keeps only rwx and sticky
    assert (attr.nlink, attr.uid, attr.gid, attr.size) == (2, 0, 0, 0)
    assert attr.atime_ns == attr.mtime_ns == attr.ctime_ns == 7 * SEC
    root = h.stat(b"/")
    assert root.nlink == 3 and root.mtime_ns == root.ctime_ns == 7 * SEC
    assert h.ok(Op.LOOKUP, attr.ino, b"..").ino == 1


@pytest.mark.parametrize("path,err", [
    (b"/a", E.EEXIST), (b"/", E.EEXIST), (b"/a/.", E.EEXIST), (b"/a/..", E.EEXIST),
    (b"/missing/b", E.ENOENT), (b"/f/b", E.ENOTDIR), (b"/l", E.EEXIST),
])
def test_mkdir_errors(h, path, err):
    h.ok(Op.MKDIR, b"/a", 0o755)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SYMLINK, b"/l", b"/nowhere")
    assert h.err(Op.MKDIR, path, 0o755) == err


def test_mkdir_with_trailing_slash_and_setgid_parent(h):
    assert not h.ok(Op.MKDIR, b"/g", 0o2775).mode & stat.S_ISGID  # mkdir ignores setgid in its mode
    h.ok(Op.SETATTR, b"/g", {"gid": 50, "mode": 0o2775})
    attr = h.ok(Op.MKDIR, b"/g/sub/", 0o755, cred=(0, 7, []))
    assert attr.gid == 50 and attr.mode & stat.S_ISGID
    assert h.ok(Op.CREATE, b"/g/f", 0o644, True, cred=(0, 7, [])).gid == 50


# -- create -------------------------------------------------------------------

def test_create_exclusive_and_not(h):
    attr = h.ok(Op.CREATE, b"/f", 0o4640, True)
    assert attr.mode == stat.S_IFREG | 0o4640 and attr.nlink == 1 and attr.size == 0
    assert h.err(Op.CREATE, b"/f", 0o644, True) == E.EEXIST
    h.tick()
    assert h.ok(Op.CREATE, b"/f", 0o600, False) == attr  # the existing file, unchanged


def test_create_on_dir_dot_and_trailing_slash_is_eisdir(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    assert h.err(Op.CREATE, b"/d", 0o644, False) == E.EISDIR
    assert h.err(Op.CREATE, b"/d", 0o644, True) == E.EEXIST
    assert h.err(Op.CREATE, b"/d/.", 0o644, False) == E.EISDIR
    assert h.err(Op.CREATE, b"/new/", 0o644, False) == E.EISDIR
    assert h.err(Op.CREATE, b"/", 0o644, False) == E.EISDIR
    assert h.err(Op.CREATE, b"/d/..", 0o644, True) == E.EEXIST
    assert h.err(Op.CREATE, b"/new/", 0o644, True) == E.EISDIR


def test_create_through_symlink(h):
    target = h.ok(Op.CREATE, b"/t", 0o644, True)
    h.ok(Op.SYMLINK, b"/l", b"t")
    h.ok(Op.SYMLINK, b"/dangling", b"nothing")
    assert h.ok(Op.CREATE, b"/l", 0o644, False) == target
    assert h.err(Op.CREATE, b"/l", 0o644, True) == E.EEXIST
    created = h.ok(Op.CREATE, b"/dangling", 0o644, False)  # Linux creates the file the link names
    assert h.stat(b"/nothing").ino == created.ino
    h.ok(Op.SYMLINK, b"/to_dir", b"sub/")
    assert h.err(Op.CREATE, b"/to_dir", 0o644, False) == E.EISDIR
    h.ok(Op.SYMLINK, b"/deep", b"/missing_dir/x")
    assert h.err(Op.CREATE, b"/deep", 0o644, False) == E.ENOENT
    h.ok(Op.SYMLINK, b"/loop", b"loop")
    assert h.err(Op.CREATE, b"/loop", 0o644, False) == E.ELOOP


# -- symlinks and path resolution ----------------------------------------------

def test_symlink_attrs_and_readlink(h):
    attr = h.ok(Op.SYMLINK, b"/l", b"some/where")
    assert attr.mode == stat.S_IFLNK | 0o777 and attr.size == 10 and attr.nlink == 1
    assert h.ok(Op.READLINK, b"/l") == b"some/where"
    assert h.ok(Op.READLINK, attr.ino) == b"some/where"
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.READLINK, b"/f") == E.EINVAL
    assert h.err(Op.SYMLINK, b"/l", b"x") == E.EEXIST
    assert h.err(Op.SYMLINK, b"/e", b"") == E.ENOENT
    assert h.err(Op.SYMLINK, b"/e", b"x" * 4097) == E.ENAMETOOLONG
    assert h.err(Op.SYMLINK, b"/e/", b"x") == E.ENOENT


def test_symlinks_followed_in_intermediate_and_last_components(h):
    h.ok(Op.MKDIR, b"/a", 0o755)
    h.ok(Op.MKDIR, b"/a/b", 0o755)
    f = h.ok(Op.CREATE, b"/a/b/f", 0o644, True)
    h.ok(Op.SYMLINK, b"/rel", b"a/b")
    h.ok(Op.SYMLINK, b"/a/abs", b"/a/b")
    h.ok(Op.SYMLINK, b"/a/b/up", b"../../a/b/f")
    assert h.stat(b"/rel/f").ino == f.ino
    assert h.stat(b"/a/abs/f").ino == f.ino
    assert h.stat(b"/a/b/up", follow=True).ino == f.ino
    assert stat.S_ISLNK(h.stat(b"/a/b/up", follow=False).mode)
    assert h.stat(b"/rel/", follow=False).ino == h.stat(b"/a/b").ino  # a trailing slash follows
    assert h.stat(b"/a/b/../b/./f").ino == f.ino
    assert h.stat(b"/../../a").ino == h.stat(b"/a").ino


def test_symlink_loops_give_eloop_after_the_follow_limit(h):
    h.ok(Op.SYMLINK, b"/self", b"self")
    assert h.err(Op.GETATTR, b"/self", True) == E.ELOOP
    assert h.err(Op.GETATTR, b"/self/x", False) == E.ELOOP
    assert stat.S_ISLNK(h.stat(b"/self").mode)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SYMLINK, b"/l0", b"f")
    for i in range(1, limits.symlink_follow_max + 1):
        h.ok(Op.SYMLINK, b"/l%d" % i, b"l%d" % (i - 1))
    assert h.stat(b"/l%d" % (limits.symlink_follow_max - 1), follow=True).mode & stat.S_IFREG
    assert h.err(Op.GETATTR, b"/l%d" % limits.symlink_follow_max, True) == E.ELOOP


@pytest.mark.parametrize("path,err", [
    (b"", E.EINVAL), (b"a/b", E.EINVAL), (b"/a\0b", E.EINVAL), ("/str", E.EINVAL), (None, E.EINVAL),
    (b"/" + b"n" * 256, E.ENAMETOOLONG), (b"/" + b"a/" * 2048 + b"b", E.ENAMETOOLONG),
    (b"/f/x", E.ENOTDIR), (b"/f/", E.ENOTDIR), (b"/missing/x", E.ENOENT), (0, E.EINVAL), (999, E.ENOENT),
])
def test_path_errors(h, path, err):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.GETATTR, path, True) == err


def test_long_component_is_checked_at_lookup_time_as_linux_does(h):
    assert h.err(Op.GETATTR, b"/missing/" + b"n" * 256, True) == E.ENOENT
    assert h.ok(Op.CREATE, b"/" + b"n" * 255, 0o644, True).nlink == 1


# -- link and unlink ---------------------------------------------------------

def test_hard_links_count_and_free_on_last_unlink(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    f = h.ok(Op.CREATE, b"/f", 0o644, True)
    h.tick()
    linked = h.ok(Op.LINK, b"/f", b"/d/g")
    assert linked.ino == f.ino and linked.nlink == 2 and linked.ctime_ns == h.now
    assert h.stat(b"/d").mtime_ns == h.now
    h.ok(Op.UNLINK, b"/f")
    assert h.stat(b"/d/g").nlink == 1
    assert h.ok(Op.STATFS)["files"] == 1
    h.ok(Op.UNLINK, b"/d/g")
    assert h.err(Op.GETATTR, f.ino, False) == E.ENOENT
    assert h.ok(Op.STATFS)["files"] == 0


def test_link_errors(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.LINK, b"/d", b"/d2") == E.EPERM
    assert h.err(Op.LINK, b"/f", b"/d") == E.EEXIST
    assert h.err(Op.LINK, b"/f", b"/d/.") == E.EEXIST
    assert h.err(Op.LINK, b"/nope", b"/x") == E.ENOENT
    assert h.err(Op.LINK, b"/f", b"/nope/x") == E.ENOENT
    assert h.err(Op.LINK, b"/f/", b"/x") == E.ENOTDIR


def test_link_does_not_follow_a_symlink_source(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    lnk = h.ok(Op.SYMLINK, b"/l", b"f")
    assert h.ok(Op.LINK, b"/l", b"/l2").ino == lnk.ino
    assert h.stat(b"/l").nlink == 2 and h.stat(b"/f").nlink == 1


@pytest.mark.parametrize("path,err", [
    (b"/d", E.EISDIR), (b"/missing", E.ENOENT), (b"/f/", E.ENOTDIR), (b"/d/", E.EISDIR),
    (b"/", E.EISDIR), (b"/d/.", E.EISDIR), (b"/d/..", E.EISDIR), (b"/f/x", E.ENOTDIR),
])
def test_unlink_errors(h, path, err):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.UNLINK, path) == err


def test_unlink_symlink_removes_the_link_not_the_target(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SYMLINK, b"/l", b"f")
    h.ok(Op.UNLINK, b"/l")
    assert names(h, b"/") == [b"f"]


# -- rmdir -------------------------------------------------------------------

@pytest.mark.parametrize("path,err", [
    (b"/d", E.ENOTEMPTY), (b"/f", E.ENOTDIR), (b"/missing", E.ENOENT), (b"/d/e/.", E.EINVAL),
    (b"/d/..", E.ENOTEMPTY), (b"/", E.EBUSY), (b"/f/x", E.ENOTDIR),
])
def test_rmdir_errors(h, path, err):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.MKDIR, b"/d/e", 0o755)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.RMDIR, path) == err


def test_rmdir_drops_parent_link(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.MKDIR, b"/d/e", 0o755)
    assert h.stat(b"/d").nlink == 3
    h.tick()
    h.ok(Op.RMDIR, b"/d/e/")
    d = h.stat(b"/d")
    assert d.nlink == 2 and d.mtime_ns == h.now
    assert h.ok(Op.STATFS)["dirs"] == 2


# -- rename ----------------------------------------------------------------

def test_rename_file_across_dirs_replacing_a_file(h):
    h.ok(Op.MKDIR, b"/a", 0o755)
    h.ok(Op.MKDIR, b"/b", 0o755)
    f = h.ok(Op.CREATE, b"/a/f", 0o644, True)
    victim = h.ok(Op.CREATE, b"/b/g", 0o644, True)
    h.tick()
    assert h.ok(Op.RENAME, b"/a/f", b"/b/g", 0) is None
    assert h.stat(b"/b/g").ino == f.ino and h.stat(b"/b/g").ctime_ns == h.now
    assert names(h, b"/a") == [] and names(h, b"/b") == [b"g"]
    assert h.err(Op.GETATTR, victim.ino, False) == E.ENOENT
    assert h.stat(b"/a").mtime_ns == h.stat(b"/b").mtime_ns == h.now


def test_rename_dir_across_dirs_fixes_dotdot_and_nlinks(h):
    h.ok(Op.MKDIR, b"/a", 0o755)
    h.ok(Op.MKDIR, b"/b", 0o755)
    d = h.ok(Op.MKDIR, b"/a/d", 0o755)
    h.ok(Op.MKDIR, b"/b/empty", 0o755)
    h.ok(Op.RENAME, b"/a/d", b"/b/empty", 0)
    assert h.stat(b"/a").nlink == 2 and h.stat(b"/b").nlink == 3
    assert h.ok(Op.LOOKUP, d.ino, b"..").ino == h.stat(b"/b").ino
    assert h.ok(Op.STATFS)["dirs"] == 4


@pytest.mark.parametrize("src,dst,flags,err", [
    (b"/d", b"/f", 0, E.ENOTDIR),                 # dir over non-dir
    (b"/f", b"/d", 0, E.EISDIR),                  # non-dir over dir
    (b"/d", b"/full", 0, E.ENOTEMPTY),            # dir over non-empty dir
    (b"/d", b"/d/sub/x", 0, E.EINVAL),            # into its own subtree
    (b"/d", b"/d/x", 0, E.EINVAL),
    (b"/d/sub", b"/d", 0, E.ENOTEMPTY),           # onto its own ancestor
    (b"/missing", b"/x", 0, E.ENOENT),
    (b"/f", b"/missing/x", 0, E.ENOENT),
    (b"/f", b"/g", model.RENAME_NOREPLACE, E.EEXIST),
    (b"/f", b"/x", model.RENAME_EXCHANGE, E.ENOENT),
    (b"/f", b"/g", 3, E.EINVAL),
    (b"/f", b"/g", 4, E.EINVAL),
    (b"/d/.", b"/x", 0, E.EBUSY),
    (b"/f", b"/d/..", 0, E.EBUSY),
    (b"/f", b"/d/..", model.RENAME_NOREPLACE, E.EEXIST),
    (b"/", b"/x", 0, E.EBUSY),
    (b"/f/", b"/x", 0, E.ENOTDIR),
    (b"/f", b"/x/", 0, E.ENOTDIR),
    (b"/d", b"/full/sub/x", model.RENAME_EXCHANGE, E.ENOENT),
    (b"/d", b"/d/sub", model.RENAME_EXCHANGE, E.EINVAL),
    (b"/d/sub", b"/d", model.RENAME_EXCHANGE, E.EINVAL),
])
def test_rename_errors(h, src, dst, flags, err):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.MKDIR, b"/d/sub", 0o755)
    h.ok(Op.MKDIR, b"/full", 0o755)
    h.ok(Op.CREATE, b"/full/x", 0o644, True)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.CREATE, b"/g", 0o644, True)
    before = h.tree()
    assert h.err(Op.RENAME, src, dst, flags) == err
    assert h.tree() == before


def test_rename_onto_a_hard_link_of_itself_is_a_no_op(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.LINK, b"/f", b"/g")
    before = h.tree()
    assert h.ok(Op.RENAME, b"/f", b"/g", 0) is None
    assert h.ok(Op.RENAME, b"/f", b"/f", 0) is None
    assert h.tree() == before and sorted(before) == [b"/f", b"/g"]


def test_rename_noreplace_moves_when_free(h):
    f = h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.RENAME, b"/f", b"/g", model.RENAME_NOREPLACE)
    assert names(h, b"/") == [b"g"] and h.stat(b"/g").ino == f.ino


def test_rename_exchange_swaps_a_file_and_a_dir_across_parents(h):
    h.ok(Op.MKDIR, b"/a", 0o755)
    h.ok(Op.MKDIR, b"/b", 0o755)
    f = h.ok(Op.CREATE, b"/a/f", 0o644, True)
    d = h.ok(Op.MKDIR, b"/b/d", 0o755)
    h.ok(Op.CREATE, b"/b/d/inside", 0o644, True)
    h.ok(Op.RENAME, b"/a/f", b"/b/d", model.RENAME_EXCHANGE)
    assert h.stat(b"/a/f").ino == d.ino and h.stat(b"/b/d").ino == f.ino
    assert h.stat(b"/a").nlink == 3 and h.stat(b"/b").nlink == 2
    assert h.ok(Op.LOOKUP, d.ino, b"..").ino == h.stat(b"/a").ino
    assert names(h, b"/a/f") == [b"inside"]


# -- setattr -----------------------------------------------------------------

def test_chmod_chown_and_ctime(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.tick()
    attr = h.ok(Op.SETATTR, b"/f", {"mode": 0o600})
    assert attr.mode == stat.S_IFREG | 0o600 and attr.ctime_ns == h.now and attr.version == 2
    attr = h.ok(Op.SETATTR, b"/f", {"uid": 1000, "gid": 1000})
    assert (attr.uid, attr.gid) == (1000, 1000)
    assert h.ok(Op.SETATTR, b"/f", {}) == attr  # nothing asked, nothing changes


def test_chown_clears_setuid_and_exec_setgid(h):
    h.ok(Op.CREATE, b"/f", 0o6755, True)
    assert h.ok(Op.SETATTR, b"/f", {"uid": 5}).mode == stat.S_IFREG | 0o755
    h.ok(Op.CREATE, b"/g", 0o2644, True)  # setgid without group-exec: mandatory locking marker stays
    assert h.ok(Op.SETATTR, b"/g", {"gid": 5}).mode == stat.S_IFREG | 0o2644


def test_setattr_permission_rules_for_non_root(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SETATTR, b"/f", {"uid": 1000, "gid": 1000})
    assert h.err(Op.SETATTR, b"/f", {"mode": 0o777}, cred=BOB) == E.EPERM
    assert h.ok(Op.SETATTR, b"/f", {"mode": 0o666}, cred=ALICE).mode & 0o777 == 0o666
    assert h.err(Op.SETATTR, b"/f", {"uid": 1001}, cred=ALICE) == E.EPERM
    assert h.err(Op.SETATTR, b"/f", {"gid": 1001}, cred=ALICE) == E.EPERM
    assert h.ok(Op.SETATTR, b"/f", {"gid": 77}, cred=(1000, 1000, [77])).gid == 77
    assert h.ok(Op.SETATTR, b"/f", {"uid": 1000}, cred=ALICE).uid == 1000
    assert h.err(Op.SETATTR, b"/f", {"gid": 77}, cred=BOB) == E.EPERM


def test_chmod_by_owner_outside_the_group_drops_setgid(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SETATTR, b"/f", {"uid": 1000, "gid": 50})
    assert h.ok(Op.SETATTR, b"/f", {"mode": 0o2755}, cred=ALICE).mode == stat.S_IFREG | 0o755
    assert h.ok(Op.SETATTR, b"/f", {"mode": 0o2755}).mode == stat.S_IFREG | 0o2755


def test_utimes_rules(h):
    h.ok(Op.CREATE, b"/f", 0o666, True)
    h.ok(Op.CREATE, b"/ro", 0o644, True)
    assert h.err(Op.SETATTR, b"/f", {"mtime": 5}, cred=ALICE) == E.EPERM
    h.tick(10)
    attr = h.ok(Op.SETATTR, b"/f", {"atime": TIME_NOW, "mtime": TIME_NOW}, cred=ALICE)
    assert attr.atime_ns == attr.mtime_ns == attr.ctime_ns == h.now
    assert h.err(Op.SETATTR, b"/ro", {"atime": TIME_NOW, "mtime": TIME_NOW}, cred=ALICE) == E.EACCES
    attr = h.ok(Op.SETATTR, b"/f", {"atime": 3, "mtime": -5})
    assert (attr.atime_ns, attr.mtime_ns, attr.ctime_ns) == (3, -5, h.now)


def test_truncate_rules(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.SETATTR, b"/d", {"size": 0}) == E.EISDIR
    assert h.err(Op.SETATTR, b"/f", {"size": -1}) == E.EINVAL
    assert h.err(Op.SETATTR, b"/f", {"size": limits.file_size_max_bytes + 1}) == E.EFBIG
    assert h.err(Op.SETATTR, b"/f", {"size": 10}, cred=ALICE) == E.EACCES
    h.tick()
    attr = h.ok(Op.SETATTR, b"/f", {"size": 10})
    assert attr.size == 10 and attr.mtime_ns == attr.ctime_ns == h.now
    assert h.ok(Op.STATFS)["bytes"] == 10
    h.ok(Op.SYMLINK, b"/l", b"f")
    assert h.ok(Op.SETATTR, b"/l", {"size": 3}).size == 3  # truncate follows the link
    assert h.stat(b"/l").size == 1


def _block(n, length):
    return [bytes([n]) * 16, length, b"sum%d" % n, [1, 2]]


def _write(h, path, layout, size, holder=b"w1"):
    ino, lease = h.ok(Op.OPEN_LEASE, path, holder)
    attr = h.ok(Op.COMMIT_WRITE, ino, lease, layout, size, TIME_NOW)
    h.ok(Op.RELEASE_LEASE, ino, lease)
    return attr


def freed_blocks(h):
    with h.store.env.begin() as txn:
        return {k: model.unpack(v) for k, v in txn.cursor(db=h.store.db(b"freed_blocks"))}


def test_truncate_drops_blocks_wholly_beyond_the_new_size(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    _write(h, b"/f", [_block(1, 4), _block(2, 4), _block(3, 4)], 12)
    h.ok(Op.SETATTR, b"/f", {"size": 5})  # block 2 straddles byte 5: it stays
    assert freed_blocks(h) == {bytes([3]) * 16: [1, 2]}
    h.ok(Op.SETATTR, b"/f", {"size": 4})
    assert set(freed_blocks(h)) == {bytes([3]) * 16, bytes([2]) * 16}
    h.ok(Op.SETATTR, b"/f", {"size": 100})  # growing leaves a hole, keeps block 1
    h.ok(Op.SETATTR, b"/f", {"size": 0})
    assert len(freed_blocks(h)) == 3
    assert h.ok(Op.STATFS)["bytes"] == 0


# -- permissions -------------------------------------------------------------

def test_non_root_needs_write_and_search_on_the_parent(h):
    h.ok(Op.MKDIR, b"/home", 0o755)
    h.ok(Op.MKDIR, b"/home/alice", 0o700)
    h.ok(Op.SETATTR, b"/home/alice", {"uid": 1000, "gid": 1000})
    assert h.err(Op.CREATE, b"/home/x", 0o644, True, cred=ALICE) == E.EACCES
    assert h.err(Op.MKDIR, b"/home/x", 0o755, cred=ALICE) == E.EACCES
    assert h.err(Op.MKDIR, b"/home/alice", 0o755, cred=BOB) == E.EEXIST  # existence before write permission
    f = h.ok(Op.CREATE, b"/home/alice/f", 0o640, True, cred=ALICE)
    assert (f.uid, f.gid, f.mode) == (1000, 1000, stat.S_IFREG | 0o640)
    assert h.err(Op.GETATTR, b"/home/alice/f", True, cred=BOB) == E.EACCES
    assert h.err(Op.CREATE, b"/home/alice/g", 0o644, True, cred=BOB) == E.EACCES
    assert h.err(Op.UNLINK, b"/home/alice/f", cred=BOB) == E.EACCES
    assert h.err(Op.READDIR, b"/home/alice", None, 10, cred=BOB) == E.EACCES
    assert h.ok(Op.GETATTR, b"/home/alice/f", True).uid == 1000  # root passes


def test_group_and_other_permission_classes(h):
    h.ok(Op.MKDIR, b"/d", 0o750)
    h.ok(Op.SETATTR, b"/d", {"uid": 1000, "gid": 1000})
    h.ok(Op.CREATE, b"/d/f", 0o604, True)
    h.ok(Op.SETATTR, b"/d/f", {"uid": 1000, "gid": 1000})
    assert h.ok(Op.ACCESS, b"/d", 5, cred=CAROL_IN_ALICES_GROUP) is None
    assert h.err(Op.ACCESS, b"/d", 2, cred=CAROL_IN_ALICES_GROUP) == E.EACCES
    # Group class matches, so 'other' bits do not apply even though they allow read.
    assert h.err(Op.ACCESS, b"/d/f", 4, cred=CAROL_IN_ALICES_GROUP) == E.EACCES
    assert h.ok(Op.ACCESS, b"/d/f", 6, cred=ALICE) is None
    assert h.err(Op.ACCESS, b"/d/f", 4, cred=BOB) == E.EACCES  # no search permission on /d
    assert h.ok(Op.ACCESS, b"/d/f", 0, cred=CAROL_IN_ALICES_GROUP) is None


def test_root_needs_an_x_bit_to_execute_a_file(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.ACCESS, b"/f", 1) == E.EACCES
    h.ok(Op.SETATTR, b"/f", {"mode": 0o601})
    assert h.ok(Op.ACCESS, b"/f", 7) is None
    assert h.err(Op.ACCESS, b"/f", 8) == E.EINVAL


def test_sticky_directory_protects_others_entries(h):
    h.ok(Op.MKDIR, b"/tmp", 0o1777)
    h.ok(Op.CREATE, b"/tmp/a", 0o666, True, cred=ALICE)
    h.ok(Op.CREATE, b"/tmp/b", 0o666, True, cred=BOB)
    assert h.err(Op.UNLINK, b"/tmp/a", cred=BOB) == E.EPERM
    assert h.err(Op.RENAME, b"/tmp/a", b"/tmp/c", 0, cred=BOB) == E.EPERM
    assert h.err(Op.RENAME, b"/tmp/b", b"/tmp/a", 0, cred=BOB) == E.EPERM  # would replace alice's
    h.ok(Op.RENAME, b"/tmp/b", b"/tmp/c", 0, cred=BOB)
    h.ok(Op.UNLINK, b"/tmp/a", cred=ALICE)
    h.ok(Op.UNLINK, b"/tmp/c")  # root may


def test_sticky_directory_owner_may_remove_entries(h):
    h.ok(Op.MKDIR, b"/t", 0o1777)
    h.ok(Op.SETATTR, b"/t", {"uid": 1000})
    h.ok(Op.MKDIR, b"/t/bobs", 0o755, cred=BOB)
    h.ok(Op.RMDIR, b"/t/bobs", cred=ALICE)
    assert names(h, b"/t") == []


def test_moving_a_dir_across_parents_needs_write_on_it(h):
    h.ok(Op.MKDIR, b"/a", 0o777)
    h.ok(Op.MKDIR, b"/b", 0o777)
    h.ok(Op.MKDIR, b"/a/d", 0o555, cred=ALICE)
    assert h.err(Op.RENAME, b"/a/d", b"/b/d", 0, cred=ALICE) == E.EACCES
    h.ok(Op.RENAME, b"/a/d", b"/a/e", 0, cred=ALICE)  # same parent: '..' unchanged


def test_protected_hardlinks(h):
    h.ok(Op.MKDIR, b"/d", 0o777)
    h.ok(Op.CREATE, b"/d/ro", 0o644, True)
    h.ok(Op.CREATE, b"/d/rw", 0o666, True)
    assert h.err(Op.LINK, b"/d/ro", b"/d/x", cred=ALICE) == E.EPERM
    assert h.ok(Op.LINK, b"/d/rw", b"/d/y", cred=ALICE).nlink == 2


# -- xattrs ---------------------------------------------------------------------

def test_xattr_set_get_list_remove_and_flags(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.tick()
    assert h.ok(Op.SETXATTR, b"/f", b"user.a", b"1", 0) is None
    assert h.stat(b"/f").ctime_ns == h.now
    assert h.ok(Op.GETXATTR, b"/f", b"user.a") == b"1"
    assert h.err(Op.SETXATTR, b"/f", b"user.a", b"2", model.XATTR_CREATE) == E.EEXIST
    assert h.err(Op.SETXATTR, b"/f", b"user.b", b"2", model.XATTR_REPLACE) == E.ENODATA
    h.ok(Op.SETXATTR, b"/f", b"user.a", b"2", model.XATTR_REPLACE)
    h.ok(Op.SETXATTR, b"/f", b"user.b", b"", model.XATTR_CREATE)
    h.ok(Op.SETXATTR, b"/f", b"trusted.t", b"x", 0)
    assert h.ok(Op.LISTXATTR, b"/f") == [b"trusted.t", b"user.a", b"user.b"]
    assert h.ok(Op.LISTXATTR, b"/f", cred=ALICE) == [b"user.a", b"user.b"]
    assert h.ok(Op.GETXATTR, b"/f", b"user.a") == b"2"
    assert h.err(Op.GETXATTR, b"/f", b"user.zz") == E.ENODATA
    h.ok(Op.REMOVEXATTR, b"/f", b"user.a")
    assert h.err(Op.REMOVEXATTR, b"/f", b"user.a") == E.ENODATA
    h.ok(Op.UNLINK, b"/f")  # xattrs go with the inode (checked by the invariants)


@pytest.mark.parametrize("name,value,err", [
    (b"other.x", b"", E.ENOTSUP), (b"system.posix_acl_access", b"", E.ENOTSUP), (b"user.", b"", E.EINVAL),
    (b"", b"", E.ERANGE), (b"user." + b"n" * 251, b"", E.ERANGE),
    (b"user.big", b"v" * (limits.xattr_value_size_max_bytes + 1), E.E2BIG), ("user.str", b"", E.EINVAL),
])
def test_xattr_argument_errors(h, name, value, err):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.SETXATTR, b"/f", name, value, 0) == err


def test_xattr_permissions(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SETXATTR, b"/f", b"trusted.t", b"x", 0)
    lnk = h.ok(Op.SYMLINK, b"/l", b"f")
    assert h.err(Op.SETXATTR, b"/f", b"user.a", b"1", 0, cred=ALICE) == E.EACCES
    assert h.err(Op.SETXATTR, b"/f", b"trusted.a", b"1", 0, cred=ALICE) == E.EPERM
    assert h.err(Op.GETXATTR, b"/f", b"trusted.t", cred=ALICE) == E.ENODATA
    assert h.err(Op.SETXATTR, b"/f", b"security.a", b"1", 0, cred=ALICE) == E.EPERM
    assert h.err(Op.SETXATTR, lnk.ino, b"user.a", b"1", 0) == E.EPERM
    assert h.err(Op.GETXATTR, lnk.ino, b"user.a") == E.ENODATA
    h.ok(Op.SETXATTR, b"/l", b"user.via_link", b"1", 0)  # path refs follow the link
    assert h.ok(Op.LISTXATTR, b"/f") == [b"trusted.t", b"user.via_link"]


def test_xattr_count_limit(h, monkeypatch):
    monkeypatch.setattr(limits, "xattr_count_max", 2)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SETXATTR, b"/f", b"user.a", b"1", 0)
    h.ok(Op.SETXATTR, b"/f", b"user.b", b"1", 0)
    assert h.err(Op.SETXATTR, b"/f", b"user.c", b"1", 0) == E.ENOSPC
    h.ok(Op.SETXATTR, b"/f", b"user.b", b"2", 0)  # replacing needs no room


# -- leases and the write commit ---------------------------------------------------

TTL_NS = limits.lease_ttl_s * SEC


def test_lease_is_exclusive_until_it_expires(h):
    f = h.ok(Op.CREATE, b"/f", 0o644, True)
    ino, lease = h.ok(Op.OPEN_LEASE, b"/f", b"w1")
    assert ino == f.ino
    assert h.ok(Op.OPEN_LEASE, f.ino, b"w1") == [ino, lease]  # same holder, same lease
    assert h.err(Op.OPEN_LEASE, b"/f", b"w2") == E.EBUSY
    h.now += TTL_NS - 1
    assert h.err(Op.OPEN_LEASE, b"/f", b"w2") == E.EBUSY
    h.now += 1
    ino2, lease2 = h.ok(Op.OPEN_LEASE, b"/f", b"w2")
    assert ino2 == ino and lease2 != lease
    assert h.err(Op.COMMIT_WRITE, ino, lease, [], 0, TIME_NOW) == E.ESTALE
    assert h.ok(Op.RENEW_LEASES, b"w1") == 0


def test_renewal_keeps_a_lease_alive(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.CREATE, b"/g", 0o644, True)
    ino, lease = h.ok(Op.OPEN_LEASE, b"/f", b"w1")
    h.ok(Op.OPEN_LEASE, b"/g", b"w1")
    h.now += TTL_NS - 1
    assert h.ok(Op.RENEW_LEASES, b"w1") == 2
    h.now += TTL_NS - 1
    assert h.err(Op.OPEN_LEASE, b"/f", b"w2") == E.EBUSY
    assert h.ok(Op.COMMIT_WRITE, ino, lease, [], 0, 5).mtime_ns == 5
    h.now += 1
    assert h.err(Op.COMMIT_WRITE, ino, lease, [], 0, 5) == E.ESTALE  # expired, even if nobody took it
    assert h.ok(Op.RENEW_LEASES, b"nobody") == 0


def test_lease_needs_a_writable_regular_file(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert h.err(Op.OPEN_LEASE, b"/d", b"w") == E.EISDIR
    assert h.err(Op.OPEN_LEASE, b"/f", b"w", cred=ALICE) == E.EACCES
    assert h.err(Op.OPEN_LEASE, b"/missing", b"w") == E.ENOENT
    assert h.err(Op.OPEN_LEASE, b"/f", b"") == E.EINVAL


def test_release_then_commit_is_refused(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    ino, lease = h.ok(Op.OPEN_LEASE, b"/f", b"w1")
    h.ok(Op.RELEASE_LEASE, ino, lease)
    assert h.err(Op.RELEASE_LEASE, ino, lease) == E.ESTALE
    assert h.err(Op.COMMIT_WRITE, ino, lease, [], 0, TIME_NOW) == E.ESTALE
    assert h.ok(Op.OPEN_LEASE, b"/f", b"w2")[1] != lease


def test_commit_write_replaces_layout_and_frees_dropped_blocks(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.tick()
    attr = _write(h, b"/f", [_block(1, 4), _block(2, 2)], 6)
    assert attr.size == 6 and attr.mtime_ns == attr.ctime_ns == h.now
    assert h.ok(Op.STATFS)["bytes"] == 6
    _write(h, b"/f", [_block(1, 4), _block(3, 4)], 8)
    assert set(freed_blocks(h)) == {bytes([2]) * 16}
    h.ok(Op.UNLINK, b"/f")
    assert set(freed_blocks(h)) == {bytes([n]) * 16 for n in (1, 2, 3)}
    assert h.ok(Op.STATFS)["bytes"] == 0


@pytest.mark.parametrize("layout,size", [
    ([_block(1, 4)], 0),                         # a block wholly beyond the size
    ([_block(1, 4), _block(2, 4)], 4),
    ([[b"short", 4, b"", []]], 4),
    ([_block(1, 4), _block(1, 4)], 8),            # one block in two positions
    ([[bytes(16), -1, b"", []]], 4),
    ([[bytes(16), 4, b"x" * 65, []]], 4),
    ([[bytes(16), 4, b"", [1.5]]], 4),
    ([_block(9, 4)], 4),                          # already held by another file
    ("nope", 4),
])
def test_commit_write_rejects_bad_layouts(h, layout, size):
    h.ok(Op.CREATE, b"/other", 0o644, True)
    _write(h, b"/other", [_block(9, 4)], 4)
    h.ok(Op.CREATE, b"/f", 0o644, True)
    ino, lease = h.ok(Op.OPEN_LEASE, b"/f", b"w1")
    assert h.err(Op.COMMIT_WRITE, ino, lease, layout, size, TIME_NOW) == E.EINVAL
    assert h.stat(b"/f").size == 0


def test_commit_write_accepts_a_tail_hole(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    assert _write(h, b"/f", [_block(1, 4)], 100).size == 100


def test_unlinking_a_leased_file_frees_it_and_the_lease(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    ino, lease = h.ok(Op.OPEN_LEASE, b"/f", b"w1")
    h.ok(Op.UNLINK, b"/f")
    assert h.err(Op.COMMIT_WRITE, ino, lease, [], 0, TIME_NOW) == E.ESTALE
    assert h.ok(Op.RENEW_LEASES, b"w1") == 0


# -- txn -------------------------------------------------------------------

def test_txn_applies_all_ops_when_conditions_hold(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    version = h.stat(b"/d").version
    result = h.ok(Op.TXN, [[model.COND_EXISTS, b"/d", None], [model.COND_ABSENT, b"/d/x", None],
                           [model.COND_VERSION, b"/d", version], [model.COND_ABSENT, b"/nodir/x", None]],
                  [[Op.CREATE, [b"/d/x", 0o644, True]], [Op.RENAME, [b"/d/x", b"/d/y", 0]],
                   [Op.GETATTR, [b"/d/y", False]]])
    assert result[0].ino == result[2].ino and result[1] is None
    assert names(h, b"/d") == [b"y"]


def test_txn_failed_condition_changes_nothing(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    before = h.tree()
    r = h.write(Op.TXN, [[model.COND_EXISTS, b"/d", None], [model.COND_VERSION, b"/d", 999]],
                [[Op.CREATE, [b"/d/x", 0o644, True]]])
    assert r[0] == E.ECANCELED and "condition 1" in r[1]
    r = h.write(Op.TXN, [[model.COND_ABSENT, b"/d", None]], [[Op.CREATE, [b"/d/x", 0o644, True]]])
    assert r[0] == E.ECANCELED and "condition 0" in r[1]
    assert h.tree() == before


def test_txn_failed_op_undoes_earlier_ops(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    stats = h.ok(Op.STATFS)
    before = h.tree()
    r = h.write(Op.TXN, [], [[Op.CREATE, [b"/d/x", 0o644, True]], [Op.MKDIR, [b"/d/sub", 0o755]],
                             [Op.CREATE, [b"/d/x", 0o644, True]]])
    assert r[0] == E.EEXIST and r[1].startswith("txn op 2:")
    assert h.tree() == before and h.ok(Op.STATFS) == stats


def test_txn_rejects_nested_txn_and_bad_shapes(h):
    assert h.err(Op.TXN, [], [[Op.TXN, [[], []]]]) == E.EINVAL
    assert h.err(Op.TXN, [["bogus", b"/", None]], []) == E.EINVAL
    assert h.err(Op.TXN, [], [[Op.MKDIR]]) == E.EINVAL
    assert h.err(Op.TXN, [], [[Op.DIGEST, []]]) == E.EINVAL
    assert h.err(Op.TXN, [], [[Op.NOOP, []]] * (limits.txn_ops_max + 1)) == E.EINVAL
    assert h.ok(Op.TXN, [], []) == []


def test_version_bumps_on_every_change(h):
    v1 = h.ok(Op.CREATE, b"/f", 0o644, True).version
    h.ok(Op.SETXATTR, b"/f", b"user.a", b"1", 0)
    v2 = h.stat(b"/f").version
    h.ok(Op.LINK, b"/f", b"/g")
    v3 = h.stat(b"/f").version
    assert v1 < v2 < v3
    root_v = h.stat(b"/").version
    h.ok(Op.UNLINK, b"/g")
    assert h.stat(b"/").version > root_v and h.stat(b"/f").version > v3


# -- readdir, lookup, statfs -----------------------------------------------------

def test_readdir_pages_in_name_order_without_dots(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    for name in [b"c", b"a", b"b", b"e", b"d"]:
        h.ok(Op.CREATE, b"/d/" + name, 0o644, True)
    h.ok(Op.MKDIR, b"/d/sub", 0o755)
    page, done = h.ok(Op.READDIR, b"/d", None, 2)
    assert [e[0] for e in page] == [b"a", b"b"] and not done
    assert page[0][2] == model.KIND_REG
    page, done = h.ok(Op.READDIR, b"/d", b"b", 10)
    assert [e[0] for e in page] == [b"c", b"d", b"e", b"sub"] and done
    assert page[-1][2] == model.KIND_DIR
    assert h.ok(Op.READDIR, b"/d", b"zzz", 10) == [[], True]
    assert h.ok(Op.READDIR, b"/d", b"sub", 10) == [[], True]
    assert h.err(Op.READDIR, b"/d/a", None, 10) == E.ENOTDIR
    assert h.err(Op.READDIR, b"/d", None, 0) == E.EINVAL


def test_readdir_paging_is_stable_under_concurrent_changes(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    stable = [b"s%03d" % i for i in range(0, 100, 2)]
    for name in stable:
        h.ok(Op.CREATE, b"/d/" + name, 0o644, True)
    seen, after, step = [], None, 0
    while True:
        page, done = h.ok(Op.READDIR, b"/d", after, 7)
        seen += [e[0] for e in page]
        if done:
            break
        after = page[-1][0]
        # Between pages: insert names before and after the cursor, delete others.
        h.ok(Op.CREATE, b"/d/s%03dx" % (step * 7), 0o644, True)
        h.ok(Op.CREATE, b"/d/a%03d" % step, 0o644, True)
        h.ok(Op.CREATE, b"/d/z%03d" % step, 0o644, True)
        if step:
            h.ok(Op.UNLINK, b"/d/z%03d" % (step - 1))
        step += 1
    assert len(seen) == len(set(seen))
    assert set(stable) <= set(seen)
    assert seen == sorted(seen)


def test_lookup(h):
    d = h.ok(Op.MKDIR, b"/d", 0o755)
    f = h.ok(Op.CREATE, b"/d/f", 0o644, True)
    assert h.ok(Op.LOOKUP, d.ino, b"f") == f
    assert h.ok(Op.LOOKUP, d.ino, b".").ino == d.ino
    assert h.ok(Op.LOOKUP, 1, b"..").ino == 1
    assert h.err(Op.LOOKUP, d.ino, b"nope") == E.ENOENT
    assert h.err(Op.LOOKUP, f.ino, b"x") == E.ENOTDIR
    assert h.err(Op.LOOKUP, d.ino, b"a/b") == E.EINVAL
    assert h.err(Op.LOOKUP, 12345, b"x") == E.ENOENT
    h.ok(Op.SETATTR, b"/d", {"mode": 0o700})
    assert h.err(Op.LOOKUP, d.ino, b"f", cred=ALICE) == E.EACCES


def test_statfs_counts(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.CREATE, b"/d/f", 0o644, True)
    h.ok(Op.SYMLINK, b"/l", b"d")
    h.ok(Op.SETATTR, b"/d/f", {"size": 42})
    assert h.ok(Op.STATFS) == {"files": 2, "dirs": 2, "bytes": 42, "inodes_free": limits.inodes_max - 4}


# -- malformed input never raises and changes nothing -------------------------------

JUNK = [None, True, -1, 2 ** 70, 1.5, "str", b"\xff\xfe", [], [[]], {}, {"a": 1}, [None] * 5]


def test_malformed_arguments_are_einval_and_change_nothing(h):
    h.ok(Op.MKDIR, b"/d", 0o755)
    h.ok(Op.CREATE, b"/d/f", 0o644, True)
    before = h.tree()
    cred = [0, 0, []]
    for code in model.Op:
        for junk in JUNK:
            for args in ([cred, junk], [cred, junk, junk], [cred, b"/d/f", junk], [cred, b"/d/f", junk, junk],
                         [cred, b"/d/f", 0o644, junk], [cred, b"/d/f", b"user.x", junk, junk],
                         [junk], [junk, b"/d/f"], junk, [cred, 2, junk, junk, junk, junk]):
                if code in model.READ_OPS:
                    with h.store.env.begin() as txn:
                        r = h.ns.read(txn, code, args)
                else:
                    r = h.write_raw(code, args)
                assert "internal error" not in r[1], (code, args, r)
    assert h.tree() == before


@pytest.mark.parametrize("code,args", [
    (Op.MKDIR, [[0, 0, []], b"/x", "0755"]),
    (Op.MKDIR, [[0, 0, []], b"/x", 2 ** 64]),
    (Op.MKDIR, [[0, 0], b"/x", 0o755]),
    (Op.MKDIR, [[-1, 0, []], b"/x", 0o755]),
    (Op.MKDIR, [[0, 0, "notalist"], b"/x", 0o755]),
    (Op.MKDIR, [[0, 0, []], b"/x"]),
    (Op.CREATE, [[0, 0, []], b"/x", 0o644, "yes"]),
    (Op.SETATTR, [[0, 0, []], b"/", {"bogus": 1}]),
    (Op.SETATTR, [[0, 0, []], b"/", {"mode": None}]),
    (Op.SETATTR, [[0, 0, []], b"/", [1, 2]]),
    (Op.RENAME, [[0, 0, []], b"/", b"/x", None]),
    (Op.COMMIT_WRITE, [[0, 0, []], 1, 1, [], -5, 0]),
    (Op.TXN, [[0, 0, []], None, []]),
    (Op.NOOP, [[0, 0, []], 1]),
])
def test_specific_malformed_ops(h, code, args):
    r = h.write_raw(code, args)
    assert r == (E.EINVAL, r[1], None) and r[1]


def test_unknown_codes_and_bad_time(h):
    assert h.write_raw(999, [[0, 0, []]])[0] == E.ENOSYS
    assert h.write_raw(Op.GETATTR, [[0, 0, []], b"/", True])[0] == E.ENOSYS  # a read is not a write
    assert h.write_raw("MKDIR", [[0, 0, []]])[0] == E.ENOSYS
    with h.store.env.begin() as txn:
        assert h.ns.read(txn, Op.DIGEST, [[0, 0, []]])[0] == E.ENOSYS
        assert h.ns.read(txn, Op.MKDIR, [[0, 0, []], b"/x", 0])[0] == E.ENOSYS
    assert h.write_raw(Op.NOOP, [[0, 0, []]], time_ns=-3)[0] == E.EINVAL
    assert h.write_raw(Op.NOOP, [[0, 0, []]], time_ns=1.5)[0] == E.EINVAL
    assert h.write_raw(Op.NOOP, [[0, 0, []]]) == (0, "", None)


def test_a_bug_mid_operation_is_undone_and_reported_as_eio(h, monkeypatch):
    h.ok(Op.MKDIR, b"/d", 0o755)
    before = h.tree()

    def explode(*args):
        raise RuntimeError("boom")

    # Fail after the dentry and inode were written, before the parent is.
    monkeypatch.setattr(h.ns, "_put_counters", explode)
    with h.store.env.begin(write=True) as txn:
        r = h.ns.apply(txn, 1, Op.CREATE, [[0, 0, []], b"/d/f", 0o644, True])
    assert r[0] == E.EIO and r[1].startswith("internal error: RuntimeError")
    monkeypatch.undo()
    assert h.tree() == before
    h.check()


# -- determinism --------------------------------------------------------------------

def _dump(store):
    out = {}
    with store.env.begin() as txn:
        for name in (b"inodes", b"dentries", b"layouts", b"blocks", b"xattrs", b"leases", b"holders",
                     b"freed_blocks", b"meta"):
            out[name] = list(txn.cursor(db=store.db(name)))
    return out


def test_same_ops_give_byte_identical_state(tmp_path):
    replicas = [NamespaceHarness(tmp_path / f"r{i}") for i in range(2)]
    for h in replicas:
        h.ok(Op.MKDIR, b"/d", 0o755)
        h.tick(5)
        h.ok(Op.CREATE, b"/d/f", 0o644, True)
        ino, lease = h.ok(Op.OPEN_LEASE, b"/d/f", b"w")
        h.ok(Op.COMMIT_WRITE, ino, lease, [_block(1, 3)], 3, TIME_NOW)
        h.ok(Op.SETXATTR, b"/d/f", b"user.k", b"v", 0)
        h.err(Op.RENAME, b"/d", b"/d/x", 0)
        h.ok(Op.RENAME, b"/d/f", b"/g", 0)
    assert _dump(replicas[0].store) == _dump(replicas[1].store)
    for h in replicas:
        h.close()


def test_txn_condition_resolution_errors_are_reported_as_such(h):
    h.ok(Op.MKDIR, b"/private", 0o700)
    r = h.write(Op.TXN, [[model.COND_ABSENT, b"/private/x", None]], [[Op.MKDIR, [b"/y", 0o755]]], cred=ALICE)
    assert r[0] == E.EACCES and r[1].startswith("txn condition 0:")
    h.ok(Op.SYMLINK, b"/l", b"missing")
    version = h.stat(b"/l").version
    assert h.ok(Op.TXN, [[model.COND_EXISTS, b"/l", None], [model.COND_VERSION, b"/l", version]], []) == []


# -- direct writes (no nested transaction) ------------------------------------------

def test_direct_writes_refuse_before_writing_and_the_harness_would_notice_otherwise(h, monkeypatch):
    # CREATE and MKDIR run without a nested transaction (state.DIRECT_WRITES),
    # which is safe only because they refuse before their first write; the
    # harness compares the transaction before and after every refused one.
    from cistern.metadata import state

    assert {Op.CREATE, Op.MKDIR} <= state.DIRECT_WRITES
    h.ok(Op.MKDIR, b"/d", 0o755)
    assert h.err(Op.MKDIR, b"/d", 0o755) == E.EEXIST
    assert h.err(Op.CREATE, b"/d/x/y", 0o644, True) == E.ENOENT
    real = state.Namespace._new_name

    def writes_then_refuses(self, t, cred, path, want_dir):
        counters = self._counters(t)
        counters[0] += 1                             # an inode number used up
        self._put_counters(t, counters)
        return real(self, t, cred, path, want_dir)

    monkeypatch.setattr(state.Namespace, "_new_name", writes_then_refuses)
    with pytest.raises(AssertionError, match="refused operation"):
        h.write(Op.MKDIR, b"/d", 0o755)
