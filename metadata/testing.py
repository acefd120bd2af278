"""Test helpers for the namespace state machine: a harness that applies one
operation per LMDB transaction with a manual clock and checks the invariants
after every write, a tree dump for comparing with a real filesystem, and the
micro-benchmark quoted in ARCHITECTURE.md.

Run the benchmark with:
    .venv/bin/python -c "from cistern.metadata.testing import bench; bench()"
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import time

from cistern.metadata import model
from cistern.metadata.model import ROOT_CRED, Op
from cistern.metadata import store as store_mod
from cistern.metadata.state import DIRECT_WRITES, Namespace
from cistern.metadata.store import Store

test_map_size_bytes = 1 << 30


class NamespaceHarness:
    """A Namespace over a small sync=False store in ``path``.

    ``write``/``read`` return the raw ``(errno, message, value)``;
    ``ok`` asserts success and returns the value; ``err`` asserts failure
    and returns the errno. Every write is followed by ``check_invariants``
    and by a check that the last-resort EIO path was not taken.
    """

    def __init__(self, path: str, *, cred=ROOT_CRED, time_ns: int = 1_000_000_000):
        self.store = Store(str(path), sync=False, map_size_bytes=test_map_size_bytes)
        self.ns = Namespace(self.store)
        self.cred = list(cred[:2]) + [list(cred[2])]
        self.now = time_ns
        with self.store.env.begin(write=True) as txn:
            self.ns.bootstrap(txn)

    def close(self) -> None:
        self.store.close()

    def tick(self, ns: int = 1) -> int:
        self.now += ns
        return self.now

    def write(self, code, *args, cred=None, time_ns=None):
        cred = self.cred if cred is None else list(cred)
        result = self._apply(code, [cred, *args], time_ns)
        assert "internal error" not in result[1], result
        self.check()
        return result

    def write_raw(self, code, args, time_ns=None):
        """Apply with arguments exactly as given (malformed-input tests)."""
        result = self._apply(code, args, time_ns)
        assert "internal error" not in result[1], result
        self.check()
        return result

    def _contents(self, txn) -> dict:
        """Every key and value of every database, as ``txn`` sees them."""
        return {(name, bytes(k)): bytes(v) for name in store_mod.ALL_DBS
                for k, v in txn.cursor(db=self.store.db(name))}

    def _apply(self, code, args, time_ns):
        """One write in its own transaction, as the replica applies it: the
        ``DIRECT_WRITES`` through ``apply_direct`` (no nested transaction),
        checking that a refused one left the transaction unchanged."""
        now = self.now if time_ns is None else time_ns
        if not (isinstance(code, int) and code in DIRECT_WRITES):
            with self.store.env.begin(write=True) as txn:
                return self.ns.apply(txn, now, code, args)
        txn = self.store.env.begin(write=True)
        try:
            before = self._contents(txn)
            result = self.ns.apply_direct(txn, now, code, args)
        except store_mod.Undo:
            txn.abort()
            with self.store.env.begin(write=True) as again:
                return self.ns.apply(again, now, code, args)
        except BaseException:
            txn.abort()
            raise
        if result[0] and self._contents(txn) != before:
            txn.abort()
            raise AssertionError(f"refused operation {code} wrote: {result}")
        txn.commit()
        return result

    def read(self, code, *args, cred=None):
        cred = self.cred if cred is None else list(cred)
        with self.store.env.begin() as txn:
            result = self.ns.read(txn, code, [cred, *args])
        assert "internal error" not in result[1], result
        return result

    def ok(self, code, *args, cred=None, time_ns=None):
        result = self.read(code, *args, cred=cred) if code in model.READ_OPS else self.write(
            code, *args, cred=cred, time_ns=time_ns)
        assert result[0] == 0, result
        return result[2]

    def err(self, code, *args, cred=None, time_ns=None) -> int:
        result = self.read(code, *args, cred=cred) if code in model.READ_OPS else self.write(
            code, *args, cred=cred, time_ns=time_ns)
        assert result[0] != 0 and result[2] is None, result
        return result[0]

    def stat(self, path: bytes, follow: bool = False) -> model.Attr:
        return self.ok(Op.GETATTR, path, follow)

    def check(self) -> None:
        with self.store.env.begin() as txn:
            self.ns.check_invariants(txn)

    def tree(self) -> dict:
        """Every path below the root -> (kind, size of a regular file or
        None, nlink, permission bits, symlink target or None)."""
        out = {}
        todo = [(b"", 1)]
        while todo:
            prefix, ino = todo.pop()
            after = None
            while True:
                entries, done = self.ok(Op.READDIR, ino, after, 1000)
                for name, child, kind in entries:
                    path = prefix + b"/" + name
                    attr = self.ok(Op.GETATTR, child, False)
                    target = self.ok(Op.READLINK, child) if kind == model.KIND_LNK else None
                    size = attr.size if kind == model.KIND_REG else None
                    out[path] = (kind, size, attr.nlink, stat.S_IMODE(attr.mode), target)
                    if kind == model.KIND_DIR:
                        todo.append((path, child))
                if done:
                    break
                after = entries[-1][0]
        return out


def bench(files: int = 100_000, batch: int = 1000) -> dict:
    """Creates, getattrs, readdir and unlinks of ``files`` files in one
    directory, ``batch`` operations per write transaction (as the replica
    batches a Raft entry), on a sync=False store in /dev/shm."""
    path = tempfile.mkdtemp(dir="/dev/shm")
    st = Store(path, sync=False)
    try:
        return _bench(Namespace(st), st, files, batch)
    finally:
        st.close()
        shutil.rmtree(path)


def _bench(ns: Namespace, st: Store, files: int, batch: int) -> dict:
    cred = [0, 0, []]
    with st.env.begin(write=True) as txn:
        ns.bootstrap(txn)
        ns.apply(txn, 1, Op.MKDIR, [cred, b"/bench", 0o755])
    paths = [b"/bench/f%07d" % i for i in range(files)]
    rates = {}

    def timed(name, write, code, make_args):
        start = time.perf_counter()
        for first in range(0, files, batch):
            with st.env.begin(write=write) as txn:
                for path in paths[first:first + batch]:
                    result = (ns.apply(txn, 2, code, make_args(path)) if write
                              else ns.read(txn, code, make_args(path)))
                    assert result[0] == 0, result
        rates[name] = files / (time.perf_counter() - start)

    timed("create_per_s", True, Op.CREATE, lambda p: [cred, p, 0o644, True])
    timed("getattr_per_s", False, Op.GETATTR, lambda p: [cred, p, True])
    timed("getattr_nonroot_per_s", False, Op.GETATTR, lambda p: [[1000, 1000, []], p, True])
    timed("unlink_per_s", True, Op.UNLINK, lambda p: [cred, p])
    for name, rate in rates.items():
        print(f"{name:24} {rate:12,.0f}  ({1e6 / rate:.1f} us/op)")
    return rates
