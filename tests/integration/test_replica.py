"""The replica: three in-process members on loopback, real pysyncobj, real
LMDB. Every scenario ends by checking that replicas at equal applied index
hold equal digests (the divergence detector of metadata/replica.py).

The state machine is a small counter machine defined here (the replica's
contract is any machine over the store), plus one test with the real
namespace.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import sys
import threading
import time
import zlib

import pytest
from prometheus_client import CollectorRegistry

from cistern.core.errors import CisternError, NotLeader
from cistern.core.ports import free_port
from cistern.metadata import model
from cistern.metadata.model import Op
from cistern.metadata.replica import KEY_VERSION, Replica, ReplicaConf, read_snapshot_header
from cistern.metadata.state import Namespace
from cistern.metadata.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

INCR = 500      # (key bytes) -> new count
PUT = 501       # (key bytes, value) -> previous value or None
BOOM = 502      # () -> raises (a machine bug)
GET = 50        # (key bytes) -> count or None
CRED = model.ROOT_CRED
_U64 = struct.Struct(">Q")


class Counters:
    """A deterministic counter machine over LMDB, codes 1-999."""

    code_range = range(1, 1000)

    def __init__(self, store: Store):
        self.store = store
        self._db = store.db(b"counters")
        self.entry_version = None     # set by the replica before each entry
        self.versions = {}            # key -> entry_version its last INCR saw

    def bootstrap(self, txn):
        pass

    def apply(self, txn, time_ns, code, args):
        if code == BOOM:
            txn.put(b"half-written", b"x", db=self._db)
            raise RuntimeError("machine bug")
        if code == INCR:
            key = args[1]
            raw = txn.get(key, db=self._db)
            count = (_U64.unpack(raw)[0] if raw else 0) + 1
            txn.put(key, _U64.pack(count), db=self._db)
            self.versions[key] = self.entry_version
            return 0, "", count
        if code == PUT:
            key, value = args[1], args[2]
            raw = txn.get(key, db=self._db)
            txn.put(key, _U64.pack(value), db=self._db)
            return 0, "", _U64.unpack(raw)[0] if raw else None
        return errno.ENOSYS, "unknown", None

    def read(self, txn, code, args):
        if code == GET:
            raw = txn.get(args[1], db=self._db)
            return 0, "", _U64.unpack(raw)[0] if raw else None
        return errno.ENOSYS, "unknown", None


class Group:
    """n replicas in this process; start/stop each; compare digests."""

    def __init__(self, tmp_path, n=3, *, machine="counters", **conf):
        self.dir = str(tmp_path)
        self.n = n
        self.machine = machine
        self.conf = conf
        self.addrs = [f"127.0.0.1:{free_port()}" for _ in range(n)]
        self.rpc = {a: f"127.0.0.1:{7000 + i}" for i, a in enumerate(self.addrs)}
        self.replicas: list[Replica | None] = [None] * n
        self.stores: list[Store | None] = [None] * n

    def start(self, i):
        assert self.replicas[i] is None
        data = os.path.join(self.dir, f"m{i}")
        store = Store(os.path.join(data, "state"), sync=False, map_size_bytes=1 << 30)
        machine = Counters(store) if self.machine == "counters" else Namespace(store)
        peers = {f"m{j}": a for j, a in enumerate(self.addrs) if j != i}
        conf = ReplicaConf(registry=CollectorRegistry(), **self.conf)
        replica = Replica(f"m{i}", self.addrs[i], peers, data, {"namespace": machine},
                          rpc_addresses=self.rpc, conf=conf)
        replica.start()
        self.replicas[i], self.stores[i] = replica, store
        return replica

    def start_all(self):
        for i in range(self.n):
            self.start(i)
        return self

    def stop(self, i):
        replica, store = self.replicas[i], self.stores[i]
        self.replicas[i] = self.stores[i] = None
        if replica is not None:
            replica.stop()
        if store is not None:
            store.close()

    def stop_all(self):
        for i in range(self.n):
            self.stop(i)

    def running(self):
        return [r for r in self.replicas if r is not None]

    def leader(self, timeout_s=10.0, exclude=None) -> Replica:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leaders = [r for r in self.running() if r.is_leader() and r is not exclude]
            if len(leaders) == 1:
                # a write proves it leads (not a stale leader of an old term)
                try:
                    if self.machine == "counters":
                        probe = leaders[0].submit_write(b"", 0, 0, INCR, model.encode_args(CRED, b"probe"))
                    else:
                        probe = leaders[0].submit_write(b"", 0, 0, Op.NOOP, model.encode_args(CRED))
                    probe.result(5)
                    return leaders[0]
                except CisternError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"no leader: {[r.status() for r in self.running()]}")

    def converge(self, timeout_s=20.0) -> list[dict]:
        """Wait until every running replica applied the same index; assert
        equal digests there."""
        deadline = time.monotonic() + timeout_s
        while True:
            statuses = [r.status() for r in self.running()]
            if len({s["applied_index"] for s in statuses}) == 1:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas did not converge: {statuses}")
            time.sleep(0.05)
        assert len({s["digest"] for s in statuses}) == 1, statuses
        return statuses


@pytest.fixture
def group(tmp_path):
    groups = []

    def make(**kw):
        g = Group(tmp_path, **kw)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop_all()


def incr(replica, cid, seq, key, acked_below=0):
    return replica.submit_write(cid, seq, acked_below, INCR, model.encode_args(CRED, key))


def get(replica, key, linearizable=True):
    return replica.submit_read(GET, model.encode_args(CRED, key), linearizable=linearizable).result(10)


# -- scenarios -------------------------------------------------------------------

def test_leader_elected_and_a_follower_names_the_leaders_rpc_address(group):
    g = group().start_all()
    leader = g.leader()
    status = leader.status()
    assert status["role"] == "leader" and status["leader_rpc"] == g.rpc[leader.raft_address]
    assert {m["id"] for m in status["members"]} == {"m0", "m1", "m2"}
    for follower in [r for r in g.running() if r is not leader]:
        with pytest.raises(NotLeader) as e:
            incr(follower, b"c" * 16, 1, b"k").result(5)
        assert e.value.leader == g.rpc[leader.raft_address]
        with pytest.raises(NotLeader):
            follower.submit_read(GET, model.encode_args(CRED, b"k")).result(5)
        assert follower.leader_rpc_address() == g.rpc[leader.raft_address]
    incr(leader, b"c" * 16, 1, b"k").result(5)
    g.converge()
    # stale reads answer from any replica's applied state
    assert all(get(r, b"k", linearizable=False) == 1 for r in g.running())


def test_concurrent_writes_share_raft_entries_and_all_replicas_agree(group, caplog):
    g = group().start_all()
    leader = g.leader()
    threads_n, per_thread = 16, 150
    before = leader.status()["batches"]
    errors = []

    def worker(t):
        cid = bytes([t]) * 16
        futures = [incr(leader, cid, seq, b"key-%d" % t) for seq in range(per_thread)]
        try:
            assert [f.result(30) for f in futures] == list(range(1, per_thread + 1))
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)

    with caplog.at_level(logging.CRITICAL, logger="pysyncobj"):
        for seq in range(300):            # one at a time: acks of older appends arrive late
            incr(leader, b"s" * 16, seq, b"serial").result(5)
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        batches = leader.status()["batches"] - before
        assert batches < threads_n * per_thread / 4, f"{batches} entries for {threads_n * per_thread} writes"
        statuses = g.converge()
    assert all(get(leader, b"key-%d" % t) == per_thread for t in range(threads_n))
    assert statuses[0]["applied_index"] > 0
    # Our nextIndex guard keeps pysyncobj from re-sending (and followers from
    # truncating) entries they already applied.
    assert not [r for r in caplog.records if "truncating already-applied" in r.getMessage()]


def test_a_retried_request_is_applied_once_and_returns_the_original_result(group):
    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)
    assert incr(leader, cid, 7, b"x").result(5) == 1
    assert incr(leader, cid, 7, b"x").result(5) == 1            # resent: same answer
    both = [incr(leader, cid, 8, b"x"), incr(leader, cid, 8, b"x")]   # resent while in flight
    assert [f.result(5) for f in both] == [2, 2]
    assert get(leader, b"x") == 2
    assert incr(leader, cid, 9, b"x", acked_below=9).result(5) == 3
    with pytest.raises(CisternError) as e:                       # below the client's own window
        incr(leader, cid, 7, b"x", acked_below=9).result(5)
    assert e.value.errno == errno.EALREADY
    assert get(leader, b"x") == 3
    g.converge()


def test_a_raising_machine_fails_only_its_operation_with_eio(group):
    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)
    boom = leader.submit_write(cid, 1, 0, BOOM, model.encode_args(CRED))
    fine = incr(leader, cid, 2, b"y")
    with pytest.raises(CisternError) as e:
        boom.result(5)
    assert e.value.errno == errno.EIO
    assert fine.result(5) == 1
    g.converge()
    with leader.store.env.begin() as txn:   # the failed op's half-write was undone
        assert txn.get(b"half-written", db=leader.store.db(b"counters")) is None


def test_linearizable_reads_add_no_raft_entry_and_see_acknowledged_writes(group):
    # ReadIndex: a read waits for a heartbeat round a majority answered, not
    # for a log entry; so reads alone never grow the log, on any replica.
    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)
    incr(leader, cid, 1, b"r").result(5)
    g.converge()
    before = [r.status()["last_log_index"] for r in g.running()]
    batches = leader.status()["batches"]
    futures = [leader.submit_read(GET, model.encode_args(CRED, b"r")) for _ in range(300)]
    assert all(f.result(10) == 1 for f in futures)
    for n in range(1, 40):              # reads interleaved with writes see each write
        incr(leader, cid, 1 + n, b"r").result(5)
        assert get(leader, b"r") == 1 + n
    g.converge()                        # a write is acknowledged once a majority has it: the third may lag
    assert [r.status()["last_log_index"] for r in g.running()] == [b + 39 for b in before]
    assert leader.status()["batches"] - batches == 39
    digest_read = leader.submit_read(Op.DIGEST, model.encode_args(CRED)).result(5)
    assert digest_read[0] >= 1 and len(digest_read[1]) == 16


def test_leader_stopped_a_new_one_leads_within_seconds_and_no_acknowledged_write_is_lost(group):
    g = group().start_all()
    old = g.leader()
    cid = os.urandom(16)
    acked = 0
    for seq in range(200):
        assert incr(old, cid, seq, b"n").result(5) == seq + 1
        acked += 1
    old_index = g.replicas.index(old)
    stopped_at = time.monotonic()
    g.stop(old_index)
    new = g.leader(timeout_s=10)
    failover_s = time.monotonic() - stopped_at
    assert failover_s < 5, f"failover took {failover_s:.1f}s"
    assert get(new, b"n") == acked
    assert incr(new, cid, 200, b"n").result(5) == acked + 1
    g.converge()
    g.start(old_index)                     # the old leader rejoins and catches up
    g.converge()
    assert get(g.leader(), b"n") == acked + 1


def test_restart_of_all_three_keeps_state_and_digests_and_applies_nothing_twice(group):
    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)
    futures = [incr(leader, cid, seq, b"z") for seq in range(500)]
    assert sorted(f.result(10) for f in futures) == list(range(1, 501))
    for _ in range(100):                  # internal writes: no session to dedupe a replay
        incr(leader, b"", 0, b"w").result(5)
    before = g.converge()
    on_disk = (before[0]["applied_index"], bytes.fromhex(before[0]["digest"]))
    g.stop_all()
    g.start_all()
    assert [r.applied() for r in g.running()] == [on_disk] * 3    # LMDB kept index and digest
    leader = g.leader()   # the journal is replayed on top of LMDB by now; the probe is one more entry
    after = g.converge()
    assert after[0]["applied_index"] > on_disk[0]
    assert get(leader, b"z") == 500                     # replay did not double-apply
    assert get(leader, b"w") == 100
    assert incr(leader, cid, 0, b"z").result(5) == 1    # the session survived: original result
    assert get(leader, b"z") == 500
    g.converge()


def test_a_lagging_replica_catches_up_from_a_snapshot(group):
    g = group(log_compaction_min_entries=50, log_compaction_min_time_s=3600).start_all()
    leader = g.leader()
    lagging = next(i for i, r in enumerate(g.replicas) if r is not leader)
    g.stop(lagging)
    cid = os.urandom(16)
    for seq in range(400):                 # one entry each: compaction runs several times
        incr(leader, cid, seq, b"s-%d" % (seq % 7)).result(5)
    deadline = time.monotonic() + 20
    while leader.status()["first_log_index"] <= 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leader.status()["first_log_index"] > 2, "the leader never compacted its log"
    header = read_snapshot_header(os.path.join(g.dir, f"m{g.replicas.index(leader)}", "raft", "snapshot"))
    assert header["applied"] > 0
    replica = g.start(lagging)
    statuses = g.converge(timeout_s=30)
    assert replica.status()["snapshot_generation"] >= 1, "caught up without installing the snapshot"
    assert statuses[0]["applied_index"] >= 400
    assert get(g.leader(), b"s-0") == 58
    # and it keeps up afterwards, restarted from its own snapshot + journal
    g.stop(lagging)
    g.start(lagging)
    incr(g.leader(), cid, 400, b"s-0").result(5)
    g.converge()


def test_the_namespace_machine_replicates_through_the_replica(group):
    g = group(machine="namespace").start_all()
    leader = g.leader()
    cid = os.urandom(16)
    futures = [leader.submit_write(cid, i, 0, Op.MKDIR, model.encode_args(CRED, b"/d%d" % i, 0o755))
               for i in range(100)]
    inos = [model.Attr(*f.result(10)).ino for f in futures]
    assert len(set(inos)) == 100
    attr = model.Attr(*leader.submit_read(Op.GETATTR, model.encode_args(CRED, b"/d42", True)).result(5))
    assert attr.ino == inos[42]
    with pytest.raises(CisternError) as e:
        leader.submit_write(cid, 100, 0, Op.MKDIR, model.encode_args(CRED, b"/d1", 0o755)).result(5)
    assert e.value.errno == errno.EEXIST
    g.converge()


def test_creates_apply_without_a_nested_transaction_and_a_late_failure_is_undone_alone(group, monkeypatch):
    # CREATE refuses only before its first write, so the replica applies it
    # straight in the entry's transaction. A failure after it wrote (here a
    # full map halfway through) re-runs the entry with that create nested:
    # it fails alone with ENOSPC and leaves nothing behind.
    import lmdb

    from cistern.metadata import state, store

    nested_creates = []
    real_nested, real_link_new = store.apply_nested, state.Namespace._link_new

    def counting_nested(env, txn, run, handler, *args):
        if getattr(handler, "__name__", "") == "_create":
            nested_creates.append(args)
        return real_nested(env, txn, run, handler, *args)

    def link_new(self, t, now, pino, pnode, name, ino, node, counters):
        if name == b"full":
            self._put_inode(t, ino, node)
            raise lmdb.MapFullError("halfway")
        return real_link_new(self, t, now, pino, pnode, name, ino, node, counters)

    monkeypatch.setattr(store, "apply_nested", counting_nested)
    monkeypatch.setattr(state.Namespace, "_link_new", link_new)
    g = group(machine="namespace").start_all()
    leader = g.leader()
    cid = os.urandom(16)
    names = [b"a", b"full", b"b", b"a"]
    futures = [leader.submit_write(cid, i + 1, 0, Op.CREATE, model.encode_args(CRED, b"/" + name, 0o644, True))
               for i, name in enumerate(names)]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(model.Attr(*f.result(10)).ino > 0)
        except CisternError as e:
            outcomes.append(e.errno)
    assert outcomes == [True, errno.ENOSPC, True, errno.EEXIST]
    statuses = g.converge()
    # Only the failed create was applied nested, once per replica.
    assert len(nested_creates) == len(statuses)
    for replica in g.running():
        with replica.store.env.begin() as txn:
            Namespace(replica.store).check_invariants(txn)
    attr = leader.submit_read(Op.STATFS, model.encode_args(CRED)).result(5)
    assert attr["files"] == 2


def test_journal_and_vote_file_are_fsynced_before_acknowledging(group, monkeypatch):
    synced: list[str] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def path_of(fd):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "?"

    def fsync(fd):
        synced.append(path_of(fd))
        return real_fsync(fd)

    def fdatasync(fd):
        synced.append(path_of(fd))
        return real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    g = group().start_all()
    leader = g.leader()
    assert any(p.endswith("/raft/journal.meta.tmp") or p.endswith("/raft/journal.meta") for p in synced), \
        "the vote file was never fsynced"
    follower = next(r for r in g.running() if r is not leader)
    syncs_before = follower.status()["journal_syncs"]
    for seq in range(20):
        incr(leader, b"d" * 16, seq, b"k").result(5)
    # every acknowledged entry was synced on a follower before it answered
    assert follower.status()["journal_syncs"] - syncs_before >= 10
    assert any(p.endswith("/raft/log") for p in synced)
    g.converge()


def test_without_a_quorum_writes_fail_fast_with_an_unknown_leader(group):
    g = group()
    lonely = g.start(0)
    time.sleep(1.5)                        # longer than an election timeout
    assert not lonely.is_leader() and lonely.leader_rpc_address() == ""
    started = time.monotonic()
    with pytest.raises(NotLeader) as e:
        incr(lonely, b"e" * 16, 1, b"k").result(1)
    assert e.value.leader == "" and time.monotonic() - started < 0.5
    assert lonely.status()["role"] in ("follower", "candidate")


def test_metrics_report_role_indexes_and_applied_ops(group):
    g = group().start_all()
    leader = g.leader()
    for seq in range(5):
        incr(leader, b"f" * 16, seq, b"m").result(5)
    g.converge()
    time.sleep(0.4)                        # gauges refresh every quarter second
    registry, label = leader.conf.registry, {"replica": leader.node_id}
    assert registry.get_sample_value("cistern_raft_role", label) == 2
    assert registry.get_sample_value("cistern_raft_term", label) >= 1
    assert registry.get_sample_value("cistern_raft_applied_index", label) == leader.applied()[0]
    assert registry.get_sample_value("cistern_replica_ops_applied_total", {**label, "code": str(INCR)}) >= 5
    assert registry.get_sample_value("cistern_replica_batch_ops_count", label) >= 5
    assert registry.get_sample_value("cistern_replica_apply_seconds_count", label) >= 5
    assert registry.get_sample_value("cistern_replica_entries_committed_total", label) >= 5


def test_writes_enter_the_log_in_submission_order(group):
    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)
    stop = threading.Event()

    def noise():        # other submitters, so completions kick batches concurrently
        seq = 0
        while not stop.is_set():
            incr(leader, b"n" * 16, seq, b"noise").result(5)
            seq += 1

    others = [threading.Thread(target=noise) for _ in range(4)]
    for t in others:
        t.start()
    try:
        futures = [leader.submit_write(cid, i, 0, PUT, model.encode_args(CRED, b"ordered", i))
                   for i in range(3000)]
        previous = [f.result(30) for f in futures]
    finally:
        stop.set()
        for t in others:
            t.join()
    assert previous == [None] + list(range(2999))
    g.converge()


def test_an_install_snapshot_message_cannot_commit_a_deposed_leaders_stale_entries(tmp_path):
    """White box: a follower holding uncommitted entries of an old term gets
    a snapshot message (no prevLogIdx, so no consistency check) whose commit
    index covers them. pysyncobj alone would commit and apply them
    (divergence); the replica's message guard must keep them uncommitted."""
    from cistern.metadata.replica import _RaftNode

    store = Store(str(tmp_path / "state"), sync=False, map_size_bytes=1 << 26)
    replica = Replica("m0", f"127.0.0.1:{free_port()}", {"m1": f"127.0.0.1:{free_port()}"},
                      str(tmp_path), {"namespace": Counters(store)}, conf=ReplicaConf(registry=CollectorRegistry()))
    os.makedirs(replica._raft_dir, exist_ok=True)
    node = _RaftNode(replica, replica.raft_address, list(replica._peers), replica._syncobj_conf(), True,
                     replica._journal_paths)
    try:
        journal = node._SyncObj__raftLog
        for index in range(2, 6):              # stale entries of term 1, never committed
            journal.add(b"\x00stale", index, 1)
        assert node.raftCommitIndex == 1
        leader = next(iter(node.otherNodes))
        node._SyncObj__onMessageReceived(leader, {
            "type": "append_entries", "term": 2, "commit_index": 5, "serialized": None})
        assert node.raftCommitIndex == 1, "a snapshot message committed entries it never checked"
        # a checked append from the same leader still advances the commit index
        node._SyncObj__onMessageReceived(leader, {
            "type": "append_entries", "term": 2, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0,
            "entries": []})
        assert node.raftCommitIndex == 1 and node.last_log_index() == 1   # stale entries truncated
    finally:
        node.destroy()
        store.close()


