"""The metadata service: the Raft-replicated namespace that is the single
source of truth and the commit point for every change that spans nodes.

Layers: ``model`` (operation schema), ``limits``, ``state`` (the pure,
deterministic namespace state machine), ``store`` (the LMDB environment),
``replica`` (the only pysyncobj importer: group commit, durability, snapshots,
the applied-state digest), ``service`` (gRPC face), ``client`` (the batched
metadata client), ``server`` (one metad process).

May import: cistern.core, pysyncobj (replica.py only), grpc, lmdb, msgpack,
xxhash, prometheus_client. Never the scheduler or any other role.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
