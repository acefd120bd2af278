"""Running a workload against a target with client *processes*.

``run_target(target, shape, inflight, plan, ...)`` starts one process per
client (the ``spawn`` start method: never fork a process that may hold gRPC
channels), lets them connect, then for every phase releases them together
on a barrier and collects each client's part (op count, errors, latency
histogram, start and end times on CLOCK_MONOTONIC, which every process
shares). Between phases the parent checks the namespace (``verify``).

Drivers, one per client process:

* ``path:DIR`` / ``mount:DIR``: the os calls themselves (``os.mkdir``,
  ``os.open(O_CREAT|O_EXCL)+os.close``, ``os.stat``, ``os.open(O_WRONLY)+
  os.close``, ``os.listdir``, ``os.rename``, ``os.unlink``, ``os.rmdir``).
  With ``--inflight K > 1``, K threads per client each take every K-th
  operation (the GIL is released inside the system calls).
* ``api``: the client library's futures face (``client.futures``), K
  operations outstanding per client from one thread; a latency is the time
  from submit to completion. open-close is OPEN_LEASE then RELEASE_LEASE
  (the metadata half of opening a file for writing and closing it: two Raft
  commits), because ``Client.open`` needs the data path, which is not built.

Errors are counted per operation (never raised out of a phase): a phase
reports how many failed and the first failure's message.

Ctrl-C: the clients ignore SIGINT; the parent sets a shared stop flag, the
clients end the current phase early and report what they did, and the
parent returns a partial result marked ``interrupted``.
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time

from . import report, workloads
from .workloads import CREATE, LISTDIR, MKDIR, OPEN_CLOSE, RENAME, RMDIR, STAT, UNLINK, Shape

start_timeout_s = 300.0          # spawning, importing and connecting N clients on a busy machine
phase_timeout_s = 3600.0         # one phase, before the parent gives up on a silent client
poll_interval_s = 0.2            # progress refresh and liveness checks
progress_every_ops = 256         # how often a client publishes its count and checks the stop flag
paired_chunk_ops = 512           # --baseline-loop: operations per turn of the harness and of the bare loop


class Interrupted(Exception):
    """Raised inside a driver when the stop flag was seen."""


# -- targets ---------------------------------------------------------------------


def parse_target(spec: str) -> tuple[str, str | None]:
    """``"api"``, ``"path:DIR"``, ``"mount:DIR"``, ``"raft"``, ``"raft:state"``,
    ``"raft:group"`` -> (kind, argument). Raises ValueError."""
    kind, _, arg = spec.partition(":")
    if kind == "api" and not arg:
        return "api", None
    if kind in ("path", "mount") and arg:
        return kind, os.path.abspath(arg)
    if kind == "raft" and arg in ("", "state", "group"):
        return "raft", arg or None
    raise ValueError(f"bad target {spec!r}: use api, path:DIR, mount:DIR, raft, raft:state or raft:group")


def check_directory(kind: str, path: str) -> None:
    """path: needs a directory; mount: needs a mount point (the Cistern
    mount, or any filesystem mounted there). Raises OSError."""
    import errno

    if not os.path.isdir(path):
        raise OSError(errno.ENOTDIR if os.path.exists(path) else errno.ENOENT,
                      "not a directory", path)
    if kind == "mount" and not os.path.ismount(path):
        raise OSError(errno.EINVAL, "not a mount point (use path: for a plain directory)", path)


# -- progress --------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr; silent unless stderr is a TTY."""

    width = 28

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._shown = False

    def update(self, label: str, done: int, total: int, started: float) -> None:
        if not self.enabled:
            return
        frac = min(1.0, done / total) if total else 1.0
        filled = int(frac * self.width)
        rate = done / max(1e-9, time.monotonic() - started)
        self.stream.write(f"\r{label[:34]:<34} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{frac * 100:5.1f}% {done}/{total} {rate:,.0f} ops/s\x1b[K")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False


