"""The LMDB environment that holds a metadata replica's applied state.

Contract:

* One environment per replica, in directory ``path``; every named database
  lives in it, so the namespace (``state.py``) and the replica's own keys
  (``DB_REPLICA``: applied index, digest, client sessions) commit in the same
  write transaction and can never disagree after a crash.
* Writers: one write transaction at a time (LMDB's rule). The replica opens
  one per Raft entry, calls ``Namespace.apply`` once per operation inside it
  and commits. Readers may run concurrently in read transactions.
* Durability: with ``sync=True`` a returned ``commit()`` is on disk (LMDB's
  default fsync at commit). ``sync=False`` trades that away for test speed:
  a crash may lose recent commits but never corrupts the environment.
* Size: the map is sparse, so ``map_size_bytes`` bounds the namespace without
  costing disk or memory up front.

The namespace's databases (keys are big-endian so cursor order is numeric):

=================  ===========================  ==================================
name               key                          value
=================  ===========================  ==================================
``inodes``         ino (8 bytes)                fixed struct + symlink target
``dentries``       parent ino (8) + name        child ino (8) + S_IFMT >> 12 (1)
``layouts``        ino (8)                      msgpack layout (regular files)
``blocks``         block id                     ino (8) of the file holding it
``xattrs``         ino (8) + name               value
``leases``         ino (8)                      msgpack [lease_id, holder]
``holders``        holder                       msgpack [expiry_ns, lease count]
``freed_blocks``   block id                     msgpack [node ids] (for the GC)
``meta``           b"counters"                  struct of counters (see state.py)
``replica``        (the replica's own keys; the namespace never touches it)
=================  ===========================  ==================================
"""

from __future__ import annotations

import errno
import os

import lmdb

DB_INODES = b"inodes"
DB_DENTRIES = b"dentries"
DB_LAYOUTS = b"layouts"
DB_BLOCKS = b"blocks"
DB_XATTRS = b"xattrs"
DB_LEASES = b"leases"
DB_HOLDERS = b"holders"
DB_FREED_BLOCKS = b"freed_blocks"
DB_META = b"meta"
DB_REPLICA = b"replica"

NAMESPACE_DBS = (
    DB_INODES, DB_DENTRIES, DB_LAYOUTS, DB_BLOCKS, DB_XATTRS,
    DB_LEASES, DB_HOLDERS, DB_FREED_BLOCKS, DB_META,
)
ALL_DBS = NAMESPACE_DBS + (DB_REPLICA,)

dbs_max = 32                         # named databases in one environment (room for other machines)
map_size_default_bytes = 64 << 30    # sparse: costs nothing until used
readers_max = 256                    # concurrent read transactions

assert len(ALL_DBS) <= dbs_max


class Store:
    """An LMDB environment with the metadata service's named databases.

    Not thread-safe for writes beyond LMDB's own rule (one writer at a time);
    read transactions may be opened from any thread.
    """

    def __init__(self, path: str, *, map_size_bytes: int = map_size_default_bytes, sync: bool = True):
        os.makedirs(path, exist_ok=True)
        self.path = path
        # writemap stays off: nested transactions (used by state.apply to
        # undo a failed operation) are not supported with MDB_WRITEMAP.
        self.env = lmdb.open(
            path,
            map_size=map_size_bytes,
            max_dbs=dbs_max,
            max_readers=readers_max,
            sync=sync,
            metasync=sync,
            subdir=True,
            lock=True,
        )
        self._dbs = {name: self.env.open_db(name) for name in ALL_DBS}

    def db(self, name: bytes):
        """The handle of a named database. The ones in ``ALL_DBS`` are opened
        with the environment; any other name is created on first use, which
        takes LMDB's write lock: never do that inside a write transaction."""
        handle = self._dbs.get(name)
        if handle is None:
            handle = self._dbs[name] = self.env.open_db(name)
        return handle

    def copy_to(self, path: str) -> None:
        """Write a compact, consistent copy of the whole environment into the
        empty directory ``path`` (a snapshot: LMDB copies from one read txn)."""
        os.makedirs(path, exist_ok=True)
        self.env.copy(path, compact=True)

    def sync(self) -> None:
        """Force buffers to disk (matters only when opened with sync=False)."""
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Refused(Exception):
    """An expected failure a state machine found while validating an
    operation (``err``, ``msg``): the operation changes nothing."""

    def __init__(self, err: int, msg: str):
        super().__init__(err, msg)
        self.err = err
        self.msg = msg