def test_writes_in_flight_when_the_leader_stops_apply_exactly_once(group):
    """Writers keep going through a leader stop, resending the same
    (client_id, seq) on NotLeader: every write ends acknowledged, none is
    lost, none is applied twice."""
    g = group().start_all()
    g.leader()
    writes_n, writers_n = 300, 4
    progress = [0] * writers_n
    failures = []

    def current_leader():
        leaders = [r for r in g.running() if r.is_leader()]
        return leaders[0] if leaders else None

    def writer(w):
        cid = bytes([w + 1]) * 16
        try:
            for seq in range(writes_n):
                deadline = time.monotonic() + 30
                while True:
                    leader = current_leader()
                    try:
                        if leader is None:
                            raise NotLeader("")
                        incr(leader, cid, seq, b"w-%d" % w, acked_below=seq).result(5)
                        break
                    except CisternError as e:
                        if e.errno != errno.EAGAIN or time.monotonic() > deadline:
                            raise
                        time.sleep(0.02)
                progress[w] = seq + 1
        except BaseException as e:   # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers_n)]
    for t in threads:
        t.start()
    while min(progress) < writes_n // 3 and not failures:
        time.sleep(0.01)
    old = current_leader()
    g.stop(g.replicas.index(old))
    for t in threads:
        t.join(60)
    assert not failures, failures
    leader = g.leader()
    assert [get(leader, b"w-%d" % w) for w in range(writers_n)] == [writes_n] * writers_n
    g.converge()


