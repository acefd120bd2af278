"""``--via raft``: the NNThroughputBenchmark idea. The same mdtest workload
goes straight into the metadata service's machinery, with no RPC and no
client library, to separate what Raft costs from what RPC and FUSE cost:

* ``raft:state`` — the state machine alone: one ``Namespace`` over a
  temporary LMDB ``Store`` (``sync=False``, as the replica opens it), in
  this process. Writes are applied in batches, one LMDB write transaction
  per batch, as the replica applies one Raft entry; a batch holds
  ``clients x inflight`` operations (what group commit would gather under
  that load, at most ``limits.batch_ops_max``). Reads run in one read
  transaction per batch. An operation's latency is its batch's time.
* ``raft:group`` — a 3-replica ``Replica`` group, one process per replica
  on loopback (durable journal, as in production); the leader's process
  drives ``submit_write`` / ``submit_read`` with ``clients x inflight``
  operations outstanding (one exactly-once session). Latency is completion
  minus submit.

Open-close is OPEN_LEASE then RELEASE_LEASE (as in ``--via api``); readdir
is READDIR paged to the end. The clients' operations are interleaved
round-robin, as concurrent clients would arrive. The self-check compares the
namespace's file and directory counts (STATFS) with what the phase should
leave.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import time
from concurrent.futures import Future

from cistern.core.ports import free_port
from cistern.metadata import limits, model
from cistern.metadata.model import Op

from . import report, runner, workloads
from .workloads import CREATE, LISTDIR, MKDIR, OPEN_CLOSE, RENAME, RMDIR, STAT, UNLINK, Shape

CRED = list(model.ROOT_CRED)
HOLDER = b"cistern-bench"
group_members_n = 3
leader_wait_s = 60.0
group_timeout_s = 3600.0


def _wire(rel: str) -> bytes:
    return os.fsencode("/" + rel)


def _interleaved(shape: Shape, phase: str, renamed: bool) -> list[list[tuple]]:
    """All clients' operations of each step, round-robin across clients."""
    per_client = [workloads.steps(shape, phase, k, renamed=renamed) for k in range(shape.clients)]
    out = []
    for i in range(len(per_client[0])):
        columns = [steps[i] for steps in per_client]
        out.append([op for row in itertools.zip_longest(*columns) for op in row if op is not None])
    return out


def _plan_with_renamed(plan):
    renamed = False
    for phase, timed in plan:
        yield phase, timed, renamed
        renamed = renamed or phase == "rename"


def _describe(err: int, msg: str) -> str:
    return f"[Errno {err}] {os.strerror(err)}: {msg}" if msg else f"[Errno {err}] {os.strerror(err)}"


# -- the state machine alone --------------------------------------------------------------


class _Machine:
    def __init__(self, path: str):
        from cistern.metadata.state import Namespace
        from cistern.metadata.store import Store

        self.store = Store(path, sync=False, map_size_bytes=4 << 30)
        self.ns = Namespace(self.store)
        with self.store.env.begin(write=True) as txn:
            self.ns.bootstrap(txn)

    def write_batch(self, ops: list[tuple[int, bytes]]) -> list[tuple]:
        now = time.time_ns()
        with self.store.env.begin(write=True) as txn:
            return [self.ns.apply(txn, now, code, model.unpack(args)) for code, args in ops]

    def read(self, code: int, args: list):
        with self.store.env.begin() as txn:
            return self.ns.read(txn, code, args)

    def counts(self) -> dict:
        _, _, value = self.read(Op.STATFS, [CRED])
        return {"dirs": int(value["dirs"]), "files": int(value["files"])}

    def close(self):
        self.store.close()


