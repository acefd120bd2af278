"""A file's bytes as one open handle sees them: the pure core of the data
path (no I/O, no threads, no clocks).

``parse_mode`` reads an ``open()`` mode string exactly as ``builtins.open``
does (the same ValueErrors). ``Extents`` is the file as an ordered,
contiguous list of extents from offset 0 plus a size; each extent is either a
*stored* block (a layout entry ``[block_id, length, checksum, [node ids]]``,
immutable, on the storage nodes), a *dirty* buffer (bytes written through
this handle, not yet on any node) or an *uploading* buffer (frozen bytes
whose upload is under way). Bytes between the last extent's end and the size
read as zeros (state.py's rule for holes and growing truncates).

Rules the shell relies on:

* Blocks are immutable, so changing any byte of a stored extent turns the
  whole extent dirty (read-modify-write: the shell passes ``load``, which
  fetches the extent's bytes) and it is uploaded later as a new block id; the
  other stored extents stay in the layout as they are.
* Appending at the end grows the last extent up to ``block_size_bytes``, so
  a short last block is rewritten as a new full one rather than leaving a
  small block in the middle of the file; past that a new extent starts.
* A stored block may be longer than the bytes of the file it holds (a
  truncate keeps the block straddling the new end whole). Such an extent has
  ``length`` < its block's length; it can stay in a committed layout only
  as the very last extent with nothing after it (not even a hole), because
  offsets in a layout are the sums of block lengths and the block's hidden
  tail would show. ``stale()`` names the extents that must be rewritten
  before a commit.
* An extent is *complete* when it can no longer grow: it is not the last,
  or it holds a full block. The shell uploads complete dirty extents once
  the write position has left them, and everything at flush.
* A write that brings a whole new block of a ``bytes`` object (immutable)
  keeps that block by reference, a read-only view, instead of copying it
  into a buffer (``cistern fs put`` writes block-sized pieces); the view
  keeps the caller's object alive until the block is uploaded, and any
  change to the extent copies it first (``make_dirty``).
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

__all__ = ["Extent", "Extents", "OpenMode", "parse_mode"]

whole_buffer_write_min_bytes = 64 << 10   # a first write this large into a new block allocates all of it


class OpenMode(NamedTuple):
    readable: bool
    writable: bool
    create: bool       # w, a, x: create the file when absent
    exclusive: bool    # x: the file must not exist
    truncate: bool     # w: the handle starts from an empty file
    append: bool       # a: every write goes to the end
    binary: bool


def parse_mode(mode, encoding=None, errors=None, newline=None, buffering: int = -1) -> OpenMode:
    """``builtins.open``'s mode rules: TypeError for a non-str mode,
    ValueError (with open's messages) for a bad combination."""
    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    modes = set(mode)
    if modes - set("axrwb+t") or len(mode) > len(modes):
        raise ValueError(f"invalid mode: {mode!r}")
    creating, reading, writing, appending = ("x" in modes, "r" in modes, "w" in modes, "a" in modes)
    updating, text, binary = "+" in modes, "t" in modes, "b" in modes
    if text and binary:
        raise ValueError("can't have text and binary mode at once")
    if creating + reading + writing + appending != 1:
        raise ValueError("must have exactly one of create/read/write/append mode")
    if binary:
        for value, what in ((encoding, "an encoding"), (errors, "an errors"), (newline, "a newline")):
            if value is not None:
                raise ValueError(f"binary mode doesn't take {what} argument")
    elif buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    return OpenMode(readable=reading or updating, writable=not reading or updating,
                    create=not reading, exclusive=creating, truncate=writing, append=appending,
                    binary=binary)


class Extent:
    """One piece of the file: ``block`` (stored) or ``data`` (dirty: a
    bytearray, or a read-only view of a caller's ``bytes`` holding a whole
    block; uploading: the same, with ``upload`` set by the shell). The
    file's bytes are ``data[:length]``; a buffer may be longer (room for
    the rest of its block)."""

    __slots__ = ("start", "length", "block", "data", "upload")

    def __init__(self, start: int, length: int, block=None, data=None):
        self.start = start
        self.length = length     # bytes of the file in this extent
        self.block = block       # [block_id, block length, checksum, [node ids]] when stored
        self.data = data
        self.upload = None       # the shell's handle on an upload in flight

    @property
    def end(self) -> int:
        return self.start + self.length

    @property
    def stored(self) -> bool:
        return self.data is None

    @property
    def dirty(self) -> bool:
        return self.data is not None and self.upload is None

    def __repr__(self) -> str:
        kind = "stored" if self.stored else "dirty" if self.dirty else "uploading"
        return f"<Extent {kind} [{self.start}, {self.end})>"


def filled(e: Extent):
    """A dirty or uploading extent's bytes: its buffer, or a view of the
    buffer's first ``length`` bytes when the buffer is longer."""
    return e.data if len(e.data) == e.length else memoryview(e.data)[:e.length]


class Piece(NamedTuple):
    """Part of a read: ``length`` bytes from ``offset`` within ``extent``
    (None: a hole, zeros)."""

    extent: Extent | None
    offset: int
    length: int


class Extents:
    def __init__(self, layout, size: int, block_size_bytes: int, new_buffer=bytearray):
        """``new_buffer(n)``: a bytearray of n bytes for a new block's
        buffer, its contents unspecified (the shell may hand out used ones:
        only ``data[:length]`` is ever read)."""
        assert block_size_bytes > 0 and size >= 0
        self.block_size_bytes = block_size_bytes
        self.new_buffer = new_buffer
        self.size = size
        self.items: list[Extent] = []
        self.dirty: dict[int, Extent] = {}     # id(extent) -> extent, dirty or uploading
        at = 0
        for block in layout:
            assert at < size, "state.py keeps no block beyond the size"
            length = min(block[1], size - at)
            self.items.append(Extent(at, length, block=list(block)))
            at += block[1]

    # -- queries ---------------------------------------------------------

    @property
    def end(self) -> int:
        """Where the last extent ends (the size, or less when a hole follows)."""
        return self.items[-1].end if self.items else 0

    def index(self, pos: int) -> int:
        """The extent holding byte ``pos`` (pos < end)."""
        assert 0 <= pos < self.end
        return bisect.bisect_right(self.items, pos, key=lambda e: e.start) - 1

    def pieces(self, pos: int, n: int) -> list[Piece]:
        """What a read of n bytes at pos is made of (clipped to the size)."""
        n = max(0, min(n, self.size - pos))
        out = []
        while n > 0:
            if pos >= self.end:
                out.append(Piece(None, 0, n))
                break
            e = self.items[self.index(pos)]
            take = min(e.end - pos, n)
            out.append(Piece(e, pos - e.start, take))
            pos += take
            n -= take
        return out

    def complete(self, e: Extent) -> bool:
        return e is not self.items[-1] or e.length >= self.block_size_bytes

    def to_upload(self, pos: int, final: bool = False) -> list[Extent]:
        """Dirty extents to upload now: all of them when ``final``, else the
        complete ones the write position ``pos`` is not inside."""
        return [e for e in self.dirty.values() if e.dirty and (
            final or (self.complete(e) and not e.start <= pos < e.end))]

    def stale(self) -> list[Extent]:
        """Stored extents whose hidden block tail would show after a commit."""
        out = []
        for i, e in enumerate(self.items):
            if e.stored and e.length < e.block[1]:
                if i + 1 < len(self.items) or self.size > e.end:
                    out.append(e)
        return out

    def layout(self) -> list:
        """The layout to commit; every extent must be stored by now."""
        blocks = []
        for e in self.items:
            assert e.stored, f"{e} is not stored yet"
            blocks.append(list(e.block))
        assert not self.stale()
        return blocks

    # -- changes ---------------------------------------------------------

    def write(self, pos: int, data, load) -> None:
        """Write ``data`` at ``pos`` <= end (the shell fills a gap with zeros
        first). ``load(extent)`` returns a stored extent's bytes."""
        assert 0 <= pos <= self.end, (pos, self.end)
        view = memoryview(data).cast("B")
        while view:
            if pos == self.end:
                taken = self._append(view, load)
            else:
                e = self.items[self.index(pos)]
                self.make_dirty(e, load)
                offset = pos - e.start
                taken = min(e.length - offset, len(view))
                e.data[offset:offset + taken] = view[:taken]
            pos += taken
            view = view[taken:]
        self.size = max(self.size, pos)

    def _append(self, view: memoryview, load) -> int:
        last = self.items[-1] if self.items else None
        room = self.block_size_bytes - last.length if last is not None else 0
        if last is None or room <= 0:
            room = self.block_size_bytes
            if len(view) >= room and isinstance(view.obj, bytes):
                # Immutable: the whole block is kept by reference, not copied.
                e = Extent(self.end, room, data=view[:room])
                self.items.append(e)
                self.dirty[id(e)] = e
                return room
            # A large first write sizes the buffer for the whole block at
            # once: growing a bytearray by appends copies it at every step.
            e = Extent(self.end, 0, data=self.new_buffer(room) if len(view) >= whole_buffer_write_min_bytes
                       else bytearray())
            self.items.append(e)
            self.dirty[id(e)] = e
        else:
            e = last
            self.make_dirty(e, load)
        taken = min(room, len(view))
        e.data[e.length:e.length + taken] = view[:taken]   # in place within the buffer, else it grows
        e.length += taken
        return taken

    def make_dirty(self, e: Extent, load) -> None:
        """A stored or uploading extent becomes a dirty buffer (a new block
        to be); a dirty one holding a caller's bytes, a buffer of its own."""
        if e.dirty:
            if not isinstance(e.data, bytearray):
                e.data = bytearray(filled(e))
            return
        if e.stored:
            data = bytearray(load(e))
            assert len(data) == e.length, (len(data), e.length)
        else:
            data = bytearray(filled(e))   # the upload in flight becomes an orphan
        e.data, e.block, e.upload = data, None, None
        self.dirty[id(e)] = e

    def uploading(self, e: Extent, handle):
        """Freeze a dirty extent's bytes for upload; returns them (a
        bytes-like). Not copied: nothing writes into an uploading extent's
        buffer (a change makes it dirty again with a copy, ``make_dirty``)."""
        assert e.dirty
        e.upload = handle
        return filled(e)

    def uploaded(self, e: Extent, handle, block) -> bool:
        """The upload ``handle`` finished as ``block``; False when the
        extent changed meanwhile (the block is then an orphan)."""
        if e.upload is not handle or e not in self.items:
            return False
        assert block[1] == e.length
        e.block, e.data, e.upload = list(block), None, None
        self.dirty.pop(id(e), None)
        return True

    def upload_failed(self, e: Extent, handle) -> None:
        """The extent is dirty again, to be retried."""
        if e.upload is handle:
            e.data, e.upload = bytearray(filled(e)), None

    def truncate(self, size: int) -> None:
        """Set the size: extents starting at or beyond it go; the one
        straddling it keeps its block (stored) or loses its tail (dirty)."""
        assert size >= 0
        while self.items and self.items[-1].start >= size:
            gone = self.items.pop()
            self.dirty.pop(id(gone), None)
        if self.items and self.items[-1].end > size:
            last = self.items[-1]
            if not last.stored:
                self.make_dirty(last, None)   # its buffer keeps the tail, unread beyond length
            last.length = size - last.start
        self.size = size
