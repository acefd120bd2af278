"""Client sessions: the exactly-once bookkeeping of the replicated apply.

Every mutating operation carries ``(client_id, seq, acked_below)`` (see
``model.py``). The replica applies a given ``(client_id, seq)`` once: a retry
(the client resent after a timeout or a leader change) gets the result the
first application produced, without touching the state machine again. The
client promises that every ``seq < acked_below`` has its reply in hand, so
those results are forgotten. A session idle for ``ttl_ns`` of *entry time*
(the leader's clock stamped into the Raft entry, never a local clock) is
dropped, so every replica drops it at the same log position.

This module is pure: it works over a tiny ordered key-value interface
(``KV``) that the replica backs with an LMDB write transaction (``LmdbKV``)
and tests back with a dict (``MemoryKV``). Nothing here reads a clock.

Keys (all in the replica's own database; ``L`` is one length byte so that a
client id that is a prefix of another can never alias it):

=========================================  =================================
``s:`` L client_id                         msgpack ``[last_seen_ns, acked_below]``
``r:`` L client_id seq(8, big-endian)      msgpack ``[errno, message, value]``
``i:`` last_seen_ns(8) L client_id         ``b""`` (idle index, oldest first)
=========================================  =================================

Not guaranteed: after a session expired, a retry of one of its old requests
is applied again (as with etcd and TigerBeetle, the TTL is the contract).
"""

from __future__ import annotations

import bisect
import errno
import struct
from typing import Iterator, Protocol

import msgpack

_SESSION = b"s:"
_RESULT = b"r:"
_IDLE = b"i:"
_U64 = struct.Struct(">Q")

NEW = "new"              # not seen before: apply it, then remember()
DUPLICATE = "duplicate"  # seen: the stored result is the answer
STALE = "stale"          # below the client's own acked_below: result forgotten

STALE_RESULT = (errno.EALREADY, "request already acknowledged by the client; its result was forgotten", None)

client_id_length_max_bytes = 255   # one length byte in the keys


class KV(Protocol):
    def get(self, key: bytes) -> bytes | None: ...
    def put(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> None: ...
    def keys_between(self, start: bytes, stop: bytes) -> list[bytes]: ...


class LmdbKV:
    """``KV`` over one database of an open LMDB write transaction."""

    def __init__(self, txn, db):
        self._txn = txn
        self._db = db

    def get(self, key):
        return self._txn.get(key, db=self._db)

    def put(self, key, value):
        self._txn.put(key, value, db=self._db)

    def delete(self, key):
        self._txn.delete(key, db=self._db)

    def keys_between(self, start, stop):
        cursor = self._txn.cursor(db=self._db)
        found = []
        if cursor.set_range(start):
            for key in cursor.iternext(keys=True, values=False):
                if key >= stop:
                    break
                found.append(bytes(key))
        return found


class MemoryKV:
    """``KV`` over a dict with a sorted key list (tests and simulations)."""

    def __init__(self):
        self.data: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        if key not in self.data:
            bisect.insort(self._keys, key)
        self.data[key] = value

    def delete(self, key):
        if self.data.pop(key, None) is not None:
            del self._keys[bisect.bisect_left(self._keys, key)]

    def keys_between(self, start, stop):
        lo = bisect.bisect_left(self._keys, start)
        hi = bisect.bisect_left(self._keys, stop)
        return self._keys[lo:hi]


def _cid(client_id: bytes) -> bytes:
    assert 0 < len(client_id) <= client_id_length_max_bytes, client_id
    return bytes((len(client_id),)) + client_id


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class SessionTable:
    """Exactly-once bookkeeping for one Raft entry's worth of operations.

    Use, per operation with a non-empty client id, in log order::

        verdict, result = table.lookup(cid, seq)
        if verdict is NEW: result = apply(...); table.remember(cid, seq, result)
        table.touch(cid, acked_below, time_ns)

    and ``expire(time_ns)`` once per entry before its operations. Not
    thread-safe: it lives inside one write transaction.
    """

    def __init__(self, kv: KV, ttl_ns: int):
        assert ttl_ns > 0
        self._kv = kv
        self._ttl_ns = ttl_ns
        self._cache: dict[bytes, list[int]] = {}   # cid key -> [last_seen_ns, acked_below]

    # -- queries ---------------------------------------------------------

    def _session(self, ck: bytes) -> list[int] | None:
        session = self._cache.get(ck)
        if session is None:
            raw = self._kv.get(_SESSION + ck)
            if raw is None:
                return None
            session = self._cache[ck] = _unpack(raw)
        return session

    def lookup(self, client_id: bytes, seq: int):
        """``(NEW, None)``, ``(DUPLICATE, result)`` or ``(STALE, STALE_RESULT)``."""
        ck = _cid(client_id)
        session = self._session(ck)
        if session is not None and seq < session[1]:
            return STALE, STALE_RESULT
        raw = self._kv.get(_RESULT + ck + _U64.pack(seq))
        if raw is None:
            return NEW, None
        errno_, message, value = _unpack(raw)
        return DUPLICATE, (errno_, message, value)

    # -- updates ---------------------------------------------------------

    def remember(self, client_id: bytes, seq: int, result_packed: bytes) -> None:
        """Store the msgpack-encoded ``[errno, message, value]`` of (client, seq)."""
        self._kv.put(_RESULT + _cid(client_id) + _U64.pack(seq), result_packed)

    def touch(self, client_id: bytes, acked_below: int, time_ns: int) -> None:
        """The client was active at ``time_ns`` and holds every reply below
        ``acked_below``: advance its window and forget those results."""
        ck = _cid(client_id)
        session = self._session(ck)
        if session is not None and session[0] >= time_ns and acked_below <= session[1]:
            return  # nothing changes (e.g. a second op of the same client in this entry)
        old_seen, old_acked = session if session is not None else (time_ns, 0)
        if acked_below > old_acked:
            self._forget_results(ck, old_acked, acked_below)
        new_seen = max(old_seen, time_ns)   # entry time may step back across leaders
        if session is not None:
            self._kv.delete(_IDLE + _U64.pack(old_seen) + ck)
        session = [new_seen, max(old_acked, acked_below)]
        self._cache[ck] = session
        self._kv.put(_SESSION + ck, _pack(session))
        self._kv.put(_IDLE + _U64.pack(new_seen) + ck, b"")

    def _forget_results(self, ck: bytes, from_seq: int, below_seq: int) -> None:
        start = _RESULT + ck + _U64.pack(from_seq)
        stop = _RESULT + ck + _U64.pack(min(below_seq, (1 << 64) - 1))
        for key in self._kv.keys_between(start, stop):
            self._kv.delete(key)

    def expire(self, time_ns: int) -> int:
        """Drop every session idle since before ``time_ns - ttl``; how many."""
        cutoff = time_ns - self._ttl_ns
        if cutoff <= 0:
            return 0
        dropped = 0
        for key in self._kv.keys_between(_IDLE, _IDLE + _U64.pack(cutoff)):
            ck = key[len(_IDLE) + 8:]
            self._kv.delete(key)
            self._kv.delete(_SESSION + ck)
            self._cache.pop(ck, None)
            for rkey in self._kv.keys_between(_RESULT + ck, _RESULT + ck + b"\xff" * 9):
                self._kv.delete(rkey)
            dropped += 1
        return dropped

    def count(self) -> int:
        """Live sessions (tests and status)."""
        return len(self._kv.keys_between(_SESSION, _SESSION + b"\xff"))