def _run_batch_sm(m: _Machine, batch: list[tuple]) -> tuple[int, str | None]:
    """Apply one batch of workload ops; (errors, first error)."""
    errors, first = 0, None
    writes, reads = [], []
    for op in batch:
        kind = op[0]
        if kind in (STAT, LISTDIR):
            reads.append(op)
        elif kind == OPEN_CLOSE:
            writes.append((Op.OPEN_LEASE, model.encode_args(CRED, _wire(op[1]), HOLDER)))
        elif kind == RENAME:
            writes.append((Op.RENAME, model.encode_args(CRED, _wire(op[1]), _wire(op[2]), 0)))
        else:
            code, extra = {MKDIR: (Op.MKDIR, (0o755,)), CREATE: (Op.CREATE, (0o644, True)),
                           UNLINK: (Op.UNLINK, ()), RMDIR: (Op.RMDIR, ())}[kind]
            writes.append((code, model.encode_args(CRED, _wire(op[1]), *extra)))
    if writes:
        results = m.write_batch(writes)
        releases = []
        for (code, _), (err, msg, value) in zip(writes, results):
            if err:
                errors += 1
                first = first or _describe(err, msg)
            elif code == Op.OPEN_LEASE:
                releases.append((Op.RELEASE_LEASE, model.encode_args(CRED, value[0], value[1])))
        if releases:   # the close: the next entry, as a client would send it after the open's reply
            for err, msg, _ in m.write_batch(releases):
                if err:
                    errors += 1
                    first = first or _describe(err, msg)
    if reads:
        with m.store.env.begin() as txn:
            for op in reads:
                if op[0] == STAT:
                    err, msg, _ = m.ns.read(txn, Op.GETATTR, [CRED, _wire(op[1]), True])
                else:
                    after = None
                    while True:
                        err, msg, value = m.ns.read(txn, Op.READDIR, [CRED, _wire(op[1]), after,
                                                                      limits.readdir_page_entries_max])
                        if err or value[1] or not value[0]:
                            break
                        after = value[0][-1][0]
                if err:
                    errors += 1
                    first = first or _describe(err, msg)
    return errors, first


def run_state_machine(shape: Shape, inflight: int, plan, *, progress=None, label="raft:state") -> dict:
    progress = progress or runner.Progress(False)
    tmp = tempfile.mkdtemp(prefix="cistern-bench-sm-")
    m = _Machine(os.path.join(tmp, "state"))
    batch_n = max(1, min(limits.batch_ops_max, shape.clients * inflight))
    records, interrupted = [], False
    try:
        for rel in [workloads.run_root(shape), *workloads.tops(shape)]:
            m.write_batch([(Op.MKDIR, model.encode_args(CRED, _wire(rel), 0o755))])
        base = m.counts()
        for phase, timed, renamed in _plan_with_renamed(plan):
            expected = workloads.expected_ops(shape, phase)
            part = {"ops": 0, "errors": 0, "first_error": None, "hist": {}, "sum_ns": 0, "max_ns": 0}
            lats: list[int] = []
            started = time.monotonic()
            part["start_ns"] = time.monotonic_ns()
            try:
                for step in _interleaved(shape, phase, renamed):
                    for i in range(0, len(step), batch_n):
                        batch = step[i:i + batch_n]
                        t0 = time.perf_counter_ns()
                        e, f = _run_batch_sm(m, batch)
                        took = time.perf_counter_ns() - t0
                        lats.extend([took] * len(batch))
                        part["ops"] += len(batch)
                        part["errors"] += e
                        part["first_error"] = part["first_error"] or f
                        progress.update(f"{label} {phase}", part["ops"], expected, started)
            except KeyboardInterrupt:
                interrupted = True
            part["end_ns"] = time.monotonic_ns()
            progress.done()
            part.update(hist=report.histogram(lats), sum_ns=sum(lats), max_ns=max(lats, default=0))
            records.append(report.phase_record(phase, [part], expected,
                                               None if interrupted else _verify(m.counts(), base, shape, phase, renamed),
                                               timed))
            if interrupted:
                break
    finally:
        progress.done()
        m.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"phases": records, "interrupted": interrupted}


