"""The os-like client against a real three-replica metadata cluster (metad
processes on loopback): the calls a user makes, the errors they see, the
faces that keep many operations in flight, and what survives a leader kill.

Each scenario that writes ends by checking that the replicas converged to
the same state (equal digests at equal applied index).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import stat
import time

import pytest

from cistern.client import connect
from cistern.metadata.proc_testing import MetaCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def assert_replicas_agree(cluster: MetaCluster) -> None:
    statuses = cluster.wait_converged(timeout_s=30)
    assert len({s["digest"] for s in statuses}) == 1, statuses


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with MetaCluster(tmp_path_factory.mktemp("client-metad"), 3) as c:
        yield c


@pytest.fixture
def client(cluster):
    with connect(cluster.cluster_json(), timeout_s=30) as c:
        yield c


def test_a_user_session_of_os_calls_round_trips_through_three_replicas(cluster, client):
    client.makedirs("/home/u/docs", exist_ok=True)
    client.create("/home/u/docs/a.txt", 0o640)
    client.symlink("docs/a.txt", "/home/u/latest")
    client.link("/home/u/docs/a.txt", "/home/u/docs/hard")
    client.rename("/home/u/docs/hard", "/home/u/hard")
    client.setxattr("/home/u/docs/a.txt", "user.tag", b"blue")
    client.truncate("/home/u/docs/a.txt", 4096)
    client.utime("/home/u/docs/a.txt", ns=(1_000_000_000, 2_000_000_000))

    st = client.stat("/home/u/latest")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_nlink, st.st_size, st.st_mtime_ns, st.st_mtime) == (2, 4096, 2_000_000_000, 2.0)
    assert st.st_ino == client.stat("/home/u/hard").st_ino
    assert client.readlink("/home/u/latest") == "docs/a.txt"
    assert client.getxattr("/home/u/latest", "user.tag") == b"blue"
    assert sorted(client.listdir("/home/u")) == ["docs", "hard", "latest"]
    assert sorted(client.listdir(b"/home/u/docs")) == [b"a.txt"]
    walked = sorted((top, sorted(dirs), sorted(files)) for top, dirs, files in client.walk("/home"))
    assert walked == [("/home", ["u"], []), ("/home/u", ["docs"], ["hard", "latest"]),
                      ("/home/u/docs", [], ["a.txt"])]

    with pytest.raises(FileExistsError) as exc:
        client.mkdir("/home/u/docs")
    assert exc.value.filename == "/home/u/docs"
    with pytest.raises(OSError) as exc:
        client.rmdir("/home/u")
    assert exc.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        client.listdir("/home/u/hard/")
    with pytest.raises(FileNotFoundError) as exc:
        client.rename("/home/u/missing", "/home/u/x")
    assert (exc.value.filename, exc.value.filename2) == ("/home/u/missing", "/home/u/x")
    assert_replicas_agree(cluster)


def test_every_way_of_naming_the_cluster_reaches_the_leader(cluster, monkeypatch):
    with connect(cluster.cluster_json()) as c:
        c.makedirs("/naming", exist_ok=True)
    with connect(",".join(cluster.addresses)) as c:
        assert c.isdir("/naming")
    follower = next(i for i in range(3) if i != cluster.leader_index())
    with connect(cluster.addresses[follower]) as c:
        c.create("/naming/via-follower")
    monkeypatch.setenv("CISTERN_CLUSTER", cluster.cluster_json())
    with connect() as c:
        assert c.listdir("/naming") == ["via-follower"]


def test_async_face_keeps_thousands_of_creates_in_flight_in_shared_batches(client):
    n = 2000
    client.makedirs("/bulk", exist_ok=True)
    before = client.meta.statistics()["batches_sent"]

    async def create_all():
        aio = client.aio
        return await asyncio.gather(*(aio.create(f"/bulk/f{i}", exclusive=True) for i in range(n)))

    started = time.monotonic()
    attrs = asyncio.run(create_all())
    elapsed = time.monotonic() - started
    batches = client.meta.statistics()["batches_sent"] - before
    assert len({a.ino for a in attrs}) == n
    assert len(client.listdir("/bulk")) == n
    assert batches < n / 5, f"{n} creates took {batches} batches"
    assert elapsed < 60


def test_futures_face_reports_each_outcome_on_its_own_future(client):
    client.makedirs("/fut", exist_ok=True)
    futures = [client.futures.mkdir(f"/fut/d{i}") for i in range(200)]
    futures.append(client.futures.mkdir("/fut/d0"))    # a duplicate: this one fails
    outcomes = [f.exception(timeout=60) for f in futures]
    assert outcomes[:200] == [None] * 200
    assert isinstance(outcomes[200], FileExistsError) and outcomes[200].filename == "/fut/d0"
    assert client.futures.listdir("/fut").result(timeout=60).__len__() == 200


def test_credentials_are_enforced_by_the_cluster(client):
    root = client.with_creds(0, 0, [], umask=0)
    root.makedirs("/perm/root-only", 0o700)
    root.mkdir("/perm/shared", 0o1777)
    alice = client.with_creds(1000, 1000, [1000])
    bob = client.with_creds(1001, 1001)
    with pytest.raises(PermissionError) as exc:
        alice.create("/perm/root-only/x")
    assert exc.value.errno == errno.EACCES and exc.value.filename == "/perm/root-only/x"
    alice.create("/perm/shared/alice.txt")
    assert client.stat("/perm/shared/alice.txt").st_uid == 1000
    with pytest.raises(PermissionError) as exc:   # sticky directory: not bob's to remove
        bob.unlink("/perm/shared/alice.txt")
    assert exc.value.errno == errno.EPERM
    assert not alice.access("/perm/root-only", os.R_OK)


def test_stale_reads_client_sees_committed_writes(cluster, client):
    client.makedirs("/stale", exist_ok=True)
    client.create("/stale/f")
    with connect(cluster.cluster_json(), stale_reads=True) as reader:
        deadline = time.monotonic() + 10
        while not reader.exists("/stale/f"):
            assert time.monotonic() < deadline, "a follower never applied the write"
            time.sleep(0.05)
        assert reader.stat("/stale/f").st_ino == client.stat("/stale/f").st_ino


def test_leader_killed_during_async_creates_loses_nothing_and_applies_each_once(tmp_path):
    n = 600
    with MetaCluster(tmp_path, 3) as cluster, connect(cluster.cluster_json(), timeout_s=60) as client:
        client.mkdir("/k")

        async def scenario():
            aio = client.aio
            # Exclusive creates: a create applied twice would fail with EEXIST.
            tasks = [asyncio.ensure_future(aio.create(f"/k/f{i}", exclusive=True)) for i in range(n)]
            await asyncio.sleep(0.05)
            old = cluster.leader_index()
            cluster.kill(old, signal.SIGKILL)
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return old, results

        old, results = asyncio.run(scenario())
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == []
        assert sorted(client.listdir("/k")) == sorted(f"f{i}" for i in range(n))
        client.create("/k/after")
        cluster.restart(old)
        assert_replicas_agree(cluster)


def test_losing_the_majority_times_out_with_etimedout_then_recovers(tmp_path):
    with MetaCluster(tmp_path, 3) as cluster, connect(cluster.cluster_json(), timeout_s=2) as client:
        client.mkdir("/m")
        leader = cluster.leader_index()
        others = [i for i in range(3) if i != leader]
        for i in others:
            cluster.kill(i, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(TimeoutError) as exc:
            client.mkdir("/m/x")
        assert exc.value.errno == errno.ETIMEDOUT and exc.value.filename == "/m/x"
        assert time.monotonic() - started < 15
        for i in others:
            cluster.restart(i)
        cluster.wait_leader(60)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.makedirs("/m/x", exist_ok=True)
                break
            except TimeoutError:
                assert time.monotonic() < deadline
        assert client.isdir("/m/x")
