"""The write path's copies, without a mount: the mount's ``FUSE`` binding
hands ``write`` a view of libfuse's buffer (no copy) and answers the
kernel's per-write ``security.capability`` question itself; ``File.pwrite``
copies what it is given before returning (the view dies with the callback;
only a whole block of immutable ``bytes`` is kept by reference instead);
uploaded blocks' buffers are reused, never while an extent still holds one."""

from __future__ import annotations

import ctypes
import errno
import os
from concurrent.futures import Future

from cistern.client import files
from cistern.client.extents import parse_mode
from cistern.client.files import BufferPool, File, Opened
from cistern.fuse import operations

BS = 64 << 10   # the smallest block a whole-buffer first write sizes its buffer for


def _binding(calls):
    """A ``FUSE`` binding that was never mounted (its __init__ mounts)."""
    binding = operations.FUSE.__new__(operations.FUSE)
    binding.operations = lambda *args: calls.append(args) or len(args[2])
    binding.raw_fi = True
    binding.encoding = operations.FS_ENCODING
    return binding


def test_the_binding_passes_write_a_view_of_the_request_buffer_not_a_copy():
    calls = []
    binding = _binding(calls)
    request = ctypes.create_string_buffer(b"0123456789", 10)
    fip = ctypes.pointer(operations.fusepy.fuse_file_info(fh=7))
    got = binding.write(b"/f", ctypes.cast(request, ctypes.POINTER(ctypes.c_byte)), 10, 4096, fip)
    assert got == 10
    ((op, path, data, offset, fi),) = calls
    assert (op, path, offset, fi.fh) == ("write", "/f", 4096, 7)
    assert isinstance(data, memoryview) and data.readonly and bytes(data) == b"0123456789"
    request[0] = b"X"
    assert bytes(data)[:1] == b"X"   # the same memory: valid only during the call


def test_the_binding_answers_unstored_xattrs_without_the_operations():
    calls = []
    binding = _binding(calls)
    for name in (b"security.capability", b"security.selinux"):
        assert binding.getxattr(b"/f", name, None, 0) == -errno.ENODATA
    assert calls == []


class _Data:
    """A DataPath stand-in: uploads complete at once, their bytes kept."""

    def __init__(self):
        self.uploaded = []
        self.blocks = {}

    def submit_upload(self, payload, replication):
        self.uploaded.append(bytes(payload))
        block_id = os.urandom(16)
        self.blocks[block_id] = bytes(payload)
        future = Future()
        future.set_result([block_id, len(payload), b"", ["n1"]])
        return future

    def read(self, block, offset=0, length=None):
        data = self.blocks[block[0]]
        return data[offset:] if length is None else data[offset:offset + length]

    def submit_read(self, block):
        future = Future()
        future.set_result(self.read(block))
        return future

    def drop_lease(self, ino):
        pass


def _file(data):
    opened = Opened(1, 1, type("Attr", (), {"size": 0})(), [], 3)
    return File(opened, data, lambda *a: opened.attr, lambda *a: None, name="f", mode="r+b",
                open_mode=parse_mode("r+b"), block_size_bytes=BS, replication=3)


def test_pwrite_copies_its_input_before_returning():
    data = _Data()
    f = _file(data)
    source = bytearray(b"a" * BS + b"b" * 100)
    assert f.pwrite(memoryview(source), 0) == len(source)
    source[:] = b"z" * len(source)                # the caller's buffer is reused at once
    assert f.pread(BS + 100, 0) == b"a" * BS + b"b" * 100
    f.flush()
    assert data.uploaded == [b"a" * BS, b"b" * 100]


def test_uploaded_block_buffers_are_reused_and_never_while_held(monkeypatch):
    pool = BufferPool(idle_max=2)
    monkeypatch.setattr(files, "block_buffers", pool)
    data = _Data()
    f = _file(data)
    blocks = [bytes([65 + i]) * BS for i in range(files.uploads_in_flight_max + 3)]
    for i, block in enumerate(blocks):
        f.pwrite(bytearray(block), i * BS)       # a mutable buffer, as the mount's: copied
    f.flush()
    assert data.uploaded == blocks
    assert f.pread(len(blocks) * BS, 0) == b"".join(blocks)
    # Buffers came back (at most idle_max kept), none that an extent holds.
    assert 1 <= len(pool._idle) <= 2
    held = {id(e.data) for e in f._x.items if e.data is not None}
    assert not held & {id(b) for b in pool._idle}
    # A second file writes into the reused buffers: both files read right.
    reused = set(map(id, pool._idle))
    g = _file(data)
    g.pwrite(bytearray(b"q" * BS), 0)
    assert id(g._x.items[0].data) in reused
    g.pwrite(b"r" * 10, BS)
    g.flush()
    assert data.uploaded[-2:] == [b"q" * BS, b"r" * 10]
    assert f.pread(len(blocks) * BS, 0) == b"".join(blocks)
    assert g.pread(BS + 10, 0) == b"q" * BS + b"r" * 10


def test_a_failed_upload_keeps_its_bytes_in_a_copy_while_its_buffer_is_reused(monkeypatch):
    pool = BufferPool(idle_max=4)
    monkeypatch.setattr(files, "block_buffers", pool)
    data = _Data()
    real = data.submit_upload

    def fail_once(payload, replication):
        data.submit_upload = real
        future = Future()
        future.set_exception(OSError(errno.EIO, "no node took it"))
        return future

    data.submit_upload = fail_once
    f = _file(data)
    f.pwrite(bytearray(b"k" * BS), 0)
    try:
        f.flush()
        raise AssertionError("the failed upload was not reported")
    except OSError as e:
        assert e.errno == errno.EIO
    assert len(pool._idle) == 1                  # the failed upload's buffer, free again
    pool.take(BS)[:] = b"!" * BS                 # someone else writes into it
    assert f.pread(BS, 0) == b"k" * BS           # the extent kept its bytes in a copy
    f.flush()
    assert data.uploaded == [b"k" * BS]


def test_a_whole_block_of_bytes_is_uploaded_from_the_callers_object_and_never_pooled(monkeypatch):
    """``bytes`` cannot change, so a whole block of it (cistern fs put
    writes block-sized pieces) is uploaded from the caller's object, not
    copied into a buffer, and never handed to the buffer pool."""
    pool = BufferPool(idle_max=4)
    monkeypatch.setattr(files, "block_buffers", pool)
    data = _Data()
    payloads = []
    real = data.submit_upload
    data.submit_upload = lambda payload, replication: payloads.append(payload) or real(payload, replication)
    f = _file(data)
    source = b"a" * BS + b"b" * BS + b"c" * 10
    f.write(source)
    f.flush()
    assert data.uploaded == [b"a" * BS, b"b" * BS, b"c" * 10]
    assert [getattr(p, "obj", None) is source for p in payloads] == [True, True, False]
    assert list(pool._idle) == []          # the caller's views are no buffers (the short tail's is no block's)
    assert f.pread(2 * BS + 10, 0) == source
