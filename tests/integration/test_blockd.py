"""Real blockd processes on loopback: pipelined writes land identical on
every replica, a dead target is reported, copies are verified, and bad input
on the wire gets a clear gRPC status while the node keeps serving."""

import errno
import hashlib
import os
import random
import signal
import time
import urllib.request

import grpc
import pytest

from cistern.blockstore.client import BlockClient
from cistern.blockstore.proto import blockstore_pb2 as pb
from cistern.blockstore.proto import blockstore_pb2_grpc as pb_grpc
from cistern.blockstore.store import block_checksum, chunk_checksums
from cistern.blockstore.testing import NodeCluster
from cistern.core.errors import CisternError

pytestmark = pytest.mark.slow

BLOCK_SIZE = 2 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Four nodes: the first three take the pipelined writes, the fourth is
    # killed by the dead-target test.
    with NodeCluster(tmp_path_factory.mktemp("blockd"), n=4, block_size_bytes=BLOCK_SIZE) as c:
        yield c
        codes = c.stop_all()
    assert all(code in (0, -signal.SIGKILL) for code in codes), codes


@pytest.fixture
def client():
    with BlockClient() as c:
        yield c


def new_id() -> bytes:
    return os.urandom(16)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def block_file(cluster, i: int, block_id: bytes) -> str:
    name = block_id.hex()
    return os.path.join(cluster.nodes[i]["data"], "blocks", name[:2], name)


