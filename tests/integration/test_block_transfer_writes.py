"""Block writes over the nodes' transfer ports (blockstore/transfer.py), on
real blockd processes: the pipeline stores identical verified copies, bad
streams are refused with the gRPC path's errnos and leave nothing visible,
a node dying mid-pipeline is reported, and gRPC takes over when a port is
off or unreachable."""

import errno
import os
import signal
import socket
import threading
import time

import pytest

from cistern.blockstore import limits, transfer
from cistern.blockstore.client import BlockClient
from cistern.blockstore.pipeline import TransferDownstream, encode_with_data
from cistern.blockstore.proto import blockstore_pb2 as pb
from cistern.blockstore.store import block_checksum, chunk_checksums
from cistern.blockstore.testing import NodeCluster, local_node
from cistern.core.errors import CisternError
from cistern.metadata.proc_testing import free_port

pytestmark = pytest.mark.slow

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NodeCluster(tmp_path_factory.mktemp("twrite"), n=3, block_size_bytes=16 * MiB) as c:
        yield c
        codes = c.stop_all()
    assert all(code == 0 for code in codes), codes


def _absent_everywhere(client, addresses, block_id):
    for address in addresses:
        with pytest.raises(CisternError) as e:
            client.info(address, block_id)
        assert e.value.errno == errno.ENOENT, e.value


def _header(block_id, data, *, chunk_sums=None, length=None):
    return pb.WriteHeader(block_id=block_id, length=len(data) if length is None else length,
                          checksum=block_checksum(data), chunk_size=limits.chunk_size_bytes,
                          chunk_checksums=chunk_checksums(data) if chunk_sums is None else chunk_sums)


def _transfer_target(client, address):
    return "127.0.0.1", client.stat(address)["transfer_port"]


def test_a_pipeline_of_three_nodes_over_the_transfer_port_stores_identical_verified_copies(cluster):
    block_id, data = os.urandom(16), os.urandom(5 * MiB + 3 * limits.chunk_size_bytes + 11)
    with BlockClient() as client:
        assert client.write_block(cluster.addresses, block_id, data) == cluster.addresses
        assert client.transfer_writes == 1
        infos = [client.info(a, block_id) for a in cluster.addresses]
        assert all(i["state"] == infos[0]["state"] and i["length"] == len(data) for i in infos)
        assert {i["checksum"] for i in infos} == {block_checksum(data)}
        for node in cluster.nodes:
            name = block_id.hex()
            with open(os.path.join(node["data"], "blocks", name[:2], name), "rb") as f:
                assert f.read() == data
        # Writing the same block again is idempotent, and an empty block works too.
        assert client.write_block(cluster.addresses, block_id, data) == cluster.addresses
        empty = os.urandom(16)
        assert client.write_block(cluster.addresses, empty, b"") == cluster.addresses
        assert all(client.read_block(a, empty) == b"" for a in cluster.addresses)
        assert client.transfer_writes == 3


def test_nodes_forward_down_the_pipeline_over_their_transfer_ports(tmp_path):
    """In-process nodes, so that their forwarding clients can be asked."""
    nodes = [local_node(str(tmp_path / f"n{i}"), f"n{i}") for i in range(3)]
    try:
        addresses = [n.rpc_address for n in nodes]
        block_id, data = os.urandom(16), os.urandom(3 * MiB + 5)
        with BlockClient() as client:
            assert client.write_block(addresses, block_id, data) == addresses
        assert [n.service.peers.transfer_writes for n in nodes] == [1, 1, 0]
        assert [n.service.stats.blocks_written for n in nodes] == [1, 1, 1]
        assert all(n.store.info(block_id).checksum == block_checksum(data) for n in nodes)
    finally:
        for n in nodes:
            n.stop()


def test_a_wrong_checksum_is_refused_as_through_grpc_and_nothing_is_left(cluster):
    block_id, data = os.urandom(16), os.urandom(3 * MiB)
    with BlockClient() as fast, BlockClient(transfer_writes=False) as grpc_only:
        got = fast.write_block_results(cluster.addresses, block_id, data, checksum=bytes(16))
        want = grpc_only.write_block_results(cluster.addresses, block_id, data, checksum=bytes(16))
        assert fast.transfer_writes == 1 and grpc_only.transfer_writes == 0
        assert got == want
        assert got[0].errno == errno.EIO and "does not match the whole-block checksum" in got[0].message
        assert [r.errno for r in got[1:]] == [errno.ECANCELED, errno.ECANCELED]
        _absent_everywhere(fast, cluster.addresses, block_id)
        # The nodes keep serving.
        assert fast.write_block(cluster.addresses, block_id, data) == cluster.addresses


def test_a_bad_sub_chunk_is_refused_while_the_stream_still_flows(cluster):
    """The first node refuses at the first bad sub-chunk and replies at once;
    the writer stops sending and gets the error, the node keeps serving."""
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(12 * MiB)
    sums = chunk_checksums(data)
    sums[1] ^= 1
    with BlockClient() as client:
        stream = TransferDownstream(client._transfer.open_write(_transfer_target(client, n1), 60.0),
                                    _header(block_id, data, chunk_sums=sums), data[:MiB], [n1])
        time.sleep(2.0)         # the node has refused the first message by now
        assert not stream.send(encode_with_data(data[MiB:2 * MiB]))     # the early reply stops the writer
        [result] = stream.finish(30.0)
        assert result.errno == errno.EIO and "sub-chunk 1 does not match" in result.message
        _absent_everywhere(client, [n1], block_id)
        assert client.write_block([n1], block_id, data) == [n1]


