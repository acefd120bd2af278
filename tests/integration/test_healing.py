"""Healing end to end with real processes: three metad replicas (which host
the Nodes service and its healing monitor) and real ``cistern node``
processes reporting to them. Files are written the way the client's write
path will (OPEN_LEASE, Allocate, a pipelined write_block per block,
COMMIT_WRITE), without the client's file object.

Timings are shortened through the metad's CISTERN_NODES_* environment
(NodesConf.from_env) and the nodes' small block size."""

from __future__ import annotations

import os
import time

import pytest

from cistern.blockstore.client import BlockClient
from cistern.blockstore.store import block_checksum
from cistern.core.errors import CisternError
from cistern.metadata import model
from cistern.metadata.model import ROOT_CRED, TIME_NOW, Op
from cistern.metadata.nodes_client import NodesClient
from cistern.blockstore.testing import StorageCluster

pytestmark = [pytest.mark.timeout(90)]

BLOCK = 256 << 10
NODES_ENV = {
    "CISTERN_NODES_HEARTBEAT_INTERVAL_S": "0.2",
    "CISTERN_NODES_NODE_DEAD_AFTER_S": "2.0",
    "CISTERN_NODES_MONITOR_INTERVAL_S": "0.2",
    "CISTERN_NODES_ORPHAN_GRACE_S": "2.0",
    "CISTERN_NODES_REPLICATION_TIMEOUT_S": "10",
}
HEAL_TIMEOUT_S = 30.0


