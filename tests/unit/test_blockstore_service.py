"""The reporter seam of an in-process node: every stored, deleted and
corrupt block reaches the hooks the metadata side will implement."""

import errno
import os

import pytest

from cistern.blockstore.client import BlockClient
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
