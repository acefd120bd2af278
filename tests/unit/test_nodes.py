"""Exact-output tests of the leader's node registry (metadata/nodes.py),
driven by a manual clock."""

import pytest

from cistern.metadata.nodes import Delete, NodeLost, NodeRegistry, NodeReturned, Replicate

GiB = 1 << 30


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def beat(reg, node_id, now, used=0, failed=()):
    return reg.heartbeat(node_id, f"{node_id}:7000", 100 * GiB, used, 0, now, failed)


@pytest.fixture
def reg():
    return NodeRegistry(dead_after_s=10.0)


def test_first_heartbeat_registers_and_asks_for_a_full_report(reg):
    assert reg.needs_full_report("n1")
    assert beat(reg, "n1", 0.0) == []
    assert [n.node_id for n in reg.live_nodes()] == ["n1"]
    assert reg.needs_full_report("n1") and reg.ready_nodes() == [] and not reg.settled()
    assert reg.block_report("n1", True, [(bid(1), 10)], [], 0.5)
    assert not reg.needs_full_report("n1") and reg.settled()
    assert [n.node_id for n in reg.ready_nodes()] == ["n1"]
    assert reg.address("n1") == "n1:7000"


def test_a_report_from_an_unregistered_node_is_refused(reg):
    assert not reg.block_report("ghost", True, [(bid(1), 1)], [], 0.0)
    assert reg.holders(bid(1)) == frozenset()


def test_full_report_in_parts_then_incremental_reports(reg):
    beat(reg, "n1", 0.0)
    reg.block_report("n1", True, [(bid(1), 10)], [], 0.0, more=True)
    assert reg.needs_full_report("n1") is False and reg.ready_nodes() == []
    reg.block_report("n1", False, [(bid(2), 10)], [], 0.1)
    assert [n.node_id for n in reg.ready_nodes()] == ["n1"]
    reg.block_report("n1", False, [(bid(3), 5)], [bid(1)], 0.2)
    assert sorted(reg.block_ids()) == [bid(2), bid(3)]
    # a new full report replaces everything the node held
    reg.block_report("n1", True, [(bid(9), 5)], [], 0.3)
    assert reg.block_ids() == [bid(9)] and reg.node("n1").blocks == {bid(9): 5}


def test_silent_node_is_lost_after_the_timeout_and_forgotten(reg):
    beat(reg, "n1", 0.0)
    beat(reg, "n2", 0.0)
    reg.block_report("n1", True, [(bid(1), 10)], [], 0.0)
    reg.block_report("n2", True, [(bid(1), 10)], [], 0.0)
    beat(reg, "n2", 8.0)
    assert reg.tick(10.0) == []                 # exactly the timeout: not yet
    assert reg.tick(10.5) == [NodeLost("n1")]
    assert reg.holders(bid(1)) == {"n2"}
    assert [n.node_id for n in reg.live_nodes()] == ["n2"]
    assert reg.tick(11.0) == []                 # reported once
    assert reg.tick(18.5) == [NodeLost("n2")]


def test_a_lost_node_that_comes_back_is_new_and_reports_again(reg):
    beat(reg, "n1", 0.0)
    reg.block_report("n1", True, [(bid(1), 10)], [], 0.0)
    assert reg.tick(11.0) == [NodeLost("n1")]
    beat(reg, "n1", 12.0)
    assert reg.tick(12.0) == [NodeReturned("n1")]
    assert reg.needs_full_report("n1") and reg.holders(bid(1)) == frozenset()
    reg.block_report("n1", True, [(bid(1), 10)], [], 12.0)
    assert reg.holders(bid(1)) == {"n1"}


def test_expected_nodes_unsettle_until_heard_or_lost(reg):
    beat(reg, "n1", 0.0)
    reg.block_report("n1", True, [], [], 0.0)
    reg.expect("n9", 1.0)
    reg.expect("n1", 1.0)                       # already known: no effect
    assert not reg.settled() and [n.node_id for n in reg.live_nodes()] == ["n1"]
    beat(reg, "n1", 9.0)
    assert reg.tick(11.5) == [NodeLost("n9")]
    assert reg.settled()
    reg.expect("n9", 12.0)                      # lost ones are not expected again
    assert reg.settled()


