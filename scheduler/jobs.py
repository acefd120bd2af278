"""``cistern run``: the built-in data-local batch framework.

``run_job(client, JobSpec(...))`` runs one task per block of the input (a
Cistern file, or every regular file directly in a Cistern directory), each
preferring the nodes that hold its block (delay scheduling through the SDK,
``framework.py``), waits for all of them (or ``wait_s``), and returns the
summary (``summarize``): per task its name, attempt id, node, state,
duration, whether its input was local, input bytes and bytes read locally
and remotely (as the agent counted them), attempts, exit code, reason and
message, the end of its stderr, and where its output went; plus ``locality_bytes_fraction``, the
fraction of all input bytes read on the node that ran the task.

Each task sees its block as ``$CISTERN_INPUT`` (read-only) and writes to
``$CISTERN_OUTPUT``; with an output directory the agent stores those files
under ``<output_dir>/<task id>/`` before reporting the task finished.
"""

from __future__ import annotations

import logging
import os
import re
import stat as stat_module
from dataclasses import dataclass, field

from cistern.scheduler import framework as framework_module
from cistern.scheduler.framework import Framework

__all__ = ["JobSpec", "parse_mem", "job_inputs", "run_job", "summarize", "table"]

log = logging.getLogger(__name__)

job_name_default = "cistern-run"
stderr_tail_bytes_max = 1024      # of each task's captured stderr, in the summary

_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_mem(text: str) -> int:
    """"256M", "1G", "512MiB", "64k", "1048576" -> bytes (powers of 1024).
    Raises ValueError with a one-line reason."""
    found = _MEM.match(str(text))
    if not found:
        raise ValueError(f"bad memory size {text!r}: use e.g. 256M, 1G or a byte count")
    value = int(float(found.group(1)) * _UNITS[found.group(2).upper()])
    if value <= 0:
        raise ValueError(f"bad memory size {text!r}: must be more than 0 bytes")
    return value