# -- the per-phase loops (shared by every driver) -----------------------------------


def _sync_loop(calls, stop, prog, slot, base_done):
    """One operation at a time: [(fn, args), ...] -> (done, errors, first, lat).
    One clock read per operation: an operation's latency is the time from
    the previous one's end to its own end (the loop's own few tens of ns
    included), so timing costs the harness as little as possible."""
    pc = time.perf_counter_ns
    stamps = [pc()]
    append = stamps.append
    errors = 0
    first = None
    done = 0
    n = len(calls)
    fn, items, single = _bare_prepare(calls)
    if not single or any(f is not fn for f, _ in calls):
        fn, items, single = None, calls, False
    for chunk_start in range(0, n, progress_every_ops):
        chunk = items[chunk_start:chunk_start + progress_every_ops]
        if single:
            # The common case (one os function, one path each) calls it the
            # way the bare reference loop does, so the two compare fairly.
            for path in chunk:
                try:
                    fn(path)
                except OSError as e:
                    errors += 1
                    if first is None:
                        first = str(e)
                append(pc())
        else:
            for f, args in chunk:
                try:
                    f(*args)
                except OSError as e:
                    errors += 1
                    if first is None:
                        first = str(e)
                append(pc())
        done = min(n, chunk_start + progress_every_ops)
        prog[slot] = base_done + done
        if stop.value:
            break
    lat = [b - a for a, b in zip(stamps, stamps[1:])]
    return done, errors, first, lat


def _threaded_loop(calls, k, stop, prog, slot, base_done):
    """k threads (no more than there are operations), each taking every
    k-th operation."""
    k = max(1, min(k, len(calls)))
    outs = [None] * k

    def run(i):
        outs[i] = _sync_loop(calls[i::k], stop, _Null(), 0, 0)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat: list[int] = []
    for o in outs:
        lat.extend(o[3])
    first = next((o[2] for o in outs if o[2]), None)
    prog[slot] = base_done + sum(o[0] for o in outs)
    return sum(o[0] for o in outs), sum(o[1] for o in outs), first, lat


class _Null:
    def __setitem__(self, key, value):
        pass


def _window_loop(calls, k, stop, prog, slot, base_done):
    """k operations outstanding through future-returning calls; a latency is
    completion minus submit."""
    slots = threading.Semaphore(k)
    lock = threading.Lock()
    state = {"errors": 0, "first": None}
    lat: list[int] = []
    pc = time.perf_counter_ns

    def finished(t0, future):
        lat.append(pc() - t0)
        error = future.exception()
        if error is not None:
            with lock:
                state["errors"] += 1
                if state["first"] is None:
                    state["first"] = str(error)
        slots.release()

    done = 0
    for fn, args in calls:
        slots.acquire()
        t0 = pc()
        try:
            future = fn(*args)
        except (OSError, ValueError, TypeError) as e:   # refused before it was sent
            lat.append(pc() - t0)
            with lock:
                state["errors"] += 1
                state["first"] = state["first"] or str(e)
            slots.release()
        else:
            future.add_done_callback(functools.partial(finished, t0))
        done += 1
        if not done % progress_every_ops:
            prog[slot] = base_done + done
            if stop.value:
                break
    for _ in range(k):      # drain: every submitted operation has completed
        slots.acquire()
    prog[slot] = base_done + done
    return done, state["errors"], state["first"], lat


# -- drivers ---------------------------------------------------------------------------


def _create_file(path):
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))


def _open_close(path):
    os.close(os.open(path, os.O_WRONLY))


