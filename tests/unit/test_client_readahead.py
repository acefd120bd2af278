"""Read-ahead memory across files: sequential readers of many files at once
hold at most the process's read-ahead budget (plus the blocks their reads
need now), every byte read is still right, and closing a file gives its
share back to the others."""

from __future__ import annotations

import types
from concurrent.futures import Future

import pytest

from cistern.client import files, readahead
from cistern.client.extents import parse_mode
from cistern.client.files import File, Opened

MiB = 1 << 20
BLOCK = MiB
BLOCKS_PER_FILE = 12


class Blocks:
    """A DataPath stand-in for reads: block i of file n is bytes([n * 16 + i])
    of BLOCK; whole-block fetches are counted per file."""

    def __init__(self):
        self.fetched: dict[int, int] = {}

    def submit_read(self, block) -> Future:
        n = block[0][0] // 16
        self.fetched[n] = self.fetched.get(n, 0) + 1
        future = Future()
        future.set_result(bytes(block[0][:1]) * block[1])
        return future

    def read(self, block, offset=0, length=None) -> bytes:
        return (bytes(block[0][:1]) * block[1])[offset:None if length is None else offset + length]


def open_file(blocks: Blocks, n: int) -> File:
    layout = [[bytes([n * 16 + i]) * 16, BLOCK, b"", ["n1"]] for i in range(BLOCKS_PER_FILE)]
    opened = Opened(ino=100 + n, lease_id=0, attr=types.SimpleNamespace(size=BLOCK * BLOCKS_PER_FILE),
                    layout=layout, replication=3)
    return File(opened, blocks, commit=None, release=None, name=f"/f{n}", mode="rb", open_mode=parse_mode("rb"),
                block_size_bytes=BLOCK, replication=None)


@pytest.fixture
def budget(monkeypatch):
    b = readahead.ReadAheadBudget(8 * BLOCK)
    monkeypatch.setattr(readahead, "budget", b)
    return b


def test_many_sequential_readers_hold_at_most_the_budget_and_read_every_byte(budget):
    blocks = Blocks()
    handles = [open_file(blocks, n) for n in range(4)]
    for n, f in enumerate(handles):
        assert f.read(1) == bytes([n * 16])
    # Without the budget each file would hold its block and 8 ahead: 36 MiB.
    assert budget.held_bytes <= budget.limit_bytes + len(handles) * BLOCK
    # Past that, a reader may hold a block it needs now and the one behind it beyond the budget.
    most = budget.limit_bytes + 2 * len(handles) * BLOCK
    assert blocks.fetched[0] == files.read_ahead_blocks          # the first reader got the whole window
    assert blocks.fetched[1] == blocks.fetched[2] == blocks.fetched[3] == 1   # the rest: what they read
    for n, f in enumerate(handles):                             # every byte still right, block by block
        for i in range(BLOCKS_PER_FILE):
            after = bytes([n * 16 + i + 1]) if i + 1 < BLOCKS_PER_FILE else b""
            assert f.read(BLOCK) == bytes([n * 16 + i]) * (BLOCK - 1) + after
            assert budget.held_bytes <= most
        assert f.read(1) == b""
        assert budget.held_bytes <= most
    for f in handles:
        f.close()
    assert budget.held_bytes == 0


def test_closing_a_file_gives_its_read_ahead_to_the_next_reader(budget):
    blocks = Blocks()
    first, second = open_file(blocks, 0), open_file(blocks, 1)
    first.read(1)
    second.read(1)
    assert blocks.fetched == {0: files.read_ahead_blocks, 1: 1}
    first.close()
    assert budget.held_bytes == BLOCK                            # the second file's one block
    second.read(BLOCK)                                           # into its next block: reads ahead again,
    assert blocks.fetched[1] == 8 and budget.held_bytes == 8 * BLOCK   # as far as the budget goes
    second.close()
    assert budget.held_bytes == 0


def test_a_file_never_holds_more_than_its_window_and_the_budget_counts_evictions(budget):
    budget.limit_bytes = 1000 * BLOCK
    blocks = Blocks()
    f = open_file(blocks, 0)
    while f.read(BLOCK // 2):
        assert budget.held_bytes <= (files.read_ahead_blocks + 2) * BLOCK
    assert blocks.fetched[0] == BLOCKS_PER_FILE                  # each block fetched once
    f.close()
    assert budget.held_bytes == 0
