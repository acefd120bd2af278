"""Asynchronous creates: the holder's pure core (client/delegation.py) with
exact results, and the shell (client/async_create.py) with two clients over
one in-process metadata backend running the real state machine: the
holder's creates are answered locally and committed in batches, another
client's lookup is refused, recalls the delegation and then sees every file
the holder had answered, and a holder that stops dead holds the others up
for at most about one term."""

import contextlib
import errno as E
import stat
import struct
import threading
import time
from concurrent.futures import Future

import pytest

from cistern.client.api import Client
from cistern.client.async_create import AsyncCreates
from cistern.client.delegation import GRANTING, HELD, DirDelegation, usable_fraction
from cistern.client.testing import InProcessMetaClient
from cistern.metadata import limits, model
from cistern.metadata.model import Attr

ALICE = (1000, 1000, ())
BOB = (1001, 1001, ())
TERM = limits.delegation_term_s


def held(mode=0o775, uid=1000, gid=1000, names=(b"old",), first=100, end=104, now=10.0) -> DirDelegation:
    d = DirDelegation("/d", now)
    d.granted(Attr(7, stat.S_IFDIR | mode, 2, uid, gid, 0, 0, 0, 0, 0, 1), first, end, list(names), now)
    return d


# -- the pure core ----------------------------------------------------------

def test_a_create_is_checked_as_the_service_checks_it():
    d = held(mode=0o755)
    assert d.check_create(b"old", ALICE) == E.EEXIST
    assert d.check_create(b"new", BOB) == E.EACCES         # others lack write on a 755 dir
    assert d.check_create(b"new", ALICE) == 0
    assert d.check_create(b"x" * 256, ALICE) == E.ENAMETOOLONG
    assert d.check_create(b"..", ALICE) == E.EEXIST


def test_create_answers_with_a_reserved_number_and_batches_in_order():
    d = held()
    a = d.create(b"a", 0o640, ALICE, 5, 10.0)
    b = d.create(b"b", 0o600, (0, 0, ()), 6, 10.0)
    assert (a.ino, a.mode, a.uid, a.gid, a.nlink, a.mtime_ns) == (100, stat.S_IFREG | 0o640, 1000, 1000, 1, 5)
    assert b.ino == 101 and not d.absent(b"a") and d.absent(b"c")
    creds, items = d.take_batch()
    assert creds == [[1000, 1000, []], [0, 0, []]]
    assert items == [[b"a", 100, 0o640, 0, 5], [b"b", 101, 0o600, 1, 6]]
    assert d.take_batch() == ([], [])                       # one batch out at a time
    assert not d.settled()
    failed = d.committed([[0, None], [E.EEXIST, None]])
    assert [(c.name, err) for c, err in failed] == [(b"b", E.EEXIST)]
    assert d.settled() and d.absent(b"b") and not d.absent(b"a")


def test_setgid_directory_group_is_handed_down():
    d = held(mode=0o2777, gid=55)
    assert d.create(b"a", 0o644, ALICE, 1, 10.0).gid == 55


def test_usable_only_early_in_a_term_with_numbers_left_and_not_recalled():
    d = held(first=100, end=102, now=10.0)
    assert d.usable(10.0) and not d.usable(10.0 + TERM * usable_fraction)
    d.renewed(False, 10.0 + TERM)
    assert d.usable(10.0 + TERM)
    d.create(b"a", 0o644, ALICE, 1, 10.0 + TERM)
    d.create(b"b", 0o644, ALICE, 1, 10.0 + TERM)
    assert not d.usable(10.0 + TERM)                         # out of numbers
    assert d.should_release(10.0 + TERM)
    e = held()
    e.renewed(True, 10.0)
    assert not e.usable(10.0) and e.should_release(10.0)
    assert DirDelegation("/x", 1.0).state == GRANTING and e.state != HELD


