"""The benchmark harness: metadata, data and scheduler workloads and reports.

May import: cistern.core, cistern.metadata, cistern.blockstore, cistern.client.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
