"""Exact-result tests of the block bookkeeping ops of metadata/state.py:
UPDATE_REPLICAS, NODE_LOST, CLEAR_FREED (writes) and FSCK_SCAN,
BLOCK_OWNERS, FREED_SCAN (reads). The harness checks the namespace
invariants after every write."""

import errno as E

import pytest

from cistern.metadata import limits, model
from cistern.metadata.model import Op, TIME_NOW
from cistern.metadata.testing import NamespaceHarness

ALICE = (1000, 1000, [])


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def h(tmp_path):
    harness = NamespaceHarness(tmp_path / "ns")
    yield harness
    harness.close()


def write_file(h, path: bytes, blocks) -> int:
    """A file whose layout is ``blocks``: [(block number, length, [nodes])]."""
    ino = h.ok(Op.CREATE, path, 0o644, True).ino
    _, lease = h.ok(Op.OPEN_LEASE, path, b"writer")
    layout = [[bid(n), length, b"c", list(nodes)] for n, length, nodes in blocks]
    size = sum(length for _, length, _ in blocks)
    h.ok(Op.COMMIT_WRITE, ino, lease, layout, size, TIME_NOW)
    h.ok(Op.RELEASE_LEASE, ino, lease)
    return ino


def scan(h, after=0, limit=100):
    return h.ok(Op.FSCK_SCAN, after, limit)


def test_fsck_scan_pages_files_in_ino_order_with_replication_xattr(h):
    a = write_file(h, b"/a", [(1, 10, ["n1", "n2"]), (2, 5, ["n2"])])
    b = write_file(h, b"/b", [(3, 7, [])])
    h.ok(Op.CREATE, b"/empty", 0o644, True)
    h.ok(Op.SETXATTR, b"/b", model.REPLICATION_XATTR, b"2", 0)
    assert scan(h) == [[[a, None, [[bid(1), 10, ["n1", "n2"]], [bid(2), 5, ["n2"]]]],
                        [b, 2, [[bid(3), 7, []]]]], True]
    assert scan(h, 0, 1) == [[[a, None, [[bid(1), 10, ["n1", "n2"]], [bid(2), 5, ["n2"]]]]], False]
    assert scan(h, a, 1) == [[[b, 2, [[bid(3), 7, []]]]], True]
    assert scan(h, b, 1) == [[], True]


def test_a_malformed_replication_xattr_reads_as_default(h):
    a = write_file(h, b"/a", [(1, 10, [])])
    for bad in (b"0", b"x", b"99", b"-1", b"1000"):
        h.ok(Op.SETXATTR, b"/a", model.REPLICATION_XATTR, bad, 0)
        assert scan(h)[0][0][:2] == [a, None], bad


def test_update_replicas_adds_and_drops_by_delta_and_skips_unknown_blocks(h):
    a = write_file(h, b"/a", [(1, 10, ["n1", "n2"]), (2, 5, ["n2"])])
    before = h.stat(b"/a")
    updates = [[bid(1), ["n3", "n1"], ["n2"]], [bid(2), ["n2"], []], [bid(9), ["n1"], []]]
    assert h.ok(Op.UPDATE_REPLICAS, updates) == 1
    assert scan(h)[0][0][2] == [[bid(1), 10, ["n1", "n3"]], [bid(2), 5, ["n2"]]]
    after = h.stat(b"/a")
    assert (after.version, after.ctime_ns) == (before.version, before.ctime_ns)
    # the same update again changes nothing
    assert h.ok(Op.UPDATE_REPLICAS, updates) == 0
    assert a


def _append_with_an_old_layout(h):
    ino = h.ok(Op.CREATE, b"/a", 0o644, True).ino
    _, lease = h.ok(Op.OPEN_LEASE, b"/a", b"writer")
    first = [[bid(1), 10, b"c", ["n1", "n2", "n3"]]]
    h.ok(Op.COMMIT_WRITE, ino, lease, first, 10, TIME_NOW)
    # Meanwhile the leader moves block 1 off n3 and loses n1.
    assert h.ok(Op.UPDATE_REPLICAS, [[bid(1), ["n4"], ["n3"]]]) == 1
    h.ok(Op.NODE_LOST, "n1", 0, 10)
    # The writer appends a block, sending block 1 with the lists it knew.
    appended = first + [[bid(2), 5, b"d", ["n1", "n5"]]]
    h.ok(Op.COMMIT_WRITE, ino, lease, appended, 15, TIME_NOW)
    return scan(h)[0][0][2]


def test_a_writer_with_an_old_layout_does_not_undo_replica_changes_to_blocks_it_keeps(h):
    assert h.ns.entry_version == model.STATE_MACHINE_VERSION == 2
    assert _append_with_an_old_layout(h) == [[bid(1), 10, ["n2", "n4"]], [bid(2), 5, ["n1", "n5"]]]


