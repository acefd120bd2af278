"""Storage nodes: immutable, checksummed blocks in files with an LMDB index,
replicated down a write pipeline, scrubbed, reported to the metadata leader.

May import: cistern.core, cistern.metadata (its client, for reports), grpc,
lmdb, xxhash, prometheus_client.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