def stub(address: str) -> pb_grpc.BlockStub:
    return pb_grpc.BlockStub(grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", 8 << 20), ("grpc.max_receive_message_length", 8 << 20)]))


def header(block_id: bytes, data: bytes, targets=()) -> pb.WriteHeader:
    return pb.WriteHeader(block_id=block_id, length=len(data), checksum=block_checksum(data),
                          chunk_size=CHUNK, chunk_checksums=chunk_checksums(data), targets=list(targets))


def assert_status(call, code: grpc.StatusCode, *words):
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == code, (e.value.code(), e.value.details())
    for word in words:
        assert word in e.value.details(), e.value.details()
    return e.value.details()


def assert_nowhere(cluster, client, block_id: bytes, nodes=range(3)):
    for i in nodes:
        with pytest.raises(CisternError) as e:
            client.info(cluster.addresses[i], block_id)
        assert e.value.errno == errno.ENOENT
        assert not os.path.exists(block_file(cluster, i, block_id))
        assert os.listdir(os.path.join(cluster.nodes[i]["data"], "tmp")) == []


def test_a_pipelined_write_lands_identical_on_all_three_nodes(cluster, client):
    rng = random.Random(3)
    targets = cluster.addresses[:3]
    blocks = {new_id(): rng.randbytes(n) for n in (BLOCK_SIZE, 1_500_001, CHUNK, 1)}
    for block_id, data in blocks.items():
        assert client.write_block(targets, block_id, data) == targets
    for block_id, data in blocks.items():
        for i, address in enumerate(targets):
            with open(block_file(cluster, i, block_id), "rb") as f:
                assert sha(f.read()) == sha(data)
            assert sha(client.read_block(address, block_id, checksum=block_checksum(data))) == sha(data)
            info = client.info(address, block_id)
            assert (info["length"], info["checksum"], info["state"]) == (len(data), block_checksum(data), "final")
    block_id, data = next(iter(blocks.items()))
    for _ in range(30):
        offset = rng.randrange(len(data))
        length = rng.randrange(1, len(data) - offset + 1)
        address = rng.choice(targets)
        assert client.read_block(address, block_id, offset, length) == data[offset:offset + length], \
            (address, offset, length)
    assert client.read_block(targets[0], block_id, len(data) - 3, 1000) == data[-3:]


def test_a_dead_target_is_reported_and_the_others_store_the_block(cluster, client):
    dead = cluster.addresses[3]
    assert cluster.kill(3, signal.SIGKILL) == -signal.SIGKILL
    n1, n2, n3 = cluster.addresses[:3]
    block_id, data = new_id(), os.urandom(700_000)
    results = client.write_block_results([n1, n2, dead], block_id, data)
    assert [(r.address, r.ok) for r in results] == [(n1, True), (n2, True), (dead, False)]
    assert [r.node_id for r in results[:2]] == ["n1", "n2"]
    assert results[2].errno == errno.EAGAIN and "UNAVAILABLE" in results[2].message
    assert client.write_block([n1, n2, dead], new_id(), data) == [n1, n2]
    for address in (n1, n2):
        assert client.read_block(address, block_id) == data
    # A dead node in the middle: the node after it is never reached.
    block_id = new_id()
    results = client.write_block_results([n1, dead, n3], block_id, data)
    assert [r.ok for r in results] == [True, False, False]
    assert results[2].errno == errno.ECANCELED and dead in results[2].message
    assert client.read_block(n1, block_id) == data
    # A dead first target raises: nothing stored anywhere.
    with pytest.raises(CisternError) as e:
        client.write_block([dead, n1], new_id(), data)
    assert e.value.errno == errno.EAGAIN and dead in e.value.message


def test_copy_fetches_a_verified_block_from_a_peer(cluster, client):
    n1, n2, n3 = cluster.addresses[:3]
    block_id, data = new_id(), os.urandom(1_000_000)
    assert client.write_block([n1], block_id, data) == [n1]
    assert client.copy(n2, block_id, n1) == {"length": len(data), "checksum": block_checksum(data),
                                             "already_present": False}
    assert client.read_block(n2, block_id) == data
    assert client.info(n2, block_id)["chunk_checksums"] == chunk_checksums(data)
    assert client.copy(n2, block_id, n1)["already_present"] is True
    with pytest.raises(CisternError) as e:
        client.copy(n3, new_id(), n1)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(CisternError) as e:
        client.copy(n3, block_id, "127.0.0.1:1")
    assert e.value.errno != 0
    assert_nowhere(cluster, client, new_id(), nodes=[2])


def test_a_corrupt_replica_is_refused_on_read_and_quarantined(cluster, client):
    n1, n2 = cluster.addresses[:2]
    block_id, data = new_id(), os.urandom(5 * CHUNK)
    client.write_block([n1, n2], block_id, data)
    with open(block_file(cluster, 1, block_id), "r+b") as f:
        f.seek(3 * CHUNK + 9)
        byte = f.read(1)
        f.seek(3 * CHUNK + 9)
        f.write(bytes([byte[0] ^ 0x40]))
    assert client.read_block(n2, block_id, 0, 3 * CHUNK) == data[:3 * CHUNK]   # untouched range
    with pytest.raises(CisternError) as e:
        client.read_block(n2, block_id, 3 * CHUNK, 10)
    assert e.value.errno == errno.EIO and "sub-chunk 3" in e.value.message
    assert client.read_block(n1, block_id) == data          # the other replica serves
    with pytest.raises(CisternError) as e:
        client.info(n2, block_id)                           # quarantined: no longer served
    assert e.value.errno == errno.ENOENT
    assert client.stat(n2)["checksum_failures"] >= 1


def test_bad_input_on_the_wire_gets_a_clear_status_and_the_node_keeps_serving(cluster, client):
    n1, n2, n3 = cluster.addresses[:3]
    s = stub(n1)
    data = os.urandom(3 * CHUNK + 5)
    unknown = new_id()
    assert_status(lambda: list(s.Read(pb.ReadRequest(block_id=unknown))), grpc.StatusCode.NOT_FOUND, unknown.hex())
    assert_status(lambda: s.Info(pb.InfoRequest(block_id=unknown)), grpc.StatusCode.NOT_FOUND)

    # A wrong checksum, sent down a pipeline: refused, and no node keeps anything.
    bad_sum = new_id()
    h = header(bad_sum, data, [n2, n3])
    h.chunk_checksums[2] ^= 1
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=h, data=data)])), grpc.StatusCode.DATA_LOSS,
                  "sub-chunk 2")
    h = header(bad_sum, data, [n2, n3])
    h.checksum = block_checksum(b"something else")
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=h, data=data)])), grpc.StatusCode.DATA_LOSS,
                  "whole-block")

    # A truncated stream: fewer bytes than announced.
    truncated = new_id()
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=header(truncated, data, [n2]), data=data[:CHUNK])])),
                  grpc.StatusCode.INVALID_ARGUMENT, "stream ended after 65536 of")

    # An oversized chunk (2 MiB in one message; the limit is 1 MiB).
    big = os.urandom(BLOCK_SIZE)
    oversized = new_id()
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=header(oversized, big), data=big)])),
                  grpc.StatusCode.INVALID_ARGUMENT, "limit is 1048576")

    # A block longer than the node's block size.
    too_long = os.urandom(BLOCK_SIZE + 1)
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=header(new_id(), too_long))] +
                                       [pb.WriteChunk(data=too_long[i:i + 2 ** 20])
                                        for i in range(0, len(too_long), 2 ** 20)])),
                  grpc.StatusCode.INVALID_ARGUMENT, "block size")

    # Invalid ids, on every call that takes one.
    for bad_id in (b"", b"short", b"x" * 17):
        assert_status(lambda: s.Write(iter([pb.WriteChunk(header=header(bad_id, data), data=data)])),
                      grpc.StatusCode.INVALID_ARGUMENT, "16 bytes")
        assert_status(lambda: list(s.Read(pb.ReadRequest(block_id=bad_id))), grpc.StatusCode.INVALID_ARGUMENT)
        assert_status(lambda: s.Info(pb.InfoRequest(block_id=bad_id)), grpc.StatusCode.INVALID_ARGUMENT)
        assert_status(lambda: s.Delete(pb.DeleteRequest(block_ids=[bad_id])), grpc.StatusCode.INVALID_ARGUMENT)
        assert_status(lambda: s.Copy(pb.CopyRequest(block_id=bad_id, source=n2)), grpc.StatusCode.INVALID_ARGUMENT)

    # Malformed streams and headers.
    assert_status(lambda: s.Write(iter([])), grpc.StatusCode.INVALID_ARGUMENT, "header")
    assert_status(lambda: s.Write(iter([pb.WriteChunk(data=b"x")])), grpc.StatusCode.INVALID_ARGUMENT, "header")
    h = header(new_id(), data)
    h.chunk_size = 4096
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=h, data=data)])), grpc.StatusCode.INVALID_ARGUMENT,
                  "chunk_size")
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=header(new_id(), data, ["not-an-address"]))])),
                  grpc.StatusCode.INVALID_ARGUMENT, "HOST:PORT")
    h = header(new_id(), data)
    assert_status(lambda: s.Write(iter([pb.WriteChunk(header=h, data=data[:CHUNK]), pb.WriteChunk(header=h)])),
                  grpc.StatusCode.INVALID_ARGUMENT, "header after")
    assert_status(lambda: list(s.Read(pb.ReadRequest(block_id=unknown, offset=5))), grpc.StatusCode.NOT_FOUND)

    for block_id in (bad_sum, truncated, oversized):
        assert_nowhere(cluster, client, block_id)

    # Every node still serves: a good pipelined write and read succeed.
    block_id = new_id()
    assert client.write_block([n1, n2, n3], block_id, data) == [n1, n2, n3]
    assert all(client.read_block(a, block_id) == data for a in (n1, n2, n3))
    assert all(cluster.alive(i) for i in range(3))
    assert client.stat(n1)["writes_refused"] >= 10