def _verify(counts: dict, base: dict, shape: Shape, phase: str, renamed: bool) -> dict:
    found = {"dirs": counts["dirs"] - base["dirs"], "files": counts["files"] - base["files"]}
    want = workloads.expected_tree(shape, phase, renamed or phase == "rename")
    return {**found, "expected_dirs": want["dirs"], "expected_files": want["files"], "ok": found == want}


# -- a 3-replica group, no RPC ----------------------------------------------------------------


class _Session:
    """Submits through the leader's Replica with one exactly-once session."""

    def __init__(self, replica):
        self.replica = replica
        self.client_id = os.urandom(16)
        self.seq = itertools.count(1)
        self.pending: collections.deque = collections.deque()

    def write(self, code: int, *args) -> Future:
        while self.pending and self.pending[0][1].done():
            self.pending.popleft()
        seq = next(self.seq)
        acked_below = self.pending[0][0] if self.pending else seq
        future = self.replica.submit_write(self.client_id, seq, acked_below, int(code),
                                           model.encode_args(CRED, *args))
        self.pending.append((seq, future))
        return future

    def read(self, code: int, *args) -> Future:
        return self.replica.submit_read(int(code), model.encode_args(CRED, *args))

    def open_close(self, path: bytes) -> Future:
        return runner.open_then_release(self.write(Op.OPEN_LEASE, path, HOLDER),
                                        lambda ino, lease_id: self.write(Op.RELEASE_LEASE, ino, lease_id))

    def readdir(self, path: bytes) -> Future:
        out: Future = Future()
        out.set_running_or_notify_cancel()

        def page(f):
            error = f.exception()
            if error is not None:
                out.set_exception(error)
                return
            entries, done = f.result()
            if done or not entries:
                out.set_result(None)
            else:
                self.read(Op.READDIR, path, entries[-1][0], limits.readdir_page_entries_max).add_done_callback(page)

        self.read(Op.READDIR, path, None, limits.readdir_page_entries_max).add_done_callback(page)
        return out

    def calls(self, step):
        out = []
        for op in step:
            kind, p = op[0], _wire(op[1])
            if kind == MKDIR:
                out.append((self.write, (Op.MKDIR, p, 0o755)))
            elif kind == CREATE:
                out.append((self.write, (Op.CREATE, p, 0o644, True)))
            elif kind == STAT:
                out.append((self.read, (Op.GETATTR, p, True)))
            elif kind == OPEN_CLOSE:
                out.append((self.open_close, (p,)))
            elif kind == LISTDIR:
                out.append((self.readdir, (p,)))
            elif kind == RENAME:
                out.append((self.write, (Op.RENAME, p, _wire(op[2]), 0)))
            elif kind == UNLINK:
                out.append((self.write, (Op.UNLINK, p)))
            else:
                out.append((self.write, (Op.RMDIR, p)))
        return out

    def counts(self) -> dict:
        value = self.read(Op.STATFS).result(30)
        return {"dirs": int(value["dirs"]), "files": int(value["files"])}


def _drive_group(replica, spec, results, stop, prog) -> None:
    shape = Shape(**spec["shape"])
    window = max(1, spec["window"])
    s = _Session(replica)
    results.put({"claimed": True})
    for rel in [workloads.run_root(shape), *workloads.tops(shape)]:
        s.write(Op.MKDIR, _wire(rel), 0o755).result(30)
    base = s.counts()
    for phase, timed, renamed in _plan_with_renamed(spec["plan"]):
        if stop.value:
            break
        prog[0] = 0
        ops = errors = 0
        first = None
        lats: list[int] = []
        start = time.monotonic_ns()
        for step in _interleaved(shape, phase, renamed):
            n, e, f, lat = runner._window_loop(s.calls(step), window, stop, prog, 0, ops)
            ops += n
            errors += e
            first = first or f
            lats.extend(lat)
            if stop.value:
                break
        end = time.monotonic_ns()
        verify = None if stop.value else _verify(s.counts(), base, shape, phase, renamed)
        results.put({"phase": phase, "timed": timed, "ops": ops, "errors": errors, "first_error": first,
                     "start_ns": start, "end_ns": end, "hist": report.histogram(lats), "sum_ns": sum(lats),
                     "max_ns": max(lats, default=0), "verify": verify, "stopped": bool(stop.value)})
    results.put({"done": True})