def test_idle_delegation_is_released_once_settled():
    d = held(now=10.0)
    d.create(b"a", 0o644, ALICE, 1, 10.0)
    assert not d.should_release(10.0 + 10)                   # a create not yet committed
    d.take_batch()
    d.committed([[0, None]])
    assert not d.should_release(10.0 + limits.delegation_idle_release_s / 2)
    assert d.should_release(10.0 + limits.delegation_idle_release_s)


# -- the shell, over the real state machine ------------------------------------

@pytest.fixture
def backend(tmp_path):
    meta = InProcessMetaClient(str(tmp_path / "meta"), timeout_s=10.0)
    yield meta
    meta.close()


def client_over(meta) -> Client:
    c = Client(meta, uid=0, gid=0, groups=[], umask=0, data=object())
    c._owner = False           # the fixture closes the shared backend
    return c


def wait_granted(holder: AsyncCreates, path: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        d = holder._dirs.get(path)
        if d is not None and d.state == HELD:
            return
        time.sleep(0.005)
    raise AssertionError(f"no delegation on {path}")


def start_delegation(holder: AsyncCreates, client: Client, path: str = "/d") -> None:
    for i in range(2):       # synchronous creates that make the holder ask for a delegation
        assert holder.create(f"{path}/sync{i}", 0o644, ALICE) is None
        client.create(f"{path}/sync{i}", 0o644, exclusive=True)
    wait_granted(holder, path)


@contextlib.contextmanager
def holder_and_other(backend):
    """Two clients over ``backend``; the first's AsyncCreates holds a
    delegation on /d (closed after)."""
    a, b = client_over(backend), client_over(backend)
    a.mkdir("/d", 0o777)
    holder = AsyncCreates(a)
    try:
        start_delegation(holder, a)
        yield holder, b
    finally:
        holder.close()


def test_holder_answers_locally_and_another_client_sees_every_answered_file(backend):
    with holder_and_other(backend) as (holder, b):
        attrs = [holder.create(f"/d/f{i}", 0o644, ALICE) for i in range(50)]
        assert all(attr is not None for attr in attrs)
        assert holder.lookup("/d/nope", ALICE) == (E.ENOENT, None)
        assert holder.lookup("/d/" + "x" * 256, ALICE) == (E.ENAMETOOLONG, None)
        assert holder.lookup("/d/sync0", ALICE) == (0, None)          # ask the service
        err, attr = holder.lookup("/d/f3", ALICE)
        assert err == 0 and attr in (None, attrs[3])                  # answered here until committed
        with pytest.raises(FileExistsError):
            holder.create("/d/f3", 0o644, ALICE)
        # Another client: refused while the delegation lives, recalled, then served.
        started = time.monotonic()
        names = set(b.listdir("/d"))
        assert {f"f{i}" for i in range(50)} <= names
        assert time.monotonic() - started < TERM + 2.0   # a recall, a commit and a release
        assert b.stat("/d/f7").st_ino == attrs[7].ino
        assert b.lstat("/d/f7").st_uid == 1000
        assert holder.statistics["recalled"] >= 1 or holder._dirs.get("/d") is None
        with backend.store.env.begin() as txn:
            backend.namespace.check_invariants(txn)


def test_flush_commits_and_release_lets_the_holder_list(backend):
    a = client_over(backend)
    dino = a.mkdir_attr("/d", 0o777).ino
    holder = AsyncCreates(a)
    try:
        start_delegation(holder, a)
        holder.create("/d/x", 0o600, ALICE)
        holder.flush_dir("/d")
        with backend.store.env.begin() as txn:      # committed, though nobody else may look yet
            assert txn.get(struct.pack(">Q", dino) + b"x", db=backend.store.db(b"dentries")) is not None
        holder.release_dir("/d")
        assert not holder.delegated("/d")
        assert "x" in a.listdir("/d")
        assert a.lstat("/d/x").st_mode == stat.S_IFREG | 0o600
    finally:
        holder.close()


def test_a_holder_that_stops_dead_holds_others_up_about_one_term(backend):
    a, b = client_over(backend), client_over(backend)
    a.mkdir("/d", 0o777)
    holder = AsyncCreates(a)
    start_delegation(holder, a)
    holder.create("/d/lost", 0o644, ALICE)
    # The holder's process "dies": its worker stops, nothing is committed or released.
    with holder._cond:
        holder._closed = True
        holder._cond.notify_all()
    holder._thread.join(5)
    started = time.monotonic()
    with pytest.raises(FileNotFoundError):
        b.stat("/d/lost")
    assert time.monotonic() - started < TERM + 2.0
    b.create("/d/after", 0o644, exclusive=True)
    assert set(b.listdir("/d")) == {"sync0", "sync1", "after"}


def test_pending_create_that_fails_at_commit_is_reported(backend):
    with holder_and_other(backend) as (holder, b):
        with holder._cond:     # hold batches and renewals back, as for a partitioned holder
            d = holder._dirs["/d"]
            d.out.update(("batch", "renew"))
        attr = holder.create("/d/late", 0o644, ALICE)
        time.sleep(TERM * 1.5)
        b.create("/d/other", 0o644, exclusive=True)          # recalls the lapsed delegation and removes it
        with holder._cond:
            d.out.difference_update(("batch", "renew"))
            holder._cond.notify_all()
        deadline = time.monotonic() + 5
        while attr.ino not in holder.failed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert attr.ino in holder.failed
        assert "late" not in b.listdir("/d")


def test_refused_operation_fails_etimedout_when_never_released(tmp_path):
    # The service's clock stands still, so the delegation never lapses, and
    # its holder never answers the recall.
    meta = InProcessMetaClient(str(tmp_path / "meta"), timeout_s=0.5, clock_ns=lambda: 10**12)
    try:
        a = client_over(meta)
        a.mkdir("/d", 0o777)
        a.meta.call(model.Op.DELEG_GRANT, model.encode_args(model.ROOT_CRED, b"/d", b"stubborn", 4))
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            a.stat("/d/missing")
        assert 0.4 < time.monotonic() - started < 3
        assert a.stat("/d").st_nlink == 2          # what the delegation does not hide is served
    finally:
        meta.close()


class SlowReleaseReplies:
    """The backend, but a DELEG_RELEASE's reply arrives 0.1 s after it applied."""

    def __init__(self, meta):
        self._meta = meta
        self.timeout_s = meta.timeout_s

    def submit(self, code, args, **kwargs):
        future = self._meta.submit(code, args, **kwargs)
        if code != model.Op.DELEG_RELEASE:
            return future
        late = Future()

        def deliver(f):
            threading.Timer(0.1, lambda: late.set_exception(f.exception()) if f.exception()
                            else late.set_result(f.result())).start()
        future.add_done_callback(deliver)
        return late


def test_creates_racing_idle_releases_are_never_lost(backend):
    # Creates arriving as the delegation goes idle and is released: each is
    # answered under the delegation (and committed) or made synchronously,
    # never answered under a delegation whose release is on its way.
    a = client_over(backend)
    a.mkdir("/d", 0o777)
    holder = AsyncCreates(a)
    holder._meta = SlowReleaseReplies(backend)   # a wide window between a release and its reply
    try:
        made = []
        for i in range(60):
            path = f"/d/f{i}"
            attr = holder.create(path, 0o644, ALICE)
            if attr is None:
                a.create(path, 0o644, exclusive=True)
            else:
                holder.flush_ino(attr.ino)
                assert attr.ino not in holder.failed
            made.append(f"f{i}")
            if i % 7 == 6:
                time.sleep(limits.delegation_idle_release_s * (0.9 + (i % 3) * 0.1))
        holder.release_all()
        assert not holder.failed
        assert sorted(a.listdir("/d")) == sorted(made)
        assert holder.statistics["async"] > 0
    finally:
        holder.close()
