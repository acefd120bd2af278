"""An in-process metadata backend for tests of the client layer.

``InProcessMetaClient`` has ``MetaClient``'s interface (``submit``, ``call``,
``acall``, ``status``, ``statistics``, ``close``) and runs a real
``metadata.state.Namespace`` over a temporary LMDB ``Store``: no Raft, no
gRPC, but the same state machine, the same argument encoding and the same
decoded values (every value goes through msgpack as it does on the wire).

Like the real leader it has one applier thread that drains whatever is queued
and applies it as one batch inside one LMDB write transaction, so futures are
genuinely pending while the caller keeps submitting, and ``statistics()``
shows how many operations rode each batch. Operations apply in submission
order; reads see every earlier write (linearizable).

``connect_in_process(...)`` returns a ``Client`` over a fresh backend.

For tests of the client's users over real processes: ``storage_cluster``
(a ``blockstore.testing.StorageCluster``) and ``wait_nodes_live``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future

from cistern.core.errors import CisternError
from cistern.core.ports import free_port  # noqa: F401  (re-exported for fuse.testing)
from cistern.metadata import model
from cistern.metadata.client import recall_and_resend, refused
from cistern.metadata.state import Namespace
from cistern.metadata.store import Store

__all__ = ["InProcessMetaClient", "connect_in_process"]

_STOP = object()


class InProcessMetaClient:
    """A single-replica, in-process stand-in for ``MetaClient``."""

    def __init__(self, path: str | None = None, *, clock_ns=time.time_ns, timeout_s: float = 30.0):
        self._own_dir = path is None
        self.path = path or tempfile.mkdtemp(prefix="cistern-client-test-")
        self.timeout_s = timeout_s
        self._clock_ns = clock_ns
        self.store = Store(os.path.join(self.path, "meta"), sync=False)
        self.namespace = Namespace(self.store)
        with self.store.env.begin(write=True) as txn:
            self.namespace.bootstrap(txn)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stats_lock = threading.Lock()
        self._stats = {"ops": 0, "batches": 0, "batch_ops_max": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="inprocess-meta", daemon=True)
        self._thread.start()

    # -- MetaClient's interface --------------------------------------------

    def submit(self, code: int, args: bytes, *, stale: bool = False,
               timeout_s: float | None = None) -> Future:
        future: Future = Future()
        if self._closed:
            future.set_exception(CisternError(errno.ESHUTDOWN, "MetaClient is closed"))
            return future
        self._queue.put((int(code), args, future, time.monotonic() + self.timeout_s, 0))
        return future

    def call(self, code: int, args: bytes, *, stale: bool = False, timeout_s: float | None = None):
        return self.submit(code, args, stale=stale).result(timeout_s or self.timeout_s)

    async def acall(self, code: int, args: bytes, *, stale: bool = False,
                    timeout_s: float | None = None):
        return await asyncio.wrap_future(self.submit(code, args, stale=stale))

    def status(self, address: str | None = None, timeout_s: float = 2.0) -> dict:
        return {"role": "leader", "address": "in-process", "leader_rpc": "in-process"}

    def statistics(self) -> dict:
        """ops applied, batches (LMDB write transactions), the largest batch."""
        with self._stats_lock:
            return dict(self._stats)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        self.store.close()
        if self._own_dir:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the applier ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            ops = [item for item in batch if item is not _STOP]
            if ops:
                self._apply(ops)
            if stop:
                return

    def _apply(self, ops) -> None:
        results = []
        with self.store.env.begin(write=True) as txn:
            time_ns = self._clock_ns()
            for code, args, future, _, _ in ops:
                try:
                    args_list = model.unpack(args)
                    if code in model.READ_OPS:
                        result = self.namespace.read(txn, code, args_list)
                    else:
                        result = self.namespace.apply(txn, time_ns, code, args_list)
                except Exception as e:   # a state machine bug: surface it, do not hang
                    result = (errno.EIO, f"state machine raised {e!r}", None)
                results.append(result)
        with self._stats_lock:
            self._stats["ops"] += len(ops)
            self._stats["batches"] += 1
            self._stats["batch_ops_max"] = max(self._stats["batch_ops_max"], len(ops))
        for op, (err, message, value) in zip(ops, results):
            future = op[2]
            if refused(op[0], err):
                self._refused(*op)
            elif err:
                future.set_exception(CisternError(err, message))
            else:
                # Through msgpack, as the wire does: tuples become lists.
                future.set_result(model.unpack(model.pack(value)) if value is not None else None)

    def _refused(self, code, args, future, deadline, refusals) -> None:
        # As MetaClient does, with its helper.
        again = (code, args, future, deadline, refusals + 1)
        error = recall_and_resend(self.submit, code, args, deadline, refusals, lambda: self._resend(again))
        if error is not None:
            future.set_exception(error)

    def _resend(self, op) -> None:
        if self._closed:
            op[2].set_exception(CisternError(errno.ESHUTDOWN, "MetaClient is closed"))
        else:
            self._queue.put(op)


def connect_in_process(path: str | None = None, **client_options):
    """A ``Client`` over a fresh ``InProcessMetaClient`` (closed with it)."""
    from .api import Client

    return Client(InProcessMetaClient(path), **client_options)


def storage_cluster(tmp, *, block_size: int, env: dict | None = None, node_log_level: str = "WARNING"):
    """A real-process ``cistern.blockstore.testing.StorageCluster`` (3 metad,
    nodes started on demand), for tests of the client's users (the mount),
    which may import the client but not the block store."""
    from cistern.blockstore.testing import StorageCluster

    return StorageCluster(tmp, block_size=block_size, env=env, node_log_level=node_log_level)


def wait_nodes_live(client, node_ids, timeout_s: float = 30.0) -> None:
    """Block until the leader has a full block report from exactly
    ``node_ids`` (so uploads can be placed on them); TimeoutError if not."""
    deadline = time.monotonic() + timeout_s
    want = set(node_ids)
    while True:
        try:
            reply = client.data.nodes.nodes()
            if {n.node_id for n in reply.nodes if n.full_report} == want:
                return
        except (CisternError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"storage nodes {sorted(want)} not live after {timeout_s:.0f} s")
        time.sleep(0.1)