def test_a_partitioned_leader_that_still_believes_it_leads_never_answers_a_read_stale(group):
    # Linearizability of reads (Raft thesis 6.4): a read answered after a
    # write's acknowledgment must see it, even when the replica asked is a
    # deposed leader that has not noticed yet. Cut the leader off both ways
    # (it keeps believing it leads until leader_fallback_timeout_s), let the
    # other two elect a leader and acknowledge a write, then read on the old
    # leader: without a read barrier it would answer 1 at once; with one, the
    # read waits for an entry that cannot commit and fails.
    g = group(leader_fallback_timeout_s=8.0).start_all()
    old = g.leader()
    cid = os.urandom(16)
    assert incr(old, cid, 1, b"k").result(5) == 1
    transport = old._node._SyncObj__transport
    transport.send = lambda node, message: None
    transport._onMessageReceivedCallback = lambda node, message: None
    new = g.leader(timeout_s=15, exclude=old)
    assert incr(new, cid, 2, b"k").result(5) == 2
    assert old.is_leader(), "the old leader noticed too early for this test to mean anything"
    read = old.submit_read(GET, model.encode_args(CRED, b"k"))
    with pytest.raises(CisternError):
        value = read.result(30)
        raise AssertionError(f"a deposed leader answered a linearizable read with {value}")
    assert get(old, b"k", linearizable=False) == 1   # a stale read says so; it stays allowed


