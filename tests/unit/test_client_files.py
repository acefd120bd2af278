"""The data path's logic without nodes: open-mode parsing against
builtins.open, the pure ``Extents`` core (block splitting, read-modify-write,
appends, truncation, holes), the ``File`` object over an in-process metadata
backend and an in-memory block store, and ``DataPath``'s replica order,
failover, bad-replica reports and upload retries with fake clients."""

from __future__ import annotations

import errno
import io
import os
import threading
import time
from concurrent.futures import Future

import pytest

from cistern.blockstore.pipeline import ReplicaResult
from cistern.client.api import Client
from cistern.client.blocks import DataPath, order_replicas
from cistern.client.extents import Extents, parse_mode
from cistern.client.testing import InProcessMetaClient
from cistern.core.errors import CisternError

BS = 16   # a tiny block size makes block boundaries easy to hit


# -- mode parsing -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["r", "rb", "rt", "r+", "rb+", "w", "wb", "w+", "a", "ab", "a+", "x", "xb",
                                  "x+", "rw", "rr", "", "b", "+", "rbt", "q", "wa", "U", "r+b+"])
def test_modes_are_accepted_and_refused_as_builtins_open_does(mode, tmp_path):
    path = tmp_path / "f"
    try:
        open(path, mode).close()
        expected = None
    except ValueError as e:
        expected = str(e)
    except FileNotFoundError:
        expected = None
    if expected is None:
        om = parse_mode(mode)
        assert om.binary == ("b" in mode)
        assert om.readable == ("r" in mode or "+" in mode)
        assert om.writable == (not mode.startswith("r") or "+" in mode)
    else:
        with pytest.raises(ValueError):
            parse_mode(mode)
    if path.exists():
        path.unlink()


def test_binary_mode_refuses_text_arguments_and_text_refuses_unbuffered():
    for kwargs in ({"encoding": "utf-8"}, {"errors": "strict"}, {"newline": ""}):
        with pytest.raises(ValueError, match="binary mode doesn't take"):
            parse_mode("rb", **kwargs)
    with pytest.raises(ValueError, match="unbuffered text"):
        parse_mode("r", buffering=0)
    with pytest.raises(TypeError):
        parse_mode(1)
    om = parse_mode("a")
    assert (om.create, om.append, om.truncate, om.exclusive) == (True, True, False, False)
    om = parse_mode("x")
    assert (om.create, om.exclusive) == (True, True)


# -- the pure core -------------------------------------------------------------------


def stored(n: int, length: int):
    return [bytes([n]) * 16, length, b"", ["n1"]]


def no_load(e):
    raise AssertionError(f"unexpected load of {e}")


def test_sequential_writes_split_into_full_blocks_and_a_short_last_one():
    x = Extents([], 0, BS)
    x.write(0, b"a" * 40, no_load)
    assert [(e.start, e.length, e.dirty) for e in x.items] == [(0, 16, True), (16, 16, True), (32, 8, True)]
    assert x.size == 40
    # The write position is in the last extent: only the two complete ones go now.
    assert [e.start for e in x.to_upload(40)] == [0, 16]
    assert [e.start for e in x.to_upload(40, final=True)] == [0, 16, 32]


def test_overwriting_the_middle_rewrites_only_the_blocks_it_touches():
    layout = [stored(1, 16), stored(2, 16), stored(3, 16)]
    x = Extents(layout, 48, BS)
    loads = []
    x.write(14, b"XYZW", lambda e: loads.append(e.start) or bytes([e.block[0][0]]) * e.length)
    assert loads == [0, 16]
    assert [e.stored for e in x.items] == [False, False, True]
    assert bytes(x.items[0].data) == b"\x01" * 14 + b"XY"
    assert bytes(x.items[1].data) == b"ZW" + b"\x02" * 14
    assert x.items[2].block == stored(3, 16)
    assert x.size == 48


def test_appending_rewrites_a_short_last_block_as_a_fuller_one():
    x = Extents([stored(1, 16), stored(2, 5)], 21, BS)
    x.write(21, b"b" * 20, lambda e: b"\x02" * 5)
    assert [(e.start, e.length, e.stored) for e in x.items] == [(0, 16, True), (16, 16, False), (32, 9, False)]
    assert bytes(x.items[1].data) == b"\x02" * 5 + b"b" * 11


