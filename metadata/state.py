"""The namespace as a pure, deterministic state machine over LMDB.

``Namespace.apply(txn, time_ns, code, args)`` applies one write operation of
``model.Op`` inside the caller's LMDB write transaction and returns
``(errno, message, value)``; ``Namespace.read(txn, code, args)`` answers a
read. The only clock is ``time_ns`` (the leader stamps it into the Raft
entry); there is no randomness and no I/O but the transaction, so every
replica that applies the same entries reaches byte-identical state.

Contract:

* ``apply`` never raises. Malformed arguments (wrong types or arity, huge
  ints, bad paths) give EINVAL; an unknown code gives ENOSYS. Each operation
  runs in a nested transaction that is committed only on success, so a failed
  operation changes nothing even if a bug raises mid-way (that last resort
  answers EIO, and tests assert it never happens). A full LMDB map answers
  ENOSPC; that is an operational limit, not a state-machine decision (a
  batch that filled the map cannot commit either), so the replica must treat
  it as fatal and the operator grow ``map_size_bytes``.
* Semantics follow Linux (tmpfs/ext4), errnos included, for path resolution,
  permissions (uid 0 bypasses rwx), sticky directories, fs.protected_hardlinks
  (Linux's default), rename (renameat2 flags), O_CREAT through symlinks,
  truncate, utimes and xattrs; tests/sim/test_state_vs_posix.py checks this
  against the kernel. Deliberate departures:

  - an empty or relative path is EINVAL (there is no working directory);
    a path longer than ``path_length_max_bytes`` is ENAMETOOLONG;
  - an inode number that no longer exists is ENOENT;
  - reads never write: no atime updates (as ``noatime``);
  - no EMLINK limit on hard links; ``generation`` is always 0 (inode numbers
    are never reused);
  - chmod of a symlink inode (by number) is ENOTSUP, as
    fchmodat(AT_SYMLINK_NOFOLLOW); ``system.*`` xattrs (ACLs) are ENOTSUP;
    ``security.*`` may be written by root only;
  - a trailing slash inside a symlink target does not force "must be a
    directory" except when O_CREAT follows it;
  - READDIR clamps ``limit`` to ``readdir_page_entries_max``;
  - an unknown operation code is ENOSYS.
* An inode whose last name goes away is freed at once, even while a write
  lease is open on it: the lease dies with it, and the writer's COMMIT_WRITE
  answers ESTALE (as HDFS does when a file being written is deleted). So the
  namespace never holds an unreachable inode.
* A layout never lists a block that starts at or beyond the file's size
  (EINVAL); bytes between the layout's end and the size (a growing truncate,
  a sparse write) read as zeros. A block id appears in at most one layout
  position in the whole namespace (the ``blocks`` index) and a freed id is
  never taken back (EINVAL). Blocks that leave a layout are recorded in
  ``freed_blocks`` (with their node ids) for the garbage collector.
  COMMIT_WRITE records the writer's replica lists only for blocks new to
  the file; a kept block keeps its recorded list (since state-machine
  version 2: entries of version 1 apply as before, ``entry_version``).
* Block bookkeeping for the storage-node monitor (root only, EPERM
  otherwise): UPDATE_REPLICAS edits replica lists by delta (ids no longer in
  a layout are skipped, so a stale update is harmless), NODE_LOST removes a
  node from every list one page of files at a time, CLEAR_FREED forgets
  freed blocks the nodes have deleted (after which a COMMIT_WRITE could take
  such an id again: ids are random 128-bit, so only a buggy writer would).
  The reads FSCK_SCAN, BLOCK_OWNERS and FREED_SCAN page through layouts,
  the block index and freed_blocks. A file's replication factor is its
  ``model.REPLICATION_XATTR`` xattr (None when absent or malformed).
* Leases: live while ``time_ns < holder's expiry`` (last OPEN_LEASE or
  RENEW_LEASES by that holder + ``lease_ttl_s``). A lapsed lease is taken
  over by the next OPEN_LEASE from another holder; until then a renewal by
  its holder revives it (HDFS's soft limit), but a COMMIT_WRITE while it is
  lapsed is ESTALE. RELEASE_LEASE of a lease not held is ESTALE.
* Create delegations (CephFS's async dirops with delegated inode numbers):
  DELEG_GRANT gives one holder a delegation on a directory D (refused with
  EBUSY while another holder's lives, E2BIG for a directory whose listing
  exceeds ``delegation_listing_*_max``): it reserves a range of inode
  numbers and returns D's attributes and its complete listing. The record
  lives until ``time_ns >= expiry`` (grant or DELEG_RENEW +
  ``delegation_term_s``); DELEG_CREATE commits the holder's creates with
  the numbers it chose (each item checked as CREATE would check it: name,
  W|X on D for the item's caller, name absent, the inode limit; a failed
  item fails alone), under a live or a lapsed record, and renews it as
  DELEG_RENEW does (answering whether it was recalled). While the record
  exists (live or lapsed), every operation by anyone that could observe a
  name D lacks, or change what the holder checks, is refused with
  ``model.DELEGATED_ERRNO``: a dentry lookup in D that finds nothing
  (LOOKUP, path walks, creating any entry, COND_ABSENT), READDIR of D,
  SETATTR, RMDIR or RENAME of D, and a RENAME of any directory above D.
  Lookups of names D has are unaffected, so removals and renames of its
  entries are allowed. The refused client sends DELEG_RECALL with the
  refused operation: the state machine re-runs it on a scratch copy to
  find the record in the way and marks it recalled (DELEG_RENEW then
  answers ``recalled`` and no longer extends it: the holder commits and
  releases), or removes it once lapsed (a dead holder's creates die with
  it; a live but partitioned holder's later DELEG_CREATE answers ESTALE).
* TXN: COND_EXISTS and COND_VERSION look at the entry itself (a final
  symlink is not followed); COND_ABSENT holds when resolution finds nothing
  (ENOENT or ENOTDIR); other resolution errors are returned as they are.
  Ops may be reads (their values come back in the result list); a TXN inside
  a TXN is EINVAL.

Encoding (see store.py for the databases): an inode is a fixed 64-byte
struct followed by the symlink target, so an apply is a handful of LMDB
gets and puts and no per-operation object churn beyond one list per inode.
"""

from __future__ import annotations

import errno as E
import os
import stat as S
import struct

from cistern.metadata import limits, model, store
from cistern.metadata.model import ROOT_INO, TIME_NOW, Attr, Op

__all__ = ["Namespace"]

# -- record encodings --------------------------------------------------------

# mode, nlink, uid, gid, size, atime, mtime, ctime, version, parent (dirs only)
_INODE = struct.Struct(">IIIIQqqqQQ")
_INODE_SIZE = _INODE.size
M, NLINK, UID, GID, SIZE, ATIME, MTIME, CTIME, VERSION, PARENT, TARGET = range(11)

_INO = struct.Struct(">Q")
_DENT = struct.Struct(">QB")     # child ino, S_IFMT >> 12
# next_ino, next_lease_id, files (non-dirs), dirs, bytes (regular file sizes)
_COUNTERS = struct.Struct(">QQQQQ")
_COUNTERS_KEY = b"counters"
NEXT_INO, NEXT_LEASE, FILES, DIRS, BYTES = range(5)

# Create delegations live in ``meta`` under this prefix + the directory's
# ino: msgpack [holder, expiry_ns, first ino, end ino, last ino used, recalled].
_DELEG_PREFIX = b"dlg"
D_HOLDER, D_EXPIRY, D_FIRST, D_END, D_LAST, D_RECALLED = range(6)

_DELEG_OPS = frozenset((Op.DELEG_GRANT, Op.DELEG_RENEW, Op.DELEG_RELEASE, Op.DELEG_CREATE, Op.DELEG_RECALL))


def _deleg_key(dino: int) -> bytes:
    return _DELEG_PREFIX + _INO.pack(dino)


def _deleg_expiry(now: int) -> int:
    """A delegation granted or renewed at ``now`` lapses at this time (ns)."""
    return now + int(limits.delegation_term_s * 1_000_000_000)


KIND_DIR = S.S_IFDIR >> 12
KIND_REG = S.S_IFREG >> 12
KIND_LNK = S.S_IFLNK >> 12

# Last-component types, as Linux's LAST_NORM / LAST_DOT / LAST_DOTDOT / LAST_ROOT.
LAST_NORM, LAST_DOT, LAST_DOTDOT, LAST_ROOT = range(4)

R_OK, W_OK, X_OK = 4, 2, 1

_S_IFMT = 0o170000  # stat.S_IFMT is a function, not the mask
_UINT32_MAX = (1 << 32) - 1
_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_SETATTR_KEYS = frozenset(("mode", "uid", "gid", "size", "atime", "mtime"))
_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.", b"system.")


_Fail = store.Refused   # an expected failure found while validating: nothing was changed yet

# Writes whose handlers raise ``_Fail`` only before their first write (all
# lookups and checks first, then ``_link_new``'s puts), so the replica
# applies them without a nested transaction (``apply_direct``). Keep a
# handler here only while that holds: NamespaceHarness checks, for every
# refused one, that the transaction is unchanged.
DIRECT_WRITES = frozenset({Op.CREATE, Op.MKDIR})


class _Delegated(store.Refused):
    """Refused because of the create delegation on directory ``dir_ino``."""

    def __init__(self, dir_ino: int):
        super().__init__(model.DELEGATED_ERRNO, f"directory {dir_ino} is delegated to another client: retry")
        self.dir_ino = dir_ino


def _run_write(child, handler, time_ns: int, args):
    return handler(child, time_ns, _cred(args[0]), args[1:])


def _run_read(txn, handler, args):
    return handler(txn, _cred(args[0]), args[1:])


def _fail(err: int, what: object = "") -> _Fail:
    text = os.strerror(err)
    if what != "":
        if isinstance(what, bytes):
            what = what.decode("utf-8", "backslashreplace")
        return _Fail(err, f"{what}: {text}")
    return _Fail(err, text)


# -- pure argument validation -------------------------------------------------

def _is_int(value) -> bool:
    # Op members are ints too; bools are not operation codes.
    return isinstance(value, int) and type(value) is not bool


def _args(args, count: int) -> list:
    if type(args) not in (list, tuple) or len(args) != count:
        raise _fail(E.EINVAL, f"expected {count} arguments")
    return args