def test_a_frozen_leader_never_answers_a_read_that_misses_the_new_leaders_write(group):
    # The SIGSTOP case of ReadIndex: freeze the leader's tick thread (so it
    # neither hears nor speaks, and still believes it leads), let the other
    # two elect a leader and acknowledge a write, queue a linearizable read on
    # the frozen one, then thaw it. The followers' answers to its last
    # heartbeats wait in its socket buffers, processed after the read
    # arrived: a leader that took any answer received after a read as proof
    # of leadership (or a lease) would answer 1. The answer must be 2 or a
    # failure (it steps down on hearing the new leader).
    g = group(leader_fallback_timeout_s=8.0, connection_timeout_s=10.0).start_all()
    old = g.leader()
    cid = os.urandom(16)
    assert incr(old, cid, 1, b"k").result(5) == 1
    assert get(old, b"k") == 1          # a read round, so appends carry round stamps
    gate, frozen = threading.Event(), threading.Event()
    tick = old._node.doTick

    def frozen_tick(period):       # frozen between two ticks, as SIGSTOP may catch it
        frozen.set()
        gate.wait(30)

    old._node.doTick = frozen_tick
    try:
        assert frozen.wait(5)
        new = g.leader(timeout_s=15, exclude=old)
        assert incr(new, cid, 2, b"k").result(5) == 2
        assert old.is_leader(), "the frozen leader already knows it was deposed: the test means nothing"
        read = old.submit_read(GET, model.encode_args(CRED, b"k"))
        time.sleep(0.2)
        assert not read.done()
    finally:
        old._node.doTick = tick
        gate.set()
    try:
        value = read.result(30)
    except CisternError:
        value = None        # failed: allowed (NotLeader once it steps down)
    assert value in (None, 2), f"a deposed leader answered a linearizable read with {value}"
    assert not old.is_leader()
    g.converge()


