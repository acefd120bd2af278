"""Transient block reads on a real disk (tmp_path): a block streamed to a
reader for the first time (lately) comes from the disk with O_DIRECT, so it
does not land in the page cache, and a block read again does; the bytes and
the checks (corruption, short files, ranges, the unaligned tail) are those
of a plain read, and a file system refusing O_DIRECT is read through the
page cache."""

import ctypes
import ctypes.util
import errno
import mmap
import os

import pytest

from cistern.blockstore import limits
from cistern.blockstore.store import BlockStore, block_checksum, chunk_checksums
from cistern.core.errors import CisternError

MESSAGE = limits.message_data_max_bytes
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def cached_pages(path: str) -> int:
    """How many of the file's pages the page cache holds (mincore)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(v & 1 for v in vec)


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def store(tmp_path):
    s = BlockStore(str(tmp_path / "node"), sync=True, direct_io=True)
    yield s
    s.close()


def put(store, data: bytes) -> bytes:
    bid = os.urandom(16)
    store.put(bid, data, created_s=0)
    return bid


def transient_read(store, bid, offset=0, length=None) -> tuple[bytes, list]:
    """The bytes of a transient read (each piece copied before the next is
    asked for, as a stream sends it) and the pieces' starts."""
    _, chunks = store.read_chunks(bid, offset, length, transient=True)
    out, starts = [], []
    for start, data, sums in chunks:
        assert list(sums) == chunk_checksums(data)
        out.append(bytes(data))
        starts.append(start)
    return b"".join(out), starts


@pytest.mark.parametrize("length", [3 * MESSAGE + 4096 + 9, 4 * MESSAGE, MESSAGE + 1])
def test_a_streamed_block_comes_from_the_disk_and_stays_out_of_the_page_cache(store, length):
    data = os.urandom(length)
    bid = put(store, data)
    path = store.block_path(bid)
    evict(path)
    assert cached_pages(path) == 0
    got, starts = transient_read(store, bid)
    assert got == data and starts == list(range(0, length, MESSAGE))
    assert cached_pages(path) == 0          # a buffered read would have cached every page
    assert store.read(bid) == data           # a plain read goes through the cache, as before
    assert cached_pages(path) > 0


def test_ranged_transient_reads_return_whole_aligned_sub_chunks(store):
    data = os.urandom(3 * MESSAGE + 5000)
    bid = put(store, data)
    for offset, length in [(0, 2 * MESSAGE + 1), (70_000, 2 * MESSAGE), (MESSAGE - 1, None), (5, 10)]:
        got, starts = transient_read(store, bid, offset, length)
        start = offset - offset % limits.chunk_size_bytes
        end = len(data) if length is None else offset + length
        assert starts[0] == start
        assert got[offset - start:end - start] == data[offset:end]


def test_a_corrupt_sub_chunk_fails_a_transient_read(store):
    data = os.urandom(2 * MESSAGE + 100)
    bid = put(store, data)
    with open(store.block_path(bid), "r+b") as f:
        f.seek(MESSAGE + 70_000)
        byte = f.read(1)
        f.seek(MESSAGE + 70_000)
        f.write(bytes([byte[0] ^ 1]))
        f.flush()
        os.fsync(f.fileno())
    with pytest.raises(CisternError) as e:
        transient_read(store, bid)
    assert e.value.errno == errno.EBADMSG
    assert "sub-chunk 17" in e.value.message


def test_an_unverified_transient_read_sends_the_stored_bytes_but_still_checks_the_length(store):
    """``verify=False`` (the reader checks every sub-chunk against the sums
    sent along): a corrupt byte goes out as stored, with the index's sums,
    so the reader finds it; a short file is still EIO."""
    data = os.urandom(2 * MESSAGE + 100)
    bid = put(store, data)
    corrupt = bytearray(data)
    corrupt[MESSAGE + 70_000] ^= 1
    with open(store.block_path(bid), "r+b") as f:
        f.write(corrupt)
        f.flush()
        os.fsync(f.fileno())
    _, chunks = store.read_chunks(bid, transient=True, verify=False)
    pieces = [(bytes(d), list(sums)) for _, d, sums in chunks]
    assert b"".join(d for d, _ in pieces) == bytes(corrupt)
    assert [s for _, ss in pieces for s in ss] == chunk_checksums(data)      # the index's, not the file's
    assert store.checksum_failures == 0
    os.truncate(store.block_path(bid), MESSAGE + 4096)
    with pytest.raises(CisternError) as e:
        list(store.read_chunks(bid, transient=True, verify=False)[1])
    assert e.value.errno == errno.EIO and "short" in e.value.message


