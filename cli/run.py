"""``cistern run --input PATH [--cpus 0.5] [--mem 256M] [--output DIR]
[--wait SECONDS] [--json] -- CMD ...``: a data-local batch job
(``cistern.scheduler.jobs``): one task per block of PATH on a node holding
it, waits for all, prints a summary table (or one JSON object with
``--json``: a ``tasks`` list and ``locality_bytes_fraction``).

Exit status: 0 when every task finished; 1 when some task did not (failed,
killed, lost, refused, or still running at ``--wait``), or the input or
cluster is bad (one line on stderr); 2 bad usage (no command, bad --mem,
--cpus, --wait); 130 interrupted (the job's tasks are killed).
"""

from __future__ import annotations

import json
import sys

from cistern.cli.main import EXIT_FAILED, EXIT_USAGE


def register(commands) -> None:
    p = commands.add_parser(
        "run", help="run CMD once per block of PATH, on a node holding the block",
        description="A data-local batch job: one task per input block, placed on a node holding the block "
                    "(waiting up to --locality-wait for one). Each task reads its block at $CISTERN_INPUT "
                    "and writes files to $CISTERN_OUTPUT, stored under --output DIR/<task id>/.")
    p.add_argument("--cluster", default=None, help="cluster.json path or comma-separated metadata addresses")
    p.add_argument("--input", required=True, metavar="PATH", help="Cistern file (or directory of files) to process")
    p.add_argument("--cpus", type=float, default=0.5, help="cpus per task (default 0.5)")
    p.add_argument("--mem", default="256M", help="memory per task, e.g. 256M, 1G (default 256M)")
    p.add_argument("--output", default=None, metavar="DIR", help="Cistern directory for the tasks' output files")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="give up (kill what still runs) after this long (default: wait for every task)")
    p.add_argument("--locality-wait", type=float, default=1.0, metavar="SECONDS",
                   help="how long a task waits for a node holding its block (default 1)")
    p.add_argument("--name", default="cistern-run", help="the framework's name (default cistern-run)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("cmd", nargs="...", metavar="-- CMD ...", help="the command each task runs")
    p.set_defaults(run=run)


def run(args) -> int:
    from cistern.client import connect
    from cistern.scheduler import jobs

    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else list(args.cmd)
    try:
        spec = jobs.JobSpec(input_path=args.input, argv=argv, cpus=args.cpus, mem_bytes=jobs.parse_mem(args.mem),
                            output_dir=args.output, wait_s=args.wait, locality_wait_s=args.locality_wait,
                            name=args.name)
        spec.check()
    except ValueError as e:
        print(f"cistern run: {e}", file=sys.stderr)
        return EXIT_USAGE
    with connect(args.cluster) as client:
        summary = jobs.run_job(client, spec)
    if args.json:
        print(json.dumps(summary))
    else:
        print(jobs.table(summary))
    if summary["tasks_finished"] == summary["tasks_total"]:
        return 0
    unfinished = summary["tasks_total"] - summary["tasks_finished"]
    why = "; gave up waiting" if summary.get("timed_out") else ""
    print(f"cistern run: {unfinished} of {summary['tasks_total']} tasks did not finish{why}", file=sys.stderr)
    return EXIT_FAILED