def test_a_leader_cut_off_from_its_peers_answers_no_linearizable_read(group):
    # The peers frozen instead: no member answers the leader's heartbeats, so
    # no read round is confirmed; reads fail once it steps down, and it
    # answers again once the peers are back.
    g = group(leader_fallback_timeout_s=3.0, connection_timeout_s=10.0).start_all()
    leader = g.leader()
    cid = os.urandom(16)
    assert incr(leader, cid, 1, b"k").result(5) == 1
    peers = [r for r in g.running() if r is not leader]
    gate = threading.Event()
    ticks = [p._node.doTick for p in peers]
    for p, tick in zip(peers, ticks):
        p._node.doTick = lambda period, tick=tick: (gate.wait(30), tick(period))
    try:
        time.sleep(0.3)
        read = leader.submit_read(GET, model.encode_args(CRED, b"k"))
        time.sleep(1.0)
        assert not read.done(), "a read was answered without a majority's heartbeat answer"
        with pytest.raises(NotLeader):
            read.result(30)
    finally:
        for p, tick in zip(peers, ticks):
            p._node.doTick = tick
        gate.set()
    assert get(g.leader(timeout_s=15), b"k") == 1
    g.converge()


def test_raft_messages_travel_as_uncompressed_zlib_streams(group):
    # pysyncobj compresses every message at zlib level 3 on the tick thread;
    # the replica makes that level 0 (message_compress_level), still a zlib
    # stream any pysyncobj peer reads.
    g = group().start_all()
    leader = g.leader()
    assert incr(leader, os.urandom(16), 1, b"z").result(5) == 1
    shim = sys.modules["pysyncobj.tcp_connection"].zlib
    payload = os.urandom(64) * 64
    packed = shim.compress(payload, 3)
    assert len(packed) > len(payload) and zlib.decompress(packed) == payload
    assert shim.decompress(zlib.compress(payload, 3)) == payload
    g.converge()


