"""The block store on a real disk (tmp_path): what is written is what is
read, bad bytes are refused and leave nothing, corruption on disk is caught,
and what a crash leaves behind is cleaned at reopen."""

import errno
import os

import pytest

from cistern.blockstore import limits
from cistern.blockstore.store import (STATE_WRITING, BlockInfo, BlockStore, aligned_range, block_checksum,
                                      chunk_checksums, encode_entry)
from cistern.core.errors import CisternError

CHUNK = limits.chunk_size_bytes


def block(n_bytes: int, seed: int = 1) -> bytes:
    return (bytes(range(256)) * (n_bytes // 256 + 1))[seed:seed + n_bytes]


@pytest.fixture
def store(tmp_path):
    s = BlockStore(str(tmp_path / "node"), sync=False)
    yield s
    s.close()


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def block_files(store) -> list[str]:
    return files_under(store.blocks_dir) + files_under(store.tmp_dir)


def test_written_block_reads_back_whole_and_by_range_and_is_listed(store):
    data = block(5 * CHUNK + 1234)
    bid = os.urandom(16)
    info = store.put(bid, data, created_s=1700000000.5)
    assert (info.length, info.checksum, info.state_name, info.created_s) == \
        (len(data), block_checksum(data), "final", 1700000000.5)
    assert list(info.chunk_checksums) == chunk_checksums(data) and len(info.chunk_checksums) == 6
    assert store.read(bid) == data
    for offset, length in [(0, 1), (CHUNK - 1, 2), (100, 3 * CHUNK), (5 * CHUNK, 1234), (len(data) - 1, 10),
                           (len(data), 5), (7, 0)]:
        assert store.read(bid, offset, length) == data[offset:offset + length], (offset, length)
    assert store.list() == [(bid, len(data))]
    assert store.capacity()["used_bytes"] == len(data) and store.capacity()["block_count"] == 1
    assert store.verify(bid) == ""


def test_a_range_past_the_end_is_refused(store):
    bid = os.urandom(16)
    store.put(bid, block(100), created_s=0)
    with pytest.raises(CisternError) as e:
        store.read(bid, 101, 1)
    assert e.value.errno == errno.EINVAL


def test_delete_forgets_the_block_and_is_idempotent(store):
    bid = os.urandom(16)
    store.put(bid, block(3 * CHUNK), created_s=0)
    assert store.delete(bid) is True
    assert store.delete(bid) is False
    with pytest.raises(CisternError) as e:
        store.read(bid)
    assert e.value.errno == errno.ENOENT
    assert store.info(bid, missing_ok=True) is None
    assert block_files(store) == [] and store.list() == []
    assert store.capacity()["used_bytes"] == 0


def test_delete_many_forgets_the_blocks_present_with_one_index_sync(tmp_path, monkeypatch):
    store = BlockStore(str(tmp_path / "node"), sync=True)
    try:
        ids = [os.urandom(16) for _ in range(5)]
        for bid in ids:
            store.put(bid, block(CHUNK + 7), created_s=0)
        syncs = []
        monkeypatch.setattr(store, "_sync_index", lambda: syncs.append(1))
        absent = os.urandom(16)
        assert store.delete_many(ids[:4] + [absent]) == ids[:4]
        assert syncs == [1]                                  # one index sync for all four
        assert store.list() == [(ids[4], CHUNK + 7)] and len(block_files(store)) == 1
        assert store.capacity()["block_count"] == 1 and store.capacity()["used_bytes"] == CHUNK + 7
        with pytest.raises(CisternError) as e:
            store.delete_many([ids[4], b"short"])            # all valid, or none deleted
        assert e.value.errno == errno.EINVAL and store.list() == [(ids[4], CHUNK + 7)]
        assert store.delete_many([absent]) == [] and syncs == [1]   # nothing dropped: nothing synced
    finally:
        store.close()
    reopened = BlockStore(str(tmp_path / "node"), sync=True)
    try:
        assert reopened.list() == [(ids[4], CHUNK + 7)] and not any(reopened.recovered.values())
    finally:
        reopened.close()


def test_a_wrong_sub_chunk_checksum_is_refused_and_leaves_nothing(store):
    data = block(3 * CHUNK)
    sums = chunk_checksums(data)
    sums[1] ^= 1
    bid = os.urandom(16)
    with pytest.raises(CisternError) as e:
        store.put(bid, data, created_s=0, chunk_sums=sums)
    assert e.value.errno == errno.EBADMSG and "sub-chunk 1" in e.value.message
    assert store.info(bid, missing_ok=True) is None and block_files(store) == []
    store.put(bid, data, created_s=0)   # the id is free again for a good write
    assert store.read(bid) == data


def test_a_wrong_whole_checksum_is_refused_and_leaves_nothing(store):
    data = block(CHUNK + 5)
    bid = os.urandom(16)
    with pytest.raises(CisternError) as e:
        store.put(bid, data, created_s=0, checksum=block_checksum(b"other"))
    assert e.value.errno == errno.EBADMSG
    assert store.info(bid, missing_ok=True) is None and block_files(store) == []


def test_fewer_or_more_bytes_than_announced_are_refused(store):
    data = block(2 * CHUNK)
    bid = os.urandom(16)
    writer = store.begin_write(bid, len(data), block_checksum(data), chunk_checksums(data), created_s=0)
    with writer:
        writer.write(data[:CHUNK])
        with pytest.raises(CisternError) as e:
            writer.commit()
    assert e.value.errno == errno.EINVAL and "stream ended after 65536 of 131072" in e.value.message
    writer = store.begin_write(bid, len(data), block_checksum(data), chunk_checksums(data), created_s=0)
    with pytest.raises(CisternError) as e:
        writer.write(data + b"x")
    assert e.value.errno == errno.EINVAL
    assert store.info(bid, missing_ok=True) is None and block_files(store) == []


def test_an_existing_id_takes_the_same_bytes_again_but_not_other_bytes(store):
    bid = os.urandom(16)
    store.put(bid, block(1000), created_s=0)
    store.put(bid, block(1000), created_s=5)          # a retried write: a no-op
    assert store.info(bid).created_s == 0
    with pytest.raises(CisternError) as e:
        store.put(bid, block(1000, seed=2), created_s=0)
    assert e.value.errno == errno.EEXIST
    assert store.read(bid) == block(1000)


def test_the_same_id_cannot_be_written_twice_at_once(store):
    bid = os.urandom(16)
    data = block(10)
    first = store.begin_write(bid, 10, block_checksum(data), chunk_checksums(data), created_s=0)
    with pytest.raises(CisternError) as e:
        store.begin_write(bid, 10, block_checksum(data), chunk_checksums(data), created_s=0)
    assert e.value.errno == errno.EBUSY
    first.abort()


@pytest.mark.parametrize("bad_id", [b"", b"x" * 15, b"x" * 17, "0" * 16, None])
def test_invalid_block_ids_are_einval_everywhere(store, bad_id):
    for call in (lambda: store.put(bad_id, b"abc", created_s=0), lambda: store.read(bad_id),
                 lambda: store.info(bad_id), lambda: store.delete(bad_id), lambda: store.verify(bad_id)):
        with pytest.raises(CisternError) as e:
            call()
        assert e.value.errno == errno.EINVAL


def test_bad_headers_are_refused(store):
    data = block(CHUNK + 1)
    bid = os.urandom(16)
    cases = [(len(data), block_checksum(data)[:8], chunk_checksums(data), errno.EINVAL),
             (len(data), block_checksum(data), chunk_checksums(data)[:1], errno.EINVAL),
             (-1, block_checksum(data), [], errno.EINVAL),
             (limits.block_size_max_bytes + CHUNK, block_checksum(data), [0] * (limits.chunk_checksums_max + 1),
              errno.E2BIG)]
    for length, checksum, sums, err in cases:
        with pytest.raises(CisternError) as e:
            store.begin_write(bid, length, checksum, sums, created_s=0)
        assert e.value.errno == err
    assert block_files(store) == [] and store.info(bid, missing_ok=True) is None


def test_a_flipped_byte_on_disk_fails_reads_of_that_range_and_verify(store):
    data = block(4 * CHUNK)
    bid = os.urandom(16)
    store.put(bid, data, created_s=0)
    flip_at = 2 * CHUNK + 77
    with open(store.block_path(bid), "r+b") as f:
        f.seek(flip_at)
        original = f.read(1)
        f.seek(flip_at)
        f.write(bytes([original[0] ^ 0xFF]))
    with pytest.raises(CisternError) as e:
        store.read(bid, 2 * CHUNK, 10)
    assert e.value.errno == errno.EBADMSG and "sub-chunk 2" in e.value.message
    with pytest.raises(CisternError):
        store.read(bid)
    # Ranges that do not touch the bad sub-chunk still read.
    assert store.read(bid, 0, 2 * CHUNK) == data[:2 * CHUNK]
    assert store.read(bid, 3 * CHUNK) == data[3 * CHUNK:]
    assert "sub-chunk 2" in store.verify(bid)
    assert store.checksum_failures >= 3
    moved = store.quarantine(bid)
    assert moved and os.path.dirname(moved) == store.quarantine_dir
    assert store.info(bid, missing_ok=True) is None and store.list() == []


def test_a_truncated_block_file_is_caught(store):
    bid = os.urandom(16)
    store.put(bid, block(3 * CHUNK), created_s=0)
    os.truncate(store.block_path(bid), 2 * CHUNK + 5)
    assert store.verify(bid) != ""
    with pytest.raises(CisternError) as e:
        store.read(bid, 2 * CHUNK, 10)
    assert e.value.errno == errno.EIO


def test_reopen_keeps_final_blocks_and_drops_crash_leftovers(tmp_path):
    path = str(tmp_path / "node")
    s = BlockStore(path, sync=True)
    kept, half, renamed = os.urandom(16), os.urandom(16), os.urandom(16)
    s.put(kept, block(2 * CHUNK), created_s=3)
    # A crash mid-write: a temp file and an index entry in state writing.
    writer = s.begin_write(half, 100, block_checksum(block(100)), chunk_checksums(block(100)), created_s=0)
    writer.write(block(50))
    # A crash after the rename but before the final index entry.
    entry = BlockInfo(renamed, 10, block_checksum(block(10)), tuple(chunk_checksums(block(10))), STATE_WRITING, 0)
    with s.env.begin(write=True, db=s.db) as txn:
        txn.put(renamed, encode_entry(entry))
    os.makedirs(os.path.dirname(s.block_path(renamed)), exist_ok=True)
    with open(s.block_path(renamed), "wb") as f:
        f.write(block(10))
    # A block file nobody indexed (its index entry never reached the disk).
    stray = os.urandom(16)
    os.makedirs(os.path.dirname(s.block_path(stray)), exist_ok=True)
    with open(s.block_path(stray), "wb") as f:
        f.write(b"stray")
    s.env.sync(True)
    s.close()   # no abort: as if the process died here

    s = BlockStore(path, sync=True)
    try:
        assert s.recovered == {"tmp_files": 1, "writing_entries": 2, "unindexed_files": 1, "missing_files": 0}
        assert s.list() == [(kept, 2 * CHUNK)]
        assert s.read(kept) == block(2 * CHUNK) and s.info(kept).created_s == 3
        assert files_under(s.tmp_dir) == [] and len(files_under(s.blocks_dir)) == 1
        assert s.capacity()["block_count"] == 1
        s.put(half, block(100), created_s=0)   # the half-written id is free again
        assert s.read(half) == block(100)
    finally:
        s.close()


def test_an_indexed_block_whose_file_vanished_is_dropped_at_reopen(tmp_path):
    path = str(tmp_path / "node")
    s = BlockStore(path, sync=False)
    bid = os.urandom(16)
    s.put(bid, block(10), created_s=0)
    os.unlink(s.block_path(bid))
    s.env.sync(True)
    s.close()
    s = BlockStore(path, sync=False)
    assert s.recovered["missing_files"] == 1 and s.list() == []
    s.close()


def test_aligned_range_covers_whole_sub_chunks():
    assert aligned_range(0, 1) == (0, CHUNK)
    assert aligned_range(CHUNK - 1, 2) == (0, 2 * CHUNK)
    assert aligned_range(CHUNK, CHUNK) == (CHUNK, 2 * CHUNK)
    assert aligned_range(5, 0) == (0, 0)


def test_an_empty_block_is_a_block(store):
    bid = os.urandom(16)
    store.put(bid, b"", created_s=0)
    assert store.read(bid) == b"" and store.verify(bid) == "" and store.list() == [(bid, 0)]


def test_a_second_store_on_the_same_directory_is_refused(store):
    with pytest.raises(CisternError) as e:
        BlockStore(store.data_dir, sync=False)
    assert e.value.errno == errno.EBUSY and "in use" in e.value.message


# -- O_DIRECT block files ------------------------------------------------------

def _write_in_pieces(store, bid, data, piece_bytes):
    writer = store.begin_write(bid, len(data), block_checksum(data), chunk_checksums(data), created_s=0)
    with writer:
        for i in range(0, len(data), piece_bytes):
            writer.write(data[i:i + piece_bytes])
        writer.commit()


@pytest.mark.parametrize("length", [1, 4095, 4096, 4097, CHUNK * 16, CHUNK * 16 + 4096, CHUNK * 16 + 77,
                                    3 * limits.direct_io_stage_bytes + 5000])
@pytest.mark.parametrize("piece_bytes", [1000, 64 * 1024 + 3, limits.message_data_max_bytes])
def test_direct_io_writes_any_length_in_any_pieces(tmp_path, length, piece_bytes):
    s = BlockStore(str(tmp_path / "node"), sync=True, direct_io=True)
    try:
        assert s.stages is not None
        data = os.urandom(length)
        bid = os.urandom(16)
        _write_in_pieces(s, bid, data, piece_bytes)
        assert os.path.getsize(s.block_path(bid)) == length
        with open(s.block_path(bid), "rb") as f:
            assert f.read() == data
        assert s.read(bid) == data and s.verify(bid) == ""
        assert files_under(s.tmp_dir) == []
    finally:
        s.close()


def test_page_aligned_pieces_are_written_from_where_they_are_and_others_staged(tmp_path):
    """A transfer port's receive buffer puts a message's data on a page:
    such a piece goes to the disk with O_DIRECT as it is, no staging copy;
    an unaligned or read-only piece is staged. The file is right either way."""
    import mmap

    s = BlockStore(str(tmp_path / "node"), sync=True, direct_io=True)
    try:
        stage = s.stages.take()
        stage[:] = b"\xee" * len(stage)          # the stage the writer will get: marked
        s.stages.give(stage)
        step = limits.message_data_max_bytes
        data = os.urandom(3 * step + 700)
        page = limits.direct_io_align_bytes
        received = mmap.mmap(-1, page + len(data) + 1)
        for offset, expect_staged in ((page, False), (page + 1, True)):
            received[offset:offset + len(data)] = data
            bid = os.urandom(16)
            writer = s.begin_write(bid, len(data), block_checksum(data), chunk_checksums(data), created_s=0)
            with writer, memoryview(received) as whole:
                for i in range(0, len(data), step):
                    writer.write(whole[offset + i:offset + min(i + step, len(data))])
                writer.commit()
            with open(s.block_path(bid), "rb") as f:
                assert f.read() == data
            stage = s.stages.take()
            staged = stage[page:step] != b"\xee" * (step - page)   # the tail (700 bytes) is staged either way
            s.stages.give(stage)
            assert staged == expect_staged, offset
    finally:
        s.close()


def test_direct_io_is_the_default_of_a_syncing_store_only(tmp_path):
    synced = BlockStore(str(tmp_path / "a"), sync=True)
    unsynced = BlockStore(str(tmp_path / "b"), sync=False)
    try:
        assert synced.stages is not None and unsynced.stages is None
    finally:
        synced.close()
        unsynced.close()


def test_direct_io_refused_bytes_leave_nothing_and_the_stage_is_reused(tmp_path):
    s = BlockStore(str(tmp_path / "node"), sync=True, direct_io=True)
    try:
        data = block(2 * limits.direct_io_stage_bytes + 10)
        bad = bytearray(data)
        bad[-5] ^= 1                    # in the unaligned tail: caught by the last sub-chunk at commit
        bid = os.urandom(16)
        writer = s.begin_write(bid, len(data), block_checksum(data), chunk_checksums(data), created_s=0)
        with pytest.raises(CisternError) as e:
            with writer:
                writer.write(bytes(bad))
                writer.commit()
        assert e.value.errno == errno.EBADMSG
        assert block_files(s) == [] and s.list() == []
        stage = s.stages.take()         # the aborted writer gave its buffer back
        s.stages.give(stage)
        _write_in_pieces(s, bid, data, limits.message_data_max_bytes)
        assert s.read(bid) == data
    finally:
        s.close()


def test_a_file_system_refusing_o_direct_gets_plain_writes(tmp_path, monkeypatch):
    real_open, real_write = os.open, os.write
    refused = {"open": 0, "write": 0}

    def open_refusing_direct(path, flags, *args):
        if flags & os.O_DIRECT and "refuse-open" in path:
            refused["open"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    def write_refusing_direct(fd, data):
        import fcntl
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused["write"] += 1
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", open_refusing_direct)
    data = block(limits.direct_io_stage_bytes + 4096 + 9)
    for name in ("refuse-open", "refuse-write"):
        if name == "refuse-write":
            monkeypatch.setattr(os, "write", write_refusing_direct)
        s = BlockStore(str(tmp_path / name), sync=True, direct_io=True)
        try:
            bid = os.urandom(16)
            _write_in_pieces(s, bid, data, 100_000)
            assert s.read(bid) == data and files_under(s.tmp_dir) == []
        finally:
            s.close()
    assert refused == {"open": 1, "write": 1}
