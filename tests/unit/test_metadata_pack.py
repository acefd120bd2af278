"""model.pack: the same bytes as msgpack.packb, through a Packer kept per thread."""

from __future__ import annotations

import threading

import msgpack
import pytest

from cistern.metadata import model

SAMPLES = [
    [[0, 0, []], b"/a/b", 0o644, True],
    [b"\x00" * 16, 7, 3, 101, b"\x93\x01\x02\x03"],
    {"files": 3, b"k": [None, 1.5, "text"]},
    list(range(300)),
    b"x" * 300_000,          # past the Packer's initial buffer
    [],
]


def test_pack_gives_packb_bytes_and_round_trips():
    for obj in SAMPLES:
        data = model.pack(obj)
        assert data == msgpack.packb(obj, use_bin_type=True)
        assert model.pack(obj) == data          # the reused Packer starts empty each time


def test_a_failed_pack_leaves_nothing_behind():
    with pytest.raises(TypeError):
        model.pack([1, object()])
    assert model.pack([1, 2]) == msgpack.packb([1, 2], use_bin_type=True)


def test_threads_pack_concurrently_without_mixing_bytes():
    errors: list = []

    def work(n: int):
        obj = [n, b"%d" % n * 50, [n] * 20]
        want = msgpack.packb(obj, use_bin_type=True)
        for _ in range(2000):
            if model.pack(obj) != want:
                errors.append(n)
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