_INT64_MAX = (1 << 63) - 1


def _is_code(value) -> bool:
    # IntEnum members are ints too; bools are not operation codes.
    return isinstance(value, int) and type(value) is not bool


class Undo(Exception):
    """``apply_op(..., direct=...)`` ran an operation straight in the
    caller's transaction and it failed other than by ``Refused`` (a full
    map, a bug), possibly after writing: the caller must abort that whole
    transaction and apply the operation again without ``direct`` (nested),
    which turns the failure into its result."""


def apply_op(env, txn, handlers: dict, code, time_ns, args, run, what: str = "write",
             direct=frozenset()) -> tuple[int, str, object]:
    """A state machine's whole ``apply``: the handler for ``code`` (ENOSYS
    when there is none), a sane ``time_ns`` and ``args`` a list starting
    with credentials (EINVAL otherwise), then ``apply_nested(env, txn, run,
    handler, time_ns, args)``: ``run`` checks the credentials (raising
    ``Refused``) and calls the handler. Never raises, except:

    A code in ``direct`` names a handler that raises ``Refused`` only
    before its first write. It runs straight in ``txn``, without the nested
    transaction (~1 us and slower reads and writes inside it, per
    operation); its ``Refused`` is its result as usual, and anything else
    it raises becomes ``Undo``."""
    handler = handlers.get(code) if _is_code(code) else None
    if handler is None:
        return (errno.ENOSYS, f"unknown {what} operation {code!r}"[:200], None)
    if type(time_ns) is not int or not 0 <= time_ns <= _INT64_MAX:
        return (errno.EINVAL, "bad time_ns", None)
    if type(args) not in (list, tuple) or not args:
        return (errno.EINVAL, "arguments must be a list starting with credentials", None)
    if code in direct:
        try:
            return (0, "", run(txn, handler, time_ns, args))
        except Refused as failure:
            return (failure.err, failure.msg, None)
        except Exception as exc:
            raise Undo(f"{what} operation {code!r} failed after it may have written") from exc
    return apply_nested(env, txn, run, handler, time_ns, args)


def read_op(txn, handlers: dict, code, args, run, what: str = "read") -> tuple[int, str, object]:
    """A state machine's whole ``read``: as ``apply_op`` without the time,
    answering ``(0, "", run(txn, handler, args))``; ``Refused`` becomes its
    result and anything else (a bug) EIO. Never raises."""
    handler = handlers.get(code) if _is_code(code) else None
    if handler is None:
        return (errno.ENOSYS, f"unknown {what} operation {code!r}"[:200], None)
    if type(args) not in (list, tuple) or not args:
        return (errno.EINVAL, "arguments must be a list starting with credentials", None)
    try:
        return (0, "", run(txn, handler, args))
    except Refused as failure:
        return (failure.err, failure.msg, None)
    except Exception as exc:  # last resort: a bug; keep serving
        return (errno.EIO, f"internal error: {type(exc).__name__}: {exc!r}"[:300], None)


def apply_nested(env, txn, run, *args) -> tuple[int, str, object]:
    """``run(child, *args)`` in a write transaction nested in ``txn``,
    committed: ``(0, "", its value)``. Anything ``run`` raises undoes all it
    wrote and becomes a result, so one operation of a Raft entry fails
    alone and the state machine keeps serving: ``Refused`` its
    ``(err, msg, None)``, a full map ENOSPC, anything else (a bug) EIO."""
    child = None
    try:
        child = env.begin(write=True, parent=txn)
        value = run(child, *args)
        child.commit()
        return (0, "", value)
    except Refused as failure:
        _abort(child)
        return (failure.err, failure.msg, None)
    except lmdb.MapFullError:
        _abort(child)
        return (errno.ENOSPC, "metadata store is full", None)
    except Exception as exc:  # last resort: a bug; undo and keep serving
        _abort(child)
        return (errno.EIO, f"internal error: {type(exc).__name__}: {exc!r}"[:300], None)


def _abort(child) -> None:
    """Undo a nested transaction; one whose commit failed is already gone."""
    if child is not None:
        try:
            child.abort()
        except lmdb.Error:
            pass
