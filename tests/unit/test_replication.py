"""Exact-output tests of the healing decisions (metadata/replication.py) and
the fsck verdicts (metadata/fsck.py), over a NodeRegistry driven by hand."""

from cistern.metadata import fsck, model
from cistern.metadata.nodes import Delete, NodeLost, NodeRegistry, Replicate
from cistern.metadata.replication import (BlockRecord, FileBlocks, apply_plan, files_from_scan, plan_files,
                                          plan_freed, plan_orphans)

GiB = 1 << 30
B = 4 << 20


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def cluster(holdings: dict, *, used=None, now=0.0, dead_after_s=10.0) -> NodeRegistry:
    """A registry whose nodes heartbeated at ``now`` and fully reported
    ``holdings``: {node: [block numbers]}."""
    reg = NodeRegistry(dead_after_s=dead_after_s)
    for node_id, blocks in holdings.items():
        reg.heartbeat(node_id, f"{node_id}:7000", 100 * GiB, (used or {}).get(node_id, 0), 0, now)
        reg.block_report(node_id, True, [(bid(n), B) for n in blocks], [], now)
    return reg


def file(ino, blocks, replication=None):
    """blocks: [(block number, [recorded nodes])]"""
    return FileBlocks(ino, replication, tuple(BlockRecord(bid(n), B, tuple(nodes)) for n, nodes in blocks))


def test_healthy_cluster_plans_nothing():
    reg = cluster({"n1": [1], "n2": [1], "n3": [1]})
    plan = plan_files([file(5, [(1, ["n1", "n2", "n3"])])], reg)
    assert (plan.replicate, plan.delete, plan.updates, plan.under_replicated) == ([], [], [], 0)


def test_node_lost_replicates_each_block_from_a_survivor_to_a_node_without_it():
    reg = cluster({"n1": [1, 2], "n2": [1, 2], "n3": [1, 2], "n4": []})
    for node_id in ("n1", "n2", "n4"):
        reg.heartbeat(node_id, f"{node_id}:7000", 100 * GiB, 0, 0, 9.0)
    assert reg.tick(10.5) == [NodeLost("n3")]
    f = file(5, [(1, ["n1", "n2", "n3"]), (2, ["n3", "n1", "n2"])])
    plan = plan_files([f], reg)
    assert plan.replicate == [("n4", Replicate(bid(1), "n1", "n1:7000")),
                              ("n4", Replicate(bid(2), "n2", "n2:7000"))]
    assert plan.under_replicated == 2 and plan.delete == []
    # the dead node leaves the recorded lists (NODE_LOST commits the same)
    assert plan.updates == [[bid(1), [], ["n3"]], [bid(2), [], ["n3"]]]
    apply_plan(plan, reg, 10.5)
    assert reg.heartbeat("n4", "n4:7000", 100 * GiB, 0, 0, 11.0) == [
        Replicate(bid(1), "n1", "n1:7000"), Replicate(bid(2), "n2", "n2:7000")]
    # in flight: not planned twice
    again = plan_files([f], reg)
    assert again.replicate == [] and again.under_replicated == 2   # still short until they land
    # the copies arrive: recorded lists gain n4
    reg.block_report("n4", False, [(bid(1), B), (bid(2), B)], [], 12.0)
    done = plan_files([f], reg)
    assert done.replicate == [] and done.updates == [[bid(1), ["n4"], ["n3"]], [bid(2), ["n4"], ["n3"]]]


def test_only_two_live_nodes_means_two_replicas_and_no_impossible_instruction():
    reg = cluster({"n1": [1], "n2": [1], "n3": [1]})
    reg.heartbeat("n1", "n1:7000", 100 * GiB, 0, 0, 9.0)
    reg.heartbeat("n2", "n2:7000", 100 * GiB, 0, 0, 9.0)
    reg.tick(10.5)
    plan = plan_files([file(5, [(1, ["n1", "n2", "n3"])])], reg)
    assert plan.replicate == [] and plan.delete == []
    assert plan.under_replicated == 1          # below its factor, though nothing can be done
    assert plan.updates == [[bid(1), [], ["n3"]]]


