"""The mdtest workload as pure data: counts, tree shape, rename targets,
which phases run, and that the shared tree is split among the clients."""

import collections

import pytest

from cistern.bench import workloads
from cistern.bench.workloads import PHASES, Shape


def all_ops(shape, phase, renamed=False):
    return [op for k in range(shape.clients) for step in workloads.steps(shape, phase, k, renamed=renamed)
            for op in step]


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("depth,fanout", [(0, 1), (1, 4), (2, 3)])
def test_counts_match_what_was_asked(shared, depth, fanout):
    shape = Shape(clients=3, files_per_client=10, depth=depth, fanout=fanout, shared_dir=shared, run_id="t")
    for phase in PHASES:
        assert workloads.expected_ops(shape, phase) == len(all_ops(shape, phase)), phase
    for phase in ("file-create", "stat", "open-close", "rename", "file-remove"):
        assert len(all_ops(shape, phase)) == 30
    tree = sum(fanout ** level for level in range(1, depth + 1))
    assert len(all_ops(shape, "dir-create")) == tree * (1 if shared else 3)
    # Every path is made once, by one client; parents before children.
    made = [op[1] for op in all_ops(shape, "dir-create")]
    assert len(set(made)) == len(made)
    files = [op[1] for op in all_ops(shape, "file-create")]
    assert len(set(files)) == 30
    parents = set(made) | set(workloads.tops(shape))
    assert all(f.rsplit("/", 1)[0] in parents for f in files)


def test_levels_are_steps_created_top_down_removed_bottom_up():
    shape = Shape(clients=1, files_per_client=1, depth=3, fanout=2, run_id="t")
    create = workloads.steps(shape, "dir-create", 0)
    remove = workloads.steps(shape, "dir-remove", 0)
    assert [len(s) for s in create] == [2, 4, 8]
    assert [len(s) for s in remove] == [8, 4, 2]


def test_rename_goes_within_and_across_directories():
    shape = Shape(clients=2, files_per_client=6, depth=1, fanout=3, run_id="t")
    renames = all_ops(shape, "rename")
    same = sum(src.rsplit("/", 1)[0] == dst.rsplit("/", 1)[0] for _, src, dst in renames)
    assert same == 6 and len(renames) == 12
    # After the rename phase, stat and remove use the new names.
    assert {op[1] for op in all_ops(shape, "file-remove", renamed=True)} == {dst for _, _, dst in renames}


def test_shared_mode_puts_every_client_in_every_leaf():
    shape = Shape(clients=4, files_per_client=8, depth=1, fanout=2, shared_dir=True, run_id="t")
    per_leaf = collections.defaultdict(set)
    for _, path in all_ops(shape, "file-create"):
        leaf, name = path.rsplit("/", 1)
        per_leaf[leaf].add(name.split(".")[0])
    assert len(per_leaf) == 2 and all(len(clients) == 4 for clients in per_leaf.values())


def test_phases_to_run_adds_untimed_setup_and_cleanup():
    assert workloads.phases_to_run(["stat"]) == [
        ("dir-create", False), ("file-create", False), ("stat", True), ("file-remove", False), ("dir-remove", False)]
    assert workloads.phases_to_run(["file-create"], keep=True) == [("dir-create", False), ("file-create", True)]
    assert workloads.phases_to_run(list(PHASES)) == [(p, True) for p in PHASES]
    with pytest.raises(ValueError, match="mkdirs"):
        workloads.phases_to_run(["mkdirs"])


def test_seed_shuffles_stat_order_reproducibly():
    a = Shape(clients=1, files_per_client=50, run_id="t", seed=1)
    plain = workloads.steps(Shape(clients=1, files_per_client=50, run_id="t"), "stat", 0)
    assert workloads.steps(a, "stat", 0) == workloads.steps(a, "stat", 0) != plain
    assert sorted(workloads.steps(a, "stat", 0)[0]) == sorted(plain[0])
