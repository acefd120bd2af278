"""Metadata throughput: N client processes, each with its own MetaClient and
K operations in flight, against a running cluster (--cluster) or a fresh
local 3-replica cluster.

    .venv/bin/python -m cistern.bench.meta_bench --procs 16 --inflight 64 --seconds 10

Prints creates/s (N x K in flight), linearizable stats/s (GETATTR, same
shape), and the latency of one create at a time (p50/p99).
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
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


def _pipeline(client, code, make_args, inflight: int, seconds: float, record_latency: bool):
    """Keep `inflight` operations outstanding for `seconds`; (ops, errors, latencies_s)."""
    slots = threading.Semaphore(inflight)
    lock = threading.Lock()
    counts = {"ok": 0, "err": 0, "first_error": ""}
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop_at:
        slots.acquire()
        started = time.perf_counter()
        future = client.submit(code, make_args(i))
        i += 1

        def done(f, started=started):
            elapsed = time.perf_counter() - started
            with lock:
                if f.exception() is None:
                    counts["ok"] += 1
                    if record_latency:
                        latencies.append(elapsed)
                else:
                    counts["err"] += 1
                    counts["first_error"] = counts["first_error"] or str(f.exception())
            slots.release()

        future.add_done_callback(done)
    for _ in range(inflight):   # drain
        slots.acquire()
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
        if phase == "create":
            _mkdir(client, b"/bench-%s" % run_id.encode())
            _mkdir(client, directory)
            make = lambda i: model.encode_args(CRED, b"%s/f%d" % (directory, i), 0o644, True)  # noqa: E731
            code = Op.CREATE
        else:   # stat the first `span` files this worker created in the create phase
            make = lambda i: model.encode_args(CRED, b"%s/f%d" % (directory, i % span), True)  # noqa: E731
            code = Op.GETATTR
        start_event.wait()
        t0 = time.monotonic()
        counts, latencies, _ = _pipeline(client, code, make, inflight, seconds, inflight == 1)
        elapsed = time.monotonic() - t0
    results.put({"index": index, "ok": counts["ok"], "err": counts["err"],
                 "first_error": counts["first_error"], "elapsed_s": elapsed,
                 "latencies": latencies})


def run_phase(addresses, run_id, phase, procs, inflight, seconds, span=1000) -> dict:
    ctx = multiprocessing.get_context("spawn")   # never fork a process that runs gRPC
    start_event = ctx.Event()
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(addresses, i, run_id, phase, inflight, seconds,
                                                  start_event, results, span), daemon=True)
               for i in range(procs)]
    for w in workers:
        w.start()
    time.sleep(2.0 + 0.15 * procs)    # let every worker import, connect and mkdir
    start_event.set()
    out = [results.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join(10)
    ok = sum(r["ok"] for r in out)
    errors = sum(r["err"] for r in out)
    elapsed = max(r["elapsed_s"] for r in out) or 1e-9
    latencies = sorted(x for r in out for x in r["latencies"])
    report = {"phase": phase, "span": min(r["ok"] for r in out), "procs": procs, "inflight": inflight, "ops": ok, "errors": errors,
              "ops_per_s": round(ok / elapsed, 1), "elapsed_s": round(elapsed, 2)}
    if errors:
        report["first_error"] = next(r["first_error"] for r in out if r["first_error"])
    if latencies:
        report["p50_ms"] = round(statistics.median(latencies) * 1e3, 3)
        report["p99_ms"] = round(latencies[int(len(latencies) * 0.99) - 1] * 1e3, 3)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", default=None,
                        help="cluster.json or comma-separated metadata addresses (default: start a local 3-replica cluster)")
    parser.add_argument("--procs", type=int, default=16)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--phases", default="create,stat,latency",
                        help="comma-separated subset of create,stat,latency")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the local cluster is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    cluster = None
    tmp = None
    if args.cluster:
        addresses = list(resolve(args.cluster).meta_addresses)
    else:
        from cistern.metadata.proc_testing import MetaCluster

        tmp = tempfile.TemporaryDirectory(prefix="cistern-bench-")
        cluster = MetaCluster(tmp.name, 3, log_level="WARNING")
        addresses = cluster.addresses
    run_id = "%x" % (time.time_ns() // 1000 % (1 << 40))
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    reports = []
    try:
        if "create" in phases or "stat" in phases:
            reports.append(run_phase(addresses, run_id, "create", args.procs, args.inflight, args.seconds))
        if "stat" in phases:
            # Every worker stats files it created (the fewest any worker made, at most 1000).
            span = max(1, min(1000, reports[-1]["span"]))
            reports.append(run_phase(addresses, run_id, "stat", args.procs, args.inflight, args.seconds, span))
        if "latency" in phases:
            reports.append(run_phase(addresses, run_id + "l", "create", 1, 1, min(args.seconds, 5.0)))
    finally:
        if cluster is not None:
            cluster.stop_all()
            tmp.cleanup()
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        for r in reports:
            line = (f"{r['phase']:>6}: {r['ops_per_s']:>9.1f} ops/s  procs={r['procs']} inflight={r['inflight']}"
                    f"  ops={r['ops']} errors={r['errors']}")
            if "p50_ms" in r and r["inflight"] == 1:
                line += f"  p50={r['p50_ms']:.3f}ms p99={r['p99_ms']:.3f}ms"
            if r.get("first_error"):
                line += f"  first error: {r['first_error']}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