def test_the_leader_syncs_its_own_journal_on_its_tick_thread_before_each_ack(group, monkeypatch):
    # The journal is synced only by the tick thread that wrote it (a syncer
    # thread it handed each sync to cost two wake-ups per entry), and a
    # write is acknowledged only after the leader's own copy is on disk.
    g = group().start_all()
    leader = g.leader()
    journal = os.path.join(leader.data_dir, "raft", "log")
    syncs: list[tuple[str, str]] = []
    real_fdatasync = os.fdatasync

    def fdatasync(fd):
        syncs.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))
        return real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    cid = os.urandom(16)
    for seq in range(1, 21):
        before = sum(1 for path, _ in syncs if path == journal)
        assert incr(leader, cid, seq, b"s").result(5) == seq
        assert sum(1 for path, _ in syncs if path == journal) > before, "acknowledged before the leader synced"
    assert {name for _, name in syncs} <= {f"replica-{r.node_id}-tick" for r in g.running()}, syncs
    assert not [t.name for t in threading.enumerate() if t.name == "journal-sync"]
    g.converge()


def test_one_write_at_a_time_sends_no_extra_append_round_after_it_commits(group, monkeypatch):
    # pysyncobj follows every apply with an append round that only carries
    # the new commit index; the next append or heartbeat carries it anyway.
    # Empty appends from the leader are now heartbeats only.
    from cistern.metadata import replica as replica_mod

    period = 0.15
    g = group(append_entries_period_s=period).start_all()
    leader = g.leader()
    empty_appends = [0]
    real_send = replica_mod._DurableTransport.send

    def send(self, node, message):
        if (self._syncObj is leader._node and isinstance(message, dict)
                and message.get("type") == "append_entries" and not message.get("entries")):
            empty_appends[0] += 1
        return real_send(self, node, message)

    monkeypatch.setattr(replica_mod._DurableTransport, "send", send)
    cid = os.urandom(16)
    writes = 40
    started = time.monotonic()
    for seq in range(1, writes + 1):
        incr(leader, cid, seq, b"a").result(5)
    elapsed = time.monotonic() - started
    heartbeats = 2 * (elapsed / period + 2)     # two followers
    # Before: at least one empty round (2 messages) per write.
    assert empty_appends[0] <= heartbeats, (empty_appends[0], elapsed)
    assert empty_appends[0] < 2 * writes
    # The followers still learn the commit index and apply everything.
    statuses = g.converge()
    assert len({s["applied_index"] for s in statuses}) == 1


def test_raft_messages_pickle_bytes_natively(group):
    # pysyncobj pickles at protocol 2, where every bytes object (each entry,
    # in every append) goes through _codecs.encode(str, 'latin1'); the
    # replica makes it protocol 4. pysyncobj's loads reads both.
    g = group().start_all()
    leader = g.leader()
    assert incr(leader, os.urandom(16), 1, b"p").result(5) == 1
    shim = sys.modules["pysyncobj.pickle"]
    message = {"type": "append_entries", "entries": [(b"\x00" + os.urandom(300), 7, 2)]}
    data = shim.dumps(message)
    assert b"_codecs" not in data and b"latin1" not in data
    assert shim.loads(data) == message
    g.converge()