@dataclass
class JobSpec:
    input_path: str
    argv: list
    cpus: float = framework_module.cpus_default
    mem_bytes: int = framework_module.mem_bytes_default
    output_dir: str | None = None
    wait_s: float | None = None               # None: until every task is final
    locality_wait_s: float = 1.0
    name: str = job_name_default
    env: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raises ValueError for what no cluster could run."""
        if not self.argv or not str(self.argv[0]):
            raise ValueError("no command given (put it after --, e.g. cistern run --input F -- wc -l)")
        if not self.cpus > 0:
            raise ValueError(f"--cpus must be more than 0 (got {self.cpus})")
        if self.mem_bytes <= 0:
            raise ValueError("--mem must be more than 0 bytes")
        if self.wait_s is not None and self.wait_s <= 0:
            raise ValueError(f"--wait must be more than 0 seconds (got {self.wait_s})")
        if self.locality_wait_s < 0:
            raise ValueError("the locality wait must be >= 0 seconds")


def job_inputs(client, path: str) -> list:
    """The job's blocks, in file order: [{"block_id", "path", "offset",
    "length", "nodes", "addresses"}]. ``path`` is a file, or a directory
    whose regular files (not recursively) are the input; an empty input
    has no blocks. Raises OSError (ENOENT, EACCES, EINVAL for anything but
    a file or directory) as the client does."""
    st = client.stat(path)
    if stat_module.S_ISDIR(st.st_mode):
        files = sorted(e.path for e in client.scandir(path) if e.is_file())
    elif stat_module.S_ISREG(st.st_mode):
        files = [path]
    else:
        raise OSError(22, "not a regular file or directory", path)
    out = []
    for name in files:
        name = name if isinstance(name, str) else os.fsdecode(name)
        out.extend(dict(b, path=name) for b in client.block_locations(name))
    return [b for b in out if b["length"] > 0]


def run_job(client, spec: JobSpec, *, on_update=None, framework_factory=Framework) -> dict:
    """Run the job to its end (or ``spec.wait_s``); its summary. Tasks
    still not final at the deadline are killed and reported in the state
    they had. Raises ValueError (bad spec), OSError (bad input or output
    path), CisternError (the scheduler refused the framework). Ctrl-C
    (KeyboardInterrupt) tears the framework down, killing its tasks."""
    spec.check()
    blocks = job_inputs(client, spec.input_path)
    if spec.output_dir:
        client.makedirs(spec.output_dir, exist_ok=True)
    fw = framework_factory(None, spec.name, locality_wait_s=spec.locality_wait_s, on_update=on_update,
                           client=client)
    try:
        tasks = [fw.submit(name, spec.argv, inputs=[block], cpus=spec.cpus, mem_bytes=spec.mem_bytes,
                           output_dir=spec.output_dir, env=spec.env)
                 for name, block in zip(_task_names(blocks), blocks)]
        finished_in_time = fw.wait(spec.wait_s)
        if not finished_in_time:
            for task in tasks:
                if not task.final:
                    fw.kill(task)
        summary = summarize(tasks, spec.output_dir)
        summary["timed_out"] = not finished_in_time
        summary["framework_id"] = fw.framework_id
        return summary
    finally:
        fw.close()


def _task_names(blocks: list) -> list:
    """``<file name>.<block number in that file>`` for each block."""
    seen: dict = {}
    names = []
    for block in blocks:
        i = seen[block["path"]] = seen.get(block["path"], -1) + 1
        names.append(f"{os.path.basename(block['path'].rstrip('/')) or 'input'}.{i:05d}")
    return names


def summarize(tasks, output_dir: str | None = None) -> dict:
    """The job's summary (see the module docstring) from the SDK's task
    handles. A task's local bytes are what its agent counted; when its agent
    counted nothing, those of a finished task placed on a node holding its
    block (the agent reads a local block from its own store), else none."""
    rows = [_row(t, output_dir) for t in tasks]
    total = sum(r["input_bytes"] for r in rows)
    local = sum(min(r["bytes_local"], r["input_bytes"]) for r in rows)
    return {"tasks": rows, "tasks_total": len(rows),
            "tasks_finished": sum(1 for r in rows if r["state"] == "TASK_FINISHED"),
            "input_bytes": total, "bytes_local": local,
            "locality_bytes_fraction": round(local / total, 4) if total else 1.0,
            "output_dir": output_dir or None}


def _row(task, output_dir: str | None) -> dict:
    finished = task.state == "TASK_FINISHED"
    counted = task.bytes_local + task.bytes_remote > 0
    bytes_local = task.bytes_local if counted else (task.input_bytes if finished and task.local else 0)
    return {"task": task.name, "task_id": task.task_id, "node": task.node_id or None, "state": task.state,
            "duration_s": None if task.duration_s is None else round(task.duration_s, 3),
            "local": task.local, "input_bytes": task.input_bytes, "bytes_local": int(bytes_local),
            "bytes_remote": int(task.bytes_remote), "attempts": len(task.attempts),
            "exit_code": task.exit_code if task.final else None, "reason": task.reason or None,
            "message": task.message or None,
            "stderr_tail": task.stderr_tail[-stderr_tail_bytes_max:].decode(errors="replace") or None,
            "output": f"{output_dir.rstrip('/')}/{task.task_id}" if (output_dir and finished) else None}


def table(summary: dict) -> str:
    """The summary as a text table, one row per task, then the totals."""
    header = f"{'TASK':<24} {'NODE':<8} {'STATE':<14} {'DURATION':>9} {'LOCAL':<5} {'INPUT':>10} {'ATT':>3}  NOTE"
    lines = [header]
    for r in summary["tasks"]:
        duration = "-" if r["duration_s"] is None else f"{r['duration_s']:.2f}s"
        local = {True: "yes", False: "no", None: "-"}[r["local"]]
        note = "" if r["state"] == "TASK_FINISHED" else " ".join(x for x in (r["reason"], r["message"]) if x)
        if note and r["stderr_tail"]:
            note += f" | {_last_line(r['stderr_tail'])}"
        lines.append(f"{r['task'][:24]:<24} {(r['node'] or '-')[:8]:<8} {r['state'][:14]:<14} {duration:>9} "
                     f"{local:<5} {r['input_bytes']:>10} {r['attempts']:>3}  {_one_line(note)[:80]}")
    lines.append(f"{summary['tasks_finished']} of {summary['tasks_total']} tasks finished; "
                 f"{summary['locality_bytes_fraction']:.1%} of {summary['input_bytes']} input bytes read locally"
                 + (f"; output under {summary['output_dir']}" if summary.get("output_dir") else ""))
    return "\n".join(lines)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