class PathDriver:
    """os calls on a POSIX directory (a tmpfs, ext4, or a Cistern mount)."""

    def __init__(self, base: str):
        self.base = base

    def calls(self, step):
        j = os.path.join
        b = self.base
        table = {MKDIR: os.mkdir, CREATE: _create_file, STAT: os.stat, OPEN_CLOSE: _open_close,
                 LISTDIR: os.listdir, UNLINK: os.unlink, RMDIR: os.rmdir}
        return [(os.rename, (j(b, op[1]), j(b, op[2]))) if op[0] == RENAME else (table[op[0]], (j(b, op[1]),))
                for op in step]

    def run(self, calls, inflight, stop, prog, slot, base_done):
        if inflight <= 1:
            return _sync_loop(calls, stop, prog, slot, base_done)
        return _threaded_loop(calls, inflight, stop, prog, slot, base_done)

    def close(self):
        pass


class ApiDriver:
    """The client library's futures face, K operations outstanding."""

    def __init__(self, cluster: str, holder: bytes):
        from cistern.client import connect

        self.client = connect(cluster, uid=0, gid=0, groups=[])
        self.futures = self.client.futures
        self.holder = holder
        self.client.stat("/")           # connected before the first barrier

    def _open_close(self, path: str):
        """OPEN_LEASE then RELEASE_LEASE, as one future."""
        from cistern.metadata.model import Op, ROOT_CRED, encode_args

        meta = self.client.meta
        return open_then_release(
            meta.submit(Op.OPEN_LEASE, encode_args(ROOT_CRED, os.fsencode(path), self.holder)),
            lambda ino, lease_id: meta.submit(Op.RELEASE_LEASE, encode_args(ROOT_CRED, ino, lease_id)))

    def calls(self, step):
        f = self.futures
        table = {MKDIR: f.mkdir, STAT: f.stat, OPEN_CLOSE: self._open_close, LISTDIR: f.listdir,
                 UNLINK: f.unlink, RMDIR: f.rmdir}
        out = []
        for op in step:
            if op[0] == RENAME:
                out.append((f.rename, ("/" + op[1], "/" + op[2])))
            elif op[0] == CREATE:
                out.append((f.create, ("/" + op[1], 0o644, True)))
            else:
                out.append((table[op[0]], ("/" + op[1],)))
        return out

    def run(self, calls, inflight, stop, prog, slot, base_done):
        return _window_loop(calls, max(1, inflight), stop, prog, slot, base_done)

    def close(self):
        self.client.close()


def open_then_release(opening, release):
    """One future for the open-close step: ``opening`` is the future of an
    OPEN_LEASE's ``(ino, lease_id)``; ``release(ino, lease_id)`` submits the
    RELEASE_LEASE and returns its future. Either's failure fails it."""
    from concurrent.futures import Future

    out: Future = Future()
    out.set_running_or_notify_cancel()

    def released(f):
        error = f.exception()
        out.set_exception(error) if error is not None else out.set_result(None)

    def opened(f):
        error = f.exception()
        if error is not None:
            out.set_exception(error)
            return
        release(*f.result()).add_done_callback(released)

    opening.add_done_callback(opened)
    return out


def make_driver(spec: dict):
    if spec["kind"] in ("path", "mount"):
        return PathDriver(spec["base"])
    return ApiDriver(spec["cluster"], f"bench-{spec['shape']['run_id']}-{spec['client']}".encode())


# -- the client process --------------------------------------------------------------


def _client_main(spec, barrier, step_barrier, stop, prog, results):
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when to stop
    k = spec["client"]
    try:
        driver = make_driver(spec)
    except BaseException as e:
        results.put({"client": k, "fatal": f"client {k} could not start: {e!r}"})
        return
    results.put({"client": k, "ready": True})
    # With --baseline-loop, the harness on one tree and the bare loop on
    # another take turns every ``paired_chunk_ops`` operations in the same
    # process, so both see the same moments of a shared, noisy machine.
    halves = [("harness", Shape(**spec["shape"]))]
    if spec["paired"]:
        halves.append(("bare", Shape(**spec["bare_shape"])))
    try:
        for index, (phase, renamed) in enumerate(spec["plan"]):
            barrier.wait()
            if len(halves) == 1:
                results.put({"client": k, "which": "harness",
                             **_run_phase(driver, spec, halves[0][1], phase, renamed, False,
                                          step_barrier, stop, prog, k)})
            else:
                harness, bare = _run_paired(driver, spec, halves[0][1], halves[1][1], phase, renamed, index,
                                            step_barrier, stop, prog, k)
                results.put({"client": k, "which": "harness", **harness})
                results.put({"client": k, "which": "bare", **bare})
            if stop.value:
                break
    except threading.BrokenBarrierError:
        pass
    finally:
        driver.close()


