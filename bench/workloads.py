"""mdtest-style metadata workloads, as pure data: which operations each
client performs in each phase, on which paths. No I/O here; the drivers in
``runner.py`` (os calls, the client library) and ``direct.py`` (the state
machine, the Raft group) carry the operations out.

Layout of one run (paths relative to the target's base directory)::

    bench-<run>/c<k>/            unique-directory mode: client k's own top
    bench-<run>/shared/          shared-directory mode: one top for all clients
        d0/ .. d<F-1>/           the tree: depth D, fanout F (D = 0: the top alone)
           d0/ ..                 files live in the leaves (the deepest level)

* Files: client k's file i is ``f<k>.<i>`` in leaf ``(i + k) % L`` (L leaves),
  so in shared mode every leaf holds files of every client.
* Tree directories are created top level first and removed deepest first;
  each level is one *step* (the driver drains in-flight operations between
  steps, and in shared mode all clients meet on a barrier, since a level
  needs its parents). In shared mode the tree is split among the clients
  (directory j of a level belongs to client j % N); in unique mode each
  client makes its whole tree.
* rename: file i goes to ``r<k>.<i>``: within its leaf for even i, into
  the next leaf (``+1``, a cross-directory rename) for odd i.
* readdir: every client lists every leaf of its tree (shared mode: every
  shared leaf), once.

Phase order is fixed (``PHASES``). Phases not asked for but needed to set
up or clean up (``SETUP_PHASES``, ``CLEANUP_PHASES``) still run, untimed and
unreported (``--keep`` skips the cleanup).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

PHASES = ("dir-create", "file-create", "stat", "open-close", "readdir", "rename",
          "file-remove", "dir-remove")
SETUP_PHASES = ("dir-create", "file-create")
CLEANUP_PHASES = ("file-remove", "dir-remove")

# Operation kinds (one per os call / client method; "open-close" is a pair
# counted as one operation, as mdtest counts it).
MKDIR, CREATE, STAT, OPEN_CLOSE, LISTDIR, RENAME, UNLINK, RMDIR = (
    "mkdir", "create", "stat", "open-close", "listdir", "rename", "unlink", "rmdir")

tree_dirs_max = 1 << 20          # refuse trees that would not fit a benchmark run


@dataclass(frozen=True)
class Shape:
    """What a run asks for (the knobs that shape the namespace)."""

    clients: int
    files_per_client: int
    depth: int = 1
    fanout: int = 4
    shared_dir: bool = False
    run_id: str = "0"
    seed: int | None = None      # shuffles the stat and open-close order (mdtest -R)

    def __post_init__(self):
        assert self.clients >= 1 and self.files_per_client >= 0
        assert self.depth >= 0 and self.fanout >= 1
        assert tree_size(self.depth, self.fanout) <= tree_dirs_max, "tree too large"


def tree_size(depth: int, fanout: int) -> int:
    """Directories in one tree below its top: F + F^2 + ... + F^D."""
    return sum(fanout ** level for level in range(1, depth + 1))


def tree_levels(depth: int, fanout: int) -> list[list[str]]:
    """The tree's directories, level by level, as relative paths."""
    levels: list[list[str]] = []
    previous = [""]
    for _ in range(depth):
        current = [f"{parent}d{j}/" for parent in previous for j in range(fanout)]
        levels.append(current)
        previous = current
    return [[p.rstrip("/") for p in level] for level in levels]


def run_root(shape: Shape) -> str:
    return f"bench-{shape.run_id}"


def client_top(shape: Shape, client: int) -> str:
    return f"{run_root(shape)}/shared" if shape.shared_dir else f"{run_root(shape)}/c{client}"


def tops(shape: Shape) -> list[str]:
    """The top directories the set-up creates (untimed) before dir-create."""
    return [client_top(shape, 0)] if shape.shared_dir else [client_top(shape, k) for k in range(shape.clients)]


@functools.lru_cache(maxsize=1024)
def leaves(shape: Shape, client: int) -> list[str]:
    """The deepest directories of ``client``'s tree (cached: do not mutate)."""
    top = client_top(shape, client)
    levels = tree_levels(shape.depth, shape.fanout)
    return [f"{top}/{d}" for d in levels[-1]] if levels else [top]


