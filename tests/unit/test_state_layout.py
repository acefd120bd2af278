"""Exact-result tests of GET_LAYOUT (metadata/state.py): the read the data
path opens a file with — attributes, layout and replication factor from one
transaction, read permission checked, symlinks followed."""

import errno as E

import pytest

from cistern.metadata import model
from cistern.metadata.model import TIME_NOW, Op
from cistern.metadata.testing import NamespaceHarness

ALICE = (1000, 1000, [])
BOB = (1001, 1001, [])


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


@pytest.fixture
def h(tmp_path):
    harness = NamespaceHarness(tmp_path / "ns")
    yield harness
    harness.close()


def commit(h, path: bytes, layout, size: int, cred=None) -> int:
    ino, lease = h.ok(Op.OPEN_LEASE, path, b"writer", cred=cred)
    h.ok(Op.COMMIT_WRITE, ino, lease, layout, size, TIME_NOW, cred=cred)
    h.ok(Op.RELEASE_LEASE, ino, lease, cred=cred)
    return ino


def test_layout_of_a_written_file_comes_with_its_attr_and_default_replication(h):
    ino = h.ok(Op.CREATE, b"/f", 0o644, True).ino
    layout = [[bid(1), 10, b"c1", ["n1", "n2"]], [bid(2), 5, b"c2", ["n3"]]]
    commit(h, b"/f", layout, 15)
    attr, got, replication = h.ok(Op.GET_LAYOUT, b"/f")
    assert model.Attr(*attr) == h.stat(b"/f")
    assert model.Attr(*attr).size == 15 and model.Attr(*attr).ino == ino
    assert got == layout
    assert replication is None


def test_an_empty_file_has_an_empty_layout_and_the_replication_xattr_shows(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    h.ok(Op.SETXATTR, b"/f", model.REPLICATION_XATTR, b"2", 0)
    attr, layout, replication = h.ok(Op.GET_LAYOUT, b"/f")
    assert (model.Attr(*attr).size, layout, replication) == (0, [], 2)


def test_symlinks_are_followed_and_an_inode_number_works(h):
    ino = h.ok(Op.CREATE, b"/f", 0o644, True).ino
    commit(h, b"/f", [[bid(7), 3, b"", ["n1"]]], 3)
    h.ok(Op.SYMLINK, b"/l", b"f")
    by_link = h.ok(Op.GET_LAYOUT, b"/l")
    by_ino = h.ok(Op.GET_LAYOUT, ino)
    assert by_link == by_ino == h.ok(Op.GET_LAYOUT, b"/f")
    assert by_link[1] == [[bid(7), 3, b"", ["n1"]]]


def test_truncation_is_seen_in_the_layout(h):
    h.ok(Op.CREATE, b"/f", 0o644, True)
    commit(h, b"/f", [[bid(1), 10, b"", []], [bid(2), 10, b"", []]], 20)
    h.ok(Op.SETATTR, b"/f", {"size": 5})
    attr, layout, _ = h.ok(Op.GET_LAYOUT, b"/f")
    # The block straddling the new end stays whole; readers stop at the size.
    assert model.Attr(*attr).size == 5
    assert layout == [[bid(1), 10, b"", []]]


def test_errors_match_open_for_reading(h):
    h.ok(Op.MKDIR, b"/d", 0o777)
    h.ok(Op.CREATE, b"/d/secret", 0o600, True, cred=ALICE)
    h.ok(Op.SYMLINK, b"/dangling", b"/nowhere")
    assert h.err(Op.GET_LAYOUT, b"/missing") == E.ENOENT
    assert h.err(Op.GET_LAYOUT, b"/dangling") == E.ENOENT
    assert h.err(Op.GET_LAYOUT, b"/d") == E.EISDIR
    assert h.err(Op.GET_LAYOUT, b"/d/secret/x") == E.ENOTDIR
    assert h.err(Op.GET_LAYOUT, b"/d/secret", cred=BOB) == E.EACCES
    assert h.ok(Op.GET_LAYOUT, b"/d/secret", cred=ALICE)[1] == []
    # Root passes the permission check, as on a local filesystem.
    assert h.ok(Op.GET_LAYOUT, b"/d/secret")[1] == []
    assert h.err(Op.GET_LAYOUT, 999_999) == E.ENOENT


def test_malformed_arguments_are_einval_and_it_is_a_read(h):
    assert Op.GET_LAYOUT in model.READ_OPS
    assert h.err(Op.GET_LAYOUT) == E.EINVAL
    assert h.err(Op.GET_LAYOUT, b"/f", b"extra") == E.EINVAL
    assert h.err(Op.GET_LAYOUT, b"relative") == E.EINVAL
    assert h.err(Op.GET_LAYOUT, 0) == E.EINVAL