def _step_wait(step_barrier) -> bool:
    """Meet the other clients between steps; False once the parent has
    broken the barrier (stopping)."""
    try:
        step_barrier.wait()
        return True
    except threading.BrokenBarrierError:
        return False


def _run_phase(driver, spec, shape, phase, renamed, bare, step_barrier, stop, prog, k) -> dict:
    prog[k] = 0
    steps = [driver.calls(step) for step in workloads.steps(shape, phase, k, renamed=renamed)]
    if bare:
        steps = [_bare_prepare(calls) for calls in steps]
    ops = errors = 0
    first = None
    lats: list[int] = []
    start = time.monotonic_ns()
    for i, calls in enumerate(steps):
        if i and shape.shared_dir and not _step_wait(step_barrier):
            break                     # a level needs its parents, made by every client
        if stop.value:
            break
        if bare:
            n, e, f, lat = _bare_loop(*calls) + ([],)
        else:
            n, e, f, lat = driver.run(calls, spec["inflight"], stop, prog, k, ops)
        ops += n
        errors += e
        first = first or f
        lats.extend(lat)
    end = time.monotonic_ns()
    prog[k] = ops
    return {"phase": phase, "ops": ops, "errors": errors, "first_error": first,
            "start_ns": start, "end_ns": end, "hist": report.histogram(lats),
            "sum_ns": sum(lats), "max_ns": max(lats, default=0), "stopped": bool(stop.value)}


def _run_paired(driver, spec, shape, bare_shape, phase, renamed, index, step_barrier, stop, prog, k):
    """The harness and the bare loop in turns of ``paired_chunk_ops``
    operations (which goes first alternates); each side's ``busy_ns`` is the
    time spent in its own turns."""
    sides = [{"phase": phase, "ops": 0, "errors": 0, "first_error": None, "lats": [], "busy_ns": 0}
             for _ in range(2)]
    h_steps = [driver.calls(step) for step in workloads.steps(shape, phase, k, renamed=renamed)]
    b_steps = [_bare_prepare(driver.calls(step)) for step in workloads.steps(bare_shape, phase, k, renamed=renamed)]
    prog[k] = 0
    clock = time.monotonic_ns
    start = clock()
    turn = index % 2
    for i, (calls, (fn, items, single)) in enumerate(zip(h_steps, b_steps)):
        if i and shape.shared_dir and not _step_wait(step_barrier):
            break
        for c in range(0, len(calls), paired_chunk_ops):
            turn ^= 1
            for side in ((0, 1) if turn else (1, 0)):
                t0 = clock()
                if side == 0:
                    n, e, f, lat = driver.run(calls[c:c + paired_chunk_ops], spec["inflight"], stop, prog, k,
                                              sides[0]["ops"])
                    sides[0]["lats"].extend(lat)
                else:
                    n, e, f = _bare_loop(fn, items[c:c + paired_chunk_ops], single)
                sides[side]["busy_ns"] += clock() - t0
                sides[side]["ops"] += n
                sides[side]["errors"] += e
                sides[side]["first_error"] = sides[side]["first_error"] or f
            if stop.value:
                break
        if stop.value:
            break
    end = clock()
    out = []
    for side in sides:
        lats = side.pop("lats")
        out.append({**side, "start_ns": start, "end_ns": end, "hist": report.histogram(lats),
                    "sum_ns": sum(lats), "max_ns": max(lats, default=0), "stopped": bool(stop.value)})
    return out