def test_replications_per_node_are_bounded():
    reg = cluster({"n1": [1, 2, 3], "n2": [], "n3": []})
    files = [file(5, [(n, ["n1"]) for n in (1, 2, 3)])]
    plan = plan_files(files, reg, replications_per_node_max=2)
    # n1 is the only source: two replications at most, to the two targets
    assert plan.replicate == [("n2", Replicate(bid(1), "n1", "n1:7000")),
                              ("n3", Replicate(bid(1), "n1", "n1:7000"))]
    apply_plan(plan, reg, 0.0)
    assert plan_files(files, reg, replications_per_node_max=2).replicate == []


def test_node_returns_and_its_extra_replicas_are_trimmed():
    # n3 was lost, its copies went to n4, now n3 is back with its old copy
    reg = cluster({"n1": [1], "n2": [1], "n4": [1], "n3": [1]})
    f = file(5, [(1, ["n1", "n2", "n4"])])
    plan = plan_files([f], reg)
    assert plan.delete == [("n3", bid(1))] and plan.over_replicated == 1
    assert plan.replicate == [] and plan.updates == []
    apply_plan(plan, reg, 1.0)
    assert reg.heartbeat("n3", "n3:7000", 100 * GiB, 0, 0, 1.0) == [Delete((bid(1),))]
    assert plan_files([f], reg).delete == []


def test_trim_picks_the_fullest_node_among_recorded_copies():
    reg = cluster({"n1": [1], "n2": [1], "n3": [1]}, used={"n2": 60 * GiB, "n3": 30 * GiB})
    plan = plan_files([file(5, [(1, ["n1", "n2", "n3"])], replication=2)], reg)
    assert plan.delete == [("n2", bid(1))]
    assert plan.updates == [[bid(1), [], ["n2"]]]


def test_no_trimming_or_deleting_before_every_node_fully_reported():
    reg = cluster({"n1": [1], "n2": [1], "n3": [1]})
    reg.heartbeat("n9", "n9:7000", 100 * GiB, 0, 0, 0.0)     # no report yet
    plan = plan_files([file(5, [(1, ["n1"])], replication=2)], reg)
    assert plan.delete == [] and plan.updates == []
    assert plan_freed([[bid(1), ["n1"]]], reg).delete == []


def test_corrupt_replica_is_replaced_then_dropped():
    reg = cluster({"n1": [1], "n2": [1], "n3": [1], "n4": []})
    reg.report_corrupt(bid(1), "n2")
    f = file(5, [(1, ["n1", "n2", "n3"])])
    plan = plan_files([f], reg)
    assert plan.replicate == [("n4", Replicate(bid(1), "n1", "n1:7000"))]
    assert plan.delete == [] and plan.updates == [[bid(1), [], ["n2"]]]
    apply_plan(plan, reg, 0.0)
    reg.block_report("n4", False, [(bid(1), B)], [], 1.0)
    plan = plan_files([f], reg)
    assert plan.replicate == [] and plan.delete == [("n2", bid(1))]
    assert plan.updates == [[bid(1), ["n4"], ["n2"]]]


def test_corrupt_replica_without_a_spare_node_is_dropped_first_then_replaced_there():
    reg = cluster({"n1": [1], "n2": [1], "n3": [1]})
    reg.report_corrupt(bid(1), "n3")
    f = file(5, [(1, ["n1", "n2", "n3"])])
    plan = plan_files([f], reg)
    assert plan.replicate == [] and plan.delete == [("n3", bid(1))]
    apply_plan(plan, reg, 0.0)
    reg.block_report("n3", False, [], [bid(1)], 1.0)
    assert plan_files([f], reg).replicate == [("n3", Replicate(bid(1), "n1", "n1:7000"))]


def test_a_block_whose_only_copy_is_corrupt_is_missing_and_kept():
    reg = cluster({"n1": [1], "n2": []})
    reg.report_corrupt(bid(1), "n1")
    plan = plan_files([file(5, [(1, ["n1"])])], reg)
    assert plan.missing == 1 and plan.replicate == [] and plan.delete == []


