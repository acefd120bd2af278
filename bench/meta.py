"""``cistern bench meta``: metadata throughput, the way mdtest and HDFS's
NNThroughputBenchmark measure it.

``run(config)`` runs the workload (``workloads.py``) against the main
target, then any ``--compare`` baselines, and, with ``--baseline-loop`` on a
``path:``/``mount:`` target, the bare loop of the same os calls (in the
same client processes, each phase's bare turn right before or after the
harness's, on a second tree); at each
``--sweep`` point in turn. It returns the JSON record documented in
``report.py``. Starting a cluster for ``--via api`` is the caller's job
(``cli/bench.py``): this package does not import the command line.

Targets: ``api`` (the client library against ``config.cluster``),
``path:DIR`` (os calls on any directory), ``mount:DIR`` (the same on a
mount point: the Cistern FUSE mount when it exists), ``raft`` (both
``raft:state``, the state machine alone, and ``raft:group``, three replicas
without RPC; see ``direct.py``).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field

from . import direct, report, runner, workloads
from .workloads import PHASES, Shape


@dataclass
class Config:
    via: str = "api"
    compare: list[str] = field(default_factory=list)
    clients: int = 4
    inflight: int = 1
    files_per_client: int = 100
    depth: int = 1
    fanout: int = 4
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    shared_dir: bool = False
    seed: int | None = None
    sweep: tuple[str, list[int]] | None = None    # ("clients" | "files", values)
    cluster: str | None = None                    # for api targets
    keep: bool = False                            # leave the tree (skip the unasked clean-up phases)
    baseline_loop: bool = False                   # also run the bare os-call loop (path:/mount: only)

    def check(self) -> None:
        """Raises ValueError for a configuration that cannot run."""
        for spec in [self.via, *self.compare]:
            kind, arg = runner.parse_target(spec)
            if kind in ("path", "mount"):
                runner.check_directory(kind, arg)
        if self.clients < 1 or self.inflight < 1 or self.files_per_client < 0:
            raise ValueError("--clients and --inflight must be >= 1, --files-per-client >= 0")
        if self.depth < 0 or self.fanout < 1:
            raise ValueError("--depth must be >= 0 and --fanout >= 1")
        workloads.phases_to_run(self.phases, self.keep)
        Shape(self.clients, self.files_per_client, self.depth, self.fanout)
        if self.sweep is not None:
            param, values = self.sweep
            if param not in ("clients", "files") or not values or min(values) < (1 if param == "clients" else 0):
                raise ValueError("--sweep takes clients=1,2,4 or files=100,1000 (positive values)")
        if self.baseline_loop and runner.parse_target(self.via)[0] not in ("path", "mount"):
            raise ValueError("--baseline-loop needs --via path:DIR or mount:DIR")

    def as_json(self) -> dict:
        return {"via": self.via, "compare": list(self.compare), "clients": self.clients, "inflight": self.inflight,
                "files_per_client": self.files_per_client, "depth": self.depth, "fanout": self.fanout,
                "phases": list(self.phases), "shared_dir": self.shared_dir, "seed": self.seed,
                "sweep": {"param": self.sweep[0], "values": list(self.sweep[1])} if self.sweep else None,
                "cluster": self.cluster, "keep": self.keep, "baseline_loop": self.baseline_loop}


def parse_sweep(text: str) -> tuple[str, list[int]]:
    """``clients=1,2,4`` -> ("clients", [1, 2, 4]). Raises ValueError."""
    param, _, values = text.partition("=")
    try:
        numbers = [int(v) for v in values.split(",") if v.strip()]
    except ValueError:
        numbers = []
    if param not in ("clients", "files") or not numbers:
        raise ValueError(f"bad --sweep {text!r}: use clients=1,2,4 or files=100,1000")
    return param, numbers


def _run_id(seed: int | None) -> str:
    return str(seed) if seed is not None else "%x" % (time.time_ns() // 1000 % (1 << 40))


def _targets(config: Config) -> list[tuple[str, str, str]]:
    """[(target, role, run-id suffix)]: the main target, the baselines, the bare loop."""
    out = []
    for role, specs in (("main", [config.via]), ("compare", config.compare)):
        for j, spec in enumerate(specs):
            kind, arg = runner.parse_target(spec)
            suffix = "" if role == "main" else f"-cmp{j}"
            if kind == "raft":
                for part in ([arg] if arg else ["state", "group"]):
                    out.append((f"raft:{part}", role, suffix))
            else:
                out.append((f"{kind}:{arg}" if arg else kind, role, suffix))
    return out


def run_one(config: Config, target: str, role: str, shape: Shape, progress) -> dict:
    """One target at one sweep point: ``{"phases", "interrupted"}``."""
    plan = workloads.phases_to_run(config.phases, config.keep)
    kind, arg = runner.parse_target(target)
    label = target if role == "main" else f"{target} ({role})"
    if target == "raft:state":
        return direct.run_state_machine(shape, config.inflight, plan, progress=progress, label=label)
    if target == "raft:group":
        return direct.run_replica_group(shape, config.inflight, plan, progress=progress, label=label)
    return runner.run_target(kind, arg, config.cluster, shape, config.inflight, plan, keep=config.keep,
                             paired=config.baseline_loop and role == "main", progress=progress, label=label)


def run(config: Config, *, argv: list[str] | None = None, progress: runner.Progress | None = None) -> dict:
    """Run everything the configuration asks for; the JSON record. A Ctrl-C
    ends the run early: the record then holds what completed and says
    ``interrupted``."""
    config.check()
    progress = progress or runner.Progress(True)
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    base_id = _run_id(config.seed)
    points = config.sweep[1] if config.sweep else [None]
    results: list[dict] = []
    interrupted = False
    try:
        for pi, value in enumerate(points):
            clients = value if config.sweep and config.sweep[0] == "clients" else config.clients
            files = value if config.sweep and config.sweep[0] == "files" else config.files_per_client
            for target, role, suffix in _targets(config):
                run_id = base_id + (f"-p{pi}" if config.sweep else "") + suffix
                shape = Shape(clients, files, config.depth, config.fanout, config.shared_dir, run_id, config.seed)
                outcome = run_one(config, target, role, shape, progress)
                kind, arg = runner.parse_target(target)
                common = {"target": target, "sweep_value": value, "clients": clients, "files_per_client": files,
                          "inflight": config.inflight,
                          "fs_type": report.fs_type(arg) if kind in ("path", "mount") else None,
                          "interrupted": outcome["interrupted"]}
                results.append({**common, "role": role, "phases": outcome["phases"]})
                if outcome.get("bare_phases"):
                    results.append({**common, "role": "bare-loop", "phases": outcome["bare_phases"]})
                if outcome["interrupted"]:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        interrupted = True
    return {"schema": report.SCHEMA_ID, "command": list(argv or []),
            "started_at": started_wall.isoformat(timespec="seconds"),
            "duration_s": round(time.monotonic() - started, 3), "interrupted": interrupted,
            "config": config.as_json(), "versions": report.versions(), "machine": report.machine(),
            "results": results, "compare": report.ratios(results),
            "harness_vs_bare": report.harness_vs_bare(results)}


def failed(doc: dict) -> list[str]:
    """What a user must not miss: phases with errors or a failed self-check."""
    out = []
    for r in doc["results"]:
        for p in r["phases"]:
            if p["errors"]:
                out.append(f"{r['target']} {p['phase']}: {p['errors']} errors (first: {p['first_error']})")
            if p["verify"] is not None and not p["verify"]["ok"]:
                v = p["verify"]
                out.append(f"{r['target']} {p['phase']}: self-check failed: {v['dirs']} dirs, {v['files']} files; "
                           f"expected {v['expected_dirs']} and {v['expected_files']}")
    return out


__all__ = ["Config", "run", "parse_sweep", "failed"]
