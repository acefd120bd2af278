"""The metadata client's own handling of delegation refusals, over real
metad processes: an operation a directory create delegation refuses
(``model.DELEGATED_ERRNO``) is recalled and resent by ``MetaClient`` itself,
so every caller (the ``Client``, the mount, tools over a bare MetaClient)
sees only the final answer, and ordinary calls carry no wrapper.
"""

from __future__ import annotations

import errno
import time
from concurrent.futures import Future

import pytest

from cistern.client.api import Client
from cistern.client.plans import Call
from cistern.core.errors import CisternError
from cistern.metadata import limits, model
from cistern.metadata.client import MetaClient
from cistern.metadata.model import Op
from cistern.metadata.proc_testing import MetaCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CRED = model.ROOT_CRED
HOLDER = b"test-holder"


def args(*items) -> bytes:
    return model.encode_args(CRED, *items)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with MetaCluster(tmp_path_factory.mktemp("refusals-metad"), 3, log_level="WARNING") as c:
        yield c


def grant(meta: MetaClient, path: bytes) -> int:
    """A delegation on ``path`` held by HOLDER (raw: nobody answers recalls); its inode."""
    meta.call(Op.MKDIR, args(path, 0o777))
    attr, _first, _end, _names = meta.call(Op.DELEG_GRANT, args(path, HOLDER, 4))
    return attr[0]


def wait_recalled(meta: MetaClient, dino: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not meta.call(Op.DELEG_RENEW, args(dino, HOLDER)):
        assert time.monotonic() < deadline, "the refused client never recalled the delegation"
        time.sleep(0.01)


def test_refused_operations_wait_for_the_release_then_get_their_own_answers(cluster):
    with MetaClient(cluster.addresses) as holder, MetaClient(cluster.addresses, timeout_s=30) as other:
        dino = grant(holder, b"/held")
        missing = other.submit(Op.GETATTR, args(b"/held/missing", True))
        created = other.submit(Op.CREATE, args(b"/held/new", 0o644, True))
        wait_recalled(holder, dino)           # the client sent DELEG_RECALL on its own
        holder.call(Op.DELEG_RELEASE, args(dino, HOLDER))
        with pytest.raises(CisternError) as e:
            missing.result(timeout=10)
        assert e.value.errno == errno.ENOENT
        attr = model.Attr(*created.result(timeout=10))
        assert attr.mode & 0o777 == 0o644
        names = [entry[0] for entry in other.call(Op.READDIR, args(b"/held", None, 100))[0]]
        assert names == [b"new"]              # applied once, under the retry's new seq


def test_an_operation_refused_until_its_deadline_fails_with_etimedout(cluster):
    # A real clock lets the recalled record lapse (delegation_term_s after
    # the grant) and the recall then removes it, so the deadline must come
    # first: a short timeout, and a fresh grant again if the host stalled.
    term_s = limits.delegation_term_s
    with MetaClient(cluster.addresses) as holder, MetaClient(cluster.addresses, timeout_s=term_s / 3) as other:
        for attempt in range(5):
            path = b"/stuck%d" % attempt
            grant(holder, path)
            granted = time.monotonic()
            with pytest.raises(CisternError) as e:
                other.call(Op.GETATTR, args(path + b"/missing", True))
            if e.value.errno == errno.ENOENT and time.monotonic() - granted > term_s * 0.8:
                continue   # the record lapsed first (a stalled host): not this test's case
            assert e.value.errno == errno.ETIMEDOUT
            assert model.Attr(*other.call(Op.GETATTR, args(path, True))).nlink == 2   # not hidden
            return
        pytest.fail("the host stalled past the delegation's term in every attempt")


class RecordingMeta:
    """Just enough of MetaClient to see what ``Client`` hands back."""

    timeout_s = 1.0
    addresses = ()

    def __init__(self):
        self.futures = []

    def submit(self, code, args, *, stale=False, timeout_s=None):
        future = Future()
        future.set_result(None)
        self.futures.append(future)
        return future

    def close(self):
        pass


def test_a_client_call_returns_the_metadata_clients_own_future():
    meta = RecordingMeta()
    client = Client(meta, uid=0, gid=0, groups=[], data=object())
    assert client._submit(Call(Op.GETATTR, (b"/x", True))) is meta.futures[-1]   # no second future
