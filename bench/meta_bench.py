"""Metadata throughput: N client processes, each with its own MetaClient and
K operations in flight, against a running cluster (--cluster) or a fresh
local 3-replica cluster.

    cd /tmp && .venv/bin/python -m cistern.bench.meta_bench --procs 16 --inflight 64 --seconds 10

Prints, from one run: bare pysyncobj ops/s (3 processes, its defaults, a
replicated dict update per call; ``raft_bench.py``'s baseline) beside
Cistern creates/s (N x K in flight) and their ratio; linearizable stats/s
(GETATTR, same shape); the latency of one create at a time (p50/p99); for
each phase the CPU time per operation of the client processes and of the
metads (a figure that a busy shared machine disturbs far less than rates). With
``--prefill N`` also: creates/s on a small namespace, then after filling it
to N files (many in flight across many directories), creates/s again, their
ratio, and each metad's resident memory (VmRSS, split into anonymous and
file-backed pages: LMDB's mmap'd pages count as RssFile). ``--json OUT``
writes every figure as one JSON document (``-`` for stdout).

Each phase also reports the operations per request message and per reply
message: the batching, which sets most of the CPU per operation on both
sides. Operations go through ``MetaClient.submit_callback`` (no future
per operation; one of each cost the clients ~40 against ~22 us of CPU per
stat, with fewer operations per message). The load generator refills its
in-flight slots from the main thread;
a leaner one that submitted the next operation from each reply's callback
(no hand-off) was measured and dropped: it sent each reply batch's worth
back at once, so a stream's batches never merged (stats: 19 operations per
message instead of 28-36, and 40-50% fewer stats/s).
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import queue
import signal
import statistics
import sys
import tempfile
import threading
import time

from cistern.core.cluster import resolve
from cistern.core.errors import CisternError
from cistern.metadata import model
from cistern.metadata.model import Op

CRED = model.ROOT_CRED


small_namespace_files = 10_000      # the reference point of the --prefill comparison
prefill_files_per_dir = 10_000      # files per directory while prefilling
prefill_inflight_min = 256          # per client process while prefilling


def _pipeline(client, code, make_args, inflight: int, seconds: float, record_latency: bool,
              count: int | None = None):
    """Keep `inflight` operations outstanding for `seconds` (or until `count`
    were issued); (ops, errors, latencies_s). Operations go through the
    client's callback form (``submit_callback``), as bare pysyncobj's
    baseline takes its callbacks: no future per operation. The free slots
    are tokens in a SimpleQueue (C): the same blocking and wake-ups as a
    threading.Semaphore, whose Python Condition cost the clients ~3 us per
    operation."""
    slots: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(inflight):
        slots.put(None)
    lock = threading.Lock()
    counts = {"ok": 0, "err": 0, "first_error": ""}
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    def done(value, error, started=None):
        with lock:
            if error is None:
                counts["ok"] += 1
                if started is not None:
                    latencies.append(time.perf_counter() - started)
            else:
                counts["err"] += 1
                counts["first_error"] = counts["first_error"] or str(error)
        slots.put(None)

    i = 0
    while time.monotonic() < stop_at and (count is None or i < count):
        slots.get()
        if record_latency:
            started = time.perf_counter()
            client.submit_callback(code, make_args(i), lambda v, e, started=started: done(v, e, started))
        else:
            client.submit_callback(code, make_args(i), done)
        i += 1
    for _ in range(inflight):   # drain
        slots.get()
    return counts, latencies, i


def _worker(addresses, index, run_id, phase, inflight, seconds, start_event, results, span=1000):
    try:
        _work(addresses, index, run_id, phase, inflight, seconds, start_event, results, span)
    except BaseException as e:   # report, so the parent never waits for a dead worker
        results.put({"index": index, "ok": 0, "err": 1, "first_error": f"worker failed: {e!r}",
                     "elapsed_s": 0.0, "latencies": []})


def _mkdir(client, path: bytes) -> None:
    try:
        client.call(Op.MKDIR, model.encode_args(CRED, path, 0o755))
    except CisternError as e:
        if e.errno != errno.EEXIST:
            raise


def _work(addresses, index, run_id, phase, inflight, seconds, start_event, results, span):
    from cistern.metadata.client import MetaClient

    with MetaClient(list(addresses)) as client:
        directory = b"/bench-%s/p%d" % (run_id.encode(), index)
        count = None
        if phase == "prefill":   # `span` files, prefill_files_per_dir per directory
            _mkdir(client, b"/bench-%s" % run_id.encode())
            _mkdir(client, directory)
            for d in range((span + prefill_files_per_dir - 1) // prefill_files_per_dir):
                _mkdir(client, b"%s/d%d" % (directory, d))
            make = lambda i: model.encode_args(  # noqa: E731
                CRED, b"%s/d%d/f%d" % (directory, i // prefill_files_per_dir, i), 0o644, True)
            code = Op.CREATE
            count = span
        elif phase == "create":
            _mkdir(client, b"/bench-%s" % run_id.encode())
            _mkdir(client, directory)
            make = lambda i: model.encode_args(CRED, b"%s/f%d" % (directory, i), 0o644, True)  # noqa: E731
            code = Op.CREATE
        else:   # stat the first `span` files this worker created in the create phase
            make = lambda i: model.encode_args(CRED, b"%s/f%d" % (directory, i % span), True)  # noqa: E731
            code = Op.GETATTR
        start_event.wait()
        t0, cpu0 = time.monotonic(), time.process_time()
        batches0, replies0 = client.batches_sent, client.replies_received
        counts, latencies, _ = _pipeline(client, code, make, inflight, seconds, inflight == 1, count)
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        batches, replies = client.batches_sent - batches0, client.replies_received - replies0
    results.put({"index": index, "ok": counts["ok"], "err": counts["err"],
                 "first_error": counts["first_error"], "elapsed_s": elapsed,
                 "latencies": latencies, "cpu_s": cpu, "batches": batches,
                 "replies": replies})


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process used so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime, stime


def run_phase(addresses, run_id, phase, procs, inflight, seconds, span=1000, pids=()) -> dict:
    """One phase; ``pids``: the metads, whose CPU over the phase is reported
    per operation beside the clients' own."""
    ctx = multiprocessing.get_context("spawn")   # never fork a process that runs gRPC
    start_event = ctx.Event()
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(addresses, i, run_id, phase, inflight, seconds,
                                                  start_event, results, span), daemon=True)
               for i in range(procs)]
    for w in workers:
        w.start()
    time.sleep(2.0 + 0.15 * procs)    # let every worker import, connect and mkdir
    server_cpu0 = sum(process_cpu_s(pid) for pid in pids)
    start_event.set()
    out = [results.get(timeout=seconds + 120) for _ in workers]
    server_cpu = sum(process_cpu_s(pid) for pid in pids) - server_cpu0
    for w in workers:
        w.join(10)
    ok = sum(r["ok"] for r in out)
    errors = sum(r["err"] for r in out)
    elapsed = max(r["elapsed_s"] for r in out) or 1e-9
    latencies = sorted(x for r in out for x in r["latencies"])
    report = {"phase": phase, "span": min(r["ok"] for r in out), "procs": procs, "inflight": inflight, "ops": ok, "errors": errors,
              "ops_per_s": round(ok / elapsed, 1), "elapsed_s": round(elapsed, 2)}
    if ok:
        report["client_cpu_us_per_op"] = round(sum(r.get("cpu_s", 0.0) for r in out) / ok * 1e6, 1)
        report["ops_per_batch"] = round(ok / max(1, sum(r.get("batches", 0) for r in out)), 1)
        report["ops_per_reply_batch"] = round(ok / max(1, sum(r.get("replies", 0) for r in out)), 1)
        if pids:
            report["metad_cpu_us_per_op"] = round(server_cpu / ok * 1e6, 1)
    if errors:
        report["first_error"] = next(r["first_error"] for r in out if r["first_error"])
    if latencies:
        report["p50_ms"] = round(statistics.median(latencies) * 1e3, 3)
        report["p99_ms"] = round(latencies[int(len(latencies) * 0.99) - 1] * 1e3, 3)
    return report


