"""Exact-result tests of the create delegation ops of the namespace state
machine (DELEG_GRANT/RENEW/RELEASE/CREATE/RECALL in metadata/state.py): the
grant reserves inode numbers and lists the directory, the holder's batch
commits with its numbers, every other client's operation that could observe
a missing name (or change what the holder checked) is refused with
DELEGATED_ERRNO until the delegation is recalled and released or lapses,
and the outcome is deterministic (two stores given the same entries end
byte-identical)."""

import errno as E
import stat

import pytest

from cistern.metadata import limits, model
from cistern.metadata.model import DELEGATED_ERRNO, Op
from cistern.metadata.testing import NamespaceHarness

ALICE = (1000, 1000, [])
BOB = (1001, 1001, [])
SEC = 1_000_000_000
TERM_NS = int(limits.delegation_term_s * SEC)
A, B = b"holder-a", b"holder-b"


@pytest.fixture
def h(tmp_path):
    harness = NamespaceHarness(tmp_path / "ns")
    yield harness
    harness.close()


def delegated_dir(h, mode=0o777):
    d = h.ok(Op.MKDIR, b"/d", mode)
    h.ok(Op.CREATE, b"/d/old", 0o644, True)
    return d.ino


def grant(h, dino, holder=A, inodes=8):
    return h.ok(Op.DELEG_GRANT, dino, holder, inodes)


def item(name, ino, mode=0o644, index=0, time_ns=5 * SEC):
    return [name, ino, mode, index, time_ns]


def test_grant_reserves_a_range_and_returns_the_dir_and_its_listing(h):
    dino = delegated_dir(h)
    before = h.ok(Op.STATFS)
    attr, first, end, names = grant(h, dino, inodes=8)
    assert attr.ino == dino and stat.S_ISDIR(attr.mode)
    assert names == [b"old"] and end - first == 8
    # The reserved numbers are gone from the counter: the next inode is past them.
    assert h.ok(Op.MKDIR, b"/e", 0o755).ino == end
    assert h.ok(Op.STATFS)["files"] == before["files"]


def test_holder_creates_commit_with_its_numbers_and_times(h):
    dino = delegated_dir(h)
    _, first, _, _ = grant(h, dino)
    h.now += 1000
    recalled, results = h.ok(Op.DELEG_CREATE, dino, A, [list(ALICE)],
                             [item(b"x", first, 0o640, 0, 3 * SEC), item(b"y", first + 2, 0o600, 0, 4 * SEC)])
    assert recalled is False
    assert [r[0] for r in results] == [0, 0]
    x = results[0][1]
    assert (x.ino, x.mode, x.uid, x.gid, x.nlink, x.size) == (first, stat.S_IFREG | 0o640, 1000, 1000, 1, 0)
    assert x.mtime_ns == x.ctime_ns == 3 * SEC
    h.ok(Op.DELEG_RELEASE, dino, A)
    assert h.stat(b"/d/y").ino == first + 2
    assert h.stat(b"/d").mtime_ns == h.now


def test_a_failed_create_fails_alone(h):
    dino = delegated_dir(h, 0o755)    # only root may create in it
    _, first, end, _ = grant(h, dino)
    _, results = h.ok(Op.DELEG_CREATE, dino, A, [list(ALICE), [0, 0, []]], [
        item(b"old", first, index=1),           # exists
        item(b"a", first + 1, index=0),          # Alice lacks write permission
        item(b"b/c", first + 2, index=1),        # not a name
        item(b"b", end, index=1),                # outside the range
        item(b"b", first + 3, index=1),          # fine
        item(b"c", first + 3, index=1),          # number already used
        item(b"x" * 256, first + 4, index=1),    # name too long
    ])
    assert [r[0] for r in results] == [E.EEXIST, E.EACCES, E.EINVAL, E.EINVAL, 0, E.EINVAL, E.ENAMETOOLONG]


def test_setgid_dir_hands_its_group_down(h):
    dino = h.ok(Op.MKDIR, b"/d", 0o777).ino
    h.ok(Op.SETATTR, b"/d", {"gid": 55, "mode": 0o2777})
    _, first, _, _ = grant(h, dino)
    [[err, attr]] = h.ok(Op.DELEG_CREATE, dino, A, [list(ALICE)], [item(b"x", first)])[1]
    assert err == 0 and attr.gid == 55


