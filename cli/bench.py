"""``cistern bench meta``: the metadata benchmark (``cistern.bench.meta``).

Prints a table per phase on stdout, writes the JSON record (``--json``) and
a PNG (``--plot``), shows a progress bar on stderr when it is a terminal.
With ``--via api`` (or an api ``--compare``) and no ``--cluster`` /
``$CISTERN_CLUSTER``, it starts a local 3-replica cluster in a temporary
directory for the run and removes it afterwards.

Exit status: 0 when every operation succeeded and every self-check held; 1
when some operation failed or a self-check did not hold (the report says
which); 2 bad usage; 130 interrupted (the partial report is still printed
and written).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile

from cistern.core import cluster as cluster_spec


def register(commands) -> None:
    p = commands.add_parser("bench", help="benchmarks (bench meta: metadata throughput; bench fuse: the mount)")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", parser_class=type(p))
    sub.required = True
    m = sub.add_parser("meta", help="metadata throughput and latency (mdtest phases)",
                       description="Metadata throughput and latency: mdtest's phases with N client "
                                   "processes, K operations in flight each.")
    m.add_argument("--cluster", default=None,
                   help="cluster.json or metadata addresses for --via api (default: $CISTERN_CLUSTER, "
                        "else a fresh local 3-replica cluster for this run)")
    m.add_argument("--via", default="api", metavar="TARGET",
                   help="api | path:DIR | mount:DIR | raft | raft:state | raft:group (default api)")
    m.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    m.add_argument("--inflight", type=int, default=1,
                   help="operations outstanding per client (1: one at a time, mdtest's latency; default 1)")
    m.add_argument("--files-per-client", type=int, default=100, help="files each client creates (default 100)")
    m.add_argument("--depth", type=int, default=1, help="directory tree depth below each top (default 1)")
    m.add_argument("--fanout", type=int, default=4, help="subdirectories per tree directory (default 4)")
    m.add_argument("--phases", default=",".join(_phases()),
                   help="comma-separated subset of " + ",".join(_phases()) + " (default all)")
    m.add_argument("--shared-dir", action="store_true",
                   help="all clients work in one shared tree (default: a tree per client)")
    m.add_argument("--seed", type=int, default=None,
                   help="names the run directory bench-SEED and shuffles the stat/open-close order")
    m.add_argument("--json", default=None, metavar="OUT", help="write the JSON record here ('-': stdout)")
    m.add_argument("--plot", default=None, metavar="OUT.png", help="write a PNG plot here")
    m.add_argument("--sweep", default=None, metavar="PARAM=V1,V2",
                   help="run at each value: clients=1,2,4 or files=100,1000")
    m.add_argument("--compare", action="append", default=[], metavar="TARGET",
                   help="also run against this baseline (e.g. path:/dev/shm/x) and print ratios; repeatable")
    m.add_argument("--baseline-loop", action="store_true",
                   help="with path:/mount:, also time a bare loop of the same os calls (harness overhead)")
    m.add_argument("--keep", action="store_true", help="leave the tree in place (skip the clean-up phases)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(run=run_meta)
    f = sub.add_parser("fuse", help="the FUSE mount against a fusepy passthrough over tmpfs",
                       description="The Cistern FUSE mount against a minimal fusepy passthrough over tmpfs, "
                                   "in one run: creates/s, stats/s, readdir, sequential MB/s, and their ratios.")
    from cistern.bench import fuse_bench

    fuse_bench.add_arguments(f)
    f.set_defaults(run=fuse_bench.run)
    from cistern.cli import bench_sched

    bench_sched.register(sub)


def _phases():
    from cistern.bench.workloads import PHASES

    return PHASES


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_meta(args) -> int:
    from cistern.bench import meta, report, runner

    try:
        config = meta.Config(
            via=args.via, compare=list(args.compare), clients=args.clients, inflight=args.inflight,
            files_per_client=args.files_per_client, depth=args.depth, fanout=args.fanout,
            phases=[p.strip() for p in args.phases.split(",") if p.strip()], shared_dir=args.shared_dir,
            seed=args.seed, sweep=meta.parse_sweep(args.sweep) if args.sweep else None,
            cluster=None, keep=args.keep, baseline_loop=args.baseline_loop)
        config.check()
    except ValueError as e:
        print(f"cistern bench meta: {e}", file=sys.stderr)
        return 2
    # SIGTERM stops the run as Ctrl-C does: partial report, local cluster removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    needs_api = any(runner.parse_target(t)[0] == "api" for t in [config.via, *config.compare])
    local = tmp = None
    try:
        if needs_api:
            given = args.cluster or os.environ.get(cluster_spec.ENV_VAR)
            if given:
                cluster_spec.resolve(given)      # a bad --cluster is one line on stderr, exit 1
                config.cluster = given
            else:
                local, tmp, config.cluster = _start_local_cluster(args.log_level.upper())
        doc = meta.run(config, argv=[os.path.basename(sys.argv[0]), *sys.argv[1:]],
                       progress=runner.Progress(not args.no_progress))
    except KeyboardInterrupt:
        print("cistern bench meta: interrupted before any result", file=sys.stderr)
        return 130
    except RuntimeError as e:        # a client process died or went silent
        print(f"cistern bench meta: {e}", file=sys.stderr)
        return 1
    finally:
        if local is not None:
            local.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    if local is not None:
        doc["config"]["cluster"] = "local (temporary, removed)"
    report.emit(doc, report.table(doc), args.json)
    if args.plot and doc["results"]:
        report.plot(doc, args.plot)
    if doc["interrupted"]:
        print("cistern bench meta: interrupted: the report is partial", file=sys.stderr)
        return 130
    problems = meta.failed(doc)
    for line in problems:
        print(f"cistern bench meta: {line}", file=sys.stderr)
    return 1 if problems else 0


def _start_local_cluster(log_level: str):
    from cistern.cli.supervisor import LocalCluster

    tmp = tempfile.mkdtemp(prefix="cistern-bench-cluster-")
    local = LocalCluster(tmp, 3, 0, log_level)
    try:
        local.start()
        local.wait_ready()
        path = local.write_cluster_json()
    except BaseException:
        local.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return local, tmp, path
