"""`cistern status`'s verdict: healthy only with a leader and a majority up."""

from cistern.cli.status import render, summarize


def _member(id, role, term=3, applied=10):
    return {"id": id, "role": role, "term": term, "commit_index": applied, "applied_index": applied,
            "last_log_index": applied, "digest": "ab" * 16, "leader_rpc": "127.0.0.1:1"}


def test_leader_and_majority_up_is_healthy():
    summary = summarize({"a:1": _member("m1", "leader"), "a:2": _member("m2", "follower"), "a:3": None})
    assert summary["healthy"] and summary["leader"] == "m1"
    assert (summary["members_up"], summary["members_total"]) == (2, 3)
    assert "healthy" in render(summary).splitlines()[-1]


def test_no_leader_is_not_healthy():
    summary = summarize({"a:1": _member("m1", "candidate"), "a:2": _member("m2", "follower"), "a:3": None})
    assert not summary["healthy"] and summary["leader"] is None
    assert render(summary).splitlines()[-1] == "NOT healthy: no leader"


def test_lone_leader_without_majority_is_not_healthy():
    summary = summarize({"a:1": _member("m1", "leader"), "a:2": None, "a:3": None})
    assert not summary["healthy"]
    assert render(summary).splitlines()[-1] == "NOT healthy: no majority up"


def test_stale_leader_of_an_older_term_loses_to_the_newer_one():
    summary = summarize({"a:1": _member("m1", "leader", term=2), "a:2": _member("m2", "leader", term=5),
                         "a:3": _member("m3", "follower", term=5)})
    assert summary["leader"] == "m2" and summary["term"] == 5


def test_missing_blocks_make_the_cluster_unhealthy_and_say_why():
    from cistern.cli.status import _why_unhealthy

    summary = summarize({"a:1": _member("m1", "leader"), "a:2": _member("m2", "follower")})
    summary["storage"] = {"nodes": [], "capacity_bytes": 0, "used_bytes": 0, "under_replicated_blocks": 4,
                          "missing_blocks": 2, "pending_replications": 0, "settled": True}
    assert _why_unhealthy(summary) == "2 blocks missing"
    assert "4 under-replicated, 2 missing blocks" in render(summary)


def test_fsck_report_names_each_problem_and_the_verdict():
    from cistern.cli.fsck import render as render_fsck

    report = {"at_risk": True, "complete": True, "summary": {"files": 1, "missing": 1},
              "files": [{"ino": 7, "path": "/a", "replication": 3, "blocks": 2, "at_risk": True,
                         "problems": [{"index": 1, "block_id": "ab" * 16, "states": ["missing"],
                                       "good_nodes": [], "corrupt_nodes": []}]}]}
    lines = render_fsck(report).splitlines()
    assert lines[0] == "/a: block 1 (abababababab): missing; good replicas on no node (want 3)"
    assert lines[-1] == "data AT RISK"