def test_others_are_refused_what_could_see_a_missing_name(h):
    dino = delegated_dir(h)
    h.ok(Op.MKDIR, b"/d/sub", 0o777)
    h.ok(Op.MKDIR, b"/other", 0o777)
    grant(h, dino)
    refused = [
        (Op.CREATE, b"/d/new", 0o644, True), (Op.MKDIR, b"/d/new", 0o755), (Op.SYMLINK, b"/d/new", b"t"),
        (Op.LINK, b"/d/old", b"/d/new"), (Op.RENAME, b"/other", b"/d/new", 0), (Op.UNLINK, b"/d/nope"),
        (Op.RMDIR, b"/d"), (Op.RENAME, b"/d", b"/moved", 0), (Op.SETATTR, b"/d", {"mode": 0o700}),
        (Op.TXN, [[model.COND_ABSENT, b"/d/new", None]], []),
    ]
    for code, *args in refused:
        assert h.err(code, *args) == DELEGATED_ERRNO, code
    for code, *args in [(Op.READDIR, b"/d", None, 10), (Op.LOOKUP, dino, b"new"), (Op.GETATTR, b"/d/new", False)]:
        assert h.err(code, *args) == DELEGATED_ERRNO, code


def test_a_directory_above_the_delegated_one_may_not_move(h):
    h.ok(Op.MKDIR, b"/top", 0o777)
    dino = h.ok(Op.MKDIR, b"/top/d", 0o777).ino
    grant(h, dino)
    assert h.err(Op.RENAME, b"/top", b"/elsewhere", 0) == DELEGATED_ERRNO
    h.ok(Op.MKDIR, b"/unrelated", 0o777)
    h.ok(Op.RENAME, b"/unrelated", b"/renamed", 0)


def test_existing_names_stay_usable(h):
    dino = delegated_dir(h)
    h.ok(Op.CREATE, b"/d/f2", 0o644, True)
    grant(h, dino)
    assert h.stat(b"/d/old").size == 0
    assert h.ok(Op.LOOKUP, dino, b"old").ino == h.stat(b"/d/old").ino
    assert h.err(Op.MKDIR, b"/d/old", 0o755) == E.EEXIST
    h.ok(Op.RENAME, b"/d/f2", b"/moved", 0)
    h.ok(Op.UNLINK, b"/d/old")


def test_recall_stops_renewal_then_release_lets_others_in(h):
    dino = delegated_dir(h)
    grant(h, dino)
    assert h.ok(Op.DELEG_RENEW, dino, A) is False
    args = [b"/d/new", 0o644, True]
    assert h.err(Op.CREATE, *args) == DELEGATED_ERRNO
    assert h.ok(Op.DELEG_RECALL, Op.CREATE, args) == dino
    assert h.ok(Op.DELEG_RENEW, dino, A) is True        # recalled: not extended
    assert h.err(Op.DELEG_GRANT, dino, A, 4) == E.EBUSY  # nor granted again before the release
    h.ok(Op.DELEG_RELEASE, dino, A)
    assert h.ok(Op.CREATE, *args).ino > 0
    assert h.err(Op.DELEG_RENEW, dino, A) == E.ESTALE
    assert h.ok(Op.DELEG_RECALL, Op.CREATE, args) == 0


def test_a_batch_renews_and_reports_a_recall(h):
    dino = delegated_dir(h)
    h.now = 10 * SEC
    _, first, _, _ = grant(h, dino)
    h.now += TERM_NS - 1
    assert h.ok(Op.DELEG_CREATE, dino, A, [list(ALICE)], [item(b"a", first)])[0] is False
    h.now += TERM_NS - 1       # alive only because the batch renewed it
    assert h.err(Op.DELEG_GRANT, dino, B, 4) == E.EBUSY
    h.ok(Op.DELEG_RECALL, Op.READDIR, [b"/d", None, 10])
    assert h.ok(Op.DELEG_CREATE, dino, A, [list(ALICE)], [item(b"b", first + 1)])[0] is True
    h.now += TERM_NS           # a recalled delegation is not extended by a batch
    assert h.ok(Op.DELEG_GRANT, dino, B, 4)[0].ino == dino


def test_a_read_can_be_recalled_too(h):
    dino = delegated_dir(h)
    grant(h, dino)
    assert h.ok(Op.DELEG_RECALL, Op.READDIR, [b"/d", None, 10]) == dino
    assert h.ok(Op.DELEG_RENEW, dino, A) is True