def test_a_short_block_file_fails_a_transient_read_with_eio(store):
    data = os.urandom(2 * MESSAGE + 100)
    bid = put(store, data)
    os.truncate(store.block_path(bid), MESSAGE + 4096)
    with pytest.raises(CisternError) as e:
        transient_read(store, bid)
    assert e.value.errno == errno.EIO and "short" in e.value.message


def test_a_block_read_again_goes_through_the_page_cache_and_stays_there(store):
    data = os.urandom(2 * MESSAGE + 100)
    bid = put(store, data)
    path = store.block_path(bid)
    evict(path)
    assert transient_read(store, bid)[0] == data and cached_pages(path) == 0    # first read: O_DIRECT
    assert transient_read(store, bid)[0] == data
    assert cached_pages(path) == -(-len(data) // mmap.PAGESIZE)                  # second: cached, all of it


def test_only_the_latest_blocks_read_count_as_read_lately(store, monkeypatch):
    monkeypatch.setattr(limits, "direct_read_recent_blocks", 2)
    data = os.urandom(MESSAGE + 100)
    ids = [put(store, data) for _ in range(3)]
    for bid in ids:
        transient_read(store, bid)
    for bid in ids:
        evict(store.block_path(bid))
    transient_read(store, ids[0])            # forgotten: from the disk again
    transient_read(store, ids[2])            # remembered: through the cache
    assert cached_pages(store.block_path(ids[0])) == 0 and cached_pages(store.block_path(ids[2])) > 0


def test_staging_buffers_are_reused_and_a_held_view_never_breaks_giving_one_back(store):
    data = os.urandom(2 * MESSAGE + 100)
    ids = [put(store, data) for _ in range(3 * limits.direct_io_stages_kept_max)]
    for bid in ids:
        assert transient_read(store, bid)[0] == data
    assert len(store._read_stages._idle) == 1      # one buffer, taken and given back by every read
    # Readers holding the last piece while more buffers come back than are kept.
    fresh = [put(store, data) for _ in range(limits.direct_io_stages_kept_max + 2)]
    open_reads = [store.read_chunks(bid, transient=True)[1] for bid in fresh]
    held = [next(chunks)[1] for chunks in open_reads]
    for chunks in open_reads:
        chunks.close()                        # the buffers beyond the kept ones are closed while viewed
    assert len(held) == len(open_reads) and len(store._read_stages._idle) == limits.direct_io_stages_kept_max


def vm_flags(address: int) -> set:
    """The VmFlags of this process's mapping holding ``address`` (smaps)."""
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                found = lo <= address < hi
            elif found and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_cold_streamed_read_fills_a_huge_page_stage_per_disk_read(store, monkeypatch):
    """Pinning 4 KiB pages for O_DIRECT was most of a cold read's kernel
    CPU: the stage is one transparent huge page (advised), and each disk
    read fills all of it, two messages' worth."""
    data = os.urandom(4 * MESSAGE + 100)
    bid = put(store, data)
    real_preadv, reads = os.preadv, []

    def counting_preadv(fd, buffers, offset, *args):
        reads.append((offset, sum(len(b) for b in buffers)))
        return real_preadv(fd, buffers, offset, *args)

    monkeypatch.setattr(os, "preadv", counting_preadv)
    got, starts = transient_read(store, bid)
    assert got == data and starts == list(range(0, len(data), MESSAGE))
    stage_bytes = limits.direct_read_stage_bytes
    assert stage_bytes == 2 * MESSAGE
    assert reads == [(0, stage_bytes), (stage_bytes, stage_bytes), (2 * stage_bytes, 4096)]
    (stage,) = store._read_stages._idle
    with memoryview(stage) as view:
        assert "hg" in vm_flags(ctypes.addressof(ctypes.c_char.from_buffer(view)))   # MADV_HUGEPAGE


def refuse_o_direct(monkeypatch) -> None:
    """Make ``os.open`` refuse O_DIRECT as tmpfs and some FUSE file systems do."""
    real_open = os.open

    def open_refusing_direct(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_refusing_direct)


def test_a_file_system_refusing_o_direct_is_read_through_the_page_cache(store, monkeypatch):
    data = os.urandom(2 * MESSAGE + 100)
    bid = put(store, data)
    refuse_o_direct(monkeypatch)
    evict(store.block_path(bid))
    assert transient_read(store, bid)[0] == data
    assert cached_pages(store.block_path(bid)) > 0


def test_a_store_without_direct_io_streams_through_the_page_cache(tmp_path):
    s = BlockStore(str(tmp_path / "node"), sync=False)
    try:
        data = os.urandom(2 * MESSAGE + 100)
        bid = put(s, data)
        assert transient_read(s, bid)[0] == data
    finally:
        s.close()


# -- whole blocks read straight from a local node's files (short-circuit) ------

@pytest.mark.parametrize("length", [1, 4096, 3 * 4096 + 7, (1 << 20) + 1])
def test_read_file_direct_returns_the_files_bytes_without_caching_them(tmp_path, length):
    from cistern.blockstore.store import read_file_direct

    data = os.urandom(length)
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())             # as block files are: no dirty page stays cached
    evict(str(path))
    assert bytes(read_file_direct(str(path), length + 1)) == data        # short at the end of the file
    assert bytes(read_file_direct(str(path), length - 1 or 1)) == data[:length - 1 or 1]
    if length > 4096:                    # a file of one page may keep it cached (seen on ext4 here)
        assert cached_pages(str(path)) == 0


