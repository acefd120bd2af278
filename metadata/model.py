"""The metadata operations: codes, argument shapes, results. The contract
between the client, the wire, the Raft log and the state machine.

One encoding travels end to end (msgpack, never pickle): the client encodes an
operation's arguments once, the leader copies those bytes unparsed into the
Raft entry, and every replica's state machine decodes them. So this module is
the schema; ``state.py`` interprets it and ``client`` produces it.

Operation
    ``(code, args)`` where ``args`` is a msgpack-encoded list whose first item
    is always the caller's credentials ``[uid, gid, [supplementary gids]]``.
    uid 0 passes every permission check, as on a local filesystem.

References
    A *path* is absolute bytes (``b"/a/b"``), at most ``path_length_max_bytes``;
    components are separated by ``/``; ``.`` and ``..`` are resolved by the
    state machine; symlinks in intermediate components are always followed
    (absolute targets are relative to the Cistern root). A *ref* is a path or
    an int inode number (root is 1).

Result
    ``(errno, message, value)``: errno 0 and a value on success; a POSIX errno
    and a one-line message on failure. A failed write changed nothing.

Raft entry (built by the replica, applied by every replica)
    msgpack ``[time_ns, [[client_id, seq, acked_below, code, args_bytes], ...], version]``.
    ``time_ns`` is the leader's clock when it built the entry: the only clock
    the state machine sees. ``client_id`` (16 bytes, or b"" for internal ops)
    and ``seq`` make a retried write apply once; every seq below
    ``acked_below`` has its reply in the client's hands and may be forgotten.
    ``version`` is the ``STATE_MACHINE_VERSION`` of the leader that built
    the entry (entries without it are version 1). It says what applying the
    entry means: a replica applies an older version's entry as that version
    did, and refuses a newer one (see replica.py, Versions).
"""

from __future__ import annotations

import enum
import errno
import stat
import threading
from typing import NamedTuple

import msgpack

# Dirent kinds in READDIR replies: the S_IFMT bits of the child's mode.
KIND_DIR = stat.S_IFDIR
KIND_REG = stat.S_IFREG
KIND_LNK = stat.S_IFLNK

ROOT_INO = 1

# What applying an entry means, for every state machine on the log (the
# namespace, the node monitor's bookkeeping, the scheduler). Raise it with
# any change to what an operation writes or returns, and keep the old
# behaviour for entries of older versions (``entry_version``): replicas of
# one group may apply the same entry with different code during an upgrade.
#   1: entries before versions were recorded.
#   2: COMMIT_WRITE keeps the recorded replica lists of the blocks the file
#      keeps (version 1 wrote back the writer's lists).
STATE_MACHINE_VERSION = 2


class Op(enum.IntEnum):
    """Operation codes. 1-99 read, 100-999 namespace writes; 1000+ belong to
    other state machines hosted on the same log (the scheduler)."""

    # Reads: answered by the leader after a read barrier (linearizable), or by
    # any replica from its applied state when the caller accepts stale reads.
    GETATTR = 1        # (cred, ref, follow: bool) -> attr
    READDIR = 2        # (cred, ref, after: bytes|None, limit: int) -> [[[name, ino, kind], ...], done: bool]
    READLINK = 3       # (cred, ref) -> target bytes
    GETXATTR = 4       # (cred, ref, name: bytes) -> value bytes
    LISTXATTR = 5      # (cred, ref) -> [name bytes, ...]
    STATFS = 6         # (cred,) -> {"files": n, "dirs": n, "bytes": n, "inodes_free": n}
    ACCESS = 7         # (cred, ref, mask: int R_OK|W_OK|X_OK|F_OK) -> None
    LOOKUP = 8         # (cred, parent ino, name bytes) -> attr   (no symlink follow)
    DIGEST = 9         # (cred,) -> [applied_index, digest bytes]  (replica-answered)
    # Block bookkeeping for the storage-node monitor and fsck (root only).
    FSCK_SCAN = 10     # (cred, after_ino, limit) -> [[[ino, replication|None, [[block_id, length, [node ids]], ...]], ...], done]
    BLOCK_OWNERS = 11  # (cred, [block_id, ...]) -> [ino | BLOCK_FREED | None (unknown), ...]
    FREED_SCAN = 12    # (cred, after block_id|None, limit) -> [[[block_id, [node ids]], ...], done]
    # The data path: a file's blocks, for readers and for writers rewriting it.
    GET_LAYOUT = 20    # (cred, ref) -> [attr, layout, replication|None]; read permission; follows symlinks

    # Namespace writes: committed through Raft.
    MKDIR = 100        # (cred, path, mode) -> attr
    CREATE = 101       # (cred, path, mode, exclusive: bool) -> attr (existing file's attr when not exclusive)
    SYMLINK = 102      # (cred, path, target bytes) -> attr
    LINK = 103         # (cred, existing path, new path) -> attr of the inode
    UNLINK = 104       # (cred, path) -> None
    RMDIR = 105        # (cred, path) -> None
    RENAME = 106       # (cred, src path, dst path, flags RENAME_NOREPLACE|RENAME_EXCHANGE) -> None
    SETATTR = 107      # (cred, ref, {"mode","uid","gid","size","atime","mtime"}) -> attr; times in ns, TIME_NOW for the entry's time
    SETXATTR = 108     # (cred, ref, name, value, flags XATTR_CREATE|XATTR_REPLACE) -> None
    REMOVEXATTR = 109  # (cred, ref, name) -> None
    OPEN_LEASE = 110   # (cred, ref, holder bytes) -> [ino, lease_id]; EBUSY while another holder's lease lives
    RENEW_LEASES = 111 # (cred, holder) -> number of leases renewed
    RELEASE_LEASE = 112  # (cred, ino, lease_id) -> None
    COMMIT_WRITE = 113 # (cred, ino, lease_id, layout, size, mtime_ns|TIME_NOW) -> attr; ESTALE/EBUSY when the lease is not held
    TXN = 114          # (cred, conditions, ops) -> [result, ...]; all or nothing
    NOOP = 115         # (cred,) -> None: the read barrier and leadership probe
    # Replica bookkeeping committed by the leader's replication monitor (root only).
    UPDATE_REPLICAS = 116  # (cred, [[block_id, [add node ids], [drop node ids]], ...]) -> blocks changed; ids in no layout are skipped
    NODE_LOST = 117    # (cred, node_id, after_ino, limit) -> [last ino scanned, done, blocks changed]: node_id leaves every replica list
    CLEAR_FREED = 118  # (cred, [block_id, ...]) -> how many left freed_blocks (the nodes confirmed deletion)
    # Directory create delegations (asynchronous creates; see state.py's docstring).
    DELEG_GRANT = 119    # (cred, dir ref, holder, inodes) -> [dir attr, first ino, end ino, [name, ...]]
    DELEG_RENEW = 120    # (cred, dir ino, holder) -> recalled: bool; ESTALE when not held
    DELEG_RELEASE = 121  # (cred, dir ino, holder) -> None; ESTALE when not held
    DELEG_CREATE = 122   # (cred, dir ino, holder, [cred, ...], [[name, ino, mode, cred index, time_ns], ...]) -> [recalled, [[errno, attr|None], ...]]; renews
    DELEG_RECALL = 123   # (cred, code, args without cred) -> dir ino recalled or removed, or 0