def test_a_version_1_entry_commits_as_version_1_did_writing_the_writers_lists_back(h):
    # A replica of a group being upgraded applies an old leader's entry as
    # the old code would, or its state would differ from the old replicas'.
    h.ns.entry_version = 1
    assert _append_with_an_old_layout(h) == [[bid(1), 10, ["n1", "n2", "n3"]], [bid(2), 5, ["n1", "n5"]]]


def test_update_replicas_caps_the_list_at_block_replicas_max(h):
    write_file(h, b"/a", [(1, 10, [])])
    many = [f"n{i}" for i in range(limits.block_replicas_max)]
    h.ok(Op.UPDATE_REPLICAS, [[bid(1), many, []]])
    assert h.ok(Op.UPDATE_REPLICAS, [[bid(1), ["extra"], []]]) == 0
    assert scan(h)[0][0][2][0][2] == many


def test_update_replicas_validates_everything_before_changing_anything(h):
    write_file(h, b"/a", [(1, 10, ["n1"])])
    assert h.err(Op.UPDATE_REPLICAS, [[bid(1), ["n2"], []], [b"short", [], []]]) == E.EINVAL
    assert h.err(Op.UPDATE_REPLICAS, [[bid(1), [1.5], []]]) == E.EINVAL
    assert h.err(Op.UPDATE_REPLICAS, "x") == E.EINVAL
    assert h.err(Op.UPDATE_REPLICAS, [[bid(1), ["n2"], []]], cred=ALICE) == E.EPERM
    assert scan(h)[0][0][2] == [[bid(1), 10, ["n1"]]]


def test_node_lost_removes_the_node_everywhere_page_by_page(h):
    a = write_file(h, b"/a", [(1, 10, ["n1", "n2"]), (2, 5, ["n2", "n3"])])
    b = write_file(h, b"/b", [(3, 7, ["n2"])])
    c = write_file(h, b"/c", [(4, 7, ["n1"])])
    assert h.ok(Op.NODE_LOST, "n2", 0, 1) == [a, False, 2]
    assert h.ok(Op.NODE_LOST, "n2", a, 5) == [c, True, 1]
    assert [f[2] for f in scan(h)[0]] == [
        [[bid(1), 10, ["n1"]], [bid(2), 5, ["n3"]]], [[bid(3), 7, []]], [[bid(4), 7, ["n1"]]]]
    assert h.ok(Op.NODE_LOST, "n2", c, 5) == [c, True, 0]
    assert h.err(Op.NODE_LOST, "n2", 0, 1, cred=ALICE) == E.EPERM
    assert h.err(Op.NODE_LOST, 1.5, 0, 1) == E.EINVAL
    assert b


def test_freed_blocks_scan_owners_and_clear(h):
    a = write_file(h, b"/a", [(1, 10, ["n1"]), (2, 5, ["n2"])])
    write_file(h, b"/b", [(3, 7, ["n3"])])
    h.ok(Op.UNLINK, b"/b")
    h.ok(Op.SETATTR, b"/a", {"size": 10})          # frees block 2
    assert h.ok(Op.BLOCK_OWNERS, [bid(1), bid(2), bid(3), bid(4)]) == [a, model.BLOCK_FREED,
                                                                      model.BLOCK_FREED, None]
    assert h.ok(Op.FREED_SCAN, None, 10) == [[[bid(2), ["n2"]], [bid(3), ["n3"]]], True]
    assert h.ok(Op.FREED_SCAN, None, 1) == [[[bid(2), ["n2"]]], False]
    assert h.ok(Op.FREED_SCAN, bid(2), 1) == [[[bid(3), ["n3"]]], True]
    assert h.ok(Op.CLEAR_FREED, [bid(2), bid(9)]) == 1
    assert h.ok(Op.FREED_SCAN, None, 10) == [[[bid(3), ["n3"]]], True]
    assert h.ok(Op.BLOCK_OWNERS, [bid(2)]) == [None]
    assert h.err(Op.CLEAR_FREED, [b"x"]) == E.EINVAL
    assert h.err(Op.CLEAR_FREED, [bid(3)], cred=ALICE) == E.EPERM
    assert h.err(Op.BLOCK_OWNERS, [bid(3)], cred=ALICE) == E.EPERM
    assert h.err(Op.FSCK_SCAN, 0, 1, cred=ALICE) == E.EPERM


def test_block_ops_inside_a_txn_are_all_or_nothing(h):
    write_file(h, b"/a", [(1, 10, ["n1"])])
    result = h.write(Op.TXN, [], [[Op.UPDATE_REPLICAS, [[[bid(1), ["n2"], []]]]], [Op.RMDIR, [b"/nope"]]])
    assert result[0] == E.ENOENT
    assert scan(h)[0][0][2] == [[bid(1), 10, ["n1"]]]
