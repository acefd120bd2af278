"""The metadata service end to end: real metad processes on loopback, the
batched MetaClient, raw gRPC where a test needs to bypass the client.

Every scenario ends by checking that the replicas that applied the same
prefix of the log hold the same state (equal digests at equal applied index).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import threading
import time
import urllib.request

import grpc
import pytest

from cistern.core.errors import CisternError
from cistern.metadata import limits, model
from cistern.metadata.client import MetaClient
from cistern.metadata.model import Op
from cistern.metadata.proc_testing import MetaCluster
from cistern.metadata.proto import metadata_pb2 as pb
from cistern.metadata.proto import metadata_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CRED = model.ROOT_CRED


def create(client, path: bytes, *, exclusive=True):
    return client.call(Op.CREATE, model.encode_args(CRED, path, 0o644, exclusive))


def mkdir(client, path: bytes):
    return client.call(Op.MKDIR, model.encode_args(CRED, path, 0o755))


def getattr_(client, path: bytes, *, stale=False):
    return model.Attr(*client.call(Op.GETATTR, model.encode_args(CRED, path, True), stale=stale))


def listdir(client, path: bytes) -> list[list]:
    entries, after = [], None
    while True:
        page, done = client.call(Op.READDIR, model.encode_args(CRED, path, after, limits.readdir_page_entries_max))
        entries += page
        if done or not page:
            return entries
        after = page[-1][0]


def assert_replicas_agree(cluster: MetaCluster) -> list[dict]:
    statuses = cluster.wait_converged(timeout_s=30)
    digests = {s["digest"] for s in statuses}
    assert len(digests) == 1, f"replicas at applied index {statuses[0]['applied_index']} disagree: {statuses}"
    return statuses


def raw_call(address: str, batch: pb.RequestBatch, timeout_s=10.0) -> pb.ReplyBatch:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.MetadataStub(channel).Call(batch, timeout=timeout_s)


def raw_call_leader(cluster: MetaCluster, batch: pb.RequestBatch, timeout_s=30.0) -> pb.ReplyBatch:
    """raw_call to whoever leads, resending the same batch if leadership moved
    (an election on a busy machine must not fail a test about something else)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = raw_call(cluster.addresses[cluster.wait_leader(timeout_s)], batch)
        if not reply.not_leader or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with MetaCluster(tmp_path_factory.mktemp("metad"), 3) as c:
        yield c


@pytest.fixture
def client(cluster):
    with cluster.client(timeout_s=30) as c:
        yield c


def test_create_stat_readdir_round_trip(cluster, client):
    mkdir(client, b"/rt")
    attr = model.Attr(*create(client, b"/rt/hello"))
    assert attr.ino > model.ROOT_INO and attr.mode & 0o777 == 0o644
    assert getattr_(client, b"/rt/hello").ino == attr.ino
    names = [entry[0] for entry in listdir(client, b"/rt")]
    assert names == [b"hello"]
    with pytest.raises(CisternError) as e:
        getattr_(client, b"/rt/absent")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(CisternError) as e:
        create(client, b"/rt/hello")
    assert e.value.errno == errno.EEXIST
    assert_replicas_agree(cluster)


def test_async_form_and_stale_reads(cluster, client):
    mkdir(client, b"/async")

    async def go():
        attrs = await asyncio.gather(*[client.acall(Op.CREATE, model.encode_args(CRED, b"/async/f%d" % i, 0o600, True))
                                       for i in range(20)])
        return attrs

    attrs = asyncio.run(go())
    assert len({a[0] for a in attrs}) == 20
    # A stale read is served too (from whichever replica the stream is on).
    assert getattr_(client, b"/async/f3", stale=True).ino == attrs[3][0]


def test_concurrent_threads_share_request_batches(cluster, client):
    mkdir(client, b"/share")
    leader = cluster.wait_leader()
    before = cluster.status(leader)["service"]
    threads_n, per_thread = 16, 40
    errors = []

    def worker(t):
        futures = [client.submit(Op.CREATE, model.encode_args(CRED, b"/share/t%d-%d" % (t, i), 0o644, True))
                   for i in range(per_thread)]
        for f in futures:
            try:
                f.result()
            except Exception as e:   # noqa: BLE001 - collected and asserted below
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    after = cluster.status(leader)["service"]
    ops = after["requests"] - before["requests"]
    batches = after["request_batches"] - before["request_batches"]
    assert ops >= threads_n * per_thread
    assert batches < ops / 4, f"{ops} operations arrived in {batches} batches"
    assert len(listdir(client, b"/share")) == threads_n * per_thread
    assert_replicas_agree(cluster)