def test_pieces_of_a_read_cover_extents_and_the_hole_after_them():
    x = Extents([stored(1, 16), stored(2, 16)], 40, BS)
    pieces = x.pieces(10, 100)
    assert [(p.extent.start if p.extent else None, p.offset, p.length) for p in pieces] == [
        (0, 10, 6), (16, 0, 16), (None, 0, 8)]
    assert x.pieces(40, 10) == [] and x.pieces(50, 10) == []


def test_truncate_keeps_a_straddling_block_which_must_be_rewritten_before_anything_follows_it():
    x = Extents([stored(1, 16), stored(2, 16), stored(3, 16)], 48, BS)
    x.truncate(20)
    assert [(e.start, e.length) for e in x.items] == [(0, 16), (16, 4)]
    assert x.stale() == []                      # nothing after the hidden tail: it may stay
    assert x.layout() == [stored(1, 16), stored(2, 16)]
    x.size = 30                                 # a growing truncate would expose the old tail
    assert x.stale() == [x.items[1]]


def test_a_layout_with_a_straddling_block_from_the_metadata_is_clipped_to_the_size():
    x = Extents([stored(1, 16), stored(2, 16)], 20, BS)
    assert x.items[1].length == 4 and x.end == 20
    assert x.stale() == []


def test_an_upload_finished_after_the_extent_changed_is_ignored():
    x = Extents([], 0, BS)
    x.write(0, b"a" * 16, no_load)
    e = x.items[0]
    first = object()
    x.uploading(e, first)
    x.write(0, b"b", no_load)                   # changes it while the upload runs
    assert not x.uploaded(e, first, [b"\x09" * 16, 16, b"", ["n1"]])
    assert e.dirty and bytes(e.data) == b"b" + b"a" * 15


def test_a_large_first_write_gets_the_whole_block_buffer_and_uploads_only_what_was_written():
    from cistern.client.extents import whole_buffer_write_min_bytes as big
    x = Extents([], 0, 4 * big)
    x.write(0, b"a" * big, no_load)
    e = x.items[0]
    buffer = e.data
    assert len(buffer) == 4 * big and e.length == big     # room for the rest of the block
    x.write(big, b"b" * (big + 5), no_load)
    assert e.data is buffer and e.length == 2 * big + 5    # filled in place, never regrown
    payload = x.uploading(e, object())
    assert bytes(payload) == b"a" * big + b"b" * (big + 5)
    x.write(1, b"Z", no_load)                              # a change while uploading copies what was written
    assert e.dirty and len(e.data) == e.length == 2 * big + 5 and e.data[:3] == b"aZa"
    assert bytes(payload) == b"a" * big + b"b" * (big + 5)  # the upload's bytes did not change
    x.truncate(big)
    assert bytes(e.data[:e.length]) == b"aZ" + b"a" * (big - 2) and e.length == x.size == big
    assert bytes(x.uploading(e, object())) == b"aZ" + b"a" * (big - 2)   # the kept tail is never sent
    small = Extents([], 0, 4 * big)
    small.write(0, b"c" * 10, no_load)
    assert len(small.items[0].data) == 10                   # a small file keeps a small buffer


# -- the file object over fakes --------------------------------------------------------


class FakeData:
    """A DataPath stand-in: blocks in a dict, uploads and reads counted."""

    def __init__(self, block_size: int = BS):
        self.holder = b"test-holder"
        self.size = block_size
        self.blocks: dict[bytes, bytes] = {}
        self.leases: set = set()
        self.uploads = self.whole_reads = self.range_reads = 0
        self.fail_uploads = 0

    def block_size_bytes(self) -> int:
        return self.size

    def hold_lease(self, key) -> bool:
        if key in self.leases:
            return False
        self.leases.add(key)
        return True

    def drop_lease(self, key) -> None:
        self.leases.discard(key)

    def _future(self, fn, *args) -> Future:
        f = Future()
        try:
            f.set_result(fn(*args))
        except OSError as e:
            f.set_exception(e)
        return f

    def submit_upload(self, data, replication) -> Future:
        return self._future(self.upload, data, replication)

    def upload(self, data, replication):
        if self.fail_uploads:
            self.fail_uploads -= 1
            raise OSError(errno.EIO, "no storage node took a block")
        self.uploads += 1
        block_id = os.urandom(16)
        self.blocks[block_id] = bytes(data)
        return [block_id, len(data), b"", ["n1"]]

    def submit_read(self, block, offset=0, length=None) -> Future:
        return self._future(self.read, block, offset, length)

    def read(self, block, offset=0, length=None):
        data = self.blocks[block[0]]
        if length is None:
            self.whole_reads += 1
            return data
        self.range_reads += 1
        return data[offset:offset + length]

    def refresh_nodes(self, force=False):
        return {"n1": "127.0.0.1:1"}

    def close(self):
        pass


