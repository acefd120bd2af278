"""The reporter seam of an in-process node: every stored, deleted and
corrupt block reaches the hooks the metadata side will implement."""

import errno
import os

import pytest

from cistern.blockstore.client import BlockClient
from cistern.blockstore.proto import blockstore_pb2 as pb
from cistern.blockstore.service import NullReporter
from cistern.blockstore.testing import local_node
from cistern.core.errors import CisternError


class RecordingReporter(NullReporter):
    def __init__(self):
        self.events = []

    def start(self, node):
        self.events.append(("start", node.node_id))

    def stop(self):
        self.events.append(("stop",))

    def block_stored(self, block_id, length):
        self.events.append(("stored", block_id, length))

    def blocks_deleted(self, block_ids):
        self.events.append(("deleted", tuple(block_ids)))

    def block_corrupt(self, block_id, message):
        self.events.append(("corrupt", block_id))


def test_the_reporter_hears_of_every_stored_deleted_and_corrupt_block(tmp_path):
    reporter = RecordingReporter()
    node = local_node(str(tmp_path / "n1"), "n1", reporter=reporter, block_size_bytes=1 << 20)
    client = BlockClient()
    try:
        a, b = os.urandom(16), os.urandom(16)
        assert client.write_block([node.rpc_address], a, b"a" * 1000) == [node.rpc_address]
        client.write_block([node.rpc_address], b, b"b" * 70_000)
        assert client.delete(node.rpc_address, [a, os.urandom(16)]) == 1
        with open(node.store.block_path(b), "r+b") as f:
            f.write(b"X")
        with pytest.raises(CisternError) as e:
            client.read_block(node.rpc_address, b)
        assert e.value.errno == errno.EIO
        with pytest.raises(CisternError) as e:   # longer than this node's block size
            client.write_block([node.rpc_address], os.urandom(16), b"c" * ((1 << 20) + 1))
        assert e.value.errno == errno.EINVAL and "block size" in e.value.message
    finally:
        client.close()
        node.stop()
    assert reporter.events == [("start", "n1"), ("stored", a, 1000), ("stored", b, 70_000),
                               ("deleted", (a,)), ("corrupt", b), ("stop",)]


def test_a_block_size_that_is_not_whole_sub_chunks_is_refused(tmp_path):
    from cistern.blockstore.server import NodeServer

    with pytest.raises(CisternError) as e:
        NodeServer("n1", "127.0.0.1:0", str(tmp_path), block_size_bytes=1000)
    assert e.value.errno == errno.EINVAL


def test_a_whole_block_read_against_the_layout_takes_every_byte_once_in_order(tmp_path):
    """With the layout's checksum the client does not hash the block a second
    time; what stands in for that pass is that each byte arrives once, in
    order, in sub-chunks matching the index entry that is the layout's block.
    Replies that each verify but repeat or skip a range are refused."""
    from cistern.blockstore.store import block_checksum

    node = local_node(str(tmp_path / "n1"), "n1", block_size_bytes=4 << 20)
    client = BlockClient()
    try:
        block_id, data = os.urandom(16), os.urandom(3 << 20)
        client.write_block([node.rpc_address], block_id, data)
        checksum = block_checksum(data)
        pieces, actual, sums = client.read_pieces(node.rpc_address, block_id, checksum=checksum)
        assert bytes(pieces) == data and actual == checksum and len(sums) == len(data) >> 16
        with pytest.raises(CisternError) as e:   # the index entry is another block's
            client.read_pieces(node.rpc_address, block_id, checksum=block_checksum(b"other"))
        assert e.value.errno == errno.EBADMSG and "not the expected block" in e.value.message

        honest = client._unverified_replies
        replies = list(honest(node.rpc_address, block_id, pb.ReadRequest(block_id=block_id), 30))
        assert len(replies) >= 2, "the test needs a block that arrives in several replies"
        for tampered in ([replies[0]] + replies[:-1],          # the first reply twice, the last missing
                         [replies[1], replies[0]] + replies[2:]):   # two replies swapped
            client._unverified_replies = lambda *args, tampered=tampered: iter(tampered)
            with pytest.raises(CisternError) as e:
                client.read_pieces(node.rpc_address, block_id, checksum=checksum)
            assert e.value.errno == errno.EBADMSG and "expected" in e.value.message
    finally:
        client.close()
        node.stop()
