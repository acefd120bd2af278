"""The agent's pure bookkeeping: updates stay pending until acked, in order;
a task is forgotten once its terminal update is acknowledged; checkpoints
round-trip every field and survive a torn write."""

import os

import pytest

from cistern.scheduler.agent import Checkpoints, TaskBook, TaskRecord, _output_files
from cistern.scheduler.proto import scheduler_pb2 as pb


def spec(task_id="t1"):
    return pb.TaskSpec(task_id=task_id, argv=["true"], resources=pb.Resources(cpus=0.5, mem_bytes=64 << 20),
                       inputs=[pb.InputBlock(block_id=b"\x01" * 16, path="/f", file_offset=0, length=10)])


def book_with(task_id="t1"):
    book = TaskBook("a1", "n1")
    record = TaskRecord(task_id, "fw1", spec(task_id))
    book.add(record)
    return book, record


def test_updates_are_pending_in_order_until_each_is_acked():
    book, record = book_with()
    starting = book.update(record, pb.TASK_STARTING, "", "staging", uuid=b"u1", timestamp=1.0)
    running = book.update(record, pb.TASK_RUNNING, "", "running", uuid=b"u2", timestamp=2.0, started_at=2.0)
    assert (starting.agent_id, starting.node_id, starting.framework_id) == ("a1", "n1", "fw1")
    assert [s.uuid for s in book.unacknowledged()] == [b"u1", b"u2"]
    assert book.ack("t1", b"u2") is None and [s.uuid for s in book.unacknowledged()] == [b"u1"]
    assert book.ack("t1", b"nope") is None and len(book.unacknowledged()) == 1
    assert book.ack("t1", b"u1") is None and book.unacknowledged() == []
    assert book.report() == [running] and record.state == pb.TASK_RUNNING


def test_a_terminal_task_is_forgotten_once_its_last_update_is_acked():
    book, record = book_with()
    book.update(record, pb.TASK_RUNNING, "", "", uuid=b"u1", timestamp=1.0, started_at=5.0)
    record.bytes_local = 10
    final = book.update(record, pb.TASK_FINISHED, "", "exited 0", uuid=b"u2", timestamp=2.0, exit_code=0)
    assert final.started_at == 5.0 and final.bytes_local == 10      # carried over from RUNNING
    with pytest.raises(AssertionError):
        book.update(record, pb.TASK_FAILED, "x", "", uuid=b"u3", timestamp=3.0)   # never a second end
    assert book.ack("t1", b"u2") is None                # u1 still pending: remembered
    assert book.ack("t1", b"u1") is record and book.tasks == {}
    assert book.ack("t1", b"u1") is None                # a late duplicate ack is harmless


def test_report_lists_every_task_even_before_its_first_update():
    book, record = book_with()
    (status,) = book.report()
    assert (status.task_id, status.state, status.agent_id) == ("t1", pb.TASK_STAGING, "a1")
    assert book.counts() == {"TASK_STAGING": 1} and book.active() == [record]


def test_long_reasons_and_messages_are_clipped_to_the_wire_limits():
    book, record = book_with()
    status = book.update(record, pb.TASK_FAILED, "r" * 1000, "é" * 5000, uuid=b"u", timestamp=1.0)
    assert len(status.reason.encode()) <= 128 and len(status.message.encode()) <= 4096
    assert status.message == "é" * 2048


def test_checkpoints_round_trip_and_ignore_a_torn_write(tmp_path):
    store = Checkpoints(str(tmp_path / "cp"))
    book, record = book_with()
    book.update(record, pb.TASK_RUNNING, "", "running", uuid=b"u1", timestamp=1.0, started_at=1.5)
    record.handle = {"task_id": "t1", "shim_pid": 42}
    record.kill_reason, record.bytes_remote = "killed by framework", 10
    store.save(record)
    (tmp_path / "cp" / "t2.json.tmp").write_text("{half")      # a crash mid-write
    (loaded,) = store.load()
    assert loaded.to_json() == record.to_json()
    assert loaded.spec == record.spec and loaded.pending == record.pending and loaded.status == record.status
    assert os.listdir(tmp_path / "cp") == [b"t1".hex() + ".json"]
    store.remove("t1")
    store.remove("t1")
    assert store.load() == []
    hostile = TaskRecord("../../escape", "fw1", spec("x"))
    store.save(hostile)                                        # a hostile id names no path outside
    assert [r.task_id for r in store.load()] == ["../../escape"] and not (tmp_path / "escape.json").exists()


def test_output_files_are_regular_files_only(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a").write_bytes(b"12")
    (out / "sub" / "b").write_bytes(b"345")
    os.symlink("/etc/passwd", out / "leak")                   # a task must not export host files
    os.symlink("/etc", out / "dirlink")
    os.mkfifo(out / "fifo")
    assert [(rel, size) for rel, _, size in _output_files(str(out))] == [("a", 2), ("sub/b", 3)]
