"""Exact-output tests of block placement (metadata/placement.py)."""

from cistern.metadata.placement import Candidate, choose_targets

GiB = 1 << 30
MiB = 1 << 20


def node(node_id, used_gib, capacity_gib=100):
    return Candidate(node_id, capacity_gib * GiB, (capacity_gib - used_gib) * GiB)


NODES = [node("n1", 50), node("n2", 10), node("n3", 30), node("n4", 10)]


def test_least_used_fraction_first_ties_by_id():
    assert choose_targets(NODES, 3, block_size=4 * MiB) == ["n2", "n4", "n3"]


def test_fraction_not_absolute_free_space_decides():
    big = Candidate("big", 1000 * GiB, 500 * GiB)     # 50% used, most free bytes
    small = Candidate("small", 10 * GiB, 9 * GiB)     # 10% used
    assert choose_targets([big, small], 2, block_size=MiB) == ["small", "big"]


def test_writer_node_first_when_it_has_room():
    assert choose_targets(NODES, 3, writer_node="n1", block_size=4 * MiB) == ["n1", "n2", "n4"]
    # a writer that is not a storage node, or is excluded, changes nothing
    assert choose_targets(NODES, 2, writer_node="client-host", block_size=MiB) == ["n2", "n4"]
    assert choose_targets(NODES, 2, writer_node="n1", exclude=["n1"], block_size=MiB) == ["n2", "n4"]


def test_replication_capped_by_eligible_nodes_and_exclusions():
    assert choose_targets(NODES, 5, block_size=MiB) == ["n2", "n4", "n3", "n1"]
    assert choose_targets(NODES, 3, exclude=["n2", "n3"], block_size=MiB) == ["n4", "n1"]
    assert choose_targets([], 3, block_size=MiB) == []
    assert choose_targets(NODES, 0, block_size=MiB) == []


def test_nodes_without_room_for_the_block_are_skipped():
    full = Candidate("full", 100 * GiB, 3 * MiB)
    empty_capacity = Candidate("zero", 0, 0)
    assert choose_targets([full, empty_capacity, node("n2", 99)], 3, block_size=4 * MiB) == ["n2"]
    assert choose_targets([full], 1, writer_node="full", block_size=4 * MiB) == []


def test_duplicates_in_the_input_count_once():
    assert choose_targets([node("n1", 1), node("n1", 1)], 3, block_size=MiB) == ["n1"]


def test_a_seed_spreads_equally_loaded_nodes_deterministically():
    equal = [node(f"n{i}", 10) for i in range(8)]
    firsts = {choose_targets(equal, 1, block_size=MiB, seed=bytes([s]) * 16)[0] for s in range(64)}
    assert len(firsts) > 3
    seed = b"\x07" * 16
    assert choose_targets(equal, 3, block_size=MiB, seed=seed) == choose_targets(equal, 3, block_size=MiB, seed=seed)
    # load still wins over the seed
    assert choose_targets(equal + [node("idle", 0)], 1, block_size=MiB, seed=seed) == ["idle"]