def _int(value, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _fail(E.EINVAL, f"bad {what}")
    return value


def _bytes(value, what: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(E.EINVAL, f"{what} must be bytes")
    return value


def _bool(value, what: str) -> bool:
    if type(value) is not bool:
        raise _fail(E.EINVAL, f"{what} must be a bool")
    return value


def _cred(value) -> tuple[int, int, list]:
    if type(value) not in (list, tuple) or len(value) != 3:
        raise _fail(E.EINVAL, "bad credentials")
    uid, gid, gids = value
    if type(uid) is not int or type(gid) is not int or not 0 <= uid <= _UINT32_MAX or not 0 <= gid <= _UINT32_MAX:
        raise _fail(E.EINVAL, "bad credentials")
    if type(gids) not in (list, tuple) or len(gids) > limits.supplementary_gids_max:
        raise _fail(E.EINVAL, "bad credentials")
    for g in gids:
        if type(g) is not int:
            raise _fail(E.EINVAL, "bad credentials")
    return uid, gid, gids


def _split_path(path) -> tuple[list, bool]:
    """Components of an absolute path and whether it ends in a slash.
    Component length is checked at lookup time, as Linux does."""
    if type(path) is not bytes:
        raise _fail(E.EINVAL, "path must be bytes")
    if not path or path[0] != 0x2F:
        raise _fail(E.EINVAL, "path must be absolute")
    if len(path) > limits.path_length_max_bytes:
        raise _fail(E.ENAMETOOLONG, "path")
    if b"\0" in path:
        raise _fail(E.EINVAL, "NUL in path")
    comps = [c for c in path.split(b"/") if c]
    return comps, (path[-1] == 0x2F and bool(comps))


def _entry_name(name) -> bytes:
    """A single directory-entry name, as LOOKUP takes it."""
    if type(name) is not bytes or not name or b"/" in name or b"\0" in name:
        raise _fail(E.EINVAL, "bad name")
    if len(name) > limits.name_length_max_bytes:
        raise _fail(E.ENAMETOOLONG, name[:32])
    return name


def _new_entry_name(name) -> bytes:
    """A name a new entry may take (``.`` and ``..`` always exist)."""
    _entry_name(name)
    if name in (b".", b".."):
        raise _fail(E.EEXIST, name)
    return name


def new_entry_errno(name) -> int:
    """The errno a new entry named ``name`` gets (EINVAL, ENAMETOOLONG,
    EEXIST for ``.``/``..``), or 0. Public: a delegation holder checks its
    creates locally with it."""
    try:
        _new_entry_name(name)
    except _Fail as failure:
        return failure.err
    return 0


def _holder_arg(holder) -> bytes:
    """A lease or delegation holder's name."""
    _bytes(holder, "holder")
    if not 0 < len(holder) <= limits.lease_holder_length_max_bytes:
        raise _fail(E.EINVAL, "bad holder")
    return holder


def _time_arg(value, what: str) -> int:
    return _int(value, _INT64_MIN, _INT64_MAX, what)


# -- pure inode helpers ----------------------------------------------------------

def _in_group(cred, gid: int) -> bool:
    return gid == cred[1] or gid in cred[2]


def permits(mode: int, uid: int, gid: int, cred, mask: int) -> bool:
    """inode_permission(): rwx by owner class, then group, then others; uid 0
    passes except execute on a non-directory with no x bit at all. Public:
    a delegation holder checks its creates locally with it."""
    if cred[0] == 0:
        return not (mask & X_OK) or S.S_ISDIR(mode) or bool(mode & 0o111)
    if cred[0] == uid:
        bits = mode >> 6
    elif _in_group(cred, gid):
        bits = mode >> 3
    else:
        bits = mode
    return bits & mask == mask


def _may(node, cred, mask: int) -> bool:
    return permits(node[M], node[UID], node[GID], cred, mask)


def new_file_gid(dir_mode: int, dir_gid: int, cred) -> int:
    """A new inode's group: a setgid directory's, else the caller's."""
    return dir_gid if dir_mode & S.S_ISGID else cred[1]


def _owner_or_root(node, cred) -> bool:
    return cred[0] == 0 or cred[0] == node[UID]


def _sticky_denies(dnode, node, cred) -> bool:
    """check_sticky(): in a sticky directory only the file's owner, the
    directory's owner or root may remove or rename an entry."""
    if not dnode[M] & S.S_ISVTX:
        return False
    uid = cred[0]
    return uid != 0 and uid != node[UID] and uid != dnode[UID]


def _attr(ino: int, n) -> Attr:
    return Attr(ino, n[M], n[NLINK], n[UID], n[GID], n[SIZE], n[ATIME], n[MTIME], n[CTIME], 0, n[VERSION])


def _changed(node, now: int) -> None:
    node[CTIME] = now
    node[VERSION] += 1


def _dir_changed(dnode, now: int) -> None:
    dnode[MTIME] = dnode[CTIME] = now
    dnode[VERSION] += 1


def _layout_offsets(layout) -> list[int]:
    """Start offset of every block."""
    offsets, at = [], 0
    for block in layout:
        offsets.append(at)
        at += block[1]
    return offsets


def _validate_layout(layout, size: int) -> list:
    if type(layout) not in (list, tuple) or len(layout) > limits.layout_blocks_max:
        raise _fail(E.EINVAL, "bad layout")
    seen, at = set(), 0
    for block in layout:
        if type(block) not in (list, tuple) or len(block) != 4:
            raise _fail(E.EINVAL, "bad layout block")
        bid, length, checksum, nodes = block
        if type(bid) is not bytes or len(bid) != limits.block_id_length_bytes or bid in seen:
            raise _fail(E.EINVAL, "bad or repeated block id")
        _int(length, 0, limits.file_size_max_bytes, "block length")
        if type(checksum) is not bytes or len(checksum) > limits.block_checksum_length_max_bytes:
            raise _fail(E.EINVAL, "bad block checksum")
        if type(nodes) not in (list, tuple) or len(nodes) > limits.block_replicas_max:
            raise _fail(E.EINVAL, "bad block node list")
        for node_id in nodes:
            if type(node_id) not in (int, str, bytes) or (type(node_id) is int and not _INT64_MIN <= node_id <= _UINT64_MAX):
                raise _fail(E.EINVAL, "bad block node id")
        # A block that starts at or beyond the size holds no byte of the file.
        if at >= size:
            raise _fail(E.EINVAL, "layout block lies beyond the file size")
        seen.add(bid)
        at += length
    return [[b[0], b[1], b[2], list(b[3])] for b in layout]


def _root_only(cred) -> None:
    if cred[0] != 0:
        raise _fail(E.EPERM, "block bookkeeping is root's")


def _block_id(bid) -> bytes:
    if type(bid) is not bytes or len(bid) != limits.block_id_length_bytes:
        raise _fail(E.EINVAL, "bad block id")
    return bid


def _node_id(node_id):
    # The shapes _validate_layout accepts in a replica list.
    if type(node_id) not in (int, str, bytes) or (type(node_id) is int and not _INT64_MIN <= node_id <= _UINT64_MAX):
        raise _fail(E.EINVAL, "bad block node id")
    return node_id


def _replica_update(update) -> tuple:
    if type(update) not in (list, tuple) or len(update) != 3:
        raise _fail(E.EINVAL, "bad replica update")
    bid, add, drop = update
    _block_id(bid)
    for nodes in (add, drop):
        if type(nodes) not in (list, tuple) or len(nodes) > limits.block_replicas_max:
            raise _fail(E.EINVAL, "bad replica update node list")
        for node_id in nodes:
            _node_id(node_id)
    return bid, add, drop


def _edit_replicas(layout: list, bid: bytes, add, drop) -> int:
    """Drop then add node ids in ``bid``'s replica list (in place, order
    kept, no duplicates, at most ``block_replicas_max``); 1 if it changed."""
    for block in layout:
        if block[0] == bid:
            return _edit_block_replicas(block, add, drop)
    return 0


def _edit_block_replicas(block: list, add, drop) -> int:
    old = block[3]
    nodes = [n for n in old if n not in drop]
    for node_id in add:
        if node_id not in nodes and len(nodes) < limits.block_replicas_max:
            nodes.append(node_id)
    if nodes == old:
        return 0
    block[3] = nodes
    return 1


def _xattr_namespace(name) -> bytes:
    if type(name) is not bytes:
        raise _fail(E.EINVAL, "xattr name must be bytes")
    if not name or len(name) > limits.xattr_name_length_max_bytes:
        raise _fail(E.ERANGE, "xattr name length")
    if b"\0" in name:
        raise _fail(E.EINVAL, "NUL in xattr name")
    for prefix in _XATTR_NAMESPACES:
        if name.startswith(prefix):
            if len(name) == len(prefix):
                raise _fail(E.EINVAL, "xattr name is only a namespace")
            if prefix == b"system.":
                break  # POSIX ACLs and the like: not supported
            return prefix
    raise _fail(E.ENOTSUP, name[:64])


def _xattr_permission(node, cred, prefix: bytes, write: bool) -> None:
    """xattr_permission() plus the capability rule for security.*."""
    uid = cred[0]
    if prefix == b"trusted.":
        if uid != 0:
            raise _fail(E.EPERM if write else E.ENODATA, "trusted xattrs")
        return
    if prefix == b"security.":
        if write and uid != 0:
            raise _fail(E.EPERM, "security xattrs")
        return
    mode = node[M]
    if not (S.S_ISREG(mode) or S.S_ISDIR(mode)):
        raise _fail(E.EPERM if write else E.ENODATA, "user xattrs on this file type")
    if write and S.S_ISDIR(mode) and mode & S.S_ISVTX and not _owner_or_root(node, cred):
        raise _fail(E.EPERM, "user xattrs on a sticky directory")
    if not _may(node, cred, W_OK if write else R_OK):
        raise _fail(E.EACCES, "xattr")


class Namespace:
    """The namespace state machine over a ``store.Store``. Holds no state of
    its own besides database handles (everything lives in the transaction)
    and ``entry_version``: the ``model.STATE_MACHINE_VERSION`` of the entry
    being applied, set by the replica; operations whose meaning changed
    apply as that version did."""

    def __init__(self, st: "store.Store"):
        self.entry_version = model.STATE_MACHINE_VERSION
        self._store = st
        self._env = st.env
        self._inodes = st.db(store.DB_INODES)
        self._dentries = st.db(store.DB_DENTRIES)
        self._layouts = st.db(store.DB_LAYOUTS)
        self._blocks = st.db(store.DB_BLOCKS)
        self._xattrs = st.db(store.DB_XATTRS)
        self._leases = st.db(store.DB_LEASES)
        self._holders = st.db(store.DB_HOLDERS)
        self._freed = st.db(store.DB_FREED_BLOCKS)
        self._meta = st.db(store.DB_META)
        self._writes = {
            Op.MKDIR: self._mkdir, Op.CREATE: self._create, Op.SYMLINK: self._symlink,
            Op.LINK: self._link, Op.UNLINK: self._unlink, Op.RMDIR: self._rmdir,
            Op.RENAME: self._rename, Op.SETATTR: self._setattr, Op.SETXATTR: self._setxattr,
            Op.REMOVEXATTR: self._removexattr, Op.OPEN_LEASE: self._open_lease,
            Op.RENEW_LEASES: self._renew_leases, Op.RELEASE_LEASE: self._release_lease,
            Op.COMMIT_WRITE: self._commit_write, Op.TXN: self._txn, Op.NOOP: self._noop,
            Op.UPDATE_REPLICAS: self._update_replicas, Op.NODE_LOST: self._node_lost,
            Op.CLEAR_FREED: self._clear_freed, Op.DELEG_GRANT: self._deleg_grant,
            Op.DELEG_RENEW: self._deleg_renew, Op.DELEG_RELEASE: self._deleg_release,
            Op.DELEG_CREATE: self._deleg_create, Op.DELEG_RECALL: self._deleg_recall,
        }
        self._reads = {
            Op.GETATTR: self._getattr, Op.READDIR: self._readdir, Op.READLINK: self._readlink,
            Op.GETXATTR: self._getxattr, Op.LISTXATTR: self._listxattr, Op.STATFS: self._statfs,
            Op.ACCESS: self._access, Op.LOOKUP: self._lookup,
            Op.FSCK_SCAN: self._fsck_scan, Op.BLOCK_OWNERS: self._block_owners,
            Op.FREED_SCAN: self._freed_scan, Op.GET_LAYOUT: self._get_layout,
        }

    # -- public interface ------------------------------------------------------

    def bootstrap(self, txn) -> None:
        """Create the root directory and the counters when absent. Idempotent."""
        if txn.get(_COUNTERS_KEY, db=self._meta) is None:
            txn.put(_COUNTERS_KEY, _COUNTERS.pack(ROOT_INO + 1, 1, 0, 1, 0), db=self._meta)
        if self._inode(txn, ROOT_INO) is None:
            root = [S.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 1, ROOT_INO, b""]
            self._put_inode(txn, ROOT_INO, root)

    def apply(self, txn, time_ns: int, code: int, args: list) -> tuple[int, str, object]:
        """Apply one write operation inside ``txn``; never raises."""
        return store.apply_op(self._env, txn, self._writes, code, time_ns, args, _run_write)

    def apply_direct(self, txn, time_ns: int, code: int, args: list) -> tuple[int, str, object]:
        """``apply`` without a nested transaction for the operations whose
        handlers refuse only before their first write (``DIRECT_WRITES``);
        raises ``store.Undo`` when such an operation failed otherwise: then
        abort ``txn`` and ``apply`` it again (see ``store.apply_op``)."""
        return store.apply_op(self._env, txn, self._writes, code, time_ns, args, _run_write,
                              direct=DIRECT_WRITES)

    def read(self, txn, code: int, args: list) -> tuple[int, str, object]:
        """Answer one read operation from ``txn``; never raises."""
        return store.read_op(txn, self._reads, code, args, _run_read)

    # -- records -------------------------------------------------------------------

    def _inode(self, t, ino: int):
        v = t.get(_INO.pack(ino), db=self._inodes)
        if v is None:
            return None
        node = list(_INODE.unpack_from(v))
        node.append(v[_INODE_SIZE:])
        return node

    def _put_inode(self, t, ino: int, n) -> None:
        t.put(_INO.pack(ino), _INODE.pack(n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8], n[9]) + n[10],
              db=self._inodes)

    def _dentry(self, t, pino: int, name: bytes):
        """The entry (child ino, kind) or None; an absence is refused while
        ``pino`` is delegated (only its holder may see it, or fill it)."""
        v = t.get(_INO.pack(pino) + name, db=self._dentries)
        if v is None:
            self._undelegated(t, pino)
            return None
        return _DENT.unpack(v)

    # -- create delegations ------------------------------------------------

    def _delegation(self, t, dino: int):
        v = t.get(_deleg_key(dino), db=self._meta)
        return None if v is None else model.unpack(v)

    def _put_delegation(self, t, dino: int, record) -> None:
        t.put(_deleg_key(dino), model.pack(record), db=self._meta)

    def _undelegated(self, t, dino: int) -> None:
        """Refuse (``_Delegated``) while a delegation record on ``dino`` exists."""
        if t.get(_deleg_key(dino), db=self._meta) is not None:
            raise _Delegated(dino)

    def _delegated_dirs(self, t) -> list[int]:
        out = []
        with t.cursor(db=self._meta) as cur:
            if cur.set_range(_DELEG_PREFIX):
                for key in cur.iternext(values=False):
                    if not key.startswith(_DELEG_PREFIX):
                        break
                    out.append(_INO.unpack(key[len(_DELEG_PREFIX):])[0])
        return out

    def _no_delegation_below(self, t, ino: int) -> None:
        """Renaming directory ``ino`` would move a delegated directory (or
        itself is one): refused, as the holder's paths would change."""
        for dino in self._delegated_dirs(t):
            if dino == ino or (self._inode(t, dino) is not None and ino in self._ancestors(t, dino)):
                raise _Delegated(dino)

    def _counters(self, t) -> list:
        return list(_COUNTERS.unpack(t.get(_COUNTERS_KEY, db=self._meta)))

    def _put_counters(self, t, c) -> None:
        t.put(_COUNTERS_KEY, _COUNTERS.pack(*c), db=self._meta)

    def _layout(self, t, ino: int) -> list:
        v = t.get(_INO.pack(ino), db=self._layouts)
        return [] if v is None else model.unpack(v)

    def _dir_is_empty(self, t, ino: int) -> bool:
        prefix = _INO.pack(ino)
        with t.cursor(db=self._dentries) as cur:
            return not cur.set_range(prefix) or not cur.key().startswith(prefix)

    # -- path resolution ----------------------------------------------------

    def _walk(self, t, cred, comps: list, follow_last: bool, start: int = ROOT_INO):
        """Resolve components from directory ``start`` (the root unless a
        relative symlink is being followed), following symlinks in every
        intermediate component and in the last one when ``follow_last``.
        Search permission is checked on each directory looked into."""
        ino, kind, node = start, KIND_DIR, None
        stack = comps[::-1]
        links = 0
        while stack:
            name = stack.pop()
            if kind != KIND_DIR:
                raise _fail(E.ENOTDIR, name)
            if cred[0] != 0:
                if node is None:
                    node = self._inode(t, ino)
                if not _may(node, cred, X_OK):
                    raise _fail(E.EACCES, name)
            if name == b".":
                continue
            if name == b"..":
                if node is None:
                    node = self._inode(t, ino)
                ino, node = node[PARENT], None
                continue
            if len(name) > limits.name_length_max_bytes:
                raise _fail(E.ENAMETOOLONG, name[:32])
            v = t.get(_INO.pack(ino) + name, db=self._dentries)
            if v is None:
                self._undelegated(t, ino)
                raise _fail(E.ENOENT, name)
            cino, ckind = _DENT.unpack(v)
            if ckind == KIND_LNK and (stack or follow_last):
                links += 1
                if links > limits.symlink_follow_max:
                    raise _fail(E.ELOOP, name)
                target = self._inode(t, cino)[TARGET]
                if target[:1] == b"/":
                    ino, kind, node = ROOT_INO, KIND_DIR, None
                stack.extend([c for c in target.split(b"/") if c][::-1])
                continue
            ino, kind, node = cino, ckind, None
        if node is None:
            node = self._inode(t, ino)
        return ino, node

    def _resolve(self, t, cred, ref, follow: bool):
        """A ref (path or inode number) to (ino, inode)."""
        if type(ref) is int:
            if not 1 <= ref <= _UINT64_MAX:
                raise _fail(E.EINVAL, "bad inode number")
            node = self._inode(t, ref)
            if node is None:
                raise _fail(E.ENOENT, f"inode {ref}")
            return ref, node
        comps, trailing = _split_path(ref)
        ino, node = self._walk(t, cred, comps, follow or trailing)
        if trailing and not S.S_ISDIR(node[M]):
            raise _fail(E.ENOTDIR, ref)
        return ino, node

    def _parent(self, t, cred, path):
        """filename_parentat(): (parent ino, parent inode, last name, last
        type, trailing slash). Checks search permission on the parent."""
        comps, trailing = _split_path(path)
        if not comps:
            return ROOT_INO, self._inode(t, ROOT_INO), b"", LAST_ROOT, trailing
        pino, pnode = self._walk(t, cred, comps[:-1], True)
        if not S.S_ISDIR(pnode[M]):
            raise _fail(E.ENOTDIR, path)
        if not _may(pnode, cred, X_OK):
            raise _fail(E.EACCES, path)
        name = comps[-1]
        if name == b".":
            return pino, pnode, name, LAST_DOT, trailing
        if name == b"..":
            return pino, pnode, name, LAST_DOTDOT, trailing
        if len(name) > limits.name_length_max_bytes:
            raise _fail(E.ENAMETOOLONG, name[:32])
        return pino, pnode, name, LAST_NORM, trailing

    def _new_name(self, t, cred, path, want_dir: bool):
        """filename_create(): the parent and name where a new entry goes."""
        pino, pnode, name, last, trailing = self._parent(t, cred, path)
        if last != LAST_NORM:
            raise _fail(E.EEXIST, path)
        if self._dentry(t, pino, name) is not None:
            raise _fail(E.EEXIST, path)
        if trailing and not want_dir:
            raise _fail(E.ENOENT, path)
        if not _may(pnode, cred, W_OK | X_OK):
            raise _fail(E.EACCES, path)
        return pino, pnode, name

    # -- allocation and freeing ------------------------------------------------

    def _alloc(self, t, counters, cred, pnode, mode: int) -> tuple[int, list]:
        """A new inode's number and record (not yet stored)."""
        if counters[FILES] + counters[DIRS] >= limits.inodes_max:
            raise _fail(E.ENOSPC, "no free inodes")
        ino = counters[NEXT_INO]
        counters[NEXT_INO] = ino + 1
        gid = new_file_gid(pnode[M], pnode[GID], cred)
        return ino, [mode, 1, cred[0], gid, 0, 0, 0, 0, 1, 0, b""]

    def _link_new(self, t, now: int, pino: int, pnode, name: bytes, ino: int, node, counters) -> Attr:
        """Store a new inode under (pino, name) and touch the parent."""
        node[ATIME] = node[MTIME] = node[CTIME] = now
        kind = node[M] >> 12
        if kind == KIND_DIR:
            node[NLINK] = 2
            node[PARENT] = pino
            pnode[NLINK] += 1
            counters[DIRS] += 1
        else:
            counters[FILES] += 1
        self._put_inode(t, ino, node)
        t.put(_INO.pack(pino) + name, _DENT.pack(ino, kind), db=self._dentries)
        _dir_changed(pnode, now)
        self._put_inode(t, pino, pnode)
        self._put_counters(t, counters)
        return _attr(ino, node)

    def _drop_link(self, t, now: int, ino: int, node, counters) -> None:
        """One name of a non-directory went away: nlink--, free at zero."""
        node[NLINK] -= 1
        if node[NLINK] == 0:
            self._free(t, ino, node, counters)
        else:
            _changed(node, now)
            self._put_inode(t, ino, node)

    def _free(self, t, ino: int, node, counters) -> None:
        key = _INO.pack(ino)
        t.delete(key, db=self._inodes)
        self._delete_xattrs(t, key)
        if S.S_ISDIR(node[M]):
            counters[DIRS] -= 1
            return
        counters[FILES] -= 1
        if S.S_ISREG(node[M]):
            counters[BYTES] -= node[SIZE]
            self._free_blocks(t, self._layout(t, ino))
            t.delete(key, db=self._layouts)
            self._drop_lease(t, key)

    def _delete_xattrs(self, t, key: bytes) -> None:
        with t.cursor(db=self._xattrs) as cur:
            if not cur.set_range(key):
                return
            while cur.key().startswith(key):
                if not cur.delete():
                    break

    def _free_blocks(self, t, blocks) -> None:
        for block in blocks:
            t.delete(block[0], db=self._blocks)
            t.put(block[0], model.pack(block[3]), db=self._freed)

    def _drop_lease(self, t, key: bytes) -> None:
        v = t.get(key, db=self._leases)
        if v is not None:
            t.delete(key, db=self._leases)
            self._holder_forget(t, model.unpack(v)[1])

    def _holder_forget(self, t, holder: bytes) -> None:
        expiry, count = model.unpack(t.get(holder, db=self._holders))
        if count <= 1:
            t.delete(holder, db=self._holders)
        else:
            t.put(holder, model.pack([expiry, count - 1]), db=self._holders)

    # -- writes: names ---------------------------------------------------------

    def _mkdir(self, t, now, cred, args):
        path, mode = _args(args, 2)
        _int(mode, 0, 0o177777, "mode")
        pino, pnode, name = self._new_name(t, cred, path, True)
        counters = self._counters(t)
        perm = (mode & 0o1777) | (pnode[M] & S.S_ISGID)
        ino, node = self._alloc(t, counters, cred, pnode, S.S_IFDIR | perm)
        return self._link_new(t, now, pino, pnode, name, ino, node, counters)

    def _create(self, t, now, cred, args):
        path, mode, exclusive = _args(args, 3)
        _int(mode, 0, 0o177777, "mode")
        _bool(exclusive, "exclusive")
        pino, pnode, name, last, trailing = self._parent(t, cred, path)
        if last != LAST_NORM:  # '.', '..' or '/': an existing directory
            raise _fail(E.EEXIST if exclusive else E.EISDIR, path)
        if trailing:
            raise _fail(E.EISDIR, path)
        found = self._dentry(t, pino, name)
        if found is not None and exclusive:
            raise _fail(E.EEXIST, path)
        if found is not None and found[1] == KIND_LNK:
            pino, pnode, name, found = self._create_follow(t, cred, path, pino, found)
        if found is not None:
            if found[1] == KIND_DIR:
                raise _fail(E.EISDIR, path)
            return _attr(found[0], self._inode(t, found[0]))
        if not _may(pnode, cred, W_OK | X_OK):
            raise _fail(E.EACCES, path)
        counters = self._counters(t)
        ino, node = self._alloc(t, counters, cred, pnode, S.S_IFREG | (mode & 0o7777))
        return self._link_new(t, now, pino, pnode, name, ino, node, counters)

    def _create_follow(self, t, cred, path, pino: int, found):
        """open(O_CREAT) without O_EXCL follows a symlink in the last
        component, and creates the file it names when that is missing."""
        links = 0
        while found is not None and found[1] == KIND_LNK:
            links += 1
            if links > limits.symlink_follow_max:
                raise _fail(E.ELOOP, path)
            target = self._inode(t, found[0])[TARGET]
            comps = [c for c in target.split(b"/") if c]
            start = ROOT_INO if target[:1] == b"/" else pino
            pino, pnode = self._walk(t, cred, comps[:-1], True, start)
            if not S.S_ISDIR(pnode[M]):
                raise _fail(E.ENOTDIR, path)
            if not _may(pnode, cred, X_OK):
                raise _fail(E.EACCES, path)
            if not comps or target.endswith(b"/") or comps[-1] in (b".", b".."):
                raise _fail(E.EISDIR, path)  # names a directory, or must be one
            name = comps[-1]
            if len(name) > limits.name_length_max_bytes:
                raise _fail(E.ENAMETOOLONG, name[:32])
            found = self._dentry(t, pino, name)
        return pino, pnode, name, found

    def _symlink(self, t, now, cred, args):
        path, target = _args(args, 2)
        _bytes(target, "symlink target")
        if not target:
            raise _fail(E.ENOENT, "empty symlink target")
        if len(target) > limits.symlink_target_length_max_bytes:
            raise _fail(E.ENAMETOOLONG, "symlink target")
        if b"\0" in target:
            raise _fail(E.EINVAL, "NUL in symlink target")
        pino, pnode, name = self._new_name(t, cred, path, False)
        counters = self._counters(t)
        ino, node = self._alloc(t, counters, cred, pnode, S.S_IFLNK | 0o777)
        node[SIZE] = len(target)
        node[TARGET] = target
        return self._link_new(t, now, pino, pnode, name, ino, node, counters)

    def _link(self, t, now, cred, args):
        old, new = _args(args, 2)
        comps, trailing = _split_path(old)
        ino, node = self._walk(t, cred, comps, trailing)
        if trailing and not S.S_ISDIR(node[M]):
            raise _fail(E.ENOTDIR, old)
        pino, pnode, name = self._new_name_for_link(t, cred, new)
        if not self._may_link(node, cred):
            raise _fail(E.EPERM, old)
        if not _may(pnode, cred, W_OK | X_OK):
            raise _fail(E.EACCES, new)
        if S.S_ISDIR(node[M]):
            raise _fail(E.EPERM, old)
        node[NLINK] += 1
        _changed(node, now)
        self._put_inode(t, ino, node)
        t.put(_INO.pack(pino) + name, _DENT.pack(ino, node[M] >> 12), db=self._dentries)
        _dir_changed(pnode, now)
        self._put_inode(t, pino, pnode)
        return _attr(ino, node)

    def _new_name_for_link(self, t, cred, path):
        # linkat() checks the new name's existence before may_linkat() and
        # may_create(), so the write-permission check comes later here.
        pino, pnode, name, last, trailing = self._parent(t, cred, path)
        if last != LAST_NORM or self._dentry(t, pino, name) is not None:
            raise _fail(E.EEXIST, path)
        if trailing:
            raise _fail(E.ENOENT, path)
        return pino, pnode, name

    @staticmethod
    def _may_link(node, cred) -> bool:
        """fs.protected_hardlinks (Linux's default): a non-owner may link only
        a regular, non-setid file it can read and write."""
        if _owner_or_root(node, cred):
            return True
        mode = node[M]
        if not S.S_ISREG(mode) or mode & S.S_ISUID or (mode & S.S_ISGID and mode & S.S_IXGRP):
            return False
        return _may(node, cred, R_OK | W_OK)

    def _victim(self, t, cred, path, pino, pnode, name):
        """The inode a removal names, after may_delete()'s permission checks."""
        found = self._dentry(t, pino, name)
        if found is None:
            raise _fail(E.ENOENT, path)
        ino = found[0]
        node = self._inode(t, ino)
        if not _may(pnode, cred, W_OK | X_OK):
            raise _fail(E.EACCES, path)
        if _sticky_denies(pnode, node, cred):
            raise _fail(E.EPERM, path)
        return ino, node

    def _unlink(self, t, now, cred, args):
        (path,) = _args(args, 1)
        pino, pnode, name, last, trailing = self._parent(t, cred, path)
        if last != LAST_NORM:
            raise _fail(E.EISDIR, path)
        if trailing:
            found = self._dentry(t, pino, name)
            if found is None:
                raise _fail(E.ENOENT, path)
            raise _fail(E.EISDIR if found[1] == KIND_DIR else E.ENOTDIR, path)
        ino, node = self._victim(t, cred, path, pino, pnode, name)
        if S.S_ISDIR(node[M]):
            raise _fail(E.EISDIR, path)
        counters = self._counters(t)
        t.delete(_INO.pack(pino) + name, db=self._dentries)
        self._drop_link(t, now, ino, node, counters)
        _dir_changed(pnode, now)
        self._put_inode(t, pino, pnode)
        self._put_counters(t, counters)
        return None

    def _rmdir(self, t, now, cred, args):
        (path,) = _args(args, 1)
        pino, pnode, name, last, _ = self._parent(t, cred, path)
        if last == LAST_DOT:
            raise _fail(E.EINVAL, path)
        if last == LAST_DOTDOT:
            raise _fail(E.ENOTEMPTY, path)
        if last == LAST_ROOT:
            raise _fail(E.EBUSY, path)
        ino, node = self._victim(t, cred, path, pino, pnode, name)
        if not S.S_ISDIR(node[M]):
            raise _fail(E.ENOTDIR, path)
        self._undelegated(t, ino)
        if not self._dir_is_empty(t, ino):
            raise _fail(E.ENOTEMPTY, path)
        counters = self._counters(t)
        t.delete(_INO.pack(pino) + name, db=self._dentries)
        self._free(t, ino, node, counters)
        pnode[NLINK] -= 1
        _dir_changed(pnode, now)
        self._put_inode(t, pino, pnode)
        self._put_counters(t, counters)
        return None

    # -- writes: rename ----------------------------------------------------

    def _rename(self, t, now, cred, args):
        src, dst, flags = _args(args, 3)
        _int(flags, 0, 3, "rename flags")
        if flags == model.RENAME_NOREPLACE | model.RENAME_EXCHANGE:
            raise _fail(E.EINVAL, "RENAME_NOREPLACE with RENAME_EXCHANGE")
        exchange = bool(flags & model.RENAME_EXCHANGE)
        op, opn, oname, olast, otrail = self._parent(t, cred, src)
        np, npn, nname, nlast, ntrail = self._parent(t, cred, dst)
        if op == np:
            npn = opn  # one record, so both updates land on it
        if olast != LAST_NORM:
            raise _fail(E.EBUSY, src)
        if nlast != LAST_NORM:
            raise _fail(E.EEXIST if flags & model.RENAME_NOREPLACE else E.EBUSY, dst)
        found = self._dentry(t, op, oname)
        if found is None:
            raise _fail(E.ENOENT, src)
        target = self._dentry(t, np, nname)
        self._rename_lookup_checks(t, src, dst, flags, found, target, otrail, ntrail, op, np)
        oino, nino = found[0], target[0] if target else None
        if oino == nino:
            return None  # both names already refer to one inode: POSIX says do nothing
        onode = self._inode(t, oino)
        nnode = self._inode(t, nino) if target else None
        for ino, node in ((oino, onode), (nino, nnode)):
            if node is not None and S.S_ISDIR(node[M]):
                self._no_delegation_below(t, ino)
        self._rename_permission_checks(t, cred, src, dst, exchange, op, opn, onode, np, npn, nino, nnode)
        if exchange:
            self._rename_exchange(t, now, op, opn, oname, oino, onode, np, npn, nname, nino, nnode)
        else:
            self._rename_move(t, now, op, opn, oname, oino, onode, np, npn, nname, nino, nnode)
        return None

    def _rename_lookup_checks(self, t, src, dst, flags, found, target, otrail, ntrail, op, np) -> None:
        """do_renameat2()'s checks between the lookups and vfs_rename()."""
        exchange = flags & model.RENAME_EXCHANGE
        if flags & model.RENAME_NOREPLACE and target is not None:
            raise _fail(E.EEXIST, dst)
        if exchange:
            if target is None:
                raise _fail(E.ENOENT, dst)
            if target[1] != KIND_DIR and ntrail:
                raise _fail(E.ENOTDIR, dst)
        if found[1] != KIND_DIR and (otrail or (not exchange and ntrail)):
            raise _fail(E.ENOTDIR, src if otrail else dst)
        trap = self._rename_trap(t, op, np)
        if trap is not None and trap == found[0]:
            raise _fail(E.EINVAL, src.decode("utf-8", "backslashreplace") + " would move into its own subtree")
        if trap is not None and target is not None and trap == target[0]:
            raise _fail(E.EINVAL if exchange else E.ENOTEMPTY, dst)

    def _ancestors(self, t, ino: int) -> list[int]:
        """ino, its parent, ..., the root."""
        chain = [ino]
        while ino != ROOT_INO:
            ino = self._inode(t, ino)[PARENT]
            chain.append(ino)
        return chain

    def _rename_trap(self, t, op: int, np: int):
        """lock_rename()'s trap: when one parent is an ancestor of the other,
        the ancestor's child on the path to the other."""
        if op == np:
            return None
        up_from_new = self._ancestors(t, np)
        if op in up_from_new:
            return up_from_new[up_from_new.index(op) - 1]
        up_from_old = self._ancestors(t, op)
        if np in up_from_old:
            return up_from_old[up_from_old.index(np) - 1]
        return None

    def _rename_permission_checks(self, t, cred, src, dst, exchange, op, opn, onode, np, npn, nino, nnode) -> None:
        """vfs_rename()'s may_delete()/may_create() and type checks."""
        is_dir = S.S_ISDIR(onode[M])
        if not _may(opn, cred, W_OK | X_OK):
            raise _fail(E.EACCES, src)
        if _sticky_denies(opn, onode, cred):
            raise _fail(E.EPERM, src)
        if nnode is None:
            if not _may(npn, cred, W_OK | X_OK):
                raise _fail(E.EACCES, dst)
        else:
            if not _may(npn, cred, W_OK | X_OK):
                raise _fail(E.EACCES, dst)
            if _sticky_denies(npn, nnode, cred):
                raise _fail(E.EPERM, dst)
            new_is_dir = S.S_ISDIR(nnode[M])
            if not exchange and is_dir and not new_is_dir:
                raise _fail(E.ENOTDIR, dst)
            if not exchange and not is_dir and new_is_dir:
                raise _fail(E.EISDIR, dst)
        if op != np:
            # Moving a directory rewrites its '..', which needs write on it.
            if is_dir and not _may(onode, cred, W_OK):
                raise _fail(E.EACCES, src)
            if exchange and S.S_ISDIR(nnode[M]) and not _may(nnode, cred, W_OK):
                raise _fail(E.EACCES, dst)
        if not exchange and nnode is not None and S.S_ISDIR(nnode[M]) and not self._dir_is_empty(t, nino):
            raise _fail(E.ENOTEMPTY, dst)

    def _rename_move(self, t, now, op, opn, oname, oino, onode, np, npn, nname, nino, nnode) -> None:
        counters = self._counters(t)
        is_dir = S.S_ISDIR(onode[M])
        if nnode is not None:
            if S.S_ISDIR(nnode[M]):
                self._free(t, nino, nnode, counters)
                npn[NLINK] -= 1
            else:
                self._drop_link(t, now, nino, nnode, counters)
        t.put(_INO.pack(np) + nname, _DENT.pack(oino, onode[M] >> 12), db=self._dentries)
        t.delete(_INO.pack(op) + oname, db=self._dentries)
        if is_dir and op != np:
            opn[NLINK] -= 1
            npn[NLINK] += 1
            onode[PARENT] = np
        _changed(onode, now)
        self._put_inode(t, oino, onode)
        self._touch_parents(t, now, op, opn, np, npn)
        self._put_counters(t, counters)

    def _rename_exchange(self, t, now, op, opn, oname, oino, onode, np, npn, nname, nino, nnode) -> None:
        t.put(_INO.pack(op) + oname, _DENT.pack(nino, nnode[M] >> 12), db=self._dentries)
        t.put(_INO.pack(np) + nname, _DENT.pack(oino, onode[M] >> 12), db=self._dentries)
        if op != np:
            if S.S_ISDIR(onode[M]):
                onode[PARENT] = np
                opn[NLINK] -= 1
                npn[NLINK] += 1
            if S.S_ISDIR(nnode[M]):
                nnode[PARENT] = op
                npn[NLINK] -= 1
                opn[NLINK] += 1
        _changed(onode, now)
        _changed(nnode, now)
        self._put_inode(t, oino, onode)
        self._put_inode(t, nino, nnode)
        self._touch_parents(t, now, op, opn, np, npn)

    def _touch_parents(self, t, now, op, opn, np, npn) -> None:
        _dir_changed(opn, now)
        self._put_inode(t, op, opn)
        if np != op:
            _dir_changed(npn, now)
            self._put_inode(t, np, npn)

    # -- writes: attributes ------------------------------------------------

    def _setattr(self, t, now, cred, args):
        ref, attrs = _args(args, 2)
        changes = self._setattr_args(attrs)
        ino, node = self._resolve(t, cred, ref, True)
        if S.S_ISDIR(node[M]):
            self._undelegated(t, ino)
        self._setattr_checks(cred, node, changes)
        if not changes:
            return _attr(ino, node)
        counters = self._counters(t) if "size" in changes else None
        if "size" in changes:
            self._truncate(t, now, ino, node, changes["size"], counters)
            self._put_counters(t, counters)
        self._setattr_apply(cred, node, changes, now)
        _changed(node, now)
        self._put_inode(t, ino, node)
        return _attr(ino, node)

    @staticmethod
    def _setattr_args(attrs) -> dict:
        if type(attrs) is not dict:
            raise _fail(E.EINVAL, "attributes must be a map")
        for key, value in attrs.items():
            if key not in _SETATTR_KEYS:
                raise _fail(E.EINVAL, f"unknown attribute {key!r}"[:80])
            if key == "mode":
                _int(value, 0, 0o177777, "mode")
            elif key in ("uid", "gid"):
                _int(value, 0, _UINT32_MAX - 1, key)
            elif key == "size":
                _int(value, _INT64_MIN, _INT64_MAX, "size")
                if value < 0:
                    raise _fail(E.EINVAL, "negative size")
                if value > limits.file_size_max_bytes:
                    raise _fail(E.EFBIG, "size")
            else:
                _time_arg(value, key)
        return attrs

    @staticmethod
    def _setattr_checks(cred, node, changes) -> None:
        """truncate(2), chown(2), chmod(2) and utimensat(2) permission rules,
        in setattr_prepare()'s order."""
        mode = node[M]
        if "size" in changes:
            if S.S_ISDIR(mode):
                raise _fail(E.EISDIR, "truncate")
            if not S.S_ISREG(mode):
                raise _fail(E.EINVAL, "truncate")
            if not _may(node, cred, W_OK):
                raise _fail(E.EACCES, "truncate")
        uid = cred[0]
        if "uid" in changes and uid != 0 and not (uid == node[UID] and changes["uid"] == node[UID]):
            raise _fail(E.EPERM, "chown")
        if "gid" in changes and uid != 0:
            gid = changes["gid"]
            if uid != node[UID] or not (gid == node[GID] or _in_group(cred, gid)):
                raise _fail(E.EPERM, "chgrp")
        if "mode" in changes:
            if not _owner_or_root(node, cred):
                raise _fail(E.EPERM, "chmod")
            if S.S_ISLNK(mode):
                raise _fail(E.ENOTSUP, "chmod of a symlink")
        times = [changes[k] for k in ("atime", "mtime") if k in changes]
        if any(v != TIME_NOW for v in times) and not _owner_or_root(node, cred):
            raise _fail(E.EPERM, "utimes")
        if times and not _owner_or_root(node, cred) and not _may(node, cred, W_OK):
            raise _fail(E.EACCES, "utimes")

    @staticmethod
    def _setattr_apply(cred, node, changes, now: int) -> None:
        mode = node[M]
        if "uid" in changes or "gid" in changes:
            node[UID] = changes.get("uid", node[UID])
            node[GID] = changes.get("gid", node[GID])
            if not S.S_ISDIR(mode):
                # chown clears set-user-ID, and set-group-ID when it means
                # "group may execute" (not mandatory locking), even for root.
                mode &= ~S.S_ISUID
                if mode & S.S_IXGRP:
                    mode &= ~S.S_ISGID
        if "mode" in changes:
            mode = (mode & _S_IFMT) | (changes["mode"] & 0o7777)
            if cred[0] != 0 and not _in_group(cred, node[GID]):
                mode &= ~S.S_ISGID
        node[M] = mode
        if "atime" in changes:
            node[ATIME] = now if changes["atime"] == TIME_NOW else changes["atime"]
        if "mtime" in changes:
            node[MTIME] = now if changes["mtime"] == TIME_NOW else changes["mtime"]

    def _truncate(self, t, now: int, ino: int, node, size: int, counters) -> None:
        """Set a regular file's size; drop blocks that start at or beyond it
        (the block straddling the new end stays: the data layer ignores its
        tail)."""
        old = node[SIZE]
        if size == old:
            return
        if size < old:
            layout = self._layout(t, ino)
            offsets = _layout_offsets(layout)
            keep = sum(1 for at in offsets if at < size)
            if keep < len(layout):
                self._free_blocks(t, layout[keep:])
                self._put_layout(t, ino, layout[:keep])
        counters[BYTES] += size - old
        node[SIZE] = size
        node[MTIME] = now

    def _put_layout(self, t, ino: int, layout) -> None:
        key = _INO.pack(ino)
        if layout:
            t.put(key, model.pack(layout), db=self._layouts)
        else:
            t.delete(key, db=self._layouts)

    # -- writes: xattrs ----------------------------------------------------------

    def _setxattr(self, t, now, cred, args):
        ref, name, value, flags = _args(args, 4)
        prefix = _xattr_namespace(name)
        _bytes(value, "xattr value")
        if len(value) > limits.xattr_value_size_max_bytes:
            raise _fail(E.E2BIG, "xattr value")
        _int(flags, 0, model.XATTR_CREATE | model.XATTR_REPLACE, "xattr flags")
        ino, node = self._resolve(t, cred, ref, True)
        _xattr_permission(node, cred, prefix, True)
        key = _INO.pack(ino) + name
        exists = t.get(key, db=self._xattrs) is not None
        if exists and flags & model.XATTR_CREATE:
            raise _fail(E.EEXIST, name)
        if not exists and flags & model.XATTR_REPLACE:
            raise _fail(E.ENODATA, name)
        if not exists and self._xattr_count(t, ino) >= limits.xattr_count_max:
            raise _fail(E.ENOSPC, "too many xattrs")
        t.put(key, value, db=self._xattrs)
        _changed(node, now)
        self._put_inode(t, ino, node)
        return None

    def _removexattr(self, t, now, cred, args):
        ref, name = _args(args, 2)
        prefix = _xattr_namespace(name)
        ino, node = self._resolve(t, cred, ref, True)
        _xattr_permission(node, cred, prefix, True)
        if not t.delete(_INO.pack(ino) + name, db=self._xattrs):
            raise _fail(E.ENODATA, name)
        _changed(node, now)
        self._put_inode(t, ino, node)
        return None

    def _xattr_names(self, t, ino: int) -> list[bytes]:
        prefix = _INO.pack(ino)
        names = []
        with t.cursor(db=self._xattrs) as cur:
            if cur.set_range(prefix):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    names.append(key[8:])
        return names

    def _xattr_count(self, t, ino: int) -> int:
        return len(self._xattr_names(t, ino))

    # -- writes: leases and the write commit -----------------------------------

    def _open_lease(self, t, now, cred, args):
        ref, holder = _args(args, 2)
        _holder_arg(holder)
        ino, node = self._resolve(t, cred, ref, True)
        if S.S_ISDIR(node[M]):
            raise _fail(E.EISDIR, "lease")
        if not S.S_ISREG(node[M]):
            raise _fail(E.EINVAL, "lease on a non-regular file")
        if not _may(node, cred, W_OK):
            raise _fail(E.EACCES, "lease")
        key = _INO.pack(ino)
        v = t.get(key, db=self._leases)
        if v is not None:
            lease_id, owner = model.unpack(v)
            if owner == holder:
                self._holder_renew(t, holder, now, 0)
                return [ino, lease_id]
            if self._holder_expiry(t, owner) > now:
                raise _fail(E.EBUSY, "file is leased by another writer")
            self._holder_forget(t, owner)  # the old holder's lease lapsed
        counters = self._counters(t)
        lease_id = counters[NEXT_LEASE]
        counters[NEXT_LEASE] += 1
        self._put_counters(t, counters)
        t.put(key, model.pack([lease_id, holder]), db=self._leases)
        self._holder_renew(t, holder, now, 1)
        return [ino, lease_id]

    def _holder_expiry(self, t, holder: bytes) -> int:
        return model.unpack(t.get(holder, db=self._holders))[0]

    def _holder_renew(self, t, holder: bytes, now: int, added: int) -> int:
        v = t.get(holder, db=self._holders)
        count = (0 if v is None else model.unpack(v)[1]) + added
        t.put(holder, model.pack([now + limits.lease_ttl_s * 1_000_000_000, count]), db=self._holders)
        return count

    def _renew_leases(self, t, now, cred, args):
        (holder,) = _args(args, 1)
        _bytes(holder, "holder")
        if t.get(holder, db=self._holders) is None:
            return 0  # holds nothing: keep no record for it
        # Leases nobody took over while the holder was late are live again.
        return self._holder_renew(t, holder, now, 0)

    def _held_lease(self, t, now: int, ino: int, lease_id: int) -> bytes:
        """The lease's key when ``lease_id`` is the live lease on ``ino``."""
        key = _INO.pack(ino)
        v = t.get(key, db=self._leases)
        if v is None or model.unpack(v)[0] != lease_id:
            raise _fail(E.ESTALE, "lease not held")
        if self._holder_expiry(t, model.unpack(v)[1]) <= now:
            raise _fail(E.ESTALE, "lease expired")
        return key

    def _release_lease(self, t, now, cred, args):
        ino, lease_id = _args(args, 2)
        _int(ino, 1, _UINT64_MAX, "ino")
        _int(lease_id, 1, _UINT64_MAX, "lease id")
        key = _INO.pack(ino)
        v = t.get(key, db=self._leases)
        if v is None or model.unpack(v)[0] != lease_id:
            raise _fail(E.ESTALE, "lease not held")
        self._drop_lease(t, key)
        return None

    def _commit_write(self, t, now, cred, args):
        ino, lease_id, layout, size, mtime = _args(args, 5)
        _int(ino, 1, _UINT64_MAX, "ino")
        _int(lease_id, 1, _UINT64_MAX, "lease id")
        _int(size, 0, limits.file_size_max_bytes, "size")
        _time_arg(mtime, "mtime")
        layout = _validate_layout(layout, size)
        self._held_lease(t, now, ino, lease_id)
        node = self._inode(t, ino)
        old = self._layout(t, ino)
        # A block the file keeps keeps the replica list recorded here: the
        # writer's copy dates from its open, and the leader may have
        # re-replicated or trimmed the block (UPDATE_REPLICAS, NODE_LOST)
        # since. Only blocks new to the file take the writer's list.
        # (Version 1 entries wrote the writer's lists back.)
        recorded = {b[0]: b[3] for b in old}
        if self.entry_version >= 2:
            for block in layout:
                nodes = recorded.get(block[0])
                if nodes is not None:
                    block[3] = list(nodes)
        old_ids = recorded.keys()
        new_ids = {b[0] for b in layout}
        for bid in new_ids - old_ids:
            if t.get(bid, db=self._blocks) is not None or t.get(bid, db=self._freed) is not None:
                raise _fail(E.EINVAL, "block id already used")
        self._free_blocks(t, [b for b in old if b[0] not in new_ids])
        key = _INO.pack(ino)
        for bid in new_ids - old_ids:
            t.put(bid, key, db=self._blocks)
        self._put_layout(t, ino, layout)
        counters = self._counters(t)
        counters[BYTES] += size - node[SIZE]
        self._put_counters(t, counters)
        node[SIZE] = size
        node[MTIME] = now if mtime == TIME_NOW else mtime
        _changed(node, now)
        self._put_inode(t, ino, node)
        return _attr(ino, node)

    # -- writes: create delegations -------------------------------------------

    def _deleg_args(self, t, dino, holder):
        _int(dino, 1, _UINT64_MAX, "directory")
        _holder_arg(holder)
        node = self._inode(t, dino)
        if node is None:
            raise _fail(E.ENOENT, f"inode {dino}")
        if not S.S_ISDIR(node[M]):
            raise _fail(E.ENOTDIR, f"inode {dino}")
        return node

    def _held_delegation(self, t, dino: int, holder: bytes) -> list:
        record = self._delegation(t, dino)
        if record is None or record[D_HOLDER] != holder:
            raise _fail(E.ESTALE, "delegation not held")
        return record

    def _deleg_grant(self, t, now, cred, args):
        ref, holder, inodes = _args(args, 3)
        dino, node = self._resolve(t, cred, ref, True)
        _holder_arg(holder)
        if not S.S_ISDIR(node[M]):
            raise _fail(E.ENOTDIR, f"inode {dino}")
        _int(inodes, 1, limits.delegation_inodes_max, "inode count")
        if not _may(node, cred, R_OK | W_OK | X_OK):
            raise _fail(E.EACCES, "delegation")
        record = self._delegation(t, dino)
        if record is not None and now < record[D_EXPIRY] and (record[D_HOLDER] != holder or record[D_RECALLED]):
            raise _fail(E.EBUSY, "directory is delegated to another client" if record[D_HOLDER] != holder
                        else "delegation recalled: release it first")
        names = self._listing(t, dino)
        counters = self._counters(t)
        first = counters[NEXT_INO]
        counters[NEXT_INO] = first + inodes
        self._put_counters(t, counters)
        self._put_delegation(t, dino, [holder, _deleg_expiry(now), first, first + inodes, first - 1, False])
        return [_attr(dino, node), first, first + inodes, names]

    def _listing(self, t, dino: int) -> list[bytes]:
        """Every name in ``dino``; E2BIG past the delegation listing limits."""
        prefix = _INO.pack(dino)
        names, size = [], 0
        with t.cursor(db=self._dentries) as cur:
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    size += len(key) - 8
                    if len(names) >= limits.delegation_listing_entries_max or size > limits.delegation_listing_bytes_max:
                        raise _fail(E.E2BIG, "directory too large to delegate")
                    names.append(key[8:])
        return names

    def _deleg_renew(self, t, now, cred, args):
        dino, holder = _args(args, 2)
        self._deleg_args(t, dino, holder)
        record = self._held_delegation(t, dino, holder)
        if record[D_RECALLED]:
            return True    # not extended: the holder commits what it has and releases
        record[D_EXPIRY] = _deleg_expiry(now)
        self._put_delegation(t, dino, record)
        return False

    def _deleg_release(self, t, now, cred, args):
        dino, holder = _args(args, 2)
        _int(dino, 1, _UINT64_MAX, "directory")
        _bytes(holder, "holder")
        self._held_delegation(t, dino, holder)
        t.delete(_deleg_key(dino), db=self._meta)
        return None

    def _deleg_create(self, t, now, cred, args):
        dino, holder, creds, items = _args(args, 4)
        pnode = self._deleg_args(t, dino, holder)
        record = self._held_delegation(t, dino, holder)
        if type(creds) not in (list, tuple) or type(items) not in (list, tuple):
            raise _fail(E.EINVAL, "bad creates")
        if len(items) > limits.delegation_creates_max or len(creds) > len(items):
            raise _fail(E.EINVAL, "too many creates")
        creds = [_cred(c) for c in creds]
        counters = self._counters(t)
        results = []
        for item in items:
            try:
                results.append([0, self._deleg_create_one(t, now, dino, pnode, record, creds, item, counters)])
            except _Fail as failure:
                results.append([failure.err, None])
        recalled = record[D_RECALLED]
        if not recalled:    # a batch renews the delegation, as DELEG_RENEW would
            record[D_EXPIRY] = _deleg_expiry(now)
        self._put_delegation(t, dino, record)
        _dir_changed(pnode, now)
        self._put_inode(t, dino, pnode)
        self._put_counters(t, counters)
        return [recalled, results]

    def _deleg_create_one(self, t, now, dino, pnode, record, creds, item, counters) -> Attr:
        """One delegated create, checked as CREATE checks it, with the
        holder's inode number (above the last it used, in its range) and
        the times it answered its caller with."""
        if type(item) not in (list, tuple) or len(item) != 5:
            raise _fail(E.EINVAL, "bad create")
        name, ino, mode, index, time_ns = item
        _new_entry_name(name)
        _int(ino, record[D_LAST] + 1, record[D_END] - 1, "delegated inode number")
        _int(mode, 0, 0o7777, "mode")
        _int(index, 0, len(creds) - 1, "cred index")
        _int(time_ns, 0, _INT64_MAX, "time")
        cred = creds[index]
        if t.get(_INO.pack(dino) + name, db=self._dentries) is not None:
            raise _fail(E.EEXIST, name)
        if not _may(pnode, cred, W_OK | X_OK):
            raise _fail(E.EACCES, name)
        if counters[FILES] + counters[DIRS] >= limits.inodes_max:
            raise _fail(E.ENOSPC, "no free inodes")
        record[D_LAST] = ino
        gid = new_file_gid(pnode[M], pnode[GID], cred)
        node = [S.S_IFREG | mode, 1, cred[0], gid, 0, time_ns, time_ns, time_ns, 1, 0, b""]
        counters[FILES] += 1
        self._put_inode(t, ino, node)
        t.put(_INO.pack(dino) + name, _DENT.pack(ino, KIND_REG), db=self._dentries)
        return _attr(ino, node)

    def _deleg_recall(self, t, now, cred, args):
        code, op_args = _args(args, 2)
        if not _is_int(code) or code in _DELEG_OPS or (code not in self._writes and code not in self._reads):
            raise _fail(E.EINVAL, "nothing to recall for that operation")
        if type(op_args) not in (list, tuple):
            raise _fail(E.EINVAL, "bad operation arguments")
        dino = self._delegation_in_the_way(t, now, cred, code, op_args)
        if dino == 0:
            return 0
        record = self._delegation(t, dino)
        if now >= record[D_EXPIRY]:
            t.delete(_deleg_key(dino), db=self._meta)   # lapsed: its holder is gone or cut off
        elif not record[D_RECALLED]:
            record[D_RECALLED] = True
            self._put_delegation(t, dino, record)
        return dino

    def _delegation_in_the_way(self, t, now, cred, code, op_args) -> int:
        """Run the operation on a scratch transaction (always undone) and
        return the directory whose delegation refused it, or 0."""
        scratch = self._env.begin(write=True, parent=t)
        try:
            if code in self._reads:
                self._reads[code](scratch, cred, op_args)
            else:
                self._writes[code](scratch, now, cred, op_args)
        except _Delegated as refused:
            return refused.dir_ino
        except _Fail:
            pass
        finally:
            scratch.abort()
        return 0

    # -- writes: transactions -------------------------------------------------

    def _noop(self, t, now, cred, args):
        _args(args, 0)
        return None

    def _txn(self, t, now, cred, args):
        conditions, ops = _args(args, 2)
        self._txn_shape(conditions, ops)
        for index, (kind, ref, value) in enumerate(conditions):
            try:
                holds = self._condition_holds(t, cred, kind, ref, value)
            except _Delegated:
                raise    # as it is: DELEG_RECALL needs to know which directory
            except _Fail as failure:
                raise _Fail(failure.err, f"txn condition {index}: {failure.msg}") from None
            if not holds:
                raise _Fail(E.ECANCELED, f"txn condition {index} ({kind}) failed")
        results = []
        for index, (code, op_args) in enumerate(ops):
            try:
                if code in self._reads:
                    results.append(self._reads[code](t, cred, op_args))
                else:
                    results.append(self._writes[code](t, now, cred, op_args))
            except _Delegated:
                raise
            except _Fail as failure:
                raise _Fail(failure.err, f"txn op {index}: {failure.msg}") from None
        return results

    def _txn_shape(self, conditions, ops) -> None:
        if type(conditions) not in (list, tuple) or len(conditions) > limits.txn_conditions_max:
            raise _fail(E.EINVAL, "bad txn conditions")
        if type(ops) not in (list, tuple) or len(ops) > limits.txn_ops_max:
            raise _fail(E.EINVAL, "bad txn operations")
        for cond in conditions:
            if type(cond) not in (list, tuple) or len(cond) != 3:
                raise _fail(E.EINVAL, "bad txn condition")
            if cond[0] not in (model.COND_EXISTS, model.COND_ABSENT, model.COND_VERSION):
                raise _fail(E.EINVAL, "unknown txn condition")
            if cond[0] == model.COND_VERSION:
                _int(cond[2], 0, _UINT64_MAX, "version")
        for op in ops:
            if type(op) not in (list, tuple) or len(op) != 2 or type(op[1]) not in (list, tuple):
                raise _fail(E.EINVAL, "bad txn operation")
            code = op[0]
            if not _is_int(code) or code == Op.TXN or code in _DELEG_OPS or (code not in self._writes and code not in self._reads):
                raise _fail(E.EINVAL, f"operation {code!r} not allowed in a txn"[:80])

    def _condition_holds(self, t, cred, kind: str, ref, value) -> bool:
        """exists/version look at the entry itself (no final symlink follow);
        absent holds when resolution finds nothing (ENOENT or ENOTDIR). Other
        resolution errors (EACCES, ELOOP, EINVAL) are reported as such."""
        try:
            ino, node = self._resolve(t, cred, ref, False)
        except _Fail as failure:
            if failure.err in (E.ENOENT, E.ENOTDIR):
                return kind == model.COND_ABSENT
            raise
        if kind == model.COND_VERSION:
            return node[VERSION] == value
        return kind == model.COND_EXISTS

    # -- reads -----------------------------------------------------------------

    def _getattr(self, t, cred, args):
        ref, follow = _args(args, 2)
        _bool(follow, "follow")
        ino, node = self._resolve(t, cred, ref, follow)
        return _attr(ino, node)

    def _lookup(self, t, cred, args):
        pino, name = _args(args, 2)
        _int(pino, 1, _UINT64_MAX, "parent")
        _entry_name(name)
        pnode = self._inode(t, pino)
        if pnode is None:
            raise _fail(E.ENOENT, f"inode {pino}")
        if not S.S_ISDIR(pnode[M]):
            raise _fail(E.ENOTDIR, f"inode {pino}")
        if not _may(pnode, cred, X_OK):
            raise _fail(E.EACCES, name)
        if name == b".":
            return _attr(pino, pnode)
        if name == b"..":
            return _attr(pnode[PARENT], self._inode(t, pnode[PARENT]))
        found = self._dentry(t, pino, name)
        if found is None:
            raise _fail(E.ENOENT, name)
        return _attr(found[0], self._inode(t, found[0]))

    def _readdir(self, t, cred, args):
        ref, after, limit = _args(args, 3)
        if after is not None:
            _bytes(after, "after")
        _int(limit, 1, _UINT64_MAX, "limit")
        limit = min(limit, limits.readdir_page_entries_max)
        ino, node = self._resolve(t, cred, ref, True)
        if not S.S_ISDIR(node[M]):
            raise _fail(E.ENOTDIR, "readdir")
        if not _may(node, cred, R_OK):
            raise _fail(E.EACCES, "readdir")
        self._undelegated(t, ino)
        return self._scan_entries(t, ino, after, limit)

    def _scan_entries(self, t, ino: int, after, limit: int):
        """One page of entries in name order, strictly after ``after``: a
        cursor scan, so an entry present for a whole listing appears once."""
        prefix = _INO.pack(ino)
        entries = []
        with t.cursor(db=self._dentries) as cur:
            if not cur.set_range(prefix + (after or b"")):
                return [entries, True]
            for key, value in cur.iternext():
                if not key.startswith(prefix):
                    return [entries, True]
                name = key[8:]
                if name == after:
                    continue
                if len(entries) == limit:
                    return [entries, False]
                cino, kind = _DENT.unpack(value)
                entries.append([name, cino, kind << 12])
        return [entries, True]

    def _readlink(self, t, cred, args):
        (ref,) = _args(args, 1)
        ino, node = self._resolve(t, cred, ref, False)
        if not S.S_ISLNK(node[M]):
            raise _fail(E.EINVAL, "not a symlink")
        return node[TARGET]

    def _getxattr(self, t, cred, args):
        ref, name = _args(args, 2)
        prefix = _xattr_namespace(name)
        ino, node = self._resolve(t, cred, ref, True)
        _xattr_permission(node, cred, prefix, False)
        value = t.get(_INO.pack(ino) + name, db=self._xattrs)
        if value is None:
            raise _fail(E.ENODATA, name)
        return value

    def _listxattr(self, t, cred, args):
        (ref,) = _args(args, 1)
        ino, node = self._resolve(t, cred, ref, True)
        names = self._xattr_names(t, ino)
        if cred[0] != 0:
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    def _statfs(self, t, cred, args):
        _args(args, 0)
        c = self._counters(t)
        return {"files": c[FILES], "dirs": c[DIRS], "bytes": c[BYTES],
                "inodes_free": limits.inodes_max - c[FILES] - c[DIRS]}

    def _access(self, t, cred, args):
        ref, mask = _args(args, 2)
        _int(mask, 0, R_OK | W_OK | X_OK, "access mask")
        ino, node = self._resolve(t, cred, ref, True)
        if mask and not _may(node, cred, mask):
            raise _fail(E.EACCES, "access")
        return None

    def _get_layout(self, t, cred, args):
        """A regular file's attributes, layout and replication factor, read
        in one transaction so the three agree (a reader caches them for its
        handle). Needs read permission, as open(O_RDONLY) does."""
        (ref,) = _args(args, 1)
        ino, node = self._resolve(t, cred, ref, True)
        if S.S_ISDIR(node[M]):
            raise _fail(E.EISDIR, "layout")
        if not S.S_ISREG(node[M]):
            raise _fail(E.EINVAL, "layout of a non-regular file")
        if not _may(node, cred, R_OK):
            raise _fail(E.EACCES, "layout")
        key = _INO.pack(ino)
        return [_attr(ino, node), self._layout(t, ino), self._replication(t, key)]

    # -- block bookkeeping (the storage-node monitor and fsck; root only) -------
    #
    # Replica lists in layouts are the leader's record of where a block's
    # copies live; nodes' block reports are the live truth, and the monitor
    # (metadata/replication.py) commits the difference through these ops.
    # Changing a replica list changes no file content, so it bumps neither
    # the inode's version nor its ctime.

    def _update_replicas(self, t, now, cred, args):
        (updates,) = _args(args, 1)
        _root_only(cred)
        if type(updates) not in (list, tuple) or len(updates) > limits.replica_updates_max:
            raise _fail(E.EINVAL, "bad replica updates")
        checked = [_replica_update(u) for u in updates]
        layouts: dict[int, list] = {}
        dirty: set[int] = set()
        changed = 0
        for bid, add, drop in checked:
            v = t.get(bid, db=self._blocks)
            if v is None:
                continue  # the block left its layout meanwhile: nothing to record
            ino = _INO.unpack(v)[0]
            layout = layouts.get(ino)
            if layout is None:
                layout = layouts[ino] = self._layout(t, ino)
            if _edit_replicas(layout, bid, add, drop):
                dirty.add(ino)
                changed += 1
        for ino in sorted(dirty):
            self._put_layout(t, ino, layouts[ino])
        return changed

    def _node_lost(self, t, now, cred, args):
        node_id, after, limit = _args(args, 3)
        _root_only(cred)
        _node_id(node_id)
        _int(after, 0, _UINT64_MAX, "after")
        _int(limit, 1, _UINT64_MAX, "limit")
        limit = min(limit, limits.node_lost_scan_files_max)
        last, changed, scanned = after, 0, 0
        with t.cursor(db=self._layouts) as cur:
            found = cur.set_range(_INO.pack(after + 1)) if after < _UINT64_MAX else False
            rewrites = []
            while found and scanned < limit:
                last = _INO.unpack(cur.key())[0]
                layout = model.unpack(cur.value())
                hits = sum(_edit_block_replicas(b, (), (node_id,)) for b in layout)
                if hits:
                    rewrites.append((last, layout))
                    changed += hits
                scanned += 1
                found = cur.next()
        for ino, layout in rewrites:
            self._put_layout(t, ino, layout)
        return [last, not found, changed]

    def _clear_freed(self, t, now, cred, args):
        (bids,) = _args(args, 1)
        _root_only(cred)
        if type(bids) not in (list, tuple) or len(bids) > limits.clear_freed_max:
            raise _fail(E.EINVAL, "bad block id list")
        for bid in bids:
            _block_id(bid)
        return sum(1 for bid in bids if t.delete(bid, db=self._freed))

    def _fsck_scan(self, t, cred, args):
        after, limit = _args(args, 2)
        _root_only(cred)
        _int(after, 0, _UINT64_MAX, "after")
        _int(limit, 1, _UINT64_MAX, "limit")
        limit = min(limit, limits.fsck_scan_files_max)
        files, blocks = [], 0
        with t.cursor(db=self._layouts) as cur:
            found = cur.set_range(_INO.pack(after + 1)) if after < _UINT64_MAX else False
            while found and len(files) < limit and blocks < limits.fsck_scan_blocks_max:
                key = cur.key()
                layout = model.unpack(cur.value())
                blocks += len(layout)
                files.append([_INO.unpack(key)[0], self._replication(t, key),
                              [[b[0], b[1], b[3]] for b in layout]])
                found = cur.next()
        return [files, not found]

    def _replication(self, t, key: bytes):
        """The file's replication xattr as an int, None when absent or malformed."""
        raw = t.get(key + model.REPLICATION_XATTR, db=self._xattrs)
        if raw is None or not raw.isdigit() or len(raw) > 3:
            return None
        value = int(raw)
        return value if 1 <= value <= limits.block_replicas_max else None

    def _block_owners(self, t, cred, args):
        (bids,) = _args(args, 1)
        _root_only(cred)
        if type(bids) not in (list, tuple) or len(bids) > limits.block_owners_max:
            raise _fail(E.EINVAL, "bad block id list")
        owners = []
        for bid in bids:
            v = t.get(_block_id(bid), db=self._blocks)
            if v is not None:
                owners.append(_INO.unpack(v)[0])
            else:
                owners.append(model.BLOCK_FREED if t.get(bid, db=self._freed) is not None else None)
        return owners

    def _freed_scan(self, t, cred, args):
        after, limit = _args(args, 2)
        _root_only(cred)
        if after is not None:
            _block_id(after)
        _int(limit, 1, _UINT64_MAX, "limit")
        limit = min(limit, limits.freed_scan_max)
        out = []
        with t.cursor(db=self._freed) as cur:
            found = cur.set_range(after) if after is not None else cur.first()
            if found and cur.key() == after:
                found = cur.next()
            while found and len(out) < limit:
                out.append([cur.key(), model.unpack(cur.value())])
                found = cur.next()
        return [out, not found]

    # -- invariants (tests and simulations) -----------------------------------

    def check_invariants(self, txn) -> None:
        """Assert every namespace invariant with a full scan (tests only:
        it holds the whole namespace in memory)."""
        inodes = {}
        for key, value in txn.cursor(db=self._inodes):
            node = list(_INODE.unpack_from(value))
            node.append(value[_INODE_SIZE:])
            inodes[_INO.unpack(key)[0]] = node
        assert ROOT_INO in inodes, "no root"
        assert S.S_ISDIR(inodes[ROOT_INO][M]) and inodes[ROOT_INO][PARENT] == ROOT_INO, "bad root"
        children = self._check_dentries(txn, inodes)
        self._check_links(inodes, children)
        self._check_reachable(inodes, children)
        self._check_side_tables(txn, inodes)

    def _check_dentries(self, txn, inodes) -> dict:
        children: dict[int, list] = {}
        for key, value in txn.cursor(db=self._dentries):
            pino, name = _INO.unpack(key[:8])[0], key[8:]
            cino, kind = _DENT.unpack(value)
            assert pino in inodes and S.S_ISDIR(inodes[pino][M]), f"entry {name!r} in non-directory {pino}"
            assert cino in inodes, f"entry {name!r} names missing inode {cino}"
            assert inodes[cino][M] >> 12 == kind, f"entry {name!r} has the wrong kind"
            assert name and b"/" not in name and b"\0" not in name and name not in (b".", b"..")
            assert len(name) <= limits.name_length_max_bytes
            assert cino != ROOT_INO, "the root is named by an entry"
            children.setdefault(pino, []).append(cino)
        return children

    @staticmethod
    def _check_links(inodes, children) -> None:
        names = {}
        for kids in children.values():
            for cino in kids:
                names[cino] = names.get(cino, 0) + 1
        for ino, node in inodes.items():
            if S.S_ISDIR(node[M]):
                subdirs = sum(1 for c in children.get(ino, ()) if S.S_ISDIR(inodes[c][M]))
                assert node[NLINK] == 2 + subdirs, f"dir {ino} nlink {node[NLINK]} != 2 + {subdirs}"
                if ino != ROOT_INO:
                    assert names.get(ino) == 1, f"dir {ino} has {names.get(ino)} names"
                    assert ino in children.get(node[PARENT], ()), f"dir {ino} parent pointer wrong"
            else:
                assert node[NLINK] == names.get(ino, 0) > 0, f"inode {ino} nlink {node[NLINK]} != {names.get(ino)}"
            if S.S_ISLNK(node[M]):
                assert node[SIZE] == len(node[TARGET]) > 0

    @staticmethod
    def _check_reachable(inodes, children) -> None:
        seen, todo = {ROOT_INO}, [ROOT_INO]
        while todo:
            for cino in children.get(todo.pop(), ()):
                if cino not in seen:
                    seen.add(cino)
                    if S.S_ISDIR(inodes[cino][M]):
                        todo.append(cino)
        unreachable = set(inodes) - seen
        assert not unreachable, f"unreachable inodes (orphans or a cycle): {sorted(unreachable)[:10]}"

    def _check_side_tables(self, txn, inodes) -> None:
        c = self._counters(txn)
        dirs = sum(1 for n in inodes.values() if S.S_ISDIR(n[M]))
        assert c[DIRS] == dirs and c[FILES] == len(inodes) - dirs, "file/dir counters drifted"
        assert c[BYTES] == sum(n[SIZE] for n in inodes.values() if S.S_ISREG(n[M])), "byte counter drifted"
        assert c[NEXT_INO] > max(inodes), "inode counter behind"
        owners = {}
        for key, value in txn.cursor(db=self._layouts):
            ino = _INO.unpack(key)[0]
            assert ino in inodes and S.S_ISREG(inodes[ino][M]), f"layout of non-file {ino}"
            layout = model.unpack(value)
            assert layout and _layout_offsets(layout)[-1] < inodes[ino][SIZE], f"layout of {ino} beyond its size"
            for block in layout:
                assert block[0] not in owners, "block in two layout positions"
                owners[block[0]] = ino
        indexed = {k: _INO.unpack(v)[0] for k, v in txn.cursor(db=self._blocks)}
        assert indexed == owners, "block index disagrees with layouts"
        for bid, _ in txn.cursor(db=self._freed):
            assert bid not in owners, "a freed block is still in a layout"
        for key, _ in txn.cursor(db=self._xattrs):
            assert _INO.unpack(key[:8])[0] in inodes, "xattr of a missing inode"
        self._check_leases(txn, inodes)
        self._check_delegations(txn, inodes)

    def _check_delegations(self, txn, inodes) -> None:
        next_ino = self._counters(txn)[NEXT_INO]
        for dino in self._delegated_dirs(txn):
            assert dino in inodes and S.S_ISDIR(inodes[dino][M]), f"delegation on non-directory {dino}"
            record = self._delegation(txn, dino)
            assert record[D_FIRST] - 1 <= record[D_LAST] < record[D_END] <= next_ino, f"bad delegation {record}"

    def _check_leases(self, txn, inodes) -> None:
        counts = {}
        for key, value in txn.cursor(db=self._leases):
            ino = _INO.unpack(key)[0]
            assert ino in inodes and S.S_ISREG(inodes[ino][M]), f"lease on non-file {ino}"
            holder = model.unpack(value)[1]
            counts[holder] = counts.get(holder, 0) + 1
        recorded = {k: model.unpack(v)[1] for k, v in txn.cursor(db=self._holders)}
        assert recorded == counts, f"holder lease counts {recorded} != {counts}"