def test_expiry_is_by_the_entry_time(h):
    dino = delegated_dir(h)
    h.now = 10 * SEC
    grant(h, dino)
    # Another holder is refused while it lives, by entry time only.
    assert h.err(Op.DELEG_GRANT, dino, B, 4, time_ns=10 * SEC + TERM_NS - 1) == E.EBUSY
    # A renewal extends it from the renewal's entry time.
    h.now = 10 * SEC + TERM_NS - 1
    assert h.ok(Op.DELEG_RENEW, dino, A) is False
    assert h.err(Op.DELEG_GRANT, dino, B, 4, time_ns=10 * SEC + 2 * TERM_NS - 2) == E.EBUSY
    # Lapsed: still refusing others until recalled (the recall removes it)...
    h.now = 10 * SEC + 2 * TERM_NS
    assert h.err(Op.CREATE, b"/d/new", 0o644, True) == DELEGATED_ERRNO
    # ...but the holder may still commit under it (a late batch) or revive it.
    _, first, _, _ = h.ok(Op.DELEG_GRANT, dino, A, 4)
    h.now += 2 * TERM_NS
    [[err, _]] = h.ok(Op.DELEG_CREATE, dino, A, [list(ALICE)], [item(b"late", first)])[1]
    assert err == 0
    h.now += 2 * TERM_NS       # (the late batch revived it: let it lapse again)
    assert h.ok(Op.DELEG_RECALL, Op.CREATE, [b"/d/new", 0o644, True]) == dino
    assert h.err(Op.DELEG_CREATE, dino, A, [list(ALICE)], [item(b"later", first + 1)]) == E.ESTALE
    assert h.ok(Op.CREATE, b"/d/new", 0o644, True).ino > 0
    assert h.stat(b"/d/late").ino == first


def test_lapsed_delegation_of_another_holder_is_taken_over(h):
    dino = delegated_dir(h)
    h.now = 10 * SEC
    grant(h, dino, A)
    h.now += TERM_NS
    grant(h, dino, B)
    assert h.err(Op.DELEG_RENEW, dino, A) == E.ESTALE
    assert h.err(Op.DELEG_CREATE, dino, A, [list(ALICE)], []) == E.ESTALE


def test_grant_checks(h):
    dino = delegated_dir(h, 0o755)
    fino = h.stat(b"/d/old").ino
    assert h.err(Op.DELEG_GRANT, dino, A, 4, cred=ALICE) == E.EACCES
    assert h.err(Op.DELEG_GRANT, fino, A, 4) == E.ENOTDIR
    assert h.err(Op.DELEG_GRANT, 9999, A, 4) == E.ENOENT
    assert h.err(Op.DELEG_GRANT, b"/nope", A, 4) == E.ENOENT
    assert h.ok(Op.DELEG_GRANT, b"/d", A, 4)[0].ino == dino
    assert h.err(Op.DELEG_GRANT, dino, b"", 4) == E.EINVAL
    assert h.err(Op.DELEG_GRANT, dino, A, limits.delegation_inodes_max + 1) == E.EINVAL
    assert h.err(Op.TXN, [], [[Op.DELEG_GRANT, [dino, A, 4]]]) == E.EINVAL


def test_a_large_directory_is_not_delegated(h, monkeypatch):
    dino = delegated_dir(h)
    monkeypatch.setattr(limits, "delegation_listing_entries_max", 1)
    h.ok(Op.CREATE, b"/d/second", 0o644, True)
    assert h.err(Op.DELEG_GRANT, dino, A, 4) == E.E2BIG


def test_recall_of_an_unrelated_or_malformed_operation_is_harmless(h):
    delegated_dir(h)
    assert h.ok(Op.DELEG_RECALL, Op.CREATE, [b"/d/new", 0o644, True]) == 0
    assert h.err(Op.DELEG_RECALL, Op.DELEG_GRANT, [1, A, 4]) == E.EINVAL
    assert h.err(Op.DELEG_RECALL, 9999, []) == E.EINVAL
    assert h.ok(Op.DELEG_RECALL, Op.CREATE, ["junk"]) == 0


def _dump(harness) -> list:
    out = []
    with harness.store.env.begin() as txn:
        for name in (b"inodes", b"dentries", b"meta"):
            out.append(list(txn.cursor(db=harness.store.env.open_db(name, txn=txn))))
    return out


def test_two_replicas_applying_the_same_entries_stay_identical(tmp_path):
    one, two = NamespaceHarness(tmp_path / "one"), NamespaceHarness(tmp_path / "two")
    try:
        for harness in (one, two):
            dino = delegated_dir(harness)
            _, first, _, _ = grant(harness, dino)
            harness.now += 1000
            harness.ok(Op.DELEG_CREATE, dino, A, [list(ALICE)], [item(b"p", first), item(b"q", first + 1)])
            harness.ok(Op.DELEG_RECALL, Op.READDIR, [b"/d", None, 10])
            harness.ok(Op.DELEG_RENEW, dino, A)
            harness.ok(Op.DELEG_RELEASE, dino, A)
        assert _dump(one) == _dump(two)
    finally:
        one.close()
        two.close()