def test_follower_address_alone_still_reaches_the_leader(cluster):
    leader = cluster.wait_leader()
    follower = (leader + 1) % 3
    with MetaClient([cluster.addresses[follower]]) as c:
        mkdir(c, b"/via-follower")
        assert getattr_(c, b"/via-follower").mode & 0o170000 == 0o040000
    with MetaClient([cluster.addresses[follower], cluster.addresses[leader]]) as c:
        assert getattr_(c, b"/via-follower").ino > 1
        assert c.status()["role"] == "leader"
    assert_replicas_agree(cluster)


def test_bad_input_gets_the_right_errno_and_daemons_keep_serving(cluster, client):
    def errno_of(code, args):
        with pytest.raises(CisternError) as e:
            client.call(code, args)
        return e.value.errno

    assert errno_of(Op.CREATE, b"\xff\x00garbage") == errno.EINVAL
    assert errno_of(Op.GETATTR, b"") == errno.EINVAL
    assert errno_of(55, model.encode_args(CRED, b"/")) == errno.ENOSYS
    assert errno_of(0, model.encode_args(CRED)) == errno.ENOSYS
    assert errno_of(999, model.encode_args(CRED, b"/")) in (errno.ENOSYS, errno.EINVAL)
    assert errno_of(Op.CREATE, model.encode_args(CRED, b"/" + b"n" * 256, 0o644, True)) == errno.ENAMETOOLONG
    assert errno_of(Op.CREATE, model.encode_args(CRED, b"/a" * 2100, 0o644, True)) == errno.ENAMETOOLONG
    assert errno_of(Op.CREATE, model.encode_args(CRED, b"/x", "not-a-mode", True)) == errno.EINVAL
    assert errno_of(Op.CREATE, model.encode_args(CRED, b"/big", 0o644, True, b"x" * (limits.op_args_bytes_max + 1))) == errno.E2BIG
    # A name of exactly name_length_max_bytes is fine.
    create(client, b"/" + b"n" * limits.name_length_max_bytes)

    oversize = pb.RequestBatch(client_id=os.urandom(16), acked_below=1, requests=[
        pb.Request(seq=i + 1, code=Op.GETATTR, args=model.encode_args(CRED, b"/", True))
        for i in range(limits.batch_ops_max + 1)])
    reply = raw_call_leader(cluster, oversize)
    assert {r.errno for r in reply.replies} == {errno.EINVAL}
    # A write without a proper client id cannot be deduplicated: refused.
    reply = raw_call_leader(cluster, pb.RequestBatch(client_id=b"short", requests=[
        pb.Request(seq=1, code=Op.MKDIR, args=model.encode_args(CRED, b"/noid", 0o755))]))
    assert reply.replies[0].errno == errno.EINVAL
    # A message beyond the server's limit is a whole-call failure.
    with pytest.raises(grpc.RpcError) as e:
        raw_call(cluster.addresses[cluster.wait_leader()],
                 pb.RequestBatch(requests=[pb.Request(seq=1, code=1, args=b"\x91" + b"\0" * (8 << 20))]))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    assert all(cluster.alive(i) for i in range(3))
    create(client, b"/after-bad-input")
    assert getattr_(client, b"/after-bad-input").ino > 1
    assert_replicas_agree(cluster)