def test_freed_blocks_are_deleted_then_cleared_once_confirmed():
    reg = cluster({"n1": [1, 2], "n2": [1]})
    freed = [[bid(1), ["n1", "n2"]], [bid(2), ["n1"]], [bid(3), ["n9"]]]
    plan = plan_freed(freed, reg)
    assert plan.delete == [("n1", bid(1)), ("n2", bid(1)), ("n1", bid(2))]
    assert plan.clear_freed == [bid(3)]
    apply_plan(plan, reg, 0.0)
    assert plan_freed(freed, reg).clear_freed == [bid(3)]     # deletes not confirmed yet
    reg.block_report("n1", False, [], [bid(1), bid(2)], 1.0)
    reg.block_report("n2", False, [], [bid(1)], 1.0)
    assert plan_freed(freed, reg).clear_freed == [bid(1), bid(2), bid(3)]


def test_orphans_older_than_the_grace_are_deleted_younger_kept_owned_remembered():
    reg = cluster({"n1": [1, 2, 3], "n2": [1]})
    reg.block_report("n1", False, [(bid(4), B)], [], 100.0)
    reg.heartbeat("n1", "n1:7000", 100 * GiB, 0, 0, 100.0)
    candidates = reg.orphan_candidates(100.0, 60.0, 10)
    assert candidates == [bid(1), bid(2), bid(3)]             # bid(4) is younger than the grace
    owners = {bid(1): None, bid(2): model.BLOCK_FREED, bid(3): 7}
    plan, owned = plan_orphans(owners, reg)
    assert plan.delete == [("n1", bid(1)), ("n2", bid(1)), ("n1", bid(2))]
    assert owned == [bid(3)]
    for b in owned:
        reg.mark_owned(b)
    apply_plan(plan, reg, 100.0)
    assert reg.orphan_candidates(200.0, 60.0, 10) == [bid(4)]


def test_files_from_scan_and_replication_factor_from_the_file():
    page = [[5, 2, [[bid(1), B, ["n1"]]]], [6, None, [[bid(2), B, ["n1"]]]]]
    files = files_from_scan(page)
    assert files == [file(5, [(1, ["n1"])], replication=2), file(6, [(2, ["n1"])])]
    reg = cluster({"n1": [1, 2], "n2": [], "n3": []})
    plan = plan_files(files, reg)
    assert [(t, i.block_id) for t, i in plan.replicate] == [("n2", bid(1)), ("n2", bid(2)), ("n3", bid(2))]


# -- fsck ----------------------------------------------------------------------

def test_fsck_healthy_namespace_is_not_at_risk():
    reg = cluster({"n1": [1, 2], "n2": [1, 2], "n3": [1, 2]})
    result = fsck.check([file(5, [(1, []), (2, [])])], reg)
    assert result.files == [] and not result.at_risk and result.complete
    assert result.summary == {"files": 1, "blocks": 2, "files_with_problems": 0, "at_risk_files": 0,
                              "missing": 0, "corrupt": 0, "under": 0, "over": 0, "unreported": 0,
                              "live_nodes": 3}


def test_fsck_reports_each_kind_of_problem():
    reg = cluster({"n1": [1, 2, 3], "n2": [1, 3, 4], "n3": [3]})
    reg.report_corrupt(bid(1), "n2")
    prove_absent(reg, bid(2), "n2", 1.0)     # n2's heartbeats show its copy of block 2 is gone
    files = [file(5, [(1, ["n1", "n2"]), (2, ["n1", "n2"])], replication=2),
             file(6, [(3, [])], replication=2), file(7, [(9, ["n4"])]), file(8, [(4, [])], replication=1)]
    result = fsck.check(files, reg)
    assert result.at_risk and result.complete
    assert [(r.ino, r.at_risk, [(p.index, p.states) for p in r.problems]) for r in result.files] == [
        (5, True, [(0, ("corrupt", "under")), (1, ("under",))]),
        (6, False, [(0, ("over",))]),
        (7, True, [(0, ("missing",))]),
    ]
    corrupt = result.files[0].problems[0]
    assert (corrupt.good_nodes, corrupt.corrupt_nodes, corrupt.recorded_nodes) == (("n1",), ("n2",), ("n1", "n2"))
    assert result.summary["missing"] == 1 and result.summary["at_risk_files"] == 2