def test_a_writer_that_goes_away_mid_stream_leaves_nothing(cluster, client):
    n1, n2 = cluster.addresses[:2]
    block_id, data = new_id(), os.urandom(BLOCK_SIZE)
    sent = []

    def messages():
        yield pb.WriteChunk(header=header(block_id, data, [n2]), data=data[:CHUNK])
        sent.append(1)
        time.sleep(5)    # the call is cancelled meanwhile

    future = stub(n1).Write.future(messages())
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    future.cancel()
    time.sleep(1.0)      # both nodes notice the cancellation and drop their copies
    assert_nowhere(cluster, client, block_id, nodes=[0, 1])
    assert client.write_block([n1, n2], block_id, data) == [n1, n2]   # the id is free again


def test_delete_frees_the_block_on_every_node(cluster, client):
    targets = cluster.addresses[:3]
    block_id = new_id()
    client.write_block(targets, block_id, b"abc" * 1000)
    before = client.stat(targets[0])["used_bytes"]
    assert [client.delete(a, [block_id, new_id()]) for a in targets] == [1, 1, 1]
    assert [client.delete(a, block_id) for a in targets] == [0, 0, 0]
    assert_nowhere(cluster, client, block_id)
    assert client.stat(targets[0])["used_bytes"] == before - 3000


def test_each_node_serves_prometheus_metrics(cluster, client):
    client.write_block(cluster.addresses[:3], new_id(), os.urandom(100_000))
    text = urllib.request.urlopen(f"http://{cluster.nodes[0]['metrics']}/metrics", timeout=5).read().decode()
    for name in ("blockd_stored_bytes", "blockd_stored_blocks", "blockd_write_bytes_total",
                 "blockd_read_bytes_total", "blockd_checksum_failures_total",
                 'blockd_pipeline_latency_seconds_bucket{depth="3"', "blockd_free_bytes"):
        assert name in text, name


def test_sigterm_stops_a_node_cleanly_and_its_blocks_survive_a_restart(tmp_path, client):
    with NodeCluster(tmp_path, n=1) as single:
        address = single.addresses[0]
        block_id, data = new_id(), os.urandom(300_000)
        client.write_block([address], block_id, data)
        pid = single.procs[0].pid
        assert single.kill(0, signal.SIGTERM) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        single.restart(0)
        assert client.read_block(address, block_id) == data
        assert single.stop_all() == [0]