def test_a_retried_request_is_applied_once(cluster):
    client_id = os.urandom(16)

    def send(seq, path, acked_below=1):
        batch = pb.RequestBatch(client_id=client_id, acked_below=acked_below, requests=[
            pb.Request(seq=seq, code=Op.CREATE, args=model.encode_args(CRED, path, 0o644, True))])
        (reply,) = raw_call_leader(cluster, batch).replies
        return reply

    first = send(1, b"/retried")
    again = send(1, b"/retried")
    assert first.errno == 0 and again.errno == 0, (first, again)
    assert model.unpack(first.value)[0] == model.unpack(again.value)[0]
    # A new request number for the same exclusive create is a new operation.
    assert send(2, b"/retried", acked_below=2).errno == errno.EEXIST
    with MetaClient(cluster.addresses) as c:
        assert [e[0] for e in listdir(c, b"/") if e[0] == b"retried"] == [b"retried"]
    assert_replicas_agree(cluster)


def test_metrics_endpoint_serves_service_counters(cluster, client):
    getattr_(client, b"/")
    leader = cluster.members[cluster.wait_leader()]
    text = urllib.request.urlopen(f"http://{leader['metrics']}/metrics", timeout=5).read().decode()
    assert "metad_request_batches_total" in text


# -- faults: each scenario has its own cluster -----------------------------


def test_leader_killed_mid_write_loses_no_acknowledged_file(tmp_path):
    with MetaCluster(tmp_path, 3) as cluster, cluster.client(timeout_s=60) as client:
        mkdir(client, b"/k")
        acknowledged: list[bytes] = []
        failures: list[Exception] = []
        first_success_after_kill: list[float] = []
        killed_at: list[float] = []
        stop = threading.Event()
        lock = threading.Lock()

        def writer(t):
            i = 0
            while not stop.is_set():
                name = b"w%d-%d" % (t, i)
                i += 1
                try:
                    create(client, b"/k/" + name)
                except Exception as e:   # noqa: BLE001 - asserted empty below
                    failures.append(e)
                    return
                with lock:
                    acknowledged.append(name)
                    if killed_at and not first_success_after_kill:
                        first_success_after_kill.append(time.monotonic())

        def pipelined_writer():
            # 64 creates in flight at all times: the kill catches many of them
            # unanswered, and the client must resend them to the new leader.
            slots = threading.Semaphore(64)
            i = 0
            while not stop.is_set():
                slots.acquire()
                name = b"p-%d" % i
                i += 1

                def done(future, name=name):
                    slots.release()
                    if future.exception() is not None:
                        failures.append(future.exception())
                        return
                    with lock:
                        acknowledged.append(name)

                client.submit(Op.CREATE, model.encode_args(CRED, b"/k/" + name, 0o644, True)).add_done_callback(done)
            for _ in range(64):
                slots.acquire()

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
        threads.append(threading.Thread(target=pipelined_writer))
        for t in threads:
            t.start()
        time.sleep(1.5)
        old_leader = cluster.wait_leader()
        reconnects_before = client.statistics()["reconnects"]
        with lock:
            killed_at.append(time.monotonic())
            acknowledged_before_kill = len(acknowledged)
        cluster.kill(old_leader, signal.SIGKILL)
        new_leader = cluster.wait_leader(30, exclude=old_leader)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(60)
        assert failures == [], failures
        assert acknowledged_before_kill > 0
        assert first_success_after_kill, "no create succeeded after the leader was killed"
        assert first_success_after_kill[0] - killed_at[0] < 10.0
        assert new_leader != old_leader
        assert client.statistics()["reconnects"] > reconnects_before

        entries = listdir(client, b"/k")
        names = [e[0] for e in entries]
        assert len(names) == len(set(names))
        assert len({e[1] for e in entries}) == len(entries), "two entries share an inode"
        assert len(acknowledged) == len(set(acknowledged)), "a create was acknowledged twice"
        # Every writer waited for all it issued, none failed (an exclusive
        # create applied twice would have failed with EEXIST): the directory
        # holds exactly the acknowledged files.
        assert set(names) == set(acknowledged), (set(acknowledged) ^ set(names))

        cluster.restart(old_leader)
        statuses = assert_replicas_agree(cluster)
        assert len(statuses) == 3


