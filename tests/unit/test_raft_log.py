"""The Raft log on disk (metadata/journal.py) and its pysyncobj adapter."""

import errno
import os

import pytest

from cistern.metadata import journal as journal_mod
from cistern.metadata.journal import CorruptLog, RecordLog


def entries(n, start=1, term=1, size=20):
    return [(bytes([i % 251 + 1]) * size, i, term) for i in range(start, start + n)]


def record(command, index, term):
    return journal_mod._record_head(command, index, term) + command


def reopened(path):
    log = RecordLog(path)
    try:
        return list(log.entries)
    finally:
        log.close()


def test_synced_entries_survive_a_reopen(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    for e in entries(50):
        log.add(*e)
    log.sync()
    assert log.syncs == 1
    log.sync()                               # nothing new: no second fdatasync
    assert log.syncs == 1
    log.close()
    assert reopened(path) == entries(50)


def test_a_record_is_written_over_zeros_the_log_wrote_and_synced_beforehand(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    size = os.path.getsize(path)
    assert size >= journal_mod.header_bytes + journal_mod.grow_bytes_min
    assert os.stat(path).st_blocks * 512 >= size        # written, not a sparse hole
    log.add(b"x" * 100, 1, 1)
    assert os.path.getsize(path) == size                # the append did not grow the file
    log.close()


def test_the_log_grows_past_its_first_zeros(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    many = entries(3000, size=1000)                      # ~3 MiB: past the first MiB of zeros
    for e in many:
        log.add(*e)
    log.close()
    assert reopened(path) == many


def test_a_torn_append_is_dropped_and_its_remains_zeroed(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    for e in entries(5):
        log.add(*e)
    end = log._end
    log.close()
    # A crash tore the next append of two records: the first's middle page
    # never reached the disk, the second did.
    sixth = bytearray(record(b"y" * 500, 6, 1))
    sixth[200:300] = bytes(100)
    with open(path, "r+b") as f:
        f.seek(end)
        f.write(bytes(sixth) + record(b"w" * 50, 7, 1))
    log = RecordLog(path)
    assert log.entries == entries(5)
    # A new sixth record of the same size where the torn one began: the torn
    # seventh must not follow it on the next open.
    log.add(b"z" * 500, 6, 1)
    log.close()
    assert reopened(path) == entries(5) + [(b"z" * 500, 6, 1)]


def test_a_record_whose_checksum_fails_ends_the_log(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    for e in entries(5):
        log.add(*e)
    third = log._offsets[2]
    log.close()
    with open(path, "r+b") as f:
        f.seek(third + journal_mod._RECORD.size + 3)
        f.write(b"\xff")
    assert reopened(path) == entries(2)


def test_removed_tail_entries_never_come_back(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    for e in entries(10, size=200):
        log.add(*e)
    log.delete_from(4)                       # a term conflict: entries 5.. go
    replacement = (b"r" * 200, 5, 2)         # the same size: the old sixth would follow it
    log.add(*replacement)
    log.close()
    assert reopened(path) == entries(4, size=200) + [replacement]


def test_compaction_keeps_the_tail_in_a_new_file(tmp_path):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    for e in entries(10):
        log.add(*e)
    inode = os.stat(path).st_ino
    log.delete_to(7)
    assert log.entries == entries(3, start=8)
    assert os.stat(path).st_ino != inode     # renamed over, not rewritten in place
    assert not os.path.exists(path + ".tmp")
    log.add(b"n" * 5, 11, 1)
    log.close()
    assert reopened(path) == entries(3, start=8) + [(b"n" * 5, 11, 1)]
    log = RecordLog(path)
    log.clear()
    log.close()
    assert reopened(path) == []


def test_an_empty_command_and_a_foreign_file_are_refused(tmp_path):
    log = RecordLog(str(tmp_path / "log"))
    with pytest.raises(ValueError):
        log.add(b"", 1, 1)
    log.close()
    (tmp_path / "other").write_bytes(b"PYSYNCOBJ" + bytes(100))
    with pytest.raises(CorruptLog):
        RecordLog(str(tmp_path / "other"))


def pysyncobj_journal(tmp_path, logged, term_vote=None):
    """A pysyncobj FileJournal at tmp_path/journal holding ``logged`` (and
    the term and vote, if given), closed; (its path, the durable journal
    class that migrates it)."""
    from pysyncobj.journal import FileJournal

    from cistern.metadata.replica import _DurableJournal

    legacy = str(tmp_path / "journal")
    old = FileJournal(legacy)
    for e in logged:
        old.add(*e)
    if term_vote is not None:
        old.setCurrentTerm(*term_vote)
    old._destroy()
    return legacy, _DurableJournal


def test_a_pysyncobj_journal_moves_into_the_log_with_its_term_and_vote(tmp_path):
    legacy, _DurableJournal = pysyncobj_journal(tmp_path, entries(7), (3, "127.0.0.1:1"))
    j = _DurableJournal(str(tmp_path / "log"), legacy + ".meta", True, legacy)
    assert [j[i] for i in range(len(j))] == entries(7)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (3, "127.0.0.1:1")
    assert not os.path.exists(legacy)
    j.setCurrentTerm(4, None)
    j.add(b"next", 8, 4)
    j._destroy()
    j = _DurableJournal(str(tmp_path / "log"), legacy + ".meta", True, legacy)
    assert len(j) == 8 and j[-1] == (b"next", 8, 4)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (4, None)
    j._destroy()


def test_a_short_write_raises_and_the_log_stays_as_the_file_is(tmp_path, monkeypatch):
    path = str(tmp_path / "log")
    log = RecordLog(path)
    log.add(b"a" * 10, 1, 1)
    real = os.pwritev
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: real(fd, [bytes(bufs[0])[:5]], off))
    with pytest.raises(OSError) as e:
        log.add(b"b" * 10, 2, 1)
    assert e.value.errno == errno.ENOSPC
    assert log.entries == [(b"a" * 10, 1, 1)]
    monkeypatch.setattr(os, "pwritev", real)
    log.add(b"c" * 10, 2, 1)                 # the next add overwrites the partial record
    log.close()
    assert reopened(path) == [(b"a" * 10, 1, 1), (b"c" * 10, 2, 1)]


def test_a_migration_cut_short_after_the_log_was_written_finishes_on_the_next_start(tmp_path):
    legacy, _DurableJournal = pysyncobj_journal(tmp_path, entries(3))
    RecordLog(str(tmp_path / "log"), entries=entries(3)).close()   # crashed before removing the old file
    j = _DurableJournal(str(tmp_path / "log"), legacy + ".meta", True, legacy)
    assert [j[i] for i in range(len(j))] == entries(3)
    assert not os.path.exists(legacy)
    j._destroy()
