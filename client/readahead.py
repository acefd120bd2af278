"""Read-ahead memory: ``ReadAheadBudget``, the bytes of fetched blocks held
for sequential readers across every open file of a process, and
``BlockCache``, one file's fetched blocks counted in it.

Contract:

* A block a read needs now (``demand``) is always admitted and counted, so
  the total may pass the limit by the blocks being read at that moment; a
  block fetched ahead is admitted only while the total stays within the
  limit, else it is not fetched (a later read asks for it when it needs it).
* Bytes are counted from admission until the block leaves its file's cache
  (evicted as the oldest past ``entries_max``, trimmed once its reader has
  left it behind, popped, or the cache cleared when the file closes),
  whether or not its fetch has finished.
* ``ReadAheadBudget`` is thread-safe; a ``BlockCache`` is used under its
  file's lock.
"""

from __future__ import annotations

import collections
import threading

from . import limits

__all__ = ["ReadAheadBudget", "BlockCache", "budget"]


class ReadAheadBudget:
    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        return self._held

    def admit(self, n: int, demand: bool) -> bool:
        """Count n bytes; False (nothing counted) for a read-ahead that
        does not fit."""
        with self._lock:
            if not demand and self._held + n > self.limit_bytes:
                return False
            self._held += n
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self._held -= n


budget = ReadAheadBudget(limits.read_ahead_bytes_max)   # the process's, shared by every File


class BlockCache:
    """One file's fetched blocks: block id -> the fetch's Future, oldest
    first, at most ``entries_max``, their bytes counted in ``budget``."""

    def __init__(self, budget: ReadAheadBudget, entries_max: int):
        self._budget = budget
        self.entries_max = entries_max
        self._entries: collections.OrderedDict = collections.OrderedDict()   # id -> (future, bytes)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, block_id):
        entry = self._entries.get(block_id)
        return None if entry is None else entry[0]

    def fetch(self, block_id, length: int, submit, demand: bool):
        """The Future of the block: the cached one, else ``submit()``'s when
        the budget admits ``length`` bytes (always when ``demand``), else
        None. Evicts the oldest blocks past ``entries_max``."""
        entry = self._entries.get(block_id)
        if entry is not None:
            return entry[0]
        if not self._budget.admit(length, demand):
            return None
        try:
            future = submit()
        except BaseException:
            self._budget.release(length)
            raise
        self._entries[block_id] = (future, length)
        while len(self._entries) > self.entries_max:
            self._budget.release(self._entries.popitem(last=False)[1][1])
        return future

    def trim(self, keep) -> None:
        """Drop the oldest blocks until the oldest is one of ``keep`` (ids):
        blocks a sequential reader has left behind give their bytes back."""
        while self._entries:
            oldest = next(iter(self._entries))
            if oldest in keep:
                return
            self._budget.release(self._entries.pop(oldest)[1])

    def pop(self, block_id, default=None):
        """The block's Future, removed (its bytes released), or ``default``."""
        entry = self._entries.pop(block_id, None)
        if entry is None:
            return default
        self._budget.release(entry[1])
        return entry[0]

    def clear(self) -> None:
        entries, self._entries = self._entries, collections.OrderedDict()
        self._budget.release(sum(length for _, length in entries.values()))
