"""``cistern bench sched``: the scheduler benchmark (``cistern.bench.sched_bench``):
launch latency, no-op tasks per second and locality against the issue's
targets. Composes the benchmark with the framework SDK (bench may not
import the scheduler) and, without ``--cluster``, a temporary local cluster
of 3 metad and 3 nodes with agents, removed afterwards.

Exit status: 0 when every task of every phase finished (the targets are
reported, not enforced: the figures depend on the machine); 1 otherwise or
when the cluster is bad; 2 bad usage; 130 interrupted.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

from cistern.cli.main import EXIT_FAILED, EXIT_USAGE


def register(sub) -> None:
    s = sub.add_parser("sched", help="scheduler: launch latency, no-op tasks/s, locality (issue 5 targets)",
                       description="The offer scheduler on a 3-node cluster: submit-to-RUNNING latency (p50, p99), "
                                   "no-op tasks completed per second, and the fraction of input bytes read locally "
                                   "with delay scheduling, printed against the targets.")
    s.add_argument("--cluster", default=None,
                   help="cluster.json or metadata addresses (default: a fresh local 3-node cluster for this run)")
    s.add_argument("--latency-tasks", type=int, default=50, help="tasks submitted one at a time (default 50)")
    s.add_argument("--throughput-tasks", type=int, default=200, help="no-op tasks submitted at once (default 200)")
    s.add_argument("--blocks", type=int, default=30, help="blocks of the locality file, one task each (default 30)")
    s.add_argument("--locality-wait", type=float, default=1.0, metavar="SECONDS",
                   help="delay scheduling's wait (default 1)")
    s.add_argument("--cpus", type=float, default=0.1, help="cpus per task (default 0.1)")
    s.add_argument("--json", default=None, metavar="OUT", help="write the JSON record here ('-': stdout)")
    s.set_defaults(run=run)


def run(args) -> int:
    from cistern.bench import report, sched_bench
    from cistern.client import connect
    from cistern.scheduler.framework import Framework

    config = sched_bench.Config(latency_tasks=args.latency_tasks, throughput_tasks=args.throughput_tasks,
                                locality_blocks=args.blocks, locality_wait_s=args.locality_wait,
                                cpus_per_task=args.cpus)
    try:
        config.check()
    except ValueError as e:
        print(f"cistern bench sched: {e}", file=sys.stderr)
        return EXIT_USAGE
    local = tmp = None
    try:
        addresses = args.cluster
        if addresses is None:
            local, tmp = _start_local_cluster(config.block_size)
            addresses = local.addresses
        with connect(addresses, block_size=config.block_size) as client:
            def make_framework(name, locality_wait_s):
                return Framework(None, name, locality_wait_s=locality_wait_s, client=client)

            doc = sched_bench.run(config, make_framework, client,
                                  progress=lambda phase: print(f"... {phase}", file=sys.stderr))
    finally:
        if local is not None:
            local.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    doc["config"]["cluster"] = "a local 3-node cluster (temporary, removed)" if local is not None else args.cluster
    report.emit(doc, sched_bench.text(doc), args.json)
    return EXIT_FAILED if doc["failures"] else 0


def _start_local_cluster(block_size: int):
    from cistern.scheduler.testing import SchedCluster

    tmp = tempfile.mkdtemp(prefix="cistern-bench-sched-")
    cluster = SchedCluster(pathlib.Path(tmp), block_size=block_size, node_log_level="WARNING")
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return cluster, tmp