def _member(i, addrs, workdir, spec, claimed, results, stop, prog, finished):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from cistern.metadata.replica import Replica
    from cistern.metadata.state import Namespace
    from cistern.metadata.store import Store

    data_dir = os.path.join(workdir, f"r{i}")
    store = Store(os.path.join(data_dir, "state"), sync=False, map_size_bytes=4 << 30)
    peers = {f"m{j}": a for j, a in enumerate(addrs) if j != i}
    replica = Replica(f"m{i}", addrs[i], peers, data_dir, {"namespace": Namespace(store)})
    try:
        replica.start()
        replica.wait_leader(leader_wait_s)
        deadline = time.monotonic() + leader_wait_s
        while not finished.is_set() and time.monotonic() < deadline:
            if replica.is_leader():
                with claimed.get_lock():
                    mine = not claimed.value
                    claimed.value = 1
                if mine:
                    try:
                        _drive_group(replica, spec, results, stop, prog)
                    except BaseException as e:
                        results.put({"fatal": f"raft:group driver failed: {e!r}"})
                break
            time.sleep(0.05)
        finished.wait(group_timeout_s)
    except BaseException as e:
        results.put({"fatal": f"replica m{i} failed: {e!r}"})
    finally:
        replica.stop()
        store.close()


def run_replica_group(shape: Shape, inflight: int, plan, *, progress=None, label="raft:group") -> dict:
    progress = progress or runner.Progress(False)
    ctx = multiprocessing.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="cistern-bench-raft-")
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(group_members_n)]
    claimed, stop, prog = ctx.Value("i", 0), ctx.RawValue("b", 0), ctx.RawArray("q", 1)
    results, finished = ctx.Queue(), ctx.Event()
    spec = {"shape": {f: getattr(shape, f) for f in shape.__dataclass_fields__},
            "plan": list(plan), "window": shape.clients * inflight}
    procs = [ctx.Process(target=_member, daemon=True, name=f"bench-replica-{i}",
                         args=(i, addrs, workdir, spec, claimed, results, stop, prog, finished))
             for i in range(group_members_n)]
    records, interrupted = [], False
    restore = runner.stop_on_signals(stop)
    try:
        for p in procs:
            p.start()
        current = plan[0][0] if plan else ""
        claimed_seen = False
        started = time.monotonic()
        deadline = started + group_timeout_s
        while True:
            try:
                msg = results.get(timeout=runner.poll_interval_s)
            except queue.Empty:
                # After Ctrl-C (the stop flag) the driver reports the phase it was in, then "done".
                if time.monotonic() > deadline or all(p.exitcode is not None for p in procs):
                    raise RuntimeError("raft:group: the replicas stopped answering")
                if not claimed_seen and time.monotonic() - started > 2 * leader_wait_s:
                    raise RuntimeError("raft:group: no replica became leader and took the workload")
                progress.update(f"{label} {current}", prog[0], workloads.expected_ops(shape, current), started)
                continue
            if "fatal" in msg:
                raise RuntimeError(msg["fatal"])
            if "done" in msg:
                break
            if "claimed" in msg:
                claimed_seen = True
                continue
            progress.done()
            records.append(report.phase_record(msg["phase"], [msg], workloads.expected_ops(shape, msg["phase"]),
                                               msg["verify"], msg["timed"]))
            interrupted = interrupted or msg["stopped"]
            names = [ph for ph, _ in plan]
            i = names.index(msg["phase"]) + 1
            current = names[i] if i < len(names) else current
            started = time.monotonic()
    finally:
        restore()
        interrupted = interrupted or bool(stop.value)
        progress.done()
        finished.set()
        for p in procs:
            if p.pid is not None:
                p.join(30)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        shutil.rmtree(workdir, ignore_errors=True)
    return {"phases": records, "interrupted": interrupted}