@pytest.fixture
def data():
    return FakeData()


@pytest.fixture
def client(data):
    c = Client(InProcessMetaClient(), uid=0, gid=0, groups=[], data=data)
    yield c
    c.close()


def test_writes_are_buffered_per_block_and_published_by_one_commit_at_close(client, data):
    f = client.open("/f", "wb")
    f.write(b"a" * 10)
    assert data.uploads == 0                    # a block is not uploaded while the writer is in it
    f.write(b"b" * 10)
    assert data.uploads == 1                    # the first block is full and left behind
    f.write(b"c" * 20)
    assert data.uploads == 2                    # the second too; the third (8 bytes) waits
    assert client.stat("/f").st_size == 0       # nothing visible before the commit
    version = client.attr("/f").version
    f.close()
    assert data.uploads == 3 and client.read_file("/f") == b"a" * 10 + b"b" * 10 + b"c" * 20
    assert client.attr("/f").version == version + 1   # one commit
    assert data.leases == set()


def test_w_keeps_the_old_contents_visible_until_its_commit(client):
    client.write_file("/f", b"old contents")
    f = client.open("/f", "wb")
    assert client.read_file("/f") == b"old contents"
    f.write(b"new")
    assert client.read_file("/f") == b"old contents"
    f.flush()
    assert client.read_file("/f") == b"new"
    f.close()


def test_a_handle_reads_its_own_unflushed_writes_and_seek_tell_work(client):
    client.write_file("/f", bytes(range(50)))
    with client.open("/f", "r+b") as f:
        f.seek(10)
        f.write(b"XY")
        assert f.tell() == 12
        f.seek(-2, io.SEEK_CUR)
        assert f.read(4) == b"XY\x0c\x0d"
        assert f.seek(0, io.SEEK_END) == 50
        assert f.read() == b""
        with pytest.raises(ValueError):
            f.seek(-1)
    assert client.read_file("/f")[8:14] == b"\x08\x09XY\x0c\x0d"


def test_append_mode_writes_at_the_end_whatever_the_position(client):
    client.write_file("/f", b"12345")
    with client.open("/f", "a+b") as f:
        f.seek(0)
        f.write(b"67")
        f.seek(0)
        assert f.read() == b"1234567"
    assert client.read_file("/f") == b"1234567"


def test_truncate_commits_at_once_and_a_growing_one_reads_zeros(client):
    client.write_file("/f", b"z" * 40)
    with client.open("/f", "r+b") as f:
        assert f.truncate(20) == 20
        assert client.read_file("/f") == b"z" * 20
        f.truncate(30)
    assert client.read_file("/f") == b"z" * 20 + bytes(10)


def test_sequential_reads_fetch_whole_blocks_and_random_ones_only_ranges(client, data):
    client.write_file("/f", bytes(range(100)))
    data.whole_reads = data.range_reads = 0
    with client.open("/f", "rb") as f:
        assert f.read(5) == bytes(range(5))
        assert data.whole_reads >= 1 and data.range_reads == 0
        whole = data.whole_reads
        chunks = [f.read(5) for _ in range(19)]
        assert b"".join(chunks) == bytes(range(5, 100))
        assert data.range_reads == 0 and data.whole_reads <= 7    # 7 blocks, each fetched once
        f.seek(3)
        assert f.read(20) == bytes(range(3, 23))
        assert data.whole_reads <= max(whole, 7)


