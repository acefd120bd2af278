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
