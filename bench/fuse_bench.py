"""``cistern bench fuse``: the Cistern FUSE mount against a minimal fusepy
passthrough over tmpfs (the ceiling any fusepy filesystem can reach on this
machine), measured in one run.

    cistern bench fuse [--files 10000] [--mib 1024] [--procs 1,4] [--rounds 3] [--seq-only] [--cluster C]
                       [--json OUT]
    .venv/bin/python -m cistern.bench.fuse_bench ...           (the same)

Both filesystems are mounted as the user would, as processes:
``cistern mount MNT --cluster C --foreground`` (on ``--cluster``, or on a
local cluster this run starts: 3 metad + 3 storage nodes, 4 MiB blocks, in
a temporary directory removed afterwards) and ``python -m
cistern.fuse.passthrough SRC MNT`` with SRC on /dev/shm. Each mounts with its
default options (the passthrough's equal the Cistern mount's), plus any
``-o`` given here, for both.

For every process count P (``--procs``), on each mount in turn:

* creates/s, stats/s: P processes, one os call at a time each (the
  ``bench meta`` runner, target ``mount:``), together ``--files`` empty files
  in ONE directory, then a stat of each;
* readdir: each process lists that directory of ``--files`` entries once;
  the figure is the time to list (seconds; P listings in parallel);
* sequential write and read: P processes, each its own file of
  ``--mib``/P MiB in ``--chunk-kib`` calls (open, write, close; then the
  file's kernel pages are dropped with fadvise and it is read back and
  checked); MB/s of all processes together. ``--seq-only`` runs only
  these two phases. Beside each, the CPU the mount process used per GiB
  moved (``seq-write-cpu``, ``seq-read-cpu``: user + system, all its
  threads): a figure the load of a shared machine moves far less than
  MB/s, so a slow round can be told from a costlier one.

The whole comparison runs ``--rounds`` times (default 3), the two mounts
taking turns at each process count, because this machine is shared and
either side's figure can swing by 2x from one minute to the next. Each
round gives a ratio from two measurements taken back to back; the
ratio reported against the target is the median of the rounds' ratios,
and the table shows every round's ratio beside it (the figures shown are
the medians of each side's values).

Prints a table of both figures and the ratio Cistern/passthrough against the
targets (creates and stats >= 50%, sequential reads >= 60%, writes >= 40%).
``--json OUT`` writes the record (``-``: stdout; the table then goes to
stderr), shaped as ``SCHEMA`` below says, with ``bench meta``'s phase records.

Exit status: 0 when every operation succeeded and every check held (a
missed target is reported, not an error: this is a benchmark); 1 when an
operation failed or a mount did not come up; 2 bad usage; 130 interrupted.
This package never imports ``cistern.fuse``: the mounts are processes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from . import report, runner
from .block_bench import evict, process_cpu_s
from .workloads import Shape

SCHEMA_ID = "cistern-bench-fuse/1"
MiB = 1024 * 1024
mount_timeout_s = 60.0          # a mount process until the mount point answers (busy machine)
unmount_timeout_s = 30.0        # a mount process to exit after its unmount
io_timeout_s = 3600.0           # one sequential phase, before a silent worker fails the run
block_bytes = 4 * MiB           # the local cluster's block size (the client's default)
local_nodes = 3
settle_s = 2.0                  # > the mounts' default attr/entry timeouts: stats are not kernel cache hits

# Cistern / passthrough must reach these (a benchmark report, not a test).
TARGETS = {"creates": 0.50, "stats": 0.50, "readdir": None, "seq-write": 0.40, "seq-read": 0.60,
           "seq-write-cpu": None, "seq-read-cpu": None}
UNITS = {"creates": "ops/s", "stats": "ops/s", "readdir": "s", "seq-write": "MB/s", "seq-read": "MB/s",
         "seq-write-cpu": "CPU-s/GiB", "seq-read-cpu": "CPU-s/GiB"}
LOWER_IS_BETTER = ("s", "CPU-s/GiB")     # units whose ratio is inverted (passthrough / Cistern)
GiB = 1024 * MiB
TARGET_NAMES = ("cistern", "passthrough")

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
SCHEMA = {
    "schema": str, "command": [str], "started_at": str, "duration_s": _NUM, "interrupted": bool,
    "config": {"files": int, "mib": int, "chunk_kib": int, "procs": [int], "rounds": int, "cluster": str,
               "options": [str], "passthrough_source": str},
    "versions": report.SCHEMA["versions"], "machine": report.SCHEMA["machine"],
    "results": [{"target": str, "procs": int, "round": int, "fs_type": (str, type(None)),
                 "phases": report.SCHEMA["results"][0]["phases"]}],
    "metrics": [{"metric": str, "target": str, "procs": int, "round": int, "value": _NUM, "unit": str}],
    # cistern/passthrough: medians of the rounds' values; ratio: the median of
    # `ratios`, one per round (None where a figure was 0).
    "compare": [{"metric": str, "procs": int, "cistern": _NUM, "passthrough": _NUM, "ratio": _OPT_NUM,
                 "ratios": [_OPT_NUM], "target_ratio": _OPT_NUM, "met": (bool, type(None))}],
}


# -- mounts as processes ------------------------------------------------------------


class MountProcess:
    """One FUSE mount served by a child process (argv), mounted at ``path``.
    ``start()`` waits until the mount point answers; ``stop()`` unmounts
    (fusermount -u, then SIGTERM, SIGKILL and a lazy unmount as fallbacks)
    and always leaves nothing mounted."""

    def __init__(self, name: str, argv: list[str], path: str, log_path: str):
        self.name, self.argv, self.path, self.log_path = name, argv, path, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MountProcess":
        from cistern.core import procs

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=procs.child_env())
        deadline = time.monotonic() + mount_timeout_s
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} mount exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not mount {self.path} in {mount_timeout_s:.0f} s: "
                                   f"{self.log_tail()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if os.path.ismount(self.path):
            subprocess.run(["fusermount", "-u", self.path], capture_output=True, timeout=unmount_timeout_s)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                self.proc.wait(unmount_timeout_s if sig == signal.SIGTERM else 10)
                break
            except subprocess.TimeoutExpired:
                self.proc.send_signal(sig)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if os.path.ismount(self.path):
            subprocess.run(["fusermount", "-u", "-z", self.path], capture_output=True, timeout=unmount_timeout_s)

    def log_tail(self, n_bytes: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n_bytes))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


def cistern_mount_argv(path: str, cluster: str, options: list[str]) -> list[str]:
    from cistern.metadata.proc_testing import cistern_command

    argv = cistern_command() + ["mount", path, "--cluster", cluster, "--foreground"]
    return argv + [a for o in options for a in ("-o", o)]


def passthrough_argv(source: str, path: str, options: list[str]) -> list[str]:
    argv = [sys.executable, "-P", "-m", "cistern.fuse.passthrough", source, path]
    return argv + [a for o in options for a in ("-o", o)]


# -- the local cluster ----------------------------------------------------------------


class LocalCluster:
    """3 metad + ``local_nodes`` storage nodes in ``workdir``, ready for a mount."""

    def __init__(self, workdir: str):
        import pathlib

        from cistern.blockstore.testing import StorageCluster

        self.cluster = StorageCluster(pathlib.Path(workdir), block_size=block_bytes)
        try:
            for i in range(local_nodes):
                self.cluster.start_node(f"n{i + 1}")
            self._wait_nodes()
        except BaseException:
            self.cluster.stop()
            raise

    @property
    def addresses(self) -> str:
        return self.cluster.addresses

    def _wait_nodes(self) -> None:
        from cistern.client import connect
        from cistern.client.testing import wait_nodes_live

        with connect(self.addresses) as client:
            wait_nodes_live(client, self.cluster.nodes, timeout_s=60.0)

    def stop(self) -> None:
        self.cluster.stop()


# -- sequential I/O: worker processes ---------------------------------------------------


def _chunk(payload: bytes, worker: int, index: int) -> bytes:
    """Chunk ``index`` of ``worker``'s file: the payload stamped with both,
    so the read-back can tell a misplaced or stale chunk."""
    return struct.pack("<QQ", worker, index) + payload[16:]


def _io_worker(spec, barrier, results):
    """Write or read one file in chunks after the barrier; put a part
    (``report.phase_record``'s input) on ``results``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # the parent decides when to stop
    k, path, chunks, size = spec["worker"], spec["path"], spec["chunks"], spec["chunk_bytes"]
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    pc = time.perf_counter_ns
    lats: list[int] = []
    errors, first = 0, None
    try:
        if spec["mode"] == "read":
            evict([path])                    # the kernel's pages of this FUSE file: reads go to the mount
        barrier.wait()
        start = time.monotonic_ns()
        stamp = pc()
        if spec["mode"] == "write":
            with open(path, "wb", buffering=0) as f:
                for i in range(chunks):
                    f.write(_chunk(payload, k, i))
                    now = pc()
                    lats.append(now - stamp)
                    stamp = now
        else:
            buf = bytearray(size)
            with open(path, "rb", buffering=0) as f:
                for i in range(chunks):
                    got = f.readinto(buf)
                    now = pc()
                    lats.append(now - stamp)
                    stamp = now
                    if got != size or struct.unpack_from("<QQ", buf) != (k, i):
                        errors += 1
                        first = first or f"{path}: chunk {i} read back wrong ({got} bytes)"
                        break
                if f.readinto(buf):
                    errors += 1
                    first = first or f"{path}: longer than written"
        end = time.monotonic_ns()
    except Exception as e:      # counted and reported, as the metadata runner does
        errors, first = errors + 1, f"{type(e).__name__}: {e}"
        start = end = time.monotonic_ns()
    results.put({"worker": k, "ops": len(lats), "errors": errors, "first_error": first, "start_ns": start,
                 "end_ns": end, "hist": report.histogram(lats), "sum_ns": sum(lats), "max_ns": max(lats, default=0)})


def run_io(base: str, mode: str, procs: int, total_mib: int, chunk_bytes: int) -> tuple[dict, int]:
    """One sequential phase (``mode`` "write" or "read") by ``procs``
    processes on files ``base/seq-<k>``; (phase record, bytes moved)."""
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("spawn")      # no fork: the parent may hold gRPC channels
    per_proc = max(1, total_mib * MiB // procs // chunk_bytes)
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [ctx.Process(target=_io_worker, daemon=True, name=f"bench-io-{k}",
                           args=({"worker": k, "path": os.path.join(base, f"seq-{k}"), "chunks": per_proc,
                                  "chunk_bytes": chunk_bytes, "mode": mode}, barrier, results))
               for k in range(procs)]
    for w in workers:
        w.start()
    parts = []
    try:
        deadline = time.monotonic() + io_timeout_s
        dead_since = None
        while len(parts) < procs:
            try:
                parts.append(results.get(timeout=runner.poll_interval_s))
            except queue.Empty:
                # A finished worker's message may still be in the pipe: a moment's grace.
                heard = {p["worker"] for p in parts}
                if any(w.exitcode is not None and k not in heard for k, w in enumerate(workers)):
                    dead_since = dead_since or time.monotonic()
                if time.monotonic() > deadline or (dead_since and time.monotonic() - dead_since > 3.0):
                    raise RuntimeError(f"sequential {mode}: a worker died or went silent") from None
    finally:
        barrier.abort()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
    record = report.phase_record(f"seq-{mode}", parts, procs * per_proc, None)
    moved = sum(p["ops"] for p in parts) * chunk_bytes
    return record, moved


# -- one target at one process count -------------------------------------------------


def measure(mount: str, target: str, procs: int, args, progress, round_no: int = 0,
            pid: int | None = None) -> tuple[dict, list[dict]]:
    """Every phase on one mount with ``procs`` processes, as round
    ``round_no``: (result, metrics). ``pid``: the mount's process, whose
    CPU per GiB of each sequential phase is measured too."""
    run_id = f"{target}-p{procs}-{time.time_ns() // 1000 % (1 << 40):x}"
    shape = Shape(procs, max(1, args.files // procs), depth=0, fanout=1, shared_dir=True, run_id=run_id)
    phases = []
    metadata_plans = () if args.seq_only else (
        ([("dir-create", False), ("file-create", True)], True),
        ([("stat", True), ("readdir", True), ("file-remove", False), ("dir-remove", False)], False))
    # Two runs of the runner on the same tree, with a pause between them
    # longer than the kernel's attribute and entry timeouts, so the stats
    # reach the filesystem on both mounts whatever the create rates were.
    for plan, keep in metadata_plans:
        outcome = runner.run_target("mount", mount, None, shape, 1, plan, keep=keep, progress=progress,
                                    label=f"{target} x{procs}")
        if outcome["interrupted"]:
            raise KeyboardInterrupt
        phases += outcome["phases"]
        if keep:
            time.sleep(args.settle_s)
    io_dir = os.path.join(mount, f"seq-{run_id}")
    os.mkdir(io_dir)
    try:
        moved, cpu_s = {}, {}
        for mode in ("write", "read"):
            before = _mount_cpu_s(pid)
            record, moved[mode] = run_io(io_dir, mode, procs, args.mib, args.chunk_kib * 1024)
            after = _mount_cpu_s(pid)
            cpu_s[mode] = None if before is None or after is None else after - before
            phases.append(record)
    finally:
        shutil.rmtree(io_dir, ignore_errors=True)
    by = {p["phase"]: p for p in phases}
    values = {} if args.seq_only else {"creates": by["file-create"]["ops_per_s"], "stats": by["stat"]["ops_per_s"],
                                       "readdir": by["readdir"]["elapsed_s"]}
    for mode in ("write", "read"):
        elapsed = by[f"seq-{mode}"]["elapsed_s"]
        values[f"seq-{mode}"] = round(moved[mode] / 1e6 / elapsed, 1) if elapsed > 0 else 0.0
        if cpu_s[mode] is not None and moved[mode]:
            values[f"seq-{mode}-cpu"] = round(cpu_s[mode] / (moved[mode] / GiB), 3)
    result = {"target": target, "procs": procs, "round": round_no, "fs_type": report.fs_type(mount),
              "phases": phases}
    metrics = [{"metric": m, "target": target, "procs": procs, "round": round_no, "value": v, "unit": UNITS[m]}
               for m, v in values.items()]
    return result, metrics


def _mount_cpu_s(pid: int | None) -> float | None:
    """The mount process's CPU seconds so far; None without a pid or when
    it has exited (its failed operations are reported as errors)."""
    try:
        return process_cpu_s(pid) if pid else None
    except OSError:
        return None


def _ratio(metric: str, cistern: float, passthrough: float) -> float | None:
    """Cistern / passthrough (for a time or a cost, the inverse:
    passthrough / Cistern), so higher is better everywhere; None when
    undefined."""
    num, den = (passthrough, cistern) if UNITS[metric] in LOWER_IS_BETTER else (cistern, passthrough)
    return round(num / den, 4) if den else None


def compare(metrics: list[dict]) -> list[dict]:
    """Per metric and process count: each side's median over the rounds,
    each round's ratio, and their median, judged against the target. Only
    rounds that measured both sides count."""
    got: dict[tuple, dict[int, float]] = {}
    for m in metrics:
        got.setdefault((m["metric"], m["procs"], m["target"]), {})[m["round"]] = m["value"]
    out = []
    for (metric, procs, target), mine in got.items():
        base = got.get((metric, procs, "passthrough"), {})
        rounds = sorted(set(mine) & set(base))
        if target != "cistern" or not rounds:
            continue
        ratios = [_ratio(metric, mine[r], base[r]) for r in rounds]
        defined = [r for r in ratios if r is not None]
        ratio = round(statistics.median(defined), 4) if defined else None
        want = TARGETS[metric]
        out.append({"metric": metric, "procs": procs,
                    "cistern": statistics.median(mine[r] for r in rounds),
                    "passthrough": statistics.median(base[r] for r in rounds),
                    "ratio": ratio, "ratios": ratios, "target_ratio": want,
                    "met": None if want is None or ratio is None else ratio >= want})
    return out


def table(doc: dict) -> str:
    cfg = doc["config"]
    lines = [f"cistern bench fuse: {cfg['files']} files in one directory, {cfg['mib']} MiB sequential "
             f"in {cfg['chunk_kib']} KiB calls; processes {','.join(map(str, cfg['procs']))}; "
             f"{cfg['rounds']} round(s)",
             f"{'metric':<23} {'procs':>5} {'cistern':>12} {'passthrough':>12} {'ratio':>7} {'target':>7}"
             f"{'':8} rounds"]
    percent = lambda r: "-" if r is None else f"{r * 100:.0f}%"   # noqa: E731
    for c in doc["compare"]:
        unit = UNITS[c["metric"]]
        want = "" if c["target_ratio"] is None else f">={c['target_ratio'] * 100:.0f}%"
        verdict = "" if c["met"] is None else ("ok" if c["met"] else "MISSED")
        digits = {"s": 4, "CPU-s/GiB": 2}.get(unit, 1)
        lines.append(f"{c['metric'] + ' ' + unit:<23} {c['procs']:>5} {c['cistern']:>12.{digits}f} "
                     f"{c['passthrough']:>12.{digits}f} {percent(c['ratio']):>7} {want:>7}  {verdict:<6} "
                     f"{' '.join(percent(r) for r in c['ratios'])}".rstrip())
    lines.append("(medians over the rounds; readdir: seconds to list, and -cpu: the mount process's CPU "
                 "per GiB moved; their ratio is passthrough / Cistern)")
    for r in doc["results"]:
        for p in r["phases"]:
            if p["errors"]:
                lines.append(f"{r['target']} x{r['procs']} round {r['round']} {p['phase']}: {p['errors']} errors, "
                             f"first: {p['first_error']}")
    return "\n".join(lines)


def failed(doc: dict) -> list[str]:
    """Operations that failed and self-checks that did not hold."""
    out = []
    for r in doc["results"]:
        for p in r["phases"]:
            where = f"{r['target']} x{r['procs']} round {r['round']} {p['phase']}"
            if p["errors"]:
                out.append(f"{where}: {p['errors']} errors (first: {p['first_error']})")
            if p["verify"] is not None and not p["verify"]["ok"]:
                out.append(f"{where}: self-check failed: {p['verify']}")
    return out


# -- the command ----------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None,
                   help="cluster.json or metadata addresses to mount (default: a fresh local cluster "
                        "of 3 metad + 3 nodes for this run)")
    p.add_argument("--files", type=int, default=10_000,
                   help="files created, stat'ed and listed in one directory (default 10000)")
    p.add_argument("--mib", type=int, default=1024, help="sequential bytes in MiB, over all processes (default 1024)")
    p.add_argument("--chunk-kib", type=int, default=1024, help="bytes per write/read call in KiB (default 1024)")
    p.add_argument("--procs", default="1,4", help="process counts to measure, comma-separated (default 1,4)")
    p.add_argument("--rounds", type=int, default=3,
                   help="times the whole comparison runs, the mounts taking turns; medians are reported "
                        "(default 3)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="extra FUSE options for BOTH mounts (repeatable)")
    p.add_argument("--seq-only", action="store_true",
                   help="only the sequential write and read phases (no creates, stats or listing)")
    p.add_argument("--settle-s", type=float, default=settle_s,
                   help=f"pause between the creates and the stats, longer than the kernel's attribute and "
                        f"entry timeouts of both mounts (default {settle_s})")
    p.add_argument("--dir", default=None, help="where the local cluster keeps its data (default: a temp dir)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the JSON record here ('-': stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_procs(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"bad --procs {text!r}: use e.g. 1,4")
    return values


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args, prog: str = "cistern bench fuse") -> int:
    try:
        procs_list = _parse_procs(args.procs)
        if args.files < 1 or args.mib < 1 or args.chunk_kib < 1 or args.rounds < 1:
            raise ValueError("--files, --mib, --chunk-kib and --rounds must be >= 1")
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the mounts and the local cluster are removed.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    scratch = tempfile.mkdtemp(prefix="cistern-bench-fuse-", dir=args.dir)
    source = tempfile.mkdtemp(prefix="cistern-bench-fuse-src-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    local = None
    mounts: dict[str, MountProcess] = {}
    results, metrics = [], []
    interrupted = False
    try:
        cluster = args.cluster or os.environ.get("CISTERN_CLUSTER")
        if not cluster:
            local = LocalCluster(os.path.join(scratch, "cluster"))
            # cluster.json with the nodes, as `cistern up --mount` gives the mount:
            # the mount shares the nodes' host and reads their blocks short-circuit.
            cluster = local.cluster.cluster_json()
        for name in TARGET_NAMES[::-1]:
            path = os.path.join(scratch, f"mnt-{name}")
            os.makedirs(path)
            argv = (cistern_mount_argv(path, cluster, args.options) if name == "cistern"
                    else passthrough_argv(source, path, args.options))
            mounts[name] = MountProcess(name, argv, path, os.path.join(scratch, f"{name}.log")).start()
        progress = runner.Progress(not args.no_progress)
        for round_no in range(args.rounds):
            for procs in procs_list:
                for name in TARGET_NAMES[::-1]:        # the ceiling first, then Cistern, at each count
                    result, found = measure(mounts[name].path, name, procs, args, progress, round_no,
                                            pid=mounts[name].proc.pid)
                    results.append(result)
                    metrics.extend(found)
    except KeyboardInterrupt:
        interrupted = True
    except RuntimeError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        for m in mounts.values():
            m.stop()
        if local is not None:
            local.stop()
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    doc = {"schema": SCHEMA_ID, "command": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
           "started_at": started_wall.isoformat(timespec="seconds"),
           "duration_s": round(time.monotonic() - started, 3), "interrupted": interrupted,
           "config": {"files": args.files, "mib": args.mib, "chunk_kib": args.chunk_kib, "procs": procs_list,
                      "rounds": args.rounds,
                      "cluster": args.cluster or ("local (temporary, removed)" if local else cluster),
                      "options": list(args.options), "passthrough_source": "tmpfs"},
           "versions": report.versions(), "machine": report.machine(),
           "results": results, "metrics": metrics, "compare": compare(metrics)}
    report.emit(doc, table(doc), args.json)
    if interrupted:
        print(f"{prog}: interrupted: the report is partial", file=sys.stderr)
        return 130
    problems = failed(doc)
    for line in problems:
        print(f"{prog}: {line}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cistern.bench.fuse_bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