class Cluster(StorageCluster):
    """A MetaCluster plus storage node processes; ``stop()`` ends them all."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path, block_size=BLOCK, env=NODES_ENV, node_log_level="INFO")
        self.mc = self.meta.client(timeout_s=20)
        self.nc = NodesClient(self.meta.addresses, timeout_s=20)
        self.blocks = BlockClient()

    def stop(self) -> None:
        for closeable in (self.blocks, self.nc, self.mc):
            closeable.close()
        super().stop()

    # -- the metadata side ---------------------------------------------------------------

    def call(self, code, *args):
        return self.mc.call(code, model.encode_args(ROOT_CRED, *args))

    def live_nodes(self) -> dict:
        return {n.node_id: n for n in self.nc.nodes().nodes}

    def wait_live(self, node_ids, timeout_s: float = 20.0) -> None:
        """Until exactly these nodes are live with their full reports in."""
        wait_for(lambda: {k for k, n in self.live_nodes().items() if n.full_report} == set(node_ids),
                 timeout_s, f"live nodes {sorted(node_ids)}")

    def layout(self, path: bytes) -> list:
        _, layout, _ = self.call(Op.GET_LAYOUT, path)
        return layout

    # -- writing and reading like the client will ----------------------------------------------

    def write_blocks(self, data: bytes, *, replication: int = 3) -> list:
        """Allocate and write every block of data down its pipeline; the
        layout to commit: [[block_id, length, checksum, [node ids]], ...]."""
        pieces = [data[i:i + BLOCK] for i in range(0, len(data), BLOCK)]
        layout = []
        for (block_id, targets), piece in zip(self.nc.allocate(len(pieces), replication=replication,
                                                               block_size_bytes=BLOCK), pieces):
            written = self.blocks.write_block([address for _, address in targets], block_id, piece,
                                              timeout_s=20)
            assert len(written) == len(targets), (written, targets)
            layout.append([block_id, len(piece), block_checksum(piece), [node_id for node_id, _ in targets]])
        assert len(layout) == len(pieces)
        return layout

    def write_file(self, path: bytes, data: bytes, *, replication: int = 3) -> list:
        self.call(Op.CREATE, path, 0o644, False)
        ino, lease_id = self.call(Op.OPEN_LEASE, path, b"test-writer")
        layout = self.write_blocks(data, replication=replication)
        self.call(Op.COMMIT_WRITE, ino, lease_id, layout, len(data), TIME_NOW)
        self.call(Op.RELEASE_LEASE, ino, lease_id)
        return layout

    def read_file(self, path: bytes, *, avoid=()) -> bytes:
        """Every block from the first listed live replica not in ``avoid``."""
        out = []
        for block_id, length, checksum, node_ids in self.layout(path):
            for node_id in node_ids:
                if node_id in avoid:
                    continue
                try:
                    out.append(self.blocks.read_block(self.address(node_id), block_id, checksum=checksum,
                                                      timeout_s=10))
                    break
                except CisternError:
                    continue
            else:
                raise AssertionError(f"block {block_id.hex()} unreadable from {node_ids} (avoiding {avoid})")
        return b"".join(out)

    def healthy(self, path: str, replicas: int) -> bool:
        """fsck is complete and finds nothing wrong, and every block of the
        file lists ``replicas`` nodes."""
        reply = self.nc.fsck(path)
        if not reply.complete or reply.files or reply.at_risk:
            return False
        return all(len(nodes) == replicas for _, _, _, nodes in self.layout(path.encode()))

    def holds(self, node_id: str, block_id: bytes) -> bool:
        try:
            self.blocks.info(self.address(node_id), block_id)
            return True
        except CisternError:
            return False


def wait_for(predicate, timeout_s: float = HEAL_TIMEOUT_S, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return
        except CisternError:
            pass   # an election or a node restarting: ask again
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def test_node_killed_reads_survive_and_blocks_heal_onto_a_fourth_node(cluster):
    for node_id in ("n1", "n2", "n3"):
        cluster.start_node(node_id)
    cluster.wait_live({"n1", "n2", "n3"})
    data = os.urandom(3 * BLOCK + 1000)
    cluster.write_file(b"/a", data)
    wait_for(lambda: cluster.healthy("/a", 3), what="3 healthy replicas")

    cluster.kill_node("n3")
    assert cluster.read_file(b"/a", avoid={"n3"}) == data
    cluster.start_node("n4")
    wait_for(lambda: cluster.healthy("/a", 3) and all(set(nodes) == {"n1", "n2", "n4"}
                                                      for *_, nodes in cluster.layout(b"/a")),
             what="every block back to 3 replicas on n1, n2, n4")
    assert cluster.read_file(b"/a", avoid={"n1", "n2"}) == data   # n4's copies are whole


def test_two_live_nodes_hold_two_replicas_and_a_returning_node_restores_three(cluster):
    cluster.start_node("n1")
    cluster.start_node("n2")
    cluster.wait_live({"n1", "n2"})
    data = os.urandom(2 * BLOCK)
    layout = cluster.write_file(b"/b", data)
    assert all(len(nodes) == 2 for *_, nodes in layout)
    wait_for(lambda: all(len(nodes) == 2 for *_, nodes in cluster.layout(b"/b"))
             and cluster.nc.fsck("/b").complete, what="a complete fsck")
    assert [p.states for f in cluster.nc.fsck("/b").files for p in f.problems] == [["under"], ["under"]]

    cluster.start_node("n3")
    wait_for(lambda: cluster.healthy("/b", 3), what="3 replicas once n3 is up")
    assert cluster.read_file(b"/b", avoid={"n1", "n2"}) == data


def test_a_flipped_byte_is_detected_reported_dropped_and_replaced(cluster):
    for node_id in ("n1", "n2", "n3"):
        cluster.start_node(node_id)
    cluster.wait_live({"n1", "n2", "n3"})
    data = os.urandom(BLOCK)
    cluster.write_file(b"/c", data)
    wait_for(lambda: cluster.healthy("/c", 3), what="3 healthy replicas")
    (block_id, _, checksum, _), = cluster.layout(b"/c")

    hex_id = block_id.hex()
    path = os.path.join(cluster.nodes["n2"]["data"], "blocks", hex_id[:2], hex_id)
    with open(path, "r+b") as f:
        f.seek(1234)
        byte = f.read(1)
        f.seek(1234)
        f.write(bytes([byte[0] ^ 0xFF]))

    with pytest.raises(CisternError):   # n2 finds it corrupt, quarantines and reports it
        cluster.blocks.read_block(cluster.address("n2"), block_id, timeout_s=10)
    assert cluster.read_file(b"/c", avoid={"n2"}) == data
    # The only node without a good copy is n2 itself: the block comes back to it.
    wait_for(lambda: cluster.healthy("/c", 3) and cluster.holds("n2", block_id),
             what="the bad replica replaced")
    assert cluster.blocks.read_block(cluster.address("n2"), block_id, checksum=checksum) == data
    quarantined = os.listdir(os.path.join(cluster.nodes["n2"]["data"], "quarantine"))
    assert any(name.startswith(hex_id) for name in quarantined)


def test_orphans_are_deleted_after_the_grace_and_a_removed_file_frees_its_blocks(cluster):
    for node_id in ("n1", "n2", "n3"):
        cluster.start_node(node_id)
    cluster.wait_live({"n1", "n2", "n3"})
    orphans = cluster.write_blocks(os.urandom(BLOCK + 10))        # written, never committed
    kept = cluster.write_file(b"/kept", os.urandom(BLOCK))
    removed = cluster.write_file(b"/gone", os.urandom(2 * BLOCK))
    wait_for(lambda: cluster.healthy("/gone", 3), what="3 healthy replicas")

    cluster.call(Op.UNLINK, b"/gone")
    doomed = [(block_id, node_ids) for block_id, _, _, node_ids in orphans + removed]
    wait_for(lambda: not any(cluster.holds(n, b) for b, node_ids in doomed for n in node_ids),
             what="orphan and freed blocks deleted on every node")
    wait_for(lambda: cluster.call(Op.FREED_SCAN, None, 100)[0] == [], what="freed blocks forgotten")
    for block_id, _, _, node_ids in kept:
        assert all(cluster.holds(n, block_id) for n in node_ids)