def test_instructions_are_queued_and_handed_out_in_heartbeats(reg):
    beat(reg, "n1", 0.0)
    beat(reg, "n2", 0.0)
    for n in (1, 2, 3):
        reg.block_report("n2", n == 1, [(bid(n), 10)], [], 0.0)
    reg.queue_replicate("n1", Replicate(bid(1), "n2", "n2:7000"), 0.0)
    reg.queue_delete("n2", bid(2))
    reg.queue_delete("n2", bid(3))
    assert reg.pending_targets(bid(1)) == {"n1"}
    assert reg.replications_in_flight() == {"n1": 1, "n2": 1}
    assert reg.holders(bid(2)) == frozenset() and reg.deleting(bid(2)) == {"n2"}
    assert beat(reg, "n1", 1.0) == [Replicate(bid(1), "n2", "n2:7000")]
    assert beat(reg, "n1", 2.0) == []
    assert beat(reg, "n2", 1.0) == [Delete((bid(2), bid(3)))]
    # the replica arriving ends the replication; a removal confirms the delete
    reg.block_report("n1", False, [(bid(1), 10)], [], 2.0)
    assert reg.pending_replications() == 0 and reg.holders(bid(1)) == {"n1", "n2"}
    reg.block_report("n2", False, [], [bid(2)], 2.0)
    assert reg.deleting(bid(2)) == frozenset() and reg.deleting(bid(3)) == {"n2"}
    # a full report without the block confirms it too
    reg.block_report("n2", True, [(bid(1), 10)], [], 3.0)
    assert reg.deleting(bid(3)) == frozenset()


def test_heartbeat_reply_is_bounded_and_deletes_are_coalesced():
    reg = NodeRegistry(dead_after_s=10.0, instructions_per_heartbeat_max=2, delete_ids_per_instruction_max=2)
    beat(reg, "n1", 0.0)
    reg.block_report("n1", True, [(bid(n), 1) for n in range(5)], [], 0.0)
    for n in range(5):
        reg.queue_delete("n1", bid(n))
    assert beat(reg, "n1", 1.0) == [Delete((bid(0), bid(1))), Delete((bid(2), bid(3)))]
    assert beat(reg, "n1", 2.0) == [Delete((bid(4),))]


def test_failed_and_timed_out_replications_are_forgotten(reg):
    beat(reg, "n1", 0.0)
    beat(reg, "n2", 0.0)
    reg.queue_replicate("n1", Replicate(bid(1), "n2", "n2:7000"), 0.0)
    reg.queue_replicate("n1", Replicate(bid(2), "n2", "n2:7000"), 0.0)
    beat(reg, "n1", 1.0, failed=[bid(1)])
    assert reg.pending_targets(bid(1)) == frozenset() and reg.pending_targets(bid(2)) == {"n1"}
    beat(reg, "n1", 5.0)
    beat(reg, "n2", 5.0)
    reg.tick(6.0, replication_timeout_s=5.0)
    assert reg.pending_replications() == 0


def test_corrupt_marks_need_a_holder_and_go_with_the_replica(reg):
    beat(reg, "n1", 0.0)
    reg.block_report("n1", True, [(bid(1), 10)], [], 0.0)
    reg.report_corrupt(bid(1), "n2")            # n2 holds nothing: ignored
    reg.report_corrupt(bid(1), "n1")
    assert reg.corrupt(bid(1)) == {"n1"}
    reg.block_report("n1", False, [], [bid(1)], 1.0)
    assert reg.corrupt(bid(1)) == frozenset()


def test_orphan_candidates_are_blocks_first_seen_before_the_grace(reg):
    beat(reg, "n1", 0.0)
    reg.block_report("n1", True, [(bid(1), 1)], [], 0.0)
    reg.block_report("n1", False, [(bid(2), 1)], [], 50.0)
    beat(reg, "n1", 99.0)
    assert reg.orphan_candidates(100.0, 60.0, 10) == [bid(1)]
    assert reg.orphan_candidates(200.0, 60.0, 10) == [bid(1), bid(2)]
    assert reg.orphan_candidates(200.0, 60.0, 1) == [bid(1)]
    reg.mark_owned(bid(1))
    assert reg.orphan_candidates(200.0, 60.0, 10) == [bid(2)]


def test_reserved_bytes_count_until_the_next_heartbeat(reg):
    beat(reg, "n1", 0.0, used=10 * GiB)
    reg.reserve("n1", 5 * GiB)
    assert reg.candidates()[0].free_bytes == 85 * GiB
    beat(reg, "n1", 1.0, used=15 * GiB)
    assert reg.candidates()[0].free_bytes == 85 * GiB and reg.node("n1").reserved_bytes == 0