READ_OPS = frozenset(op for op in Op if op < 100)
# The per-operation errno of an operation refused because a live (or lapsed,
# not yet recalled) create delegation on a directory could change its answer:
# retry after DELEG_RECALL (the client library does both). Never a user's
# errno: a client that gives up reports ETIMEDOUT.
DELEGATED_ERRNO = errno.EINPROGRESS
# Operations a delegation can never refuse (the client need not watch them).
NEVER_DELEGATED = frozenset((Op.DIGEST, Op.STATFS, Op.FSCK_SCAN, Op.BLOCK_OWNERS, Op.FREED_SCAN,
                             Op.RENEW_LEASES, Op.RELEASE_LEASE, Op.COMMIT_WRITE, Op.NOOP,
                             Op.UPDATE_REPLICAS, Op.NODE_LOST, Op.CLEAR_FREED, Op.DELEG_GRANT,
                             Op.DELEG_RENEW, Op.DELEG_RELEASE, Op.DELEG_CREATE, Op.DELEG_RECALL))
TIME_NOW = -1

# RENAME flags, as renameat2(2).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
# SETXATTR flags, as setxattr(2).
XATTR_CREATE = 1
XATTR_REPLACE = 2

# TXN conditions: [kind, ref, value]. The txn applies only if every condition holds.
COND_EXISTS = "exists"        # [COND_EXISTS, ref, None]
COND_ABSENT = "absent"        # [COND_ABSENT, path, None]
COND_VERSION = "version"      # [COND_VERSION, ref, version]: the inode's version equals value
# TXN operations: [code, args-without-cred]; the txn's cred applies to all.
# A layout is a list of blocks: [[block_id bytes(16), length, checksum bytes, [node_id, ...]], ...]

# BLOCK_OWNERS: the block is in freed_blocks (left a layout; not yet deleted everywhere).
BLOCK_FREED = 0
# A regular file's replication factor is this xattr (ASCII decimal,
# 1..block_replicas_max); absent or malformed means the cluster's default.
REPLICATION_XATTR = b"user.cistern.replication"


class Attr(NamedTuple):
    """An inode's attributes as replies carry them (a msgpack list on the wire)."""

    ino: int
    mode: int            # type bits and permission bits, as st_mode
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    generation: int      # inode number reuse counter (never reused today: always 0 or 1)
    version: int         # bumped by every change to the inode; TXN's COND_VERSION compares it


_packers = threading.local()   # one reusable msgpack Packer per thread


def pack(obj) -> bytes:
    """msgpack bytes of ``obj`` (bin type for bytes), as ``msgpack.packb``
    gives: through a Packer kept per thread, since packb builds a Packer
    (and its buffer) per call, ~0.5-0.9 us more on every operation's
    arguments, Raft op record and reply. A Packer resets itself when a
    pack fails, so an unencodable object leaves no residue."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


def unpack(data: bytes):
    # Lists, not tuples, so a decoded value compares equal to what was packed
    # in every language; strict_map_key off because xattr maps key by bytes.
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_args(cred: tuple[int, int, list[int]] | list, *args) -> bytes:
    """Encode one operation's arguments, credentials first."""
    return pack([list(cred), *args])


ROOT_CRED = (0, 0, [])