def test_slightly_reordered_sequential_reads_still_read_ahead_whole_blocks(client, data):
    """A FUSE mount's threads pass the kernel's read-ahead requests on out of
    order: reads landing within a block of the last end count as sequential,
    so read-ahead keeps going instead of each piece becoming a ranged read."""
    payload = bytes(range(200))
    client.write_file("/r", payload)
    data.whole_reads = data.range_reads = 0
    offsets = []
    for i in range(0, 200, 8):      # pairs of 4-byte reads, each pair swapped: 0, 8, 4, 16, 12, ...
        offsets += [i + 4, i] if i else [0, 4]
    with client.open("/r", "rb") as f:
        for at in offsets:
            assert f.pread(4, at) == payload[at:at + 4]
        assert data.range_reads == 0 and data.whole_reads == -(-200 // BS)   # each block fetched once
        assert f.pread(4, 20) == payload[20:24]                              # far behind: a ranged read
        assert data.range_reads == 1


def test_a_pread_waiting_for_its_block_does_not_hold_up_another_of_a_block_already_here(client, data):
    """FUSE threads pread one read-only File at once: the file's lock is held
    while a read is planned, not while its block arrives, so a read of a
    block already fetched is served while another waits for its own."""
    payload = bytes(range(48))
    client.write_file("/c", payload)
    gate = threading.Event()
    slow = {client.layout("/c")[1][0][0]}    # the first block arrives only when the gate opens
    plain_submit = data.submit_read

    def submit_read(block, offset=0, length=None):
        if block[0] not in slow:
            return plain_submit(block, offset, length)
        f = Future()
        threading.Thread(target=lambda: (gate.wait(30), f.set_result(data.read(block))), daemon=True).start()
        return f

    data.submit_read = submit_read
    with client.open("/c", "rb") as f:
        got = {}
        waiting = threading.Thread(target=lambda: got.setdefault("first", f.pread(8, 0)))
        waiting.start()
        time.sleep(0.2)
        assert waiting.is_alive()                              # waiting for block 0
        assert f.pread(8, BS) == payload[BS:BS + 8]            # block 1, fetched ahead: served meanwhile
        gate.set()
        waiting.join(30)
        assert got["first"] == payload[:8]


def test_text_mode_lines_and_iteration(client):
    with client.open("/t.txt", "w", encoding="utf-8") as f:
        f.write("héllo\nworld\n")
        assert f.mode == "w" and f.name == "/t.txt"
    with client.open("/t.txt", encoding="utf-8") as f:
        assert list(f) == ["héllo\n", "world\n"]
    with client.open("/t.txt", "rb") as f:
        assert f.readline() == "héllo\n".encode()


def test_errors_and_unsupported_operations(client):
    with pytest.raises(FileNotFoundError):
        client.open("/missing")
    client.mkdir("/d")
    with pytest.raises(IsADirectoryError):
        client.open("/d", "wb")
    client.write_file("/f", b"x")
    with pytest.raises(FileExistsError):
        client.open("/f", "xb")
    with client.open("/f", "rb") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"y")
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
    with client.open("/f", "wb") as f:
        with pytest.raises(io.UnsupportedOperation):
            f.read()
    with pytest.raises(ValueError):
        f.write(b"closed")


def test_a_removed_file_makes_the_writer_commit_estale(client):
    f = client.open("/gone", "wb")
    f.write(b"data")
    client.remove("/gone")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.ESTALE


def test_a_failed_upload_stays_buffered_and_the_next_flush_retries(client, data):
    f = client.open("/f", "wb")
    f.write(b"q" * 8)
    data.fail_uploads = 1
    with pytest.raises(OSError):
        f.flush()
    assert client.stat("/f").st_size == 0
    f.flush()
    f.close()
    assert client.read_file("/f") == b"q" * 8


def test_replication_is_set_on_the_file_and_used_for_uploads(client, data):
    seen = []
    real = data.upload
    data.upload = lambda d, r: (seen.append(r), real(d, r))[1]
    with client.open("/r", "wb", replication=2) as f:
        f.write(b"x")
    assert seen == [2] and client.getxattr("/r", "user.cistern.replication") == b"2"
    assert client.layout("/r")[2] == 2


# -- DataPath with fake node and block clients ------------------------------------------


def test_replica_order_puts_the_local_node_first_and_rotates_the_rest():
    assert order_replicas(["a", "b", "c"], "b", 0) == ["b", "a", "c"]
    assert order_replicas(["a", "b", "c"], "b", 1) == ["b", "c", "a"]
    assert order_replicas(["a", "b", "c"], None, 2) == ["c", "a", "b"]
    assert order_replicas([], "x", 5) == []
    busy = {"a": 2, "c": 1}
    assert order_replicas(["a", "b", "c"], None, 0, busy) == ["b", "c", "a"]   # least busy first
    assert order_replicas(["a", "b", "c"], "a", 0, busy) == ["a", "b", "c"]    # the local node still first
    assert order_replicas(["a", "b", "c"], None, 1, {"a": 1, "b": 1, "c": 1}) == ["b", "c", "a"]


