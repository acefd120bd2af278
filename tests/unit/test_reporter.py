"""The storage node's reporter: exact results of its pure parts (report
splitting, pending events, instruction decisions), then the shell's
protocol against a fake leader, store and block client (no sockets)."""

from __future__ import annotations

import contextlib
import errno
import threading
import time

import pytest

from cistern.blockstore.reporter import (CopyBlock, DeleteBlocks, PendingReports, Reporter, ReporterConf,
                                         ReportPart, capacity_for_heartbeat, decide, split_full_report)
from cistern.core.errors import CisternError
from cistern.metadata.proto import nodes_pb2 as npb

pytestmark = [pytest.mark.timeout(30)]


def bid(n: int) -> bytes:
    return n.to_bytes(16, "big")


# -- pure parts -------------------------------------------------------------------------

def test_an_empty_store_is_one_empty_full_report():
    assert split_full_report([], 3) == [ReportPart(full=True, more=False, added=())]


def test_a_large_full_report_is_split_first_full_all_but_last_more():
    blocks = [(bid(i), i) for i in range(5)]
    assert split_full_report(blocks, 2) == [
        ReportPart(True, True, ((bid(0), 0), (bid(1), 1))),
        ReportPart(False, True, ((bid(2), 2), (bid(3), 3))),
        ReportPart(False, False, ((bid(4), 4),)),
    ]


def test_pending_reports_keep_the_latest_event_per_block_in_order():
    p = PendingReports()
    p.added(bid(1), 10)
    p.removed(bid(2))
    p.removed(bid(1))          # quarantined after it was stored
    p.added(bid(2), 20)        # copied back after it was deleted
    assert p.take(10) == ([(bid(2), 20)], [bid(1)])
    assert len(p) == 0


def test_pending_reports_take_at_most_the_limit_and_restore_only_what_is_not_newer():
    p = PendingReports()
    for i in range(3):
        p.added(bid(i), i)
    added, removed = p.take(2)
    assert (added, removed) == ([(bid(0), 0), (bid(1), 1)], [])
    p.removed(bid(0))          # a newer event while the send was failing
    p.restore(added, removed)
    assert p.take(10) == ([(bid(2), 2), (bid(1), 1)], [bid(0)])


def test_decide_turns_instructions_into_actions_and_unusable_replicates_into_failures():
    many = [bid(i) for i in range(5000)]
    instructions = [
        npb.Instruction(kind=npb.Instruction.REPLICATE, block_ids=[bid(1)], source_node="n2",
                        source_address="127.0.0.1:1"),
        npb.Instruction(kind=npb.Instruction.REPLICATE, block_ids=[bid(2)]),          # no source
        npb.Instruction(kind=npb.Instruction.REPLICATE, block_ids=[b"short"], source_address="h:1"),
        npb.Instruction(kind=npb.Instruction.DELETE, block_ids=many),
        npb.Instruction(kind=npb.Instruction.UNKNOWN, block_ids=[bid(3)]),
    ]
    actions, failed = decide(instructions)
    assert actions == [CopyBlock(bid(1), "127.0.0.1:1"), DeleteBlocks(tuple(many[:4096])),
                       DeleteBlocks(tuple(many[4096:]))]
    assert failed == [bid(2), b"short"]


def test_heartbeat_capacity_is_what_the_disk_has_free_beside_our_blocks():
    assert capacity_for_heartbeat({"capacity_bytes": 1000, "free_bytes": 300, "used_bytes": 50,
                                   "block_count": 2}) == (350, 50)


# -- the shell against fakes -----------------------------------------------------------------

