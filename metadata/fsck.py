"""Block health of files (pure): what ``cistern fsck [PATH]`` reports.

``check(files, registry, replication_default)`` takes FileBlocks (from
FSCK_SCAN pages) and the leader's NodeRegistry and returns an ``FsckResult``:
one ``FileReport`` per file with a problem, a summary of counts, ``complete``
(the registry is settled, so an absent report means an absent copy) and the
``at_risk`` verdict the command's exit status follows.

Per block, ``good`` = live holders minus corrupt replicas, plus the
replicas the layout records on live nodes that have not reported them yet
and are not proven absent (``NodeRegistry.unreported``: a write's block
reports reach the leader up to a report interval after its commit, so a
late report is not an absent copy; a replica the node's reports have shown
gone is), ``r`` = the file's replication factor:

* ``missing``: no good copy (data lost unless a dead node comes back);
* ``corrupt``: at least one reported corrupt replica;
* ``under``: 0 < good < r; ``over``: good > r.

At risk: any missing block, or any block with fewer good copies than
``min(r, 2)`` (one more failure loses it). A cluster with fewer live nodes
than ``r`` is under-replicated but not at risk as long as every block has
two good copies; an incomplete registry (just after a leader change) makes
the result provisional, which the caller shows. The summary's
``unreported`` counts the replicas taken as good before their reports.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from cistern.metadata import limits
from cistern.metadata.nodes import NodeRegistry
from cistern.metadata.replication import FileBlocks

__all__ = ["BlockProblem", "FileReport", "FsckResult", "check"]

STATES = ("missing", "corrupt", "under", "over")


@dataclasses.dataclass(frozen=True)
class BlockProblem:
    index: int                 # position in the layout
    block_id: bytes
    states: tuple              # a subset of STATES, in that order
    good_nodes: tuple
    corrupt_nodes: tuple
    recorded_nodes: tuple


@dataclasses.dataclass(frozen=True)
class FileReport:
    ino: int
    replication: int
    blocks: int
    problems: tuple            # BlockProblem, in layout order
    at_risk: bool


@dataclasses.dataclass
class FsckResult:
    files: list
    summary: dict
    at_risk: bool
    complete: bool


def _block_problem(index: int, block, r: int, registry: NodeRegistry, summary: dict):
    corrupt = registry.corrupt(block.block_id)
    unreported = registry.unreported(block.block_id, block.recorded)
    summary["unreported"] += len(unreported)
    good = (registry.holders(block.block_id) - corrupt) | unreported
    states = []
    if not good:
        states.append("missing")
    if corrupt:
        states.append("corrupt")
    if 0 < len(good) < r:
        states.append("under")
    if len(good) > r:
        states.append("over")
    risky = len(good) < min(r, 2)
    if not states:
        return None, risky
    return BlockProblem(index, block.block_id, tuple(states), tuple(sorted(good)),
                        tuple(sorted(corrupt)), tuple(block.recorded)), risky


def check(files: Iterable[FileBlocks], registry: NodeRegistry, *,
          replication_default: int = limits.replication_default) -> FsckResult:
    reports = []
    summary = {"files": 0, "blocks": 0, "files_with_problems": 0, "at_risk_files": 0,
               **{state: 0 for state in STATES}, "unreported": 0}
    for f in files:
        r = f.replication or replication_default
        problems, file_risky = [], False
        for index, block in enumerate(f.blocks):
            problem, risky = _block_problem(index, block, r, registry, summary)
            file_risky = file_risky or risky
            if problem is not None:
                problems.append(problem)
                for state in problem.states:
                    summary[state] += 1
        summary["files"] += 1
        summary["blocks"] += len(f.blocks)
        if problems or file_risky:
            summary["files_with_problems"] += 1
            summary["at_risk_files"] += file_risky
            reports.append(FileReport(f.ino, r, len(f.blocks), tuple(problems), file_risky))
    summary["live_nodes"] = len(registry.live_nodes())
    return FsckResult(reports, summary, summary["at_risk_files"] > 0, registry.settled())
