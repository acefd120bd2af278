"""Benchmark reports: latency histograms, the JSON record and its documented
shape, the text table, ratios for ``--compare``, and the PNG plot.

Latencies are kept as log-bucketed histograms (``bucket_subdivisions`` per
power of two, so a bucket is ~2.2% wide): each client process buckets its own
per-operation latencies, and histograms merge by adding counts, so the
percentiles of a run are those of every operation of every client.

The JSON record (``SCHEMA`` below is its shape; ``validate`` checks a
document against it and the tests use it)::

    {"schema": "cistern.bench.meta/1",
     "command": [argv...], "started_at": ISO-8601 UTC, "duration_s": float,
     "interrupted": bool,                       # Ctrl-C: what ran is reported
     "config": {"via": str, "compare": [str], "clients": int, "inflight": int,
                "files_per_client": int, "depth": int, "fanout": int,
                "phases": [str], "shared_dir": bool, "seed": int|null,
                "sweep": {"param": "clients"|"files", "values": [int]}|null,
                "cluster": str|null, "keep": bool, "baseline_loop": bool},
     "versions": {"cistern", "python", "pysyncobj", "grpcio", "lmdb", "msgpack": str},
     "machine": {"cpu_count": int, "cpu_model": str, "memory_bytes": int,
                 "kernel": str, "hostname": str},
     "results": [                                # one per (sweep point, target)
        {"target": "api" | "path:DIR" | "mount:DIR" | "raft:state" | "raft:group",
         "role": "main" | "compare" | "bare-loop",   # bare-loop: see harness_vs_bare
         "sweep_value": int|null, "clients": int, "files_per_client": int,
         "inflight": int, "fs_type": str|null, "interrupted": bool,
         "phases": [
            {"phase": str,
             "timed": bool,                      # false: a set-up/clean-up phase not asked for
             "ops": int,                         # operations attempted (ok + errors)
             "expected_ops": int,                # what the run asked for
             "errors": int, "first_error": str|null,
             "elapsed_s": float, "ops_per_s": float,
             "latency_us": {"p50", "p99", "p999", "mean", "max": float}|null,
             "histogram": [[bucket_lower_ns, count], ...],
             "verify": {"dirs": int, "files": int, "expected_dirs": int,
                        "expected_files": int, "ok": bool}|null}]}],
     "compare": [{"phase": str, "target": str, "baseline": str,
                  "sweep_value": int|null, "ratio": float|null}],
     "harness_vs_bare": [{"phase": str, "harness_ops_per_s": float,
                          "bare_ops_per_s": float, "ratio": float|null}]}

``elapsed_s`` is from the first client's start to the last client's end,
except with ``--baseline-loop``, where the harness and the bare loop take
turns in each client process: then it is the longest time any client spent
in its own turns (for both, so their ratio is fair).
``ops`` equals ``expected_ops`` unless the run was interrupted; ``errors``
counts every failed operation (never hidden); ``verify`` is the harness's
own check of the namespace after the phase (walking the run's tree).
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys

SCHEMA_ID = "cistern.bench.meta/1"
bucket_subdivisions = 32          # buckets per power of two (~2.2% wide)

# -- histograms ---------------------------------------------------------------


def bucket_of(ns: int) -> int:
    return int(math.log2(ns) * bucket_subdivisions) if ns > 1 else 0


def bucket_lower_ns(bucket: int) -> float:
    return 2.0 ** (bucket / bucket_subdivisions)


def histogram(latencies_ns) -> dict[int, int]:
    """Bucket counts of a sequence of latencies (ns)."""
    counts: dict[int, int] = {}
    for ns in latencies_ns:
        b = bucket_of(ns)
        counts[b] = counts.get(b, 0) + 1
    return counts


def merge(histograms) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in histograms:
        for b, n in h.items():
            out[int(b)] = out.get(int(b), 0) + n
    return out


def percentile_ns(counts: dict[int, int], q: float) -> float | None:
    """The q-quantile (0 < q <= 1): the geometric middle of the bucket that
    holds the ceil(q * total)-th smallest latency."""
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(counts):
        seen += counts[b]
        if seen >= rank:
            return bucket_lower_ns(b + 0.5)
    return bucket_lower_ns(max(counts) + 0.5)


def latency_summary(counts: dict[int, int], sum_ns: int, max_ns: int) -> dict | None:
    total = sum(counts.values())
    if not total:
        return None
    us = lambda ns: round(ns / 1e3, 2)   # noqa: E731
    return {"p50": us(percentile_ns(counts, 0.50)), "p99": us(percentile_ns(counts, 0.99)),
            "p999": us(percentile_ns(counts, 0.999)), "mean": us(sum_ns / total), "max": us(max_ns)}


def phase_record(phase: str, parts: list[dict], expected: int, verify: dict | None, timed: bool = True) -> dict:
    """One phase's result from its clients' parts. A part is what a client
    (or a direct driver) reports: ``ops``, ``errors``, ``first_error``,
    ``start_ns``/``end_ns`` (CLOCK_MONOTONIC, comparable across processes),
    ``hist``, ``sum_ns``, ``max_ns``."""
    ops = sum(p["ops"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    first = next((p["first_error"] for p in parts if p.get("first_error")), None)
    if parts and all("busy_ns" in p for p in parts):
        elapsed = max(p["busy_ns"] for p in parts) / 1e9     # --baseline-loop: turns, see runner
    elif parts:
        elapsed = (max(p["end_ns"] for p in parts) - min(p["start_ns"] for p in parts)) / 1e9
    else:
        elapsed = 0.0
    counts = merge(p["hist"] for p in parts)
    return {"phase": phase, "timed": bool(timed), "ops": ops, "expected_ops": expected, "errors": errors,
            "first_error": first, "elapsed_s": round(elapsed, 6),
            "ops_per_s": round(ops / elapsed, 1) if elapsed > 0 else 0.0,
            "latency_us": latency_summary(counts, sum(p["sum_ns"] for p in parts),
                                          max((p["max_ns"] for p in parts), default=0)),
            "histogram": [[round(bucket_lower_ns(b), 1), n] for b, n in sorted(counts.items())],
            "verify": verify}


# -- the documented shape -------------------------------------------------------

_NUM = (int, float)
_OPT_STR = (str, type(None))
_LATENCY = {"p50": _NUM, "p99": _NUM, "p999": _NUM, "mean": _NUM, "max": _NUM}
_VERIFY = {"dirs": int, "files": int, "expected_dirs": int, "expected_files": int, "ok": bool}
_PHASE = {"phase": str, "timed": bool, "ops": int, "expected_ops": int, "errors": int, "first_error": _OPT_STR,
          "elapsed_s": _NUM, "ops_per_s": _NUM, "latency_us": ("optional", _LATENCY),
          "histogram": [[_NUM]], "verify": ("optional", _VERIFY)}
_RESULT = {"target": str, "role": str, "sweep_value": (int, type(None)), "clients": int,
           "files_per_client": int, "inflight": int, "fs_type": _OPT_STR, "interrupted": bool,
           "phases": [_PHASE]}
SCHEMA = {
    "schema": str, "command": [str], "started_at": str, "duration_s": _NUM, "interrupted": bool,
    "config": {"via": str, "compare": [str], "clients": int, "inflight": int, "files_per_client": int,
               "depth": int, "fanout": int, "phases": [str], "shared_dir": bool,
               "seed": (int, type(None)), "sweep": ("optional", {"param": str, "values": [int]}),
               "cluster": _OPT_STR, "keep": bool, "baseline_loop": bool},
    "versions": {"cistern": str, "python": str, "pysyncobj": str, "grpcio": str, "lmdb": str, "msgpack": str},
    "machine": {"cpu_count": int, "cpu_model": str, "memory_bytes": int, "kernel": str, "hostname": str},
    "results": [_RESULT],
    "compare": [{"phase": str, "target": str, "baseline": str, "sweep_value": (int, type(None)),
                 "ratio": (int, float, type(None))}],
    "harness_vs_bare": [{"phase": str, "harness_ops_per_s": _NUM, "bare_ops_per_s": _NUM,
                         "ratio": (int, float, type(None))}],
}


def validate(doc, schema=SCHEMA, where: str = "$") -> list[str]:
    """Problems found checking ``doc`` against ``schema`` (empty: valid).
    A schema is a type or tuple of types, a dict (every key required, no
    others), a one-item list (every element matches), or
    ``("optional", schema)`` (None or a match)."""
    if isinstance(schema, tuple) and schema and schema[0] == "optional":
        return [] if doc is None else validate(doc, schema[1], where)
    if isinstance(schema, dict):
        if not isinstance(doc, dict):
            return [f"{where}: expected an object, got {type(doc).__name__}"]
        problems = [f"{where}.{k}: missing" for k in schema if k not in doc]
        problems += [f"{where}.{k}: unexpected" for k in doc if k not in schema]
        for k, sub in schema.items():
            if k in doc:
                problems += validate(doc[k], sub, f"{where}.{k}")
        return problems
    if isinstance(schema, list):
        if not isinstance(doc, list):
            return [f"{where}: expected a list, got {type(doc).__name__}"]
        return [p for i, item in enumerate(doc) for p in validate(item, schema[0], f"{where}[{i}]")]
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(doc, bool) and bool not in types:
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got bool"]
    if not isinstance(doc, types):
        return [f"{where}: expected {'/'.join(t.__name__ for t in types)}, got {type(doc).__name__}"]
    return []


# -- facts ---------------------------------------------------------------------------


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("cistern", "pysyncobj", "grpcio", "lmdb", "msgpack"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def machine() -> dict:
    model = platform.processor() or ""
    memory = 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return {"cpu_count": os.cpu_count() or 0, "cpu_model": model or "unknown", "memory_bytes": memory,
            "kernel": f"{platform.system()} {platform.release()}", "hostname": socket.gethostname()}


def fs_type(path: str) -> str | None:
    """The filesystem type holding ``path`` (longest /proc/mounts prefix)."""
    try:
        real = os.path.realpath(path)
        best, kind = "", None
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3:
                    mnt = fields[1].replace("\\040", " ")
                    if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                        best, kind = mnt, fields[2]
        return kind
    except OSError:
        return None


# -- comparisons -----------------------------------------------------------------


def ratios(results: list[dict]) -> list[dict]:
    """Each main result's phases against the compare results of the same
    sweep point: main ops/s divided by baseline ops/s."""
    out = []
    for main in (r for r in results if r["role"] == "main"):
        for base in (r for r in results if r["role"] == "compare" and r["sweep_value"] == main["sweep_value"]):
            rates = {p["phase"]: p["ops_per_s"] for p in base["phases"] if p["timed"]}
            for p in (p for p in main["phases"] if p["timed"]):
                b = rates.get(p["phase"])
                out.append({"phase": p["phase"], "target": main["target"], "baseline": base["target"],
                            "sweep_value": main["sweep_value"],
                            "ratio": round(p["ops_per_s"] / b, 4) if b else None})
    return out


def harness_vs_bare(results: list[dict]) -> list[dict]:
    """Per phase (and sweep point): the harness's ops/s (``main``) against
    the bare loop's (``bare-loop``, run in the same processes in turn with
    it); phases with errors are left out."""
    def best(roles, value):
        rates: dict[str, float] = {}
        for r in results:
            if r["role"] in roles and r["sweep_value"] == value:
                for p in r["phases"]:
                    if p["timed"] and not p["errors"]:
                        rates[p["phase"]] = max(rates.get(p["phase"], 0.0), p["ops_per_s"])
        return rates

    out = []
    for value in dict.fromkeys(r["sweep_value"] for r in results if r["role"] == "bare-loop"):
        harness, bare = best(("main",), value), best(("bare-loop",), value)
        for phase, rate in harness.items():
            if phase in bare:
                out.append({"phase": phase, "harness_ops_per_s": rate, "bare_ops_per_s": bare[phase],
                            "ratio": round(rate / bare[phase], 4) if bare[phase] else None})
    return out


# -- text --------------------------------------------------------------------------


def _fmt_us(value) -> str:
    if value is None:
        return "-"
    return f"{value / 1e3:.2f}ms" if value >= 1e4 else f"{value:.1f}us"


def table(doc: dict) -> str:
    """The per-phase tables, then ratios, as a user reads them."""
    lines = []
    for r in doc["results"]:
        if r["role"] not in ("main", "compare"):
            continue      # the harness-overhead runs are summed up below
        head = f"== {r['target']} ({r['role']}"
        if r["sweep_value"] is not None:
            head += f", {doc['config']['sweep']['param']}={r['sweep_value']}"
        head += (f"): {r['clients']} clients x {r['files_per_client']} files, inflight {r['inflight']}"
                 + (f", fs {r['fs_type']}" if r.get("fs_type") else "")
                 + (" [INTERRUPTED: partial]" if r["interrupted"] else ""))
        lines.append(head)
        lines.append(f"{'phase':<14} {'ops':>8} {'ops/s':>11} {'p50':>9} {'p99':>9} {'p999':>9} {'errors':>7}  verify")
        for p in r["phases"]:
            lat = p["latency_us"] or {}
            v = p["verify"]
            check = "-" if v is None else ("ok" if v["ok"] else
                                            f"FAIL dirs {v['dirs']}/{v['expected_dirs']} files {v['files']}/{v['expected_files']}")
            ops = f"{p['ops']}" if p["ops"] == p["expected_ops"] else f"{p['ops']}/{p['expected_ops']}"
            name = p["phase"] if p["timed"] else f"({p['phase']})"
            lines.append(f"{name:<14} {ops:>8} {p['ops_per_s']:>11.1f} {_fmt_us(lat.get('p50')):>9} "
                         f"{_fmt_us(lat.get('p99')):>9} {_fmt_us(lat.get('p999')):>9} {p['errors']:>7}  {check}")
            if p["errors"] and p["first_error"]:
                lines.append(f"{'':<12} first error: {p['first_error']}")
        if not all(p["timed"] for p in r["phases"]):
            lines.append("(phase): set-up or clean-up the asked phases needed; run, checked, not asked for")
        lines.append("")
    if doc["compare"]:
        lines.append("== ratios (ops/s of the target / ops/s of the baseline)")
        for c in doc["compare"]:
            point = "" if c["sweep_value"] is None else f" @{c['sweep_value']}"
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
            lines.append(f"{c['phase']:<12} {c['target']} / {c['baseline']}{point}: {ratio}")
        lines.append("")
    if doc["harness_vs_bare"]:
        lines.append("== harness vs bare loop (same os calls, one process per client)")
        for h in doc["harness_vs_bare"]:
            ratio = "-" if h["ratio"] is None else f"{h['ratio'] * 100:.1f}%"
            lines.append(f"{h['phase']:<12} harness {h['harness_ops_per_s']:>11.1f}  bare {h['bare_ops_per_s']:>11.1f}"
                         f"  harness/bare {ratio}")
        lines.append("")
    return "\n".join(lines)


# -- the plot ------------------------------------------------------------------------


def emit(doc: dict, text: str, json_target: str | None) -> None:
    """Print ``text`` (the run's table) and, with ``json_target``, write
    ``doc`` as JSON there: a path, or ``-`` for standard output, which the
    JSON then owns (the table goes to standard error)."""
    print(text, file=sys.stderr if json_target == "-" else sys.stdout)
    if not json_target:
        return
    body = json.dumps(doc, indent=1)
    if json_target == "-":
        print(body)
    else:
        with open(json_target, "w", encoding="utf-8") as f:
            f.write(body + "\n")


def plot(doc: dict, out_path: str) -> None:
    """A PNG: ops/s per phase for each target (bars), or, with a sweep,
    ops/s against the swept value (one line per phase and target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=100)
    sweep = doc["config"].get("sweep")
    results = [r for r in doc["results"] if r["role"] in ("main", "compare")]
    if sweep:
        keys = sorted({(r["target"], r["role"]) for r in results}, key=str)
        for target, role in keys:
            rows = sorted((r for r in results if (r["target"], r["role"]) == (target, role)),
                          key=lambda r: r["sweep_value"])
            for phase in [p["phase"] for p in rows[0]["phases"] if p["timed"]] if rows else []:
                xs = [r["sweep_value"] for r in rows]
                ys = [next((p["ops_per_s"] for p in r["phases"] if p["phase"] == phase), 0.0) for r in rows]
                ax.plot(xs, ys, marker="o", label=f"{phase} ({target})")
        ax.set_xlabel(sweep["param"])
        ax.set_xscale("log", base=2)
    else:
        phases = []
        for r in results:
            for p in r["phases"]:
                if p["timed"] and p["phase"] not in phases:
                    phases.append(p["phase"])
        width = 0.8 / max(1, len(results))
        for i, r in enumerate(results):
            rates = {p["phase"]: p["ops_per_s"] for p in r["phases"] if p["timed"]}
            ax.bar([j + i * width for j in range(len(phases))], [rates.get(ph, 0.0) for ph in phases],
                   width, label=f"{r['target']} ({r['role']})")
        ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(phases))])
        ax.set_xticklabels(phases, rotation=20)
    ax.set_ylabel("operations / s")
    cfg = doc["config"]
    ax.set_title(f"cistern bench meta: {cfg['clients']} clients x {cfg['files_per_client']} files, "
                 f"inflight {cfg['inflight']}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out_path, format="png")
    plt.close(fig)


def eprint(*args) -> None:
    print(*args, file=sys.stderr, flush=True)