class FakeLeader:
    """NodesClient's surface; records every call; replies as scripted."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()
        self.instructions = []        # handed out with the next heartbeat
        self.full_next = False        # next heartbeat asks for a full report
        self.fail_reports = 0         # block reports that raise before answering
        self.pending_seen = []        # reports_pending of each heartbeat

    def heartbeat(self, node_id, rpc_address, capacity_bytes, used_bytes, block_count, failed_block_ids=(),
                  reports_pending=0):
        with self.lock:
            first = not any(c[0] == "heartbeat" for c in self.calls)
            self.pending_seen.append(reports_pending)
            self.calls.append(("heartbeat", list(failed_block_ids)))
            instructions, self.instructions = self.instructions, []
            full, self.full_next = self.full_next or first, False
        return npb.HeartbeatReply(instructions=instructions, send_full_report=full, heartbeat_interval_s=0.05)

    def block_report(self, node_id, full, added=(), removed=(), more=False):
        with self.lock:
            if self.fail_reports:
                self.fail_reports -= 1
                raise CisternError(errno.ETIMEDOUT, "leader gone")
            self.calls.append(("report", full, more, sorted(added), sorted(removed)))
        return npb.BlockReportReply()

    def report_bad_replica(self, block_id, node_id, reporter, reason=""):
        with self.lock:
            self.calls.append(("bad", block_id, node_id, reporter))
        return npb.BadReplicaReply()

    def close(self):
        pass

    def reports(self):
        with self.lock:
            return [c for c in self.calls if c[0] != "heartbeat"]


class FakeStore:
    def __init__(self, blocks):
        self.blocks = dict(blocks)
        self.deleted = []

    def list(self):
        return sorted(self.blocks.items())

    def capacity(self):
        return {"capacity_bytes": 1 << 30, "free_bytes": 1 << 29, "used_bytes": sum(self.blocks.values()),
                "block_count": len(self.blocks)}

    def delete_many(self, block_ids):
        self.deleted.extend(block_ids)
        return [b for b in block_ids if self.blocks.pop(b, None) is not None]


class FakeBlocks:
    def __init__(self, store, bad_sources=()):
        self.store = store
        self.bad_sources = set(bad_sources)

    def copy(self, address, block_id, source, *, timeout_s):
        if source in self.bad_sources:
            raise CisternError(errno.EAGAIN, f"{source}: UNAVAILABLE")
        self.store.blocks[block_id] = 7
        return {"length": 7, "checksum": b"", "already_present": False}


def wait_for(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


@pytest.fixture
def node():
    leader = FakeLeader()
    store = FakeStore({bid(1): 100, bid(2): 200, bid(3): 300})
    reporter = Reporter("n1", "127.0.0.1:9", ["meta:1"], store, FakeBlocks(store, {"dead:1"}),
                        conf=ReporterConf(heartbeat_interval_s=0.05, report_blocks_per_message_max=2,
                                          incremental_delay_s=0.001), nodes_client=leader)
    reporter.start()
    try:
        yield leader, store, reporter
    finally:
        reporter.stop()


def test_start_heartbeats_then_sends_a_split_full_report(node):
    leader, store, _ = node
    wait_for(lambda: len(leader.reports()) >= 2)
    assert leader.calls[0] == ("heartbeat", [])
    assert leader.reports()[:2] == [("report", True, True, [(bid(1), 100), (bid(2), 200)], []),
                                    ("report", False, False, [(bid(3), 300)], [])]


def test_stored_deleted_and_corrupt_blocks_are_reported_incrementally(node):
    leader, store, reporter = node
    wait_for(lambda: len(leader.reports()) >= 2)
    reporter.block_stored(bid(9), 900)
    wait_for(lambda: ("report", False, False, [(bid(9), 900)], []) in leader.reports())
    reporter.blocks_deleted([bid(1)])
    wait_for(lambda: ("report", False, False, [], [bid(1)]) in leader.reports())
    reporter.block_corrupt(bid(2), "block 02 fails its whole-block checksum")
    wait_for(lambda: ("report", False, False, [], [bid(2)]) in leader.reports())
    reports = leader.reports()
    # The bad replica goes first, so the leader still knows the holding it marks.
    assert reports.index(("bad", bid(2), "n1", "n1")) < reports.index(("report", False, False, [], [bid(2)]))


def test_delete_instruction_deletes_every_id_and_reports_all_removed(node):
    leader, store, _ = node
    wait_for(lambda: len(leader.reports()) >= 2)
    leader.instructions = [npb.Instruction(kind=npb.Instruction.DELETE, block_ids=[bid(1), bid(7)])]
    wait_for(lambda: ("report", False, False, [], [bid(1), bid(7)]) in leader.reports())
    assert store.deleted == [bid(1), bid(7)] and bid(1) not in store.blocks


def test_replicate_reports_the_copy_added_or_its_failure_in_the_next_heartbeat(node):
    leader, store, _ = node
    wait_for(lambda: len(leader.reports()) >= 2)
    leader.instructions = [
        npb.Instruction(kind=npb.Instruction.REPLICATE, block_ids=[bid(5)], source_address="good:1"),
        npb.Instruction(kind=npb.Instruction.REPLICATE, block_ids=[bid(6)], source_address="dead:1")]
    wait_for(lambda: any(c[0] == "report" and (bid(5), 7) in c[3] for c in leader.reports()))
    wait_for(lambda: ("heartbeat", [bid(6)]) in leader.calls)
    assert store.blocks[bid(5)] == 7 and bid(6) not in store.blocks


def test_a_reply_asking_for_a_full_report_gets_one_and_pending_events_survive_a_failed_send(node):
    leader, store, reporter = node
    wait_for(lambda: len(leader.reports()) >= 2)
    leader.fail_reports = 1
    reporter.block_stored(bid(8), 800)
    wait_for(lambda: ("report", False, False, [(bid(8), 800)], []) in leader.reports())
    store.blocks[bid(8)] = 800
    before = len([r for r in leader.reports() if r[1] is True])
    leader.full_next = True
    wait_for(lambda: len([r for r in leader.reports() if r[1] is True]) == before + 1)
    wait_for(lambda: leader.reports()[-1][2] is False)
    full = [r for r in leader.reports() if r[0] == "report"][-2:]
    assert sum((r[3] for r in full), []) == sorted(store.blocks.items())


def test_a_heartbeat_says_whether_report_events_are_still_pending(node):
    """The leader drops a recorded replica only on a heartbeat sent with
    nothing pending (metadata/nodes.py, proven_absent)."""
    leader, _, reporter = node
    wait_for(lambda: len(leader.reports()) >= 2 and leader.pending_seen[-1:] == [0])
    assert leader.pending_seen[0] >= 1                  # not registered yet: a full report is owed
    leader.fail_reports = 1_000_000                      # the leader takes no report for now
    reporter.block_stored(bid(9), 900)
    mark = len(leader.pending_seen)
    wait_for(lambda: len(leader.pending_seen) >= mark + 2)
    assert set(leader.pending_seen[mark + 1:]) == {1}    # the failed report is still owed
    leader.fail_reports = 0
    wait_for(lambda: ("report", False, False, [(bid(9), 900)], []) in leader.reports())
    mark = len(leader.pending_seen)
    wait_for(lambda: len(leader.pending_seen) >= mark + 1)
    assert leader.pending_seen[mark:] == [0] * (len(leader.pending_seen) - mark)


def test_stop_is_idempotent_and_quick(node):
    _, _, reporter = node
    started = time.monotonic()
    reporter.stop()
    reporter.stop()
    assert time.monotonic() - started < 2


class SlowBeatLeader(FakeLeader):
    """A leader that asks for a heartbeat every ``interval_s`` (the
    reporter's incremental interval is capped at a quarter of it)."""

    def __init__(self, interval_s: float = 2.0):
        super().__init__()
        self.interval_s = interval_s

    def heartbeat(self, *args, **kwargs):
        reply = super().heartbeat(*args, **kwargs)
        reply.heartbeat_interval_s = self.interval_s
        return reply


@contextlib.contextmanager
def slow_beat_reporter(heartbeat_interval_s: float, incremental_interval_s: float):
    """A started reporter (empty store) whose leader asks for heartbeats
    every ``heartbeat_interval_s``, once its full report is in: (leader, reporter)."""
    leader = SlowBeatLeader(heartbeat_interval_s)
    reporter = Reporter("n1", "127.0.0.1:9", ["meta:1"], FakeStore({}), FakeBlocks(FakeStore({})),
                        conf=ReporterConf(heartbeat_interval_s=heartbeat_interval_s, incremental_delay_s=0.001,
                                          incremental_interval_s=incremental_interval_s), nodes_client=leader)
    reporter.start()
    try:
        wait_for(lambda: len(leader.reports()) >= 1)             # the (empty) full report
        yield leader, reporter
    finally:
        reporter.stop()


def test_a_stream_of_stored_blocks_shares_reports_at_most_one_per_interval():
    """A writer storing a block every 10 ms costs the leader one report call
    per ``incremental_interval_s``, not one per block, and loses none."""
    with slow_beat_reporter(2.0, 0.2) as (leader, reporter):
        started = time.monotonic()
        for i in range(40):
            reporter.block_stored(bid(100 + i), 10)
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        incremental = lambda: [r for r in leader.reports() if r[0] == "report" and not r[1]]   # noqa: E731
        wait_for(lambda: sum(len(r[3]) for r in incremental()) == 40)
        assert sorted(b for r in incremental() for b, _ in r[3]) == [bid(100 + i) for i in range(40)]
        assert len(incremental()) <= elapsed / 0.2 + 2


def test_a_bad_replica_found_amid_a_stream_of_reports_is_not_held_for_the_interval():
    """Reports of stored blocks wait for the interval (here 2 s, a quarter
    of the heartbeat interval); a corrupt replica goes to the leader at
    once, so a reader's retry finds it marked."""
    with slow_beat_reporter(8.0, 10.0) as (leader, reporter):
        reporter.block_stored(bid(1), 10)
        wait_for(lambda: ("report", False, False, [(bid(1), 10)], []) in leader.reports())
        reporter.block_stored(bid(2), 10)                         # held until 2 s after the last report
        time.sleep(0.2)
        started = time.monotonic()
        reporter.block_corrupt(bid(1), "block 01 fails its whole-block checksum")
        wait_for(lambda: ("bad", bid(1), "n1", "n1") in leader.reports())
        assert time.monotonic() - started < 1.0
        wait_for(lambda: ("report", False, False, [(bid(2), 10)], [bid(1)]) in leader.reports())