def test_entries_and_read_rounds_up_to_their_inline_limits_are_answered_on_the_tick_thread(group):
    # Completing a batch or serving a round on the tick thread saves a thread
    # hop and a GIL hand-off each (the GIL overlaps nothing); only bigger
    # ones go to the completer thread or the reader pool.
    from cistern.metadata import replica as replica_mod

    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)

    def answered_on(submit, n):
        done = threading.Event()
        seen = []

        def on_done(*answer):
            seen.append((threading.current_thread().name, answer))
            done.set()

        submit(n, on_done)
        assert done.wait(10)
        return seen[0]

    seq = [0]

    def writes(n, on_done):
        ops = [(seq[0] + i, INCR, model.encode_args(CRED, b"t")) for i in range(n)]
        seq[0] += n
        leader.submit_writes(cid, 0, ops, on_done)

    def reads(n, on_done):
        leader.submit_reads([(GET, model.encode_args(CRED, b"t"))] * n, on_done)

    small_w, big_w = replica_mod.inline_completion_max, replica_mod.inline_completion_max + 1
    name, (pairs, exc) = answered_on(writes, small_w)
    assert exc is None and len(pairs) == small_w and name.endswith("-tick"), name
    name, (pairs, exc) = answered_on(writes, big_w)
    assert exc is None and len(pairs) == big_w and name.endswith("-complete"), name
    total = small_w + big_w
    name, (results, exc) = answered_on(reads, replica_mod.inline_reads_max)
    assert exc is None and results == [(0, "", total)] * replica_mod.inline_reads_max and name.endswith("-tick"), name
    name, (results, exc) = answered_on(reads, replica_mod.inline_reads_max + 1)
    assert exc is None and len(results) == replica_mod.inline_reads_max + 1 and "-read" in name, name
    g.converge()


def test_a_lone_write_is_applied_on_the_leader_while_the_followers_sync_and_shows_only_once_committed(group):
    # The leader applies the entry in a write transaction it keeps open
    # while the followers fsync; the commit then only commits it. Until
    # then no reader sees it.
    g = group().start_all()
    leader = g.leader()
    cid = os.urandom(16)
    before = leader.status()["entries_preapplied"]
    for seq in range(1, 11):
        assert incr(leader, cid, seq, b"lone").result(5) == seq
    assert leader.status()["entries_preapplied"] - before == 10
    assert get(leader, b"lone") == 10
    # Hold the followers' acknowledgements (their fsync) while the next
    # write is prepared: it must stay invisible, then commit with its value.
    release = threading.Event()
    followers = [r for r in g.running() if r is not leader]
    for follower in followers:
        journal = follower._node._cistern_journal
        real_sync = journal.sync
        journal.sync = lambda real_sync=real_sync: (release.wait(5), real_sync())
    pending = incr(leader, cid, 11, b"lone")
    deadline = time.monotonic() + 5
    while leader._prepared is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert leader._prepared is not None and not pending.done()
    assert get(leader, b"lone", linearizable=False) == 10
    release.set()
    assert pending.result(5) == 11
    assert get(leader, b"lone") == 11
    g.converge()


def test_the_leader_syncs_its_own_log_before_it_applies_an_entry_ahead(group):
    # Its flush must join the disk's queue beside the followers' (with
    # them, not behind them): the apply-ahead waits until the sync returned.
    g = group().start_all()
    leader = g.leader()
    log = leader._node._cistern_journal._log
    unsynced_writes_at_prepare = []
    real_prepare = leader._prepare_next

    def prepare():
        if leader._prepared is None and leader._unapplied:
            unsynced_writes_at_prepare.append(log._gen - log._synced_gen)
        real_prepare()

    leader._prepare_next = prepare
    cid = os.urandom(16)
    for seq in range(1, 11):
        assert incr(leader, cid, seq, b"order").result(5) == seq
    assert unsynced_writes_at_prepare, "nothing was applied ahead"
    assert not any(unsynced_writes_at_prepare), unsynced_writes_at_prepare
    g.converge()


def test_an_entry_prepared_under_a_wrong_guess_is_aborted_and_the_real_one_applied(group):
    # Should the oldest unapplied batch not be the next entry, the prepared
    # transaction is aborted at that index: the state is the log's alone.
    import collections

    g = group().start_all()
    leader = g.leader()
    ghost = msgpack_entry(INCR, b"ghost")

    prepared = [0]

    class Ghost:
        @property
        def entry(self):
            prepared[0] += 1
            return ghost

    class WrongGuess(collections.deque):
        def __getitem__(self, i):
            return Ghost() if i == 0 else super().__getitem__(i)

    leader._unapplied = WrongGuess(leader._unapplied)
    before = leader.status()["entries_preapplied"]
    cid = os.urandom(16)
    for seq in range(1, 6):
        assert incr(leader, cid, seq, b"real").result(5) == seq
    assert prepared[0] >= 5, "the ghost was never prepared"
    assert leader.status()["entries_preapplied"] == before
    assert get(leader, b"real") == 5
    assert get(leader, b"ghost") is None
    statuses = g.converge()
    assert len({s["digest"] for s in statuses}) == 1


