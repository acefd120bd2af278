"""Block reads over the node's transfer port (blockstore/transfer.py), on
real blockd processes: the same bytes and errors as gRPC Read, a fallback to
gRPC when the port cannot be reached, and bad bytes on the port neither
crash the node nor stop it serving."""

import errno
import os
import signal
import socket
import struct
import threading
import time

import pytest

from cistern.blockstore import transfer
from cistern.blockstore.client import BlockClient
from cistern.blockstore.testing import NodeCluster
from cistern.core.errors import CisternError
from cistern.metadata.proc_testing import free_port

pytestmark = pytest.mark.slow

CHUNK = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NodeCluster(tmp_path_factory.mktemp("transfer"), n=2, block_size_bytes=4 << 20) as c:
        yield c
        codes = c.stop_all()
    assert all(code == 0 for code in codes), codes


def test_reads_over_the_transfer_port_return_what_grpc_returns(cluster):
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(3 * (1 << 20) + 5 * CHUNK + 77)
    with BlockClient() as fast, BlockClient(transfer=False) as grpc_only:
        fast.write_block([n1], block_id, data)
        assert fast.stat(n1)["transfer_port"] > 0
        for offset, length in ((0, None), (0, len(data)), (CHUNK + 3, 2 * (1 << 20)), (len(data) - 5, 5),
                               (CHUNK, 0), (len(data), None)):
            want = data[offset:] if length is None else data[offset:offset + length]
            assert fast.read_block(n1, block_id, offset, length) == want
            assert grpc_only.read_block(n1, block_id, offset, length) == want
        pieces, checksum, sums = fast.read_pieces(n1, block_id)
        assert bytes(pieces) == data and (checksum, sums) == grpc_only.read_pieces(n1, block_id)[1:]
        empty = os.urandom(16)
        fast.write_block([n1], empty, b"")
        assert bytes(fast.read_pieces(n1, empty)[0]) == b""
        assert fast.transfer_reads >= 8 and grpc_only.transfer_reads == 0
        for args in ((os.urandom(16),), (block_id, len(data) + 1, 4)):
            with pytest.raises(CisternError) as fast_err:
                fast.read_block(n1, *args)
            with pytest.raises(CisternError) as grpc_err:
                grpc_only.read_block(n1, *args)
            assert fast_err.value.errno == grpc_err.value.errno and fast_err.value.errno in (errno.ENOENT, errno.EINVAL)
            assert fast_err.value.message == grpc_err.value.message


def corrupt_on_n2(cluster, client, at: int) -> tuple[bytes, bytes]:
    """A 40-sub-chunk block written to both nodes, two bytes at ``at``
    flipped in n2's file: (block id, the bytes written)."""
    block_id, data = os.urandom(16), os.urandom(40 * CHUNK)
    client.write_block(cluster.addresses, block_id, data)
    name = block_id.hex()
    with open(os.path.join(cluster.nodes[1]["data"], "blocks", name[:2], name), "r+b") as f:
        f.seek(at)
        f.write(b"\x00\xff")
    return block_id, data


def test_a_corrupt_block_fails_over_the_transfer_port_and_is_quarantined(cluster):
    n1, n2 = cluster.addresses
    with BlockClient() as client:
        block_id, data = corrupt_on_n2(cluster, client, 20 * CHUNK + 1)
        with pytest.raises(CisternError) as e:
            client.read_pieces(n2, block_id)
        assert e.value.errno == errno.EIO and "sub-chunk 20" in e.value.message
        assert client.transfer_reads >= 1
        assert bytes(client.read_pieces(n1, block_id)[0]) == data
        with pytest.raises(CisternError) as e:
            client.info(n2, block_id)      # quarantined
        assert e.value.errno == errno.ENOENT