def _bare_prepare(calls) -> tuple:
    """(function, [path, ...] or [args, ...], single-argument?): a step's
    calls all share one function."""
    if not calls:
        return None, [], True
    single = all(len(args) == 1 for _, args in calls)
    return calls[0][0], [args[0] if single else args for _, args in calls], single


def _bare_loop(fn, items, single) -> tuple:
    """The reference: the same os calls in the plainest loop, nothing
    measured per operation. An error ends the step; it is counted and the
    step's operations all count as tried."""
    try:
        if single:
            for path in items:
                fn(path)
        else:
            for args in items:
                fn(*args)
    except OSError as e:
        return len(items), 1, str(e)
    return len(items), 0, None


def stop_on_signals(stop):
    """Until the returned function is called, SIGINT and SIGTERM only set
    ``stop`` (a shared flag the clients and loops poll). An exception
    raised at a random point could leave a cross-process barrier or lock
    half-held; a flag cannot. Only in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        stop.value = 1

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for sig, h in old.items():
            signal.signal(sig, h)
    return restore


# -- the parent ---------------------------------------------------------------------------


class Tree:
    """The parent's view of the target, for set-up, checks and tear-down."""

    def __init__(self, kind: str, base: str | None, cluster: str | None):
        self.kind = kind
        self.base = base
        self.client = None
        if kind == "api":
            from cistern.client import connect

            self.client = connect(cluster, uid=0, gid=0, groups=[])

    def _p(self, rel: str) -> str:
        return "/" + rel if self.client else os.path.join(self.base, rel)

    def where(self, rel: str) -> str:
        return self._p(rel) if self.client is None else f"cistern:{self._p(rel)}"

    def makedirs(self, rel: str) -> None:
        if self.client:
            self.client.makedirs(self._p(rel), exist_ok=True)
        else:
            os.makedirs(self._p(rel), exist_ok=True)

    def rmdir(self, rel: str) -> None:
        try:
            (self.client.rmdir if self.client else os.rmdir)(self._p(rel))
        except OSError:
            pass    # left for the user to see (not empty: an earlier phase failed)

    def count(self, tops: list[str]) -> dict:
        """Directories and files below the tops (the tops not counted)."""
        walk = self.client.walk if self.client else os.walk
        dirs = files = 0
        for top in tops:
            for _, dirnames, filenames in walk(self._p(top)):
                dirs += len(dirnames)
                files += len(filenames)
        return {"dirs": dirs, "files": files}

    def close(self) -> None:
        if self.client:
            self.client.close()


