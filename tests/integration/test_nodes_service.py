"""The Nodes service in-process over a real Replica (pysyncobj + LMDB), with
fake storage nodes that are plain gRPC callers: they heartbeat, report
blocks, and carry out the instructions in heartbeat replies on a set of
block ids (no bytes move). Timings are shortened through NodesConf."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from prometheus_client import CollectorRegistry

from cistern.core.ports import free_port
from cistern.metadata import model
from cistern.metadata.model import ROOT_CRED, TIME_NOW, Op
from cistern.metadata.nodes_service import NodesConf, add_to_server
from cistern.metadata.proto import nodes_pb2 as pb
from cistern.metadata.proto import nodes_pb2_grpc as pb_grpc
from cistern.metadata.replica import Replica, ReplicaConf
from cistern.metadata.state import Namespace
from cistern.metadata.store import Store

pytestmark = [pytest.mark.timeout(60)]

GiB = 1 << 30
B = 4 << 20
CONF = dict(heartbeat_interval_s=0.1, node_dead_after_s=1.5, monitor_interval_s=0.1, orphan_grace_s=1.5)


class Meta:
    """One replica (the leader of a one-member group), its Nodes service on
    a gRPC server, and a stub."""

    def __init__(self, tmp_path, **conf):
        self.store = Store(str(tmp_path / "state"), sync=False, map_size_bytes=1 << 28)
        self.replica = Replica("m0", f"127.0.0.1:{free_port()}", {}, str(tmp_path),
                               {"namespace": Namespace(self.store)}, conf=ReplicaConf(registry=CollectorRegistry()))
        self.replica.start()
        deadline = time.monotonic() + 10
        while not self.replica.is_leader():
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.02)
        self.server = grpc.server(ThreadPoolExecutor(8))
        self.metrics = CollectorRegistry()
        self.service = add_to_server(self.server, self.replica, None, self.metrics,
                                     conf=NodesConf(**{**CONF, **conf}))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.NodesStub(self.channel)
        self.seq = 0

    def close(self):
        self.channel.close()
        self.server.stop(0).wait()
        self.service.stop()
        self.replica.stop()
        self.store.close()

    def write(self, code, *args):
        self.seq += 1
        return self.replica.submit_write(b"t" * 16, self.seq, self.seq, code,
                                         model.encode_args(ROOT_CRED, *args)).result(10)

    def read(self, code, *args):
        return self.replica.submit_read(code, model.encode_args(ROOT_CRED, *args)).result(10)

    def write_file(self, path: bytes, blocks) -> int:
        """A committed file whose layout is ``blocks``: [(block id, [nodes])]."""
        ino = model.Attr(*self.write(Op.CREATE, path, 0o644, True)).ino
        _, lease = self.write(Op.OPEN_LEASE, path, b"writer")
        layout = [[b, B, b"c", list(nodes)] for b, nodes in blocks]
        self.write(Op.COMMIT_WRITE, ino, lease, layout, B * len(blocks), TIME_NOW)
        self.write(Op.RELEASE_LEASE, ino, lease)
        return ino

    def recorded(self) -> dict:
        """block id -> recorded replica list, over the whole namespace."""
        files, done = self.read(Op.FSCK_SCAN, 0, 1000)
        assert done
        return {b: sorted(nodes) for _, _, blocks in files for b, _, nodes in blocks}

    def fsck(self, path=""):
        return self.stub.Fsck(pb.FsckRequest(path=path), timeout=10)


class FakeNode:
    """A storage node reduced to its protocol: a set of block ids."""

    def __init__(self, meta: Meta, node_id: str, blocks=()):
        self.meta, self.node_id = meta, node_id
        self.address = f"{node_id}.test:7000"
        self.blocks = set(blocks)
        self.received: list = []      # every instruction ever received
        self.act = True               # False: hold instructions without carrying them out
        self.held: list = []

    def heartbeat(self):
        reply = self.meta.stub.Heartbeat(pb.HeartbeatRequest(
            node_id=self.node_id, rpc_address=self.address, capacity_bytes=100 * GiB,
            used_bytes=len(self.blocks) * B, block_count=len(self.blocks)), timeout=5)
        assert not reply.not_leader
        if reply.send_full_report:
            self.report(full=True, added=sorted(self.blocks))
        self.received.extend(reply.instructions)
        self.held.extend(reply.instructions)
        if self.act:
            self.carry_out()
        return reply

    def carry_out(self):
        added, removed = [], []
        for instruction in self.held:
            if instruction.kind == pb.Instruction.REPLICATE:
                self.blocks.add(instruction.block_ids[0])
                added.append(instruction.block_ids[0])
            elif instruction.kind == pb.Instruction.DELETE:
                for b in instruction.block_ids:
                    self.blocks.discard(b)
                    removed.append(b)
        self.held = []
        if added or removed:
            self.report(added=added, removed=removed)

    def report(self, *, full=False, added=(), removed=()):
        reply = self.meta.stub.BlockReport(pb.BlockReportRequest(
            node_id=self.node_id, full=full, added=[pb.ReportedBlock(block_id=b, length=B) for b in added],
            removed=list(removed)), timeout=5)
        assert not reply.not_leader and not reply.send_full_report

    def replicated(self) -> set:
        return {i.block_ids[0] for i in self.received if i.kind == pb.Instruction.REPLICATE}

    def deleted(self) -> set:
        return {b for i in self.received if i.kind == pb.Instruction.DELETE for b in i.block_ids}


@pytest.fixture
def meta(tmp_path):
    m = Meta(tmp_path)
    yield m
    m.close()


def pump(nodes, until, timeout_s=10.0, what="condition"):
    """Heartbeat ``nodes`` every 50 ms until ``until()`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        for node in nodes:
            node.heartbeat()
        if until():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


# -- scenarios -------------------------------------------------------------------

def test_nodes_register_and_allocate_returns_distinct_live_targets(meta):
    nodes = [FakeNode(meta, f"n{i}") for i in range(1, 5)]
    for node in nodes:
        node.heartbeat()
    reply = meta.stub.Allocate(pb.AllocateRequest(replication=3, count=20, writer_node="n2"), timeout=5)
    assert len(reply.blocks) == 20 and len({b.block_id for b in reply.blocks}) == 20
    for block in reply.blocks:
        ids = [t.node_id for t in block.targets]
        assert len(block.block_id) == 16 and len(set(ids)) == 3 and ids[0] == "n2"
        assert set(ids) <= {"n1", "n2", "n3", "n4"}
        assert [t.address for t in block.targets] == [f"{i}.test:7000" for i in ids]
    # capped by live nodes; excluded nodes never chosen
    capped = meta.stub.Allocate(pb.AllocateRequest(replication=5, exclude=["n1"]), timeout=5)
    assert sorted(t.node_id for t in capped.blocks[0].targets) == ["n2", "n3", "n4"]
    table = meta.stub.Nodes(pb.NodesRequest(), timeout=5)
    assert [n.node_id for n in table.nodes] == ["n1", "n2", "n3", "n4"]
    assert all(n.capacity_bytes == 100 * GiB and n.full_report for n in table.nodes)


def test_bad_input_gets_a_clear_error_and_unknown_reporters_are_asked_for_a_full_report(meta):
    with pytest.raises(grpc.RpcError) as e:
        meta.stub.Heartbeat(pb.HeartbeatRequest(node_id="", rpc_address="x:1"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        meta.stub.BlockReport(pb.BlockReportRequest(node_id="n1", added=[pb.ReportedBlock(block_id=b"abc")]),
                              timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        meta.stub.Allocate(pb.AllocateRequest(count=1), timeout=5)
    # A leader that has not heard from the nodes yet says "not yet"
    # (retryable), never "no room" (final to a writer).
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "still hearing from the storage nodes" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        meta.stub.Allocate(pb.AllocateRequest(count=100_000), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = meta.stub.BlockReport(pb.BlockReportRequest(node_id="stranger"), timeout=5)
    assert reply.send_full_report
    with pytest.raises(grpc.RpcError) as e:
        meta.fsck("/no/such/file")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # and the service keeps serving
    FakeNode(meta, "n1").heartbeat()
    assert [n.node_id for n in meta.stub.Nodes(pb.NodesRequest(), timeout=5).nodes] == ["n1"]


def test_a_silent_node_is_lost_its_blocks_re_replicated_and_trimmed_when_it_returns(meta):
    n1, n2, n3, n4 = (FakeNode(meta, f"n{i}") for i in range(1, 5))
    on_n3 = {bid(1), bid(2), bid(3)}
    for node in (n1, n2, n3):
        node.blocks |= on_n3 | {bid(4)} if node is not n3 else on_n3
    n4.blocks.add(bid(4))
    meta.write_file(b"/a", [(bid(1), ["n1", "n2", "n3"]), (bid(2), ["n1", "n2", "n3"])])
    meta.write_file(b"/b", [(bid(3), ["n1", "n2", "n3"]), (bid(4), ["n1", "n2", "n4"])])
    everyone = [n1, n2, n3, n4]
    pump(everyone, lambda: meta.stub.Nodes(pb.NodesRequest(), timeout=5).settled, what="settled")
    healthy = meta.fsck()
    assert (healthy.at_risk, healthy.complete, list(healthy.files)) == (False, True, [])

    # n3 falls silent; n4 holds its instructions for now
    n4.act = False
    lost_at = time.monotonic()
    pump([n1, n2, n4], lambda: all("n3" not in nodes for nodes in meta.recorded().values()),
         what="NODE_LOST committed")
    assert time.monotonic() - lost_at >= 1.4
    pump([n1, n2, n4], lambda: n4.replicated() == on_n3, what="Replicate instructions to n4")
    assert n1.replicated() == n2.replicated() == set()
    sources = {i.source_node for i in n4.received if i.kind == pb.Instruction.REPLICATE}
    assert sources <= {"n1", "n2"}
    report = meta.fsck()
    assert not report.at_risk and report.complete
    assert sorted((p.block_id, tuple(p.states)) for f in report.files for p in f.problems) == [
        (b, ("under",)) for b in sorted(on_n3)]

    # n4 copies them: the recorded lists gain n4, fsck is clean again
    n4.act = True
    pump([n1, n2, n4], lambda: meta.recorded() == {b: ["n1", "n2", "n4"] for b in on_n3 | {bid(4)}},
         what="recorded lists with n4")
    assert meta.fsck().files == []

    # n3 comes back with its old copies: they are trimmed, nothing else moves
    pump(everyone, lambda: on_n3 <= n3.deleted(), what="n3's extra replicas trimmed")
    assert n3.blocks == set() and meta.recorded() == {b: ["n1", "n2", "n4"] for b in on_n3 | {bid(4)}}
    assert meta.service.stats["nodes_lost"] == 1
    sample = meta.metrics.get_sample_value
    assert sample("cistern_nodes_live") == 4 and sample("cistern_nodes_lost_total") == 1
    assert sample("cistern_replications_scheduled_total") == 3
    assert sample("cistern_blocks_under_replicated") == 0 and sample("cistern_replications_pending") == 0


def test_freed_blocks_and_orphans_are_deleted_and_a_corrupt_replica_replaced(meta):
    n1, n2, n3, n4 = (FakeNode(meta, f"n{i}") for i in range(1, 5))
    for node in (n1, n2, n3):
        node.blocks |= {bid(1), bid(2)}
    meta.write_file(b"/keep", [(bid(1), ["n1", "n2", "n3"])])
    meta.write_file(b"/gone", [(bid(2), ["n1", "n2", "n3"])])
    n4.blocks.add(bid(9))           # written, never committed: an orphan
    everyone = [n1, n2, n3, n4]
    first_report = time.monotonic()        # n4 reports block 9 in the pump's first round
    pump(everyone, lambda: meta.stub.Nodes(pb.NodesRequest(), timeout=5).settled, what="settled")
    start = time.monotonic()

    meta.write(Op.UNLINK, b"/gone")
    pump(everyone, lambda: meta.read(Op.FREED_SCAN, None, 10) == [[], True], what="freed block cleared")
    assert all(bid(2) not in n.blocks for n in everyone)
    if time.monotonic() - first_report < 1.4:
        assert bid(9) in n4.blocks             # younger than the grace: kept
    pump(everyone, lambda: bid(9) not in n4.blocks, what="orphan deleted")
    assert time.monotonic() - first_report >= 1.5   # not before its grace, counted from its first report
    assert meta.service.stats["orphans_deleted"] == 1

    # a reader finds n2's copy of block 1 corrupt: replaced on n4, then dropped from n2
    meta.stub.ReportBadReplica(pb.BadReplica(block_id=bid(1), node_id="n2", reporter="client",
                                             reason="sub-chunk 3 checksum"), timeout=5)
    report = meta.fsck("/keep")
    assert [(f.path, [tuple(p.states) for p in f.problems]) for f in report.files] == [
        ("/keep", [("corrupt", "under")])]
    pump(everyone, lambda: meta.recorded() == {bid(1): ["n1", "n3", "n4"]} and bid(1) not in n2.blocks,
         what="corrupt replica replaced and dropped")
    assert meta.fsck("/keep").files == [] and not meta.fsck("/").at_risk


def test_a_follower_answers_not_leader_and_a_new_leader_asks_nodes_for_full_reports(tmp_path):
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    rpcs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    rpc_of = dict(zip(addrs, rpcs))
    replicas, stores, servers, services = [], [], [], []
    try:
        for i in range(3):
            store = Store(str(tmp_path / f"m{i}" / "state"), sync=False, map_size_bytes=1 << 28)
            peers = {f"m{j}": a for j, a in enumerate(addrs) if j != i}
            replica = Replica(f"m{i}", addrs[i], peers, str(tmp_path / f"m{i}"), {"namespace": Namespace(store)},
                              rpc_addresses=rpc_of, conf=ReplicaConf(registry=CollectorRegistry()))
            replica.start()
            server = grpc.server(ThreadPoolExecutor(4))
            services.append(add_to_server(server, replica, None, CollectorRegistry(), conf=NodesConf(**CONF)))
            server.add_insecure_port(rpcs[i])
            server.start()
            replicas.append(replica)
            stores.append(store)
            servers.append(server)
        deadline = time.monotonic() + 15
        while not any(r.is_leader() for r in replicas) or not all(r.leader_rpc_address() for r in replicas):
            assert time.monotonic() < deadline, "no leader"
            time.sleep(0.05)
        leader = next(i for i, r in enumerate(replicas) if r.is_leader())
        follower = (leader + 1) % 3
        with grpc.insecure_channel(rpcs[follower]) as channel:
            stub = pb_grpc.NodesStub(channel)
            reply = stub.Heartbeat(pb.HeartbeatRequest(node_id="n1", rpc_address="n1:1"), timeout=5)
            assert reply.not_leader and reply.leader == rpcs[leader]
            assert stub.Allocate(pb.AllocateRequest(), timeout=5).not_leader
            assert stub.Nodes(pb.NodesRequest(), timeout=5).not_leader
        with grpc.insecure_channel(rpcs[leader]) as channel:
            stub = pb_grpc.NodesStub(channel)
            reply = stub.Heartbeat(pb.HeartbeatRequest(node_id="n1", rpc_address="n1:1"), timeout=5)
            assert not reply.not_leader and reply.send_full_report
            stub.BlockReport(pb.BlockReportRequest(node_id="n1", full=True), timeout=5)
            reply = stub.Heartbeat(pb.HeartbeatRequest(node_id="n1", rpc_address="n1:1"), timeout=5)
            assert not reply.send_full_report

        # the leader goes: the new one knows nothing of n1 and asks for a full report
        servers[leader].stop(0).wait()
        services[leader].stop()
        replicas[leader].stop()
        others = [i for i in range(3) if i != leader]
        deadline = time.monotonic() + 15
        while not any(replicas[i].is_leader() for i in others):
            assert time.monotonic() < deadline, "no new leader"
            time.sleep(0.05)
        new = next(i for i in others if replicas[i].is_leader())
        with grpc.insecure_channel(rpcs[new]) as channel:
            reply = pb_grpc.NodesStub(channel).Heartbeat(pb.HeartbeatRequest(node_id="n1", rpc_address="n1:1"),
                                                         timeout=5)
            assert not reply.not_leader and reply.send_full_report
    finally:
        for server in servers:
            server.stop(0).wait()
        for service in services:
            service.stop()
        for replica in replicas:
            replica.stop()
        for store in stores:
            store.close()