def test_a_reader_that_verifies_gets_unchecked_bytes_and_the_node_keeps_the_block(cluster):
    """``node_verifies=False`` (a client that checks every sub-chunk and
    reports a bad replica to the leader): the node sends the bytes without
    hashing them, the client still refuses the corrupt sub-chunk, and the
    node neither counts nor quarantines it (the leader's healing replaces
    it once told); a default read still fails on the node, which
    quarantines it."""
    n2 = cluster.addresses[1]
    with BlockClient() as client:
        block_id, data = corrupt_on_n2(cluster, client, 33 * CHUNK + 7)
        failures = client.stat(n2)["checksum_failures"]
        for read in (lambda: client.read_pieces(n2, block_id, node_verifies=False),
                     lambda: client.read_block(n2, block_id, 33 * CHUNK, 10, node_verifies=False)):
            with pytest.raises(CisternError) as e:
                read()
            assert e.value.errno == errno.EBADMSG and "sub-chunk 33 arrived corrupt" in e.value.message
        assert client.transfer_reads >= 2
        assert client.read_block(n2, block_id, 0, 33 * CHUNK, node_verifies=False) == data[:33 * CHUNK]
        assert client.info(n2, block_id)["length"] == len(data)       # still there
        assert client.stat(n2)["checksum_failures"] == failures
        with pytest.raises(CisternError) as e:
            client.read_pieces(n2, block_id)
        assert e.value.errno == errno.EIO and "sub-chunk 33" in e.value.message
        with pytest.raises(CisternError) as e:
            client.info(n2, block_id)      # quarantined
        assert e.value.errno == errno.ENOENT


def test_an_unreachable_transfer_port_falls_back_to_grpc_and_is_asked_again(cluster):
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(2 * CHUNK)
    with BlockClient() as client:
        client.write_block([n1], block_id, data)
        real = client.stat(n1)["transfer_port"]
        client._transfer_ports[n1] = (free_port(), 0.0)     # a port nobody listens on: a stale answer
        assert client.read_block(n1, block_id) == data       # through gRPC
        assert client.transfer_reads == 0
        assert client.read_block(n1, block_id) == data       # the port was asked for again
        assert client.transfer_reads == 1 and client._transfer_ports[n1][0] == real


def test_bad_bytes_on_the_transfer_port_leave_the_node_serving(cluster):
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(3 * CHUNK)
    with BlockClient() as client:
        client.write_block([n1], block_id, data)
        target = ("127.0.0.1", client.stat(n1)["transfer_port"])
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64), b"CBR1", b""):
            with socket.create_connection(target, timeout=10) as s:
                try:
                    s.sendall(junk)
                    s.shutdown(socket.SHUT_WR)
                    assert s.recv(100) == b""                # closed without an answer
                except (ConnectionResetError, BrokenPipeError):
                    pass                                     # (or reset: unread junk was left)
                except OSError as e:                         # the node closed before our shutdown
                    assert e.errno == errno.ENOTCONN, e
        # A reader that asks and goes away mid-stream.
        with socket.create_connection(target, timeout=10) as s:
            s.sendall(transfer.REQUEST.pack(transfer.REQUEST_MAGIC, 0, block_id, 0, 0))
            assert s.recv(4) == transfer.REPLY_MAGIC
        assert client.read_block(n1, block_id) == data and client.transfer_reads >= 1


def test_the_client_verifies_what_arrives_over_the_transfer_port(cluster):
    """A node (here a fake transfer server) whose bytes do not match the
    checksums it sends: the client raises EBADMSG naming the sub-chunk."""
    data = os.urandom(4 * CHUNK)
    sums = [1, 2, 3, 4]   # wrong on purpose

    class Info:
        length, checksum = len(data), bytes(16)

    server = transfer.TransferServer(lambda block_id, offset, length, verify: (Info, iter([(0, data, sums)])),
                                     "127.0.0.1").start()
    try:
        n1 = cluster.addresses[0]
        with BlockClient() as client:
            client._transfer_ports[n1] = (server.port, 0.0)
            with pytest.raises(CisternError) as e:
                client.read_block(n1, os.urandom(16))
            assert e.value.errno == errno.EBADMSG and "sub-chunk 0 arrived corrupt" in e.value.message
    finally:
        server.stop()