def run_target(kind: str, base: str | None, cluster: str | None, shape: Shape, inflight: int,
               plan: list[tuple[str, bool]], *, keep: bool = False, paired: bool = False,
               progress: Progress | None = None, label: str = "") -> dict:
    """Run the phases of ``plan`` (``[(phase, timed), ...]``) with
    ``shape.clients`` client processes. Returns ``{"phases": [phase
    records of the timed phases], "bare_phases": [...], "interrupted":
    bool}``. ``paired`` (path:/mount: only): each phase also runs as a bare
    loop of the same os calls on a second tree (run id + ``-bare``), in the
    same processes right before or after the harness's turn."""
    progress = progress or Progress(False)
    ctx = multiprocessing.get_context("spawn")
    n = shape.clients
    barrier = ctx.Barrier(n + 1)
    step_barrier = ctx.Barrier(n)
    stop = ctx.RawValue("b", 0)
    prog = ctx.RawArray("q", n)
    results = ctx.Queue()
    worker_plan = []
    renamed = False
    for phase, _ in plan:
        worker_plan.append((phase, renamed))
        renamed = renamed or phase == "rename"
    shape_dict = {f: getattr(shape, f) for f in shape.__dataclass_fields__}
    bare_shape = Shape(**{**shape_dict, "run_id": shape.run_id + "-bare"})
    shapes = [shape, bare_shape] if paired else [shape]
    per_phase = n * len(shapes)
    procs = [ctx.Process(target=_client_main, daemon=True, name=f"bench-client-{k}",
                         args=({"client": k, "kind": kind, "base": base, "cluster": cluster,
                                "shape": shape_dict, "plan": worker_plan, "inflight": inflight, "paired": paired,
                                "bare_shape": {**shape_dict, "run_id": bare_shape.run_id}},
                               barrier, step_barrier, stop, prog, results))
             for k in range(n)]
    ns = Tree(kind, base, cluster)
    restore = stop_on_signals(stop)
    records: list[dict] = []
    bare_records: list[dict] = []
    interrupted = False
    renamed = False
    try:
        for sh in shapes:
            ns.makedirs(workloads.run_root(sh))
            for top in workloads.tops(sh):
                ns.makedirs(top)
        for p in procs:
            p.start()
        _gather(results, procs, n, "ready", progress, label + " starting", prog, 0, stop, start_timeout_s)
        for phase, timed in plan:
            expected = workloads.expected_ops(shape, phase)
            if stop.value:
                break
            barrier.wait(start_timeout_s)
            # After Ctrl-C (the stop flag) the clients end the phase at their
            # next check and report what they did.
            parts = _gather(results, procs, per_phase, phase, progress, f"{label} {phase}", prog, expected,
                            stop, phase_timeout_s, on_stop=step_barrier.abort)
            renamed = renamed or phase == "rename"
            stopped = any(p["stopped"] for p in parts)
            # Every phase that ran is reported (set-up and clean-up ones too,
            # marked untimed), so no error goes unseen.
            verify = None
            if not stopped:
                found = ns.count(workloads.tops(shape))
                want = workloads.expected_tree(shape, phase, renamed)
                verify = {**found, "expected_dirs": want["dirs"], "expected_files": want["files"],
                          "ok": found == want}
            records.append(report.phase_record(phase, [p for p in parts if p["which"] == "harness"],
                                               expected, verify, timed))
            if paired:
                bare_records.append(report.phase_record(phase, [p for p in parts if p["which"] == "bare"],
                                                        expected, None, timed))
            if stopped:
                interrupted = True
                break
    finally:
        restore()
        interrupted = interrupted or bool(stop.value)
        progress.done()
        for b in (barrier, step_barrier):
            b.abort()          # releases any client still waiting (never interrupted: see stop_on_signals)
        for p in procs:
            if p.pid is not None:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        if interrupted:
            report.eprint(f"cistern bench: interrupted; the run's tree is left in place: "
                          f"{', '.join(ns.where(workloads.run_root(sh)) for sh in shapes)}")
        elif not keep:
            for sh in shapes:
                for top in workloads.tops(sh):
                    ns.rmdir(top)
                ns.rmdir(workloads.run_root(sh))
        ns.close()
    return {"phases": records, "bare_phases": bare_records, "interrupted": interrupted}


def _gather(results, procs, n, what, progress, label, prog, expected, stop, timeout_s, on_stop=None):
    """n messages for ``what`` from the clients; a client that reports a
    fatal error or dies makes the run fail (RuntimeError)."""
    out = []
    started = time.monotonic()
    deadline = started + timeout_s
    dead_since = None
    clients = len(procs)
    while len(out) < n:
        try:
            msg = results.get(timeout=poll_interval_s)
        except queue.Empty:
            if stop.value and on_stop is not None:
                on_stop()          # clients waiting between steps give up
                on_stop = None
            if expected:
                progress.update(label, sum(prog[:]), expected, started)
            got = collections.Counter(m["client"] for m in out)
            dead = [p.name for k, p in enumerate(procs) if p.exitcode is not None and got[k] < n // clients]
            if dead:
                # A message may still be in the pipe: give it a moment before failing.
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > 3.0:
                    raise RuntimeError(f"{', '.join(dead)} exited during {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"clients silent for {timeout_s:.0f} s during {what}")
            continue
        if "fatal" in msg:
            stop.value = 1
            raise RuntimeError(msg["fatal"])
        out.append(msg)
    return out