class FakeNodes:
    def __init__(self, live):
        self.live = dict(live)
        self.reports = []
        self.allocations = []

    def nodes(self):
        class Entry:
            def __init__(self, node_id, address):
                self.node_id, self.address, self.full_report = node_id, address, True

        class Reply:
            nodes = [Entry(k, v) for k, v in self.live.items()]
        return Reply()

    def allocate(self, count, *, replication=3, writer_node=None, exclude=(), block_size_bytes=None):
        self.allocations.append(sorted(exclude))
        targets = [(k, v) for k, v in self.live.items() if k not in exclude][:3]
        return [(os.urandom(16), targets)]

    def report_bad_replica(self, block_id, node_id, reporter, reason=""):
        self.reports.append((block_id, node_id))

    def close(self):
        pass


class FakeBlocks:
    def __init__(self):
        self.data: dict[tuple, bytes] = {}     # (address, block id) -> bytes
        self.down: set = set()
        self.reads = []
        self.node_verifies = []

    def read_block(self, address, block_id, offset=0, length=None, *, checksum=None, timeout_s=None,
                   node_verifies=True):
        self.reads.append(address)
        self.node_verifies.append(node_verifies)
        if address in self.down:
            raise CisternError(errno.EAGAIN, f"{address}: UNAVAILABLE")
        if (address, block_id) not in self.data:
            raise CisternError(errno.ENOENT, f"{address}: no such block")
        data = self.data[(address, block_id)]
        if data.startswith(b"BAD"):
            raise CisternError(errno.EBADMSG, f"{address}: sub-chunk 0 arrived corrupt")
        return data if length is None else data[offset:offset + length]

    def read_pieces(self, address, block_id, *, checksum=None, timeout_s=None, node_verifies=True):
        return self.read_block(address, block_id, node_verifies=node_verifies), checksum, []

    def write_block_results(self, targets, block_id, data, checksum=None, timeout_s=None):
        out = []
        for i, t in enumerate(targets):
            if t in self.down:
                out.append(ReplicaResult(t, errno=errno.EAGAIN, message="down"))
                out.extend(ReplicaResult(x, errno=errno.ECANCELED, message="not reached") for x in targets[i + 1:])
                return out
            self.data[(t, block_id)] = bytes(data)
            out.append(ReplicaResult(t))
        return out

    def close(self):
        pass


def make_path(local=None):
    nodes = FakeNodes({"n1": "h1", "n2": "h2", "n3": "h3", "n4": "h4"})
    blocks = FakeBlocks()
    path = DataPath(["m:1"], nodes=nodes, blocks=blocks, node_id=local, block_size_bytes=BS)
    return path, nodes, blocks


def test_concurrent_reads_go_to_different_replicas():
    """Read-ahead keeps several blocks in flight: each goes to the replica
    with the fewest of this client's reads in flight, so the nodes' disks
    and CPUs overlap (rotation alone sent two of these three to n1)."""
    import threading

    path, nodes, blocks = make_path()
    orders = [["n1", "n2", "n3"], ["n3", "n1", "n2"], ["n2", "n3", "n1"]]
    ids = [bytes([i + 1]) * 16 for i in range(3)]
    for bid in ids:
        for h in ("h1", "h2", "h3"):
            blocks.data[(h, bid)] = b"x" * 8
    path.refresh_nodes(force=True)
    gate, arrived = threading.Event(), []
    plain = blocks.read_pieces

    def slow(address, block_id, **kw):
        arrived.append(address)
        assert gate.wait(10)
        return plain(address, block_id, **kw)

    blocks.read_pieces = slow
    futures = []
    for bid, order in zip(ids, orders):
        futures.append(path.submit_read([bid, 8, b"", order]))
        deadline = time.monotonic() + 10
        while len(arrived) < len(futures) and time.monotonic() < deadline:
            time.sleep(0.01)
    gate.set()
    assert [f.result(timeout=10) for f in futures] == [b"x" * 8] * 3
    assert sorted(arrived) == ["h1", "h2", "h3"]
    path.close()


def test_a_read_fails_over_past_a_dead_node_and_a_corrupt_replica_and_reports_only_the_bad_one():
    path, nodes, blocks = make_path(local="n1")
    bid = b"\x01" * 16
    blocks.down.add("h1")
    blocks.data[("h2", bid)] = b"BAD data"
    blocks.data[("h3", bid)] = b"good data"
    for _ in range(3):
        assert path.read([bid, 9, b"", ["n1", "n2", "n3"]]) == b"good data"
        assert blocks.reads[0] == "h1"          # the local node is always tried first
        blocks.reads.clear()
    path.close()
    assert (bid, "n2") in nodes.reports and all(n != "n1" for _, n in nodes.reports)