def test_all_replicas_killed_and_restarted_lose_nothing_acknowledged(tmp_path):
    with MetaCluster(tmp_path, 3) as cluster:
        with cluster.client() as client:
            mkdir(client, b"/d")
            futures = [client.submit(Op.CREATE, model.encode_args(CRED, b"/d/f%d" % i, 0o644, True))
                       for i in range(300)]
            inos = {i: f.result()[0] for i, f in enumerate(futures)}
        for i in range(3):
            cluster.kill(i, signal.SIGKILL)
        for i in range(3):
            cluster.restart(i)
        cluster.wait_leader(60)
        with cluster.client() as client:
            for i in (0, 150, 299):
                assert getattr_(client, b"/d/f%d" % i).ino == inos[i]
            assert sorted(e[1] for e in listdir(client, b"/d")) == sorted(inos.values())
            create(client, b"/d/after-restart")
        assert_replicas_agree(cluster)


def test_a_frozen_leader_is_abandoned_and_the_new_leader_serves(tmp_path):
    with MetaCluster(tmp_path, 3) as cluster, cluster.client(timeout_s=60, stall_timeout_s=2.0) as client:
        mkdir(client, b"/z")
        old_leader = cluster.wait_leader()
        cluster.kill(old_leader, signal.SIGSTOP, timeout_s=0.1)   # alive to TCP, silent to us
        try:
            started = time.monotonic()
            create(client, b"/z/after-freeze")
            assert time.monotonic() - started < 15
            assert cluster.wait_leader(30, exclude=old_leader) != old_leader
        finally:
            cluster.kill(old_leader, signal.SIGCONT, timeout_s=0.1)
        assert getattr_(client, b"/z/after-freeze").ino > 1
        assert_replicas_agree(cluster)


def test_sigterm_stops_a_replica_cleanly(tmp_path):
    with MetaCluster(tmp_path, 1) as cluster:
        with cluster.client() as client:
            mkdir(client, b"/t")
        assert cluster.kill(0, signal.SIGTERM, timeout_s=15) == 0
        cluster.restart(0)
        cluster.wait_leader(30)
        with cluster.client() as client:
            assert getattr_(client, b"/t").ino > 1


# -- the client's failover against an in-process fake replica ---------------
# These pin the client's resend rules without Raft timing: two gRPC servers
# share one fake replica that records every (client_id, seq) it is handed.