def msgpack_entry(code: int, key: bytes) -> bytes:
    """A Raft entry as Replica._submit builds it: [time_ns, [op, ...]]."""
    return model.pack([time.time_ns(), [[os.urandom(16), 1, 0, code, model.encode_args(CRED, key)]]])


# -- state-machine versions --------------------------------------------------------

V = model.STATE_MACHINE_VERSION


def machine(replica) -> Counters:
    return replica._routes[0][1]


def wait_for(what, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_entries_carry_the_leaders_version_and_an_old_two_item_entry_applies_as_its_version(group):
    g = group().start_all()
    leader = g.leader()
    assert incr(leader, os.urandom(16), 1, b"new").result(5) == 1
    leader._node.apply_entry(msgpack_entry(INCR, b"old"))      # [time_ns, ops]: version 1
    wait_for(lambda: get(leader, b"old") == 1)
    assert incr(leader, os.urandom(16), 1, b"new").result(5) == 2
    g.converge()
    for replica in g.running():
        assert machine(replica).versions == {b"probe": V, b"new": V, b"old": 1}
        assert replica.status()["state_version"] == replica.status()["state_machine_version"] == V


def test_an_entry_of_a_newer_state_machine_stops_every_replica_before_it_applies(group, caplog):
    g = group().start_all()
    leader = g.leader()
    assert incr(leader, os.urandom(16), 1, b"k").result(5) == 1
    before = g.converge()[0]["applied_index"]
    failures = []
    for replica in g.running():
        replica.on_failure = lambda message, r=replica: failures.append((r.node_id, message))
    newer = model.pack([time.time_ns(), [[os.urandom(16), 1, 0, INCR, model.encode_args(CRED, b"k")]], V + 1])
    leader._node.apply_entry(newer)
    # The leader applies first and stops. A follower that learnt the commit
    # stops too; the others elect a leader, which commits the entry and stops.
    wait_for(lambda: len(failures) >= 2)
    failed = dict(failures)
    assert leader.node_id in failed
    for replica in g.running():
        status = replica.status()
        assert status["failed"] == failed.get(replica.node_id)
        assert status["applied_index"] == before
        assert machine(replica).versions == {b"probe": V, b"k": V}
        with replica.store.env.begin() as txn:
            assert _U64.unpack(txn.get(b"k", db=machine(replica)._db))[0] == 1
    for message in failed.values():
        assert f"log entry {before + 1} was written by state-machine version {V + 1}" in message
        assert f"applies versions up to {V}" in message
    assert len({r.status()["digest"] for r in g.running()}) == 1
    assert "LMDB failure" not in caplog.text
    # A failed replica's tick thread is gone: it no longer takes part.
    assert not any(t.name.endswith("-tick") and t.is_alive()
                   for r in g.running() if r.node_id in failed for t in r._threads)


def test_a_store_written_by_a_newer_state_machine_is_refused_at_start(group):
    g = group().start_all()
    incr(g.leader(), os.urandom(16), 1, b"k").result(5)
    g.converge()
    g.stop(0)
    data = os.path.join(g.dir, "m0")
    store = Store(os.path.join(data, "state"), sync=False, map_size_bytes=1 << 30)
    try:
        with store.env.begin(write=True) as txn:
            txn.put(KEY_VERSION, _U64.pack(V + 1), db=store.db(b"replica"))
        replica = Replica("m0", g.addrs[0], {f"m{j}": a for j, a in enumerate(g.addrs) if j}, data,
                          {"namespace": Counters(store)}, rpc_addresses=g.rpc,
                          conf=ReplicaConf(registry=CollectorRegistry()))
        with pytest.raises(CisternError) as raised:
            replica.start()
        assert raised.value.errno == errno.ENOTSUP
        assert f"written by state-machine version {V + 1}" in raised.value.message
        assert replica._node is None      # nothing was started
    finally:
        store.close()


def test_a_snapshot_of_a_newer_state_machine_is_refused_before_it_is_imported(group):
    g = group(log_compaction_min_entries=50, log_compaction_min_time_s=3600).start_all()
    leader = g.leader()
    leader._stored_version = lambda txn: V + 1      # its snapshots now name a newer version
    lagging = next(i for i, r in enumerate(g.replicas) if r is not leader)
    g.stop(lagging)
    cid = os.urandom(16)
    for seq in range(200):
        incr(leader, cid, seq, b"s").result(5)
    wait_for(lambda: leader.status()["first_log_index"] > 2, 20)
    header = read_snapshot_header(os.path.join(g.dir, f"m{g.replicas.index(leader)}", "raft", "snapshot"))
    assert header["version"] == V + 1
    replica = g.start(lagging)
    wait_for(lambda: replica.status()["failed"] is not None, 20)
    assert "the snapshot at applied index" in replica.status()["failed"]
    assert replica.status()["snapshot_generation"] == 0, "the snapshot was imported"
    assert replica.status()["applied_index"] < header["applied"]