def test_a_read_sets_its_receive_timeout_once_not_per_frame(cluster, monkeypatch):
    """setsockopt holds the GIL (and runs the socket's backlog): a read that
    streams many frames quickly arms the kernel's timeout when it starts,
    and again only after ``transfer_deadline_slack_s``."""
    n1 = cluster.addresses[0]
    block_id, data = os.urandom(16), os.urandom(4 << 20)
    armed = []
    real = transfer._set_deadline
    monkeypatch.setattr(transfer, "_set_deadline", lambda *a, **k: (armed.append(a[1]), real(*a, **k)))
    monkeypatch.setattr(transfer.limits, "transfer_deadline_slack_s", 60.0)
    with BlockClient() as client:
        client.write_block([n1], block_id, data)
        armed.clear()     # the write's own (transfer writes arm theirs too)
        assert bytes(client.read_pieces(n1, block_id)[0]) == data and client.transfer_reads == 1
    assert len(armed) == 1


def test_a_transfer_port_that_stalls_mid_reply_times_out(cluster):
    """A node that answers the head and then sends nothing: the read ends
    with ETIMEDOUT at the caller's deadline instead of hanging."""
    listener = socket.create_server(("127.0.0.1", 0))
    held = []

    def stall():
        conn, _ = listener.accept()
        held.append(conn)
        conn.recv(transfer.REQUEST.size)
        conn.sendall(transfer.HEAD.pack(transfer.REPLY_MAGIC, 0, 4 * CHUNK, bytes(16)))

    thread = threading.Thread(target=stall, daemon=True)
    thread.start()
    try:
        n1 = cluster.addresses[0]
        with BlockClient() as client:
            client._transfer_ports[n1] = (listener.getsockname()[1], 0.0)
            started = time.monotonic()
            with pytest.raises(CisternError) as e:
                client.read_block(n1, os.urandom(16), timeout_s=1.0)
            assert e.value.errno == errno.ETIMEDOUT and 0.9 <= time.monotonic() - started < 10
    finally:
        thread.join(10)
        for conn in held:
            conn.close()
        listener.close()


def test_errno_mapping_matches_the_grpc_path():
    assert transfer.errno_seen_by_client(errno.EBADMSG) == errno.EIO
    assert transfer.errno_seen_by_client(errno.ENOENT) == errno.ENOENT
    assert transfer.errno_seen_by_client(errno.EINVAL) == errno.EINVAL
    assert struct.calcsize(">4sB16sQQ") == transfer.REQUEST.size


def test_the_transfer_port_can_be_fixed_or_turned_off(tmp_path):
    port = free_port()
    with NodeCluster(tmp_path / "fixed", n=1, block_size_bytes=4 << 20,
                     extra_args=["--transfer-port", str(port)]) as fixed, \
            NodeCluster(tmp_path / "off", n=1, block_size_bytes=4 << 20,
                        extra_args=["--transfer-port", "off"]) as off:
        block_id, data = os.urandom(16), os.urandom(2 * (1 << 20) + 9)
        with BlockClient() as client:
            assert client.stat(fixed.addresses[0])["transfer_port"] == port
            client.write_block([fixed.addresses[0]], block_id, data)
            assert client.read_block(fixed.addresses[0], block_id) == data
            assert client.transfer_reads == 1
            assert "transfer_port" not in client.stat(off.addresses[0])
            client.write_block([off.addresses[0]], block_id, data)
            assert client.read_block(off.addresses[0], block_id) == data     # through gRPC
            assert client.transfer_reads == 1


def test_a_bad_transfer_port_is_a_one_line_error(tmp_path):
    from cistern.metadata.proc_testing import cistern_command
    import subprocess

    done = subprocess.run(cistern_command() + ["node", "--id", "n1", "--data", str(tmp_path), "--listen",
                                               f"127.0.0.1:{free_port()}", "--transfer-port", "70000"],
                          capture_output=True, timeout=60)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "'70000' is not a port number (0-65535) or off" in err and "Traceback" not in err