def test_fsck_two_good_copies_of_three_is_under_replicated_not_at_risk():
    reg = cluster({"n1": [1], "n2": [1]})
    result = fsck.check([file(5, [(1, [])])], reg)
    assert not result.at_risk and result.summary["under"] == 1
    assert [(r.ino, r.at_risk) for r in result.files] == [(5, False)]


def prove_absent(reg, block_id, node_id, now):
    """What the healing planner and two clean heartbeats do for a recorded
    replica its node does not report (NodeRegistry.proven_absent)."""
    reg.note_unconfirmed(block_id, node_id, now)
    beat(reg, node_id, now + 0.1, reports_pending=0)
    beat(reg, node_id, now + 0.2, reports_pending=0)
    assert reg.proven_absent(block_id, node_id)


def test_fsck_counts_a_just_committed_block_whose_reports_are_late_as_present():
    # The layout names n1, n2, n3; their incremental reports have not reached
    # the leader yet (block 1 none of them, block 2 one of three).
    reg = cluster({"n1": [2], "n2": [], "n3": []})
    f = file(5, [(1, ["n1", "n2", "n3"]), (2, ["n1", "n2", "n3"])])
    result = fsck.check([f], reg)
    assert result.files == [] and not result.at_risk and result.complete
    assert result.summary["missing"] == 0 and result.summary["unreported"] == 5
    # Before the planner notes them, and until two clean heartbeats after
    # that, a silent node proves nothing.
    reg.note_unconfirmed(bid(1), "n1", 1.0)
    beat(reg, "n1", 1.1, reports_pending=0)
    assert fsck.check([f], reg).files == []
    # Once each node has shown it lacks block 1, it is missing; a node
    # declared lost counts for nothing either (block 2: n1 and n2 are left).
    beat(reg, "n1", 1.2, reports_pending=0)
    prove_absent(reg, bid(1), "n2", 2.0)
    for node_id in ("n1", "n2"):
        beat(reg, node_id, 9.0, reports_pending=0)
    assert reg.tick(10.5) == [NodeLost("n3")]
    result = fsck.check([f], reg)
    assert result.at_risk and result.summary["unreported"] == 1      # n2's copy of block 2
    assert [(p.index, p.states, p.good_nodes) for p in result.files[0].problems] == [
        (0, ("missing",), ()), (1, ("under",), ("n1", "n2"))]
    # The proof lasts while the layout names the replica (the planner and
    # fsck keep asking), not just dead_after_s after the planner noted it.
    for now in (15.0, 20.0, 25.0, 30.0):
        for node_id in ("n1", "n2"):
            beat(reg, node_id, now, reports_pending=0)
        reg.tick(now)
        assert fsck.check([f], reg).summary["missing"] == 1
    # Unasked for dead_after_s (the file is gone), the notes are forgotten.
    for node_id in ("n1", "n2"):
        beat(reg, node_id, 39.0, reports_pending=0)
    reg.tick(41.0)
    assert reg.unconfirmed_since(bid(1), "n1") is None


def test_fsck_is_provisional_until_the_registry_settles():
    reg = cluster({"n1": [1], "n2": [1]})
    reg.expect("n3", 0.0)
    assert not fsck.check([file(5, [(1, [])])], reg).complete


def test_a_recorded_replica_not_yet_reported_is_waited_for_then_treated_as_absent():
    # a fresh commit: the layout names n3, whose incremental report is late
    reg = cluster({"n1": [1], "n2": [1], "n3": [], "n4": []}, used={"n3": 50 * GiB})
    f = file(5, [(1, ["n1", "n2", "n3"])])
    plan = plan_files([f], reg, now=0.0, report_grace_s=2.0)
    assert (plan.replicate, plan.updates, plan.unconfirmed) == ([], [], [(bid(1), "n3")])
    apply_plan(plan, reg, 0.0)
    assert plan_files([f], reg, now=1.9, report_grace_s=2.0).replicate == []
    # the report arrives: nothing to do
    reg.block_report("n3", False, [(bid(1), B)], [], 1.0)
    assert reg.unconfirmed_since(bid(1), "n3") is None
    quiet = plan_files([f], reg, now=1.9, report_grace_s=2.0)
    assert (quiet.replicate, quiet.updates, quiet.under_replicated) == ([], [], 0)
    # ... or it never does: after the grace, and two heartbeats with nothing
    # left to report, the replica counts as absent
    reg.block_report("n3", False, [], [bid(1)], 2.0)
    apply_plan(plan_files([f], reg, now=2.0, report_grace_s=2.0), reg, 2.0)
    beat(reg, "n3", 3.0, reports_pending=0)
    beat(reg, "n3", 3.5, reports_pending=0)
    late = plan_files([f], reg, now=4.0, report_grace_s=2.0)
    assert late.replicate == [("n4", Replicate(bid(1), "n1", "n1:7000"))]
    assert late.updates == [[bid(1), [], ["n3"]]]