def test_reads_ask_the_node_not_to_check_the_bytes_the_client_checks_and_reports():
    path, nodes, blocks = make_path()
    bid = b"\x03" * 16
    for h in ("h1", "h2", "h3"):
        blocks.data[(h, bid)] = b"good data"
    block = [bid, 9, b"", ["n1", "n2", "n3"]]
    assert path.read(block) == b"good data" and path.read(block, 2, 3) == b"od "
    assert bytes(path.read_whole(block)) == b"good data"
    assert blocks.node_verifies == [False, False, False]
    path.close()


def test_a_read_with_no_good_replica_is_eio():
    path, nodes, blocks = make_path()
    with pytest.raises(OSError) as e:
        path.read([b"\x02" * 16, 4, b"", ["n1", "n2"]])
    assert e.value.errno == errno.EIO
    path.close()


def test_an_upload_around_a_failed_target_is_allocated_again_without_it():
    path, nodes, blocks = make_path()
    blocks.down.add("h1")
    block = path.upload(b"payload", 3)
    assert nodes.allocations == [[], ["n1"]]      # n2, n3 were only "not reached": not excluded
    assert block[1:3] == [7, block[2]] and sorted(block[3]) == ["n2", "n3", "n4"]
    path.close()


def test_an_upload_that_keeps_losing_targets_keeps_the_nodes_that_acked():
    path, nodes, blocks = make_path()
    nodes.live = {"n1": "h1", "n2": "h2"}
    blocks.down.add("h2")
    block = path.upload(b"payload", 3)
    assert block[3] == ["n1"]
    nodes.live = {"n2": "h2"}
    with pytest.raises(OSError) as e:
        path.upload(b"payload", 3)
    assert e.value.errno == errno.EIO
    path.close()


def test_the_attempt_committed_is_the_one_most_live_nodes_acked():
    from cistern.client.blocks import best_attempt

    a1 = [b"1", 7, b"c", ["n2"]]          # n2 acked, its downstream failed
    a2 = [b"3", 7, b"c", ["n3"]]          # n2 failed in the next attempt (killed): n3 alone acked
    assert best_attempt([a1, a2], broken={"n1", "n2"}) is a2
    assert best_attempt([a1, a2], broken={"n1"}) is a2          # a tie: the latest
    a0 = [b"0", 7, b"c", ["n1", "n3"]]
    assert best_attempt([a0, a1, a2], broken={"n2"}) is a0      # most live acks


def test_a_whole_block_on_the_local_node_is_read_from_its_file_and_a_bad_file_falls_back(tmp_path):
    from cistern.blockstore.store import block_checksum

    nodes = FakeNodes({"n1": "h1", "n2": "h2"})
    blocks = FakeBlocks()
    path = DataPath(["m:1"], nodes=nodes, blocks=blocks, node_id="n1", local_data_dir=str(tmp_path))
    bid = bytes(range(16))
    good = b"local block data"
    block = [bid, len(good), block_checksum(good), ["n2", "n1"]]
    (tmp_path / "blocks" / bid.hex()[:2]).mkdir(parents=True)
    (tmp_path / "blocks" / bid.hex()[:2] / bid.hex()).write_bytes(good)
    assert path.read(block) == good and blocks.reads == []       # no RPC at all
    (tmp_path / "blocks" / bid.hex()[:2] / bid.hex()).write_bytes(b"LOCAL block data")
    blocks.data[("h1", bid)] = good
    assert path.read(block) == good and blocks.reads == ["h1"]   # through the node's service
    blocks.reads.clear()
    assert path.read(block, 6, 5) == b"block" and blocks.reads == ["h1"]   # ranged: always the service
    path.close()


def test_one_connection_opens_a_file_for_writing_once_and_another_client_is_refused_too(client, data):
    f = client.open("/one", "wb")
    with pytest.raises(OSError) as e:
        client.open("/one", "ab")
    assert e.value.errno == errno.EBUSY
    f.write(b"still mine")
    f.close()
    assert client.read_file("/one") == b"still mine"
    with client.open("/one", "ab") as f:      # free again once closed
        f.write(b"!")