def file_path(shape: Shape, client: int, i: int, renamed: bool = False) -> str:
    ls = leaves(shape, client)
    leaf = (i + client) % len(ls)
    if renamed:
        return f"{ls[(leaf + i % 2) % len(ls)]}/r{client}.{i}"
    return f"{ls[leaf]}/f{client}.{i}"


def _my_dirs(shape: Shape, client: int, level: list[str]) -> list[str]:
    top = client_top(shape, client)
    if shape.shared_dir:
        return [f"{top}/{d}" for j, d in enumerate(level) if j % shape.clients == client]
    return [f"{top}/{d}" for d in level]


def _ordered(shape: Shape, client: int, items: list) -> list:
    if shape.seed is None:
        return items
    items = list(items)
    random.Random(shape.seed * 1_000_003 + client).shuffle(items)
    return items


def steps(shape: Shape, phase: str, client: int, *, renamed: bool = False) -> list[list[tuple]]:
    """The operations of ``client`` in ``phase``: a list of steps, each a
    list of ``(kind, path)`` or ``(RENAME, src, dst)``. ``renamed``: the
    files carry their post-rename names (the rename phase ran)."""
    n = shape.files_per_client
    levels = tree_levels(shape.depth, shape.fanout)
    if phase == "dir-create":
        return [[(MKDIR, p) for p in _my_dirs(shape, client, level)] for level in levels]
    if phase == "dir-remove":
        return [[(RMDIR, p) for p in _my_dirs(shape, client, level)] for level in reversed(levels)]
    if phase == "file-create":
        return [[(CREATE, file_path(shape, client, i)) for i in range(n)]]
    if phase == "stat":
        return [_ordered(shape, client, [(STAT, file_path(shape, client, i, renamed)) for i in range(n)])]
    if phase == "open-close":
        return [_ordered(shape, client, [(OPEN_CLOSE, file_path(shape, client, i, renamed)) for i in range(n)])]
    if phase == "readdir":
        return [[(LISTDIR, p) for p in leaves(shape, client)]]
    if phase == "rename":
        return [[(RENAME, file_path(shape, client, i), file_path(shape, client, i, True)) for i in range(n)]]
    if phase == "file-remove":
        return [[(UNLINK, file_path(shape, client, i, renamed)) for i in range(n)]]
    raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")


def expected_ops(shape: Shape, phase: str) -> int:
    """Operations all clients together perform in ``phase`` (what ``steps``
    yields, counted without building it)."""
    if phase in ("dir-create", "dir-remove"):
        return tree_size(shape.depth, shape.fanout) * (1 if shape.shared_dir else shape.clients)
    if phase == "readdir":
        return shape.clients * (shape.fanout ** shape.depth)
    if phase in PHASES:
        return shape.clients * shape.files_per_client
    raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")


def phases_to_run(selected: list[str], keep: bool = False) -> list[tuple[str, bool]]:
    """``[(phase, timed), ...]`` in order: the selected phases timed, plus the
    set-up and clean-up phases they need, untimed. Raises ValueError for an
    unknown phase."""
    unknown = [p for p in selected if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown phase(s) {', '.join(unknown)}; phases: {', '.join(PHASES)}")
    wanted = set(selected)
    out = []
    for phase in PHASES:
        if phase in wanted:
            out.append((phase, True))
        elif phase in SETUP_PHASES or (phase in CLEANUP_PHASES and not keep):
            out.append((phase, False))
    return out


def expected_tree(shape: Shape, after: str, renamed: bool) -> dict:
    """What the namespace under the run root must hold after ``after`` ran
    (for the harness's self-check): ``{"dirs": n, "files": n}`` counting the
    tree directories (not the tops) and the files."""
    dirs = tree_size(shape.depth, shape.fanout) * (1 if shape.shared_dir else shape.clients)
    files = shape.clients * shape.files_per_client
    state = {"dir-create": (dirs, 0), "file-create": (dirs, files), "stat": (dirs, files),
             "open-close": (dirs, files), "readdir": (dirs, files), "rename": (dirs, files),
             "file-remove": (dirs, 0), "dir-remove": (0, 0)}[after]
    return {"dirs": state[0], "files": state[1]}