def metad_memory(pid: int) -> dict:
    """Resident memory of one process from /proc/PID/status, in MiB:
    VmRSS = RssAnon (heap) + RssFile (mapped files: LMDB's pages) + RssShmem."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    found[key] = round(int(value.split()[0]) / 1024, 1)   # kB -> MiB
    except OSError:
        pass
    return found


def namespace_files(addresses) -> int:
    from cistern.metadata.client import MetaClient

    with MetaClient(list(addresses)) as client:
        return int(client.call(Op.STATFS, model.encode_args(CRED))["files"])


def measure_bare(ops: int, inflight: int) -> dict:
    """Bare pysyncobj on 3 local processes (raft_bench's baseline)."""
    from cistern.bench import raft_bench

    return raft_bench.measure_bare(ops=ops, inflight=inflight)


def _prefill(addresses, run_id, args, pids) -> dict:
    """Fill the namespace to args.prefill files, then measure creates again."""
    before = namespace_files(addresses)
    need = max(0, args.prefill - before)
    started = time.monotonic()
    fill = run_phase(addresses, run_id + "p", "prefill", args.procs, max(args.inflight, prefill_inflight_min),
                     24 * 3600.0, span=(need + args.procs - 1) // args.procs) if need else None
    fill_s = time.monotonic() - started
    files = namespace_files(addresses)
    at_n = run_phase(addresses, run_id + "n", "create", args.procs, args.inflight, args.seconds)
    return {"files_before": before, "files_after_prefill": files,
            "prefill_ops_per_s": fill["ops_per_s"] if fill else 0.0, "prefill_s": round(fill_s, 1),
            "prefill_errors": fill["errors"] if fill else 0,
            "create_at_n": at_n,
            "memory_mib": {str(pid): metad_memory(pid) for pid in pids}}


def _print_text(result: dict) -> None:
    bare = result.get("bare")
    for r in result["phases"]:
        line = (f"{r['phase']:>6}: {r['ops_per_s']:>9.1f} ops/s  procs={r['procs']} inflight={r['inflight']}"
                f"  ops={r['ops']} errors={r['errors']}")
        if "p50_ms" in r and r["inflight"] == 1:
            line += f"  p50={r['p50_ms']:.3f}ms p99={r['p99_ms']:.3f}ms"
        if "client_cpu_us_per_op" in r:
            line += f"  cpu/op: clients {r['client_cpu_us_per_op']:.0f} us"
            if "metad_cpu_us_per_op" in r:
                line += f", metads {r['metad_cpu_us_per_op']:.0f} us"
            line += f"  ops/message: sent {r['ops_per_batch']:.1f}, received {r['ops_per_reply_batch']:.1f}"
        if r.get("first_error"):
            line += f"  first error: {r['first_error']}"
        print(line)
    if bare:
        print(f"  bare pysyncobj: {bare['ops_per_s']:>9.1f} ops/s  (3 processes, its defaults, "
              f"{bare['inflight']} in flight)")
    if "creates_vs_bare" in result:
        print(f"  creates / bare pysyncobj = {result['creates_vs_bare']:.2f}")
    pre = result.get("prefill")
    if pre:
        n = pre["create_at_n"]
        print(f"prefill: {pre['files_before']} -> {pre['files_after_prefill']} files in {pre['prefill_s']}s "
              f"({pre['prefill_ops_per_s']:.0f}/s, errors={pre['prefill_errors']})")
        print(f"create@{pre['files_after_prefill']}: {n['ops_per_s']:>9.1f} ops/s  errors={n['errors']}  "
              f"vs small namespace: {result.get('creates_at_n_vs_small', 0):.2f}")
        for pid, mem in pre["memory_mib"].items():
            print(f"  metad pid {pid}: " + "  ".join(f"{k}={v} MiB" for k, v in mem.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default=None,
                        help="cluster.json or comma-separated metadata addresses (default: start a local 3-replica cluster)")
    parser.add_argument("--procs", type=int, default=16)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--phases", default="bare,create,stat,latency",
                        help="comma-separated subset of bare,create,stat,latency")
    parser.add_argument("--bare-ops", type=int, default=20000, help="bare pysyncobj calls")
    parser.add_argument("--bare-inflight", type=int, default=1000, help="bare pysyncobj calls in flight")
    parser.add_argument("--prefill", type=int, default=0, metavar="N",
                        help="then fill the namespace to N files, measure creates again and report metad RSS")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="OUT",
                        help="write one JSON document to OUT ('-' or no value: stdout, instead of the text)")
    args = parser.parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the local cluster is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    result: dict = {"procs": args.procs, "inflight": args.inflight, "seconds": args.seconds, "phases": []}

    cluster = None
    tmp = None
    pids: list[int] = []
    if args.cluster:
        spec = resolve(args.cluster)
        addresses = list(spec.meta_addresses)
        pids = [m["pid"] for m in spec.document.get("meta", []) if m.get("pid")]
    else:
        from cistern.metadata.proc_testing import MetaCluster

        tmp = tempfile.TemporaryDirectory(prefix="cistern-bench-")
        cluster = MetaCluster(tmp.name, 3, log_level="WARNING")
        addresses = cluster.addresses
        pids = [m["pid"] for m in cluster.members]
    run_id = "%x" % (time.time_ns() // 1000 % (1 << 40))
    reports = result["phases"]
    try:
        if "bare" in phases:
            # After the cluster holds its ports (both pick free ones), before it is busy.
            result["bare"] = measure_bare(args.bare_ops, args.bare_inflight)
        if "create" in phases or "stat" in phases or args.prefill:
            reports.append(run_phase(addresses, run_id, "create", args.procs, args.inflight, args.seconds,
                                     pids=pids))
        if "stat" in phases:
            # Every worker stats files it created (the fewest any worker made, at most 1000).
            span = max(1, min(1000, reports[-1]["span"]))
            reports.append(run_phase(addresses, run_id, "stat", args.procs, args.inflight, args.seconds, span,
                                     pids=pids))
        if "latency" in phases:
            reports.append(run_phase(addresses, run_id + "l", "create", 1, 1, min(args.seconds, 5.0), pids=pids))
        if args.prefill:
            result["prefill"] = _prefill(addresses, run_id, args, pids)
    finally:
        if cluster is not None:
            cluster.stop_all()
            tmp.cleanup()
    creates = next((r["ops_per_s"] for r in reports if r["phase"] == "create" and r["inflight"] > 1), None)
    if creates is not None and result.get("bare"):
        result["creates_vs_bare"] = round(creates / max(result["bare"]["ops_per_s"], 1e-9), 2)
    if creates and result.get("prefill"):
        result["creates_at_n_vs_small"] = round(result["prefill"]["create_at_n"]["ops_per_s"] / creates, 2)
    if args.json is None:
        _print_text(result)
    elif args.json == "-":
        print(json.dumps(result, indent=1))
    else:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        _print_text(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