def lease_client(now):
    import time

    c = Client(InProcessMetaClient(clock_ns=lambda: now[0]), uid=0, gid=0, groups=[], block_size=BS)
    c.data._nodes = FakeNodes({"n1": "h1"})
    c.data._blocks = FakeBlocks()
    renewals = []
    real = c.data._renew
    c.data._renew = lambda holder: (renewals.append(holder), real(holder))

    def advance(seconds):
        before = len(renewals)
        now[0] += int(seconds * 1e9)
        deadline = time.monotonic() + 5
        while c.data.lease_renew_interval_s < 1 and len(renewals) == before and time.monotonic() < deadline:
            time.sleep(0.01)
    return c, renewals, advance


def test_the_renewer_keeps_a_slow_writers_lease_past_the_ttl():
    now = [10 ** 18]
    c, renewals, advance = lease_client(now)
    c.data.lease_renew_interval_s = 0.02
    f = c.open("/slow", "wb")
    f.write(b"x" * 20)
    for _ in range(4):
        advance(20)                             # 80 s in all: the TTL is 30 s
    f.close()
    assert renewals and set(renewals) == {c.data.holder}
    assert c.read_file("/slow") == b"x" * 20
    assert c.data.leases_held() == 0
    c.close()


def test_without_renewals_the_lease_lapses_and_the_commit_is_estale():
    now = [10 ** 18]
    c, renewals, advance = lease_client(now)
    c.data.lease_renew_interval_s = 3600
    f = c.open("/lapsed", "wb")
    f.write(b"x")
    advance(31)
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.ESTALE and renewals == []
    assert c.stat("/lapsed").st_size == 0      # nothing of the writer's became visible
    c.close()


def test_blocks_of_any_node_on_this_host_are_read_from_their_files(tmp_path):
    from cistern.blockstore.store import block_checksum

    nodes = FakeNodes({"n1": "h1", "n2": "h2"})
    blocks = FakeBlocks()
    # No node of our own (a mount beside a local cluster): n2's directory is known from cluster.json.
    path = DataPath(["m:1"], nodes=nodes, blocks=blocks, node_id="", local_data_dirs={"n2": str(tmp_path)})
    bid = bytes(range(16, 32))
    good = b"block of n2"
    (tmp_path / "blocks" / bid.hex()[:2]).mkdir(parents=True)
    (tmp_path / "blocks" / bid.hex()[:2] / bid.hex()).write_bytes(good)
    assert path.read([bid, len(good), block_checksum(good), ["n1", "n2"]]) == good and blocks.reads == []
    other = bytes(range(32, 48))                 # held by n1 only: through its service
    blocks.data[("h1", other)] = b"remote"
    assert path.read([other, 6, block_checksum(b"remote"), ["n1"]]) == b"remote" and blocks.reads == ["h1"]
    path.close()


def test_read_ahead_over_real_nodes_fails_over_past_a_dead_node_and_bytes_corrupted_on_the_wire(tmp_path):
    """Read-ahead (``submit_read``) keeps every guarantee of a plain read:
    a dead node is skipped, a node that sends bytes not matching their
    sub-chunk checksums (its own check disabled, as corruption on the wire
    would look) is caught by the client, reported, and read around."""
    from cistern.blockstore.client import BlockClient, BlockPieces
    from cistern.blockstore.store import block_checksum
    from cistern.blockstore.testing import local_node

    servers = [local_node(str(tmp_path / n), n, block_size_bytes=1 << 20) for n in ("n1", "n2", "n3")]
    blocks = BlockClient()
    nodes = FakeNodes({s.node_id: s.rpc_address for s in servers})
    path = DataPath(["m:1"], nodes=nodes, blocks=blocks, node_id="n3", block_size_bytes=1 << 20)
    try:
        data = os.urandom((1 << 20) - 1000)
        bid = os.urandom(16)
        assert blocks.write_block([s.rpc_address for s in servers], bid, data) == [s.rpc_address for s in servers]
        block = [bid, len(data), block_checksum(data), ["n1", "n2", "n3"]]
        servers[2].stop()                                      # the local node, tried first, is dead
        liar = servers[0]
        with open(liar.store.block_path(bid), "r+b") as f:    # n1 serves a flipped byte without noticing
            f.seek(300_000)
            f.write(b"\x00" if data[300_000] else b"\x01")
        liar.store._verify_chunks = lambda *args: None
        with pytest.raises(CisternError) as e:
            blocks.read_pieces(liar.rpc_address, bid)
        assert e.value.errno == errno.EBADMSG and "arrived corrupt" in e.value.message
        for _ in range(4):                                     # whichever of n1, n2 the rotation tries first
            got = path.submit_read(block).result(timeout=30)
            assert isinstance(got, BlockPieces) and bytes(got) == data and got[5:70_000] == data[5:70_000]
        for _ in range(100):                                    # reports go out in the background
            if nodes.reports:
                break
            time.sleep(0.05)
        assert nodes.reports and all(r == (bid, "n1") for r in nodes.reports)
    finally:
        path.close()
        for s in servers:
            s.stop()


