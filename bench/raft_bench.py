"""Raft throughput and latency: bare pysyncobj against the replica.

One run measures, each on a fresh 3-member group of 3 processes on loopback:

* bare pysyncobj (its default configuration, file journal, no fsync): a
  replicated dict update per call, ``--bare-inflight`` calls in flight from
  the leader, ops/s; and a few calls one at a time (its batch mode waits for
  a tick); then the same with ``appendEntriesUseBatch=False`` (the floor of
  one round trip in pysyncobj itself);
* the ``Replica`` (group commit, the namespace state machine applying NOOP,
  LMDB store), with the durable journal and, to price the fsyncs, without:
  ops/s with ``--inflight`` writes in flight and the p50/p99 latency of
  writes issued one at a time.

Usage::

    .venv/bin/python -m cistern.bench.raft_bench [--ops 30000] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import threading
import time

from cistern.core.ports import free_port

members_n = 3
leader_wait_s = 30.0


def _claim(claimed) -> bool:
    with claimed.get_lock():
        if claimed.value:
            return False
        claimed.value = 1
        return True


def _run_bare(node, args) -> dict:
    inflight = threading.BoundedSemaphore(args.bare_inflight)
    done = threading.Event()
    remaining = [args.bare_ops]
    errors = [0]
    lock = threading.Lock()

    def callback(result, err):
        if err:
            errors[0] += 1
        inflight.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    started = time.perf_counter()
    for i in range(args.bare_ops):
        inflight.acquire()
        node.set(i % 1000, i, callback=callback)
    done.wait(300)
    elapsed = time.perf_counter() - started
    latencies = []
    for i in range(args.bare_serial):
        t0 = time.perf_counter()
        node.set(-1, i, sync=True, timeout=10)
        latencies.append(time.perf_counter() - t0)
    return {"ops_per_s": args.bare_ops / elapsed, "errors": errors[0],
            "p50_ms": statistics.median(latencies) * 1e3 if latencies else None}


def measure_bare(*, ops: int = 20000, inflight: int = 1000, serial: int = 20, **conf) -> dict:
    """Bare pysyncobj on a fresh 3-process group (``conf`` overrides its
    defaults): {"ops_per_s", "errors", "p50_ms", "ops", "inflight"}."""
    args = argparse.Namespace(bare_ops=ops, bare_inflight=inflight, bare_serial=serial)
    result = _cluster(_bare_member, (conf,), args)
    return dict(result, ops=ops, inflight=inflight)


def _bare_member(i, addrs, workdir, args, conf, claimed, results, stop):
    from cistern.metadata.replica import baseline_dict_node
    node = baseline_dict_node(addrs[i], [a for a in addrs if a != addrs[i]],
                              journalFile=os.path.join(workdir, f"bare{i}.journal"), **conf)
    try:
        deadline = time.monotonic() + leader_wait_s
        while time.monotonic() < deadline and node._getLeader() is None:
            time.sleep(0.05)
        time.sleep(1.0)   # let the new leader's first entry commit
        if node._isLeader() and _claim(claimed):
            results.put(("bare", _run_bare(node, args)))
        stop.wait(600)
    finally:
        node.destroy()


def _run_replica(replica, args) -> dict:
    from cistern.metadata import model
    noop = model.encode_args(model.ROOT_CRED)
    client = os.urandom(16)
    code = int(model.Op.NOOP)
    latencies = []
    for seq in range(args.serial):
        t0 = time.perf_counter()
        replica.submit_write(client, seq, seq, code, noop).result(10)
        latencies.append(time.perf_counter() - t0)
    latencies.sort()
    inflight = threading.BoundedSemaphore(args.inflight)
    done = threading.Event()
    remaining = [args.ops]
    lock = threading.Lock()
    errors = [0]

    def finished(future):
        if future.exception() is not None:
            errors[0] += 1
        inflight.release()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    base = args.serial
    before = replica.status()["batches"]
    started = time.perf_counter()
    for i in range(args.ops):
        inflight.acquire()
        replica.submit_write(client, base + i, base, code, noop).add_done_callback(finished)
    done.wait(300)
    elapsed = time.perf_counter() - started
    batches = replica.status()["batches"] - before
    return {"ops_per_s": args.ops / elapsed, "errors": errors[0], "ops_per_entry": args.ops / max(batches, 1),
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3}


def _replica_member(i, addrs, workdir, args, durable, claimed, results, stop):
    from cistern.metadata.replica import Replica, ReplicaConf
    from cistern.metadata.state import Namespace
    from cistern.metadata.store import Store
    data_dir = os.path.join(workdir, f"r{i}")
    store = Store(os.path.join(data_dir, "state"), sync=False, map_size_bytes=1 << 30)
    peers = {f"m{j}": a for j, a in enumerate(addrs) if j != i}
    conf = ReplicaConf(durable=durable)
    if args.socket_buffer_bytes:
        conf.socket_buffer_bytes = args.socket_buffer_bytes
    replica = Replica(f"m{i}", addrs[i], peers, data_dir, {"namespace": Namespace(store)}, conf=conf)
    replica.start()
    try:
        replica.wait_leader(leader_wait_s)
        time.sleep(1.0)
        if replica.is_leader() and _claim(claimed):
            results.put(("replica", _run_replica(replica, args)))
        stop.wait(600)
    finally:
        replica.stop()
        store.close()


def _cluster(target, extra, args) -> dict:
    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="raft-bench-")
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(members_n)]
    claimed, results, stop = ctx.Value("i", 0), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(i, addrs, workdir, args, *extra, claimed, results, stop))
             for i in range(members_n)]
    for p in procs:
        p.start()
    try:
        _, result = results.get(timeout=600)
        return result
    finally:
        stop.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=30000, help="replica writes in the throughput run")
    parser.add_argument("--inflight", type=int, default=4096, help="replica writes in flight")
    parser.add_argument("--serial", type=int, default=500, help="replica writes one at a time")
    parser.add_argument("--bare-ops", type=int, default=20000)
    parser.add_argument("--bare-inflight", type=int, default=1000)
    parser.add_argument("--bare-serial", type=int, default=20)
    parser.add_argument("--socket-buffer-bytes", type=int, default=0, help="override ReplicaConf's")
    parser.add_argument("--only-replica", action="store_true", help="skip the bare pysyncobj rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    if not args.only_replica:
        rows["bare pysyncobj (defaults)"] = _cluster(_bare_member, ({},), args)
        rows["bare pysyncobj, no batch wait"] = _cluster(_bare_member, ({"appendEntriesUseBatch": False},), args)
    rows["Replica, durable journal"] = _cluster(_replica_member, (True,), args)
    rows["Replica, no fsync"] = _cluster(_replica_member, (False,), args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'3 processes on loopback':32} {'ops/s':>10} {'ops/entry':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in rows.items():
        def cell(key, fmt):
            value = r.get(key)
            return format(value, fmt) if value is not None else "-"
        print(f"{name:32} {cell('ops_per_s', '10.0f')} {cell('ops_per_entry', '10.1f')} "
              f"{cell('p50_ms', '8.2f')} {cell('p99_ms', '8.2f')}")
    print(f"(bare: {args.bare_inflight} in flight, p50 of {args.bare_serial} sync calls; replica: "
          f"{args.inflight} in flight, latency of {args.serial} one-at-a-time NOOP writes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