class _FakeReplica:
    """Just enough of metadata.replica.Replica for the service: writes apply
    once per (client_id, seq); ``hold`` keeps futures pending (a stuck leader)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sessions: dict = {}
        self.submissions: list = []
        self.hold = False
        self.held: list = []
        self.leader_rpc = ""
        self.leader = True
        self.busy_once = False    # answer each new seq EAGAIN once (outcome unknown / queue full)

    def submit_write(self, client_id, seq, acked_below, code, args):
        from concurrent.futures import Future

        from cistern.core.errors import NotLeader

        future = Future()
        with self.lock:
            self.submissions.append((client_id, seq))
            if not self.leader:
                future.set_exception(NotLeader(self.leader_rpc))
            elif self.busy_once and [seq for _, seq in self.submissions].count(seq) == 1:
                future.set_exception(CisternError(errno.EAGAIN, "outcome unknown; resend with the same seq"))
            elif self.hold:
                self.held.append(future)
            else:
                key = (client_id, seq)
                self.sessions.setdefault(key, len(self.sessions) + 1)
                future.set_result([self.sessions[key]])
        return future

    def submit_read(self, code, args, *, linearizable=True):
        from concurrent.futures import Future

        future = Future()
        future.set_result(None)
        return future

    def status(self):
        return {"id": "fake", "role": "leader" if self.leader else "follower", "leader_rpc": self.leader_rpc,
                "digest": b"", "members": []}


def _serve(replica):
    from concurrent.futures import ThreadPoolExecutor

    from cistern.metadata.service import MetadataService, add_to_server

    server = grpc.server(ThreadPoolExecutor(16))
    add_to_server(MetadataService(replica), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_client_resends_unanswered_writes_with_the_same_seq_after_the_stream_breaks():
    replica = _FakeReplica()
    replica.hold = True
    first, first_address = _serve(replica)
    second, second_address = _serve(replica)
    try:
        with MetaClient([first_address, second_address], timeout_s=20) as c:
            futures = [c.submit(Op.MKDIR, model.encode_args(CRED, b"/r%d" % i, 0o755)) for i in range(50)]
            deadline = time.monotonic() + 10
            while len(replica.submissions) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(replica.submissions) == 50
            replica.hold = False
            first.stop(0)            # the stream breaks with 50 writes unanswered
            results = [f.result(timeout=20)[0] for f in futures]
        assert len(set(results)) == 50           # each write applied once
        seqs = [seq for _, seq in replica.submissions]
        assert len(seqs) == 100 and set(seqs[:50]) == set(seqs[50:])   # resent with the same seqs
    finally:
        first.stop(0)
        second.stop(0)


def test_one_call_at_a_time_wakes_the_clients_sender_once_per_call():
    # The reply that frees a batch slot must not wake the sender when
    # nothing waits to be sent (it found nothing and slept again: two more
    # thread switches per operation); operations waiting for a slot still
    # go out as slots free (test_concurrent_threads_share_request_batches).
    replica = _FakeReplica()
    server, address = _serve(replica)
    try:
        with MetaClient([address]) as c:
            c.call(Op.MKDIR, model.encode_args(CRED, b"/w", 0o755))
            calls = 50
            before = c.sender_wakeups
            for i in range(calls):
                assert c.call(Op.MKDIR, model.encode_args(CRED, b"/w%d" % i, 0o755)) == [i + 2]
            assert c.sender_wakeups - before <= calls + 5, c.sender_wakeups - before
            held = [c.submit(Op.MKDIR, model.encode_args(CRED, b"/h%d" % i, 0o755)) for i in range(200)]
            assert [f.result(timeout=20)[0] for f in held] == list(range(calls + 2, calls + 202))
    finally:
        server.stop(0)


def test_operations_queued_behind_a_full_window_do_not_wake_the_clients_sender():
    # A sender waiting for a free batch slot has nothing to do when another
    # operation queues: waking it per submit cost two thread switches and
    # GIL hand-offs per operation under load. Those operations still leave
    # once replies free the window.
    from cistern.metadata import client as client_mod

    replica = _FakeReplica()
    replica.hold = True
    server, address = _serve(replica)
    try:
        with MetaClient([address], timeout_s=30) as c:
            futures = []
            deadline = time.monotonic() + 10
            while c.batches_sent < client_mod.stream_batches_in_flight_max and time.monotonic() < deadline:
                futures.append(c.submit(Op.MKDIR, model.encode_args(CRED, b"/f%d" % len(futures), 0o755)))
                time.sleep(0.02)
            assert c.batches_sent == client_mod.stream_batches_in_flight_max
            time.sleep(0.1)
            before = c.sender_wakeups
            for _ in range(100):   # paced, so that each would get its own wake-up
                futures.append(c.submit(Op.MKDIR, model.encode_args(CRED, b"/f%d" % len(futures), 0o755)))
                time.sleep(0.002)
            assert c.sender_wakeups - before <= 3, c.sender_wakeups - before
            assert c.batches_sent == client_mod.stream_batches_in_flight_max
            with replica.lock:
                replica.hold = False
                held, replica.held = replica.held, []
            for future in held:
                future.set_result([0])
            assert len([f.result(timeout=20) for f in futures]) == len(futures)
    finally:
        server.stop(0)


def test_submit_callback_reports_each_outcome_once():
    replica = _FakeReplica()
    server, address = _serve(replica)
    try:
        outcomes: list = []
        done = threading.Event()

        def callback(value, error):
            outcomes.append((value, error, threading.current_thread().name))
            if len(outcomes) == 20:
                done.set()

        with MetaClient([address], timeout_s=20) as c:
            for i in range(20):
                c.submit_callback(Op.MKDIR, model.encode_args(CRED, b"/cb%d" % i, 0o755), callback)
            assert done.wait(20)
            time.sleep(0.1)
            assert sorted(v[0] for v, _, _ in outcomes) == list(range(1, 21))
            assert all(e is None and name == "metaclient-recv" for _, e, name in outcomes)
            # A raising callback is logged; the client keeps serving.
            c.submit_callback(Op.MKDIR, model.encode_args(CRED, b"/boom", 0o755), lambda v, e: 1 / 0)
            assert c.call(Op.MKDIR, model.encode_args(CRED, b"/after", 0o755)) == [22]
        replica.leader = False          # nobody leads: the operation times out
        failed: list = []
        with MetaClient([address], timeout_s=0.5) as c:
            c.submit_callback(Op.MKDIR, model.encode_args(CRED, b"/t", 0o755),
                              lambda v, e: failed.append((v, e)))
            deadline = time.monotonic() + 10
            while not failed and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
        assert len(failed) == 1 and failed[0][0] is None
        assert isinstance(failed[0][1], CisternError) and failed[0][1].errno == errno.ETIMEDOUT
        closed: list = []
        c.submit_callback(Op.MKDIR, model.encode_args(CRED, b"/c", 0o755), lambda v, e: closed.append(e))
        assert len(closed) == 1 and closed[0].errno == errno.ESHUTDOWN
    finally:
        server.stop(0)


def test_client_follows_a_not_leader_hint():
    leader, follower = _FakeReplica(), _FakeReplica()
    leader_server, leader_address = _serve(leader)
    follower.leader = False
    follower.leader_rpc = leader_address
    follower_server, follower_address = _serve(follower)
    try:
        with MetaClient([follower_address]) as c:
            assert c.call(Op.MKDIR, model.encode_args(CRED, b"/x", 0o755)) == [1]
            assert c.status()["id"] == "fake" and c.status()["role"] == "leader"
        assert len(leader.sessions) == 1 and follower.sessions == {}
    finally:
        leader_server.stop(0)
        follower_server.stop(0)


def test_an_unanswered_operation_fails_with_etimedout_after_timeout_s():
    replica = _FakeReplica()
    replica.hold = True
    server, address = _serve(replica)
    try:
        with MetaClient([address], timeout_s=0.5) as c:
            started = time.monotonic()
            with pytest.raises(CisternError) as e:
                c.call(Op.MKDIR, model.encode_args(CRED, b"/slow", 0o755))
            assert e.value.errno == errno.ETIMEDOUT
            assert time.monotonic() - started < 3
    finally:
        server.stop(0)


def test_an_eagain_reply_is_resent_with_the_same_seq_and_the_caller_sees_success():
    replica = _FakeReplica()
    replica.busy_once = True
    server, address = _serve(replica)
    try:
        with MetaClient([address], timeout_s=10) as c:
            results = [f.result(timeout=10) for f in
                       [c.submit(Op.MKDIR, model.encode_args(CRED, b"/e%d" % i, 0o755)) for i in range(20)]]
        assert sorted(r[0] for r in results) == list(range(1, 21))
        seqs = [seq for _, seq in replica.submissions]
        assert sorted(seqs) == sorted(list(set(seqs)) * 2)
    finally:
        server.stop(0)


def test_a_leader_whose_peers_are_frozen_answers_no_linearizable_read(tmp_path):
    # ReadIndex across processes: with both followers stopped (SIGSTOP: alive
    # to TCP, silent), no majority answers the leader's heartbeat rounds, so a
    # linearizable read is never answered from its state (a leader lease or a
    # local read would answer at once); it fails over to not_leader when the
    # leader steps down. A stale read is still answered locally.
    with MetaCluster(tmp_path, 3) as cluster, cluster.client(timeout_s=60) as client:
        mkdir(client, b"/p")
        leader = cluster.wait_leader()
        peers = [i for i in range(3) if i != leader]
        getattr_args = model.encode_args(CRED, b"/p", True)
        for i in peers:
            cluster.kill(i, signal.SIGSTOP, timeout_s=0.1)
        try:
            reply = raw_call(cluster.addresses[leader], pb.RequestBatch(
                requests=[pb.Request(seq=1, code=Op.GETATTR, args=getattr_args)]), timeout_s=30)
            assert reply.not_leader or reply.replies[0].errno != 0, \
                "a leader without a majority answered a linearizable read"
            stale = raw_call(cluster.addresses[leader], pb.RequestBatch(
                stale_ok=True, requests=[pb.Request(seq=2, code=Op.GETATTR, args=getattr_args)]))
            assert stale.replies[0].errno == 0
        finally:
            for i in peers:
                cluster.kill(i, signal.SIGCONT, timeout_s=0.1)
        assert getattr_(client, b"/p").ino > 1
        assert_replicas_agree(cluster)