def test_placements_are_fetched_one_then_twice_as_many_while_used_up_and_start_over_when_they_lapse():
    from cistern.client.blocks import Placements

    p = Placements(ahead_max=8, max_age_s=1.0)
    key = (3, BS)
    counts = []
    now = 0.0
    for i in range(20):
        now += 0.01
        if p.take(key, now) is None:
            n = p.count(key, now)
            counts.append(n)
            p.fetched(key, n, [(bytes([i, j]), ["t"]) for j in range(1, n)], now)
    assert counts == [1, 2, 4, 8, 8]
    assert p.take(key, now + 2.0) is None and p.count(key, now + 2.0) == 1   # lapsed unused: one again
    p.fetched(key, 4, [(b"a", ["t"]), (b"b", ["t"])], now)
    assert p.take(key, now) == (b"a", ["t"])
    p.clear()
    assert p.take(key, now) is None and p.count(key, now) == 1


class CountingNodes(FakeNodes):
    """Allocate hands out as many placements as asked for."""

    def allocate(self, count, *, replication=3, writer_node=None, exclude=(), block_size_bytes=None):
        self.allocations.append((count, sorted(exclude)))
        targets = [(k, v) for k, v in self.live.items() if k not in exclude][:3]
        return [(os.urandom(16), targets) for _ in range(count)]


def test_a_stream_of_uploads_takes_its_placements_several_per_allocate_and_a_failure_drops_them():
    nodes = CountingNodes({"n1": "h1", "n2": "h2", "n3": "h3", "n4": "h4"})
    blocks = FakeBlocks()
    path = DataPath(["m:1"], nodes=nodes, blocks=blocks, block_size_bytes=BS)
    ids = [path.upload(b"payload %d" % i, 3)[0] for i in range(20)]
    assert len(set(ids)) == 20
    assert nodes.allocations == [(1, []), (2, []), (4, []), (8, []), (8, [])]
    nodes.allocations.clear()
    blocks.down.add("h1")
    block = path.upload(b"payload", 3)                # a placement fetched ahead, naming n1
    assert "n1" not in block[3]
    assert nodes.allocations == [(1, ["n1"])]
    blocks.down.clear()
    nodes.allocations.clear()
    path.upload(b"payload", 3)
    assert nodes.allocations == [(1, [])]             # the two left from the last batch are gone
    path.close()


def test_a_whole_block_of_bytes_is_kept_by_reference_and_copied_before_any_change():
    source = b"a" * 16 + b"b" * 16 + b"c" * 3
    x = Extents([], 0, BS)
    x.write(0, source, no_load)
    first, second, tail = x.items
    assert first.data.obj is source and second.data.obj is source   # views of the caller's bytes
    assert isinstance(tail.data, bytearray)                          # a part of a block is copied
    x.write(17, b"Z", no_load)                                       # a dirty view is copied to change it
    assert isinstance(second.data, bytearray) and bytes(second.data) == b"bZ" + b"b" * 14
    payload = x.uploading(first, object())
    assert payload.obj is source                                     # uploaded from the caller's bytes
    x.write(1, b"Y", no_load)                                        # as before: a change while uploading copies
    assert bytes(first.data) == b"aY" + b"a" * 14 and bytes(payload) == b"a" * 16
    y = Extents([], 0, BS)
    y.write(0, bytearray(b"m" * 16), no_load)                        # a mutable buffer is always copied
    assert isinstance(y.items[0].data, bytearray)
    y.write(0, memoryview(source)[16:32], no_load)                   # a view of bytes over a dirty block
    y.write(16, memoryview(source)[:16], no_load)
    assert y.items[1].data.obj is source
    y.truncate(20)                                                   # kept through a truncate, copied to grow
    y.write(20, b"q", no_load)
    assert bytes(y.items[1].data[:y.items[1].length]) == b"a" * 4 + b"q"
    assert source == b"a" * 16 + b"b" * 16 + b"c" * 3