def test_a_truncated_or_oversized_stream_is_refused_and_the_node_keeps_serving(cluster):
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(2 * MiB)
    with BlockClient() as client:
        target = _transfer_target(client, n1)
        refused = client.stat(n1)["writes_refused"]
        first = encode_with_data(data[:MiB], pb.WriteChunk(header=_header(block_id, data)).SerializeToString())
        # The stream ends cleanly after half the block: EINVAL, as through gRPC.
        stream = client._transfer.open_write(target, 30.0)
        assert stream.send(first)
        with pytest.raises(CisternError) as e:
            stream.finish(30.0)
        assert e.value.errno == errno.EINVAL and "stream ended after 1048576 of 2097152 bytes" in e.value.message
        # The connection breaks mid-stream: the node drops the block.
        with socket.create_connection(target, timeout=10) as s:
            s.sendall(transfer.WRITE.pack(transfer.WRITE_MAGIC, 30000) + transfer.MESSAGE_LEN.pack(len(first))
                      + first + transfer.MESSAGE_LEN.pack(100) + bytes(10))
        # A message longer than the transport takes: EMSGSIZE at once.
        with socket.create_connection(target, timeout=10) as s:
            s.sendall(transfer.WRITE.pack(transfer.WRITE_MAGIC, 30000)
                      + transfer.MESSAGE_LEN.pack(limits.wire_message_bytes_max + 1))
            head = s.recv(transfer.HEAD.size, socket.MSG_WAITALL)
            magic, err, _, _ = transfer.HEAD.unpack(head)
            assert (magic, err) == (transfer.REPLY_MAGIC, errno.EMSGSIZE)
        # Data over the per-message limit inside a valid message: EMSGSIZE too.
        stream = client._transfer.open_write(target, 30.0)
        assert stream.send(encode_with_data(os.urandom(MiB + 1),
                                            pb.WriteChunk(header=_header(block_id, data)).SerializeToString()))
        with pytest.raises(CisternError) as e:
            stream.finish(30.0)
        assert e.value.errno == errno.EINVAL and "the limit is 1048576" in e.value.message
        deadline = time.monotonic() + 10
        while client.stat(n1)["writes_refused"] < refused + 4 and time.monotonic() < deadline:
            time.sleep(0.05)      # the broken stream is noticed by the node's thread
        _absent_everywhere(client, [n1], block_id)
        assert client.write_block([n1], block_id, data) == [n1]
        assert client.read_block(n1, block_id) == data


def test_a_node_killed_mid_pipeline_is_reported_in_the_results(cluster):
    n1, n2, n3 = cluster.addresses
    with BlockClient() as client:
        client.write_block(cluster.addresses, os.urandom(16), os.urandom(MiB))   # n2 knows n3's port
        proc = cluster.procs[2]
        os.kill(proc.pid, signal.SIGSTOP)
        block_id, data = os.urandom(16), os.urandom(16 * MiB)
        out = []
        writer = threading.Thread(target=lambda: out.append(client.write_block_results(cluster.addresses,
                                                                                       block_id, data)))
        writer.start()
        time.sleep(1.5)          # the stream is under way, stuck on n3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        writer.join(120)
        assert not writer.is_alive()
        results = out[0]
        assert [r.address for r in results] == cluster.addresses
        assert results[0].ok and results[1].ok, results
        assert results[2].errno == errno.EAGAIN and "transfer connection broke" in results[2].message, results[2]
        assert client.read_block(n1, block_id) == data and client.read_block(n2, block_id) == data
        cluster.restart(2)
        _absent_everywhere(client, [n3], block_id)
        assert client.write_block(cluster.addresses, os.urandom(16), os.urandom(MiB)) == cluster.addresses


def test_writes_fall_back_to_grpc_when_the_port_is_off_or_unreachable(cluster, tmp_path):
    on1 = cluster.addresses[0]
    with NodeCluster(tmp_path / "off", n=2, block_size_bytes=16 * MiB,
                     extra_args=["--transfer-port", "off"]) as off, BlockClient() as client:
        block_id, data = os.urandom(16), os.urandom(2 * MiB + 7)
        assert client.write_block(off.addresses, block_id, data) == off.addresses
        assert client.transfer_writes == 0
        # A node with a port forwards through gRPC to one without.
        mixed = [on1, off.addresses[0]]
        other = os.urandom(16)
        assert client.write_block(mixed, other, data) == mixed and client.transfer_writes == 1
        assert client.read_block(off.addresses[0], other) == data
        # A stale port: gRPC this time, the port is asked for again next time.
        real = client.stat(on1)["transfer_port"]
        client._transfer_ports[on1] = (free_port(), 0.0)
        third = os.urandom(16)
        assert client.write_block([on1], third, data) == [on1] and client.transfer_writes == 1
        assert client.write_block([on1], os.urandom(16), data) == [on1] and client.transfer_writes == 2
        assert client._transfer_ports[on1][0] == real
        assert client.read_block(on1, third) == data
        assert all(code == 0 for code in off.stop_all())


def test_a_node_out_of_transfer_connections_is_written_through_grpc(cluster):
    """A node serving ``transfer_connections_max`` connections refuses more
    with EAGAIN; the client then writes the block through gRPC."""
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(2 * MiB + 3)
    with BlockClient() as client:
        target = _transfer_target(client, n1)
        held = [socket.create_connection(target, timeout=10) for _ in range(limits.transfer_connections_max)]
        try:
            time.sleep(0.5)       # every one accepted by the node
            assert client.write_block([n1], block_id, data) == [n1]
            assert client.transfer_writes == 1       # tried, refused, then gRPC
        finally:
            for s in held:
                s.close()
        assert client.read_block(n1, block_id) == data
