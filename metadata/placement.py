"""Block placement: which storage nodes receive a new block (pure).

``choose_targets(candidates, replication, *, writer_node, exclude,
block_size, seed)`` returns distinct node ids, best first: the writer's own
node when it is a candidate with room (a local first hop, as HDFS does),
then the others by least used fraction of their capacity. Nodes whose used
fractions round to the same percent count as equally loaded; among them the
order is by ``xxh3_64(seed + node id)`` when a seed is given (the shell passes
the fresh block id, so concurrent writers spread over equal nodes instead of
all picking the same one) and by node id otherwise. The result has
``min(replication, eligible candidates)`` entries, possibly none; it is
advisory (no Raft round): a writer whose target fails asks again with it
excluded.

Deterministic: no clock, no randomness but the seed handed in.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import xxhash

__all__ = ["Candidate", "choose_targets"]


class Candidate(NamedTuple):
    """A live node as placement sees it."""

    node_id: str
    capacity_bytes: int
    free_bytes: int      # capacity minus used minus what was allocated since its last heartbeat


def _used_percent(c: Candidate) -> int:
    return round(100 * (c.capacity_bytes - c.free_bytes) / c.capacity_bytes)


def _eligible(candidates: Iterable[Candidate], exclude, block_size: int) -> list[Candidate]:
    excluded = set(exclude)
    seen: set[str] = set()
    out = []
    for c in candidates:
        if c.node_id in excluded or c.node_id in seen or c.capacity_bytes <= 0 or c.free_bytes < block_size:
            continue
        seen.add(c.node_id)
        out.append(c)
    return out


def choose_targets(candidates: Iterable[Candidate], replication: int, *, writer_node: str | None = None,
                   exclude: Iterable[str] = (), block_size: int, seed: bytes | None = None) -> list[str]:
    """Distinct node ids for ``replication`` copies of a ``block_size``-byte block."""
    assert replication >= 0 and block_size >= 0
    eligible = _eligible(candidates, exclude, block_size)

    def tie(c: Candidate):
        return xxhash.xxh3_64_intdigest(seed + c.node_id.encode()) if seed is not None else 0

    ordered = sorted(eligible, key=lambda c: (_used_percent(c), tie(c), c.node_id))
    writer = [c for c in ordered if c.node_id == writer_node]
    ordered = writer + [c for c in ordered if c.node_id != writer_node]
    return [c.node_id for c in ordered[:replication]]