def beat(reg, node_id, now, *, reports_pending):
    node = reg.node(node_id)
    reg.heartbeat(node_id, node.rpc_address, node.capacity_bytes, node.used_bytes, 0, now,
                  reports_pending=reports_pending)


def test_a_report_later_than_the_grace_costs_no_replica():
    # A CI run lost two of a fresh block's three recorded replicas this way:
    # their nodes' reports came after the grace, and the layout dropped them.
    reg = cluster({"n1": [1], "n2": [], "n3": [], "n4": []})
    f = file(5, [(1, ["n1", "n2", "n3"])])
    apply_plan(plan_files([f], reg, now=0.0, report_grace_s=0.6), reg, 0.0)
    # The first beat after the notice may have left before the block was
    # stored: nothing pending in it proves nothing, however late.
    beat(reg, "n2", 0.1, reports_pending=0)
    beat(reg, "n3", 0.1, reports_pending=0)
    assert plan_files([f], reg, now=1.0, report_grace_s=0.6).updates == []
    # Long after the grace the nodes still had reports queued at every beat.
    for t in (1.0, 2.0, 3.0):
        for node_id in ("n2", "n3"):
            beat(reg, node_id, t, reports_pending=1)
    plan = plan_files([f], reg, now=3.0, report_grace_s=0.6)
    assert (plan.replicate, plan.updates, plan.delete) == ([], [], [])
    # n2's report arrives; n3's next beat has nothing pending: it has no copy.
    reg.block_report("n2", False, [(bid(1), B)], [], 3.05)
    beat(reg, "n3", 3.1, reports_pending=0)
    plan = plan_files([f], reg, now=3.2, report_grace_s=0.6)
    assert plan.updates == [[bid(1), [], ["n3"]]]
    assert plan.replicate == [("n3", Replicate(bid(1), "n1", "n1:7000"))]   # a fresh copy


def test_a_block_whose_reports_are_late_is_not_counted_missing_until_its_nodes_prove_it_absent():
    # cistern status shows the last pass's missing count: a file just
    # committed, none of whose nodes has reported its block yet, is not "missing".
    reg = cluster({"n1": [], "n2": [], "n3": []})
    f = file(5, [(1, ["n1", "n2", "n3"])])
    plan = plan_files([f], reg, now=0.0, report_grace_s=0.6)
    assert (plan.missing, plan.replicate, plan.updates) == (0, [], [])
    apply_plan(plan, reg, 0.0)
    for t in (0.5, 1.0):
        for node_id in ("n1", "n2", "n3"):
            beat(reg, node_id, t, reports_pending=0)
    assert plan_files([f], reg, now=1.0, report_grace_s=0.6).missing == 1     # proven gone everywhere
    assert plan_files([f], reg).missing == 1                                 # and without grace at all


def test_a_new_registry_is_not_settled_during_its_quiet_period():
    reg = NodeRegistry(dead_after_s=10.0, quiet_until=1.0)
    assert not reg.settled()                  # empty, but nodes had no time to heartbeat yet
    assert plan_freed([[bid(1), ["n1"]]], reg).clear_freed == []
    reg.heartbeat("n1", "n1:7000", 100 * GiB, 0, 0, 1.0)
    reg.block_report("n1", True, [], [], 1.0)
    assert reg.settled()
    assert plan_freed([[bid(1), ["n1"]]], reg).clear_freed == [bid(1)]
