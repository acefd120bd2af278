"""The composition root: the ``cistern`` command, the local all-in-one
supervisor (``cistern up``), and the wiring of each process.

May import: every cistern package.
"""

import cistern.core  # noqa: F401  first: it sets gRPC's I/O model before grpc is imported (core/grpc_env.py)
