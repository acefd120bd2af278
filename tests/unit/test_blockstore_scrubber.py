"""The scrubber finds a block corrupted on disk, quarantines it and reports
it; intact blocks are left alone."""

import os

from cistern.blockstore.scrubber import Scrubber
from cistern.blockstore.store import BlockStore


def test_scrub_once_quarantines_and_reports_only_the_corrupt_block(tmp_path):
    store = BlockStore(str(tmp_path / "node"), sync=False)
    good, bad = os.urandom(16), os.urandom(16)
    store.put(good, os.urandom(200_000), created_s=0)
    store.put(bad, os.urandom(200_000), created_s=0)
    with open(store.block_path(bad), "r+b") as f:
        f.seek(150_000)
        byte = f.read(1)
        f.seek(150_000)
        f.write(bytes([byte[0] ^ 1]))
    reported = []
    scrubber = Scrubber(store, lambda block_id, message: reported.append((block_id, message)),
                        rate_bytes_per_s=1e12)
    assert scrubber.scrub_once() == [bad]
    assert [r[0] for r in reported] == [bad] and "sub-chunk 2" in reported[0][1]
    assert store.list() == [(good, 200_000)]
    assert len(os.listdir(store.quarantine_dir)) == 1
    assert scrubber.scrub_once() == []            # nothing left to find
    assert (scrubber.passes, scrubber.blocks_checked, scrubber.corrupt_found) == (2, 3, 1)
    store.close()


def test_a_failing_reporter_does_not_stop_the_pass(tmp_path):
    store = BlockStore(str(tmp_path / "node"), sync=False)
    ids = [os.urandom(16) for _ in range(2)]
    for bid in ids:
        store.put(bid, b"x" * 1000, created_s=0)
        with open(store.block_path(bid), "r+b") as f:
            f.write(b"y")

    def explode(block_id, message):
        raise RuntimeError("reporter down")

    assert sorted(Scrubber(store, explode, rate_bytes_per_s=1e12).scrub_once()) == sorted(ids)
    assert store.list() == []
    store.close()


def test_the_background_thread_stops_promptly(tmp_path):
    store = BlockStore(str(tmp_path / "node"), sync=False)
    scrubber = Scrubber(store, interval_s=3600, first_pass_delay_s=0)
    scrubber.start()
    scrubber.stop(timeout_s=2)
    assert scrubber.passes == 1
    store.close()