def test_read_file_direct_answers_none_where_o_direct_is_refused(tmp_path, monkeypatch):
    from cistern.blockstore.store import read_file_direct

    path = tmp_path / "f"
    path.write_bytes(b"x" * 5000)
    refuse_o_direct(monkeypatch)
    assert read_file_direct(str(path), 5001) is None
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError):
        read_file_direct(str(tmp_path / "missing"), 10)


def test_a_clients_first_local_read_of_a_block_skips_the_page_cache_and_a_repeat_keeps_it(store):
    """``DataPath`` reading whole blocks from a node's files on its host, as
    the mount beside a node does: the first read of a block lately comes
    with O_DIRECT (no second copy of the data in the page cache), a repeat
    through the page cache; the bytes are verified either way, and a file
    that does not match its checksum is not served (the service is asked)."""
    from cistern.client.blocks import DataPath

    class NoService:
        def close(self):
            pass

    data = os.urandom(3 * MESSAGE + 4096 + 9)
    bid = put(store, data)
    path = store.block_path(bid)
    evict(path)
    reader = DataPath(["m:1"], nodes=NoService(), blocks=NoService(), node_id="n1", local_data_dir=store.data_dir)
    reader.address = lambda node_id: None                 # no node serves it: local files only
    reader.refresh_nodes = lambda force=False: None
    try:
        block = [bid, len(data), block_checksum(data), ["n2", "n1"]]
        assert reader.read(block) == data and cached_pages(path) == 0
        whole = reader.read_whole(block)
        assert whole[10:20] == data[10:20] and cached_pages(path) == -(-len(data) // mmap.PAGESIZE)
        other = put(store, data[::-1])
        with open(store.block_path(other), "r+b") as f:     # a flipped byte on disk
            f.seek(5)
            f.write(b"\x00" if data[::-1][5] else b"\x01")
        with pytest.raises(OSError) as e:
            reader.read([other, len(data), block_checksum(data[::-1]), ["n1"]])
        assert e.value.errno == errno.EIO                    # no replica could be read: not the bad bytes
    finally:
        reader.close()
